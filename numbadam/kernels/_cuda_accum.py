"""The gradient-accumulation CUDA kernels (#13), twins of ``_cpu_accum``.

The same arithmetic as the CPU kernels, operation for operation (products
through ``_mul``, so NVVM cannot contract them into an FMA): ``acc = 0 + g``
or ``acc + g``; the applying step on ``(g + acc) / steps``; the float64 sum of
squares of that mean; the mean rows of a cycle's IndexedSlices.

Private: :mod:`numbadam.kernels.cuda` re-exports every name; import them from
there.
"""

from __future__ import annotations

from numba import cuda, types

from ._cuda_common import (
    _adam_update,
    _block_sum,
    _clip,
    _mul,
    _transform,
    _widen,
    _zero,
)


@cuda.jit(cache=True)
def accumulate_cuda(acc, g, first):
    """``acc = 0 + g`` (``first``) or ``acc = acc + g``, 1-D, in place on
    ``acc`` (float16: in float32, rounded once on store)."""
    for i in range(cuda.grid(1), acc.shape[0], cuda.gridsize(1)):
        gi = _widen(g[i])
        if first:
            acc[i] = _zero(gi) + gi
        else:
            acc[i] = _widen(acc[i]) + gi


@cuda.jit(cache=True)
def adam_dense_accum_cuda(var, m, v, vhat, g, acc, steps, alpha, omb1, omb2, eps,
                          lo, hi, mul, div, wd, ema):  # fmt: skip
    """The applying step: :func:`adam_dense_cuda` on the gradient
    ``(g + acc) / steps`` (``acc`` read, never written; the EMA ``ema`` as
    that kernel's)."""
    for i in range(cuda.grid(1), var.shape[0], cuda.gridsize(1)):
        gi = _transform((_widen(g[i]) + _widen(acc[i])) / steps, lo, hi, mul, div)
        _adam_update(var, m, v, vhat, i, gi, _widen(m[i]), _widen(v[i]), alpha, omb1,
                     omb2, eps, wd, ema)  # fmt: skip


@cuda.jit(cache=True)
def mean_rows_cuda(values, order, starts, steps, out):
    """The mean rows of an accumulation cycle's IndexedSlices: row ``q`` of
    ``out`` (``(u, W)``) is the rows ``order[starts[q]:starts[q + 1]]`` of
    ``values`` (``(k, W)``) added from zero in that order, in the compute
    type, divided by ``steps`` and rounded once on store: the CPU backend's
    ``mean_rows`` (``sum_duplicate_rows_cpu``), bit for bit."""
    width = out.shape[1]
    for i in range(cuda.grid(1), out.shape[0] * width, cuda.gridsize(1)):
        q = i // width
        j = i - q * width
        s = _zero(steps)
        for t in range(starts[q], starts[q + 1]):
            s = s + _widen(values[order[t], j])
        out[q, j] = s / steps


@cuda.jit(cache=True)
def sum_squares_accum_cuda(g, acc, steps, lo, hi, partials):
    """Per-block sums of ``clip((g + acc) / steps, lo, hi)**2`` in float64, as
    :func:`sum_squares_cuda` (finish with :func:`sum_partials_cuda`)."""
    sh = cuda.shared.array(0, types.float64)  # dynamic: blockDim.x entries
    t = cuda.threadIdx.x
    total = types.float64(0)
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        x = types.float64(_clip((_widen(g[i]) + _widen(acc[i])) / steps, lo, hi))
        total = total + _mul(x, x)
    sh[t] = total
    cuda.syncthreads()
    _block_sum(sh, t, cuda.blockDim.x)
    if t == 0:
        partials[cuda.blockIdx.x] = sh[0]


@cuda.jit(cache=True)
def ema_dense_cuda(var, avg, mom, omm, overwrite):
    """The EMA-only pass of an accumulating call, twin of ``ema_dense_cpu``:
    ``avg = (mom * avg) + (omm * var)`` (and ``var = avg`` with
    ``overwrite``), 1-D, in place."""
    for i in range(cuda.grid(1), var.shape[0], cuda.gridsize(1)):
        a = _mul(mom, _widen(avg[i])) + _mul(omm, _widen(var[i]))
        avg[i] = a
        if overwrite:
            var[i] = a


@cuda.jit(cache=True)
def ema_rows_cuda(var, avg, rows, mom, omm, overwrite):
    """:func:`ema_dense_cuda` on the rows ``rows`` (unique) of the 2-D ``var``
    and ``avg``, one thread per element of those rows."""
    width = var.shape[1]
    for i in range(cuda.grid(1), rows.shape[0] * width, cuda.gridsize(1)):
        r = rows[i // width]
        j = i % width
        a = _mul(mom, _widen(avg[r, j])) + _mul(omm, _widen(var[r, j]))
        avg[r, j] = a
        if overwrite:
            var[r, j] = a
