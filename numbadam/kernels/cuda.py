"""Fused Adam kernels for CUDA: ``@cuda.jit`` twins of :mod:`numbadam.kernels.cpu`.

Imported lazily (by :mod:`numbadam._backend_cuda`) the first time a device array
is seen: importing it imports ``numba.cuda``, which needs the optional
``numba-cuda`` package.

Every kernel updates its arrays **in place** in one pass over flat, C-contiguous
device arrays, with a grid-stride loop: any launch size covers any array. The
caller picks the launch size (from :mod:`numbadam._config`) and passes the
per-step scalars in the compute type. The kernels know nothing of optimizers,
hyperparameters or slots.

Arithmetic
----------
The element arithmetic is the CPU kernels', operation for operation (see
``_moments``, ``_step`` and ``_transform`` in :mod:`numbadam.kernels.cpu`):

- float16 arrays are native: every element is widened (exactly) to float32 on
  load, computed in float32 and rounded once (to nearest even) on store;
- products go through :func:`_mul`, which on the GPU is ``__fmul_rn`` /
  ``__dmul_rn``: NVVM contracts a plain ``a * b + c`` into one FMA (a single
  rounding), which would make the GPU differ from the CPU and from the
  simulator;
- square root and division are IEEE, correctly rounded (numba-cuda's default
  without ``fastmath``), like the CPU's.

So a step on the GPU gives the CPU's bits for float16, float32 and float64,
except for the gradient-norm reduction of ``clipnorm``, which sums in a
different (but fixed) order: see :func:`sum_squares_cuda`.

Determinism
-----------
No float atomics. Reductions use fixed block partials combined in a fixed
order; sparse gradients are deduplicated by a stable sort on the device (tile
rank sort, then merge passes), after which every duplicate is added in its
order of appearance. The same inputs and launch configuration give the same
bits on every run.

Sparse steps
------------
``indices`` are first sorted (stably) into ``keys`` with the original positions
in ``pos``, by :func:`sort_tiles_cuda` and :func:`merge_runs_cuda`. The fused
pass (:func:`adam_sparse_cuda`) then walks the whole ``(R, W)`` table: each
element binary-searches its row in ``keys``; a row with a gradient sums its
transformed duplicates starting from zero, in appearance order, and every other
row takes the dense arithmetic with ``g = 0`` (so a sparse step is bitwise the
dense step with a zero-filled gradient). The lazy kernels
(:func:`adam_sparse_lazy_cuda`) touch only the rows in ``keys``. Scratch is
O(k), never O(R).

Helpers
-------
:func:`index_bounds_cuda` range-checks indices on the device (integer atomics);
:func:`sum_squares_cuda` / :func:`sum_partials_cuda` reduce the gradient norm;
:func:`cast_cuda`, :func:`index_cast_cuda`, :func:`fill_cuda`,
:func:`gather_cuda` and :func:`scatter_cuda` cast, zero and stage strided views.

Compilation
-----------
Kernels are compiled lazily, one explicit signature set per storage (or index)
dtype (:data:`SIGNATURES`, :func:`ensure_compiled`), and cached on disk
(``cache=True``). Under the simulator (``NUMBA_ENABLE_CUDASIM=1``) nothing is
compiled: the kernels run as Python on NumPy scalars, with the same operations.
"""

from __future__ import annotations

import math
import threading

import numpy as np
from numba import config as _numba_config
from numba import cuda, types
from numba.cuda import libdevice
from numba.cuda.extending import overload

__all__ = [
    "adam_dense_cuda",
    "adam_sparse_cuda",
    "adam_sparse_lazy_cuda",
    "slot_max",
    "slot_is_pos_zero",
    "sum_squares_cuda",
    "sum_partials_cuda",
    "index_bounds_cuda",
    "sort_tiles_cuda",
    "merge_runs_cuda",
    "fill_cuda",
    "cast_cuda",
    "gather_cuda",
    "scatter_cuda",
    "index_cast_cuda",
    "MAX_THREADS_PER_BLOCK",
    "SHARED_BYTES_PER_THREAD",
    "SIGNATURES",
    "VHAT_ARG",
    "ensure_compiled",
    "STORAGE_DTYPES",
    "INDEX_DTYPES",
]

#: Largest block the kernels support (CUDA's limit). The kernels with shared
#: scratch (the sort and the reductions) take it as *dynamic* shared memory of
#: ``8 * blockDim.x`` bytes: see :data:`SHARED_BYTES_PER_THREAD`.
MAX_THREADS_PER_BLOCK = 1024

#: Dynamic shared memory per thread of :func:`sort_tiles_cuda`,
#: :func:`sum_squares_cuda` and :func:`sum_partials_cuda` (one int64 or float64),
#: passed at launch: ``kernel[blocks, threads, 0, threads * 8]``.
SHARED_BYTES_PER_THREAD = 8

SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)

_INT64_MAX = np.iinfo(np.int64).max
_INT64_MIN = np.iinfo(np.int64).min

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
# Dense kernels
# ---------------------------------------------------------------------------


@cuda.jit(device=True)
def _adam_update(var, m, v, vhat, i, g, m0, v0, alpha, omb1, omb2, eps):
    # element i of every kernel, from its gradient g and moments m0, v0; vhat
    # is () (Adam) or (vhat,). Stored in the CPU kernels' order: m, v, vhat, var.
    mi, vi = _moments(g, m0, v0, omb1, omb2)
    m[i] = mi
    v[i] = vi
    var[i] = _step(_widen(var[i]), mi, slot_max(vhat, i, vi), alpha, eps)


@cuda.jit(cache=True)
def adam_dense_cuda(var, m, v, vhat, g, alpha, omb1, omb2, eps, lo, hi, mul, div):
    """Dense Adam (``vhat=()``) or AMSGrad (``vhat=(vhat,)``) step, in place on
    ``var``, ``m``, ``v`` (and ``vhat``), 1-D arrays of one length.

    ``g' = (clip(g, lo, hi) * mul) / div``; ``m += (g' - m) * omb1``;
    ``v += (g'*g' - v) * omb2``; with AMSGrad ``vhat = max(vhat, v)``;
    ``var -= (m * alpha) / (sqrt(vhat or v) + eps)``.
    """
    for i in range(cuda.grid(1), var.shape[0], cuda.gridsize(1)):
        gi = _transform(_widen(g[i]), lo, hi, mul, div)
        _adam_update(var, m, v, vhat, i, gi, _widen(m[i]), _widen(v[i]), alpha, omb1,
                     omb2, eps)  # fmt: skip


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
    div,
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
    change).
    """
    width = values.shape[1]
    zero = _zero(alpha)
    skip = _zero_rows_stay(alpha, omb1, omb2, eps)
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
        _adam_update(var, m, v, vhat, e, g, m0, v0, alpha, omb1, omb2, eps)


@cuda.jit(cache=True)
def adam_sparse_lazy_cuda(
    var, m, v, vhat, keys, pos, nkeys, values, alpha, omb1, omb2, eps, lo, hi, mul,
    div,
):  # fmt: skip
    """Lazy sparse Adam or AMSGrad step: only the rows in ``keys`` change.

    Arguments as :func:`adam_sparse_cuda`. One thread per element of
    ``values``: the first of each run of equal keys sums the run (in order of
    appearance) and updates that element of its row with the dense arithmetic;
    other rows are not read. Cost O(k W), independent of the table's size.
    """
    width = values.shape[1]
    zero = _zero(alpha)
    for q in range(cuda.grid(1), nkeys * width, cuda.gridsize(1)):
        s = q // width
        if s == 0 or keys[s] != keys[s - 1]:
            w = q - s * width
            g = _segment_gradient(
                s, w, keys, pos, nkeys, values, lo, hi, mul, div, zero
            )
            e = keys[s] * width + w
            _adam_update(var, m, v, vhat, e, g, _widen(m[e]), _widen(v[e]), alpha,
                         omb1, omb2, eps)  # fmt: skip


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


# ---------------------------------------------------------------------------
# Explicit signatures, compiled lazily per storage dtype
# ---------------------------------------------------------------------------

#: Storage dtypes with kernels: NumPy dtype -> (array element type, compute type).
STORAGE_DTYPES = {
    np.dtype(np.float64): (types.float64, types.float64),
    np.dtype(np.float32): (types.float32, types.float32),
    np.dtype(np.float16): (types.float16, types.float32),
}

#: Integer dtypes of device indices: int32 and int64 are used as they are,
#: the others are first cast to int64 on the device.
INDEX_DTYPES = {
    np.dtype(np.int32): types.int32,
    np.dtype(np.int64): types.int64,
}
_OTHER_INTEGERS = {
    np.dtype(t): getattr(types, np.dtype(t).name)
    for t in (np.int8, np.int16, np.uint8, np.uint16, np.uint32, np.uint64)
}


def _arr(dt, ndim=1, layout="C"):
    return types.Array(dt, ndim, layout)


def _signatures(storage):
    s, c = STORAGE_DTYPES[np.dtype(storage)]
    A = _arr(s)
    i64, f64 = types.int64, types.float64
    K = _arr(i64)
    tr = (c,) * 4  # lo, hi, mul, div
    coef = (c,) * 4  # alpha, omb1, omb2, eps
    sparse_tail = (K, K, i64, _arr(s, 2)) + coef + tr
    view = _arr(s, 4, "A")
    # the vhat argument (VHAT_ARG): () for Adam, (vhat,) for AMSGrad
    slots = (types.Tuple(()), types.UniTuple(A, 1))
    return {
        "adam_dense_cuda": [(A, A, A, h, A) + coef + tr for h in slots],
        "adam_sparse_cuda": [(A, A, A, h) + sparse_tail for h in slots],
        "adam_sparse_lazy_cuda": [(A, A, A, h) + sparse_tail for h in slots],
        "sum_squares_cuda": [(A, c, c, _arr(f64))],
        "fill_cuda": [(A, f64)],
        "cast_cuda": [(_arr(src), A) for src, _ in STORAGE_DTYPES.values() if src != s],
        "gather_cuda": [(view, A)],
        "scatter_cuda": [(A, view)],
    }


def _index_signatures(dtype):
    it = INDEX_DTYPES.get(np.dtype(dtype))
    if it is None:
        return {
            "index_cast_cuda": [
                (_arr(_OTHER_INTEGERS[np.dtype(dtype)]), _arr(types.int64))
            ]
        }
    K = _arr(types.int64)
    return {
        "index_bounds_cuda": [(_arr(it), K)],
        "sort_tiles_cuda": [(_arr(it), K, K, types.int64)],
    }


#: Kernel name -> dtype -> list of argument-type tuples. The dtype is the
#: variable's storage dtype, or the indices' dtype for the index kernels.
SIGNATURES = {
    name: {dt: _signatures(dt)[name] for dt in STORAGE_DTYPES}
    for name in _signatures(np.float64)
}
for _dt in list(INDEX_DTYPES) + list(_OTHER_INTEGERS):
    for _name, _sigs in _index_signatures(_dt).items():
        SIGNATURES.setdefault(_name, {})[_dt] = _sigs

#: Kernels whose signatures depend on no dtype.
SHARED_SIGNATURES = {
    "sum_partials_cuda": [(_arr(types.float64), _arr(types.float64))],
    "merge_runs_cuda": [(_arr(types.int64),) * 4 + (types.int64, types.int64)],
}

#: Position of the ``vhat`` argument (``()`` or ``(vhat,)``) of the step kernels.
VHAT_ARG = {"adam_dense_cuda": 3, "adam_sparse_cuda": 3, "adam_sparse_lazy_cuda": 3}

_compiled: set = set()
_lock = threading.Lock()


def ensure_compiled(kernel, dtype=None, amsgrad=None) -> None:
    """Compile ``kernel``'s explicit signatures for ``dtype`` (once).

    ``dtype`` is the storage (or index) dtype keying :data:`SIGNATURES`, or
    ``None`` for the kernels of :data:`SHARED_SIGNATURES`; for the step kernels
    (:data:`VHAT_ARG`) ``amsgrad`` selects the AMSGrad (True) or Adam (False)
    signatures, None both. Loads from the on-disk cache when possible;
    afterwards the kernel compiles nothing new at call time. A no-op under the
    simulator.
    """
    if SIMULATOR:
        return
    name = kernel.py_func.__name__
    key = (name, None if dtype is None else np.dtype(dtype), amsgrad)
    if key in _compiled:
        return
    with _lock:
        if key in _compiled:
            return
        sigs = SHARED_SIGNATURES[name] if dtype is None else SIGNATURES[name][key[1]]
        at = VHAT_ARG.get(name)
        if at is not None and amsgrad is not None:
            sigs = [sig for sig in sigs if (len(sig[at]) == 1) == amsgrad]
        kernel.disable_compile(False)
        try:
            for sig in sigs:
                kernel.compile(sig)
        finally:
            if kernel.signatures:  # numba asserts there is one to disable
                kernel.disable_compile(True)
        _compiled.add(key)
