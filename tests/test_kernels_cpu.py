"""The ``@njit`` CPU kernels of ``numbadam.kernels.cpu``, called directly.

float16 arrays are handed to the kernels as uint16 views of their bits, with
float32 scalars; float32 and float64 arrays with scalars of their own dtype.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from helpers import FLOAT_DTYPES, assert_bitwise, assert_close
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit
from reference import adam_dense_ref, clip_ref, hyper32

import numbadam
from numbadam import IndexedSlices, _config
from numbadam._dirty import DirtyRows
from numbadam.kernels import cpu

KERNELS = tuple(cpu.SIGNATURES)


def compute(dtype):
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def kview(a):
    return a.view(np.uint16) if a.dtype == np.float16 else a


def kernel(name, dtype, ema=False):
    k = getattr(cpu, name)
    cpu.ensure_compiled(k, dtype, ema=ema)
    return k


def kh(h):
    """The kernels' vhat argument: None for Adam."""
    return None if h is None else kview(h)


# ---------------------------------------------------------------------------
# float16 <-> float32 on bits
# ---------------------------------------------------------------------------


@njit
def _widen_all(bits, out):
    for i in range(bits.shape[0]):
        out[i] = cpu.half_bits_to_float(bits[i])


@njit
def _narrow_all(vals, out):
    for i in range(vals.shape[0]):
        out[i] = cpu.float_to_half_bits(vals[i])


def test_half_to_float_exhaustive():
    bits = np.arange(65536, dtype=np.uint32).astype(np.uint16)
    out = np.empty(65536, np.float32)
    _widen_all(bits, out)
    expected = bits.view(np.float16).astype(np.float32)
    # bitwise, NaN payloads and signed zeros included
    assert_bitwise(out, expected, "half -> float")


def _narrow(f32):
    out = np.empty(f32.shape[0], np.uint16)
    _narrow_all(np.ascontiguousarray(f32, dtype=np.float32), out)
    return out


def _check_narrow(f32):
    got = _narrow(f32)
    with np.errstate(over="ignore"):
        want = f32.astype(np.float16).view(np.uint16)
    nan = np.isnan(f32)
    assert np.all(np.isnan(got[nan].view(np.float16))), "NaN must stay NaN"
    assert np.array_equal(got[nan] & 0x8000, want[nan] & 0x8000), "sign of NaN"
    bad = np.flatnonzero(got[~nan] != want[~nan])
    assert bad.size == 0, (
        f"{bad.size} mismatches, e.g. {f32[~nan][bad[:5]]} -> "
        f"{got[~nan][bad[:5]]} vs numpy {want[~nan][bad[:5]]}"
    )


def test_float_to_half_random_bits():
    rng = np.random.default_rng(2024)
    bits = rng.integers(0, 2**32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    _check_narrow(bits.view(np.float32))


def test_float_to_half_every_representable_half():
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    _check_narrow(halves.astype(np.float32))


def test_float_to_half_every_halfway_point():
    """Ties to even at every midpoint, and the neighbours of each midpoint."""
    pos = np.arange(0, 0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    nxt = np.append(pos[1:], 65536.0)  # the next "half" above 65504 is 2**16
    mid = (pos + nxt) / 2  # exact in float32: halves have 11 significant bits
    mid32 = mid.astype(np.float32)
    assert np.array_equal(mid32.astype(np.float64), mid)
    around = np.concatenate(
        [
            mid32,
            np.nextafter(mid32, np.float32(np.inf)),
            np.nextafter(mid32, np.float32(0)),
        ]
    )
    _check_narrow(np.concatenate([around, -around]))
    # the specific edges: 65520 (midpoint to "65536") rounds to inf, 2**-25 to 0
    assert _narrow(np.array([65520.0], np.float32))[0] == 0x7C00
    assert _narrow(np.array([65519.996], np.float32))[0] == 0x7BFF
    assert _narrow(np.array([2.0**-25], np.float32))[0] == 0x0000
    assert (
        _narrow(np.array([np.nextafter(np.float32(2.0**-25), np.float32(1))]))[0] == 1
    )


# ---------------------------------------------------------------------------
# kernels vs the oracle
# ---------------------------------------------------------------------------

HP = {"lr": 0.05, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-3}


def _coef(
    dtype,
    t,
    lr=HP["lr"],
    beta_1=HP["beta_1"],
    beta_2=HP["beta_2"],
    epsilon=HP["epsilon"],
):
    c = compute(dtype).type
    b1, b2 = hyper32(beta_1), hyper32(beta_2)
    alpha = hyper32(lr) * math.sqrt(1 - b2**t) / (1 - b1**t)
    return c(alpha), c(1 - b1), c(1 - b2), c(epsilon)


def _transform(dtype, g, clipvalue, clipnorm):
    c = compute(dtype).type
    lo, hi = (
        (c(-np.inf), c(np.inf)) if clipvalue is None else (c(-clipvalue), c(clipvalue))
    )
    if clipnorm is None:
        return lo, hi, c(1), c(1)
    norm = math.sqrt(float(np.sum(clip_ref(g, clipvalue) ** 2)))
    return lo, hi, c(clipnorm), c(max(norm, clipnorm))


def _state(rng, n, dtype, ams):
    x = np.array(rng.standard_normal(n), dtype=dtype)
    m = np.array(rng.standard_normal(n) * 0.1, dtype=dtype)
    v = np.array(rng.uniform(0, 0.5, n), dtype=dtype)
    h = (
        np.array(
            v.astype(np.float64) + rng.uniform(0, 0.2, n) * (rng.random(n) < 0.5),
            dtype=dtype,
        )
        if ams
        else None
    )
    return x, m, v, h


def _expect_close(dtype, got, want, before, what, g=None):
    """Each array on its own scale: its largest entry before or after the step,
    and the gradient (``m``) or its square (``v``, ``vhat``)."""
    extra = {"var": 0.0, "m": 0.0, "v": 0.0, "vhat": 0.0}
    if g is not None and np.size(g):
        gmax = float(np.max(np.abs(g)))
        extra.update(m=gmax, v=gmax**2, vhat=gmax**2)
    for name in ("var", "m", "v", "vhat"):
        if want[name] is None:
            continue
        scale = max(
            np.max(np.abs(want[name]), initial=0),
            np.max(np.abs(before[name].astype(np.float64)), initial=0),
            extra[name],
        )
        assert_close(got[name], want[name], dtype, scale, f"{what} {name}")


@pytest.mark.parametrize(
    "clip",
    [(None, None), (0.5, None), (None, 2.0), (0.7, 3.0)],
    ids=["noclip", "clipvalue", "clipnorm", "both"],
)
@pytest.mark.parametrize("serial", [False, True], ids=["blocked", "serial"])
@pytest.mark.parametrize("ams", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dense_kernel_vs_oracle(dtype, ams, clip, serial):
    rng = np.random.default_rng(11)
    n = 1000
    x, m, v, h = _state(rng, n, dtype, ams)
    g = np.array(rng.standard_normal(n) * 2, dtype=dtype)
    before = {
        "var": x.copy(),
        "m": m.copy(),
        "v": v.copy(),
        "vhat": None if h is None else h.copy(),
    }
    t = 3
    coef = _coef(dtype, t)
    tr = _transform(dtype, g, *clip)
    serial_max, block = (n, 128) if serial else (0, 128)
    kernel("adam_dense_cpu", dtype)(
        kview(x), kview(m), kview(v), kh(h), kview(g), *coef, *tr, None, None, block,
        serial_max,
    )  # fmt: skip
    gc = clip_ref(g, *clip)
    ex, em, ev, eh = adam_dense_ref(
        before["var"], gc, before["m"], before["v"], t, vhat=before["vhat"], **HP
    )
    _expect_close(
        dtype,
        {"var": x, "m": m, "v": v, "vhat": h},
        {"var": ex, "m": em, "v": ev, "vhat": eh},
        before,
        "dense",
        gc,
    )


def _sparse_inputs(rng, nrows, width, dtype, indices, ams):
    x, m, v, h = _state(rng, nrows * width, dtype, ams)
    idx = np.asarray(indices, dtype=np.int64)
    vals = np.array(rng.standard_normal((len(idx), width)), dtype=compute(dtype))
    return x, m, v, h, idx, vals


def _run_sparse(dtype, ams, x, m, v, h, idx, vals, coef, block_rows):
    kernel("adam_sparse_cpu", dtype)(
        kview(x), kview(m), kview(v), kh(h), idx, vals, *coef, None, None, block_rows
    )


def _run_dense(dtype, ams, x, g, m, v, h, coef, block):
    """The blocked kernel, or its serial path for ``block=None``."""
    c = compute(dtype).type
    tr = (c(-np.inf), c(np.inf), c(1), c(1))
    serial_max = x.shape[0] if block is None else 0
    kernel("adam_dense_cpu", dtype)(
        kview(x), kview(m), kview(v), kh(h), kview(g), *coef, *tr, None, None,
        block or 1, serial_max,
    )  # fmt: skip


@pytest.mark.parametrize("ams", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sparse_kernel_vs_oracle(dtype, ams):
    rng = np.random.default_rng(5)
    nrows, width = 40, 3
    x, m, v, h, idx, vals = _sparse_inputs(
        rng, nrows, width, dtype, [0, 5, 6, 17, 39], ams
    )
    before = {
        "var": x.copy(),
        "m": m.copy(),
        "v": v.copy(),
        "vhat": None if h is None else h.copy(),
    }
    coef = _coef(dtype, 2)
    _run_sparse(dtype, ams, x, m, v, h, idx, vals, coef, 8)
    dense = np.zeros((nrows, width))
    dense[idx] = vals
    ex, em, ev, eh = adam_dense_ref(
        before["var"],
        dense.reshape(-1),
        before["m"],
        before["v"],
        2,
        vhat=before["vhat"],
        **HP,
    )
    _expect_close(
        dtype,
        {"var": x, "m": m, "v": v, "vhat": h},
        {"var": ex, "m": em, "v": ev, "vhat": eh},
        before,
        "sparse",
        dense,
    )


@settings(deadline=None, max_examples=60)
@given(
    dtype=st.sampled_from(FLOAT_DTYPES),
    n=st.integers(0, 300),
    block=st.integers(1, 80),
    ams=st.booleans(),
    serial=st.booleans(),
    t=st.integers(1, 50),
    lr=st.floats(1e-4, 1.0),
    beta_1=st.floats(0.0, 0.99),
    beta_2=st.floats(0.5, 0.9999),
    epsilon=st.floats(1e-8, 1e-1),
    clipvalue=st.none() | st.floats(0.05, 5.0),
    clipnorm=st.none() | st.floats(0.05, 5.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_dense_kernel_property(
    dtype,
    n,
    block,
    ams,
    serial,
    t,
    lr,
    beta_1,
    beta_2,
    epsilon,
    clipvalue,
    clipnorm,
    seed,
):
    rng = np.random.default_rng(seed)
    x, m, v, h = _state(rng, n, dtype, ams)
    g = np.array(rng.standard_normal(n) * 10.0 ** rng.uniform(-3, 1, n), dtype=dtype)
    before = {
        "var": x.copy(),
        "m": m.copy(),
        "v": v.copy(),
        "vhat": None if h is None else h.copy(),
    }
    hp = {"lr": lr, "beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon}
    coef = _coef(dtype, t, **hp)
    tr = _transform(dtype, g, clipvalue, clipnorm)
    name = f"dense {'amsgrad' if ams else 'adam'}, {'serial' if serial else 'blocked'}"
    kernel("adam_dense_cpu", dtype)(
        kview(x), kview(m), kview(v), kh(h), kview(g), *coef, *tr, None, None, block,
        n if serial else 0,
    )  # fmt: skip
    gc = clip_ref(g, clipvalue, clipnorm)
    ex, em, ev, eh = adam_dense_ref(
        before["var"], gc, before["m"], before["v"], t, vhat=before["vhat"], **hp
    )
    _expect_close(
        dtype,
        {"var": x, "m": m, "v": v, "vhat": h},
        {"var": ex, "m": em, "v": ev, "vhat": eh},
        before,
        name,
        gc,
    )


# ---------------------------------------------------------------------------
# block boundaries
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [0, 1, 63, 64, 65, 127, 128, 129, 64 * 3 + 1])
@pytest.mark.parametrize("ams", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dense_block_boundaries(dtype, ams, n):
    """Results do not depend on the block size, and match the oracle at every n."""
    rng = np.random.default_rng(n)
    x, m, v, h = _state(rng, n, dtype, ams)
    g = np.array(rng.standard_normal(n), dtype=dtype)
    before = {
        "var": x.copy(),
        "m": m.copy(),
        "v": v.copy(),
        "vhat": None if h is None else h.copy(),
    }
    coef = _coef(dtype, 1)
    one = [a.copy() for a in (x, m, v) + ((h,) if ams else ())]
    ser = [a.copy() for a in (x, m, v) + ((h,) if ams else ())]
    _run_dense(dtype, ams, x, g, m, v, h, coef, 64)
    _run_dense(
        dtype, ams, one[0], g, one[1], one[2], one[3] if ams else None, coef, 1 << 20
    )
    _run_dense(
        dtype, ams, ser[0], g, ser[1], ser[2], ser[3] if ams else None, coef, None
    )
    for a, b, c in zip((x, m, v) + ((h,) if ams else ()), one, ser):
        assert_bitwise(a, b, f"block 64 vs one block, n={n}")
        assert_bitwise(a, c, f"block 64 vs serial kernel, n={n}")
    ex, em, ev, eh = adam_dense_ref(
        before["var"], g, before["m"], before["v"], 1, vhat=before["vhat"], **HP
    )
    _expect_close(
        dtype,
        {"var": x, "m": m, "v": v, "vhat": h},
        {"var": ex, "m": em, "v": ev, "vhat": eh},
        before,
        f"n={n}",
        g,
    )


@pytest.mark.parametrize(
    "indices",
    [
        [],
        [0],
        [3],
        [4],
        [3, 4],
        [16],
        list(range(17)),
        [7, 8],
        [3, 8, 12, 16],
        [0, 1, 2, 3],
        [4, 5, 6, 7, 8],
    ],
    ids=str,
)
@pytest.mark.parametrize("ams", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sparse_block_row_boundaries(dtype, ams, indices):
    """Runs of untouched rows that start or end at a block edge (block_rows=4).

    The sparse kernel must equal, bitwise, the dense kernel with a zero-filled
    gradient.
    """
    rng = np.random.default_rng(len(indices))
    nrows, width = 17, 3
    x, m, v, h, idx, vals = _sparse_inputs(rng, nrows, width, dtype, indices, ams)
    dense = np.zeros((nrows, width), dtype)
    dense[idx] = vals.astype(dtype)
    vals = dense[idx].astype(compute(dtype))  # exactly representable in storage
    d = [a.copy() for a in (x, m, v) + ((h,) if ams else ())]
    coef = _coef(dtype, 4)
    _run_sparse(dtype, ams, x, m, v, h, idx, vals, coef, 4)
    _run_dense(
        dtype, ams, d[0], dense.reshape(-1), d[1], d[2], d[3] if ams else None, coef, 5
    )
    for a, b, name in zip(
        (x, m, v) + ((h,) if ams else ()), d, ("var", "m", "v", "vhat")
    ):
        assert_bitwise(a, b, name)


def test_optimizer_with_small_blocks():
    """CPU_BLOCK, CPU_SPARSE_BLOCK_ROWS and CPU_SERIAL_MAX are read at call time,
    and change nothing in the results."""
    rng = np.random.default_rng(3)
    w0 = rng.standard_normal((50, 7)).astype(np.float32)
    results = []
    for block, rows, serial_max in [
        (64, 4, 1),
        (1 << 14, 256, 1),
        (7, 1, 1),
        (64, 4, 1 << 40),
    ]:
        _config.CPU_BLOCK, _config.CPU_SPARSE_BLOCK_ROWS = block, rows
        _config.CPU_SERIAL_MAX = serial_max
        w = w0.copy()
        opt = numbadam.Adam(0.1, amsgrad=True)
        r = np.random.default_rng(0)
        for _ in range(3):
            opt.apply_gradients([(r.standard_normal((50, 7)).astype(np.float32), w)])
            opt.apply_gradients(
                [
                    (
                        IndexedSlices(
                            r.standard_normal((9, 7)).astype(np.float32),
                            r.integers(0, 50, 9),
                        ),
                        w,
                    )
                ]
            )
        results.append(w)
    for w in results[1:]:
        assert_bitwise(w, results[0])


# ---------------------------------------------------------------------------
# helpers of the sparse and clipping paths
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("nrows", [8, 3000, 5_000_000], ids=["1pass", "2pass", "3pass"])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize(
    "clip", [(None, None), (0.5, None), (0.7, 1.5)], ids=["noclip", "clipvalue", "both"]
)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sum_duplicate_rows(dtype, clip, index_dtype, nrows):
    rng = np.random.default_rng(9)
    k, width = 60, 4
    # few distinct rows spread over the whole range: duplicates and several
    # radix digits; skewed, so runs of 1 to ~20 rows (the sum takes four rows at
    # a time, then the rest)
    pool = rng.integers(0, nrows, size=10)
    idx = pool[(rng.random(k) ** 2 * 10).astype(int)].astype(index_dtype)
    vals = np.array(rng.standard_normal((k, width)), dtype=dtype)
    tr = _transform(dtype, vals, *clip)
    c = compute(dtype)
    maxkey = int(idx.max())
    outs = []
    for nt in (1, 2, 3):  # workers the sums are dealt to: the same bits
        out_i = np.full(k, -1, np.int64)
        out_v = np.full((k, width), np.nan, c)
        u = kernel("sum_duplicate_rows_cpu", dtype)(
            idx, kview(vals), *tr, maxkey, out_i, out_v, nt
        )
        outs.append((u, out_i, out_v))
    for u2, i2, v2 in outs[1:]:
        assert u2 == outs[0][0]
        assert_bitwise(i2, outs[0][1])
        assert_bitwise(v2, outs[0][2])
    u, out_i, out_v = outs[0]
    uniq = np.unique(idx)
    assert u == len(uniq)
    assert np.array_equal(out_i[:u], uniq)
    # the same arithmetic in the compute dtype, rows added in order of appearance
    lo, hi, mul, div = tr
    for j, i in enumerate(uniq):
        acc = np.zeros(width, c)
        for r in np.flatnonzero(idx == i):
            acc = acc + (np.minimum(np.maximum(vals[r].astype(c), lo), hi) * mul) / div
        assert_bitwise(out_v[j], acc, f"row {i}")
    # and the float64 oracle, to tolerance
    summed = {}
    for i, row in zip(idx.tolist(), clip_ref(vals, *clip)):
        summed[i] = summed.get(i, 0.0) + row
    assert_close(
        out_v[:u], np.array([summed[i] for i in uniq.tolist()]), dtype,
        what="summed rows",
    )  # fmt: skip


@settings(deadline=None, max_examples=60)
@given(
    keys=st.lists(st.integers(0, 2**40), min_size=0, max_size=200),
    dup=st.integers(1, 5),
)
def test_stable_argsort_matches_numpy(keys, dup):
    from numbadam.kernels.cpu import _stable_sort_keys

    arr = np.array(keys * dup, dtype=np.int64)
    maxkey = int(arr.max()) if arr.size else 0
    order = np.argsort(arr, kind="stable")
    for idt in (np.int32, np.int64):  # the keys carried along, any index dtype
        if arr.size and arr.max() > np.iinfo(idt).max:
            continue
        got_order, sk = _stable_sort_keys(arr.astype(idt), maxkey)
        assert np.array_equal(got_order, order)
        assert np.array_equal(sk, np.sort(arr, kind="stable"))


def test_sum_duplicate_rows_empty():
    k = kernel("sum_duplicate_rows_cpu", np.float64)
    u = k(
        np.zeros(0, np.int64),
        np.zeros((0, 3)),
        -np.inf,
        np.inf,
        1.0,
        1.0,
        0,
        np.zeros(0, np.int64),
        np.zeros((0, 3)),
        2,
    )
    assert u == 0


def _lazy_numpy(dtype, x, m, v, h, idx, vals, tr, coef):
    """The lazy step in NumPy, in the kernels' compute dtype and operation
    order, so bit for bit: each listed row's transformed gradients summed from
    zero in order of appearance, then TensorFlow's element arithmetic."""
    c = compute(dtype)
    lo, hi, mul, div = tr
    alpha, omb1, omb2, eps = coef
    x, m, v = x.copy(), m.copy(), v.copy()
    h = None if h is None else h.copy()
    for i in np.unique(idx):
        g = np.zeros(vals.shape[1], c)
        for r in np.flatnonzero(idx == i):
            row = vals[r].astype(c)
            clipped = np.where(row < lo, lo, np.where(row > hi, hi, row))
            g = g + (clipped * mul) / div
        mj = m[i].astype(c) + (g - m[i].astype(c)) * omb1
        vj = v[i].astype(c) + (g * g - v[i].astype(c)) * omb2
        d = vj
        if h is not None:
            d = np.where(vj > h[i].astype(c), vj, h[i].astype(c))
            h[i] = d.astype(dtype)
        m[i], v[i] = mj.astype(dtype), vj.astype(dtype)
        x[i] = (x[i].astype(c) - (mj * alpha) / (np.sqrt(d) + eps)).astype(dtype)
    return x, m, v, h


@settings(deadline=None, max_examples=40)
@given(
    dtype=st.sampled_from(FLOAT_DTYPES),
    ams=st.booleans(),
    clip=st.sampled_from([(None, None), (0.5, None), (None, 2.0), (0.7, 3.0)]),
    rows=st.integers(1, 300),
    width=st.integers(1, 9),
    k=st.integers(0, 80),
    skew=st.sampled_from([1.0, 3.0]),
    seed=st.integers(0, 2**16),
)
def test_lazy_kernel_bitwise_any_worker_count(
    dtype, ams, clip, rows, width, k, skew, seed
):
    # skew 3: small row ids repeat, in runs of up to dozens of rows
    rng = np.random.default_rng(seed)
    idx = (rng.random(k) ** skew * rows).astype(np.int64)
    vals = np.array(rng.standard_normal((k, width)), dtype=dtype)
    vals[rng.random((k, width)) < 0.1] = -0.0  # (0 + -0.0 is +0.0)
    x, m, v, h = (
        a.reshape(rows, width) if a is not None else None
        for a in _state(rng, rows * width, dtype, ams)
    )
    tr = _transform(dtype, vals, *clip)
    c = compute(dtype).type
    coef = (c(0.01), c(0.1), c(0.001), c(1e-7))
    want = _lazy_numpy(dtype, x, m, v, h, idx, vals, tr, coef)
    for nt in (1, 2, 3, 5, 0):  # workers the rows are dealt to (0 taken as 1)
        got = [a.copy() for a in (x, m, v, h) if a is not None]
        flat = [kview(a).reshape(-1) for a in got] + [None] * (h is None)
        maxkey = int(idx.max()) if k else 0
        kernel("adam_sparse_lazy_cpu", dtype)(
            *flat, idx, kview(vals), *coef, *tr, None, None, maxkey, nt, None
        )
        for what, g, w in zip(("var", "m", "v", "vhat"), got, want):
            assert_bitwise(g, w, f"{what}, {nt} workers")


@pytest.mark.parametrize("n", [0, 1, 3, 5, 63, 64, 65, 1000])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sum_squares(dtype, n):
    rng = np.random.default_rng(n)
    g = np.array(rng.standard_normal(n) * 3, dtype=dtype)
    c = compute(dtype).type
    k = kernel("sum_squares_cpu", dtype)
    for lo, hi in [(-np.inf, np.inf), (-0.5, 2.0)]:
        want = float(np.sum(np.clip(g.astype(np.float64), lo, hi) ** 2))
        results = [k(kview(g), c(lo), c(hi), chunks) for chunks in (1, 4, 64)]
        for got in results:
            assert isinstance(got, float)
            assert got == pytest.approx(want, rel=1e-13, abs=0)


# ---------------------------------------------------------------------------
# compiled signatures
# ---------------------------------------------------------------------------


def _declared(name):
    return sum(len(sigs) for sigs in cpu.SIGNATURES[name].values())


def _all_paths(dtype, variant):
    """Steps touching every kernel; variants change the input arrays' types.

    Variant 0 is the plain first step; the others use read-only gradients,
    other index dtypes, float64 and non-contiguous gradients and strided views.
    """
    rng = np.random.default_rng(variant)
    idx_dtype = [np.int64, np.int32, np.int16, np.uint8, np.uint32, np.int64][variant]
    for ams in (False, True):
        w = rng.standard_normal((20, 3)).astype(dtype)
        g = rng.standard_normal((20, 3)).astype(dtype)
        vals = rng.standard_normal((5, 3)).astype(dtype)
        idx = rng.integers(0, 20, 5).astype(idx_dtype)
        if variant:
            g.flags.writeable = False
            vals.flags.writeable = False
            idx.flags.writeable = False
        for clipnorm, mode, serial_max in [
            (None, "dense", 1 << 40),
            (1.0, "dense", 1),
            (None, "lazy", 1 << 40),
            (1.0, "lazy", 1),
        ]:
            _config.CPU_SERIAL_MAX = serial_max  # serial and blocked dense kernels
            # the kernels without and with weight decay, without and with EMA
            for wd, ema in ((None, False), (0.01, False), (None, True), (0.01, True)):
                opt = numbadam.Adam(0.1, amsgrad=ams, clipnorm=clipnorm,
                                    sparse_mode=mode, weight_decay=wd,
                                    use_ema=ema)  # fmt: skip
                opt.apply_gradients([(g, w)])
                opt.apply_gradients([(IndexedSlices(vals, idx, (20, 3)), w)])
                # gradient accumulation: accumulate_cpu, adam_dense_accum_cpu
                # (and sum_squares_accum_cpu with clipnorm); with EMA the
                # accumulating calls run ema_dense_cpu / ema_rows_cpu (lazy)
                acc = numbadam.Adam(0.1, amsgrad=ams, clipnorm=clipnorm,
                                    weight_decay=wd, use_ema=ema,
                                    sparse_mode=mode,
                                    gradient_accumulation_steps=2)  # fmt: skip
                acc.apply_gradients([(g, w)])
                acc.apply_gradients([(g, w)])
                acc.apply_gradients([(IndexedSlices(vals, idx, (20, 3)), w)])
                acc.apply_gradients([(IndexedSlices(vals, idx, (20, 3)), w)])
                if mode == "lazy":  # with the dirty-row mask (incremental saves)
                    opt._dirty = DirtyRows("", None)
                    opt.apply_gradients([(IndexedSlices(vals, idx, (20, 3)), w)])
            if variant:
                wv = np.zeros((20, 6), dtype)[:, ::2]
                opt.apply_gradients(
                    [(np.asfortranarray(rng.standard_normal((20, 3))), wv)]
                )
                opt.apply_gradients([(np.ones((20, 3))[::-1], wv)])
                opt.apply_gradients(
                    [(IndexedSlices(rng.standard_normal((4, 3))[:, ::-1], idx[:4]), wv)]
                )
    _config.reset()


def test_signatures_do_not_grow():
    for dtype in FLOAT_DTYPES:
        # the first steps of this dtype, with int64 (variant 0) and int32
        # (variant 1) indices: every declared signature, whatever ran before
        _all_paths(dtype, 0)
        _all_paths(dtype, 1)
    counts = {name: len(getattr(cpu, name).signatures) for name in KERNELS}
    for name in KERNELS:
        assert counts[name] == _declared(name), (
            f"{name}: {counts[name]} compiled signatures, {_declared(name)} declared"
        )
    for variant in range(2, 6):
        for dtype in FLOAT_DTYPES:
            _all_paths(dtype, variant)
    after = {name: len(getattr(cpu, name).signatures) for name in KERNELS}
    assert after == counts


def _run_with_fresh_cache(script, cache_dir):
    """Run ``script`` in a new Python with ``NUMBA_CACHE_DIR=cache_dir`` (so no
    earlier run's on-disk cache hides anything); it must print ``ok``."""
    env = dict(os.environ, NUMBA_CACHE_DIR=str(cache_dir))
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", tail


def test_cold_cache_compile_order(tmp_path):
    """With an empty Numba cache, the order in which dtypes and paths are first
    used must not matter: a small float16 variable (serial kernel) first, then
    larger float32/float64 ones (blocked kernels, which call the serial one).

    Runs in a subprocess with a fresh ``NUMBA_CACHE_DIR`` so the on-disk cache
    of earlier runs cannot hide a compilation-order problem.
    """
    script = textwrap.dedent(
        """
        import numpy as np
        import numbadam
        from numbadam import _config

        for ams in (False, True):
            opt = numbadam.Adam(0.1, amsgrad=ams)
            _config.CPU_SERIAL_MAX = 1 << 40
            w16 = np.zeros(10, np.float16)
            opt.apply_gradients([(np.ones(10, np.float16), w16)])
            _config.CPU_SERIAL_MAX = 1
            for dt in (np.float32, np.float64):
                w = np.zeros(100, dt)
                opt.apply_gradients([(np.ones(100, dt), w)])
                assert np.all(w < 0), dt
        print("ok")
        """
    )
    _run_with_fresh_cache(script, tmp_path)


def test_every_kernel_is_cached_on_disk(tmp_path):
    """Each kernel's compiled code lands in Numba's on-disk cache, so a second
    process loads it instead of compiling (a kernel that reads a dynamic global,
    e.g. calls ``numba.get_num_threads()``, silently is not cached). One dtype,
    in a subprocess with a fresh ``NUMBA_CACHE_DIR``."""
    script = textwrap.dedent(
        """
        import warnings
        import numpy as np
        from numba.core.errors import NumbaWarning
        from numbadam.kernels import cpu

        warnings.simplefilter("error", NumbaWarning)
        for name in cpu.SIGNATURES:
            dtype = np.dtype(np.int64 if name == "index_range_cpu" else np.float32)
            cpu.ensure_compiled(getattr(cpu, name), dtype)
        print("ok")
        """
    )
    _run_with_fresh_cache(script, tmp_path)
    indexed = {p.name.split("-")[0] for p in tmp_path.rglob("*.nbi")}
    for name in KERNELS:
        # (an index is named after the kernel's file, a private sibling of cpu.py)
        path = getattr(cpu, name).py_func.__code__.co_filename
        stem = os.path.splitext(os.path.basename(path))[0]
        assert f"{stem}.{name}" in indexed, f"{name} has no on-disk cache index"
