"""The gradient-accumulation CPU kernels (#13): the accumulating pass, the
applying Adam step on the mean gradient, and its gradient norm.

With ``gradient_accumulation_steps = N`` an optimizer adds the gradients of
``N - 1`` calls into an accumulator ``acc`` (the variable's dtype) and on the
``N``-th call steps with the mean ``(g + acc) / N`` (Keras 3's arithmetic),
formed in the kernel from ``g`` and ``acc``: no temporary of the variable's
size. The first call of a cycle writes ``acc = 0 + g`` (Keras' bits: ``-0.0``
becomes ``+0.0``) instead of adding, so an accumulator is never zeroed in a
pass of its own: what a finished cycle leaves in it is overwritten.

Private: :mod:`numbadam.kernels.cpu` re-exports every name; import them from
there.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from ._cpu_common import (
    _PARALLEL,
    _SERIAL,
    _adam_elem,
    _clip,
    _is_identity,
    _transform,
    ema_span,
    load,
    span,
    store,
    zero_of,
)


@njit(**_SERIAL)
def _accumulate_run(acc, g, first):
    if first:
        for j in range(acc.shape[0]):
            gj = load(g, j)
            store(acc, j, zero_of(gj) + gj)
    else:
        for j in range(acc.shape[0]):
            store(acc, j, load(acc, j) + load(g, j))


@njit(**_PARALLEL)
def accumulate_cpu(acc, g, first, block, serial_max):
    """``acc = 0 + g`` (``first``) or ``acc = acc + g``, 1-D, in place on ``acc``.

    In the storage dtype (float16: computed in float32 and rounded once, which
    is float16's own correctly rounded sum). Fixed blocks of ``block``
    elements in parallel above ``serial_max`` elements.
    """
    n = acc.shape[0]
    if n <= serial_max:
        _accumulate_run(acc, g, first)
        return
    nblocks = (n + block - 1) // block
    for b in prange(nblocks):
        start = b * block
        stop = min(start + block, n)
        _accumulate_run(acc[start:stop], g[start:stop], first)


@njit(**_SERIAL)
def _mean(g, acc, j, steps):
    # Keras 3: (g + acc) / steps, in the compute dtype
    return (load(g, j) + load(acc, j)) / steps


@njit(**_SERIAL)
def _dense_accum_run(var, m, v, vhat, g, acc, steps, alpha, omb1, omb2, eps, lo, hi,
                     mul, div, wd, ema):  # fmt: skip
    if _is_identity(lo, hi, mul, div):
        for j in range(var.shape[0]):
            gj = _mean(g, acc, j, steps)
            _adam_elem(var, m, v, vhat, j, gj, alpha, omb1, omb2, eps, wd, ema)
    else:
        for j in range(var.shape[0]):
            gj = _transform(_mean(g, acc, j, steps), lo, hi, mul, div)
            _adam_elem(var, m, v, vhat, j, gj, alpha, omb1, omb2, eps, wd, ema)


@njit(**_PARALLEL)
def adam_dense_accum_cpu(
    var, m, v, vhat, g, acc, steps, alpha, omb1, omb2, eps, lo, hi, mul, div, wd,
    ema, block, serial_max,
):  # fmt: skip
    """The applying step of gradient accumulation: dense Adam (or AMSGrad) on
    the mean gradient, in place on ``var``, ``m``, ``v`` (and ``vhat``, and the
    EMA's average).

    ``g' = (clip((g + acc) / steps, lo, hi) * mul) / div``, then the step of
    :func:`adam_dense_cpu` (weight decay ``wd`` and the EMA ``ema`` included),
    element by element with the same arithmetic. ``acc`` is read, never
    written. Blocks as :func:`adam_dense_cpu`.
    """
    n = var.shape[0]
    if n <= serial_max:
        _dense_accum_run(var, m, v, vhat, g, acc, steps, alpha, omb1, omb2, eps, lo,
                         hi, mul, div, wd, ema)  # fmt: skip
        return
    nblocks = (n + block - 1) // block
    for b in prange(nblocks):
        start = b * block
        stop = min(start + block, n)
        _dense_accum_run(
            var[start:stop], m[start:stop], v[start:stop], span(vhat, start, stop),
            g[start:stop], acc[start:stop], steps, alpha, omb1, omb2, eps, lo, hi,
            mul, div, wd, ema_span(ema, start, stop),
        )  # fmt: skip


@njit(**_PARALLEL)
def sum_squares_accum_cpu(g, acc, steps, lo, hi, nchunks):
    """Sum of ``clip((g + acc) / steps, lo, hi)**2`` in float64 (the norm of
    the mean gradient), in the fixed chunks and order of
    :func:`sum_squares_cpu`: the same bits as that kernel on the mean."""
    n = g.shape[0]
    chunk = (n + nchunks - 1) // nchunks
    partial = np.zeros(nchunks, np.float64)
    for c in prange(nchunks):
        start = min(c * chunk, n)
        stop = min(start + chunk, n)
        gb = g[start:stop]
        ab = acc[start:stop]
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        cnt = stop - start
        j = 0
        while j + 4 <= cnt:
            x0 = np.float64(_clip(_mean(gb, ab, j, steps), lo, hi))
            x1 = np.float64(_clip(_mean(gb, ab, j + 1, steps), lo, hi))
            x2 = np.float64(_clip(_mean(gb, ab, j + 2, steps), lo, hi))
            x3 = np.float64(_clip(_mean(gb, ab, j + 3, steps), lo, hi))
            a0 += x0 * x0
            a1 += x1 * x1
            a2 += x2 * x2
            a3 += x3 * x3
            j += 4
        while j < cnt:
            x0 = np.float64(_clip(_mean(gb, ab, j, steps), lo, hi))
            a0 += x0 * x0
            j += 1
        partial[c] = (a0 + a1) + (a2 + a3)
    total = 0.0
    for c in range(nchunks):
        total += partial[c]
    return total


# The EMA-only pass of an accumulating call (``use_ema`` with gradient
# accumulation: Keras 3 moves the averages on every call): the arithmetic of
# the fused kernels' EMA (``_cpu_common._store_var``) on the variable as stored.


@njit(**_SERIAL)
def _ema_run(var, avg, mom, omm, overwrite):
    for j in range(var.shape[0]):
        aj = (mom * load(avg, j)) + (omm * load(var, j))
        store(avg, j, aj)
        if overwrite:
            store(var, j, aj)


@njit(**_PARALLEL)
def ema_dense_cpu(var, avg, mom, omm, overwrite, block, serial_max):
    """``avg = (mom * avg) + (omm * var)`` element by element, 1-D, in place
    on ``avg`` (and ``var = avg`` with ``overwrite``).

    float16 (``uint16`` views): computed in float32 and rounded once. Blocks
    as :func:`adam_dense_cpu`.
    """
    n = var.shape[0]
    if n <= serial_max:
        _ema_run(var, avg, mom, omm, overwrite)
        return
    nblocks = (n + block - 1) // block
    for b in prange(nblocks):
        start = b * block
        stop = min(start + block, n)
        _ema_run(var[start:stop], avg[start:stop], mom, omm, overwrite)


@njit(**_PARALLEL)
def ema_rows_cpu(var, avg, rows, mom, omm, overwrite):
    """:func:`ema_dense_cpu` on the rows ``rows`` (unique) of the 2-D ``var``
    and ``avg`` only, in place: the lazy rule's EMA of an accumulating call."""
    for r in prange(rows.shape[0]):
        row = rows[r]
        _ema_run(var[row], avg[row], mom, omm, overwrite)
