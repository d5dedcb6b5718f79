"""The sparse CUDA kernels: TensorFlow's rule over the whole table, the lazy
step, and the device's deterministic stable sort and range check of indices.

Private: :mod:`numbadam.kernels.cuda` re-exports every name; import them from
there.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, types

from ._cuda_common import (
    _adam_update,
    _lower_bound,
    _transform,
    _upper_bound,
    _widen,
    _zero,
    has_decay,
    has_ema,
    mark_row,
    slot_is_pos_zero,
)

_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min


# ---------------------------------------------------------------------------
# Sparse kernels: one pass over the whole table, TensorFlow's dense-equivalent
# semantics (m and v decay on rows without a gradient).
# ---------------------------------------------------------------------------


@cuda.jit(device=True)
def _segment_gradient(s, w, keys, pos, nkeys, values, lo, hi, mul, div, zero):
    # The summed, transformed gradient of column w of the row keys[s], whose
    # duplicates start at sorted position s: added from zero in order.
    r = keys[s]
    g = zero
    while s < nkeys and keys[s] == r:
        g = g + _transform(_widen(values[pos[s], w]), lo, hi, mul, div)
        s += 1
    return g


@cuda.jit(device=True)
def _row_gradient(e, width, keys, pos, nkeys, values, lo, hi, mul, div, zero):
    # The summed, transformed gradient of flat element e of the table: zero
    # for a row without one; else its duplicates added from zero in order of
    # appearance (keys is stable-sorted, pos the original positions).
    r = e // width
    s = _lower_bound(keys, 0, nkeys, r)
    if s < nkeys and keys[s] == r:
        return _segment_gradient(
            s, e - r * width, keys, pos, nkeys, values, lo, hi, mul, div, zero
        )
    return zero


@cuda.jit(device=True)
def _zero_rows_stay(alpha, omb1, omb2, eps):
    # As the CPU kernels: with these scalars, an element without gradient whose
    # m and v (and vhat) are +0.0 keeps every bit, so it need not be written.
    inf = math.inf
    return (
        alpha > 0
        and alpha < inf
        and eps > 0
        and -inf < omb1 < inf
        and -inf < omb2 < inf
    )


@cuda.jit(device=True)
def _is_pos_zero(x):
    return x == 0 and math.copysign(1.0, x) > 0


@cuda.jit(cache=True)
def adam_sparse_cuda(
    var, m, v, vhat, keys, pos, nkeys, values, alpha, omb1, omb2, eps, lo, hi, mul,
    div, wd, ema,
):  # fmt: skip
    """Sparse Adam or AMSGrad step (TF's rule) over a whole table, in place.

    ``var``, ``m``, ``v`` (and the AMSGrad slot: ``vhat`` is ``()`` or
    ``(vhat,)``) are flat views of an ``(R, W)`` table with ``W =
    values.shape[1]``; ``keys[:nkeys]`` (int64, ascending, duplicates allowed)
    are the gradient's row indices stable-sorted and ``pos`` their positions in
    ``values`` (``(k, W)``, storage dtype, not yet transformed). Each row's
    gradient is ``sum((clip(values[p], lo, hi) * mul) / div)`` over its
    positions in order of appearance, starting from zero, or zero for a row
    with none; then every element takes the dense arithmetic (elements without
    gradient whose moments are +0.0 are read, not written: they would not
    change). With weight decay (``wd = (weight_decay, lr_t)``, else ``()``)
    every element is decayed first and none is skipped; with an EMA (``ema``,
    see :func:`adam_dense_cuda`) every element's average moves, none skipped.
    """
    width = values.shape[1]
    zero = _zero(alpha)
    skip = (
        _zero_rows_stay(alpha, omb1, omb2, eps)
        and not has_decay(wd)
        and not has_ema(ema)
    )
    for e in range(cuda.grid(1), var.shape[0], cuda.gridsize(1)):
        g = _row_gradient(e, width, keys, pos, nkeys, values, lo, hi, mul, div, zero)
        m0, v0 = _widen(m[e]), _widen(v[e])
        if (
            skip
            and g == 0
            and _is_pos_zero(m0)
            and _is_pos_zero(v0)
            and slot_is_pos_zero(vhat, e)
        ):
            continue  # stays bit for bit: read the moments only
        _adam_update(var, m, v, vhat, e, g, m0, v0, alpha, omb1, omb2, eps, wd, ema)


@cuda.jit(cache=True)
def adam_sparse_lazy_cuda(
    var, m, v, vhat, keys, pos, nkeys, values, alpha, omb1, omb2, eps, lo, hi, mul,
    div, wd, ema, dirty,
):  # fmt: skip
    """Lazy sparse Adam or AMSGrad step: only the rows in ``keys`` change.

    Arguments as :func:`adam_sparse_cuda`, and ``dirty``: ``()`` or
    ``(mask,)``, a ``uint8`` array of the table's rows that gets
    ``mask[row] = 1`` for each row stepped (incremental checkpoints). One
    thread per element of ``values``: the first of each run of equal keys sums
    the run (in order of appearance) and updates that element of its row with
    the dense arithmetic; other rows are not read (nor decayed, nor their
    averages moved). Cost O(k W), independent of the table's size.
    """
    width = values.shape[1]
    zero = _zero(alpha)
    for q in range(cuda.grid(1), nkeys * width, cuda.gridsize(1)):
        s = q // width
        if s == 0 or keys[s] != keys[s - 1]:
            w = q - s * width
            if w == 0:
                mark_row(dirty, keys[s])
            g = _segment_gradient(
                s, w, keys, pos, nkeys, values, lo, hi, mul, div, zero
            )
            e = keys[s] * width + w
            _adam_update(var, m, v, vhat, e, g, _widen(m[e]), _widen(v[e]), alpha,
                         omb1, omb2, eps, wd, ema)  # fmt: skip


# ---------------------------------------------------------------------------
# Deterministic stable sort of the sparse indices (k is small: ~1e4-1e5)
# ---------------------------------------------------------------------------


@cuda.jit(cache=True)
def sort_tiles_cuda(indices, keys, pos, n):
    """Stable-sort each tile of ``blockDim.x`` indices into ``keys``/``pos``.

    ``keys[t0:t1]`` gets ``indices[t0:t1]`` (as int64) in ascending order, ties
    in order of appearance, and ``pos`` their positions in ``indices``. Each
    thread computes its element's rank in the tile (O(tile) work, in shared
    memory); the block loops over tiles (grid-stride). Launch with
    ``8 * blockDim.x`` bytes of dynamic shared memory.
    """
    sh = cuda.shared.array(0, types.int64)  # dynamic: blockDim.x entries
    t = cuda.threadIdx.x
    tile = cuda.blockDim.x
    ntiles = (n + tile - 1) // tile
    for b in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
        base = b * tile
        cnt = min(tile, n - base)
        if t < cnt:
            sh[t] = types.int64(indices[base + t])
        cuda.syncthreads()
        if t < cnt:
            key = sh[t]
            rank = 0
            for s in range(cnt):
                ks = sh[s]
                if ks < key or (ks == key and s < t):
                    rank += 1
            keys[base + rank] = key
            pos[base + rank] = base + t
        cuda.syncthreads()


@cuda.jit(cache=True)
def merge_runs_cuda(keys_in, pos_in, keys_out, pos_out, width, n):
    """Merge adjacent sorted runs of ``width`` elements, stably, into ``*_out``.

    Each element finds its output position on its own: its offset in its run
    plus the number of elements of the partner run that precede it (keys
    smaller, or equal and in the left run).
    """
    for p in range(cuda.grid(1), n, cuda.gridsize(1)):
        run = p // width
        key = keys_in[p]
        if run % 2 == 0:
            b0 = (run + 1) * width
            if b0 >= n:
                dest = p
            else:
                b1 = min(b0 + width, n)
                dest = p + (_lower_bound(keys_in, b0, b1, key) - b0)
        else:
            a0 = (run - 1) * width
            a1 = run * width
            dest = p - width + (_upper_bound(keys_in, a0, a1, key) - a0)
        keys_out[dest] = key
        pos_out[dest] = pos_in[p]


@cuda.jit(cache=True)
def index_bounds_cuda(indices, out):
    """``out[0] = min(out[0], min(indices))``, ``out[1] = max(out[1], max(...))``.

    Integer atomics only (the result does not depend on their order).
    """
    lo = types.int64(_INT64_MAX)
    hi = types.int64(_INT64_MIN)
    for i in range(cuda.grid(1), indices.shape[0], cuda.gridsize(1)):
        x = types.int64(indices[i])
        if x < lo:
            lo = x
        if x > hi:
            hi = x
    cuda.atomic.min(out, 0, lo)
    cuda.atomic.max(out, 1, hi)
