"""Reading: the archive's directory, its header and its arrays, all checked.

Private: the public names are re-exported by :mod:`numbadam.checkpoint`.
"""

from __future__ import annotations

import json
import os
import re
import zipfile
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ._base import FORMAT, HEADER_KEY, VERSION, CheckpointError
from ._files import _open_regular

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
