"""Folder checkpoints for large arrays, with incremental (delta) saves.

A checkpoint folder holds one ``.npy`` file per array of the last full
("base") save, the ``.npy`` files of the delta saves since, and
``manifest.json``, which says how to put them together. Arrays are addressed
by row (axis 0; a 1-D array has rows of one element, a 0-d array is one row).
A delta save writes only the rows a caller marks dirty; loading memory-maps
the base files copy-on-write and writes the deltas' rows over them, in order,
so reading a checkpoint costs about the size of its deltas.

Manifest (format ``"numbadam.statedir"``, version 1), JSON::

    {"format": "numbadam.statedir", "version": 1,
     "generation": 3,            # saves into this folder so far, less one
     "delta_saves": 2,           # delta saves since the base save
     "meta": {...},              # the caller's JSON dict
     "arrays": [{"name": "w", "shape": [1000, 16], "dtype": "<f4",
                 "file": {"name": "base-00000001-1a2b3c4d-00000.npy",
                          "size": 64128, "crc32": 123},
                 "deltas": [{"generation": 2, "count": 3,
                             "rows": {"name": "delta-...-00000-rows.npy", ...},
                             "data": {"name": "delta-...-00000-data.npy", ...}}]}]}

``size`` is the file's length in bytes and ``crc32`` the :func:`zlib.crc32` of
all its bytes. A delta's ``rows`` file is a 1-D ``<i8`` array of ``count``
strictly increasing row indices, its ``data`` file the array's rows there
(shape ``(count,) + shape[1:]``, the array's dtype). Every file is a plain
``.npy`` (version 1.0 or 2.0 header, C order, never pickled).

Files are named ``base-<generation>-<tag>-<index>.npy`` and
``delta-<generation>-<tag>-<index>-{rows,data}.npy`` (``tag``: 8 random hex
digits per save), so a save never writes over a file the manifest uses: each
new file is created exclusively, written and ``fsync``-ed, the folder
``fsync``-ed, then the manifest is replaced atomically (a temporary
``.manifest.json.<tag>.tmp``, ``fsync``, :func:`os.replace`, ``fsync`` of the
folder), and only then are files of these name patterns that it no longer
references removed. A crash at any point leaves the previous checkpoint
loadable; the next successful save removes what the crash left. Other files in
the folder are never touched. A save holds the folder's lock (``flock``):
a second save into the folder while one is in progress raises
:class:`~numbadam.CheckpointError` and writes nothing.
"""

from __future__ import annotations

import errno
import json
import os
import secrets
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

from ._statedir_io import (
    FORMAT,
    MANIFEST,
    MAX_DIMS,
    ROWS_DTYPE,
    VERSION,
    check_manifest,
    event,
    files_of,
    folder_lock,
    fs_path,
    fsync_dir,
    is_int,
    lstat_regular,
    numeric,
    ours,
    read_base,
    read_manifest,
    read_small,
    referenced,
    row_bytes,
    rows_of,
    short,
    unlink_quietly,
    write_array,
    write_new,
)
from .checkpoint import CheckpointError

__all__ = ["FORMAT", "MANIFEST", "VERSION", "SaveInfo", "load", "save"]

PathLike = Union[str, bytes, "os.PathLike[str]"]


@dataclass(frozen=True)
class SaveInfo:
    """What :func:`save` did.

    Attributes
    ----------
    kind : str
        ``"full"`` (every array written anew) or ``"delta"`` (dirty rows only).
    bytes_written : int
        Bytes of all files written, the manifest included.
    seconds : float
        Wall time of the save.
    files : tuple of str
        Names of the files written, in the folder (``manifest.json`` last).
    removed : tuple of str
        Names of the files removed (no longer used, or left by a crash).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from numbadam import _statedir
    >>> folder = os.path.join(tempfile.mkdtemp(), "state")
    >>> info = _statedir.save(folder, {"w": np.zeros((4, 2))}, {})
    >>> info.kind, info.files[-1], info.bytes_written > 64
    ('full', 'manifest.json', True)
    """

    kind: str
    bytes_written: int
    seconds: float
    files: Tuple[str, ...]
    removed: Tuple[str, ...]


# ---------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------


def _is_row_source(a: Any) -> bool:
    # An array whose rows come to the host on demand (the CUDA backend's
    # DeviceRows): shape, dtype, ndim >= 1, nbytes, and [a:b] / [rows]
    # returning host arrays. The writer reads it a bounded piece at a time.
    return (
        isinstance(getattr(a, "shape", None), tuple)
        and isinstance(getattr(a, "dtype", None), np.dtype)
        and getattr(a, "ndim", 0) >= 1
        and isinstance(getattr(a, "nbytes", None), int)
        and hasattr(type(a), "__getitem__")
    )


def _check_arrays(arrays: Any) -> List[Tuple[str, np.ndarray]]:
    if not isinstance(arrays, Mapping):
        raise TypeError(f"arrays must be a mapping, got {type(arrays).__name__}")
    items = []
    for name, a in arrays.items():
        if not isinstance(name, str):
            raise TypeError(f"array names must be strings, got {short(name)}")
        if not isinstance(a, np.ndarray) and not _is_row_source(a):
            raise TypeError(f"array {name!r} is a {type(a).__name__}, not an ndarray")
        if not numeric(a.dtype) or a.ndim > MAX_DIMS:
            raise ValueError(f"array {name!r} (dtype {a.dtype}) is not numeric")
        items.append((name, a))
    return items


def _dirty_rows(
    dirty: Mapping, items: List[Tuple[str, np.ndarray]]
) -> Dict[str, Optional[np.ndarray]]:
    if not isinstance(dirty, Mapping):
        raise TypeError(f"dirty must be a mapping, got {type(dirty).__name__}")
    names = [n for n, _ in items]
    unknown = [k for k in dirty if k not in names]
    missing = [n for n in names if n not in dirty]
    if unknown or missing:
        raise ValueError(
            f"dirty must have one entry per array (None: unchanged); unknown "
            f"{unknown}, missing {missing}"
        )
    out: Dict[str, Optional[np.ndarray]] = {}
    for name, a in items:
        mask = dirty[name]
        if mask is None:
            out[name] = None
            continue
        mask = np.asarray(mask)
        nrows = rows_of(a).shape[0]
        if mask.dtype not in (np.bool_, np.uint8):
            raise TypeError(f"dirty[{name!r}] has dtype {mask.dtype}, not bool/uint8")
        if mask.shape != (nrows,) and not (a.ndim == 0 and mask.shape == ()):
            raise ValueError(
                f"dirty[{name!r}] has shape {mask.shape}; array {name!r} has "
                f"{nrows} rows, so it must be ({nrows},)"
            )
        out[name] = np.flatnonzero(mask.reshape(-1)).astype(np.int64)
    return out


def _current(folder: str) -> Tuple[Optional[Dict[str, Any]], Optional[int]]:
    """The folder's valid checkpoint manifest (or None) and the manifest's mode.

    A manifest that is not a regular file, not JSON or another format's is
    not ours to replace: CheckpointError.
    """
    mpath = os.path.join(folder, MANIFEST)
    try:
        doc = read_manifest(folder)
    except FileNotFoundError:
        return None, None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(
            mpath,
            f"is not a {FORMAT} manifest, so it was left alone; remove it or save "
            "into another folder",
        )
    mode = stat.S_IMODE(os.lstat(mpath).st_mode)
    try:
        doc = check_manifest(folder, doc)
        for f in files_of(doc):
            p = os.path.join(folder, f["name"])
            if lstat_regular(p).st_size != f["size"]:  # type: ignore[union-attr]
                raise CheckpointError(p, "has the wrong size")
    except CheckpointError:
        return None, mode  # a broken checkpoint of ours: a full save replaces it
    return doc, mode


def _layout(items: List[Tuple[str, np.ndarray]]) -> List[Tuple[str, List[int], str]]:
    return [(n, list(a.shape), a.dtype.str) for n, a in items]


def _choose_kind(
    items: List[Tuple[str, np.ndarray]],
    rows: Optional[Dict[str, Optional[np.ndarray]]],
    full: bool,
    old: Optional[Dict[str, Any]],
    full_every: int,
) -> str:
    if (
        rows is None
        or full
        or old is None
        or old["delta_saves"] >= full_every
        or _layout(items)
        != [(a["name"], a["shape"], a["dtype"]) for a in old["arrays"]]
    ):
        return "full"
    delta = sum(
        len(r) * (row_bytes(rows_of(a).shape, a.dtype) + ROWS_DTYPE.itemsize)
        for (_, a), r in zip(items, rows.values())
        if r is not None
    )
    return "full" if delta and delta >= sum(a.nbytes for _, a in items) else "delta"


def _remove_ours(folder: str, listing: List[str], keep: set) -> List[str]:
    """Remove the files of our name patterns not in ``keep``: their names."""
    removed = []
    for name in listing:
        if ours(name) and name not in keep:
            if unlink_quietly(os.path.join(folder, name)):
                removed.append(name)
    return removed


def save(
    path: PathLike,
    arrays: Mapping[str, np.ndarray],
    meta: Dict[str, Any],
    *,
    dirty: Optional[Mapping[str, Optional[np.ndarray]]] = None,
    full: bool = False,
    full_every: int = 8,
) -> SaveInfo:
    """Save ``arrays`` and ``meta`` into the folder ``path``, in full or as a delta.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        The checkpoint folder. It is created if missing (its parent must
        exist); an existing path must be a folder.
    arrays : mapping of str to numpy.ndarray
        Numeric arrays (a :class:`numpy.memmap` from :func:`load` too), in the
        order they are to be stored; or *row sources* of at least one
        dimension (``shape``, ``dtype``, ``ndim``, ``nbytes``, with ``[a:b]``
        and ``[rows]`` returning host arrays: a device array read by rows),
        of which only the rows written are read.
    meta : dict
        JSON-serialisable data of the caller's own, returned by :func:`load`.
    dirty : mapping of str to array or None, optional
        One entry per array: a bool or uint8 mask of its rows (length
        ``shape[0]``; one element for a 0-d array), nonzero where rows changed
        since the last successful save, or ``None`` if it did not change. Only
        these rows are written. Without it, the save is full.
    full : bool, default False
        Write every array in full even if ``dirty`` is given.
    full_every : int, default 8
        After this many delta saves since the last full one, save in full.

    Returns
    -------
    SaveInfo
        The kind of save, bytes and files written, files removed, time taken.

    Raises
    ------
    TypeError, ValueError
        If an argument is malformed (``dirty`` lacking an array, a mask of the
        wrong length or dtype, ``meta`` not JSON...). Nothing is written then.
    CheckpointError
        If ``path`` exists and is not a folder, or its ``manifest.json`` is not
        a regular file or belongs to something else.
    OSError
        If writing fails (a full disk): the previous checkpoint is unchanged.

    Notes
    -----
    The save is full when ``dirty`` is None, ``full`` is set, the folder holds
    no valid checkpoint, the names, order, shapes or dtypes differ from the
    saved ones, ``full_every`` delta saves already exist, or the delta would be
    no smaller than a full save. A delta is correct only if every row that
    differs from the saved checkpoint is marked: **clear the dirty masks only
    after** ``save`` **returns**; if it raises, keep them for the next save.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from numbadam import _statedir
    >>> folder = os.path.join(tempfile.mkdtemp(), "state")
    >>> table = np.zeros((1000, 8), np.float32)
    >>> _statedir.save(folder, {"table": table}, {"step": 0}).kind
    'full'
    >>> table[[3, 7]] = 1.0
    >>> mask = np.zeros(1000, bool)
    >>> mask[[3, 7]] = True
    >>> info = _statedir.save(folder, {"table": table}, {"step": 1},
    ...                       dirty={"table": mask})
    >>> info.kind, info.bytes_written < 2000
    ('delta', True)
    >>> mask[:] = False  # only after a successful save
    """
    t0 = time.perf_counter()
    folder = fs_path(path)
    items = _check_arrays(arrays)
    if not isinstance(meta, dict):
        raise TypeError(f"meta must be a dict, got {type(meta).__name__}")
    try:
        json.dumps(meta)
    except (TypeError, ValueError, RecursionError) as exc:
        raise ValueError(f"meta is not JSON-serialisable: {exc}") from None
    if not is_int(full_every) or full_every < 0:
        raise ValueError(f"full_every must be an integer >= 0, got {full_every!r}")
    rows = None if dirty is None else _dirty_rows(dirty, items)

    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise CheckpointError(folder, "exists and is not a folder")
    if not os.path.isdir(folder):
        event("mkdir", folder)
        os.mkdir(folder)
        fsync_dir(os.path.dirname(os.path.abspath(folder)))
    with folder_lock(folder):
        return _save_locked(folder, items, rows, meta, full, full_every, t0)


def _save_locked(
    folder: str,
    items: List[Tuple[str, np.ndarray]],
    rows: Optional[Dict[str, Optional[np.ndarray]]],
    meta: Dict[str, Any],
    full: bool,
    full_every: int,
    t0: float,
) -> SaveInfo:
    # save()'s writes, under the folder's lock
    old, mode = _current(folder)

    kind = _choose_kind(items, rows, full, old, full_every)
    listing = os.listdir(folder)
    removed = [] if old is None else _remove_ours(folder, listing, referenced(old))
    while True:
        tag = secrets.token_hex(4)
        if not any(tag in name for name in listing):
            break
    gen = old["generation"] + 1 if old is not None else 0
    stem = f"{gen:08d}-{tag}"
    written: List[str] = []
    nbytes = 0
    entries = []

    def record(f: Dict[str, Any]) -> Dict[str, Any]:
        nonlocal nbytes
        written.append(f["name"])
        nbytes += f["size"]
        return f

    try:
        for i, (name, a) in enumerate(items):
            r = rows_of(a)
            if kind == "full":
                f = write_array(
                    folder, f"base-{stem}-{i:05d}.npy", r, None, a.shape, mode
                )
                deltas: List[Dict[str, Any]] = []
                file_entry = record(f)
            else:
                prev = old["arrays"][i]
                file_entry, deltas = prev["file"], list(prev["deltas"])
                idx = rows[name]
                if idx is not None and len(idx) and r.nbytes:
                    base = f"delta-{stem}-{i:05d}"
                    ri = idx.astype(ROWS_DTYPE)
                    fr = write_array(
                        folder, f"{base}-rows.npy", ri, None, ri.shape, mode
                    )
                    record(fr)
                    shape = (len(idx),) + r.shape[1:]
                    fd = write_array(folder, f"{base}-data.npy", r, idx, shape, mode)
                    record(fd)
                    deltas.append(
                        {"generation": gen, "count": len(idx), "rows": fr, "data": fd}
                    )
            entries.append(
                {
                    "name": name,
                    "shape": list(a.shape),
                    "dtype": a.dtype.str,
                    "file": file_entry,
                    "deltas": deltas,
                }
            )
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "generation": gen,
            "delta_saves": 0
            if old is None or kind == "full"
            else old["delta_saves"] + 1,
            "meta": meta,
            "arrays": entries,
        }
        text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
        fsync_dir(folder)  # the new files' names are durable before the switch
        tmp = f".{MANIFEST}.{tag}.tmp"
        nbytes += write_new(folder, tmp, [text], mode)[0]
        written.append(tmp)
        lstat_regular(os.path.join(folder, MANIFEST), missing_ok=True)
        event("replace", MANIFEST)
        os.replace(os.path.join(folder, tmp), os.path.join(folder, MANIFEST))
        written[-1] = MANIFEST
    except BaseException as exc:
        for name in written:
            unlink_quietly(os.path.join(folder, name))
        if isinstance(exc, OSError) and exc.errno is not None:
            raise OSError(
                exc.errno,
                f"cannot save checkpoint ({exc.strerror}); the previous checkpoint "
                "is unchanged",
                folder,
            ) from exc
        raise
    fsync_dir(folder)

    try:
        removed += _remove_ours(folder, os.listdir(folder), referenced(doc))
    except OSError:
        pass
    return SaveInfo(
        kind, nbytes, time.perf_counter() - t0, tuple(written), tuple(removed)
    )


# ---------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------


def load(
    path: PathLike, mmap_mode: Optional[str] = "c", *, verify: Optional[bool] = None
) -> Tuple[Dict[str, Any], Dict[str, np.ndarray]]:
    """Read a checkpoint folder written by :func:`save`.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        The checkpoint folder.
    mmap_mode : {"c", "r", None}, default "c"
        ``"c"``: each base file is memory-mapped copy-on-write
        (:class:`numpy.memmap`): only the pages a delta writes, or the caller
        later reads or writes, are touched, and writes never reach the files.
        ``"r"``: the same, returned read-only. ``None``: read into memory.
    verify : bool, optional
        Also checksum the base files (reading them whole). By default only
        when they are read into memory (``mmap_mode=None``). Delta files are
        always checksummed.

    Returns
    -------
    meta : dict
        The ``meta`` given to :func:`save`.
    arrays : dict of str to numpy.ndarray
        The arrays, in saved order, bitwise equal to those saved.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If ``path`` is not a folder, or the manifest or any file it lists is
        missing, truncated, corrupt, inconsistent (shape, dtype, size, rows out
        of range), or not a regular file (a symbolic link, FIFO, device...).
        The message names the file.
    ValueError
        If ``mmap_mode`` is not one of the above (``"r+"`` would write the
        deltas into the checkpoint's own files).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from numbadam import _statedir
    >>> folder = os.path.join(tempfile.mkdtemp(), "state")
    >>> _ = _statedir.save(folder, {"v": np.arange(6.0)}, {"step": 3})
    >>> meta, arrays = _statedir.load(folder)
    >>> meta, arrays["v"].tolist(), isinstance(arrays["v"], np.memmap)
    ({'step': 3}, [0.0, 1.0, 2.0, 3.0, 4.0, 5.0], True)
    """
    if mmap_mode not in ("c", "r", None):
        raise ValueError(f"mmap_mode must be 'c', 'r' or None, got {mmap_mode!r}")
    folder = fs_path(path)
    if not os.path.exists(folder):
        raise FileNotFoundError(errno.ENOENT, "no such checkpoint folder", folder)
    if not os.path.isdir(folder):
        raise CheckpointError(folder, "is not a folder")
    if verify is None:
        verify = mmap_mode is None
    try:
        raw = read_manifest(folder)
    except FileNotFoundError:
        raise CheckpointError(
            os.path.join(folder, MANIFEST), "is missing: not a checkpoint folder"
        ) from None
    doc = check_manifest(folder, raw)
    # Every file's presence, kind and size first: a broken folder fails fast.
    for name in referenced(doc):
        lstat_regular(os.path.join(folder, name))
    out: Dict[str, np.ndarray] = {}
    for a in doc["arrays"]:
        shape, dtype = tuple(a["shape"]), np.dtype(a["dtype"])
        p = os.path.join(folder, a["file"]["name"])
        arr = read_base(p, a["file"], shape, dtype, mmap_mode is not None, verify)
        view = rows_of(arr)
        nrows, rshape = view.shape[0], view.shape[1:]
        for d in a["deltas"]:
            count = d["count"]
            rp = os.path.join(folder, d["rows"]["name"])
            idx = read_small(rp, d["rows"], (count,), ROWS_DTYPE)
            if count and (
                idx[0] < 0 or idx[-1] >= nrows or not bool(np.all(idx[1:] > idx[:-1]))
            ):
                raise CheckpointError(
                    rp, f"row indices are not increasing within [0, {nrows})"
                )
            dp = os.path.join(folder, d["data"]["name"])
            data = read_small(dp, d["data"], (count,) + rshape, dtype)
            view[idx] = data
        if mmap_mode == "r":
            arr.flags.writeable = False
        out[a["name"]] = arr
    return doc["meta"], out
