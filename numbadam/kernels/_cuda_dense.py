"""The dense CUDA kernels: the fused step, the gradient norm of clipnorm, and
the backend's small fill, cast and strided-copy kernels.

Private: :mod:`numbadam.kernels.cuda` re-exports every name; import them from
there.
"""

from __future__ import annotations

from numba import cuda, types

from ._cuda_common import _adam_update, _block_sum, _clip, _mul, _transform, _widen

# ---------------------------------------------------------------------------
# Dense kernels
# ---------------------------------------------------------------------------


@cuda.jit(cache=True)
def adam_dense_cuda(var, m, v, vhat, g, alpha, omb1, omb2, eps, lo, hi, mul, div,
                    wd, ema):  # fmt: skip
    """Dense Adam (``vhat=()``) or AMSGrad (``vhat=(vhat,)``) step, in place on
    ``var``, ``m``, ``v`` (and ``vhat``), 1-D arrays of one length.

    ``g' = (clip(g, lo, hi) * mul) / div``; ``m += (g' - m) * omb1``;
    ``v += (g'*g' - v) * omb2``; with AMSGrad ``vhat = max(vhat, v)``;
    ``var -= (m * alpha) / (sqrt(vhat or v) + eps)``, after ``var -= (var *
    weight_decay) * lr_t`` for ``wd = (weight_decay, lr_t)`` (``()``: none);
    then ``average = (momentum * average) + ((1 - momentum) * var)`` (and
    ``var = average`` when ``overwrite``) for ``ema = (average, momentum,
    1 - momentum, overwrite)`` (``()``: none).
    """
    for i in range(cuda.grid(1), var.shape[0], cuda.gridsize(1)):
        gi = _transform(_widen(g[i]), lo, hi, mul, div)
        _adam_update(var, m, v, vhat, i, gi, _widen(m[i]), _widen(v[i]), alpha, omb1,
                     omb2, eps, wd, ema)  # fmt: skip


# ---------------------------------------------------------------------------
# Gradient-norm reduction for clipnorm (float64 accumulation, fixed order)
# ---------------------------------------------------------------------------


@cuda.jit(cache=True)
def sum_squares_cuda(g, lo, hi, partials):
    """Per-block sums of ``clip(g, lo, hi)**2`` in float64, into ``partials``.

    Each thread adds its grid-stride elements in order; the block adds its
    threads' sums with a fixed tree; ``partials[blockIdx.x]`` gets the result.
    Finish with :func:`sum_partials_cuda`. The order of the additions depends
    only on ``g.size`` and the launch configuration, so the result is the same
    on every run (but not, in general, the CPU's last bits: the CPU adds in
    another fixed order). Launch with ``8 * blockDim.x`` bytes of dynamic
    shared memory.
    """
    sh = cuda.shared.array(0, types.float64)  # dynamic: blockDim.x entries
    t = cuda.threadIdx.x
    acc = types.float64(0)
    for i in range(cuda.grid(1), g.shape[0], cuda.gridsize(1)):
        x = types.float64(_clip(_widen(g[i]), lo, hi))
        acc = acc + _mul(x, x)
    sh[t] = acc
    cuda.syncthreads()
    _block_sum(sh, t, cuda.blockDim.x)
    if t == 0:
        partials[cuda.blockIdx.x] = sh[0]


@cuda.jit(cache=True)
def sum_partials_cuda(partials, out):
    """``out[0] = sum(partials)`` in a fixed order; launch with one block and
    ``8 * blockDim.x`` bytes of dynamic shared memory."""
    sh = cuda.shared.array(0, types.float64)  # dynamic: blockDim.x entries
    t = cuda.threadIdx.x
    acc = types.float64(0)
    for i in range(t, partials.shape[0], cuda.blockDim.x):
        acc = acc + partials[i]
    sh[t] = acc
    cuda.syncthreads()
    _block_sum(sh, t, cuda.blockDim.x)
    if t == 0:
        out[0] = sh[0]


# ---------------------------------------------------------------------------
# Small helpers of the backend
# ---------------------------------------------------------------------------


@cuda.jit(cache=True)
def fill_cuda(a, value):
    """``a[:] = value`` (1-D), rounded to ``a``'s dtype."""
    for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[i] = value


@cuda.jit(cache=True)
def cast_cuda(src, dst):
    """``dst[:] = src`` (1-D, same length), rounded once to ``dst``'s dtype."""
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        dst[i] = src[i]


@cuda.jit(device=True)
def _unravel4(i, shape):
    # C-order position i of a 4-D shape
    i3 = i % shape[3]
    r = i // shape[3]
    i2 = r % shape[2]
    r = r // shape[2]
    return r // shape[1], r % shape[1], i2, i3


@cuda.jit(cache=True)
def gather_cuda(src, dst):
    """``dst[:] = src.ravel()``: a strided 4-D view into a flat C-ordered copy."""
    for i in range(cuda.grid(1), dst.shape[0], cuda.gridsize(1)):
        i0, i1, i2, i3 = _unravel4(i, src.shape)
        dst[i] = src[i0, i1, i2, i3]


@cuda.jit(cache=True)
def take_rows_cuda(src, rows, dst):
    """``dst[i, :] = src[rows[i], :]``: rows of a 2-D array gathered (the rows
    a state-dir delta save copies to the host)."""
    width = dst.shape[1]
    for i in range(cuda.grid(1), dst.shape[0] * width, cuda.gridsize(1)):
        q = i // width
        dst[q, i - q * width] = src[rows[q], i - q * width]


@cuda.jit(cache=True)
def scatter_cuda(src, dst):
    """``dst[...] = src.reshape(dst.shape)``: a flat copy back into a 4-D view."""
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        i0, i1, i2, i3 = _unravel4(i, dst.shape)
        dst[i0, i1, i2, i3] = src[i]


@cuda.jit(cache=True)
def index_cast_cuda(src, dst):
    """``dst[:] = src`` for integer ``src`` into int64 ``dst`` (wrapping, as NumPy)."""
    for i in range(cuda.grid(1), src.shape[0], cuda.gridsize(1)):
        dst[i] = types.int64(src[i])
