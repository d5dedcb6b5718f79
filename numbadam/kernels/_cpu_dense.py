"""The dense CPU kernels: the fused Adam/AMSGrad step and the gradient norm.

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
)

# ---------------------------------------------------------------------------
# Dense kernel
# ---------------------------------------------------------------------------


@njit(**_SERIAL)
def _dense_run(var, m, v, vhat, g, alpha, omb1, omb2, eps, lo, hi, mul, div, wd,
               ema):  # fmt: skip
    # Without clipping the transform is the identity bit for bit ((g * 1) / 1),
    # so its division is skipped: in-cache steps are bound by the divisions.
    if _is_identity(lo, hi, mul, div):
        for j in range(var.shape[0]):
            _adam_elem(var, m, v, vhat, j, load(g, j), alpha, omb1, omb2, eps, wd, ema)
    else:
        for j in range(var.shape[0]):
            gj = _transform(load(g, j), lo, hi, mul, div)
            _adam_elem(var, m, v, vhat, j, gj, alpha, omb1, omb2, eps, wd, ema)


@njit(**_PARALLEL)
def adam_dense_cpu(
    var, m, v, vhat, g, alpha, omb1, omb2, eps, lo, hi, mul, div, wd, ema,
    block, serial_max,
):  # fmt: skip
    """Dense Adam (``vhat=None``) or AMSGrad step over 1-D arrays, in place.

    ``g' = (clip(g, lo, hi) * mul) / div``; ``m += (g' - m) * omb1``;
    ``v += (g'*g' - v) * omb2``; with AMSGrad ``vhat = max(vhat, v)``;
    ``var -= (m * alpha) / (sqrt(vhat or v) + eps)``. With weight decay
    (``wd = (weight_decay, lr_t)``, else None) ``var -= (var * weight_decay)
    * lr_t`` first, in the same pass. With an EMA (``ema = (average,
    momentum, 1 - momentum, overwrite)``, else None) ``average = (momentum *
    average) + ((1 - momentum) * var)`` after the step, and ``var = average``
    when ``overwrite``. Written: ``var``, ``m``, ``v`` (and ``vhat``,
    ``average``). Up to ``serial_max`` elements in the calling thread
    (a parallel launch costs more than it saves), else in parallel over fixed
    blocks of ``block`` elements: the same arithmetic, whatever the threads.
    """
    n = var.shape[0]
    if n <= serial_max:
        _dense_run(
            var, m, v, vhat, g, alpha, omb1, omb2, eps, lo, hi, mul, div, wd, ema
        )
        return
    nblocks = (n + block - 1) // block
    for b in prange(nblocks):
        start = b * block
        stop = min(start + block, n)
        # Slices starting at 0 let LLVM vectorise the inner loop.
        _dense_run(
            var[start:stop], m[start:stop], v[start:stop], span(vhat, start, stop),
            g[start:stop], alpha, omb1, omb2, eps, lo, hi, mul, div, wd,
            ema_span(ema, start, stop),
        )  # fmt: skip


# ---------------------------------------------------------------------------
# Gradient norm of clipnorm
# ---------------------------------------------------------------------------


@njit(**_PARALLEL)
def sum_squares_cpu(g, lo, hi, nchunks):
    """Sum of ``clip(g, lo, hi)**2`` over a 1-D array, accumulated in float64.

    The array is cut into ``nchunks`` fixed chunks summed in parallel and then in
    order, so the result does not depend on the thread count.
    """
    n = g.shape[0]
    chunk = (n + nchunks - 1) // nchunks
    partial = np.zeros(nchunks, np.float64)
    for c in prange(nchunks):
        start = min(c * chunk, n)
        stop = min(start + chunk, n)
        gb = g[start:stop]
        # four independent accumulators: a sum without reassociation is
        # latency-bound on one chain
        a0 = 0.0
        a1 = 0.0
        a2 = 0.0
        a3 = 0.0
        cnt = stop - start
        j = 0
        while j + 4 <= cnt:
            x0 = np.float64(_clip(load(gb, j), lo, hi))
            x1 = np.float64(_clip(load(gb, j + 1), lo, hi))
            x2 = np.float64(_clip(load(gb, j + 2), lo, hi))
            x3 = np.float64(_clip(load(gb, j + 3), lo, hi))
            a0 += x0 * x0
            a1 += x1 * x1
            a2 += x2 * x2
            a3 += x3 * x3
            j += 4
        while j < cnt:
            x0 = np.float64(_clip(load(gb, j), lo, hi))
            a0 += x0 * x0
            j += 1
        partial[c] = (a0 + a1) + (a2 + a3)
    total = 0.0
    for c in range(nchunks):
        total += partial[c]
    return total
