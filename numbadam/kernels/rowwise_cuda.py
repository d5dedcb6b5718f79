"""Row-wise Adam kernels for CUDA: ``@cuda.jit`` twins of
:mod:`numbadam.kernels.rowwise_cpu`.

Imported lazily, like :mod:`numbadam.kernels.cuda` (it imports ``numba.cuda``,
the optional ``numba-cuda`` package).

One thread per row (grid-stride): the row's squared gradients are added
sequentially in the compute type, ``j = 0 .. D-1``, exactly as on the CPU, and
the element arithmetic is :mod:`numbadam.kernels.cuda`'s (``_moments``,
``_transform``, products through ``_mul`` so that nothing is contracted into an
FMA, correctly rounded division and square root). So a step gives the CPU
kernels' bits for float16 (native here, computed in float32), float32 and
float64.

Arrays are flat C-contiguous device arrays: ``var`` and ``m`` of the ``(R, D)``
table, ``v`` of ``R`` values; AMSGrad's ``vhat`` is ``()`` or ``(vhat,)``
(kernel arguments cannot be None; only ``slot_max`` and ``slot_is_pos_zero``
touch it), and so is the lazy kernel's ``dirty`` (``()`` or ``(dirty,)``, a
``uint8`` array of ``R``; only :func:`mark_row` touches it). The EMA argument
(after ``wd``) is the element kernels' ``()`` or ``(average, momentum, 1 -
momentum, overwrite)`` (only ``store_var`` and ``has_ema`` touch it). The sparse
kernels take the gradient's indices stable-sorted (``keys[:nkeys]``, their
positions in ``values`` in ``pos``) and its raw values: they transform and sum
the duplicates of a row from zero, in order of appearance, as
``sum_duplicate_rows_cpu`` does.

:func:`adam_rowwise_lazy_cuda`
    Only the rows in ``keys`` (one thread per sorted position; the first of
    each run of equal keys does the row).
:func:`adam_rowwise_sparse_cuda`
    TensorFlow's rule: every row, with a zero gradient where it has none.
:func:`adam_rowwise_dense_cuda`
    A dense ``(R, D)`` gradient.

Compiled lazily from explicit signatures (:data:`SIGNATURES`,
:func:`ensure_compiled`); a no-op under the simulator.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import cuda, types
from numba.cuda.extending import overload

from .cuda import (
    SIMULATOR,
    STORAGE_DTYPES,
    _is_pos_zero,
    _lower_bound,
    _moments,
    _mul,
    _segment_gradient,
    _sqrt,
    _transform,
    _widen,
    _zero,
    _zero_rows_stay,
    decayed,
    has_decay,
    has_ema,
    mark_row,
    slot_is_pos_zero,
    slot_max,
    store_var,
)

__all__ = [
    "adam_rowwise_lazy_cuda",
    "adam_rowwise_sparse_cuda",
    "adam_rowwise_dense_cuda",
    "mark_row",
    "grad_of",
    "SIGNATURES",
    "VHAT_ARG",
    "DECAY_ARG",
    "DIRTY_ARG",
    "ACC_ARG",
    "EMA_ARG",
    "ensure_compiled",
]

# ---------------------------------------------------------------------------
# Primitives (Python bodies for the simulator, overloads for the GPU)
# ---------------------------------------------------------------------------


def like(x, n):
    """``n`` converted to ``x``'s (float) type."""
    return type(x)(n)


@overload(like, target="cuda")
def _like_cuda(x, n):
    if x == types.float32:
        return lambda x, n: types.float32(n)
    if x == types.float64:
        return lambda x, n: types.float64(n)
    return None


def grad_of(g, acc, i, steps):
    """Element ``i`` of the gradient: ``g[i]`` widened, or with ``acc =
    (accumulator,)`` the mean ``(g[i] + accumulator[i]) / steps`` of gradient
    accumulation (``acc = ()``: no accumulator)."""
    if len(acc):
        return (_widen(g[i]) + _widen(acc[0][i])) / steps
    return _widen(g[i])


@overload(grad_of, target="cuda")
def _grad_of_cuda(g, acc, i, steps):
    if not isinstance(acc, types.BaseTuple):
        return None
    if len(acc) == 0:
        return lambda g, acc, i, steps: _widen(g[i])

    def impl(g, acc, i, steps):
        return (_widen(g[i]) + _widen(acc[0][i])) / steps

    return impl


# ---------------------------------------------------------------------------
# Row arithmetic: rowwise_cpu's, operation for operation
# ---------------------------------------------------------------------------


@cuda.jit(device=True)
def _ema(x, target, omb):
    # x + (target - x) * omb: _moments' first moment, for m and a row's v
    return _moments(target, x, x, omb, omb)[0]


@cuda.jit(device=True)
def _denominator(d, eps):
    # _step's denominator, once per row
    return _sqrt(d) + eps


@cuda.jit(device=True)
def _step_by(x, m, alpha, den):
    # _step with its denominator given
    return x - _mul(m, alpha) / den


@cuda.jit(device=True)
def _row_moment(v, vhat, r, s, omb2):
    # v[r] (and vhat[r]) from the row's mean square s; returns vhat or v
    vr = _ema(_widen(v[r]), s, omb2)
    v[r] = vr
    return slot_max(vhat, r, vr)


@cuda.jit(device=True)
def _elem(var, m, e, g, alpha, omb1, den, wd, ema):
    # the value decayed first with weight decay (wd: () or the pair); the
    # average (ema not ()) follows the value stored
    mi = _ema(_widen(m[e]), g, omb1)
    m[e] = mi
    store_var(var, e, _step_by(decayed(wd, _widen(var[e])), mi, alpha, den), ema)


@cuda.jit(device=True)
def _sorted_row(var, m, v, vhat, r, s, width, keys, pos, nkeys, values, alpha,
                omb1, omb2, eps, lo, hi, mul, div, wd, ema):  # fmt: skip
    # row r, whose duplicates start at sorted position s (summed twice: for
    # the mean square, then for m)
    zero = _zero(alpha)
    a = r * width
    acc = zero
    for j in range(width):
        gj = _segment_gradient(s, j, keys, pos, nkeys, values, lo, hi, mul, div, zero)
        acc = acc + _mul(gj, gj)
    den = _denominator(_row_moment(v, vhat, r, acc / like(alpha, width), omb2), eps)
    for j in range(width):
        gj = _segment_gradient(s, j, keys, pos, nkeys, values, lo, hi, mul, div, zero)
        _elem(var, m, a + j, gj, alpha, omb1, den, wd, ema)


@cuda.jit(device=True)
def _row_is_pos_zero(m, a, width):
    for j in range(width):
        if not _is_pos_zero(_widen(m[a + j])):
            return False
    return True


# ---------------------------------------------------------------------------
# Kernels
# ---------------------------------------------------------------------------


@cuda.jit(cache=True)
def adam_rowwise_lazy_cuda(
    var, m, v, vhat, keys, pos, nkeys, values, alpha, omb1, omb2, eps, lo, hi, mul,
    div, wd, ema, dirty,
):  # fmt: skip
    """Lazy row-wise Adam or AMSGrad step: only the rows in ``keys`` change.

    ``var``, ``m`` (flat ``(R, W)``, ``W = values.shape[1]``), ``v`` (``R``)
    and the AMSGrad slot (``()`` or ``(vhat,)``) are updated in place, with the
    arithmetic of :func:`numbadam.kernels.rowwise_cpu.adam_rowwise_lazy_cpu`;
    ``dirty`` (``()`` or ``(dirty,)``) gets ``dirty[row] = 1`` for each row
    written; ``wd`` (``()`` or ``(weight_decay, lr_t)``) decays those rows
    first; ``ema`` (``()`` or the average and its scalars) moves their
    averages. ``keys[:nkeys]`` are the indices stable-sorted, ``pos`` their
    positions in ``values`` (``(k, W)``, storage dtype, not yet transformed).
    """
    width = values.shape[1]
    if width == 0:
        return
    for s in range(cuda.grid(1), nkeys, cuda.gridsize(1)):
        if s == 0 or keys[s] != keys[s - 1]:
            r = keys[s]
            _sorted_row(var, m, v, vhat, r, s, width, keys, pos, nkeys, values,
                        alpha, omb1, omb2, eps, lo, hi, mul, div, wd,
                        ema)  # fmt: skip
            mark_row(dirty, r)


@cuda.jit(cache=True)
def adam_rowwise_sparse_cuda(
    var, m, v, vhat, keys, pos, nkeys, values, alpha, omb1, omb2, eps, lo, hi, mul,
    div, wd, ema,
):  # fmt: skip
    """Sparse row-wise Adam or AMSGrad step (TF's rule) over a whole table.

    Arguments as :func:`adam_rowwise_lazy_cuda` (without ``dirty``). Every row
    steps, with a zero gradient where it has none; a row without gradient
    whose ``m``, ``v`` (and ``vhat``) are all +0.0 is only read (it would not
    change); with weight decay (``wd``) every row is decayed first, with an
    EMA (``ema``) every row's average moves, and then none is skipped.
    """
    width = values.shape[1]
    if width == 0:
        return
    zero = _zero(alpha)
    skip = (
        _zero_rows_stay(alpha, omb1, omb2, eps)
        and not has_decay(wd)
        and not has_ema(ema)
    )
    for r in range(cuda.grid(1), v.shape[0], cuda.gridsize(1)):
        s = _lower_bound(keys, 0, nkeys, r)
        if s < nkeys and keys[s] == r:
            _sorted_row(var, m, v, vhat, r, s, width, keys, pos, nkeys, values,
                        alpha, omb1, omb2, eps, lo, hi, mul, div, wd,
                        ema)  # fmt: skip
            continue
        a = r * width
        if (
            skip
            and _is_pos_zero(_widen(v[r]))
            and slot_is_pos_zero(vhat, r)
            and _row_is_pos_zero(m, a, width)
        ):
            continue  # stays bit for bit: read only
        den = _denominator(_row_moment(v, vhat, r, zero, omb2), eps)
        for j in range(width):
            _elem(var, m, a + j, zero, alpha, omb1, den, wd, ema)


@cuda.jit(cache=True)
def adam_rowwise_dense_cuda(var, m, v, vhat, g, acc, steps, alpha, omb1, omb2, eps,
                            lo, hi, mul, div, wd, ema):  # fmt: skip
    """Dense row-wise Adam or AMSGrad step over an ``(R, W)`` table, in place.

    ``var``, ``m`` and ``g`` are flat (``W = var.size // R``), ``v`` of ``R``
    values, ``vhat`` ``()`` or ``(vhat,)``, ``wd`` ``()`` or ``(weight_decay,
    lr_t)``, ``acc`` ``()`` or ``(accumulator,)`` (then the gradient is the
    mean ``(g + accumulator) / steps``), ``ema`` ``()`` or the average and its
    scalars; the arithmetic of
    :func:`numbadam.kernels.rowwise_cpu.adam_rowwise_dense_cpu`.
    """
    nrows = v.shape[0]
    if nrows == 0:
        return
    width = var.shape[0] // nrows
    if width == 0:
        return
    for r in range(cuda.grid(1), nrows, cuda.gridsize(1)):
        a = r * width
        total = _zero(alpha)
        for j in range(width):
            gj = _transform(grad_of(g, acc, a + j, steps), lo, hi, mul, div)
            total = total + _mul(gj, gj)
        d = _row_moment(v, vhat, r, total / like(alpha, width), omb2)
        den = _denominator(d, eps)
        for j in range(width):
            gj = _transform(grad_of(g, acc, a + j, steps), lo, hi, mul, div)
            _elem(var, m, a + j, gj, alpha, omb1, den, wd, ema)


# ---------------------------------------------------------------------------
# Explicit signatures, compiled lazily per storage dtype
# ---------------------------------------------------------------------------


def _arr(dt, ndim=1):
    return types.Array(dt, ndim, "C")


def _signatures(storage):
    s, c = STORAGE_DTYPES[np.dtype(storage)]
    A = _arr(s)
    i64 = types.int64
    K = _arr(i64)
    scalars = (c,) * 8  # alpha, omb1, omb2, eps, lo, hi, mul, div
    # vhat (VHAT_ARG) and dirty (DIRTY_ARG): () or a 1-tuple of an array
    slots = (types.Tuple(()), types.UniTuple(A, 1))
    marks = (types.Tuple(()), types.UniTuple(_arr(types.uint8), 1))
    # the weight decay (DECAY_ARG): () or (weight_decay, lr_t); the EMA
    # (EMA_ARG): () or (average, momentum, 1 - momentum, overwrite)
    decays = (types.Tuple(()), types.UniTuple(c, 2))
    emas = (types.Tuple(()), types.Tuple((A, c, c, types.boolean)))
    sparse = [
        (A, A, A, h, K, K, i64, _arr(s, 2)) + scalars + (wd, e)
        for h in slots
        for wd in decays
        for e in emas
    ]
    return {
        "adam_rowwise_lazy_cuda": [sig + (d,) for sig in sparse for d in marks],
        "adam_rowwise_sparse_cuda": sparse,
        "adam_rowwise_dense_cuda": [
            (A, A, A, h, A, ac, c) + scalars + (wd, e)
            for h in slots
            for ac in slots
            for wd in decays
            for e in emas
        ],
    }


#: Kernel name -> storage dtype -> list of argument-type tuples.
SIGNATURES = {
    name: {dt: _signatures(dt)[name] for dt in STORAGE_DTYPES}
    for name in _signatures(np.float64)
}

#: Position of the ``vhat`` argument (``()`` or ``(vhat,)``).
VHAT_ARG = {
    "adam_rowwise_lazy_cuda": 3,
    "adam_rowwise_sparse_cuda": 3,
    "adam_rowwise_dense_cuda": 3,
}

#: Position of the weight-decay argument (``()`` or ``(weight_decay, lr_t)``).
DECAY_ARG = {
    "adam_rowwise_lazy_cuda": 16,
    "adam_rowwise_sparse_cuda": 16,
    "adam_rowwise_dense_cuda": 15,
}

#: Position of the EMA argument (``()`` or ``(average, momentum, 1 - momentum,
#: overwrite)``).
EMA_ARG = {
    "adam_rowwise_lazy_cuda": 17,
    "adam_rowwise_sparse_cuda": 17,
    "adam_rowwise_dense_cuda": 16,
}

#: Position of the ``dirty`` argument (``()`` or ``(dirty,)``).
DIRTY_ARG = {"adam_rowwise_lazy_cuda": 18}

#: Position of the accumulator argument (``()`` or ``(accumulator,)``).
ACC_ARG = {"adam_rowwise_dense_cuda": 5}

_compiled: set = set()
_lock = threading.Lock()


def ensure_compiled(
    kernel, dtype, amsgrad=None, dirty=None, decay=None, acc=None, ema=None
) -> None:
    """Compile ``kernel``'s explicit signatures for storage ``dtype`` (once).

    ``amsgrad``, (for :data:`DIRTY_ARG`'s kernels) ``dirty`` and (for
    :data:`ACC_ARG`'s) ``acc`` select the signatures with a 1-tuple (True) or
    an empty tuple (False) there, and
    ``decay`` those with the pair (True) or ``()`` (False) at
    :data:`DECAY_ARG`, ``ema`` those with the EMA's 4-tuple (True) or ``()``
    (False) at :data:`EMA_ARG`; None compiles both. Afterwards the kernel compiles
    nothing new at call time. A no-op under the simulator.
    """
    if SIMULATOR:
        return
    name = kernel.py_func.__name__
    key = (name, np.dtype(dtype), amsgrad, dirty, decay, acc, ema)
    if key in _compiled:
        return
    with _lock:
        if key in _compiled:
            return
        sigs = SIGNATURES[name][key[1]]
        for at, want in (
            (VHAT_ARG.get(name), amsgrad),
            (DIRTY_ARG.get(name), dirty),
            (ACC_ARG.get(name), acc),
        ):
            if at is not None and want is not None:
                sigs = [sig for sig in sigs if (len(sig[at]) == 1) == want]
        at = DECAY_ARG.get(name)
        if decay is not None:
            sigs = [sig for sig in sigs if (len(sig[at]) == 2) == decay]
        at = EMA_ARG.get(name)
        if ema is not None:
            sigs = [sig for sig in sigs if (len(sig[at]) == 4) == ema]
        kernel.disable_compile(False)
        try:
            for sig in sigs:
                kernel.compile(sig)
        finally:
            if kernel.signatures:  # numba asserts there is one to disable
                kernel.disable_compile(True)
        _compiled.add(key)
