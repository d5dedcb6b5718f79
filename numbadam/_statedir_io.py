"""Files of the folder checkpoints of :mod:`numbadam._statedir`.

Creating, writing and ``fsync``-ing new files; opening existing ones (regular
files only, no symbolic links, of the size the manifest says); ``.npy``
headers; checksums; checking a manifest's structure. Every problem with a file
is a :class:`~numbadam.checkpoint.CheckpointError` naming it.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import stat
import zlib
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

try:
    import fcntl
except ImportError:  # (Windows)
    fcntl = None

import numpy as np

from .checkpoint import CheckpointError

__all__ = [
    "FORMAT",
    "VERSION",
    "MANIFEST",
    "MAX_DIMS",
    "ROWS_DTYPE",
    "event",
    "fs_path",
    "is_int",
    "short",
    "numeric",
    "rows_of",
    "row_bytes",
    "fsync_dir",
    "unlink_quietly",
    "ours",
    "files_of",
    "referenced",
    "write_new",
    "write_array",
    "lstat_regular",
    "read_small",
    "read_base",
    "read_manifest",
    "check_manifest",
]

FORMAT = "numbadam.statedir"
VERSION = 1
MANIFEST = "manifest.json"

_BASE_RE = re.compile(r"base-\d{8,}-[0-9a-f]{8}-\d{5,}\.npy\Z")
_DELTA_RE = re.compile(r"delta-\d{8,}-[0-9a-f]{8}-\d{5,}-(?:rows|data)\.npy\Z")
_TMP_RE = re.compile(r"\.manifest\.json\.[0-9a-f]{8}\.tmp\Z")
_CHUNK = 1 << 24  # bytes written or read at a time
_MAX_MANIFEST = 1 << 28
MAX_DIMS = 32
ROWS_DTYPE = np.dtype("<i8")
_CLOEXEC = getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_KINDS = {
    stat.S_IFDIR: "a folder",
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO (named pipe)",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
}

# Test seam: called as _fault(event, file name) before each file-system step
# ("mkdir", "open", "write", "fsync", "fsync-dir", "replace", "unlink"), so a
# test can kill the process between any two of them.
_fault: Optional[Callable[[str, str], None]] = None


def event(what: str, name: str) -> None:
    if _fault is not None:
        _fault(what, name)


# ---------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------


def fs_path(path: Any) -> str:
    try:
        p = os.fsdecode(os.fspath(path))
    except TypeError:
        raise TypeError(
            f"path must be a str, bytes or os.PathLike, got {type(path).__name__}"
        ) from None
    if not p:
        raise CheckpointError(None, "the checkpoint path is empty")
    if "\0" in p:
        raise CheckpointError(p, "the path contains a NUL character")
    return p


def is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def short(x: Any) -> str:
    r = repr(x)
    return r if len(r) <= 60 else r[:57] + "..."


def numeric(dtype: np.dtype) -> bool:
    return (
        dtype.kind in "biufc"
        and dtype.fields is None
        and dtype.subdtype is None
        and dtype.itemsize > 0
    )


def rows_of(a: np.ndarray) -> np.ndarray:
    """``a`` as rows: a 0-d array is one row (a view either way)."""
    return a.reshape(1) if a.ndim == 0 else a


def row_bytes(shape: Tuple[int, ...], dtype: np.dtype) -> int:
    return int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize


def fsync_dir(folder: str) -> None:
    event("fsync-dir", folder)
    try:
        fd = os.open(folder, os.O_RDONLY | _CLOEXEC)
    except OSError:  # Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse it; the rename is what counts
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def folder_lock(folder: str) -> Iterator[None]:
    """Hold the exclusive save lock of ``folder`` (``flock`` on the folder).

    Saves into one folder must not overlap: each removes the files the
    manifest does not reference, which are the other save's new files. The
    lock is taken without waiting: if another process, or another open of the
    folder in this one, holds it, :class:`CheckpointError` naming the folder.
    It is released when the block ends, and by the system when a process dies
    (no stale lock files). Where ``flock`` is not available (Windows) the
    block runs without it.
    """
    if fcntl is None:
        yield
        return
    try:
        fd = os.open(folder, os.O_RDONLY | _CLOEXEC)
    except OSError:
        yield
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CheckpointError(
                folder,
                "another save into this folder is in progress (its lock is "
                "held); saves into one folder must not overlap (with "
                "DistributedAdam, save from rank 0 only). Nothing was written",
            ) from None
        except OSError:  # a file system without locks: as without flock
            pass
        yield
    finally:
        os.close(fd)  # (releases the lock)


def unlink_quietly(path: str) -> bool:
    event("unlink", os.path.basename(path))
    try:
        os.unlink(path)
        return True
    except OSError:
        return False


def ours(name: str) -> bool:
    return bool(_BASE_RE.match(name) or _DELTA_RE.match(name) or _TMP_RE.match(name))


def files_of(doc: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Every file entry of a (checked) manifest."""
    out = []
    for entry in doc["arrays"]:
        out.append(entry["file"])
        for d in entry["deltas"]:
            out.extend((d["rows"], d["data"]))
    return out


def referenced(doc: Dict[str, Any]) -> set:
    return {f["name"] for f in files_of(doc)}


# ---------------------------------------------------------------------------
# writing files
# ---------------------------------------------------------------------------


def _npy_header(shape: Tuple[int, ...], dtype: np.dtype) -> bytes:
    d = {
        "descr": np.lib.format.dtype_to_descr(dtype),
        "fortran_order": False,
        "shape": tuple(shape),
    }
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, d)
    except ValueError:  # a header over 64 KiB: many dimensions
        buf = io.BytesIO()
        np.lib.format.write_array_header_2_0(buf, d)
    return buf.getvalue()


def _row_chunks(rows: np.ndarray, index: Optional[np.ndarray]) -> Iterable[Any]:
    """The bytes of ``rows`` (or of ``rows[index]``), a bounded piece at a time."""
    n = rows.shape[0] if index is None else len(index)
    step = max(1, _CHUNK // max(1, row_bytes(rows.shape, rows.dtype)))
    for i in range(0, n, step):
        part = rows[i : i + step] if index is None else rows[index[i : i + step]]
        yield np.ascontiguousarray(part).reshape(-1).view(np.uint8)


def write_new(
    folder: str, name: str, pieces: Iterable[Any], mode: Optional[int]
) -> Tuple[int, int]:
    """Create ``name`` (it must not exist), write ``pieces``, fsync: (size, crc32)."""
    path = os.path.join(folder, name)
    event("open", name)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC | _NOFOLLOW
    fd = os.open(path, flags, 0o666)  # the umask applies; it is never changed
    try:
        if mode is not None and hasattr(os, "fchmod"):
            os.fchmod(fd, mode)
        size, crc = 0, 0
        for piece in pieces:
            view = memoryview(piece).cast("B")
            if not len(view):
                continue
            event("write", name)
            crc = zlib.crc32(view, crc)
            size += len(view)
            while len(view):
                view = view[os.write(fd, view) :]
        event("fsync", name)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(path)
        raise
    os.close(fd)
    return size, crc


def write_array(
    folder: str,
    name: str,
    rows: np.ndarray,
    index: Optional[np.ndarray],
    shape: Tuple[int, ...],
    mode: Optional[int],
) -> Dict[str, Any]:
    pieces = [_npy_header(shape, rows.dtype)]
    size, crc = write_new(folder, name, _chain(pieces, _row_chunks(rows, index)), mode)
    return {"name": name, "size": size, "crc32": crc}


def _chain(*iterables: Iterable[Any]) -> Iterable[Any]:
    for it in iterables:
        yield from it


# ---------------------------------------------------------------------------
# reading and checking
# ---------------------------------------------------------------------------


def lstat_regular(path: str, missing_ok: bool = False) -> Optional[os.stat_result]:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise CheckpointError(path, "is missing") from None
    if not stat.S_ISREG(st.st_mode):
        kind = _KINDS.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise CheckpointError(path, f"is {kind}, not a regular file; it was left alone")
    return st


def _open_checked(path: str, size: int) -> io.BufferedReader:
    """Open a regular file (no symbolic link) of exactly ``size`` bytes."""
    st = lstat_regular(path)
    if st.st_size != size:
        raise CheckpointError(
            path, f"has {st.st_size} bytes, the manifest says {size}: truncated?"
        )
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _NOFOLLOW)
    except OSError as exc:
        raise CheckpointError(path, f"cannot be opened ({exc.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size != size:
            raise CheckpointError(path, "changed while it was opened")
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _read_header(
    f: Any, path: str, shape: Tuple[int, ...], dtype: np.dtype, size: int
) -> int:
    """Check a ``.npy`` header against shape, dtype and file size: data offset."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            got = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            got = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"unsupported .npy version {version}")
    except Exception as exc:
        raise CheckpointError(path, f"is not a valid .npy file ({exc})") from None
    a_shape, fortran, a_dtype = got
    if a_dtype.hasobject:
        raise CheckpointError(path, "holds pickled objects; it was not read")
    if fortran or a_shape != shape or a_dtype != dtype:
        raise CheckpointError(
            path,
            f"holds shape {a_shape}, dtype {a_dtype}"
            f"{', Fortran order' if fortran else ''}; the manifest says {shape}, "
            f"{dtype}",
        )
    offset = f.tell()
    need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if size != need:
        raise CheckpointError(path, f"has {size} bytes; its header needs {need}")
    return offset


def read_small(path: str, entry: Dict[str, Any], shape, dtype) -> np.ndarray:
    """A delta file, read whole into memory and checksummed."""
    with _open_checked(path, entry["size"]) as f:
        data = f.read()
    if len(data) != entry["size"] or zlib.crc32(data) != entry["crc32"]:
        raise CheckpointError(path, "checksum mismatch: the file is corrupt")
    offset = _read_header(io.BytesIO(data), path, shape, dtype, len(data))
    if offset == len(data):
        return np.empty(shape, dtype)
    return np.frombuffer(data, dtype, offset=offset).reshape(shape)


def read_base(
    path: str, entry: Dict[str, Any], shape, dtype, mmap: bool, verify: bool
) -> np.ndarray:
    with _open_checked(path, entry["size"]) as f:
        offset = _read_header(f, path, shape, dtype, entry["size"])
        nbytes = entry["size"] - offset
        f.seek(0)
        crc = zlib.crc32(f.read(offset))
        if mmap and nbytes:
            while verify:
                block = f.read(_CHUNK)
                if not block:
                    break
                crc = zlib.crc32(block, crc)
            arr = np.memmap(f, dtype=dtype, mode="c", offset=offset, shape=shape)
        else:
            arr = np.empty(shape, dtype)
            raw = arr.reshape(-1).view(np.uint8)
            pos = 0
            while pos < nbytes:
                n = f.readinto(raw[pos : pos + _CHUNK])
                if not n:
                    raise CheckpointError(path, "ends early: truncated")
                if verify:
                    crc = zlib.crc32(raw[pos : pos + n], crc)
                pos += n
    if verify and crc != entry["crc32"]:
        raise CheckpointError(path, "checksum mismatch: the file is corrupt")
    return arr


def _file_problem(f: Any, pattern: "re.Pattern[str]") -> Optional[str]:
    if not isinstance(f, dict):
        return f"{short(f)} is not an object"
    name, size, crc = f.get("name"), f.get("size"), f.get("crc32")
    if not isinstance(name, str) or not pattern.match(name):
        return f"file name {short(name)}"
    if not is_int(size) or size < 0:
        return f"{name}: size {short(size)}"
    if not is_int(crc) or not 0 <= crc < 2**32:
        return f"{name}: crc32 {short(crc)}"
    return None


def _array_problem(a: Any) -> Optional[str]:
    if not isinstance(a, dict) or not isinstance(a.get("name"), str):
        return f"{short(a)} is not an object with a name"
    shape, dtype = a.get("shape"), a.get("dtype")
    if (
        not isinstance(shape, list)
        or len(shape) > MAX_DIMS
        or not all(is_int(n) and n >= 0 for n in shape)
    ):
        return f"shape {short(shape)}"
    try:
        ok = isinstance(dtype, str) and numeric(np.dtype(dtype))
    except Exception:
        ok = False
    if not ok:
        return f"dtype {short(dtype)}"
    problem = _file_problem(a.get("file"), _BASE_RE)
    if problem:
        return problem
    deltas = a.get("deltas")
    if not isinstance(deltas, list):
        return "deltas"
    for d in deltas:
        if not isinstance(d, dict):
            return f"delta {short(d)}"
        count, nrows = d.get("count"), shape[0] if shape else 1
        if not is_int(count) or not 0 <= count <= nrows:
            return f"delta count {short(count)}"
        if not is_int(d.get("generation")):
            return f"delta generation {short(d.get('generation'))}"
        problem = _file_problem(d.get("rows"), _DELTA_RE) or _file_problem(
            d.get("data"), _DELTA_RE
        )
        if problem:
            return problem
    return None


def _doc_problem(doc: Dict[str, Any]) -> Optional[str]:
    for key in ("generation", "delta_saves"):
        if not is_int(doc.get(key)) or doc[key] < 0:
            return f"{key} {short(doc.get(key))}"
    if not isinstance(doc.get("meta"), dict):
        return "meta is not an object"
    arrays = doc.get("arrays")
    if not isinstance(arrays, list):
        return "arrays is not a list"
    names: set = set()
    files: List[str] = []
    for i, a in enumerate(arrays):
        problem = _array_problem(a)
        if problem:
            return f"array {i}: {problem}"
        if a["name"] in names:
            return f"array name {short(a['name'])} appears twice"
        names.add(a["name"])
        files.append(a["file"]["name"])
        for d in a["deltas"]:
            files.extend((d["rows"]["name"], d["data"]["name"]))
    if len(set(files)) != len(files):
        return "a file is listed twice"
    return None


def read_manifest(folder: str) -> Any:
    """The parsed JSON of ``folder``'s manifest; FileNotFoundError if none."""
    mpath = os.path.join(folder, MANIFEST)
    st = lstat_regular(mpath, missing_ok=True)
    if st is None:
        raise FileNotFoundError(errno.ENOENT, "no checkpoint manifest", mpath)
    if st.st_size > _MAX_MANIFEST:
        raise CheckpointError(mpath, f"is {st.st_size} bytes, too big for a manifest")
    with _open_checked(mpath, st.st_size) as f:
        raw = f.read()
    try:
        return json.loads(raw.decode("utf-8"))
    except RecursionError:
        raise CheckpointError(mpath, "is not valid JSON (nested too deeply)") from None
    except ValueError as exc:  # UnicodeDecodeError, JSONDecodeError
        raise CheckpointError(mpath, f"is not valid JSON ({exc})") from None


def check_manifest(folder: str, doc: Any) -> Dict[str, Any]:
    mpath = os.path.join(folder, MANIFEST)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        fmt = doc.get("format") if isinstance(doc, dict) else None
        raise CheckpointError(
            mpath, f"is not a {FORMAT} manifest (format {short(fmt)})"
        )
    if not is_int(doc.get("version")) or doc["version"] != VERSION:
        raise CheckpointError(
            mpath,
            f"has format version {short(doc.get('version'))}; this numbadam reads "
            f"version {VERSION}",
        )
    problem = _doc_problem(doc)
    if problem:
        raise CheckpointError(mpath, f"is malformed ({problem})")
    return doc
