"""Fused Adam kernels for the CPU: ``@njit(parallel=True)`` over flat arrays.

Every kernel updates its arrays **in place** in one pass: each element of ``var``,
``m``, ``v`` (and ``vhat``) is read once and written once, with no temporaries the
size of the variable. (The sparse TF-rule kernels read, and do not rewrite,
stretches without a gradient whose ``m`` and ``v`` are ``+0.0``: the arithmetic
would give them back bit for bit.) They know nothing of optimizers,
hyperparameters or slots: the caller passes C-contiguous arrays and the per-step
scalars.

Storage and compute types
-------------------------
float64 and float32 arrays are computed in their own type. Numba's CPU target has
no float16 arithmetic, so float16 arrays are passed as ``uint16`` views of their
bits; those kernels widen every element to float32, compute in float32, and round
once (to nearest even) on store. Scalars are always of the compute type.

Determinism
-----------
Work is split into blocks of a fixed size given by the caller (never by thread
count) and every element's arithmetic is independent of the others, so results are
bitwise identical whatever the number of threads. Reductions use a fixed number of
chunks for the same reason.

Compilation
-----------
Public kernels call only private ``@njit`` helpers, never each other, so that
locking one kernel's signatures cannot stop another from compiling. They are
compiled lazily, one explicit signature per storage dtype (see
:data:`SIGNATURES` and :func:`ensure_compiled`), and cached on disk. After
:func:`ensure_compiled` a kernel accepts only its declared signatures: it never
compiles a new specialisation behind the caller's back.
"""

from __future__ import annotations

import threading

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic, overload
from numba.np import numpy_support

__all__ = [
    "adam_dense_cpu",
    "adam_sparse_cpu",
    "adam_sparse_lazy_cpu",
    "sum_duplicate_rows_cpu",
    "sum_squares_cpu",
    "index_range_cpu",
    "half_bits_to_float",
    "float_to_half_bits",
    "SIGNATURES",
    "VHAT_ARG",
    "ensure_compiled",
    "STORAGE_DTYPES",
]

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


@njit(**_SERIAL)
def _adam_elem(var, m, v, vhat, j, gj, alpha, omb1, omb2, eps):
    # One element of the Adam (vhat None) or AMSGrad step, stored in the order
    # m, v, vhat, var.
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
    store(var, j, _step(load(var, j), mj, dj, alpha, eps))


# ---------------------------------------------------------------------------
# Dense kernel
# ---------------------------------------------------------------------------


@njit(**_SERIAL)
def _dense_run(var, m, v, vhat, g, alpha, omb1, omb2, eps, lo, hi, mul, div):
    # Without clipping the transform is the identity bit for bit ((g * 1) / 1),
    # so its division is skipped: in-cache steps are bound by the divisions.
    if _is_identity(lo, hi, mul, div):
        for j in range(var.shape[0]):
            _adam_elem(var, m, v, vhat, j, load(g, j), alpha, omb1, omb2, eps)
    else:
        for j in range(var.shape[0]):
            gj = _transform(load(g, j), lo, hi, mul, div)
            _adam_elem(var, m, v, vhat, j, gj, alpha, omb1, omb2, eps)


@njit(**_PARALLEL)
def adam_dense_cpu(
    var, m, v, vhat, g, alpha, omb1, omb2, eps, lo, hi, mul, div, block, serial_max
):
    """Dense Adam (``vhat=None``) or AMSGrad step over 1-D arrays, in place.

    ``g' = (clip(g, lo, hi) * mul) / div``; ``m += (g' - m) * omb1``;
    ``v += (g'*g' - v) * omb2``; with AMSGrad ``vhat = max(vhat, v)``;
    ``var -= (m * alpha) / (sqrt(vhat or v) + eps)``. Written: ``var``, ``m``,
    ``v`` (and ``vhat``). Up to ``serial_max`` elements in the calling thread
    (a parallel launch costs more than it saves), else in parallel over fixed
    blocks of ``block`` elements: the same arithmetic, whatever the threads.
    """
    n = var.shape[0]
    if n <= serial_max:
        _dense_run(var, m, v, vhat, g, alpha, omb1, omb2, eps, lo, hi, mul, div)
        return
    nblocks = (n + block - 1) // block
    for b in prange(nblocks):
        start = b * block
        stop = min(start + block, n)
        # Slices starting at 0 let LLVM vectorise the inner loop.
        _dense_run(
            var[start:stop], m[start:stop], v[start:stop], span(vhat, start, stop),
            g[start:stop], alpha, omb1, omb2, eps, lo, hi, mul, div,
        )  # fmt: skip


# ---------------------------------------------------------------------------
# Sparse kernel, TensorFlow's rule: one pass over the whole table (m and v
# decay on rows without a gradient).
# ---------------------------------------------------------------------------


# Rows without a gradient whose m and v (and vhat) are all +0.0 keep every bit
# under the dense arithmetic (m' = 0 + (0 - 0) * omb1 = +0, v' = +0, and
# var - (0 * alpha) / (sqrt(0) + eps) = var), provided alpha > 0 and eps > 0 are
# finite and omb1, omb2 finite: the sparse kernels then skip such stretches,
# reading only m and v there. Rows of a table that no gradient ever reached stay
# so (an embedding table's never-seen ids); warm rows take the full pass.
_SKIP_CHUNK = 256  # elements checked at once: 1 KB of float32 per array


@njit(**_SERIAL)
def _zero_rows_stay(alpha, omb1, omb2, eps):
    inf = np.inf
    return (
        alpha > 0
        and alpha < inf
        and eps > 0
        and -inf < omb1 < inf
        and -inf < omb2 < inf
    )


@njit(**_SERIAL)
def _all_zero_bits(a):
    # +0.0 everywhere (-0.0 does not count: the dense arithmetic makes it +0.0);
    # True for a None slot
    if a is None:
        return True
    b = bits(a)
    acc = b[0]
    for j in range(1, b.shape[0]):
        acc |= b[j]
    return acc == 0


@njit(**_SERIAL)
def _decay_span(xs, ms, vs, hs, alpha, omb1, omb2, eps):
    # Rows without a gradient: exactly the dense arithmetic with g = 0.
    zero = zero_of(alpha)
    for j in range(xs.shape[0]):
        _adam_elem(xs, ms, vs, hs, j, zero, alpha, omb1, omb2, eps)


@njit(**_SERIAL)
def _decay_run(xs, ms, vs, hs, alpha, omb1, omb2, eps, skip):
    n = xs.shape[0]
    if not skip:
        _decay_span(xs, ms, vs, hs, alpha, omb1, omb2, eps)
        return
    for c0 in range(0, n, _SKIP_CHUNK):
        c1 = min(c0 + _SKIP_CHUNK, n)
        if (
            _all_zero_bits(ms[c0:c1])
            and _all_zero_bits(vs[c0:c1])
            and _all_zero_bits(span(hs, c0, c1))
        ):
            continue
        _decay_span(
            xs[c0:c1], ms[c0:c1], vs[c0:c1], span(hs, c0, c1), alpha, omb1, omb2, eps
        )


@njit(**_SERIAL)
def _grad_row(xs, ms, vs, hs, gs, alpha, omb1, omb2, eps):
    for j in range(xs.shape[0]):
        _adam_elem(xs, ms, vs, hs, j, gs[j], alpha, omb1, omb2, eps)


@njit(**_PARALLEL)
def adam_sparse_cpu(
    var, m, v, vhat, indices, values, alpha, omb1, omb2, eps, block_rows
):
    """Sparse Adam or AMSGrad step (TF's rule) over a whole table, in place.

    ``var``, ``m``, ``v`` (and ``vhat``, or None) are flat views of an
    ``(R, W)`` table with ``W = values.shape[1]``; ``indices`` (int64) are
    unique and ascending and ``values[i]`` (compute dtype, already clipped and
    summed) is the gradient of row ``indices[i]``. Every row gets the dense
    arithmetic, with a zero gradient where it has none: runs of such rows are
    processed as one flat stretch, whose parts with ``m = v (= vhat) = +0.0``
    are only read (they would not change).
    """
    width = values.shape[1]
    nrows = var.shape[0] // width if width > 0 else 0
    k = indices.shape[0]
    skip = _zero_rows_stay(alpha, omb1, omb2, eps)
    nblocks = (nrows + block_rows - 1) // block_rows
    for b in prange(nblocks):
        r0 = b * block_rows
        r1 = min(r0 + block_rows, nrows)
        p = np.searchsorted(indices, r0)
        r = r0
        while r < r1:
            nxt = indices[p] if p < k else nrows
            stop = min(nxt, r1)
            if stop > r:
                a = r * width
                e = stop * width
                _decay_run(var[a:e], m[a:e], v[a:e], span(vhat, a, e), alpha, omb1,
                           omb2, eps, skip)  # fmt: skip
                r = stop
            if r < r1 and p < k and indices[p] == r:
                a = r * width
                e = a + width
                _grad_row(var[a:e], m[a:e], v[a:e], span(vhat, a, e), values[p],
                          alpha, omb1, omb2, eps)  # fmt: skip
                p += 1
                r += 1


def scratch_like(x, n):
    """An uninitialised 1-D array of ``n`` elements of ``x``'s (scalar) type."""
    return np.empty(n, type(x))


@overload(scratch_like)
def _scratch_like_impl(x, n):
    dt = numpy_support.as_dtype(x)
    return lambda x, n: np.empty(n, dt)


@njit(**_SERIAL)
def _group_grad(acc, values, order, s0, s1, lo, hi, mul, div):
    # One unique row's gradient into acc: the transformed rows order[s0:s1]
    # summed from zero in order of appearance (sum_duplicate_rows_cpu's bits),
    # row by row so each source row is read contiguously. Four rows go in per
    # pass over acc, ((((acc + g0) + g1) + g2) + g3): the same additions in the
    # same order, with a quarter of acc's loads and stores (whose store-to-load
    # latency bounds a long run of duplicates).
    for j in range(acc.shape[0]):
        acc[j] = zero_of(lo)
    s = s0
    if _is_identity(lo, hi, mul, div):  # no clipping: (g * 1) / 1 is g, bit for bit
        while s + 4 <= s1:
            r0, r1 = values[order[s]], values[order[s + 1]]
            r2, r3 = values[order[s + 2]], values[order[s + 3]]
            for j in range(acc.shape[0]):
                a = acc[j] + load(r0, j)
                a += load(r1, j)
                a += load(r2, j)
                acc[j] = a + load(r3, j)
            s += 4
        while s < s1:
            r0 = values[order[s]]
            for j in range(acc.shape[0]):
                acc[j] += load(r0, j)
            s += 1
    else:
        while s + 4 <= s1:
            r0, r1 = values[order[s]], values[order[s + 1]]
            r2, r3 = values[order[s + 2]], values[order[s + 3]]
            for j in range(acc.shape[0]):
                g0 = _transform(load(r0, j), lo, hi, mul, div)
                g1 = _transform(load(r1, j), lo, hi, mul, div)
                g2 = _transform(load(r2, j), lo, hi, mul, div)
                g3 = _transform(load(r3, j), lo, hi, mul, div)
                acc[j] = (((acc[j] + g0) + g1) + g2) + g3  # (in this order)
            s += 4
        while s < s1:
            r0 = values[order[s]]
            for j in range(acc.shape[0]):
                acc[j] += _transform(load(r0, j), lo, hi, mul, div)
            s += 1


@njit(**_SERIAL)
def _lazy_group(xs, ms, vs, hs, values, order, s0, s1, acc, alpha, omb1, omb2, eps,
                lo, hi, mul, div):  # fmt: skip
    # One unique row of a lazy step: its summed gradient, then the dense step.
    if s1 - s0 == 1:  # the common case: one row, no scratch
        row = values[order[s0]]
        zero = zero_of(alpha)  # 0 + g, as the sum of one row starting from zero
        if _is_identity(lo, hi, mul, div):
            for j in range(xs.shape[0]):
                gj = zero + load(row, j)
                _adam_elem(xs, ms, vs, hs, j, gj, alpha, omb1, omb2, eps)
        else:
            for j in range(xs.shape[0]):
                gj = zero + _transform(load(row, j), lo, hi, mul, div)
                _adam_elem(xs, ms, vs, hs, j, gj, alpha, omb1, omb2, eps)
    else:  # duplicates: summed into the group's row of the step's scratch
        _group_grad(acc, values, order, s0, s1, lo, hi, mul, div)
        _grad_row(xs, ms, vs, hs, acc, alpha, omb1, omb2, eps)


@njit(**_SERIAL)
def _dup_scratch(starts, u, width, like):
    # one scratch row (of like's type) per group with duplicates: at[q] is group
    # q's offset into it (-1: a single row, summed in registers). One allocation
    # per step, not one per group inside the parallel loop.
    at = np.empty(u, np.int64)
    n = 0
    for q in range(u):
        if starts[q + 1] - starts[q] > 1:
            at[q] = n * width
            n += 1
        else:
            at[q] = -1
    return at, scratch_like(like, n * width)


@njit(**_SERIAL)
def _groups(indices, maxkey):
    # stable order of the indices and the start of each run of equal ones
    k = indices.shape[0]
    order, sk = _stable_sort_keys(indices, maxkey)
    starts = np.empty(k + 1, np.int64)
    u = 0
    for i in range(k):
        if i == 0 or sk[i] != sk[i - 1]:
            starts[u] = i
            u += 1
    starts[u] = k
    return order, starts, u


# Lazy steps read rows scattered over a table far larger than the caches: each
# group's rows are prefetched this many groups ahead (of the thread's own), so
# their memory latency overlaps the arithmetic of the groups before (2.5x on a
# 256 MB table).
_PREFETCH_GROUPS = 4

# Round-robin groups: the unique rows (groups, in ascending index order) are
# dealt to the threads in turn, thread c taking groups c, c + nt, c + 2 nt, ...
# rather than nt contiguous runs: the frequent ids of a skewed batch (Zipf:
# small ids, long runs of duplicates) are then shared out instead of landing on
# one thread (the kernel 6-7% faster on a (1e6, 64) table and one batch of 4096
# Zipf rows; with rotating batches, colder rows, within +-4%).
# Every row's arithmetic is the same whichever thread does it, so results do
# not depend on the thread count.


@njit(**_SERIAL)
def _prefetch_group(var, m, v, vhat, values, indices, order, start, width):
    # the variable/slot rows and the first gradient row of one group
    i = order[start]
    a = indices[i] * width
    _prefetch_span(var, a, width)
    _prefetch_span(m, a, width)
    _prefetch_span(v, a, width)
    if vhat is not None:
        _prefetch_span(vhat, a, width)
    _prefetch_span(values[i], 0, width)


@njit(**_PARALLEL)
def adam_sparse_lazy_cpu(
    var, m, v, vhat, indices, values, alpha, omb1, omb2, eps, lo, hi, mul, div,
    maxkey, nt,
):  # fmt: skip
    """Lazy sparse Adam or AMSGrad step: only rows ``indices`` change.

    ``var``, ``m``, ``v`` (and ``vhat``, or None) are flat views of an
    ``(R, W)`` table; ``indices`` (raw, with duplicates, non-negative and at
    most ``maxkey``) and ``values`` (``(k, W)``, storage dtype) are the
    IndexedSlices. Duplicates are summed (clipped by ``(clip(g, lo, hi) * mul)
    / div`` first) in order of appearance and each row then takes the dense
    arithmetic, in one parallel pass over the unique rows; other rows are not
    read. Cost O(k W), independent of R. The unique rows are dealt round-robin
    to ``nt`` workers (pass Numba's thread count); results do not depend on
    ``nt``.
    """
    width = values.shape[1]
    order, starts, u = _groups(indices, maxkey)
    at, scratch = _dup_scratch(starts, u, width, alpha)
    nt = max(nt, 1)
    for c in prange(nt):  # round-robin groups (see above)
        for q in range(c, u, nt):
            ahead = q + _PREFETCH_GROUPS * nt
            if ahead < u:
                _prefetch_group(var, m, v, vhat, values, indices, order,
                                starts[ahead], width)  # fmt: skip
            a = indices[order[starts[q]]] * width
            e = a + width
            o = max(at[q], 0)  # (-1: a single row, which needs no scratch)
            acc = scratch[o : o + width]
            _lazy_group(var[a:e], m[a:e], v[a:e], span(vhat, a, e), values, order,
                        starts[q], starts[q + 1], acc, alpha, omb1, omb2, eps, lo,
                        hi, mul, div)  # fmt: skip


# ---------------------------------------------------------------------------
# Helpers of the sparse and clipping paths
# ---------------------------------------------------------------------------


_RADIX_BITS = 11
_RADIX = 1 << _RADIX_BITS
# Up to this many keys an insertion sort (k^2/4 moves on average) beats the
# radix passes, whose 2 x 2048 counters cost more to clear and sum than the
# keys themselves (the lazy kernel on 16 rows: 6.5 -> 5.5 us).
_INSERTION_MAX = 64


@njit(**_SERIAL)
def _stable_sort_keys(keys, maxkey):
    # LSD radix sort on 11-bit digits of non-negative keys: stable (equal keys
    # keep their order of appearance), O(k) scratch, ceil(bits(maxkey)/11)
    # passes -- 2 for a million-row table, against k log k for a merge sort.
    # Returns (order, keys[order]). Every digit is counted in one read of the
    # keys, and each pass carries the keys along, so no pass reads keys[order[i]].
    k = keys.shape[0]
    npass = 0
    while (maxkey >> (_RADIX_BITS * npass)) > 0:
        npass += 1
    order = np.empty(k, np.int64)
    sk = np.empty(k, np.int64)
    if k <= 1 or npass == 0:  # nothing to sort (npass 0: every key is 0)
        for i in range(k):
            order[i] = i
            sk[i] = keys[i]
        return order, sk
    if k <= _INSERTION_MAX:  # few keys: cheaper than clearing and summing counts
        for i in range(k):
            key = np.int64(keys[i])
            j = i
            while j > 0 and sk[j - 1] > key:  # (strict: equal keys stay in order)
                sk[j] = sk[j - 1]
                order[j] = order[j - 1]
                j -= 1
            sk[j] = key
            order[j] = i
        return order, sk
    mask = _RADIX - 1
    counts = np.zeros((npass, _RADIX + 1), np.int64)
    for i in range(k):
        key = np.int64(keys[i])
        for p in range(npass):
            counts[p, ((key >> (_RADIX_BITS * p)) & mask) + 1] += 1
    for p in range(npass):
        for b in range(_RADIX):
            counts[p, b + 1] += counts[p, b]
    for i in range(k):  # the first pass reads the input directly
        key = np.int64(keys[i])
        d = key & mask
        pos = counts[0, d]
        counts[0, d] = pos + 1
        order[pos] = i
        sk[pos] = key
    o2 = np.empty(k, np.int64)
    k2 = np.empty(k, np.int64)
    for p in range(1, npass):
        shift = _RADIX_BITS * p
        for i in range(k):
            key = sk[i]
            d = (key >> shift) & mask
            pos = counts[p, d]
            counts[p, d] = pos + 1
            o2[pos] = order[i]
            k2[pos] = key
        order, o2 = o2, order
        sk, k2 = k2, sk
    return order, sk


@njit(**_PARALLEL)
def sum_duplicate_rows_cpu(
    indices, values, lo, hi, mul, div, maxkey, out_indices, out_values, nt
):
    """Sum the rows of ``values`` that share an index, deterministically.

    Writes the unique indices in ascending order to ``out_indices[:u]`` and their
    summed, transformed rows (``(clip(g, lo, hi) * mul) / div``, compute dtype)
    to ``out_values[:u]``; returns ``u``. Rows with the same index are added in
    their order of appearance, starting from zero. ``values`` is ``(k, W)`` in
    storage dtype; ``indices`` are non-negative and at most ``maxkey``. The
    scratch is O(k). The sums are dealt round-robin to ``nt`` workers, as in
    :func:`adam_sparse_lazy_cpu`.
    """
    order, starts, u = _groups(indices, maxkey)  # stable: appearance order
    for q in range(u):
        out_indices[q] = indices[order[starts[q]]]
    nt = max(nt, 1)
    for c in prange(nt):  # round-robin groups (see above)
        for q in range(c, u, nt):
            _group_grad(out_values[q], values, order, starts[q], starts[q + 1], lo,
                        hi, mul, div)  # fmt: skip
    return u


@njit(**_SERIAL)
def index_range_cpu(indices):
    """``(min, max)`` of a non-empty 1-D integer array, in one pass."""
    lo = indices[0]
    hi = indices[0]
    for i in range(1, indices.shape[0]):
        x = indices[i]
        if x < lo:
            lo = x
        if x > hi:
            hi = x
    return np.int64(lo), np.int64(hi)


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


# ---------------------------------------------------------------------------
# Explicit signatures, compiled lazily per storage dtype
# ---------------------------------------------------------------------------

#: Storage dtypes with kernels: NumPy dtype -> (array element type, compute type).
STORAGE_DTYPES = {
    np.dtype(np.float64): (types.float64, types.float64),
    np.dtype(np.float32): (types.float32, types.float32),
    np.dtype(np.float16): (types.uint16, types.float32),
}


def _arr(dt, ndim=1, readonly=False):
    return types.Array(dt, ndim, "C", readonly=readonly)


def _signatures(storage):
    s, c = STORAGE_DTYPES[np.dtype(storage)]
    W, R = _arr(s), _arr(s, readonly=True)
    vals2 = _arr(c, 2, readonly=True)
    i64, none = types.int64, types.none
    idx64 = _arr(i64, readonly=True)
    dedup = [
        (_arr(it, readonly=True), _arr(s, 2, readonly=True))
        + (c,) * 4
        + (i64, _arr(i64), _arr(c, 2), i64)
        for it in (types.int32, types.int64)
    ]
    # (the vhat argument, position VHAT_ARG: None for Adam, an array for AMSGrad)
    return {
        "adam_dense_cpu": [
            (W, W, W, h, R) + (c,) * 8 + (i64, i64) for h in (none, W)
        ],
        "adam_sparse_cpu": [
            (W, W, W, h, idx64, vals2) + (c,) * 4 + (i64,) for h in (none, W)
        ],
        "adam_sparse_lazy_cpu": [
            (W, W, W, h, _arr(it, readonly=True), _arr(s, 2, readonly=True))
            + (c,) * 8
            + (i64, i64)
            for h in (none, W)
            for it in (types.int32, types.int64)
        ],
        "sum_duplicate_rows_cpu": dedup,
        "sum_squares_cpu": [(R, c, c, i64)],
    }


#: Kernel name -> storage dtype (index dtype for ``index_range_cpu``) -> list
#: of argument-type tuples.
SIGNATURES = {
    name: {dt: _signatures(dt)[name] for dt in STORAGE_DTYPES}
    for name in _signatures(np.float64)
}
SIGNATURES["index_range_cpu"] = {
    np.dtype(np.int32): [(_arr(types.int32, readonly=True),)],
    np.dtype(np.int64): [(_arr(types.int64, readonly=True),)],
}

#: Position of the ``vhat`` argument of the kernels that take one (None: Adam).
VHAT_ARG = {"adam_dense_cpu": 3, "adam_sparse_cpu": 3, "adam_sparse_lazy_cpu": 3}

_compiled: set = set()
_lock = threading.Lock()


def ensure_compiled(kernel, dtype, amsgrad=None) -> None:
    """Compile ``kernel``'s explicit signatures for storage ``dtype`` (once).

    For a kernel with a ``vhat`` argument (:data:`VHAT_ARG`), ``amsgrad``
    selects the AMSGrad (True) or Adam (False) signatures; None compiles both.
    Loads from the on-disk cache when possible. Afterwards the kernel's
    dispatcher accepts arrays matching its compiled signatures (writable arrays
    where read-only ones are declared, too) and compiles nothing new.
    """
    name = kernel.py_func.__name__
    key = (name, np.dtype(dtype), amsgrad)
    if key in _compiled:
        return
    with _lock:
        if key in _compiled:
            return
        sigs = SIGNATURES[name][key[1]]
        at = VHAT_ARG.get(name)
        if at is not None and amsgrad is not None:
            sigs = [sig for sig in sigs if (sig[at] != types.none) == amsgrad]
        kernel.disable_compile(False)
        try:
            for sig in sigs:
                kernel.compile(sig)
        finally:
            # (a dispatcher with no signature at all may not be locked)
            if kernel.signatures:
                kernel.disable_compile(True)
        _compiled.add(key)
