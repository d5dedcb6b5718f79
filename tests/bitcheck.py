"""Behaviour-preservation check: numbadam's results, byte for byte, across a change.

A fixed, seeded list of a few hundred cases drives ``numbadam.Adam`` through its
public API only (``numbadam.Adam``, ``IndexedSlices``, ``ParameterBuffer``,
``schedules``), so the same file runs unchanged before and after a refactor of
the package. Each case records the bytes of every variable after each step and
of every entry of ``opt.get_weights()`` (plus ``get_config()``) at the end.

Usage (from the repository root)::

    python tests/bitcheck.py --out base.npz        # record (before the change)
    python tests/bitcheck.py --compare base.npz    # re-run and compare (after)
    NUMBA_ENABLE_CUDASIM=1 python tests/bitcheck.py --cuda --out base_cuda.npz

``--cases N`` runs the first N cases only (a quick run). ``--compare`` re-runs
what the file holds (its case count, with or without CUDA) unless ``--cases`` or
``--cuda``/``--no-cuda`` say otherwise, compares dtype, shape and ``tobytes()``
of every array, prints ``bitcheck: <n> cases, <m> arrays, <d> differ, ...`` and the
first differing keys with their case description, and exits with status 1 if
any array differs or is missing or extra.

The file is a plain ``.npz`` (load it with ``allow_pickle=False``): keys
``case0042/step1/var0`` (variable 0 after step 1), ``case0042/step1/base0`` (the
whole array a strided variable is a view of), ``case0042/step1/iterations``
(what ``apply_gradients`` returned), ``case0042/weights/3``,
``case0042/config0`` and ``case0042/config`` (``get_config()`` as UTF-8 JSON
before and after the steps), ``case0042/error`` (the exception's type, should
a case raise); CUDA cases use ``cuda0042/...``. The key ``__manifest__`` holds
the case descriptions as UTF-8 JSON.

CUDA results are recorded under the simulator or on a GPU, whichever runs the
script: compare a file with a run of the same kind. Nothing here sets launch
sizes or other knobs; ``NUMBADAM_*`` environment variables in effect are noted
in the manifest and a difference from the file's is reported.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
import warnings
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import numpy as np

import numbadam
from numbadam import schedules

SEED = 20240611
DEFAULT_CASES = 300
#: At most this many CUDA cases (the simulator runs a launch in ~0.1-0.3 s).
MAX_CUDA_CASES = 40
#: A CUDA case holds at most this many elements over all its variables.
CUDA_MAX_ELEMENTS = 1500
FORMAT = 1
MANIFEST_KEY = "__manifest__"

DTYPES = ("float16", "float32", "float64")
# sizes are hard-coded around the CPU kernels' thresholds of this version:
# serial below 16385 elements, parallel blocks of 4096, sparse blocks of 256
# rows, a one-pass radix sort up to 2048 rows, insertion sort up to 64 indices.
LARGE_DENSE = [
    [16385], [20000], [33333], [70000], [200, 100], [350, 200], [10, 50, 40],
    [35, 40, 50], [16385, 1],
]  # fmt: skip
MID_DENSE = [
    [4096], [4097], [8192], [12345], [16383], [16384], [128, 128], [100, 150],
    [16, 32, 30],
]  # fmt: skip
TINY_DENSE = [
    [], [0], [1], [2], [3], [7], [16], [0, 3], [3, 0], [1, 1], [2, 3], [2, 2, 2],
    [1, 5, 1],
]  # fmt: skip
TINY_TABLES = [[1], [5], [1, 1], [4, 3], [3, 2, 2], [2, 1], [3, 0], [0, 4]]
MID_TABLES = [[256, 64], [1000, 16], [4096, 4], [2048, 8], [257, 3], [2049, 5]]
LARGE_TABLES = [[300, 64], [2500, 32], [5000, 4], [70000], [600, 6, 7]]


# ---------------------------------------------------------------------------
# the case list (JSON-able descriptions, deterministic)
# ---------------------------------------------------------------------------


def _pick(rng: np.random.Generator, options: List[Any], p: Any = None) -> Any:
    if p is not None:
        p = np.asarray(p, float) / np.sum(p)
    return options[int(rng.choice(len(options), p=p))]


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(10.0 ** rng.uniform(np.log10(lo), np.log10(hi)))


def _size(shape: List[int]) -> int:
    return int(np.prod(shape, dtype=np.int64))


def _dense_shape(rng: np.random.Generator, size: str) -> List[int]:
    if size == "tiny":
        return list(_pick(rng, TINY_DENSE))
    if size == "mid":
        return list(_pick(rng, MID_DENSE))
    if size == "large":
        return list(_pick(rng, LARGE_DENSE))
    ndim = _pick(rng, [1, 2, 3], [2, 1, 1])
    if ndim == 1:
        return [int(rng.integers(17, 4097))]
    if ndim == 2:
        return [int(rng.integers(2, 65)), int(rng.integers(2, 65))]
    return [int(rng.integers(2, 17)) for _ in range(3)]


def _table_shape(rng: np.random.Generator, size: str) -> List[int]:
    if size == "tiny":
        return list(_pick(rng, TINY_TABLES))
    if size == "mid":
        return list(_pick(rng, MID_TABLES))
    if size == "large":
        return list(_pick(rng, LARGE_TABLES))
    rows = int(rng.integers(2, 302))
    kind = _pick(rng, ["2d", "1d", "3d"], [4, 1, 1])
    if kind == "1d":
        return [rows]
    if kind == "3d":
        return [rows, int(rng.integers(1, 4)), int(rng.integers(1, 5))]
    return [rows, int(_pick(rng, [1, 2, 3, 8, 16, 33]))]


def _views(shape: List[int]) -> List[str]:
    out = ["contig"]
    if len(shape) >= 1:
        out += ["step2", "reverse"]
    if len(shape) >= 2:
        out += ["colslice", "transpose"]
    return out


def _view(rng: np.random.Generator, shape: List[int], strided: bool) -> str:
    options = _views(shape)
    if strided and len(options) > 1:
        return _pick(rng, options[1:])
    return _pick(rng, options, [6] + [1] * (len(options) - 1))


def _grad_dtype(rng: np.random.Generator, dtype: str) -> Optional[str]:
    # mostly the variable's dtype; sometimes another one (cast same_kind)
    return _pick(rng, [None, "float16", "float32", "float64"], [10, 1, 1, 1])


def _values_kind(rng: np.random.Generator, forced: Optional[str]) -> str:
    if forced is not None:
        return forced
    return _pick(rng, ["normal", "special", "nonfinite"], [90, 8, 2])


def _dense_spec(rng, dtype, size, strided=False, values=None) -> Dict[str, Any]:
    shape = _dense_shape(rng, size)
    view = _view(rng, shape, strided)
    return {
        "layout": "dense",
        "shape": shape,
        "dtype": dtype,
        "view": view,
        "fresh_view": bool(rng.random() < 0.15) and len(shape) > 0,
        "grad_dtype": _grad_dtype(rng, dtype),
        "grad_layout": _pick(rng, ["contig", "strided", "fortran"], [8, 1, 1])
        if len(shape) > 0
        else "contig",
        "values": _values_kind(rng, values),
        "scale": _log_uniform(rng, 1e-3, 1e2),
        "none_steps": [],
    }


def _sparse_spec(rng, dtype, size, strided=False, values=None) -> Dict[str, Any]:
    shape = _table_shape(rng, size)
    rows = shape[0]
    k = int(_pick(rng, [0, 1, 2, 5, 17, 64, 65, 200, 700], [1, 3, 2, 3, 3, 2, 2, 2, 1]))
    if size == "tiny":
        k = min(k, 8)
    dup = _pick(rng, ["unique", "sorted", "random", "heavy"], [2, 1, 3, 2])
    if rows == 0:
        k = 0
    elif dup in ("unique", "sorted"):
        k = min(k, rows)
    index_dtypes = ["int32", "int64", "uint64"] + (["int16"] if rows < 32768 else [])
    view = _view(rng, shape, strided)
    return {
        "layout": "sparse",
        "shape": shape,
        "dtype": dtype,
        "view": view,
        "fresh_view": bool(rng.random() < 0.15),
        "k": k,
        "dup": dup,
        "index_dtype": _pick(rng, index_dtypes, [5, 5, 1, 1][: len(index_dtypes)]),
        "index_layout": _pick(rng, ["contig", "strided"], [6, 1]),
        "indices_on": _pick(rng, ["host", "device"]),  # (CUDA runs only)
        "dense_shape": bool(rng.random() < 0.6),
        "grad_dtype": _grad_dtype(rng, dtype),
        "grad_layout": _pick(rng, ["contig", "strided"], [6, 1]),
        "values": _values_kind(rng, values),
        "scale": _log_uniform(rng, 1e-3, 1e2),
        "none_steps": [],
    }


def _hyper_callable(rng, values: List[float]) -> Dict[str, Any]:
    return {"callable": values, "ret": _pick(rng, ["float", "f32", "f64", "arr0d"])}


def _schedule(rng, name: Optional[str], lr0: float) -> Dict[str, Any]:
    if name is None:
        name = _pick(
            rng,
            [
                "ExponentialDecay",
                "PiecewiseConstantDecay",
                "InverseTimeDecay",
                "PolynomialDecay",
                "CosineDecay",
            ],
        )
    staircase = bool(rng.random() < 0.4)
    if name == "ExponentialDecay":
        args = {
            "initial_learning_rate": lr0,
            "decay_steps": _pick(rng, [1, 2, 3.5, 10]),
            "decay_rate": _pick(rng, [0.5, 0.9, 0.96]),
            "staircase": staircase,
        }
    elif name == "PiecewiseConstantDecay":
        args = {"boundaries": [1, 3], "values": [lr0, lr0 / 2, lr0 / 10]}
    elif name == "InverseTimeDecay":
        args = {
            "initial_learning_rate": lr0,
            "decay_steps": _pick(rng, [1, 2, 5]),
            "decay_rate": _pick(rng, [0.5, 1.0]),
            "staircase": staircase,
        }
    elif name == "PolynomialDecay":
        args = {
            "initial_learning_rate": lr0,
            "decay_steps": _pick(rng, [2, 4, 10]),
            "end_learning_rate": lr0 / 100,
            "power": _pick(rng, [1.0, 0.5, 2.0]),
            "cycle": bool(rng.random() < 0.5),
        }
    else:
        args = {
            "initial_learning_rate": lr0,
            "decay_steps": _pick(rng, [3, 10]),
            "alpha": _pick(rng, [0.0, 0.1]),
        }
        if rng.random() < 0.5:
            args.update({"warmup_target": lr0 * 2, "warmup_steps": 2})
    return {"schedule": name, "args": args}


def _opt_spec(rng, amsgrad, lr_kind, schedule, steps) -> Dict[str, Any]:
    opt: Dict[str, Any] = {"amsgrad": bool(amsgrad)}
    lr0 = float(_pick(rng, [1e-3, 1e-2, 0.1, 0.5, 3e-4, _log_uniform(rng, 1e-5, 1)]))
    if lr_kind is None:
        lr_kind = _pick(rng, ["float", "callable", "schedule", "default"], [5, 2, 2, 1])
    if lr_kind == "float":
        opt["learning_rate"] = lr0 if rng.random() > 0.03 else 0.0
        if rng.random() < 0.05:
            opt["lr_alias"] = True  # passed as lr= (deprecated alias)
    elif lr_kind == "callable":
        values = [float(lr0 * _pick(rng, [1.0, 0.5, 2.0])) for _ in range(steps)]
        opt["learning_rate"] = _hyper_callable(rng, values)
    elif lr_kind == "schedule":
        opt["learning_rate"] = _schedule(rng, schedule, lr0)
    r = rng.random()
    if r < 0.25:
        opt["beta_1"] = float(_pick(rng, [0.0, 0.5, 0.8, 0.95, 0.99, rng.uniform()]))
    elif r < 0.3:
        opt["beta_1"] = _hyper_callable(rng, [0.9, 0.8, 0.85, 0.9, 0.7][:steps])
    r = rng.random()
    if r < 0.25:
        opt["beta_2"] = float(_pick(rng, [0.9, 0.99, 0.9999, 0.5, rng.uniform()]))
    elif r < 0.3:
        opt["beta_2"] = _hyper_callable(rng, [0.999, 0.99, 0.995, 0.9, 0.999][:steps])
    r = rng.random()
    if r < 0.25:
        opt["epsilon"] = _pick(rng, [1e-8, 1e-3, 1.0, 0.0, None, 1e-7])
    elif r < 0.28:
        opt["epsilon"] = {"callable": [1e-6] * steps, "ret": "float"}
    if rng.random() < 0.25:
        opt["clipnorm"] = float(
            _pick(rng, [0.01, 0.5, 1.0, 10.0, 0.0], [3, 3, 3, 2, 1])
        )
    if rng.random() < 0.25:
        opt["clipvalue"] = float(_pick(rng, [1e-3, 0.1, 1.0, 0.0], [3, 3, 3, 1]))
    if rng.random() < 0.15:
        opt["decay"] = float(_pick(rng, [1e-3, 0.05, 1.0]))
    if rng.random() < 0.05:
        opt["name"] = "adam_bitcheck"
    return opt


_EVENT_ATTRS = {
    "learning_rate": [0.02, 1e-4, 0.3],
    "beta_1": [0.5, 0.0, 0.99],
    "beta_2": [0.9, 0.99],
    "epsilon": [1e-3, 1e-9],
    "decay": [0.0, 0.1],
    "clipnorm": [None, 0.5],
    "clipvalue": [None, 0.05],
}


def _events(rng, steps: int, forced: Optional[str]) -> List[Dict[str, Any]]:
    if steps < 2 or (forced is None and rng.random() > 0.15):
        return []
    op = forced or _pick(rng, ["set", "iterations"], [3, 1])
    step = int(rng.integers(1, steps))
    if op == "iterations":
        return [{"step": step, "op": "iterations", "value": _pick(rng, [0, 7, 100])}]
    attr = _pick(rng, sorted(_EVENT_ATTRS))
    return [
        {
            "step": step,
            "op": "set",
            "attr": attr,
            "value": _pick(rng, _EVENT_ATTRS[attr]),
        }
    ]


def _continuation(rng, steps, forced) -> Optional[Dict[str, Any]]:
    if steps < 2 or (forced is None and rng.random() > 0.25):
        return None
    how = forced or _pick(rng, ["config", "weights", "self"], [3, 2, 1])
    return {"step": int(rng.integers(1, steps)), "how": how}


# The first cases are a grid, so that every layout x dtype x AMSGrad
# combination is covered in small and in large sizes; random cases follow.
_LAYOUTS_SMALL = ["dense", "sparse", "lazy", "buffer", "mixed", "strided"]
_LAYOUTS_LARGE = ["dense", "sparse", "lazy", "buffer", "strided"]
_SCHEDULES = [
    "ExponentialDecay", "PiecewiseConstantDecay", "InverseTimeDecay",
    "PolynomialDecay", "CosineDecay",
]  # fmt: skip


def _grid() -> List[Dict[str, Any]]:
    grid = []
    for i in range(len(_LAYOUTS_SMALL) * 6):
        grid.append(
            {
                "layout": _LAYOUTS_SMALL[i % 6],
                "dtype": DTYPES[(i // 6) % 3],
                "amsgrad": bool(i // 18),
                "size": "small" if i % 2 else "tiny",
            }
        )
    for i in range(len(_LAYOUTS_LARGE) * 6):
        grid.append(
            {
                "layout": _LAYOUTS_LARGE[i % 5],
                "dtype": DTYPES[(i // 5) % 3],
                "amsgrad": bool(i // 15),
                "size": "large" if i % 3 else "mid",
            }
        )
    for name in _SCHEDULES:
        grid.append({"lr_kind": "schedule", "schedule": name})
        grid.append({"lr_kind": "schedule", "schedule": name, "layout": "lazy"})
    grid += [{"lr_kind": "callable"}] * 4
    for how in ("config", "weights", "self"):
        for layout in ("dense", "sparse", "lazy", "buffer", "mixed"):
            grid.append({"continuation": how, "layout": layout})
    grid += [{"event": "set"}] * 8 + [{"event": "iterations"}] * 4
    for dtype in DTYPES:
        for layout in ("dense", "sparse", "lazy"):
            grid.append({"values": "special", "dtype": dtype, "layout": layout})
    return grid


_GRID = _grid()


def make_case(i: int) -> Dict[str, Any]:
    """Case ``i`` of the list: a JSON-able description (the same on every run)."""
    rng = np.random.default_rng([SEED, i])
    f = _GRID[i] if i < len(_GRID) else {}
    layout = f.get("layout") or _pick(rng, _LAYOUTS_SMALL, [4, 3, 3, 2, 3, 1])
    dtype = f.get("dtype") or _pick(rng, list(DTYPES))
    amsgrad = f["amsgrad"] if "amsgrad" in f else bool(rng.random() < 0.35)
    size = f.get("size") or _pick(rng, ["tiny", "small", "mid", "large"], [3, 6, 1, 1])
    steps = int(rng.integers(1, 4 if size == "large" else 6))
    if "continuation" in f or "event" in f:
        steps = max(steps, 3)
    values = f.get("values")
    opt = _opt_spec(rng, amsgrad, f.get("lr_kind"), f.get("schedule"), steps)
    if layout == "lazy":
        opt["sparse_mode"] = "lazy"
    elif layout == "sparse":  # TF's rule, by default or by name
        if rng.random() < 0.5:
            opt["sparse_mode"] = "dense"
    elif rng.random() < 0.5:
        opt["sparse_mode"] = _pick(rng, ["dense", "lazy"], [2, 1])
    case: Dict[str, Any] = {"id": i, "layout": layout, "steps": steps, "opt": opt}
    if layout == "buffer":
        nvar = int(rng.integers(1, 5))
        sizes = [size] + [_pick(rng, ["tiny", "small"]) for _ in range(nvar - 1)]
        case["buffer"] = {
            "shapes": [_dense_shape(rng, s) for s in sizes],
            "dtype": dtype,
            "as_list": bool(rng.random() < 0.15),
            "values": _values_kind(rng, values),
            "scale": _log_uniform(rng, 1e-3, 1e2),
        }
        extra = rng.random() < 0.15
        case["vars"] = (
            [_dense_spec(rng, _pick(rng, list(DTYPES)), "tiny")] if extra else []
        )
    elif layout == "mixed":
        nvar = int(rng.integers(2, 5))
        case["vars"] = []
        for j in range(nvar):
            s = size if j == 0 else _pick(rng, ["tiny", "small", "mid"], [4, 4, 1])
            dt = dtype if j == 0 else _pick(rng, list(DTYPES))
            make = _dense_spec if rng.random() < 0.5 else _sparse_spec
            case["vars"].append(make(rng, dt, s, values=values))
        if "continuation" not in f and rng.random() < 0.3:
            # a None gradient for one variable (not the first) at some steps
            j = int(rng.integers(1, nvar))
            case["vars"][j]["none_steps"] = [
                s for s in range(steps) if rng.random() < 0.5
            ]
    else:
        make = _dense_spec if layout in ("dense", "strided") else _sparse_spec
        case["vars"] = [make(rng, dtype, size, layout == "strided", values)]
    case["events"] = _events(rng, steps, f.get("event"))
    cont = _continuation(rng, steps, f.get("continuation"))
    if cont is not None:
        for v in case["vars"]:
            # slots in build()'s order, as the first run made them (a fresh view
            # of an empty array is a new variable, with new slots, each step)
            v["none_steps"] = []
            if _size(v["shape"]) == 0:
                v["fresh_view"] = False
    case["continuation"] = cont
    return case


def make_cases(n: int = DEFAULT_CASES) -> List[Dict[str, Any]]:
    """The first ``n`` cases (a prefix of the same list whatever ``n``)."""
    return [make_case(i) for i in range(n)]


def cuda_eligible(case: Dict[str, Any]) -> bool:
    """Small dense/sparse cases without negative strides (the simulator is slow)."""
    if case["layout"] == "buffer":
        return False
    total = 0
    for v in case["vars"]:
        if v["view"] == "reverse":  # the CUDA backend takes positive strides
            return False
        total += _size(v["shape"])
        if v["layout"] == "sparse" and v["k"] > 300:
            return False
    return total <= CUDA_MAX_ELEMENTS


def cuda_cases(cases: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    return [c for c in cases if cuda_eligible(c)][:MAX_CUDA_CASES]


# ---------------------------------------------------------------------------
# running a case
# ---------------------------------------------------------------------------


class _Device:
    """Host or CUDA placement of arrays (CUDA: numba.cuda.to_device copies)."""

    def __init__(self, cuda: bool) -> None:
        self.cuda = cuda
        if cuda:
            from numba import cuda as nb_cuda

            self._cuda = nb_cuda

    def put(self, a: np.ndarray) -> Any:
        if not self.cuda:
            return a
        return self._cuda.to_device(a)

    def host(self, a: Any) -> np.ndarray:
        if isinstance(a, np.ndarray):
            return np.array(a, copy=True)
        return a.copy_to_host()


def _base_shape(shape: List[int], view: str) -> List[int]:
    if view == "step2":
        return [2 * shape[0]] + shape[1:]
    if view == "colslice":
        return shape[:-1] + [shape[-1] + 3]
    if view == "transpose":
        return shape[::-1]
    return list(shape)


def _view_fn(shape: List[int], view: str, fresh: bool) -> Callable[[Any], Any]:
    if view == "step2":
        return lambda b: b[::2]
    if view == "reverse":
        return lambda b: b[::-1]
    if view == "colslice":
        idx = (slice(None),) * (len(shape) - 1) + (slice(1, shape[-1] + 1),)
        return lambda b: b[idx]
    if view == "transpose":
        return lambda b: b.T
    if fresh:  # a new view object of the same memory each step
        return lambda b: b[:]
    return lambda b: b


def _fill(rng, shape, dtype, scale: float, values: str) -> np.ndarray:
    x = np.array(rng.standard_normal(shape) * scale)
    if values != "normal" and x.size:
        r = np.array(rng.random(shape))
        x[r < 0.1] = 0.0
        x[(r >= 0.1) & (r < 0.15)] = -0.0
        x[(r >= 0.15) & (r < 0.2)] *= 1e-6
        x[(r >= 0.2) & (r < 0.23)] *= 1e-42  # subnormal (float32), 0 (float16)
        x[(r >= 0.23) & (r < 0.28)] *= 1e5  # float16: inf
        if values == "nonfinite":
            x[(r >= 0.28) & (r < 0.3)] = np.inf
            x[(r >= 0.3) & (r < 0.31)] = -np.inf
            x[(r >= 0.31) & (r < 0.32)] = np.nan
    with np.errstate(all="ignore"):
        return np.asarray(x).astype(dtype)


def _laid_out(a: np.ndarray, layout: str) -> np.ndarray:
    # the same values in a strided or Fortran-ordered array
    if a.ndim == 0 or layout == "contig":
        return a
    if layout == "fortran":
        return np.asfortranarray(a)
    big = np.zeros(a.shape[:-1] + (2 * a.shape[-1],), a.dtype)
    view = big[..., ::2]
    view[...] = a
    return view


class _Var:
    """One variable of a case: its array (or the array it is a view of)."""

    def __init__(self, spec: Dict[str, Any], rng, dev: _Device) -> None:
        self.spec = spec
        self.dev = dev
        shape = spec["shape"]
        self.strided = spec["view"] != "contig"
        base = _fill(
            rng, _base_shape(shape, spec["view"]), spec["dtype"], 1.0, "normal"
        )
        self.base = dev.put(base)
        self.view = _view_fn(shape, spec["view"], spec["fresh_view"])
        self.var = self.view(self.base)

    def current(self) -> Any:
        if self.spec["fresh_view"]:
            self.var = self.view(self.base)
        return self.var

    def gradient(self, rng, step: int) -> Any:
        s = self.spec
        gdt = s["grad_dtype"] or s["dtype"]
        if s["layout"] == "dense":
            g = _fill(rng, s["shape"], gdt, s["scale"], s["values"])
            if step in s["none_steps"]:
                return None
            return self._put(_laid_out(g, s["grad_layout"]))
        rows, k = s["shape"][0], s["k"]
        if s["dup"] in ("unique", "sorted"):
            idx = rng.permutation(rows)[:k]
            if s["dup"] == "sorted":
                idx = np.sort(idx)
        elif s["dup"] == "heavy":
            idx = rng.integers(0, max(1, min(rows, 4)), k)
        else:
            idx = rng.integers(0, max(rows, 1), k)
        idx = _laid_out(idx.astype(s["index_dtype"]), s["index_layout"])
        vals = _fill(rng, [k] + s["shape"][1:], gdt, s["scale"], s["values"])
        if step in s["none_steps"]:
            return None
        vals = self._put(_laid_out(vals, s["grad_layout"]))
        if self.dev.cuda and s["indices_on"] == "device":
            idx = self.dev.put(np.ascontiguousarray(idx))
        dense_shape = tuple(s["shape"]) if s["dense_shape"] else None
        return numbadam.IndexedSlices(vals, idx, dense_shape)

    def _put(self, a: np.ndarray) -> Any:
        if not self.dev.cuda:
            return a
        if a.flags.c_contiguous or a.ndim == 0:
            return self.dev.put(np.ascontiguousarray(a))
        if a.flags.f_contiguous:  # an F-ordered device array
            return self.dev.put(a)
        # a strided device view: every other element of a device array
        every_other = (slice(None),) * (a.ndim - 1) + (slice(None, None, 2),)
        return self.dev.put(np.ascontiguousarray(a.base))[every_other]

    def record(self) -> Dict[str, np.ndarray]:
        base = self.dev.host(self.base)
        out = {"var": np.ascontiguousarray(self.view(base))}
        if self.strided:
            out["base"] = base
        return out


def _hyper(spec: Any, ctx: Dict[str, int]) -> Any:
    if not isinstance(spec, dict):
        return spec
    if "schedule" in spec:
        return getattr(schedules, spec["schedule"])(**spec["args"])
    values = spec["callable"]
    conv = {"float": float, "f32": np.float32, "f64": np.float64, "arr0d": np.array}[
        spec["ret"]
    ]

    def hyper() -> Any:
        return conv(values[min(ctx["step"], len(values) - 1)])

    return hyper


def make_optimizer(spec: Dict[str, Any], ctx: Dict[str, int]) -> numbadam.Adam:
    """The case's ``numbadam.Adam`` (callables read ``ctx["step"]``)."""
    kw: Dict[str, Any] = {}
    for name in ("learning_rate", "beta_1", "beta_2", "epsilon"):
        if name in spec:
            kw[name] = _hyper(spec[name], ctx)
    for name in ("amsgrad", "clipnorm", "clipvalue", "decay", "sparse_mode", "name"):
        if name in spec:
            kw[name] = spec[name]
    if spec.get("lr_alias"):
        kw["lr"] = kw.pop("learning_rate")
    return numbadam.Adam(**kw)


def _config_bytes(opt: numbadam.Adam) -> np.ndarray:
    cfg = opt.get_config()
    text = json.dumps(cfg, sort_keys=True, default=lambda o: f"<{type(o).__name__}>")
    return np.frombuffer(text.encode(), np.uint8).copy()


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    # lr= warns; None gradients log a warning: expected here, not news
    logger = logging.getLogger("numbadam")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with np.errstate(all="ignore"):
                yield
    finally:
        logger.setLevel(level)


def run_case(case: Dict[str, Any], cuda: bool = False) -> Dict[str, np.ndarray]:
    """Run one case; its recorded arrays by key (``case0042/step1/var0``, ...)."""
    prefix = f"{'cuda' if cuda else 'case'}{case['id']:04d}"
    out: Dict[str, np.ndarray] = {}
    try:
        with _quiet():
            _run(case, _Device(cuda), prefix, out)
    except Exception as exc:  # behaviour too: recorded, compared like the rest
        out[f"{prefix}/error"] = np.frombuffer(type(exc).__name__.encode(), np.uint8)
    return out


def _run(case, dev: _Device, prefix: str, out: Dict[str, np.ndarray]) -> None:
    rng = np.random.default_rng([SEED, case["id"], 1])
    ctx = {"step": 0}
    opt = make_optimizer(case["opt"], ctx)
    out[f"{prefix}/config0"] = _config_bytes(opt)
    buf = None
    if case["layout"] == "buffer":
        b = case["buffer"]
        buf = numbadam.ParameterBuffer([tuple(s) for s in b["shapes"]], b["dtype"])
        for p in buf.params:
            p[...] = _fill(rng, p.shape, p.dtype, 1.0, "normal")
    variables = [_Var(spec, rng, dev) for spec in case["vars"]]
    events = {e["step"]: e for e in case["events"]}
    cont = case["continuation"]
    for step in range(case["steps"]):
        ctx["step"] = step
        e = events.get(step)
        if e is not None and e["op"] == "iterations":
            opt.iterations = e["value"]
        elif e is not None:
            setattr(opt, e["attr"], e["value"])
        if cont is not None and cont["step"] == step:
            opt = _continue(opt, cont["how"], case, ctx, buf, variables)
        if buf is not None:
            b = case["buffer"]
            for g in buf.grads:
                g[...] = _fill(rng, g.shape, g.dtype, b["scale"], b["values"])
            pairs: Any = buf.grads_and_vars()
            if b["as_list"] or variables:
                pairs = list(pairs)
        else:
            pairs = []
        for v in variables:
            pairs.append((v.gradient(rng, step), v.current()))
        ret = opt.apply_gradients(pairs)
        key = f"{prefix}/step{step + 1}"
        out[f"{key}/iterations"] = np.array(-1 if ret is None else ret, np.int64)
        j = 0
        for p in buf.params if buf is not None else []:
            out[f"{key}/var{j}"] = np.array(p, copy=True)
            j += 1
        for v in variables:
            for name, a in v.record().items():
                out[f"{key}/{name}{j}"] = a
            j += 1
    for j, w in enumerate(opt.get_weights()):
        out[f"{prefix}/weights/{j}"] = np.asarray(w)
    out[f"{prefix}/config"] = _config_bytes(opt)


def _continue(opt, how, case, ctx, buf, variables) -> numbadam.Adam:
    if how == "self":
        opt.set_weights(opt.get_weights())
        return opt
    if how == "config":
        new = numbadam.Adam.from_config(opt.get_config())
    else:
        new = make_optimizer(case["opt"], ctx)
    var_list = (list(buf.params) if buf is not None else []) + [
        v.current() for v in variables
    ]
    new.build(var_list)
    new.set_weights(opt.get_weights())
    return new


def run_all(
    cases: List[Dict[str, Any]], cuda: List[Dict[str, Any]]
) -> Tuple[Dict[str, np.ndarray], Dict[str, float]]:
    """Every case (then every CUDA case); the arrays and the seconds taken."""
    arrays: Dict[str, np.ndarray] = {}
    times = {}
    t0 = time.perf_counter()
    for case in cases:
        arrays.update(run_case(case))
    times["cpu"] = time.perf_counter() - t0
    if cuda:
        if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
            sys.setswitchinterval(5e-5)  # the simulator's threads hand over faster
        t0 = time.perf_counter()
        for case in cuda:
            arrays.update(run_case(case, cuda=True))
        times["cuda"] = time.perf_counter() - t0
    return arrays, times


# ---------------------------------------------------------------------------
# files and comparison
# ---------------------------------------------------------------------------


def _env() -> Dict[str, str]:
    return {k: v for k, v in sorted(os.environ.items()) if k.startswith("NUMBADAM_")}


def manifest(cases, cuda) -> Dict[str, Any]:
    return {
        "format": FORMAT,
        "seed": SEED,
        "ncases": len(cases),
        "cuda": bool(cuda),
        "cuda_ids": [c["id"] for c in cuda],
        "cuda_simulator": os.environ.get("NUMBA_ENABLE_CUDASIM") == "1",
        "numbadam_version": numbadam.__version__,
        "numba_threads": int(numbadam.get_num_threads()),
        "env": _env(),
        "cases": cases,
    }


def _write(path: str, arrays: Dict[str, np.ndarray], man: Dict[str, Any]) -> None:
    if os.path.lexists(path) and not os.path.isfile(path):
        raise SystemExit(f"bitcheck: {path} exists and is not a regular file")
    if MANIFEST_KEY in arrays:
        raise RuntimeError("a case key collides with the manifest key")
    data = dict(arrays)
    data[MANIFEST_KEY] = np.frombuffer(json.dumps(man).encode(), np.uint8)
    tmp = path + ".tmp-bitcheck.npz"  # np.savez appends .npz to other names
    np.savez(tmp, **data)
    os.replace(tmp, path)  # the previous file stays whole until this point


def load(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """A recording's arrays and its manifest (no pickle)."""
    with np.load(path, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    if MANIFEST_KEY not in arrays:
        raise SystemExit(f"bitcheck: {path} has no {MANIFEST_KEY}; not a bitcheck file")
    man = json.loads(arrays.pop(MANIFEST_KEY).tobytes().decode())
    return arrays, man


def same(a: np.ndarray, b: np.ndarray) -> bool:
    """Same dtype, shape and bytes."""
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def _case_of(key: str) -> Tuple[str, int]:
    head = key.split("/", 1)[0]
    return head[:4], int(head[4:])


def _describe_diff(a: np.ndarray, b: np.ndarray) -> str:
    if a.dtype != b.dtype or a.shape != b.shape:
        return f"file {a.dtype}{list(a.shape)}, now {b.dtype}{list(b.shape)}"
    x, y = a.reshape(-1), b.reshape(-1)
    if x.dtype.kind == "f":
        bad = np.flatnonzero(x.view(f"u{x.itemsize}") != y.view(f"u{y.itemsize}"))
    else:
        bad = np.flatnonzero(x != y)
    if bad.size == 0:
        return "bytes differ"
    i = int(bad[0])
    return (
        f"{bad.size} of {x.size} elements differ, first flat index {i}: "
        f"file {x[i]!r}, now {y[i]!r}"
    )


def compare(
    expected: Dict[str, np.ndarray],
    got: Dict[str, np.ndarray],
    cases: List[Dict[str, Any]],
    cuda: List[Dict[str, Any]],
    show: int = 8,
) -> int:
    """Print the comparison; the number of differing, missing and extra keys."""
    selected = {("case", c["id"]) for c in cases} | {("cuda", c["id"]) for c in cuda}
    exp = {k: v for k, v in expected.items() if _case_of(k) in selected}
    differ = sorted(k for k in exp.keys() & got.keys() if not same(exp[k], got[k]))
    missing = sorted(exp.keys() - got.keys())
    extra = sorted(got.keys() - exp.keys())
    ncuda = f" (+{len(cuda)} cuda)" if cuda else ""
    print(
        f"bitcheck: {len(cases)} cases{ncuda}, {len(exp)} arrays, {len(differ)} "
        f"differ, {len(missing)} missing, {len(extra)} extra"
    )
    by_id = {c["id"]: c for c in cases}
    shown = set()
    for what, keys in (("differs", differ), ("missing", missing), ("extra", extra)):
        for k in keys[:show]:
            detail = _describe_diff(exp[k], got[k]) if what == "differs" else ""
            print(f"  {what}: {k}  {detail}")
            cid = _case_of(k)[1]
            if cid not in shown:  # each case's description once
                shown.add(cid)
                print(f"    case {cid}: {json.dumps(by_id[cid], sort_keys=True)}")
        if len(keys) > show:
            print(f"  ... and {len(keys) - show} more {what}")
    if differ:
        ids = sorted({_case_of(k)[1] for k in differ})
        print(f"  cases with differences: {ids[:40]}{' ...' if len(ids) > 40 else ''}")
    return len(differ) + len(missing) + len(extra)


def _cuda_available() -> bool:
    try:
        from numba import cuda
    except ImportError:
        return False
    return bool(cuda.is_available())


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        prog="bitcheck", description="Record or compare numbadam's results, bitwise."
    )
    mode = p.add_mutually_exclusive_group(required=True)
    mode.add_argument("--out", metavar="FILE.npz", help="record into FILE.npz")
    mode.add_argument("--compare", metavar="FILE.npz", help="re-run and compare")
    p.add_argument(
        "--cases",
        type=int,
        default=None,
        metavar="N",
        help=f"the first N cases (default {DEFAULT_CASES}; with "
        "--compare, the file's count)",
    )
    p.add_argument(
        "--cuda",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also run the small dense/sparse cases on numba.cuda "
        "arrays (NUMBA_ENABLE_CUDASIM=1 without a GPU)",
    )
    args = p.parse_args(argv)
    if args.cases is not None and args.cases < 0:
        p.error("--cases must be >= 0")
    t0 = time.perf_counter()
    expected: Dict[str, np.ndarray] = {}
    if args.compare:
        expected, man = load(args.compare)
        if man.get("format") != FORMAT or man.get("seed") != SEED:
            print(f"bitcheck: {args.compare} was written by another bitcheck version")
            return 1
        n = man["ncases"] if args.cases is None else args.cases
        use_cuda = man["cuda"] if args.cuda is None else args.cuda
        if man.get("env", {}) != _env():
            print(f"bitcheck: note: NUMBADAM_* now {_env()}, file {man.get('env')}")
    else:
        n = DEFAULT_CASES if args.cases is None else args.cases
        use_cuda = bool(args.cuda)
    if use_cuda and not _cuda_available():
        print(
            "bitcheck: --cuda needs numba.cuda with a GPU or the simulator "
            "(NUMBA_ENABLE_CUDASIM=1, set before Python starts)"
        )
        return 2
    cases = make_cases(n)
    cuda = cuda_cases(cases) if use_cuda else []
    if args.compare:
        recorded = {c["id"]: c for c in man["cases"]}
        drift = [
            c["id"]
            for c in cases
            if c["id"] in recorded and json.loads(json.dumps(c)) != recorded[c["id"]]
        ]
        if drift:
            print(f"bitcheck: case descriptions differ from the file's: {drift[:10]}")
            return 1
    arrays, times = run_all(cases, cuda)
    spent = ", ".join(f"{k} {v:.1f} s" for k, v in times.items())
    errors = sorted(k for k in arrays if k.endswith("/error"))
    if args.out:
        _write(args.out, arrays, manifest(cases, cuda))
        nbytes = sum(a.nbytes for a in arrays.values())
        ncuda = f" (+{len(cuda)} cuda)" if cuda else ""
        print(
            f"bitcheck: {len(cases)} cases{ncuda}, {len(arrays)} arrays "
            f"({nbytes / 2**20:.1f} MiB) written to {args.out}; {len(errors)} "
            f"cases raised"
        )
        status = 0
    else:
        status = 1 if compare(expected, arrays, cases, cuda) else 0
    for k in errors[:5]:
        print(f"  raised: {k} {arrays[k].tobytes().decode()}")
    print(f"bitcheck: elapsed {time.perf_counter() - t0:.1f} s ({spent})")
    return status


if __name__ == "__main__":
    sys.exit(main())
