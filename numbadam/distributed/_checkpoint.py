"""Sharded checkpoints: one ``.npz`` per rank and a small JSON manifest.

Layout of a checkpoint directory::

    manifest.json
    shard-00000-of-00002-<tag>.npz
    shard-00001-of-00002-<tag>.npz

Every saved array is the flat (C-order) range ``[lo, hi)`` of one *weight* (a
slot, or an embedding table) of one *variable*. The manifest lists the variables
(shape, dtype, layout), the weights in order (``iterations`` first, then
``{"name": "m", "variable": i}`` entries) and, per shard file, its name and the
range of every variable it holds. A reader at any number of ranks takes the
ranges it needs from whichever shards overlap them (re-slicing), so a checkpoint
written at N ranks loads at M. The ``.npz`` files hold plain numeric arrays only
(no pickles, no compression) and are read with the checks of
:func:`numbadam.load_checkpoint`.

A save never loses the previous checkpoint: the new shards get new names (a
random ``<tag>`` per save), each is written to a temporary file, ``fsync``-ed and
renamed; only when every rank has succeeded does rank 0 replace the manifest
atomically (which switches the checkpoint over), and then remove the old shards.
A failure on any rank before that removes the new shards on every rank and
raises on every rank; the previous manifest and shards are untouched. Files
written by earlier versions (``shard-00000-of-00002.npz``, no tag) still load.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..checkpoint import (
    CheckpointError,
    _Archive,
    _atomic_write,
    _fs_path,
    _is_int,
    _open_regular,
    _regular_stat,
    _short,
    _spec_problem,
    _unlink_quietly,
)
from ._comm import Communicator

__all__ = ["FORMAT", "MANIFEST", "write", "Reader", "check_shardable"]

FORMAT = "numbadam.sharded/1"
MANIFEST = "manifest.json"
_SHARD = r"shard-\d{5}-of-\d{5}(?:-[0-9a-f]{8})?\.npz"
_SHARD_RE = re.compile(_SHARD + r"\Z")
# Temporary files of an interrupted save: this version's, and the old ones.
_STRAY_RE = re.compile(
    r"\.(?:manifest\.json|" + _SHARD + r")\.[0-9a-f]{8}\.tmp\Z"
    r"|(?:manifest\.json|shard-\d{5}-of-\d{5}\.npz)\.tmp\d+(?:\.npz)?\Z"
)
_LAYOUTS = ("flat", "rows")


def check_shardable(optimizer: Any, what: str, instead: str) -> None:
    """Refuse a state the format cannot hold, before anything is written or read.

    The format holds slots shaped like their variables and one counter of
    updates: no row-wise second moment (one v per row) and no gradient
    accumulators or counter of calls. ``what`` names the call in the
    ``ValueError``, ``instead`` says what to use.
    """
    name = type(optimizer).__name__
    if optimizer.second_moment != "element":
        raise ValueError(
            f"{name}.{what}: the sharded-checkpoint format holds slots shaped "
            f"like their variables, and this optimizer has "
            f"second_moment={optimizer.second_moment!r} (one v per row); {instead}"
        )
    steps = optimizer._accum_steps
    if steps is not None:
        raise ValueError(
            f"{name}.{what}: the sharded-checkpoint format holds no gradient "
            f"accumulators or counter of calls, and this optimizer has "
            f"gradient_accumulation_steps={steps}; {instead}"
        )


def shard_name(index: int, count: int, tag: Optional[str] = None) -> str:
    suffix = "" if tag is None else f"-{tag}"
    return f"shard-{index:05d}-of-{count:05d}{suffix}.npz"


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    return repr(obj)


def _agree(comm: Communicator, path: str, step: str, error: Optional[BaseException]):
    """Raise on every rank if ``error`` is set on any (collective).

    The rank that failed raises its own exception; the others a
    CheckpointError naming that rank and its error.
    """
    report = None if error is None else f"{type(error).__name__}: {error}"
    reports = comm.allgather_obj(report)
    if error is not None:
        raise error
    for r, report in enumerate(reports):
        if report is not None:
            raise CheckpointError(
                path,
                f"rank {r} could not {step} ({report}); the previous checkpoint "
                "is kept",
            )


def _prepare(path: str) -> Tuple[str, Optional[int]]:
    """Create the folder; a tag no file there uses; the manifest's mode."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise NotADirectoryError(
            errno.ENOTDIR,
            "cannot save a sharded checkpoint: the path exists and is not a folder",
            path,
        )
    os.makedirs(path, exist_ok=True)
    mpath = os.path.join(path, MANIFEST)
    st = _regular_stat(os.path.realpath(mpath), mpath)
    names = os.listdir(path)
    while True:
        tag = secrets.token_hex(4)
        if not any(tag in name for name in names):
            break
    return tag, None if st is None else stat.S_IMODE(st.st_mode)


def _remove_stale(path: str, keep: set) -> None:
    # Old shards, and temporary files of saves interrupted by a crash.
    try:
        names = os.listdir(path)
    except OSError:
        return
    for name in names:
        if name not in keep and (_SHARD_RE.match(name) or _STRAY_RE.match(name)):
            _unlink_quietly(os.path.join(path, name))


def write(
    path: str,
    comm: Communicator,
    meta: Dict[str, Any],
    variables: Sequence[Dict[str, Any]],
    weights: Sequence[Dict[str, Any]],
    ranges: Sequence[Tuple[int, int]],
    arrays: Sequence[np.ndarray],
    iterations: int,
    writers: Sequence[int],
) -> None:
    """Write one checkpoint, collectively; the previous one survives any failure.

    Parameters
    ----------
    path : str
        Directory (created if needed; every rank must see the same one).
    comm : Communicator
    meta : dict
        JSON-serialisable fields copied into the manifest (``kind``, ``config``...).
    variables : list of dict
        ``{"shape": [...], "dtype": "float32", "layout": "flat" or "rows"}``.
    weights : list of dict
        ``{"name": "m", "variable": i}``, in order.
    ranges : list of (lo, hi)
        This rank's flat range of every variable.
    arrays : list of ndarray
        This rank's piece of every weight (1-D, ``hi - lo`` elements of its
        variable's range).
    iterations : int
    writers : list of int
        The ranks that write a shard (all ranks for sharded state, ``[0]`` for
        replicated state).

    Raises
    ------
    OSError
        On the rank where writing failed (a full disk...).
    CheckpointError
        On the other ranks, naming the rank that failed; also if the folder's
        manifest exists and is not a regular file.
    """
    path = _fs_path(path)
    rank = comm.rank
    tag, mode, error = None, None, None
    if rank == 0:
        try:
            tag, mode = _prepare(path)
        except Exception as exc:
            error = exc
    _agree(comm, path, "prepare the folder", error)
    tag, mode = comm.bcast_obj((tag, mode))

    # 1. every writer: its shard, under a name no checkpoint uses yet
    nshards = len(writers)
    written: Optional[str] = None
    error = None
    if rank in writers:
        index = list(writers).index(rank)
        payload = {"iterations": np.asarray(iterations, np.int64)}
        for k, a in enumerate(arrays):
            payload[f"w{k}"] = np.ascontiguousarray(a).reshape(-1)
        for k, (lo, hi) in enumerate(ranges):
            payload[f"range{k}"] = np.array([lo, hi], np.int64)
        name = shard_name(index, nshards, tag)
        try:
            _atomic_write(
                os.path.join(path, name), lambda f: np.savez(f, **payload), mode
            )
            written = name
        except Exception as exc:
            error = exc
    all_ranges = comm.allgather_obj([[int(lo), int(hi)] for lo, hi in ranges])
    shards = [
        {"file": shard_name(i, nshards, tag), "rank": int(w), "ranges": all_ranges[w]}
        for i, w in enumerate(writers)
    ]
    try:
        _agree(comm, path, "write its shard", error)
        # 2. rank 0: the manifest, replaced atomically (the switch-over)
        error = None
        if rank == 0:
            try:
                manifest = dict(_jsonable(meta))
                manifest.update(
                    {
                        "format": FORMAT,
                        "world_size": comm.size,
                        "iterations": int(iterations),
                        "variables": _jsonable(list(variables)),
                        "weights": _jsonable(list(weights)),
                        "shards": shards,
                    }
                )
                text = json.dumps(manifest, indent=1).encode("utf-8")
                _atomic_write(os.path.join(path, MANIFEST), lambda f: f.write(text))
            except Exception as exc:
                error = exc
        _agree(comm, path, "write the manifest", error)
    except BaseException:
        if written is not None:
            _unlink_quietly(os.path.join(path, written))
        raise
    # 3. the previous checkpoint's shards are no longer referenced
    if rank == 0:
        _remove_stale(path, {s["file"] for s in shards})
    comm.barrier()


def _manifest_problem(m: Any) -> Optional[str]:
    if not isinstance(m, dict):
        return "not a JSON object"
    it = m.get("iterations")
    if not _is_int(it) or not 0 <= it < 2**63:
        return f"iterations {_short(it)} is not an integer in [0, 2**63)"
    variables = m.get("variables")
    if not isinstance(variables, list):
        return "variables"
    sizes = []
    for i, v in enumerate(variables):
        problem = _spec_problem(v)
        if problem:
            return f"variable {i}: {problem}"
        if v.get("layout", "flat") not in _LAYOUTS:
            return f"variable {i}: layout {_short(v.get('layout'))}"
        size = 1
        for n in v["shape"]:
            size *= n
        sizes.append(size)
    weights = m.get("weights")
    if not isinstance(weights, list):
        return "weights"
    for j, w in enumerate(weights):
        if not isinstance(w, dict) or not isinstance(w.get("name"), str):
            return f"weight {j}"
        var = w.get("variable")
        if not _is_int(var) or not 0 <= var < len(variables):
            return f"weight {j}: variable {_short(var)}"
    shards = m.get("shards")
    if not isinstance(shards, list):
        return "shards"
    for k, sh in enumerate(shards):
        if not isinstance(sh, dict):
            return f"shard {k}"
        name = sh.get("file")
        if not isinstance(name, str) or not _SHARD_RE.match(name):
            return f"shard {k}: file name {_short(name)}"
        rs = sh.get("ranges")
        if not isinstance(rs, list) or len(rs) != len(variables):
            return f"shard {k}: ranges"
        for r, size in zip(rs, sizes):
            if (
                not isinstance(r, list)
                or len(r) != 2
                or not all(_is_int(x) for x in r)
                or not 0 <= r[0] <= r[1] <= size
            ):
                return f"shard {k}: range {_short(r)}"
    return None


class Reader:
    """Read flat ranges of the weights of a checkpoint (no communication).

    Parameters
    ----------
    path : str
        A directory written by :func:`write`.

    Raises
    ------
    FileNotFoundError
        If there is no manifest (no checkpoint, or an incomplete one).
    CheckpointError
        If the manifest is not a regular file, not of this format or malformed
        (a ``ValueError``, naming the manifest); :meth:`read` raises it for a
        shard file that is missing, corrupt or does not match the manifest.
    """

    def __init__(self, path: str) -> None:
        self.path = path = _fs_path(path)
        mpath = os.path.join(path, MANIFEST)
        try:
            f = _open_regular(mpath)
        except FileNotFoundError:
            raise FileNotFoundError(
                errno.ENOENT,
                "no manifest: not a numbadam sharded checkpoint (or an incomplete "
                "one)",
                mpath,
            ) from None
        with f:
            data = f.read()
        try:
            manifest = json.loads(data.decode("utf-8"))
        except RecursionError:
            raise CheckpointError(
                mpath, "not valid JSON (nested too deeply)"
            ) from None
        except (UnicodeDecodeError, ValueError) as exc:
            raise CheckpointError(mpath, f"not valid JSON ({exc})") from None
        fmt = manifest.get("format") if isinstance(manifest, dict) else None
        if fmt != FORMAT:
            raise CheckpointError(
                mpath, f"has format {_short(fmt)}, expected {FORMAT!r}"
            )
        problem = _manifest_problem(manifest)
        if problem is not None:
            raise CheckpointError(mpath, f"malformed manifest ({problem})")
        self.manifest = manifest
        self.variables: List[Dict[str, Any]] = manifest["variables"]
        self.weights: List[Dict[str, Any]] = manifest["weights"]
        self.iterations = int(manifest["iterations"])
        self._files: Dict[str, _Archive] = {}

    def _npz(self, name: str) -> _Archive:
        f = self._files.get(name)
        if f is None:
            f = _Archive(os.path.join(self.path, name))
            try:
                f.check()
            except BaseException:
                f.close()
                raise
            self._files[name] = f
        return f

    def check_variables(
        self, expected: Sequence[Tuple[Tuple[int, ...], np.dtype]]
    ) -> None:
        """Raise ``ValueError`` unless the saved variables have these shapes/dtypes."""
        if len(expected) != len(self.variables):
            raise ValueError(
                f"checkpoint {self.path} holds state for {len(self.variables)} "
                f"variables, the optimizer has {len(expected)}"
            )
        for i, ((shape, dtype), saved) in enumerate(zip(expected, self.variables)):
            if (
                tuple(saved["shape"]) != tuple(shape)
                or np.dtype(saved["dtype"]) != dtype
            ):
                raise ValueError(
                    f"variable {i}: checkpoint has shape {tuple(saved['shape'])}, "
                    f"{saved['dtype']}; the optimizer's is {tuple(shape)}, "
                    f"{np.dtype(dtype)}"
                )

    def read(self, weight: int, lo: int, hi: int) -> np.ndarray:
        """Elements ``[lo, hi)`` of the flattened weight number ``weight``."""
        var = self.weights[weight]["variable"]
        dtype = np.dtype(self.variables[var]["dtype"])
        out = np.empty(hi - lo, dtype)
        filled = 0
        for shard in self.manifest["shards"]:
            s_lo, s_hi = shard["ranges"][var]
            a, b = max(lo, s_lo), min(hi, s_hi)
            if a >= b:
                continue
            archive = self._npz(shard["file"])
            key = f"w{weight}"
            if key not in archive.members:
                raise CheckpointError(archive.path, f"missing array {key!r}")
            piece = archive.read(key, None, (s_hi - s_lo,), dtype)
            out[a - lo : b - lo] = piece[a - s_lo : b - s_lo]
            filled += b - a
        if filled != hi - lo:
            raise CheckpointError(
                os.path.join(self.path, MANIFEST),
                f"the shards do not cover elements [{lo}, {hi}) of weight {weight}",
            )
        return out

    def close(self) -> None:
        for f in self._files.values():
            f.close()
        self._files.clear()

    def __enter__(self) -> "Reader":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
