"""Sharded checkpoints: one ``.npz`` per rank and a small JSON manifest.

Layout of a checkpoint directory::

    manifest.json
    shard-00000-of-00002.npz
    shard-00001-of-00002.npz

Every saved array is the flat (C-order) range ``[lo, hi)`` of one *weight* (a
slot, or an embedding table) of one *variable*. The manifest lists the variables
(shape, dtype, layout), the weights in order (``iterations`` first, then
``{"name": "m", "variable": i}`` entries) and, per shard file, the range of every
variable it holds. A reader at any number of ranks takes the ranges it needs from
whichever shards overlap them (re-slicing), so a checkpoint written at N ranks
loads at M. The ``.npz`` files hold plain numeric arrays only (no pickles; they
are read with ``allow_pickle=False``) and the manifest is written last: a
directory without one is an incomplete checkpoint.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Dict, List, Sequence, Tuple

import numpy as np

from ._comm import Communicator

__all__ = ["FORMAT", "MANIFEST", "write", "Reader"]

FORMAT = "numbadam.sharded/1"
MANIFEST = "manifest.json"
_SHARD_RE = re.compile(r"^shard-\d{5}-of-\d{5}\.npz$")


def shard_name(index: int, count: int) -> str:
    return f"shard-{index:05d}-of-{count:05d}.npz"


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
    """Write one checkpoint, collectively.

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
    """
    rank = comm.rank
    if rank == 0:
        os.makedirs(path, exist_ok=True)
        # An old manifest must not describe the new shards while they are written.
        try:
            os.remove(os.path.join(path, MANIFEST))
        except FileNotFoundError:
            pass
    comm.barrier()
    nshards = len(writers)
    if rank in writers:
        index = list(writers).index(rank)
        payload = {"iterations": np.asarray(iterations, np.int64)}
        for k, a in enumerate(arrays):
            payload[f"w{k}"] = np.ascontiguousarray(a).reshape(-1)
        for k, (lo, hi) in enumerate(ranges):
            payload[f"range{k}"] = np.array([lo, hi], np.int64)
        final = os.path.join(path, shard_name(index, nshards))
        tmp = final + f".tmp{os.getpid()}.npz"
        np.savez(tmp, **payload)
        os.replace(tmp, final)
    all_ranges = comm.allgather_obj([[int(lo), int(hi)] for lo, hi in ranges])
    comm.barrier()
    if rank == 0:
        shards = [
            {"file": shard_name(i, nshards), "rank": int(w), "ranges": all_ranges[w]}
            for i, w in enumerate(writers)
        ]
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
        tmp = os.path.join(path, MANIFEST + f".tmp{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(manifest, f, indent=1)
        os.replace(tmp, os.path.join(path, MANIFEST))
        keep = {s["file"] for s in shards}
        for name in os.listdir(path):
            if _SHARD_RE.match(name) and name not in keep:
                os.remove(os.path.join(path, name))
    comm.barrier()


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
    ValueError
        If the manifest is not of this format.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        mpath = os.path.join(path, MANIFEST)
        if not os.path.exists(mpath):
            raise FileNotFoundError(
                f"{mpath} not found: not a numbadam sharded checkpoint (or an "
                "incomplete one)"
            )
        with open(mpath) as f:
            self.manifest = json.load(f)
        if self.manifest.get("format") != FORMAT:
            raise ValueError(
                f"{mpath} has format {self.manifest.get('format')!r}, "
                f"expected {FORMAT!r}"
            )
        self.variables: List[Dict[str, Any]] = self.manifest["variables"]
        self.weights: List[Dict[str, Any]] = self.manifest["weights"]
        self.iterations = int(self.manifest["iterations"])
        self._files: Dict[str, Any] = {}

    def _npz(self, name: str):
        f = self._files.get(name)
        if f is None:
            f = np.load(os.path.join(self.path, name), allow_pickle=False)
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
            piece = self._npz(shard["file"])[f"w{weight}"]
            out[a - lo : b - lo] = piece[a - s_lo : b - s_lo]
            filled += b - a
        if filled != hi - lo:
            raise ValueError(
                f"checkpoint {self.path}: the shards do not cover elements "
                f"[{lo}, {hi}) of weight {weight}"
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
