"""HDF5 files for numbadam.keras3: h5py on demand, safe reads, atomic rewrites.

h5py is imported by :func:`import_h5py` only, when a file is read or written;
every object read is a hard-linked group or dataset inside the file (no soft or
external links, no external or virtual datasets, no "shape bombs"), and a file
is rewritten through a temporary copy in its folder, renamed over it.
"""

from __future__ import annotations

import errno
import math
import os
import re
import shutil
import stat
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from .checkpoint import CheckpointError
from .checkpoint._files import _fsync_dir, _new_temp, _unlink_quietly

#: The message of the ImportError raised when h5py is missing.
H5PY_MISSING_MESSAGE = (
    "numbadam.keras3 reads and writes Keras .weights.h5 files with h5py, which "
    'is not installed: pip install "numbadam[keras]" (or pip install h5py)'
)


# Keras' guard against "shape bomb" datasets (a huge declared shape, next to
# nothing stored): above 4 GiB declared, at most 1000 times the stored bytes.
BOMB_FLOOR_BYTES = 1 << 32
MAX_EXPANSION = 1000


def import_h5py() -> Any:
    try:
        import h5py
    except ImportError as exc:
        raise ImportError(H5PY_MISSING_MESSAGE) from exc
    return h5py


# ---------------------------------------------------------------------------
# reading: regular HDF5 files, plain objects inside them
# ---------------------------------------------------------------------------

KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}


def kind_of(st: os.stat_result) -> str:
    return KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")


def read_stat(path: str) -> os.stat_result:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(
            errno.ENOENT, "no such .weights.h5 file", path
        ) from None
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(path, f"is {kind_of(st)}, not a Keras .weights.h5 file")
    return st


def open_h5(h5py: Any, path: str) -> Any:
    read_stat(path)
    if not h5py.is_hdf5(path):
        raise CheckpointError(path, "is not an HDF5 file (a Keras .weights.h5 file)")
    try:
        return h5py.File(path, "r")
    except OSError as exc:
        raise CheckpointError(path, f"cannot be read as HDF5 ({exc})") from None


def child(h5py: Any, parent: Any, name: str, kind: str, path: str, where: str):
    """``parent[name]``, a hard-linked Group or Dataset, or a CheckpointError."""
    link = parent.get(name, getlink=True)
    if link is None:
        return None
    if not isinstance(link, h5py.HardLink):
        raise CheckpointError(
            path, f"'{where}' is a {type(link).__name__}; only plain HDF5 objects "
            "are read"
        )  # fmt: skip
    obj = parent[name]
    cls = h5py.Group if kind == "group" else h5py.Dataset
    if not isinstance(obj, cls):
        raise CheckpointError(path, f"'{where}' is not an HDF5 {kind}")
    if kind == "dataset":
        if obj.external or obj.is_virtual:
            raise CheckpointError(
                path, f"'{where}' keeps its data outside the file; refused"
            )
        declared = math.prod(obj.shape or ()) * obj.dtype.itemsize
        stored = obj.id.get_storage_size()
        if declared > BOMB_FLOOR_BYTES and declared > MAX_EXPANSION * stored:
            raise CheckpointError(
                path, f"'{where}' declares {declared} bytes but stores {stored}"
            )
    return obj


def datasets(h5py: Any, f: Any, path: str, skip: str) -> Dict[str, np.ndarray]:
    """Every dataset of ``f`` outside the top-level group ``skip``, by path."""
    out: Dict[str, np.ndarray] = {}
    stack = [("", f)]
    while stack:
        prefix, group = stack.pop()
        for name in group.keys():
            where = f"{prefix}{name}"
            if where == skip:
                continue
            link = group.get(name, getlink=True)
            if not isinstance(link, h5py.HardLink):
                raise CheckpointError(
                    path, f"'{where}' is a {type(link).__name__}; refused"
                )
            if isinstance(group[name], h5py.Group):
                stack.append((where + "/", group[name]))
            else:
                out[where] = np.array(
                    child(h5py, group, name, "dataset", path, where)[()]
                )
    return {k: out[k] for k in sorted(out, key=natural)}


def natural(key: str) -> List[Any]:
    return [
        (0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", key)
    ]


def replace(h5py: Any, path: str, edit: Callable[[Any], None]) -> None:
    """Copy ``path`` (if any) to a temporary file, ``edit`` it, rename it over."""
    target = os.path.realpath(path)
    directory, base = os.path.split(target)
    if not os.path.isdir(directory):
        raise FileNotFoundError(errno.ENOENT, f"no such folder {directory!r}", path)
    st = target_stat(target, path)
    # (an empty file, e.g. from tempfile.mkstemp, is written afresh)
    fresh = st is None or st.st_size == 0
    if not fresh and not h5py.is_hdf5(target):
        raise CheckpointError(
            path, "is not an HDF5 file (a Keras .weights.h5); it was left alone"
        )
    fd, tmp = _new_temp(directory, base)
    try:
        with os.fdopen(fd, "wb") as out:
            if st is not None and hasattr(os, "fchmod"):
                os.fchmod(out.fileno(), stat.S_IMODE(st.st_mode))
            if not fresh:
                with open(target, "rb") as src:
                    shutil.copyfileobj(src, out, 1 << 20)
        try:
            f = h5py.File(tmp, "w" if fresh else "r+")
        except OSError as exc:
            raise CheckpointError(path, f"cannot be read as HDF5 ({exc})") from None
        with f:
            edit(f)
        with open(tmp, "rb+") as out:
            os.fsync(out.fileno())
        target_stat(target, path)  # (it may have been replaced meanwhile)
        os.replace(tmp, target)
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(directory)


def target_stat(target: str, shown: str) -> Optional[os.stat_result]:
    try:
        st = os.stat(target)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(
            errno.EISDIR, "the path is a folder; give a file name, e.g. "
            "os.path.join(folder, 'model.weights.h5')", shown
        )  # fmt: skip
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(
            shown, f"is {kind_of(st)}; numbadam replaces only regular files, so it "
            "was left alone"
        )  # fmt: skip
    return st
