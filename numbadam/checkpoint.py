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

Nothing in it is pickled and :func:`load_checkpoint` reads it with
``allow_pickle=False``. Files are written atomically: to a temporary file in the
target's folder, flushed and ``fsync``-ed, then renamed over the target, and the
folder is ``fsync``-ed; a crash leaves either the old checkpoint or the new one.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

from . import _dispatch
from .optimizer import OptimizerV2

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint"]

FORMAT = "numbadam.checkpoint"
VERSION = 1
HEADER_KEY = "__numbadam_checkpoint__"

PathLike = Union[str, "os.PathLike[str]"]
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
        self.path = None if path is None else os.fspath(path)
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


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def save_checkpoint(
    path: PathLike,
    optimizer: OptimizerV2,
    variables: Variables,
    metadata: Optional[Dict[str, Any]] = None,
) -> str:
    """Write ``optimizer`` and ``variables`` to one ``.npz`` file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        Target file (conventionally ``*.npz``; no suffix is added). Its folder
        must exist. An existing file is replaced only once the new one is
        complete on disk.
    optimizer : OptimizerV2
        E.g. a :class:`~numbadam.Adam`. Its class name, config, weights and step
        count are saved.
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
        If the optimizer has state for a variable not in ``variables``, a
        variable is not numeric, or the config or metadata is not JSON.
    FileNotFoundError
        If the folder of ``path`` does not exist.
    TypeError
        If ``optimizer`` is not an :class:`~numbadam.OptimizerV2`.

    Notes
    -----
    The write is atomic: a temporary file in the same folder is written,
    flushed and ``fsync``-ed, renamed over ``path`` with :func:`os.replace`,
    and the folder is ``fsync``-ed. Interrupting it leaves the previous
    checkpoint (if any) intact.

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
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            errno.ENOENT, f"cannot save checkpoint: no such folder {directory!r}", path
        )
    if os.path.isdir(path):
        raise IsADirectoryError(
            errno.EISDIR, "cannot save checkpoint: the path is a folder; give a file "
            "name, e.g. os.path.join(folder, 'model.npz')", path
        )  # fmt: skip
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
    weight_info = []
    for j, (w, role) in enumerate(zip(optimizer.weights, roles)):
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
            "config": optimizer.get_config(),
        },
        "step": int(optimizer.iterations),
        "variables": var_info,
        "weights": weight_info,
        "metadata": {} if metadata is None else metadata,
    }
    if not isinstance(header["metadata"], dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    try:
        text = json.dumps(header)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            path, f"optimizer config or metadata is not JSON-serialisable: {exc}"
        ) from None
    arrays[HEADER_KEY] = np.frombuffer(text.encode("utf-8"), np.uint8)

    fd, tmp = tempfile.mkstemp(
        prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=directory
    )
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _file_mode())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(directory)
    return path


# ---------------------------------------------------------------------------
# loading
# ---------------------------------------------------------------------------


def _read_arrays(path: str) -> Dict[str, np.ndarray]:
    """Every array of the archive, read eagerly; any failure -> CheckpointError."""
    with open(path, "rb") as f:
        head = f.read(8)
    if not head:
        raise CheckpointError(path, "the file is empty")
    if head.startswith(b"\x93NUMPY"):
        raise CheckpointError(path, "a single .npy array, not an .npz checkpoint")
    if not head.startswith(b"PK"):
        raise CheckpointError(
            path, f"not an .npz archive (the file starts with {head!r})"
        )
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(
            path, f"truncated or corrupt .npz archive ({type(exc).__name__}: {exc})"
        ) from None
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as exc:
                if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
                    raise CheckpointError(
                        path,
                        f"array {key!r} holds pickled Python objects; numbadam "
                        "checkpoints never do, so it was not loaded",
                    ) from None
                raise CheckpointError(
                    path, f"array {key!r} is corrupt ({exc})"
                ) from None
            except Exception as exc:  # zlib/zip CRC errors, EOF on truncation
                raise CheckpointError(
                    path,
                    f"array {key!r} is truncated or corrupt ({type(exc).__name__}: "
                    f"{exc})",
                ) from None
    return arrays


def _parse_header(path: str, arrays: Dict[str, np.ndarray]) -> Dict[str, Any]:
    if HEADER_KEY not in arrays:
        shown = ", ".join(sorted(arrays)[:5]) or "none"
        raise CheckpointError(
            path,
            f"not a numbadam checkpoint: no {HEADER_KEY!r} entry (arrays: {shown})",
        )
    raw = arrays[HEADER_KEY]
    if raw.dtype != np.uint8 or raw.ndim != 1:
        raise CheckpointError(path, f"{HEADER_KEY!r} is not a uint8 byte string")
    try:
        header = json.loads(raw.tobytes().decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(path, f"the header is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(path, "the header is not a numbadam checkpoint header")
    version = header.get("version")
    if version != VERSION:
        raise CheckpointError(
            path,
            f"checkpoint format version {version!r}; this numbadam reads version "
            f"{VERSION}",
        )
    try:
        opt = header["optimizer"]
        assert isinstance(opt["class_name"], str) and isinstance(opt["config"], dict)
        assert isinstance(header["step"], int) and header["step"] >= 0
        assert isinstance(header["metadata"], dict)
        for v in header["variables"]:
            assert isinstance(v["name"], str)
            _shape_dtype(v)
        for w in header["weights"]:
            _shape_dtype(w)
            if w["role"] == "slot":
                assert isinstance(w["slot"], str)
                assert 0 <= w["variable"] < len(header["variables"])
            else:
                assert w["role"] == "iterations"
    except (KeyError, TypeError, AssertionError, ValueError):
        raise CheckpointError(path, "the header is incomplete or malformed") from None
    return header


def _shape_dtype(entry: Dict[str, Any]) -> tuple:
    shape = tuple(entry["shape"])
    if not all(isinstance(s, int) and s >= 0 for s in shape):
        raise ValueError("bad shape")
    return shape, np.dtype(entry["dtype"])


def _check_contents(path: str, header: Dict[str, Any], arrays: Dict[str, np.ndarray]):
    expected = {HEADER_KEY: None}
    for i, v in enumerate(header["variables"]):
        expected[f"variable_{i}"] = (f"variable {v['name']!r}", v)
    for j, w in enumerate(header["weights"]):
        expected[f"weight_{j}"] = (f"optimizer weight {j}", w)
    missing = [k for k in expected if k not in arrays]
    if missing:
        raise CheckpointError(path, f"missing array(s) {', '.join(missing)}")
    extra = sorted(k for k in arrays if k not in expected)
    if extra:
        raise CheckpointError(path, f"unexpected array(s) {', '.join(extra)}")
    for key, spec in expected.items():
        if spec is None:
            continue
        what, entry = spec
        shape, dtype = _shape_dtype(entry)
        arr = arrays[key]
        if arr.shape != shape or arr.dtype != dtype:
            raise CheckpointError(
                path,
                f"{what} has shape {arr.shape} and dtype {arr.dtype}, but the header "
                f"says {shape}, {dtype}",
            )


def _optimizer_class(path: str, name: str, custom_objects: Optional[Dict]) -> type:
    import numbadam

    cls = (custom_objects or {}).get(name, getattr(numbadam, name, None))
    if not (isinstance(cls, type) and issubclass(cls, OptimizerV2)):
        raise CheckpointError(
            path,
            f"unknown optimizer class {name!r} (pass it in custom_objects if it is "
            "your own)",
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
    path : str or os.PathLike
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
        If the file is not an ``.npz`` archive, is truncated or corrupt, is not
        a numbadam checkpoint, holds pickled objects, is internally
        inconsistent, or does not match ``variables``. Nothing given is modified
        then.
    FileNotFoundError
        If ``path`` does not exist.

    Notes
    -----
    The file is read with ``numpy.load(path, allow_pickle=False)`` and every
    array is read and checked before any variable is written. Training
    continues bit-identically: ``N`` steps equal ``k`` steps, a save, a load
    (in any process) and ``N - k`` steps.

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
    path = os.fspath(path)
    if not os.path.isfile(path):
        if os.path.isdir(path):
            raise CheckpointError(path, "is a folder, not a checkpoint file")
        raise FileNotFoundError(errno.ENOENT, "no such checkpoint file", path)
    arrays = _read_arrays(path)
    header = _parse_header(path, arrays)
    _check_contents(path, header, arrays)
    saved = [arrays[f"variable_{i}"] for i in range(len(header["variables"]))]
    targets = _targets(path, header, saved, variables)

    opt_info = header["optimizer"]
    cls = _optimizer_class(path, opt_info["class_name"], custom_objects)
    try:
        optimizer = cls.from_config(opt_info["config"], custom_objects=custom_objects)
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
    if int(saved_by_role["iterations"]) != header["step"]:
        raise CheckpointError(path, "the step count disagrees with iterations")
    try:
        optimizer.build([targets[i] for i in trained])
    except (TypeError, ValueError) as exc:
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
