"""Slots on disk: an optimizer's ``m``, ``v`` (...) as ``.npy`` memory maps.

``Adam(..., slot_dir=path)`` keeps the slots of its NumPy variables in the
folder ``path``, one ``.npy`` file per slot (:func:`numpy.lib.format.open_memmap`),
named by the variable's position (the order in which the optimizer first
created slots for it) and the slot's name: ``slot-00000-m.npy``,
``slot-00000-v.npy``, ``slot-00001-m.npy``... The folder's ``numbadam-slots.json``
marker names the optimizer that owns it; a second optimizer is refused.

Checks, all before anything changes: at construction, the folder must exist,
be a writable folder and hold no marker; before the slots of a step (or of
:meth:`~numbadam.OptimizerV2.build`) are created, the files they would take
must not exist (a regular file of that name is another run's state, anything
else is not ours to replace) and the free space (:func:`shutil.disk_usage`)
must hold them. The marker is written when the first slot file is. Each file
is reserved in full (``posix_fallocate`` where there is one), so a later full
disk cannot turn a page write into a ``SIGBUS``.

The slots are plain :class:`numpy.ndarray` views of the memory maps (the
kernels take those; ``slot.base`` is the :class:`numpy.memmap`). CUDA
variables and the flat slots of a :class:`~numbadam.ParameterBuffer` stay in
memory.

Reusing a folder is explicit: :func:`release_slot_dir` removes the marker and
the slot files of a previous optimizer (whose process has ended); the new
optimizer then fills its fresh slots from a checkpoint
(:meth:`~numbadam.OptimizerV2.load_state_dir`). Slot files are never reopened
silently: after a crash they hold a step's partial writes.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import stat
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

__all__ = ["MARKER", "SlotDir", "release_slot_dir", "slot_file_name"]

MARKER = "numbadam-slots.json"
_FORMAT = "numbadam.slotdir"
_SLOT_RE = re.compile(r"slot-\d{5,}-[A-Za-z0-9_]+\.npy\Z")
_NAME_RE = re.compile(r"[A-Za-z0-9_]+\Z")

PathLike = Union[str, bytes, "os.PathLike[str]"]


def slot_file_name(position: int, slot_name: str) -> str:
    """The file of slot ``slot_name`` of the variable at ``position``.

    Examples
    --------
    >>> from numbadam._slotdir import slot_file_name
    >>> slot_file_name(3, "m")
    'slot-00003-m.npy'
    """
    return f"slot-{position:05d}-{slot_name}.npy"


def _folder(path: Any) -> str:
    try:
        folder = os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(
            f"slot_dir must be a str, bytes or os.PathLike, got {type(path).__name__}"
        ) from None
    if not folder or "\0" in folder:
        raise ValueError(f"slot_dir {folder!r} is not a usable path")
    return folder


def _read_marker(folder: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(folder, MARKER)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(st.st_mode) or st.st_size > 1 << 16:
        raise ValueError(f"slot_dir {folder!r}: {MARKER} is not a marker file of ours")
    with open(path, "rb") as f:
        try:
            doc = json.loads(f.read().decode("utf-8"))
        except ValueError:
            doc = None
    if not isinstance(doc, dict) or doc.get("format") != _FORMAT:
        raise ValueError(f"slot_dir {folder!r}: {MARKER} is not a marker file of ours")
    return doc


class SlotDir:
    """The slot folder of one optimizer (see the module docstring).

    Parameters
    ----------
    path : str, bytes or os.PathLike
        An existing, writable folder without another optimizer's marker.
    owner : str
        The optimizer's class and name, written into the marker.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    NotADirectoryError
        If it is not a folder.
    PermissionError
        If it is not writable.
    ValueError
        If it holds another optimizer's slots (a marker).

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> from numbadam._slotdir import SlotDir
    >>> sd = SlotDir(tempfile.mkdtemp(), "Adam 'Adam'")
    >>> w = np.ones((4, 2), np.float32)
    >>> sd.check([(w, ("m", "v"))])
    >>> m = sd.zeros(w, "m")
    >>> m.shape, type(m.base).__name__, sd.files()
    ((4, 2), 'memmap', ['slot-00000-m.npy'])
    """

    def __init__(self, path: PathLike, owner: str) -> None:
        folder = _folder(path)
        if not os.path.exists(folder):
            raise FileNotFoundError(
                errno.ENOENT, "slot_dir does not exist (create it first)", folder
            )
        if not os.path.isdir(folder):
            raise NotADirectoryError(errno.ENOTDIR, "slot_dir is not a folder", folder)
        if not os.access(folder, os.W_OK | os.X_OK):
            raise PermissionError(errno.EACCES, "slot_dir is not writable", folder)
        doc = _read_marker(folder)
        if doc is not None:
            raise ValueError(
                f"slot_dir {folder!r} holds the slots of another optimizer "
                f"({doc.get('owner')!r}); use a new folder, or call "
                "numbadam.release_slot_dir(path) once that optimizer is gone and "
                "load its checkpoint with load_state_dir"
            )
        self.path = folder
        self.owner = str(owner)
        self._token = secrets.token_hex(8)
        self._claimed = False
        self._positions: Dict[int, Tuple[Any, int]] = {}  # id(var) -> (var, pos)
        self._files: List[str] = []
        #: id(slot view) -> the numpy.memmap behind it
        self.maps: Dict[int, np.memmap] = {}

    def __fspath__(self) -> str:
        return self.path

    def _position(self, var: Any, create: bool) -> int:
        hit = self._positions.get(id(var))
        if hit is not None and hit[0] is var:
            return hit[1]
        if not create:
            return len(self._positions)
        pos = len(self._positions)
        self._positions[id(var)] = (var, pos)
        return pos

    def files(self) -> List[str]:
        """Names of the slot files created so far, in creation order."""
        return list(self._files)

    def check(self, needs: List[Tuple[Any, Tuple[str, ...]]]) -> None:
        """Refuse the slots ``needs`` (``(var, missing slot names)``) before any is
        created: a taken file name, a marker of another optimizer, no room.

        Raises
        ------
        FileExistsError
            If a slot's file already exists (or is a link, FIFO, folder...).
        ValueError
            If another optimizer claimed the folder meanwhile.
        OSError
            ``ENOSPC`` if the free space cannot hold the new slots.
        """
        if not needs:
            return
        self._check_owner()
        total = 0
        nxt = len(self._positions)
        for var, names in needs:
            if not isinstance(var, np.ndarray):
                continue  # (a CUDA variable: its slots stay on the device)
            hit = self._positions.get(id(var))
            if hit is not None and hit[0] is var:
                pos = hit[1]
            else:
                pos, nxt = nxt, nxt + 1
            for name in names:
                if not _NAME_RE.match(name):
                    raise ValueError(f"slot name {name!r} cannot name a slot file")
                path = os.path.join(self.path, slot_file_name(pos, name))
                if os.path.lexists(path):
                    raise FileExistsError(
                        errno.EEXIST,
                        "a slot file would go where something already is (another "
                        "run's state?); it was left alone",
                        path,
                    )
                total += var.nbytes + 128
        if total:
            free = shutil.disk_usage(self.path).free
            if free < total:
                raise OSError(
                    errno.ENOSPC,
                    f"slot_dir has {free} bytes free; the new slots need {total}",
                    self.path,
                )

    def _check_owner(self) -> None:
        doc = _read_marker(self.path)
        if doc is None:
            if self._claimed:
                raise ValueError(f"slot_dir {self.path!r} lost its {MARKER} marker")
            return
        if doc.get("token") != self._token:
            raise ValueError(
                f"slot_dir {self.path!r} now holds the slots of another optimizer "
                f"({doc.get('owner')!r})"
            )

    def _claim(self) -> None:
        if self._claimed:
            return
        doc = {"format": _FORMAT, "version": 1, "owner": self.owner,
               "token": self._token, "pid": os.getpid()}  # fmt: skip
        path = os.path.join(self.path, MARKER)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        with os.fdopen(fd, "w") as f:
            json.dump(doc, f)
        self._claimed = True

    def zeros(
        self, var: np.ndarray, slot_name: str, shape: Any = None, dtype: Any = None
    ) -> np.ndarray:
        """A new zero slot of ``var`` (of its shape and dtype unless given).

        Call after :meth:`check`. Returns a plain ndarray view of the
        :class:`numpy.memmap` (kept in :attr:`maps`).
        """
        self._claim()
        pos = self._position(var, True)
        name = slot_file_name(pos, slot_name)
        path = os.path.join(self.path, name)
        shape = tuple(var.shape if shape is None else shape)
        dtype = np.dtype(var.dtype if dtype is None else dtype)
        # (created exclusively first: never truncate a file that appeared since
        # check(); open_memmap then rewrites the empty file of our own)
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        self._files.append(name)
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
        if mm.nbytes and hasattr(os, "posix_fallocate"):
            fd = os.open(path, os.O_RDWR)
            try:
                os.posix_fallocate(fd, 0, os.fstat(fd).st_size)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
            finally:
                os.close(fd)
        view = mm.view(np.ndarray)
        self.maps[id(view)] = mm
        return view

    def flush(self) -> None:
        """Write every slot's dirty pages to its file (``msync``)."""
        for mm in self.maps.values():
            mm.flush()


def release_slot_dir(path: PathLike) -> List[str]:
    """Free a slot folder left by an optimizer that is gone, for a new one.

    Removes the folder's ``numbadam-slots.json`` marker and its ``slot-*.npy``
    files (nothing else). Their contents are not a checkpoint (a crash may
    have left a step half-written): restore the state with
    :meth:`~numbadam.OptimizerV2.load_state_dir` after creating the new
    optimizer. Never call it while that optimizer is still in use.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        The folder.

    Returns
    -------
    list of str
        The names of the files removed.

    Raises
    ------
    FileNotFoundError
        If ``path`` is not a folder holding a marker.
    ValueError
        If the marker is not numbadam's.

    Examples
    --------
    >>> import tempfile
    >>> import numpy as np
    >>> import numbadam
    >>> folder = tempfile.mkdtemp()
    >>> w = np.zeros(3, np.float32)
    >>> opt = numbadam.Adam(slot_dir=folder)
    >>> _ = opt.apply_gradients([(np.ones(3, np.float32), w)])
    >>> del opt
    >>> numbadam.release_slot_dir(folder)
    ['slot-00000-m.npy', 'slot-00000-v.npy', 'numbadam-slots.json']
    >>> twin = numbadam.Adam(slot_dir=folder)  # accepted now
    """
    folder = _folder(path)
    if _read_marker(folder) is None:
        raise FileNotFoundError(errno.ENOENT, f"no {MARKER} marker here", folder)
    removed = []
    for name in sorted(os.listdir(folder)):
        if _SLOT_RE.match(name) and stat.S_ISREG(
            os.lstat(os.path.join(folder, name)).st_mode
        ):
            os.unlink(os.path.join(folder, name))
            removed.append(name)
    os.unlink(os.path.join(folder, MARKER))
    removed.append(MARKER)
    return removed
