"""The sparse CPU kernels: TensorFlow's rule, the lazy step, and the
deterministic sum of duplicate rows (stable radix sort) they share.

Private: :mod:`numbadam.kernels.cpu` re-exports every name; import them from
there.
"""

from __future__ import annotations

import numpy as np
from numba import njit, prange
from numba.extending import overload
from numba.np import numpy_support

from ._cpu_common import (
    _PARALLEL,
    _SERIAL,
    _adam_elem,
    _is_identity,
    _prefetch_span,
    _transform,
    bits,
    ema_span,
    load,
    span,
    zero_of,
)

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
def _decay_span(xs, ms, vs, hs, alpha, omb1, omb2, eps, wd, es):
    # Rows without a gradient: exactly the dense arithmetic with g = 0.
    zero = zero_of(alpha)
    for j in range(xs.shape[0]):
        _adam_elem(xs, ms, vs, hs, j, zero, alpha, omb1, omb2, eps, wd, es)


@njit(**_SERIAL)
def _decay_run(xs, ms, vs, hs, alpha, omb1, omb2, eps, wd, es, skip):
    n = xs.shape[0]
    if not skip:
        _decay_span(xs, ms, vs, hs, alpha, omb1, omb2, eps, wd, es)
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
            xs[c0:c1], ms[c0:c1], vs[c0:c1], span(hs, c0, c1), alpha, omb1, omb2, eps,
            wd, ema_span(es, c0, c1),
        )  # fmt: skip


@njit(**_SERIAL)
def _grad_row(xs, ms, vs, hs, gs, alpha, omb1, omb2, eps, wd, es):
    for j in range(xs.shape[0]):
        _adam_elem(xs, ms, vs, hs, j, gs[j], alpha, omb1, omb2, eps, wd, es)


@njit(**_PARALLEL)
def adam_sparse_cpu(
    var, m, v, vhat, indices, values, alpha, omb1, omb2, eps, wd, ema, block_rows
):
    """Sparse Adam or AMSGrad step (TF's rule) over a whole table, in place.

    ``var``, ``m``, ``v`` (and ``vhat``, or None) are flat views of an
    ``(R, W)`` table with ``W = values.shape[1]``; ``indices`` (int64) are
    unique and ascending and ``values[i]`` (compute dtype, already clipped and
    summed) is the gradient of row ``indices[i]``. Every row gets the dense
    arithmetic, with a zero gradient where it has none: runs of such rows are
    processed as one flat stretch, whose parts with ``m = v (= vhat) = +0.0``
    are only read (they would not change). With weight decay (``wd =
    (weight_decay, lr_t)``, else None) every row is decayed first, as in the
    dense step, and none is skipped. With an EMA (``ema``, see
    :func:`adam_dense_cpu`) every row's average moves, and none is skipped.
    """
    width = values.shape[1]
    nrows = var.shape[0] // width if width > 0 else 0
    k = indices.shape[0]
    if wd is None and ema is None:
        skip = _zero_rows_stay(alpha, omb1, omb2, eps)
    else:  # (a decayed row, an average, change even with m = v = +0.0)
        skip = False
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
                           omb2, eps, wd, ema_span(ema, a, e), skip)  # fmt: skip
                r = stop
            if r < r1 and p < k and indices[p] == r:
                a = r * width
                e = a + width
                _grad_row(var[a:e], m[a:e], v[a:e], span(vhat, a, e), values[p],
                          alpha, omb1, omb2, eps, wd, ema_span(ema, a, e))  # fmt: skip
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
                lo, hi, mul, div, wd, es):  # fmt: skip
    # One unique row of a lazy step: its summed gradient, then the dense step.
    if s1 - s0 == 1:  # the common case: one row, no scratch
        row = values[order[s0]]
        zero = zero_of(alpha)  # 0 + g, as the sum of one row starting from zero
        if _is_identity(lo, hi, mul, div):
            for j in range(xs.shape[0]):
                gj = zero + load(row, j)
                _adam_elem(xs, ms, vs, hs, j, gj, alpha, omb1, omb2, eps, wd, es)
        else:
            for j in range(xs.shape[0]):
                gj = zero + _transform(load(row, j), lo, hi, mul, div)
                _adam_elem(xs, ms, vs, hs, j, gj, alpha, omb1, omb2, eps, wd, es)
    else:  # duplicates: summed into the group's row of the step's scratch
        _group_grad(acc, values, order, s0, s1, lo, hi, mul, div)
        _grad_row(xs, ms, vs, hs, acc, alpha, omb1, omb2, eps, wd, es)


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
    wd, ema, maxkey, nt, dirty,
):  # fmt: skip
    """Lazy sparse Adam or AMSGrad step: only rows ``indices`` change.

    ``var``, ``m``, ``v`` (and ``vhat``, or None) are flat views of an
    ``(R, W)`` table; ``indices`` (raw, with duplicates, non-negative and at
    most ``maxkey``) and ``values`` (``(k, W)``, storage dtype) are the
    IndexedSlices. Duplicates are summed (clipped by ``(clip(g, lo, hi) * mul)
    / div`` first) in order of appearance and each row then takes the dense
    arithmetic, in one parallel pass over the unique rows; other rows are not
    read. With weight decay (``wd = (weight_decay, lr_t)``, else None) only
    those rows are decayed; with an EMA (``ema``, see :func:`adam_dense_cpu`)
    only those rows' averages move (and are copied back on ``overwrite``).
    Cost O(k W), independent of R. The unique rows are dealt round-robin
    to ``nt`` workers (pass Numba's thread count); results do not depend on
    ``nt``. ``dirty`` (a ``uint8`` array of ``R``, or None) gets
    ``dirty[row] = 1`` for each row stepped (incremental checkpoints).
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
            row = indices[order[starts[q]]]
            if dirty is not None:
                dirty[row] = 1
            a = row * width
            e = a + width
            o = max(at[q], 0)  # (-1: a single row, which needs no scratch)
            acc = scratch[o : o + width]
            _lazy_group(var[a:e], m[a:e], v[a:e], span(vhat, a, e), values, order,
                        starts[q], starts[q + 1], acc, alpha, omb1, omb2, eps, lo,
                        hi, mul, div, wd, ema_span(ema, a, e))  # fmt: skip


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
