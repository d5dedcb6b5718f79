"""Row-wise Adam kernels for the CPU: one second moment per row of a table.

"Partial row-wise Adam" (FBGEMM's ``PARTIAL_ROWWISE_ADAM``) for a 2-D table
``var`` of shape ``(R, D)``: the first moment ``m`` has one value per element,
the second moment ``v`` (and AMSGrad's ``vhat``) one value per **row**, so the
slots cost ``R * D + R`` (``+ R``) numbers instead of ``2 * R * D``. For a row
with gradient ``g`` (``D`` values, transformed as in the element kernels:
``(clip(g, lo, hi) * mul) / div``, duplicates summed first)::

    s    = (g_0*g_0 + g_1*g_1 + ... + g_{D-1}*g_{D-1}) / D   # in this order
    m_j += (g_j - m_j) * omb1
    v   += (s - v) * omb2
    vhat = max(vhat, v)                                      # AMSGrad
    var_j -= (var_j * weight_decay) * lr_t                   # wd given
    var_j -= (m_j * alpha) / (sqrt(vhat or v) + eps)
    ema_j = (momentum * ema_j) + ((1 - momentum) * var_j)   # use_ema given

The sum of squares is sequential, in the compute type, so it is the same on the
CPU and on CUDA (:mod:`numbadam.kernels.rowwise_cuda`) and for any thread count.
The element arithmetic is the element kernels' own (``_moments``, ``_step``,
``_transform`` of :mod:`numbadam.kernels.cpu`), with ``_step``'s denominator
computed once per row.

Layout and types
----------------
``var`` and ``m`` are flat C-contiguous views of the ``(R, D)`` table, ``v`` and
``vhat`` 1-D arrays of ``R``; the EMA argument (after ``wd``) is None or the
element kernels' ``(average, momentum, 1 - momentum, overwrite)``, the
average a flat array like ``var``'s; the width ``D`` is the gradient's
(``values.shape[1]``), or ``var.size // R`` for the dense kernel. A table of
width 0 is left as it is. Storage and compute types are those of the element
kernels: float16 travels as ``uint16`` bits and is computed in float32, rounded
once on store; the scalars are of the compute type.

Kernels
-------
:func:`adam_rowwise_lazy_cpu`
    LazyAdam's rule: only rows with a gradient change (optionally marked in a
    ``dirty`` array, for incremental checkpoints).
:func:`adam_rowwise_sparse_cpu`
    TensorFlow's rule: every row steps, with a zero gradient where it has none
    (unique summed rows in, as from ``sum_duplicate_rows_cpu``).
:func:`adam_rowwise_dense_cpu`
    A dense ``(R, D)`` gradient.

They are compiled lazily from explicit signatures (:data:`SIGNATURES`,
:func:`ensure_compiled`), cached on disk; ``vhat``, ``dirty``, the
accumulator, the weight decay and the EMA are arrays (tuples) or None
(``types.none`` signatures, pruned at compile time).

Examples
--------
>>> import numpy as np
>>> from numbadam.kernels import rowwise_cpu as rk
>>> rk.ensure_compiled(rk.adam_rowwise_lazy_cpu, np.float64, False, True, False,
...                    ema=False)
>>> var = np.ones((3, 2)); m = np.zeros((3, 2)); v = np.zeros(3)
>>> dirty = np.zeros(3, np.uint8)
>>> idx = np.array([2, 0, 2]); vals = np.array([[1.0, -1.0], [3.0, 4.0], [1.0, 1.0]])
>>> inf = np.inf
>>> rk.adam_rowwise_lazy_cpu(var.reshape(-1), m.reshape(-1), v, None, idx, vals,
...                          0.1, 0.1, 0.001, 1e-7, -inf, inf, 1.0, 1.0, None, None,
...                          2, 1, dirty)
>>> m  # row 2's gradient is the sum of its two rows: [2, 0]
array([[0.3, 0.4],
       [0. , 0. ],
       [0.2, 0. ]])
>>> v  # 0.001 * mean of the squares: row 0 (9 + 16) / 2, row 2 (4 + 0) / 2
array([0.0125, 0.    , 0.002 ])
>>> dirty
array([1, 0, 1], dtype=uint8)
"""

from __future__ import annotations

import threading

import numpy as np
from numba import njit, prange, types
from numba.extending import overload

from .cpu import (
    _PARALLEL,
    _PREFETCH_GROUPS,
    _SERIAL,
    STORAGE_DTYPES,
    _all_zero_bits,
    _dup_scratch,
    _group_grad,
    _groups,
    _is_identity,
    _moments,
    _prefetch_span,
    _store_var,
    _transform,
    _zero_rows_stay,
    ema_span,
    ema_type,
    load,
    span,
    store,
    zero_of,
)

__all__ = [
    "adam_rowwise_lazy_cpu",
    "adam_rowwise_sparse_cpu",
    "adam_rowwise_dense_cpu",
    "SIGNATURES",
    "VHAT_ARG",
    "DECAY_ARG",
    "DIRTY_ARG",
    "ACC_ARG",
    "EMA_ARG",
    "ensure_compiled",
]

# ---------------------------------------------------------------------------
# Row arithmetic, from the element kernels' helpers
# ---------------------------------------------------------------------------


def like(x, n):
    """``n`` converted to ``x``'s (scalar) type."""
    return type(x)(n)


@overload(like)
def _like_impl(x, n):
    ty = x
    return lambda x, n: ty(n)


@njit(**_SERIAL)
def _identity_like(x):
    # the transform scalars of "no clipping" in x's type: (g * 1) / 1 is g
    return like(x, -np.inf), like(x, np.inf), like(x, 1), like(x, 1)


@njit(**_SERIAL)
def _ema(x, target, omb):
    # x + (target - x) * omb: _moments' first moment (TensorFlow's ApplyAdam),
    # for m (target g) and for a row's v (target s). Its unused second half
    # folds away.
    return _moments(target, x, x, omb, omb)[0]


@njit(**_SERIAL)
def _denominator(d, eps):
    # _step's denominator, sqrt(v) + eps, once per row
    return np.sqrt(d) + eps


@njit(**_SERIAL)
def _step_by(x, m, alpha, den):
    # _step with its denominator given: x - (m * alpha) / (sqrt(v) + eps)
    return x - (m * alpha) / den


@njit(**_SERIAL)
def _row_moment(v, vhat, r, s, omb2):
    # v[r] (and vhat[r]) of a row whose mean square gradient is s; returns the
    # value under the square root (vhat or v), in the compute type
    vr = _ema(load(v, r), s, omb2)
    store(v, r, vr)
    if vhat is None:
        return vr
    d = load(vhat, r)
    if vr > d:
        d = vr
    store(vhat, r, d)
    return d


@njit(**_SERIAL)
def _elem(xs, ms, j, gj, alpha, omb1, den, wd, es):
    # with weight decay (wd = (weight_decay, lr_t), else None) the value
    # loaded is decayed first, as in _adam_elem; with an EMA (es: the row's
    # span of it, else None) its average follows, as in _adam_elem
    mj = _ema(load(ms, j), gj, omb1)
    store(ms, j, mj)
    xj = load(xs, j)
    if wd is not None:
        xj = xj - (xj * wd[0]) * wd[1]
    _store_var(xs, j, _step_by(xj, mj, alpha, den), es)


@njit(**_SERIAL)
def _grad_at(gs, acs, j, steps):
    # element j of the gradient: gs[j], or with an accumulator (acs, else
    # None: pruned at compile time) the mean (gs[j] + acs[j]) / steps of
    # gradient accumulation, Keras 3's and the element-wise kernels' bits
    if acs is None:
        return load(gs, j)
    return (load(gs, j) + load(acs, j)) / steps


@njit(**_SERIAL)
def _row(xs, ms, v, vhat, r, gs, acs, steps, lo, hi, mul, div, alpha, omb1, omb2,
         eps, wd, es):  # fmt: skip
    # Row r (xs, ms: its elements) with gradient (clip(g, lo, hi) * mul) / div,
    # g = gs or the mean (gs + acs) / steps (see _grad_at): the mean square
    # first (gs and acs read twice; var and m once each).
    width = xs.shape[0]
    acc = zero_of(alpha)
    plain = _is_identity(lo, hi, mul, div)  # (g * 1) / 1 is g: skip the division
    if plain:
        for j in range(width):
            gj = _grad_at(gs, acs, j, steps)
            acc = acc + gj * gj
    else:
        for j in range(width):
            gj = _transform(_grad_at(gs, acs, j, steps), lo, hi, mul, div)
            acc = acc + gj * gj
    d = _row_moment(v, vhat, r, acc / like(alpha, width), omb2)
    den = _denominator(d, eps)
    if plain:
        for j in range(width):
            _elem(xs, ms, j, _grad_at(gs, acs, j, steps), alpha, omb1, den, wd, es)
    else:
        for j in range(width):
            gj = _transform(_grad_at(gs, acs, j, steps), lo, hi, mul, div)
            _elem(xs, ms, j, gj, alpha, omb1, den, wd, es)


@njit(**_SERIAL)
def _decay_row(xs, ms, v, vhat, r, alpha, omb1, omb2, eps, wd, es, skip):
    # A row without gradient: _row's arithmetic with g = 0 (so s = +0). With
    # skip, a row whose m, v (and vhat) are all +0.0 is only read: it would
    # keep every bit (see kernels.cpu).
    if (
        skip
        and _all_zero_bits(v[r : r + 1])
        and _all_zero_bits(span(vhat, r, r + 1))
        and _all_zero_bits(ms)
    ):
        return
    zero = zero_of(alpha)
    den = _denominator(_row_moment(v, vhat, r, zero, omb2), eps)
    for j in range(xs.shape[0]):
        _elem(xs, ms, j, zero, alpha, omb1, den, wd, es)


# ---------------------------------------------------------------------------
# Lazy kernel: only rows with a gradient
# ---------------------------------------------------------------------------


@njit(**_SERIAL)
def _prefetch_row(var, m, v, vhat, values, indices, order, start, width):
    # a group's table row, its v (and vhat) and its first gradient row
    i = order[start]
    r = indices[i]
    a = r * width
    _prefetch_span(var, a, width)
    _prefetch_span(m, a, width)
    _prefetch_span(v, r, 1)
    if vhat is not None:
        _prefetch_span(vhat, r, 1)
    _prefetch_span(values[i], 0, width)


@njit(**_PARALLEL)
def adam_rowwise_lazy_cpu(
    var, m, v, vhat, indices, values, alpha, omb1, omb2, eps, lo, hi, mul, div, wd,
    ema, maxkey, nt, dirty,
):  # fmt: skip
    """Lazy row-wise Adam or AMSGrad step: only rows ``indices`` change.

    ``var`` and ``m`` are flat views of an ``(R, W)`` table with ``W =
    values.shape[1]``, ``v`` (and ``vhat``, or None) of length ``R``;
    ``indices`` (raw, with duplicates, non-negative and at most ``maxkey``) and
    ``values`` (``(k, W)``, storage dtype) are the IndexedSlices. A row's
    gradient is its rows' ``(clip(g, lo, hi) * mul) / div`` summed from zero in
    order of appearance; ``s = sum_j g_j*g_j / W`` (sequential);
    ``m_j += (g_j - m_j) * omb1``; ``v += (s - v) * omb2``; with AMSGrad
    ``vhat = max(vhat, v)``; ``var_j -= (m_j * alpha) / (sqrt(vhat or v) +
    eps)``, the value first decayed with weight decay (``wd = (weight_decay,
    lr_t)``, else None: ``var_j -= (var_j * weight_decay) * lr_t``, only on
    these rows); with an EMA (``ema``, else None) the average of those rows
    follows. Written: those rows of ``var``, ``m``, ``v`` (and ``vhat``, the
    average), and ``dirty[row] = 1`` (a ``uint8`` array of ``R``, or None)
    for each. One pass per unique row, dealt round-robin to ``nt`` workers
    (pass Numba's thread count): the results do not depend on ``nt``. Cost
    O(k W).
    """
    width = values.shape[1]
    if width == 0:
        return
    order, starts, u = _groups(indices, maxkey)
    at, scratch = _dup_scratch(starts, u, width, alpha)
    ilo, ihi, imul, idiv = _identity_like(alpha)
    nt = max(nt, 1)
    for c in prange(nt):  # round-robin groups, as adam_sparse_lazy_cpu
        for q in range(c, u, nt):
            ahead = q + _PREFETCH_GROUPS * nt
            if ahead < u:
                _prefetch_row(var, m, v, vhat, values, indices, order,
                              starts[ahead], width)  # fmt: skip
            s0 = starts[q]
            s1 = starts[q + 1]
            r = indices[order[s0]]
            a = r * width
            e = a + width
            if s1 - s0 == 1:  # one gradient row: transformed as it is read
                _row(var[a:e], m[a:e], v, vhat, r, values[order[s0]], None, alpha,
                     lo, hi, mul, div, alpha, omb1, omb2, eps, wd,
                     ema_span(ema, a, e))  # fmt: skip
            else:  # duplicates: summed (transformed) into the group's scratch
                acc = scratch[at[q] : at[q] + width]
                _group_grad(acc, values, order, s0, s1, lo, hi, mul, div)
                _row(var[a:e], m[a:e], v, vhat, r, acc, None, alpha, ilo, ihi,
                     imul, idiv, alpha, omb1, omb2, eps, wd,
                     ema_span(ema, a, e))  # fmt: skip
            if dirty is not None:
                dirty[r] = 1


# ---------------------------------------------------------------------------
# TensorFlow's rule: every row steps
# ---------------------------------------------------------------------------


@njit(**_PARALLEL)
def adam_rowwise_sparse_cpu(
    var, m, v, vhat, indices, values, alpha, omb1, omb2, eps, wd, ema, block_rows
):
    """Sparse row-wise Adam or AMSGrad step (TF's rule) over a whole table.

    ``var`` and ``m`` are flat views of an ``(R, W)`` table with ``W =
    values.shape[1]``, ``v`` (and ``vhat``, or None) of length ``R``;
    ``indices`` (int64) are unique and ascending and ``values[i]`` (compute
    dtype, already transformed and summed: ``sum_duplicate_rows_cpu``) is the
    gradient of row ``indices[i]``. Every row takes the arithmetic of
    :func:`adam_rowwise_lazy_cpu`, with a zero gradient where it has none (a
    row without gradient whose ``m``, ``v`` (and ``vhat``) are all +0.0 is only
    read: it would not change). With weight decay (``wd``, else None) every
    row is decayed first and none is skipped; with an EMA (``ema``, else
    None) every row's average follows and none is skipped. Written: ``var``,
    ``m``, ``v`` (and ``vhat``, the average), in parallel over fixed blocks
    of ``block_rows`` rows.
    """
    width = values.shape[1]
    nrows = v.shape[0]
    if width == 0:
        return
    k = indices.shape[0]
    if wd is None and ema is None:
        skip = _zero_rows_stay(alpha, omb1, omb2, eps)
    else:  # (a decayed row, or its average, changes even with m = v = +0.0)
        skip = False
    ilo, ihi, imul, idiv = _identity_like(alpha)
    nblocks = (nrows + block_rows - 1) // block_rows
    for b in prange(nblocks):
        r0 = b * block_rows
        r1 = min(r0 + block_rows, nrows)
        p = np.searchsorted(indices, r0)
        for r in range(r0, r1):
            a = r * width
            e = a + width
            if p < k and indices[p] == r:
                _row(var[a:e], m[a:e], v, vhat, r, values[p], None, alpha, ilo, ihi,
                     imul, idiv, alpha, omb1, omb2, eps, wd,
                     ema_span(ema, a, e))  # fmt: skip
                p += 1
            else:
                _decay_row(var[a:e], m[a:e], v, vhat, r, alpha, omb1, omb2, eps,
                           wd, ema_span(ema, a, e), skip)  # fmt: skip


# ---------------------------------------------------------------------------
# Dense kernel
# ---------------------------------------------------------------------------


@njit(**_PARALLEL)
def adam_rowwise_dense_cpu(
    var, m, v, vhat, g, acc, steps, alpha, omb1, omb2, eps, lo, hi, mul, div, wd,
    ema, serial_max,
):  # fmt: skip
    """Dense row-wise Adam or AMSGrad step over an ``(R, W)`` table, in place.

    ``var``, ``m`` and ``g`` are flat views of the table (``W = var.size //
    R``), ``v`` (and ``vhat``, or None) of length ``R``. Each row takes the
    arithmetic of :func:`adam_rowwise_lazy_cpu` with ``g' = (clip(g, lo, hi) *
    mul) / div``, each value decayed first with weight decay (``wd``, else
    None). With ``acc`` (an array like ``g``, else None) the gradient is the
    mean ``(g + acc) / steps`` instead (the applying call of gradient
    accumulation; ``acc`` is read, never written); with an EMA (``ema``, else
    None) the averages follow. Written: ``var``, ``m``, ``v`` (and ``vhat``,
    the average); up to ``serial_max`` elements in the calling
    thread, else in parallel over rows (the same arithmetic, whatever the
    threads).
    """
    nrows = v.shape[0]
    n = var.shape[0]
    if nrows == 0 or n == 0:
        return
    width = n // nrows
    if n <= serial_max:
        for r in range(nrows):
            a = r * width
            e = a + width
            _row(var[a:e], m[a:e], v, vhat, r, g[a:e], span(acc, a, e), steps, lo,
                 hi, mul, div, alpha, omb1, omb2, eps, wd,
                 ema_span(ema, a, e))  # fmt: skip
        return
    for r in prange(nrows):
        a = r * width
        e = a + width
        _row(var[a:e], m[a:e], v, vhat, r, g[a:e], span(acc, a, e), steps, lo, hi,
             mul, div, alpha, omb1, omb2, eps, wd, ema_span(ema, a, e))  # fmt: skip


# ---------------------------------------------------------------------------
# Explicit signatures, compiled lazily per storage dtype
# ---------------------------------------------------------------------------


def _arr(dt, ndim=1, readonly=False):
    return types.Array(dt, ndim, "C", readonly=readonly)


def _signatures(storage):
    s, c = STORAGE_DTYPES[np.dtype(storage)]
    W, R = _arr(s), _arr(s, readonly=True)
    i64, none = types.int64, types.none
    # vhat (VHAT_ARG) and dirty (DIRTY_ARG): None, or an array; the weight
    # decay (DECAY_ARG): None, or the pair (weight_decay, lr_t); the EMA
    # (EMA_ARG): None, or (average, momentum, 1 - momentum, overwrite)
    decays = (none, types.UniTuple(c, 2))
    emas = (none, ema_type(s, c))
    return {
        "adam_rowwise_lazy_cpu": [
            (W, W, W, h, _arr(it, readonly=True), _arr(s, 2, readonly=True))
            + (c,) * 8
            + (wd, e, i64, i64, d)
            for h in (none, W)
            for it in (types.int32, types.int64)
            for wd in decays
            for e in emas
            for d in (none, _arr(types.uint8))
        ],
        "adam_rowwise_sparse_cpu": [
            (W, W, W, h, _arr(i64, readonly=True), _arr(c, 2, readonly=True))
            + (c,) * 4
            + (wd, e, i64)
            for h in (none, W)
            for wd in decays
            for e in emas
        ],
        "adam_rowwise_dense_cpu": [
            (W, W, W, h, R, a, c) + (c,) * 8 + (wd, e, i64)
            for h in (none, W)
            for a in (none, R)
            for wd in decays
            for e in emas
        ],
    }


#: Kernel name -> storage dtype -> list of argument-type tuples.
SIGNATURES = {
    name: {dt: _signatures(dt)[name] for dt in STORAGE_DTYPES}
    for name in _signatures(np.float64)
}

#: Position of the ``vhat`` argument (None: Adam, an array: AMSGrad).
VHAT_ARG = {
    "adam_rowwise_lazy_cpu": 3,
    "adam_rowwise_sparse_cpu": 3,
    "adam_rowwise_dense_cpu": 3,
}

#: Position of the weight-decay argument (None, or ``(weight_decay, lr_t)``).
DECAY_ARG = {
    "adam_rowwise_lazy_cpu": 14,
    "adam_rowwise_sparse_cpu": 10,
    "adam_rowwise_dense_cpu": 15,
}

#: Position of the EMA argument (None, or ``(average, momentum, 1 - momentum,
#: overwrite)``).
EMA_ARG = {
    "adam_rowwise_lazy_cpu": 15,
    "adam_rowwise_sparse_cpu": 11,
    "adam_rowwise_dense_cpu": 16,
}

#: Position of the ``dirty`` argument (None, or a ``uint8`` array of ``R``).
DIRTY_ARG = {"adam_rowwise_lazy_cpu": 18}

#: Position of the accumulator argument (None, or an array like the gradient).
ACC_ARG = {"adam_rowwise_dense_cpu": 5}

_compiled: set = set()
_lock = threading.Lock()


def ensure_compiled(
    kernel, dtype, amsgrad=None, dirty=None, decay=None, acc=None, ema=None
) -> None:
    """Compile ``kernel``'s explicit signatures for storage ``dtype`` (once).

    ``amsgrad`` selects the AMSGrad (True) or Adam (False) signatures, for
    the kernels of :data:`DIRTY_ARG` ``dirty`` those with (True) or without
    (False) a ``dirty`` array, ``decay`` those with (True) or without
    (False) weight decay (:data:`DECAY_ARG`), and for those of
    :data:`ACC_ARG` ``acc`` those with (True) or without (False) an
    accumulator, ``ema`` those with (True) or without (False) an EMA
    (:data:`EMA_ARG`); None compiles both. As
    :func:`numbadam.kernels.cpu.ensure_compiled`: loads from the on-disk cache
    when possible, and afterwards the kernel compiles nothing new at call time.
    """
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
            (DECAY_ARG.get(name), decay),
            (ACC_ARG.get(name), acc),
            (EMA_ARG.get(name), ema),
        ):
            if at is not None and want is not None:
                sigs = [sig for sig in sigs if (sig[at] != types.none) == want]
        kernel.disable_compile(False)
        try:
            for sig in sigs:
                kernel.compile(sig)
        finally:
            # (a dispatcher with no signature at all may not be locked)
            if kernel.signatures:
                kernel.disable_compile(True)
        _compiled.add(key)
