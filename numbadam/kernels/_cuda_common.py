"""What every CUDA kernel shares: the type-dependent primitives (with the
simulator's Python bodies), the AMSGrad slot as a tuple, and the element
arithmetic of the CPU kernels, operation for operation.

Private: :mod:`numbadam.kernels.cuda` re-exports every name; import them from
there.
"""

from __future__ import annotations

import math

import numpy as np
from numba import cuda, types
from numba.cuda import libdevice
from numba.cuda.extending import overload

# ---------------------------------------------------------------------------
# Type-dependent primitives. The Python bodies are what the simulator runs (on
# NumPy scalars); the ``overload``s are what the GPU compiles.
# ---------------------------------------------------------------------------


def _widen(x):
    """``x`` in the compute type: float16 widens (exactly) to float32."""
    if isinstance(x, np.float16):
        return np.float32(x)
    return x


@overload(_widen, target="cuda")
def _widen_cuda(x):
    if x == types.float16:
        return lambda x: types.float32(x)
    return lambda x: x


def _mul(a, b):
    """``a * b``, rounded once and never contracted into an FMA."""
    return a * b


@overload(_mul, target="cuda")
def _mul_cuda(a, b):
    if a == types.float32 and b == types.float32:
        return lambda a, b: libdevice.fmul_rn(a, b)
    if a == types.float64 and b == types.float64:
        return lambda a, b: libdevice.dmul_rn(a, b)
    return None


def _sqrt(x):
    """Correctly rounded square root in ``x``'s type (NaN below zero)."""
    return np.sqrt(x)


@overload(_sqrt, target="cuda")
def _sqrt_cuda(x):
    if isinstance(x, types.Float):
        return lambda x: math.sqrt(x)
    return None


def _zero(x):
    """A positive zero of ``x``'s type."""
    return type(x)(0)


@overload(_zero, target="cuda")
def _zero_cuda(x):
    if x == types.float32:
        return lambda x: types.float32(0)
    if x == types.float64:
        return lambda x: types.float64(0)
    return None


# The AMSGrad slot reaches the step kernels as a tuple: ``()`` for Adam,
# ``(vhat,)`` for AMSGrad (kernel arguments cannot be None, and a tuple's length
# is part of its type, so the Adam kernel carries no trace of vhat). These two
# primitives are all the kernels do with it.


def slot_max(vhat, i, v):
    """AMSGrad's ``vhat[i] = max(vhat[i], v)``, returned; ``v`` for Adam."""
    if not len(vhat):
        return v
    h = _widen(vhat[0][i])
    if v > h:
        h = v
    vhat[0][i] = h
    return h


@overload(slot_max, target="cuda")
def _slot_max_cuda(vhat, i, v):
    if not isinstance(vhat, types.BaseTuple):
        return None
    if len(vhat) == 0:
        return lambda vhat, i, v: v

    def impl(vhat, i, v):
        h = _widen(vhat[0][i])
        if v > h:
            h = v
        vhat[0][i] = h
        return h

    return impl


def slot_is_pos_zero(vhat, i):
    """``vhat[i]`` is +0.0 (True for Adam, which has no vhat)."""
    if not len(vhat):
        return True
    x = _widen(vhat[0][i])
    return x == 0 and math.copysign(1.0, x) > 0


@overload(slot_is_pos_zero, target="cuda")
def _slot_is_pos_zero_cuda(vhat, i):
    if not isinstance(vhat, types.BaseTuple):
        return None
    if len(vhat) == 0:
        return lambda vhat, i: True

    def impl(vhat, i):
        x = _widen(vhat[0][i])
        return x == 0 and math.copysign(1.0, x) > 0

    return impl


# ---------------------------------------------------------------------------
# Element arithmetic, the CPU kernels' operation for operation
# ---------------------------------------------------------------------------


@cuda.jit(device=True)
def _clip(g, lo, hi):
    # clip_by_value; NaN passes through
    if g < lo:
        return lo
    if g > hi:
        return hi
    return g


@cuda.jit(device=True)
def _transform(g, lo, hi, mul, div):
    # clip_by_value, then clip_by_norm's (g * c) / max(norm, c)
    return _mul(_clip(g, lo, hi), mul) / div


@cuda.jit(device=True)
def _moments(g, m, v, omb1, omb2):
    # TensorFlow's ApplyAdam: m += (g - m) * (1 - beta_1); v += (g*g - v) * (1 - beta_2)
    m = m + _mul(g - m, omb1)
    v = v + _mul(_mul(g, g) - v, omb2)
    return m, v


@cuda.jit(device=True)
def _step(x, m, denom_v, alpha, eps):
    # epsilon "hat": outside the square root; bias correction folded into alpha.
    return x - _mul(m, alpha) / (_sqrt(denom_v) + eps)


@cuda.jit(device=True)
def _lower_bound(keys, start, stop, x):
    # first position in keys[start:stop] (ascending) whose key is >= x
    lo = start
    hi = stop
    while lo < hi:
        mid = (lo + hi) // 2
        if keys[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@cuda.jit(device=True)
def _upper_bound(keys, start, stop, x):
    # first position in keys[start:stop] (ascending) whose key is > x
    lo = start
    hi = stop
    while lo < hi:
        mid = (lo + hi) // 2
        if keys[mid] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


@cuda.jit(device=True)
def _block_sum(sh, t, nthreads):
    # Fixed tree over sh[:nthreads] into sh[0]; every thread of the block must
    # call it. Level s folds sh[s:2s] into sh[:s].
    s = 1
    while s * 2 < nthreads:
        s *= 2
    while s > 0:
        if t < s and t + s < nthreads:
            sh[t] = sh[t] + sh[t + s]
        cuda.syncthreads()
        s = s // 2


# ---------------------------------------------------------------------------
# The element update of every step kernel
# ---------------------------------------------------------------------------


# Weight decay likewise: ``wd`` is ``()`` (none) or ``(weight_decay, lr_t)`` of
# the compute type, and only these two primitives read it.


def decayed(wd, x):
    """Keras 3's ``x - (x * weight_decay) * lr_t``; ``x`` without decay."""
    if not len(wd):
        return x
    return x - _mul(_mul(x, wd[0]), wd[1])


@overload(decayed, target="cuda")
def _decayed_cuda(wd, x):
    if not isinstance(wd, types.BaseTuple):
        return None
    if len(wd) == 0:
        return lambda wd, x: x
    return lambda wd, x: x - _mul(_mul(x, wd[0]), wd[1])


def has_decay(wd):
    """Whether ``wd`` carries a weight decay."""
    return len(wd) > 0


@overload(has_decay, target="cuda")
def _has_decay_cuda(wd):
    if not isinstance(wd, types.BaseTuple):
        return None
    n = len(wd)
    return lambda wd: n > 0


# The EMA of the weights likewise: ``ema`` is ``()`` or ``(average, momentum,
# one_minus_momentum, overwrite)``, and only ``store_var`` and ``has_ema``
# read it (the CPU kernels' arithmetic: float16 in float32, rounded once).


def as_stored(a, x):
    """``x`` rounded as storing it into ``a`` would (float16), as a value."""
    return type(x)(a.dtype.type(x))


@overload(as_stored, target="cuda")
def _as_stored_cuda(a, x):
    if not isinstance(a, types.Array):
        return None
    if a.dtype == types.float16:
        return lambda a, x: types.float32(types.float16(x))
    return lambda a, x: x


def store_var(var, i, x, ema):
    """``var[i] = x``, then element ``i``'s average (``ema`` not ``()``)."""
    if not len(ema):
        var[i] = x
        return
    avg = ema[0]
    xs = as_stored(var, x)
    a = _mul(ema[1], _widen(avg[i])) + _mul(ema[2], xs)
    avg[i] = a
    var[i] = a if ema[3] else x


@overload(store_var, target="cuda")
def _store_var_cuda(var, i, x, ema):
    if not isinstance(ema, types.BaseTuple):
        return None
    if len(ema) == 0:

        def plain(var, i, x, ema):
            var[i] = x

        return plain

    def impl(var, i, x, ema):
        avg = ema[0]
        xs = as_stored(var, x)
        a = _mul(ema[1], _widen(avg[i])) + _mul(ema[2], xs)
        avg[i] = a
        if ema[3]:
            var[i] = a
        else:
            var[i] = x

    return impl


def has_ema(ema):
    """Whether ``ema`` carries an average."""
    return len(ema) > 0


@overload(has_ema, target="cuda")
def _has_ema_cuda(ema):
    if not isinstance(ema, types.BaseTuple):
        return None
    n = len(ema)
    return lambda ema: n > 0


def mark_row(dirty, r):
    """``dirty[r] = 1`` for ``dirty = (mask,)`` (a ``uint8`` array of the
    table's rows, for incremental checkpoints); nothing for ``()``."""
    if len(dirty):
        dirty[0][r] = 1


@overload(mark_row, target="cuda")
def _mark_row_cuda(dirty, r):
    if not isinstance(dirty, types.BaseTuple):
        return None
    if len(dirty) == 0:
        return lambda dirty, r: None

    def impl(dirty, r):
        dirty[0][r] = 1

    return impl


@cuda.jit(device=True)
def _adam_update(var, m, v, vhat, i, g, m0, v0, alpha, omb1, omb2, eps, wd, ema):
    # element i of every kernel, from its gradient g and moments m0, v0; vhat
    # is () (Adam) or (vhat,), wd () or (weight_decay, lr_t), ema () or the
    # average and its scalars. Stored in the CPU kernels' order: m, v, vhat,
    # var (decayed first, then stepped), the average.
    mi, vi = _moments(g, m0, v0, omb1, omb2)
    m[i] = mi
    v[i] = vi
    x = decayed(wd, _widen(var[i]))
    store_var(var, i, _step(x, mi, slot_max(vhat, i, vi), alpha, eps), ema)
