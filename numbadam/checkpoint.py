"""Checkpoints: an optimizer and its variables in one ``.npz`` file, no pickle.

A checkpoint holds everything needed to continue training bit for bit: the
optimizer's class name and :meth:`~numbadam.OptimizerV2.get_config` (as JSON),
its weights (``iterations`` and every slot), the step count, the named
variables and an optional JSON ``metadata`` dict of the caller's own (an epoch
number, a history of losses...).

File format (version 1)
-----------------------
An uncompressed NumPy ``.npz`` archive (a zip of ``.npy`` files) with

``__numbadam_checkpoint__``
    uint8 array: the UTF-8 JSON header (format tag, version, optimizer class
    and config, step, the name, shape and dtype of every variable, which
    variable and slot each optimizer weight belongs to, user metadata);
``variable_<i>``
    the ``i``-th variable, in the order given to :func:`save_checkpoint`;
``weight_<j>``
    the optimizer's ``j``-th weight, in :meth:`~numbadam.OptimizerV2.get_weights`
    order (``weight_0`` is ``iterations``).

Nothing in it is pickled, nothing in it is compressed, and :func:`load_checkpoint`
checks the archive's directory and header before it reads any array. Files are
written atomically: to a temporary file in the target's folder, flushed and
``fsync``-ed, then renamed over the target, and the folder is ``fsync``-ed; a
crash or an error (a full disk) leaves either the old checkpoint or the new one.
Only regular files are ever replaced.
"""

from __future__ import annotations

import errno
import importlib
import json
import os
import re
import secrets
import stat
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _dispatch
from .optimizer import OptimizerV2

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = "numbadam.checkpoint"
VERSION = 1
HEADER_KEY = "__numbadam_checkpoint__"

PathLike = Union[str, bytes, "os.PathLike[str]"]
Variables = Union[Mapping, Sequence]


class CheckpointError(ValueError):
    """A checkpoint file cannot be written or read back.

    Raised for a file that is corrupt, truncated, not a numbadam checkpoint,
    bears pickled objects, or does not match the variables it is loaded into.
    The message starts with the file's path and says what is wrong.

    Parameters
    ----------
    path : str or os.PathLike or None
        The checkpoint file concerned (kept as ``exc.path``).
    problem : str
        What is wrong with it (kept as ``exc.problem``).

    Examples
    --------
    >>> import os, tempfile
    >>> import numbadam
    >>> path = os.path.join(tempfile.mkdtemp(), "junk.npz")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"not a checkpoint")
    >>> try:
    ...     numbadam.load_checkpoint(path)
    ... except numbadam.CheckpointError as exc:
    ...     print(str(exc).split(": ", 1)[1])
    not an .npz archive (the file starts with b'not a ch')
    """

    def __init__(self, path: Any, problem: str) -> None:
        self.path = None if path is None else os.fsdecode(os.fspath(path))
        self.problem = problem
        super().__init__(problem if path is None else f"{self.path}: {problem}")


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    Attributes
    ----------
    path : str
        The file read.
    optimizer : OptimizerV2
        A new optimizer of the saved class and config, built for
        :attr:`variables` and holding the saved weights.
    variables : dict of str to numpy.ndarray
        The variables by name, in saved order: the arrays passed to
        :func:`load_checkpoint` (restored in place) or new ones.
    step : int
        ``int(optimizer.iterations)``.
    metadata : dict
        The ``metadata`` given to :func:`save_checkpoint` (``{}`` if none).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import numbadam
    >>> w = np.ones(2, np.float32)
    >>> opt = numbadam.Adam(0.1)
    >>> _ = opt.apply_gradients([(np.ones(2, np.float32), w)])
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
    >>> _ = numbadam.save_checkpoint(path, opt, {"w": w}, metadata={"epoch": 1})
    >>> ckpt = numbadam.load_checkpoint(path)
    >>> ckpt.step, ckpt.metadata, list(ckpt.variables)
    (1, {'epoch': 1}, ['w'])
    """

    path: str
    optimizer: OptimizerV2
    variables: Dict[str, np.ndarray]
    step: int
    metadata: Dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------
# files: paths, regular-file checks, atomic replacement
# ---------------------------------------------------------------------------

_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}
_CLOEXEC = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_NAME_MAX = 255  # bytes in one file name, where the file system does not say


def _fs_path(path: Any) -> str:
    """``path`` as a ``str`` (bytes paths decoded as the OS does); checked."""
    try:
        p = os.fspath(path)
    except TypeError:
        raise TypeError(
            f"path must be a str, bytes or os.PathLike, got {type(path).__name__}"
        ) from None
    p = os.fsdecode(p)
    if not p:
        raise CheckpointError(None, "the checkpoint path is empty")
    if "\0" in p:
        raise CheckpointError(p, "the path contains a NUL character")
    return p


def _too_long(path: str) -> CheckpointError:
    return CheckpointError(
        path, "the path or file name is too long for the file system"
    )


def _regular_stat(path: str, shown: str) -> Optional[os.stat_result]:
    """``os.stat(path)`` if it exists (a regular file), ``None`` if it does not.

    Anything else that exists (folder, FIFO, device, socket) is refused: it is
    not ours to replace.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise _too_long(shown) from None
        raise
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(
            errno.EISDIR, "cannot save checkpoint: the path is a folder; give a file "
            "name, e.g. os.path.join(folder, 'model.npz')", shown
        )  # fmt: skip
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise CheckpointError(
            shown,
            f"is {kind}; numbadam writes checkpoints only to new or regular files, "
            "so it was left alone",
        )
    return st


def _fsync_dir(directory: str) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # Windows cannot open folders; rename is durable enough there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _name_max(directory: str) -> int:
    try:
        return int(os.pathconf(directory, "PC_NAME_MAX"))
    except (AttributeError, OSError, ValueError):
        return _NAME_MAX


def _new_temp(directory: str, base: str) -> Tuple[int, str]:
    """Create ``.<base>.<random>.tmp`` in ``directory``: (fd, path).

    The name is cut to fit the file system's limit (a target name near the
    limit must not make its temporary name overflow). The mode is 0o666 less
    the process umask, applied by the OS: the umask is never read or changed.
    """
    stem = os.fsencode(base)[: max(0, _name_max(directory) - 14)]
    stem_text = stem.decode("utf-8", "ignore")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC
    for _ in range(100):
        tmp = os.path.join(directory, f".{stem_text}.{secrets.token_hex(4)}.tmp")
        try:
            return os.open(tmp, flags, 0o666), tmp
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", directory)


def _unlink_quietly(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _atomic_write(
    path: str, write: Callable[[IO[bytes]], None], mode: Optional[int] = None
) -> None:
    """Replace ``path`` with what ``write(file)`` writes, atomically.

    A temporary file in the same folder is written, flushed and ``fsync``-ed,
    renamed over the target and the folder ``fsync``-ed. An existing target
    must be a regular file (a symbolic link is followed: the file it points to
    is replaced, the link stays) and keeps its permission bits; a new file gets
    ``mode`` if given, else the default that honours the umask. On any failure
    the temporary file is removed and the target is untouched; an ``OSError``
    (e.g. a full disk) is raised again naming ``path``.
    """
    target = os.path.realpath(path)
    directory, base = os.path.split(target)
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            errno.ENOENT, f"cannot save checkpoint: no such folder {directory!r}", path
        )
    st = _regular_stat(target, path)
    if st is not None:
        mode = stat.S_IMODE(st.st_mode)
    try:
        fd, tmp = _new_temp(directory, base)
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:  # the folder's path is the problem
            raise _too_long(path) from None
        msg = f"cannot save checkpoint: no temporary file in its folder ({exc})"
        raise OSError(exc.errno, msg, path) from exc
    try:
        try:
            if mode is not None:
                if hasattr(os, "fchmod"):
                    os.fchmod(fd, mode)
                else:  # pragma: no cover - Windows
                    os.chmod(tmp, mode)
            f = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            raise
        with f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        _regular_stat(target, path)  # it may have been replaced in the meantime
        os.replace(tmp, target)
    except BaseException as exc:
        _unlink_quietly(tmp)
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(
                exc.errno,
                f"cannot save checkpoint ({exc.strerror}); the previous file, if "
                "any, is unchanged",
                path,
            ) from exc
        raise
    _fsync_dir(directory)


def _open_regular(path: str) -> IO[bytes]:
    """Open an existing regular file for reading; refuse anything else.

    FIFOs and devices are refused before they are opened (reading one could
    block forever or never end), and once more on the open descriptor.
    """
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such checkpoint file", path) from None
    except OSError as exc:
        if exc.errno == errno.ENAMETOOLONG:
            raise _too_long(path) from None
        raise

    def refuse(st: os.stat_result) -> None:
        if stat.S_ISDIR(st.st_mode):
            raise CheckpointError(path, "is a folder, not a checkpoint file")
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
            raise CheckpointError(path, f"is {kind}, not a checkpoint file")

    refuse(st)
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _CLOEXEC)
    try:
        refuse(os.fstat(fd))
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


# ---------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------


def _named(variables: Any, path: Any) -> List[tuple]:
    if isinstance(variables, Mapping):
        items = list(variables.items())
        for name, _ in items:
            if not isinstance(name, str):
                raise CheckpointError(
                    path, f"variable names must be strings, got {name!r}"
                )
    elif isinstance(variables, (str, bytes)) or not hasattr(variables, "__iter__"):
        raise TypeError(
            "variables must be a dict of name -> array or a list of arrays, got "
            f"{type(variables).__name__}"
        )
    else:
        items = [(str(i), v) for i, v in enumerate(variables)]
    return items


def _host(arr: Any, what: str, path: Any) -> np.ndarray:
    if _dispatch.is_device_array(arr):
        host = _dispatch.backend_for(arr).to_host(arr)
    elif isinstance(arr, np.ndarray):
        host = arr
    else:
        raise TypeError(f"{what} is a {type(arr).__name__}, not an array")
    if host.dtype.kind not in "biufc" or host.dtype.fields is not None:
        raise CheckpointError(
            path, f"{what} has dtype {host.dtype}; only numeric arrays can be saved"
        )
    return host


def _weight_roles(optimizer: OptimizerV2, named: List[tuple], path: Any) -> List[Any]:
    """For each optimizer weight: "iterations" or (variable index, slot name)."""
    owner: Dict[int, tuple] = {}
    for i, (_, var) in enumerate(named):
        for slot_name in optimizer.get_slot_names():
            try:
                slot = optimizer.get_slot(var, slot_name)
            except (KeyError, ValueError):
                continue
            owner[id(slot)] = (i, slot_name)
    iterations = optimizer.iterations
    roles: List[Any] = []
    for j, w in enumerate(optimizer.weights):
        if w is iterations:
            roles.append("iterations")
        elif id(w) in owner:
            roles.append(owner[id(w)])
        else:
            raise CheckpointError(
                path,
                f"optimizer weight {j} (shape {tuple(w.shape)}) belongs to a variable "
                "that is not in `variables`; pass every variable the optimizer "
                "trains, or resuming would lose its state",
            )
    return roles


def save_checkpoint(
    path: PathLike,
    optimizer: OptimizerV2,
    variables: Variables,
    metadata: Optional[Dict[str, Any]] = None,
) -> str:
    """Write ``optimizer`` and ``variables`` to one ``.npz`` file, atomically.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        Target file (conventionally ``*.npz``; no suffix is added). Its folder
        must exist. An existing file must be a regular file (a symbolic link
        to one is followed); it is replaced only once the new one is complete
        on disk, and keeps its permission bits.
    optimizer : OptimizerV2
        E.g. a :class:`~numbadam.Adam`. Its class name, config, weights and step
        count are saved. A :class:`~numbadam.distributed.DistributedAdam`
        (replicated state) can be saved from one rank; a
        :class:`~numbadam.distributed.ShardedAdam` only on one process (on
        several ranks, use its ``save_sharded``).
    variables : dict of str to array, or list of arrays
        Every variable the optimizer has state for (and any other numeric
        arrays to keep alongside). A list is saved with names ``"0"``, ``"1"``...
    metadata : dict, optional
        JSON-serialisable data of your own, returned by :func:`load_checkpoint`
        as :attr:`Checkpoint.metadata`.

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    CheckpointError
        If the optimizer has state for a variable not in ``variables`` or holds
        only part of its state (a ShardedAdam on several ranks), a variable is
        not numeric, the config or metadata is not JSON, or ``path`` is empty,
        too long, or exists and is not a regular file (a FIFO, a device...).
        Nothing is written then.
    FileNotFoundError
        If the folder of ``path`` does not exist.
    IsADirectoryError
        If ``path`` is a folder.
    OSError
        If writing fails (a full disk...): the message names ``path``, whose
        previous file, if any, is unchanged, and no temporary file is left.
    TypeError
        If ``optimizer`` is not an :class:`~numbadam.OptimizerV2`.

    Notes
    -----
    The write is atomic: a temporary file in the same folder is written,
    flushed and ``fsync``-ed, renamed over ``path`` with :func:`os.replace`,
    and the folder is ``fsync``-ed. An error or an interruption leaves the
    previous checkpoint (if any) intact. The process umask is never changed:
    a new file gets the default mode (``0o666`` less the umask).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import numbadam
    >>> table = np.zeros((100, 8), np.float32)
    >>> opt = numbadam.Adam(learning_rate=0.01)
    >>> grad = numbadam.IndexedSlices(np.ones((2, 8), np.float32), [3, 3], (100, 8))
    >>> _ = opt.apply_gradients([(grad, table)])
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> numbadam.save_checkpoint(path, opt, {"table": table}) == path
    True
    """
    if not isinstance(optimizer, OptimizerV2):
        raise TypeError(
            f"optimizer must be a numbadam optimizer, got {type(optimizer).__name__}"
        )
    path = _fs_path(path)
    directory = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            errno.ENOENT, f"cannot save checkpoint: no such folder {directory!r}", path
        )
    _regular_stat(os.path.realpath(path), path)
    named = _named(variables, path)
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise CheckpointError(path, "duplicate variable names")
    arrays: Dict[str, np.ndarray] = {}
    var_info = []
    for i, (name, var) in enumerate(named):
        host = _host(var, f"variable {name!r}", path)
        arrays[f"variable_{i}"] = host
        var_info.append(
            {"name": name, "shape": list(host.shape), "dtype": host.dtype.str}
        )
    roles = _weight_roles(optimizer, named, path)
    values = _state(optimizer, path)
    weight_info = []
    for j, (w, role) in enumerate(zip(values, roles)):
        host = _host(w, f"optimizer weight {j}", path)
        arrays[f"weight_{j}"] = host
        entry: Dict[str, Any] = {"shape": list(host.shape), "dtype": host.dtype.str}
        if role == "iterations":
            entry["role"] = "iterations"
        else:
            entry.update(role="slot", variable=role[0], slot=role[1])
        weight_info.append(entry)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "optimizer": {
            "class_name": type(optimizer).__name__,
            "module": type(optimizer).__module__,
            "config": optimizer.get_config(),
        },
        "step": int(optimizer.iterations),
        "variables": var_info,
        "weights": weight_info,
        "metadata": {} if metadata is None else metadata,
    }
    if not isinstance(header["metadata"], dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    config = header["optimizer"]["config"]
    float64 = sorted(k for k, v in config.items() if type(v) is np.float64)
    if float64:  # (JSON writes them as plain floats: from_config would round)
        header["optimizer"]["float64"] = float64
    try:
        text = json.dumps(header)
    except (TypeError, ValueError, RecursionError) as exc:
        raise CheckpointError(
            path, f"optimizer config or metadata is not JSON-serialisable: {exc}"
        ) from None
    arrays[HEADER_KEY] = np.frombuffer(text.encode("utf-8"), np.uint8)
    _atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def _state(optimizer: OptimizerV2, path: str) -> List[Any]:
    """The optimizer's complete state, in :attr:`~OptimizerV2.weights` order.

    An optimizer whose ``weights`` are only part of its state (a ShardedAdam's
    slices of one rank) provides ``_checkpoint_weights()``: the whole state, or
    a ``ValueError`` saying why it cannot be put in one file.
    """
    full = getattr(optimizer, "_checkpoint_weights", None)
    if full is None:
        return list(optimizer.weights)
    try:
        values = list(full())
    except ValueError as exc:
        raise CheckpointError(path, str(exc)) from None
    if len(values) != len(optimizer.weights):  # pragma: no cover - a broken hook
        raise CheckpointError(path, "the optimizer's state does not match its weights")
    return values


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


_MEMBER_RE = re.compile(r"(?:variable|weight)_(?:0|[1-9][0-9]*)\Z")
_ZIP_UNREADABLE = 0x1 | 0x20 | 0x40  # flag bits: encrypted, patched, strong encryption
_MAX_DIMS = 32
_CHUNK = 1 << 24  # bytes read at a time into an array


def _short(x: Any) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def _corrupt(path: str, key: str, exc: BaseException) -> CheckpointError:
    return CheckpointError(
        path, f"array {key!r} is truncated or corrupt ({type(exc).__name__}: {exc})"
    )


class _Archive:
    """An uncompressed ``.npz`` file, checked before any of its arrays is read.

    Opening reads the zip directory only. :meth:`check` refuses any member that
    is compressed, encrypted or claims bytes beyond the file (so that reading
    costs at most the file's size); :meth:`read` checks a member's ``.npy``
    header (dtype, shape, exact size) before reading its data. Every problem is
    a :class:`CheckpointError` naming the file.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = _open_regular(path)
        try:
            self._open()
        except BaseException:
            self._file.close()
            raise

    def _open(self) -> None:
        path, f = self.path, self._file
        head = f.read(8)
        if not head:
            raise CheckpointError(path, "the file is empty")
        if head.startswith(b"\x93NUMPY"):
            raise CheckpointError(path, "a single .npy array, not an .npz checkpoint")
        if not head.startswith(b"PK"):
            raise CheckpointError(
                path, f"not an .npz archive (the file starts with {head!r})"
            )
        self.size = os.fstat(f.fileno()).st_size
        f.seek(0)
        try:
            self._zip = zipfile.ZipFile(f)
            infos = self._zip.infolist()
        except MemoryError:
            raise
        except Exception as exc:  # BadZipFile, NotImplementedError, EOFError...
            raise CheckpointError(
                path, f"truncated or corrupt .npz archive ({type(exc).__name__}: {exc})"
            ) from None
        self.members: Dict[str, zipfile.ZipInfo] = {}
        self.foreign: List[str] = []  # members that are not "<key>.npy"
        for info in infos:
            name = info.filename
            key = name[:-4] if name.endswith(".npy") else name
            if key in self.members:
                raise CheckpointError(
                    path, f"array {key!r} appears twice in the archive"
                )
            self.members[key] = info
            if not name.endswith(".npy"):
                self.foreign.append(key)

    def check(self) -> None:
        """Refuse members that would cost more than the file to read."""
        total = 0
        for key, info in self.members.items():
            if info.flag_bits & _ZIP_UNREADABLE:
                raise CheckpointError(
                    self.path,
                    f"array {key!r} is encrypted, which numbadam never writes",
                )
            if info.compress_type != zipfile.ZIP_STORED:
                raise CheckpointError(
                    self.path,
                    f"array {key!r} is compressed (zip method {info.compress_type}); "
                    "numbadam checkpoints are uncompressed, so it was not read",
                )
            total += info.compress_size
            end = info.header_offset + info.compress_size
            if info.file_size != info.compress_size or end > self.size:
                raise CheckpointError(
                    self.path,
                    f"array {key!r} claims {info.file_size} bytes, beyond the file's "
                    f"{self.size}: truncated or corrupt archive",
                )
        if total > self.size:
            raise CheckpointError(
                self.path,
                f"the arrays claim {total} bytes in all, more than the file's "
                f"{self.size}: corrupt archive",
            )

    def read(
        self,
        key: str,
        what: Optional[str] = None,
        shape: Optional[Tuple[int, ...]] = None,
        dtype: Optional[np.dtype] = None,
    ) -> np.ndarray:
        """The array ``key``; its shape and dtype must be these when given."""
        path, info = self.path, self.members[key]
        what = what or f"array {key!r}"
        try:
            fp = self._zip.open(info)
        except MemoryError:
            raise
        except Exception as exc:
            raise _corrupt(path, key, exc) from None
        with fp:
            try:
                version = np.lib.format.read_magic(fp)
                if version == (1, 0):
                    got = np.lib.format.read_array_header_1_0(fp)
                elif version == (2, 0):
                    got = np.lib.format.read_array_header_2_0(fp)
                else:
                    raise ValueError(f"unsupported .npy format version {version}")
                offset = fp.tell()
            except MemoryError:
                raise
            except Exception as exc:
                raise _corrupt(path, key, exc) from None
            a_shape, fortran, a_dtype = got
            if a_dtype.hasobject:
                raise CheckpointError(
                    path,
                    f"array {key!r} holds pickled Python objects; numbadam "
                    "checkpoints never do, so it was not loaded",
                )
            if shape is not None and (a_shape != shape or a_dtype != dtype):
                raise CheckpointError(
                    path,
                    f"{what} has shape {a_shape} and dtype {a_dtype}, but the header "
                    f"says {shape}, {dtype}",
                )
            if _dtype_problem(a_dtype):
                raise CheckpointError(path, f"{what} has dtype {a_dtype}, not numeric")
            nbytes = a_dtype.itemsize
            for n in a_shape:
                nbytes *= n
            if info.file_size != offset + nbytes:
                raise CheckpointError(
                    path,
                    f"{what} has {info.file_size - offset} bytes of data; shape "
                    f"{a_shape} and dtype {a_dtype} need {nbytes}",
                )
            order = "F" if fortran else "C"
            arr = np.empty(a_shape, a_dtype, order=order)
            raw = arr.reshape(-1, order=order).view(np.uint8)  # a view: contiguous
            try:
                pos = 0
                while pos < nbytes:
                    n = fp.readinto(raw[pos : pos + _CHUNK])
                    if not n:
                        raise EOFError("the data ends early")
                    pos += n
                if fp.read(1):  # never: the size was checked; reaching the end
                    raise ValueError("trailing bytes")  # checks the CRC
            except MemoryError:
                raise
            except Exception as exc:
                raise _corrupt(path, key, exc) from None
        return arr

    def close(self) -> None:
        try:
            zf = getattr(self, "_zip", None)
            if zf is not None:
                zf.close()
        finally:
            self._file.close()

    def __enter__(self) -> "_Archive":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _dtype_problem(dtype: np.dtype) -> bool:
    return (
        dtype.kind not in "biufc"
        or dtype.fields is not None
        or dtype.subdtype is not None
        or dtype.itemsize == 0
    )


def _spec_problem(entry: Any) -> Optional[str]:
    """What is wrong with a header entry's ``shape`` and ``dtype``, if anything."""
    if not isinstance(entry, dict):
        return f"{_short(entry)} is not an object"
    shape = entry.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) > _MAX_DIMS
        or not all(_is_int(n) and n >= 0 for n in shape)
    ):
        return f"shape {_short(shape)}"
    dtype = entry.get("dtype")
    if not isinstance(dtype, str):
        return f"dtype {_short(dtype)}"
    try:
        dt = np.dtype(dtype)
    except MemoryError:
        raise
    except Exception:
        return f"dtype {_short(dtype)} is not a NumPy dtype"
    if _dtype_problem(dt):
        return f"dtype {_short(dtype)} is not numeric"
    return None


def _header_problem(header: Dict[str, Any]) -> Optional[str]:
    opt = header.get("optimizer")
    if (
        not isinstance(opt, dict)
        or not isinstance(opt.get("class_name"), str)
        or not isinstance(opt.get("config"), dict)
        or not isinstance(opt.get("module", ""), str)
    ):
        return "optimizer"
    float64 = opt.get("float64", [])
    if not isinstance(float64, list) or not all(
        isinstance(k, str) and isinstance(opt["config"].get(k), float)
        for k in float64
    ):
        return "optimizer float64"
    step = header.get("step")
    if not _is_int(step) or not 0 <= step < 2**63:
        return f"step {_short(step)} is not an integer in [0, 2**63)"
    if not isinstance(header.get("metadata"), dict):
        return "metadata"
    variables = header.get("variables")
    if not isinstance(variables, list):
        return "variables"
    names = set()
    for i, v in enumerate(variables):
        problem = _spec_problem(v)
        if problem:
            return f"variable {i}: {problem}"
        if not isinstance(v.get("name"), str):
            return f"variable {i}: name {_short(v.get('name'))}"
        if v["name"] in names:
            return f"variable name {_short(v['name'])} appears twice"
        names.add(v["name"])
    weights = header.get("weights")
    if not isinstance(weights, list):
        return "weights"
    for j, w in enumerate(weights):
        problem = _spec_problem(w)
        if problem:
            return f"weight {j}: {problem}"
        role = w.get("role")
        if role == "iterations":
            if w["shape"] != [] or np.dtype(w["dtype"]).kind not in "iu":
                return (
                    f"weight {j} is iterations, which must be a 0-d integer array, "
                    f"not shape {_short(w['shape'])} and dtype {w['dtype']!r}"
                )
        elif role == "slot":
            if not isinstance(w.get("slot"), str):
                return f"weight {j}: slot {_short(w.get('slot'))}"
            var = w.get("variable")
            if not _is_int(var) or not 0 <= var < len(variables):
                return f"weight {j}: variable {_short(var)}"
        else:
            return f"weight {j}: role {_short(role)}"
    return None


def _parse_header(path: str, raw: np.ndarray) -> Dict[str, Any]:
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(path, f"{HEADER_KEY!r} is not a uint8 byte string")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except RecursionError:
        raise CheckpointError(
            path, "the header is not valid JSON (nested too deeply)"
        ) from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(path, f"the header is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(path, "the header is not a numbadam checkpoint header")
    version = header.get("version")
    if not _is_int(version) or version != VERSION:
        raise CheckpointError(
            path,
            f"checkpoint format version {_short(version)}; this numbadam reads "
            f"version {VERSION}",
        )
    problem = _header_problem(header)
    if problem is not None:
        raise CheckpointError(
            path, f"the header is incomplete or malformed ({problem})"
        )
    return header


def _shape_dtype(entry: Dict[str, Any]) -> Tuple[Tuple[int, ...], np.dtype]:
    return tuple(entry["shape"]), np.dtype(entry["dtype"])


def _read_checkpoint(path: str) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """The header and every array, all checked; any problem -> CheckpointError."""
    with _Archive(path) as archive:
        keys = archive.members
        if HEADER_KEY not in keys:
            shown = ", ".join(sorted(keys)[:5]) or "none"
            raise CheckpointError(
                path,
                f"not a numbadam checkpoint: no {HEADER_KEY!r} entry (arrays: {shown})",
            )
        unknown = sorted(
            k
            for k in keys
            if k in archive.foreign or not (k == HEADER_KEY or _MEMBER_RE.match(k))
        )
        if unknown:
            raise CheckpointError(path, f"unexpected array(s) {', '.join(unknown[:5])}")
        archive.check()
        header = _parse_header(path, archive.read(HEADER_KEY))
        expected: Dict[str, Tuple[str, Dict[str, Any]]] = {}
        for i, v in enumerate(header["variables"]):
            expected[f"variable_{i}"] = (f"variable {v['name']!r}", v)
        for j, w in enumerate(header["weights"]):
            expected[f"weight_{j}"] = (f"optimizer weight {j}", w)
        missing = [k for k in expected if k not in keys]
        if missing:
            raise CheckpointError(path, f"missing array(s) {', '.join(missing[:5])}")
        extra = sorted(k for k in keys if k not in expected and k != HEADER_KEY)
        if extra:
            raise CheckpointError(path, f"unexpected array(s) {', '.join(extra[:5])}")
        arrays = {}
        for key, (what, entry) in expected.items():
            arrays[key] = archive.read(key, what, *_shape_dtype(entry))
    return header, arrays


def _is_optimizer_class(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, OptimizerV2)


def _numbadam_class(name: str, module: Any) -> Optional[type]:
    """numbadam's own optimizer class ``name`` (e.g. numbadam.distributed's)."""
    if isinstance(module, str):
        parts = module.split(".")
        if (
            parts[0] == "numbadam"
            and all(p.isidentifier() for p in parts)
            and "__main__" not in parts
        ):
            try:
                cls = getattr(importlib.import_module(module), name, None)
            except ImportError:
                cls = None
            if _is_optimizer_class(cls):
                return cls
    # Files that do not name the module: the numbadam classes imported so far.
    stack = [OptimizerV2]
    while stack:
        cls = stack.pop()
        if cls.__name__ == name and cls.__module__.split(".")[0] == "numbadam":
            return cls
        stack.extend(cls.__subclasses__())
    return None


def _optimizer_class(path: str, info: Dict[str, Any], custom_objects: Any) -> type:
    import numbadam

    name, module = info["class_name"], info.get("module")
    custom = custom_objects or {}
    if name in custom:
        cls = custom[name]
    else:
        cls = getattr(numbadam, name, None)
        if not _is_optimizer_class(cls):
            cls = _numbadam_class(name, module)
    if not _is_optimizer_class(cls):
        where = f", saved from module {module!r}" if module else ""
        raise CheckpointError(
            path,
            f"unknown optimizer class {name!r}{where}; if it is numbadam's, import "
            "the module that defines it first (e.g. numbadam.distributed); if it "
            f"is your own, pass custom_objects={{{name!r}: cls}}",
        )
    return cls


def _targets(path: str, header: Dict[str, Any], saved: List[np.ndarray], variables):
    """The arrays to restore into, checked against the file; nothing is written."""
    infos = header["variables"]
    if variables is None:
        return saved
    if isinstance(variables, Mapping):
        names = [v["name"] for v in infos]
        missing = [n for n in names if n not in variables]
        extra = [n for n in variables if n not in names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"variables {missing} are in the file but not given")
            if extra:
                parts.append(f"variables {extra} are given but not in the file")
            raise CheckpointError(path, "; ".join(parts))
        targets = [variables[n] for n in names]
    else:
        targets = list(variables)
        if len(targets) != len(infos):
            raise CheckpointError(
                path,
                f"the file holds {len(infos)} variables, {len(targets)} were given",
            )
    for info, target, value in zip(infos, targets, saved):
        what = f"variable {info['name']!r}"
        if not isinstance(target, np.ndarray):
            raise TypeError(f"{what} to restore into is a {type(target).__name__}")
        if target.shape != value.shape:
            raise CheckpointError(
                path,
                f"{what} has shape {value.shape} in the file, {target.shape} given",
            )
        if target.dtype != value.dtype:
            raise CheckpointError(
                path,
                f"{what} has dtype {value.dtype} in the file, {target.dtype} given",
            )
        if not target.flags.writeable:
            raise CheckpointError(path, f"{what} given is read-only")
    return targets


def load_checkpoint(
    path: PathLike,
    variables: Optional[Variables] = None,
    custom_objects: Optional[Dict[str, Any]] = None,
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        The ``.npz`` file.
    variables : dict of str to numpy.ndarray, or list, optional
        Arrays to restore into, in place: a dict with exactly the saved names, or
        a list in saved order. Shapes and dtypes must match the file. Without it,
        new arrays are returned.
    custom_objects : dict, optional
        Your own optimizer or learning-rate-schedule classes, by class name.

    Returns
    -------
    Checkpoint
        ``optimizer`` (a new instance from the saved config, built for the
        variables, with the saved weights), ``variables`` (name -> array),
        ``step`` and ``metadata``.

    Raises
    ------
    CheckpointError
        If the file is not a regular file, not an ``.npz`` archive, is
        truncated or corrupt, is not a numbadam checkpoint, holds pickled
        objects or compressed or unknown members, is internally inconsistent
        (a malformed header, an impossible step count...), or does not match
        ``variables``. Nothing given is modified then.
    FileNotFoundError
        If ``path`` does not exist.

    Notes
    -----
    Nothing is unpickled and nothing is decompressed: the zip directory and
    the JSON header are checked first (known members only, each stored and
    lying inside the file, so reading costs at most the file's size), then
    every array's ``.npy`` header, then its data, all before any variable is
    written. The optimizer class is looked up in ``custom_objects``, then in
    numbadam (including :mod:`numbadam.distributed`, whose optimizers load on
    any number of ranks). Training continues bit-identically: ``N`` steps equal
    ``k`` steps, a save, a load (in any process) and ``N - k`` steps.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import numbadam
    >>> w = np.array([1.0, 2.0], np.float32)
    >>> opt = numbadam.Adam(learning_rate=0.1, amsgrad=True)
    >>> _ = opt.apply_gradients([(np.array([0.5, -0.5], np.float32), w)])
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
    >>> _ = numbadam.save_checkpoint(path, opt, {"w": w})

    Restore into an existing array (in place) and continue training:

    >>> w2 = np.zeros(2, np.float32)
    >>> ckpt = numbadam.load_checkpoint(path, {"w": w2})
    >>> print(w2.round(4), ckpt.step, ckpt.optimizer.amsgrad)
    [0.9 2.1] 1 True
    >>> _ = ckpt.optimizer.apply_gradients([(np.ones(2, np.float32), w2)])
    >>> int(ckpt.optimizer.iterations)
    2
    """
    path = _fs_path(path)
    header, arrays = _read_checkpoint(path)
    saved = [arrays[f"variable_{i}"] for i in range(len(header["variables"]))]
    targets = _targets(path, header, saved, variables)

    opt_info = header["optimizer"]
    cls = _optimizer_class(path, opt_info, custom_objects)
    try:
        config = dict(opt_info["config"])
        for k in opt_info.get("float64", []):  # NumPy float64 hyperparameters
            config[k] = np.float64(config[k])
        optimizer = cls.from_config(config, custom_objects=custom_objects)
    except Exception as exc:
        raise CheckpointError(
            path, f"cannot rebuild the optimizer from its config ({exc})"
        ) from None

    # Build the slots of the variables that had state, then map each new weight
    # to the saved one with the same role (creation order may differ).
    weights = header["weights"]
    saved_by_role: Dict[Any, np.ndarray] = {}
    trained: List[int] = []
    for j, w in enumerate(weights):
        role = "iterations" if w["role"] == "iterations" else (w["variable"], w["slot"])
        if role in saved_by_role:
            raise CheckpointError(path, f"optimizer weight {j} is duplicated")
        saved_by_role[role] = arrays[f"weight_{j}"]
        if role != "iterations" and role[0] not in trained:
            trained.append(role[0])
    if "iterations" not in saved_by_role:
        raise CheckpointError(path, "the optimizer's iterations are missing")
    step = int(saved_by_role["iterations"])  # a 0-d integer array (header checked)
    if not 0 <= step < 2**63:
        raise CheckpointError(
            path, f"iterations is {step}, not a step count in [0, 2**63)"
        )
    if step != header["step"]:
        raise CheckpointError(path, "the step count disagrees with iterations")
    try:
        optimizer.build([targets[i] for i in trained])
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise CheckpointError(path, f"cannot build the optimizer: {exc}") from None
    owner = {}
    for i in trained:
        for slot_name in optimizer.get_slot_names():
            try:
                owner[id(optimizer.get_slot(targets[i], slot_name))] = (i, slot_name)
            except (KeyError, ValueError):
                pass
    new_weights = []
    for w in optimizer.weights:
        role = "iterations" if w is optimizer.iterations else owner.get(id(w))
        if role not in saved_by_role:
            raise CheckpointError(
                path, f"the optimizer needs a weight the file lacks ({role})"
            )
        new_weights.append(saved_by_role.pop(role))
    if saved_by_role:
        raise CheckpointError(
            path,
            f"the file has optimizer weights this {cls.__name__} does not use: "
            f"{sorted(map(str, saved_by_role))}",
        )
    try:
        optimizer.set_weights(new_weights)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            path, f"cannot set the optimizer's weights: {exc}"
        ) from None

    if variables is not None:
        for target, value in zip(targets, saved):
            target[...] = value
    names = [v["name"] for v in header["variables"]]
    return Checkpoint(
        path=path,
        optimizer=optimizer,
        variables=dict(zip(names, targets)),
        step=int(optimizer.iterations),
        metadata=header["metadata"],
    )
