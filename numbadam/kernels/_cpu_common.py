"""What every CPU kernel shares: compile options, float16 on raw bits, typed
loads and stores, prefetch hints, and the element arithmetic (``_adam_elem``,
``_moments``, ``_step``, ``_transform``) that makes dense and sparse steps
agree bit for bit.

Private: :mod:`numbadam.kernels.cpu` re-exports every name; import them from
there.
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic, overload

# error_model="numpy": division by zero gives inf/nan instead of raising, which
# also lets LLVM vectorise the division (3.5-4x on the dense pass).
_PARALLEL = dict(parallel=True, cache=True, error_model="numpy", nogil=True)
_SERIAL = dict(cache=True, error_model="numpy", nogil=True)

# ---------------------------------------------------------------------------
# float16 <-> float32 on raw bits (IEEE 754 binary16, round to nearest even)
# ---------------------------------------------------------------------------


@njit(**_SERIAL)
def half_bits_to_float(h):
    """float32 value of the binary16 number whose bits are ``h`` (exact)."""
    b = np.int64(h)
    sign = (b & 0x8000) << 16
    exp = (b >> 10) & 0x1F
    man = b & 0x3FF
    if exp == 0:
        # zero or subnormal: man * 2**-24 is exact in float32
        mag = np.float32(man) * np.float32(5.9604644775390625e-08)
        bits = np.int64(np.float32(mag).view(np.uint32)) | sign
    elif exp == 31:
        bits = sign | 0x7F800000 | (man << 13)
    else:
        bits = sign | ((exp + 112) << 23) | (man << 13)
    return np.uint32(bits).view(np.float32)


@njit(**_SERIAL)
def float_to_half_bits(f):
    """Bits of ``f`` (float32) rounded to binary16, to nearest, ties to even."""
    x = np.int64(np.float32(f).view(np.uint32))
    sign = (x >> 16) & 0x8000
    x = x & 0x7FFFFFFF
    if x >= 0x7F800000:  # inf or nan (nan stays a quiet nan)
        h = 0x7E00 if x > 0x7F800000 else 0x7C00
    elif x >= 0x477FF000:  # >= 65520: rounds to inf
        h = 0x7C00
    elif x < 0x38800000:  # below 2**-14: subnormal half or zero
        # Adding 0.5 makes the FPU round to a multiple of 2**-24, the half ulp.
        r = np.uint32(x).view(np.float32) + np.float32(0.5)
        h = np.int64(np.float32(r).view(np.uint32)) - 0x3F000000
    else:
        odd = (x >> 13) & 1
        h = (x - (112 << 23) + 0xFFF + odd) >> 13
    return np.uint16(sign | h)


def load(a, i):
    """``a[i]`` in the compute type (float16 bits widen to float32)."""
    return a[i]


@overload(load)
def _load_impl(a, i):
    if a.dtype == types.uint16:
        return lambda a, i: half_bits_to_float(a[i])
    return lambda a, i: a[i]


def store(a, i, x):
    """``a[i] = x``, rounding a float32 ``x`` into float16 bits when needed."""
    a[i] = x


@overload(store)
def _store_impl(a, i, x):
    if a.dtype == types.uint16:

        def impl(a, i, x):
            a[i] = float_to_half_bits(x)

    else:

        def impl(a, i, x):
            a[i] = x

    return impl


def bits(a):
    """``a``'s elements as unsigned integers of their width (a view of the bits)."""
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize])


@overload(bits)
def _bits_impl(a):
    if isinstance(a.dtype, types.Integer):  # float16 storage: already its bits
        return lambda a: a
    ut = np.uint64 if a.dtype == types.float64 else np.uint32
    return lambda a: a.view(ut)


def zero_of(x):
    """A zero of ``x``'s type (``x * 0`` would be NaN for an infinite ``x``)."""
    return type(x)(0)


@overload(zero_of)
def _zero_of_impl(x):
    ty = x
    return lambda x: ty(0)


@intrinsic
def _prefetch(typingctx, arr, i):
    """Hint the CPU to fetch ``arr[i]``'s cache line for reading (no effect on
    results; ``prefetcht0``)."""
    if not isinstance(arr, types.Array) or not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(
            context, builder, aryty, ary, [args[1]], wraparound=False
        )
        i32 = ir.IntType(32)
        fnty = ir.FunctionType(ir.VoidType(), [ptr.type, i32, i32, i32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0")
        builder.call(fn, [ptr, i32(0), i32(3), i32(1)])  # read, keep, data cache
        return context.get_dummy_value()

    return types.void(arr, i), codegen


@njit(**_SERIAL)
def _prefetch_span(a, start, count):
    # the cache lines of a[start:start + count] (one hint per 64 bytes: a
    # stretch that straddles one more line gets that line from the hardware's
    # own next-line prefetch)
    step = max(1, 64 // a.itemsize)
    for j in range(start, start + count, step):
        _prefetch(a, j)


# ---------------------------------------------------------------------------
# Element arithmetic shared by every kernel, so dense and sparse agree bitwise
# ---------------------------------------------------------------------------


@njit(**_SERIAL)
def _clip(g, lo, hi):
    # clip_by_value; NaN passes through
    if g < lo:
        return lo
    if g > hi:
        return hi
    return g


@njit(**_SERIAL)
def _is_identity(lo, hi, mul, div):
    # the transform of "no clipping": -inf, inf, 1, 1
    return lo == -np.inf and hi == np.inf and mul == 1 and div == 1


@njit(**_SERIAL)
def _transform(g, lo, hi, mul, div):
    # clip_by_value, then clip_by_norm's (g * c) / max(norm, c)
    return (_clip(g, lo, hi) * mul) / div


@njit(**_SERIAL)
def _moments(g, m, v, omb1, omb2):
    # TensorFlow's ApplyAdam: m += (g - m) * (1 - beta_1); v += (g*g - v) * (1 - beta_2)
    m = m + (g - m) * omb1
    v = v + (g * g - v) * omb2
    return m, v


@njit(**_SERIAL)
def _step(x, m, denom_v, alpha, eps):
    # epsilon "hat": outside the square root; bias correction folded into alpha.
    return x - (m * alpha) / (np.sqrt(denom_v) + eps)


# ---------------------------------------------------------------------------
# AMSGrad as an argument: ``vhat`` is an array or None. Under a ``types.none``
# signature Numba prunes every ``vhat is None`` branch at compile time, so the
# Adam specialisation carries no trace of vhat and AMSGrad needs no twin.
# ---------------------------------------------------------------------------


def span(a, start, stop):
    """``a[start:stop]``, or None for a None ``a``."""
    return None if a is None else a[start:stop]


@overload(span)
def _span_impl(a, start, stop):
    if isinstance(a, types.NoneType):
        return lambda a, start, stop: None
    return lambda a, start, stop: a[start:stop]


# Decoupled weight decay is an argument too: ``wd`` is None (pruned, as vhat)
# or the tuple ``(weight_decay, lr_t)`` of the compute type; Keras 3's
# ``var -= (var * weight_decay) * lr_t`` then comes before the Adam step, in
# the same pass and on the value loaded (float16: in float32, rounded once).


# The EMA of the weights (Keras 3's ``use_ema``) is an argument after ``wd``:
# None (pruned) or ``(average, momentum, one_minus_momentum, overwrite)``, the
# average a flat array like var's, the scalars of the compute type and
# ``overwrite`` a bool. After the step ``average = (momentum * average) +
# (one_minus_momentum * var)`` with var as stored; with ``overwrite`` var then
# takes the average's value. float16 is computed in float32 (from the var as
# stored) and rounded once, as the Adam step.


def ema_span(ema, start, stop):
    """``ema`` with its average cut to ``[start, stop)``, or None."""
    return None if ema is None else (ema[0][start:stop],) + tuple(ema[1:])


@overload(ema_span)
def _ema_span_impl(ema, start, stop):
    if isinstance(ema, types.NoneType):
        return lambda ema, start, stop: None
    return lambda ema, start, stop: (ema[0][start:stop], ema[1], ema[2], ema[3])


def as_stored(a, x):
    """``x`` rounded as storing it into ``a`` would (float16), as a value."""
    return x


@overload(as_stored)
def _as_stored_impl(a, x):
    if a.dtype == types.uint16:
        return lambda a, x: half_bits_to_float(float_to_half_bits(x))
    return lambda a, x: x


@njit(**_SERIAL)
def _store_var(var, j, xj, ema):
    # var[j] = xj, then the EMA of element j (ema not None)
    if ema is None:
        store(var, j, xj)
        return
    avg = ema[0]
    xs = as_stored(var, xj)
    aj = (ema[1] * load(avg, j)) + (ema[2] * xs)
    store(avg, j, aj)
    if ema[3]:
        store(var, j, aj)
    else:
        store(var, j, xj)


@njit(**_SERIAL)
def _adam_elem(var, m, v, vhat, j, gj, alpha, omb1, omb2, eps, wd, ema):
    # One element of the Adam (vhat None) or AMSGrad step, stored in the order
    # m, v, vhat, var; with weight decay (wd not None) var is decayed first;
    # with an EMA (ema not None) its average follows var.
    mj, vj = _moments(gj, load(m, j), load(v, j), omb1, omb2)
    store(m, j, mj)
    store(v, j, vj)
    if vhat is None:
        dj = vj
    else:
        dj = load(vhat, j)
        if vj > dj:
            dj = vj
        store(vhat, j, dj)
    xj = load(var, j)
    if wd is not None:
        xj = xj - (xj * wd[0]) * wd[1]
    _store_var(var, j, _step(xj, mj, dj, alpha, eps), ema)
