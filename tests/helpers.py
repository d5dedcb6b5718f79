"""Shared test helpers: device transfers, sizes, tolerances, a step checker.

Imported by the test modules (``from helpers import ...``); the fixtures live
in ``conftest.py``. The float64 oracle is ``reference.py``, which never
imports numbadam.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from reference import (
    adam_dense_ref,
    adam_sparse_ref,
    clip_ref,
    hyper32,
)

import numbadam

FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def is_cuda(backend: str) -> bool:
    return backend == "cuda"


def to_device(arr: Any, backend: str) -> Any:
    """``arr`` as a variable of ``backend``: the array itself, or a device copy."""
    if backend == "cuda":
        from numba import cuda

        arr = np.asarray(arr)
        return cuda.to_device(arr if arr.flags.c_contiguous else arr.copy())
    return arr


def to_host(x: Any) -> Any:
    """A host NumPy copy of ``x`` (NumPy or device array); ``None`` stays ``None``."""
    if x is None:
        return None
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    return np.array(x, copy=True)


def sizes(backend: str, cpu: int, cuda: int) -> int:
    """A problem size: the simulator is slow, so cuda tests stay small."""
    return cuda if backend == "cuda" else cpu


def n_examples(backend: str, cpu: int = 40, cuda: int = 10) -> int:
    """hypothesis ``max_examples`` for ``backend``."""
    return cuda if backend == "cuda" else cpu


# ---------------------------------------------------------------------------
# tolerances
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Tolerance:
    """``|actual - expected| <= rtol * scale + ulps * spacing_dtype(|value|)``.

    ``scale`` is the magnitude of the array being compared (its largest input or
    output entry); ``ulps`` counts units in the last place of the storage dtype.
    """

    rtol: float
    ulps: float


#: The one tolerance table, keyed by the variable's dtype. float64 and float32
#: compute in their own dtype (float64 follows TF's operation order, so it is
#: almost bitwise); float16 computes in float32 and rounds once on store, hence
#: one float16 ulp plus float32 compute noise.
TOLERANCE: dict[np.dtype, Tolerance] = {
    np.dtype(np.float64): Tolerance(rtol=1e-14, ulps=0),
    np.dtype(np.float32): Tolerance(rtol=1e-5, ulps=2),
    np.dtype(np.float16): Tolerance(rtol=1e-5, ulps=1),
}


def assert_close(
    actual: Any,
    expected: Any,
    dtype: Any,
    scale: float | None = None,
    what: str = "",
) -> None:
    """Assert ``actual`` (any array, host or device) matches float64 ``expected``."""
    tol = TOLERANCE[np.dtype(dtype)]
    a = np.asarray(to_host(actual)).astype(np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != expected {e.shape}"
    if e.size == 0:
        return
    if scale is None:
        finite = e[np.isfinite(e)]
        scale = float(np.max(np.abs(finite))) if finite.size else 0.0
    with np.errstate(all="ignore"):
        mag = np.maximum(np.abs(a), np.abs(e))
        spacing = np.abs(np.spacing(mag.astype(dtype)).astype(np.float64))
        bound = tol.rtol * scale + tol.ulps * spacing
        err = np.abs(a - e)
        ok = (a == e) | (err <= bound) | (np.isnan(a) & np.isnan(e))
    if not ok.all():
        i = np.unravel_index(np.argmax(~ok), ok.shape) if ok.ndim else ()
        raise AssertionError(
            f"{what} ({np.dtype(dtype)}): {np.count_nonzero(~ok)} of {ok.size} "
            f"entries differ; first at {i}: actual {a[i]!r}, expected {e[i]!r}, "
            f"error {err[i]:.3g} > bound {bound[i]:.3g} (scale {scale:.3g})"
        )


def assert_bitwise(actual: Any, expected: Any, what: str = "") -> None:
    """Same shape, dtype and bits."""
    a = np.asarray(to_host(actual))
    e = np.asarray(to_host(expected))
    assert a.dtype == e.dtype, f"{what}: dtype {a.dtype} != {e.dtype}"
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    ab = np.ascontiguousarray(a).view(np.uint8)
    eb = np.ascontiguousarray(e).view(np.uint8)
    if not np.array_equal(ab, eb):
        diff = np.flatnonzero(a.reshape(-1) != e.reshape(-1))
        raise AssertionError(
            f"{what}: not bitwise equal at {diff.size} entries, e.g. flat index "
            f"{diff[:5].tolist()}: {a.reshape(-1)[diff[:3]]} vs "
            f"{e.reshape(-1)[diff[:3]]}"
        )


# ---------------------------------------------------------------------------
# state snapshots
# ---------------------------------------------------------------------------


def snapshot(opt: Any, variables: Sequence[Any]) -> dict[str, Any]:
    """Host copies of every variable and of the optimizer's weights."""
    return {
        "vars": [to_host(v) for v in variables],
        "weights": [to_host(w) for w in opt.weights],
        "n_weights": len(opt.weights),
        "slot_names": opt.get_slot_names(),
    }


def assert_unchanged(
    before: dict[str, Any], opt: Any, variables: Sequence[Any]
) -> None:
    """Every variable, slot and ``iterations`` is bitwise what ``snapshot`` saw."""
    after = snapshot(opt, variables)
    assert after["n_weights"] == before["n_weights"], "optimizer weights were added"
    assert after["slot_names"] == before["slot_names"], "slot names changed"
    for i, (a, b) in enumerate(zip(after["vars"], before["vars"])):
        assert_bitwise(a, b, f"variable {i}")
    for i, (a, b) in enumerate(zip(after["weights"], before["weights"])):
        assert_bitwise(a, b, f"optimizer weight {i}")


# ---------------------------------------------------------------------------
# one step of the optimizer checked against the oracle
# ---------------------------------------------------------------------------


def _slot_or_zeros(opt: Any, var: Any, name: str, shape) -> np.ndarray:
    try:
        return to_host(opt.get_slot(var, name)).astype(np.float64)
    except KeyError:
        return np.zeros(shape, np.float64)


def oracle_state(opt: Any, var: Any, amsgrad: bool) -> dict[str, Any]:
    """float64 host state of ``var`` (zeros for slots not yet created)."""
    x = to_host(var).astype(np.float64)
    st = {
        "var": x,
        "m": _slot_or_zeros(opt, var, "m", x.shape),
        "v": _slot_or_zeros(opt, var, "v", x.shape),
        "vhat": _slot_or_zeros(opt, var, "vhat", x.shape) if amsgrad else None,
    }
    return st


def oracle_step(
    state: dict[str, Any],
    grad: Any,
    iterations: int,
    *,
    lr: float,
    beta_1: float,
    beta_2: float,
    epsilon: float,
    decay: float = 0.0,
    clipvalue: float | None = None,
    clipnorm: float | None = None,
    grad_dtype: Any = None,
) -> dict[str, Any]:
    """The oracle's next state from ``state`` for a dense array or IndexedSlices.

    ``grad_dtype`` rounds the gradient to the variable's dtype first (the
    optimizer casts gradients to it before anything else).
    """
    hp = {
        "lr": lr,
        "beta_1": beta_1,
        "beta_2": beta_2,
        "epsilon": epsilon,
        "decay": decay,
        "vhat": state["vhat"],
    }
    if isinstance(grad, numbadam.IndexedSlices):
        vals = to_host(grad.values)
        if grad_dtype is not None:
            vals = vals.astype(grad_dtype)
        vals = clip_ref(vals, clipvalue, clipnorm)
        idx = to_host(grad.indices)
        vals = vals.reshape((len(idx),) + state["var"].shape[1:])
        x, m, v, h = adam_sparse_ref(
            state["var"], idx, vals, state["m"], state["v"], iterations + 1, **hp
        )
        g = None
    else:
        g = to_host(grad)
        if grad_dtype is not None:
            g = np.asarray(g).astype(grad_dtype)
        g = clip_ref(g, clipvalue, clipnorm)
        x, m, v, h = adam_dense_ref(
            state["var"], g, state["m"], state["v"], iterations + 1, **hp
        )
    return {"var": x, "m": m, "v": v, "vhat": h, "g": g}


def _scale(*arrays: Any) -> float:
    s = 0.0
    for a in arrays:
        if a is None:
            continue
        a = np.asarray(a, dtype=np.float64)
        a = a[np.isfinite(a)]
        if a.size:
            s = max(s, float(np.max(np.abs(a))))
    return s


def assert_state(
    opt: Any,
    var: Any,
    before: dict[str, Any],
    expected: dict[str, Any],
    dtype: Any,
    what: str = "",
) -> None:
    """The optimizer's var/m/v/vhat of ``var`` match ``expected``
    (:func:`assert_state_arrays` on the variable and its slots)."""
    actual = {"var": var, "m": opt.get_slot(var, "m"), "v": opt.get_slot(var, "v")}
    if expected["vhat"] is not None:
        actual["vhat"] = opt.get_slot(var, "vhat")
    assert_state_arrays(actual, before, expected, dtype, what)


def assert_state_arrays(
    actual: dict[str, Any],
    before: dict[str, Any],
    expected: dict[str, Any],
    dtype: Any,
    what: str = "",
) -> None:
    """``actual["var"]``, ``["m"]``, ``["v"]`` (and ``["vhat"]``, the EMA's
    ``["average"]``) match ``expected``.

    ``before`` and ``expected`` are float64 states (:func:`oracle_state`,
    :func:`oracle_step`). Each array is compared on its own scale (largest entry
    before or after, and the gradient ``expected["g"]`` for ``m`` and ``v``,
    whose updates subtract from it), to :data:`TOLERANCE`.
    """
    g = expected.get("g")
    g2 = None if g is None else np.asarray(g) ** 2
    extra = {"var": None, "m": g, "v": g2, "vhat": g2, "average": None}
    for key in ("var", "m", "v", "vhat", "average"):
        if key in ("vhat", "average") and expected.get(key) is None:
            continue
        assert_close(
            actual[key],
            expected[key],
            dtype,
            _scale(before[key], expected[key], extra[key]),
            f"{what} {key}",
        )


def hyper_kwargs(opt_kwargs: dict[str, Any]) -> dict[str, Any]:
    """Oracle keyword arguments from Adam's constructor arguments (constants)."""
    return {
        "lr": opt_kwargs.get("learning_rate", 0.001),
        "beta_1": opt_kwargs.get("beta_1", 0.9),
        "beta_2": opt_kwargs.get("beta_2", 0.999),
        "epsilon": opt_kwargs.get("epsilon", 1e-7) or 1e-7,
        "decay": opt_kwargs.get("decay", 0.0),
        "clipvalue": opt_kwargs.get("clipvalue"),
        "clipnorm": opt_kwargs.get("clipnorm"),
    }


def run_checked(
    backend: str,
    var0: np.ndarray,
    grads: list[Any],
    opt_kwargs: dict[str, Any] | None = None,
    hypers_at: Any | None = None,
) -> dict[str, Any]:
    """Run Adam on one variable, checking every step against the oracle.

    At each step the oracle starts from the optimizer's own state (so float16
    rounding does not accumulate) and must match it to :data:`TOLERANCE`.
    ``grads`` are host arrays or IndexedSlices of host arrays; they are moved
    to ``backend``. ``hypers_at(iterations)`` may override oracle hyperparameters
    per step (callables, schedules). Returns the optimizer, the variable and the
    oracle's states.
    """
    opt_kwargs = dict(opt_kwargs or {})
    amsgrad = bool(opt_kwargs.get("amsgrad", False))
    opt = numbadam.Adam(**opt_kwargs)
    var = to_device(var0.copy(), backend)
    dtype = var0.dtype
    states = []
    for it, g in enumerate(grads):
        before = oracle_state(opt, var, amsgrad)
        hp = hyper_kwargs(opt_kwargs)
        if hypers_at is not None:
            hp.update(hypers_at(it))
        expected = oracle_step(before, g, it, grad_dtype=dtype, **hp)
        out = opt.apply_gradients([(_grad_to(g, backend), var)])
        assert int(out) == it + 1
        assert_state(opt, var, before, expected, dtype, f"step {it + 1}")
        states.append(expected)
    return {"opt": opt, "var": var, "states": states}


def _grad_to(g: Any, backend: str) -> Any:
    if isinstance(g, numbadam.IndexedSlices):
        return numbadam.IndexedSlices(
            to_device(g.values, backend), to_device(g.indices, backend), g.dense_shape
        )
    return to_device(g, backend)


# ---------------------------------------------------------------------------
# Row-wise kernels (numbadam.kernels.rowwise_cpu) called directly, shared by
# test_kernels_rowwise.py and test_kernels_rowwise_cuda.py
# ---------------------------------------------------------------------------

RW_HP = {"lr": 0.05, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-3}


def rw_compute(dtype):
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def rw_kview(a):
    """The kernels' view of an array: float16 as its bits."""
    return a.view(np.uint16) if a.dtype == np.float16 else a


def rw_flat(a):
    """A state array as a kernel argument: flat (None stays None)."""
    return None if a is None else rw_kview(a.reshape(-1))


def rw_kernel(name, dtype, ema=False):
    """``rowwise_cpu``'s kernel ``name``, compiled for ``dtype`` (the
    signatures with an EMA argument with ``ema``, else those without)."""
    from numbadam.kernels import rowwise_cpu as rk

    k = getattr(rk, name)
    rk.ensure_compiled(k, dtype, ema=ema)
    return k


def rw_coef(dtype, t=3, **hp):
    """``(alpha, omb1, omb2, eps)`` in the compute dtype, from :data:`RW_HP`
    overridden by ``hp``, as TensorFlow rounds them."""
    hp = {**RW_HP, **hp}
    lr, beta_1, beta_2, epsilon = (hp[k] for k in ("lr", "beta_1", "beta_2", "epsilon"))
    c = rw_compute(dtype).type
    b1, b2 = hyper32(beta_1), hyper32(beta_2)
    alpha = hyper32(lr) * math.sqrt(1 - b2**t) / (1 - b1**t)
    return c(alpha), c(1 - b1), c(1 - b2), c(epsilon)


def rw_transform(dtype, g, clipvalue, clipnorm):
    """``(lo, hi, mul, div)``; clipnorm's norm is ``g``'s (clipped), in float64."""
    c = rw_compute(dtype).type
    if clipvalue is None:
        lo, hi = c(-np.inf), c(np.inf)
    else:
        lo, hi = c(-clipvalue), c(clipvalue)
    if clipnorm is None:
        return lo, hi, c(1), c(1)
    norm = math.sqrt(float(np.sum(clip_ref(g, clipvalue) ** 2)))
    return lo, hi, c(clipnorm), c(max(norm, clipnorm))


def rw_state(rng, rows, width, dtype, ams, zero_rows=0):
    """``[var, m, v, vhat]`` (``m`` of the table's shape, ``v``/``vhat`` of its
    rows); the last ``zero_rows`` rows have m = v = vhat = +0.0."""
    x = np.array(rng.standard_normal((rows, width)), dtype)
    m = np.array(rng.standard_normal((rows, width)) * 0.1, dtype)
    v = np.array(rng.uniform(0, 0.5, rows), dtype)
    h = None
    if ams:
        extra = rng.uniform(0, 0.2, rows) * (rng.random(rows) < 0.5)
        h = np.array(v.astype(np.float64) + extra, dtype)
    if zero_rows:
        for a in (m, v, h):
            if a is not None:
                a[rows - zero_rows :] = 0
    return [x, m, v, h]


def rw_copy(state):
    return [None if a is None else a.copy() for a in state]


def rw_ema(ema):
    """The kernels' EMA argument of ``ema = (average, momentum, overwrite)``
    (the average an array like the table, changed in place), or None."""
    if ema is None:
        return None
    avg, mom, overwrite = ema
    c = rw_compute(avg.dtype).type
    return (rw_flat(avg), c(mom), c(1) - c(mom), bool(overwrite))


def rw_lazy(dtype, state, idx, vals, cf, tr, nt=2, dirty=None, wd=None, ema=None):
    """``adam_rowwise_lazy_cpu`` on a copy of ``state``: the new state (with
    ``ema``, see :func:`rw_ema`)."""
    out = rw_copy(state)
    maxkey = int(idx.max()) if idx.size else 0
    rw_kernel("adam_rowwise_lazy_cpu", dtype, ema is not None)(
        *(rw_flat(a) for a in out), idx, rw_kview(vals), *cf, *tr, wd, rw_ema(ema),
        maxkey, nt, dirty,
    )  # fmt: skip
    return out


def rw_summed_rows(dtype, idx, vals, tr, nt=2):
    """``sum_duplicate_rows_cpu``: the unique indices and their summed rows."""
    k, width = vals.shape
    ui = np.empty(k, np.int64)
    uv = np.empty((k, width), rw_compute(dtype))
    maxkey = int(idx.max()) if k else 0
    from numbadam.kernels import cpu

    dedup = cpu.sum_duplicate_rows_cpu
    cpu.ensure_compiled(dedup, dtype)
    u = dedup(idx, rw_kview(vals), *tr, maxkey, ui, uv, nt)
    return ui[:u], uv[:u]


def rw_sparse(dtype, state, idx, vals, cf, tr, block_rows=4, wd=None, ema=None):
    """``adam_rowwise_sparse_cpu`` (after ``sum_duplicate_rows_cpu``) on a copy
    of ``state``: the new state."""
    out = rw_copy(state)
    ui, uv = rw_summed_rows(dtype, idx, vals, tr)
    rw_kernel("adam_rowwise_sparse_cpu", dtype, ema is not None)(
        *(rw_flat(a) for a in out), ui, uv, *cf, wd, rw_ema(ema), block_rows
    )
    return out


def rw_dense(
    dtype, state, g, cf, tr, serial_max=0, wd=None, acc=None, steps=1, ema=None
):
    """``adam_rowwise_dense_cpu`` on a copy of ``state``: the new state (with
    ``acc``, the step on the mean ``(g + acc) / steps``)."""
    out = rw_copy(state)
    n = rw_compute(dtype).type(steps)
    a = None if acc is None else rw_flat(acc)
    rw_kernel("adam_rowwise_dense_cpu", dtype, ema is not None)(
        *(rw_flat(x) for x in out), rw_flat(g), a, n, *cf, *tr, wd, rw_ema(ema),
        serial_max,
    )  # fmt: skip
    return out


def keras3_or_skip() -> Any:
    """Keras 3, imported with the first installed backend (jax, tensorflow,
    torch) unless ``KERAS_BACKEND`` says which; skips the test without it."""
    import pytest

    if "KERAS_BACKEND" not in os.environ:
        for name in ("jax", "tensorflow", "torch"):
            if importlib.util.find_spec(name) is not None:
                os.environ["KERAS_BACKEND"] = name
                break
    try:
        import keras
    except Exception as exc:  # (missing, or its backend is)
        pytest.skip(f"keras cannot be imported: {exc}")
    if int(keras.__version__.split(".")[0]) < 3:
        pytest.skip("needs Keras 3")
    return keras
