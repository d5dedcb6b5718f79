"""The row-wise Adam kernels of ``numbadam.kernels.rowwise_cpu``, called directly.

Each kernel is checked against the float64 oracle (``reference.adam_rowwise_step``,
to the dtype's tolerance) and against a NumPy twin doing the kernels' operations
in the compute dtype (bitwise: IEEE +, -, *, / and sqrt are correctly rounded,
and the row sum is sequential). float16 arrays are handed to the kernels as
uint16 views of their bits, with float32 scalars.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numba
import numpy as np
import pytest
from helpers import (
    FLOAT_DTYPES,
    RW_HP,
    assert_bitwise,
    assert_close,
    rw_coef,
    rw_compute,
    rw_copy,
    rw_dense,
    rw_lazy,
    rw_sparse,
    rw_state,
    rw_transform,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from numba import njit
from reference import adam_rowwise_step, clip_ref

from numbadam.kernels import cpu
from numbadam.kernels import rowwise_cpu as rk

KERNELS = tuple(rk.SIGNATURES)
HP = RW_HP
CLIPS = [(None, None), (0.5, None), (None, 2.0), (0.7, 3.0)]
CLIP_IDS = ["noclip", "clipvalue", "clipnorm", "both"]
NAMES = ("var", "m", "v", "vhat")


RUN = {"lazy": rw_lazy, "sparse": rw_sparse}


# ---------------------------------------------------------------------------
# NumPy twin in the compute dtype (bitwise) and the oracle (to tolerance)
# ---------------------------------------------------------------------------


def twin_transform(g, lo, hi, mul, div):
    c = np.where(g < lo, lo, np.where(g > hi, hi, g))
    return (c * mul) / div


def twin_sparse_grad(dtype, shape, idx, vals, tr):
    """Zero-filled summed gradient (compute dtype, appearance order) and the rows
    that have one."""
    c = rw_compute(dtype)
    g = np.zeros(shape, c)
    has = np.zeros(shape[0], bool)
    vt = twin_transform(vals.astype(c), *tr)
    for p, r in enumerate(idx.tolist()):
        g[r] = g[r] + vt[p]
        has[r] = True
    return g, has


def twin_step(dtype, state, g, steps, cf):
    """The kernels' arithmetic on the rows ``steps`` with the compute-dtype
    gradient ``g``; the other rows unchanged."""
    c = rw_compute(dtype)
    alpha, omb1, omb2, eps = cf
    out = rw_copy(state)
    x, m, v, h = (None if a is None else a.astype(c) for a in state)
    width = x.shape[1]
    for r in np.flatnonzero(steps):
        acc = c.type(0)
        for j in range(width):
            acc = acc + g[r, j] * g[r, j]
        s = acc / c.type(width)
        mr = m[r] + (g[r] - m[r]) * omb1
        vr = v[r] + (s - v[r]) * omb2
        d = vr
        if h is not None:
            d = vr if vr > h[r] else h[r]
            out[3][r] = d
        out[0][r] = x[r] - (mr * alpha) / (np.sqrt(d) + eps)
        out[1][r] = mr
        out[2][r] = vr
    return out


def assert_state_bitwise(got, want, what=""):
    for name, a, b in zip(NAMES, got, want):
        if b is not None:
            assert_bitwise(a, b, f"{what} {name}")


def assert_near_oracle(dtype, got, want, before, g64, what=""):
    """Each array on its own scale: its largest entry before or after the step,
    and the gradient (``m``) or its square (``v``, ``vhat``)."""
    gmax = float(np.max(np.abs(g64), initial=0))
    extra = {"var": 0.0, "m": gmax, "v": gmax**2, "vhat": gmax**2}
    for name, a, w, b in zip(NAMES, got, want, before):
        if w is None:
            continue
        scale = max(
            np.max(np.abs(w), initial=0),
            np.max(np.abs(b.astype(np.float64)), initial=0),
            extra[name],
        )
        assert_close(a, w, dtype, scale, f"{what} {name}")


def oracle(state, grad, t, mode, **hp):
    hp = {**HP, **hp}
    return adam_rowwise_step(
        state[0], grad, state[1], state[2], t, vhat=state[3], mode=mode, **hp
    )


# ---------------------------------------------------------------------------
# the split step is the element kernels' step
# ---------------------------------------------------------------------------


@njit
def _split_and_step(x, m, d, alpha, eps, split, whole):
    for i in range(x.shape[0]):
        split[i] = rk._step_by(x[i], m[i], alpha, rk._denominator(d[i], eps))
        whole[i] = cpu._step(x[i], m[i], d[i], alpha, eps)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_denominator_is_the_element_step(dtype):
    """``_step`` with its denominator taken out gives ``_step``'s bits, special
    values included."""
    info = np.finfo(dtype)
    sp = np.array(
        [0.0, -0.0, 1.0, -2.5, 1e-3, info.tiny, info.max, np.inf, -np.inf, np.nan],
        dtype,
    )
    rng = np.random.default_rng(0)
    x, m, d = (
        np.concatenate([a.reshape(-1), rng.standard_normal(200).astype(dtype)])
        for a in np.meshgrid(sp, sp, np.abs(sp), indexing="ij")
    )
    d = np.abs(d)
    for alpha, eps in [(0.01, 1e-7), (3.0, 0.0), (1e-30, 1e-3)]:
        split, whole = np.empty_like(x), np.empty_like(x)
        with np.errstate(all="ignore"):
            _split_and_step(x, m, d, dtype(alpha), dtype(eps), split, whole)
        assert_bitwise(split, whole, f"alpha={alpha}, eps={eps}")


# ---------------------------------------------------------------------------
# kernels vs the oracle and the twin
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("clip", CLIPS, ids=CLIP_IDS)
@pytest.mark.parametrize("serial", [False, True], ids=["parallel", "serial"])
@pytest.mark.parametrize("ams", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dense_kernel(dtype, ams, serial, clip):
    rng = np.random.default_rng([1, FLOAT_DTYPES.index(dtype), ams, serial])
    rows, width = 37, 7
    state = rw_state(rng, rows, width, dtype, ams)
    g = np.array(rng.standard_normal((rows, width)) * 2, dtype)
    cf, tr = rw_coef(dtype), rw_transform(dtype, g, *clip)
    got = rw_dense(dtype, state, g, cf, tr, rows * width if serial else 0)
    gt = twin_transform(g.astype(rw_compute(dtype)), *tr)
    assert_state_bitwise(got, twin_step(dtype, state, gt, np.ones(rows, bool), cf))
    g64 = clip_ref(g, *clip)
    want = oracle(state, g64, 3, "dense")
    assert_near_oracle(dtype, got, want, state, g64, "dense")


@pytest.mark.parametrize("clip", CLIPS, ids=CLIP_IDS)
@pytest.mark.parametrize("ams", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dense_kernel_on_the_accumulated_mean(dtype, ams, clip):
    # acc given: the gradient is (g + acc) / steps in the compute dtype (Keras
    # 3's mean), then clipped; every other bit is the plain dense step's
    rng = np.random.default_rng([12, FLOAT_DTYPES.index(dtype), ams])
    rows, width = 37, 7
    state = rw_state(rng, rows, width, dtype, ams)
    g = np.array(rng.standard_normal((rows, width)) * 2, dtype)
    acc = np.array(rng.standard_normal((rows, width)) * 3, dtype)
    acc_before = acc.copy()
    c = rw_compute(dtype).type
    mean = (g.astype(c) + acc.astype(c)) / c(3)
    cf, tr = rw_coef(dtype), rw_transform(dtype, mean, *clip)
    for serial in (0, rows * width):
        got = rw_dense(dtype, state, g, cf, tr, serial, acc=acc, steps=3)
        gt = twin_transform(mean, *tr)
        assert_state_bitwise(got, twin_step(dtype, state, gt, np.ones(rows, bool), cf))
    assert acc.tobytes() == acc_before.tobytes(), "the accumulator was written"
    g64 = clip_ref((g.astype(np.float64) + acc.astype(np.float64)) / 3, *clip)
    assert_near_oracle(dtype, got, oracle(state, g64, 3, "dense"), state, g64, "mean")


def _slices(rng, rows, width, k, dtype, hot=None):
    """Indices with duplicates (from the first ``hot`` rows) and values, some
    of them -0.0."""
    idx = rng.integers(0, hot or rows, k).astype(np.int64)
    vals = np.array(rng.standard_normal((k, width)) * 2, dtype)
    vals[rng.random((k, width)) < 0.1] = -0.0
    return idx, vals


@pytest.mark.parametrize("clip", CLIPS, ids=CLIP_IDS)
@pytest.mark.parametrize("mode", ["lazy", "sparse"])
@pytest.mark.parametrize("ams", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sparse_kernels(dtype, ams, mode, clip):
    rng = np.random.default_rng([2, FLOAT_DTYPES.index(dtype), ams, len(mode)])
    rows, width, k = 40, 5, 60
    state = rw_state(rng, rows, width, dtype, ams, zero_rows=6)
    idx, vals = _slices(rng, rows, width, k, dtype, hot=25)  # rows 25.. untouched
    cf, tr = rw_coef(dtype, 2), rw_transform(dtype, vals, *clip)
    got = RUN[mode](dtype, state, idx, vals, cf, tr)
    g, has = twin_sparse_grad(dtype, (rows, width), idx, vals, tr)
    steps = has if mode == "lazy" else np.ones(rows, bool)
    assert_state_bitwise(got, twin_step(dtype, state, g, steps, cf), mode)
    v64 = clip_ref(vals, *clip)
    want = oracle(state, (idx, v64), 2, mode)
    assert_near_oracle(dtype, got, want, state, v64, mode)
    if mode == "lazy":  # rows without a gradient: every bit kept
        for name, a, b in zip(NAMES, got, state):
            if b is not None:
                assert_bitwise(a[~has], b[~has], f"untouched {name}")


@pytest.mark.parametrize("clip", CLIPS[:2], ids=CLIP_IDS[:2])
@pytest.mark.parametrize("ams", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_lazy_duplicates_equal_presummed(dtype, ams, clip):
    # multiples of 1/8 and a clip at 1.5: every sum is exact in float16, so the
    # pre-summed rows are the storage dtype's
    rng = np.random.default_rng([3, FLOAT_DTYPES.index(dtype), ams])
    rows, width, k = 30, 6, 80
    state = rw_state(rng, rows, width, dtype, ams)
    idx = rng.integers(0, 12, k).astype(np.int64)
    vals = np.array(rng.integers(-16, 17, (k, width)) / 8, dtype)
    cv = None if clip[0] is None else 1.5
    cf, tr = rw_coef(dtype), rw_transform(dtype, vals, cv, None)
    uniq = np.unique(idx)
    pre = np.zeros((uniq.size, width))
    for j, r in enumerate(uniq):
        pre[j] = np.sum(clip_ref(vals[idx == r], cv), axis=0)
    pre = pre.astype(dtype)
    ident = rw_transform(dtype, pre, None, None)
    got = rw_lazy(dtype, state, idx, vals, cf, tr)
    assert_state_bitwise(got, rw_lazy(dtype, state, uniq, pre, cf, ident))


@pytest.mark.parametrize("clip", CLIPS, ids=CLIP_IDS)
@pytest.mark.parametrize("ams", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sparse_unique_equals_dense_zero_filled(dtype, ams, clip):
    """TF's rule with unique indices is the dense step with a zero-filled
    gradient, bit for bit, for any block of rows (runs of untouched rows,
    some with m = v (= vhat) = +0.0, start and end at block edges)."""
    rng = np.random.default_rng([4, FLOAT_DTYPES.index(dtype), ams])
    rows, width = 17, 3
    state = rw_state(rng, rows, width, dtype, ams, zero_rows=5)
    idx = np.sort(rng.permutation(rows - 5)[:7]).astype(np.int64)
    vals = np.array(rng.standard_normal((7, width)), dtype)
    vals[0, 0] = -0.0
    # untouched rows that must still step: v (and vhat) +0.0 but m not; a -0.0
    # in m (which the arithmetic makes +0.0)
    state[1][rows - 4, 1] = 0.25
    state[1][rows - 2, 2] = -0.0
    dense = np.zeros((rows, width), dtype)
    dense[idx] = vals
    cf, tr = rw_coef(dtype), rw_transform(dtype, vals, *clip)
    want = rw_dense(dtype, state, dense, cf, tr)
    for block_rows in (1, 4, 5, 1000):
        got = rw_sparse(
            dtype, state, idx[::-1].copy(), vals[::-1].copy(), cf, tr, block_rows
        )
        assert_state_bitwise(got, want, f"block_rows={block_rows}")


@pytest.mark.parametrize("mode", ["dense", "sparse", "lazy"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_vhat_never_decreases(dtype, mode):
    rng = np.random.default_rng([5, FLOAT_DTYPES.index(dtype), len(mode)])
    rows, width = 20, 4
    state = rw_state(rng, rows, width, dtype, True)
    for t in range(1, 8):
        # large gradients, then small ones: v rises, then decays below vhat
        scale = 3.0 if t < 3 else 0.01
        cf = rw_coef(dtype, t, beta_2=0.5)
        if mode == "dense":
            g = np.array(rng.standard_normal((rows, width)) * scale, dtype)
            new = rw_dense(dtype, state, g, cf, rw_transform(dtype, g, None, None))
        else:
            idx, vals = _slices(rng, rows, width, 12, dtype)
            vals *= dtype(scale)
            tr = rw_transform(dtype, vals, None, None)
            new = RUN[mode](dtype, state, idx, vals, cf, tr)
        assert np.all(new[3] >= state[3]), f"step {t}: vhat decreased"
        assert np.all(new[3] >= new[2]), f"step {t}: vhat < v"
        state = new
    assert np.any(state[3] > state[2])  # (the small gradients did let v decay)


@pytest.mark.parametrize("mode", ["dense", "sparse", "lazy"])
def test_bitwise_any_thread_count(mode):
    rng = np.random.default_rng(6)
    rows, width, dtype = 3000, 8, np.float32
    state = rw_state(rng, rows, width, dtype, True, zero_rows=500)
    cf = rw_coef(dtype)
    if mode == "dense":
        g = np.array(rng.standard_normal((rows, width)), dtype)
        tr = rw_transform(dtype, g, 0.5, 2.0)
    else:
        idx = (rng.random(4000) ** 3 * rows).astype(np.int64)  # skewed duplicates
        vals = np.array(rng.standard_normal((4000, width)), dtype)
        tr = rw_transform(dtype, vals, 0.5, 2.0)
    before = numba.get_num_threads()
    results = []
    try:
        for threads in (1, min(2, numba.config.NUMBA_NUM_THREADS)):
            numba.set_num_threads(threads)
            if mode == "dense":
                results.append(rw_dense(dtype, state, g, cf, tr))
            elif mode == "sparse":
                results.append(rw_sparse(dtype, state, idx, vals, cf, tr, 64))
            else:
                for nt in (1, 2, 3, 0):  # workers the rows are dealt to
                    results.append(rw_lazy(dtype, state, idx, vals, cf, tr, nt))
    finally:
        numba.set_num_threads(before)
    for r in results[1:]:
        assert_state_bitwise(r, results[0], mode)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
@pytest.mark.parametrize("ams", [False, True], ids=["adam", "amsgrad"])
def test_dirty_marks_exactly_the_touched_rows(ams, index_dtype):
    rng = np.random.default_rng(7)
    rows, width, dtype = 50, 3, np.float64
    state = rw_state(rng, rows, width, dtype, ams)
    idx, vals = _slices(rng, rows, width, 30, dtype)
    idx = idx.astype(index_dtype)
    cf, tr = rw_coef(dtype), rw_transform(dtype, vals, None, None)
    dirty = np.zeros(rows, np.uint8)
    got = rw_lazy(dtype, state, idx, vals, cf, tr, dirty=dirty)
    touched = np.zeros(rows, np.uint8)
    touched[idx] = 1
    assert_bitwise(dirty, touched)
    # the same step without a dirty array; marks are only ever set
    assert_state_bitwise(got, rw_lazy(dtype, state, idx, vals, cf, tr))
    dirty[:] = 0
    dirty[::7] = 1
    rw_lazy(dtype, state, idx[:5], vals[:5], cf, tr, dirty=dirty)
    want = np.zeros(rows, np.uint8)
    want[::7] = 1
    want[idx[:5]] = 1
    assert_bitwise(dirty, want)
    rw_lazy(dtype, state, idx[:0], vals[:0], cf, tr, dirty=dirty)  # no rows
    assert_bitwise(dirty, want)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_empty_inputs_change_nothing(dtype):
    rng = np.random.default_rng(8)
    cf = rw_coef(dtype)
    tr = rw_transform(dtype, np.zeros(1), None, None)
    state = rw_state(rng, 6, 4, dtype, True)
    none = np.zeros(0, np.int64), np.zeros((0, 4), dtype)
    assert_state_bitwise(rw_lazy(dtype, state, *none, cf, tr), state, "k=0")
    # a table of width 0: nothing to average, nothing written
    flat = rw_state(rng, 6, 0, dtype, True)
    empty = np.zeros((6, 0), dtype)
    assert_state_bitwise(rw_dense(dtype, flat, empty, cf, tr), flat, "dense D=0")
    idx = np.array([1, 1, 4])
    assert_state_bitwise(
        rw_lazy(dtype, flat, idx, np.zeros((3, 0), dtype), cf, tr), flat, "lazy D=0"
    )
    assert_state_bitwise(
        rw_sparse(dtype, flat, idx, np.zeros((3, 0), dtype), cf, tr), flat, "TF D=0"
    )
    nothing = rw_state(rng, 0, 4, dtype, True)
    assert_state_bitwise(
        rw_dense(dtype, nothing, np.zeros((0, 4), dtype), cf, tr), nothing, "R=0"
    )


@settings(deadline=None, max_examples=30)
@given(
    dtype=st.sampled_from(FLOAT_DTYPES),
    mode=st.sampled_from(["dense", "sparse", "lazy"]),
    ams=st.booleans(),
    rows=st.integers(1, 30),
    width=st.integers(1, 12),
    k=st.integers(0, 40),
    t=st.integers(1, 50),
    lr=st.floats(1e-4, 1.0),
    beta_1=st.floats(0.0, 0.99),
    beta_2=st.floats(0.5, 0.9999),
    epsilon=st.floats(1e-8, 1e-1),
    clipvalue=st.none() | st.floats(0.05, 5.0),
    clipnorm=st.none() | st.floats(0.05, 5.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_kernels_property(
    dtype,
    mode,
    ams,
    rows,
    width,
    k,
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
    state = rw_state(rng, rows, width, dtype, ams, zero_rows=rows // 4)
    hp = {"lr": lr, "beta_1": beta_1, "beta_2": beta_2, "epsilon": epsilon}
    cf = rw_coef(dtype, t, **hp)
    clip = (clipvalue, clipnorm)
    c = rw_compute(dtype)
    if mode == "dense":
        g = np.array(
            rng.standard_normal((rows, width)) * 10.0 ** rng.uniform(-3, 1, (rows, 1)),
            dtype,
        )
        tr = rw_transform(dtype, g, *clip)
        got = rw_dense(dtype, state, g, cf, tr)
        gt = twin_transform(g.astype(c), *tr)
        twin = twin_step(dtype, state, gt, np.ones(rows, bool), cf)
        g64 = clip_ref(g, *clip)
        want = adam_rowwise_step(
            state[0], g64, state[1], state[2], t, vhat=state[3], mode="dense", **hp
        )
    else:
        idx, vals = _slices(rng, rows, width, k, dtype)
        tr = rw_transform(dtype, vals, *clip)
        got = RUN[mode](dtype, state, idx, vals, cf, tr)
        g, has = twin_sparse_grad(dtype, (rows, width), idx, vals, tr)
        steps = has if mode == "lazy" else np.ones(rows, bool)
        twin = twin_step(dtype, state, g, steps, cf)
        g64 = clip_ref(vals, *clip)
        want = adam_rowwise_step(
            state[0], (idx, g64), state[1], state[2], t, vhat=state[3], mode=mode, **hp
        )
    assert_state_bitwise(got, twin, f"{mode} vs twin")
    assert_near_oracle(dtype, got, want, state, g64, f"{mode} vs oracle")


# ---------------------------------------------------------------------------
# compiled signatures
# ---------------------------------------------------------------------------


def test_signatures_do_not_grow():
    rng = np.random.default_rng(9)
    for dtype in FLOAT_DTYPES:
        for ams in (False, True):
            state = rw_state(rng, 10, 3, dtype, ams)
            cf = rw_coef(dtype)
            g = np.array(rng.standard_normal((10, 3)), dtype)
            tr = rw_transform(dtype, g, None, None)
            rw_dense(dtype, state, g, cf, tr)
            idx, vals = _slices(rng, 10, 3, 4, dtype)
            rw_sparse(dtype, state, idx, vals, cf, tr)
            for it in (np.int32, np.int64):
                for dirty in (None, np.zeros(10, np.uint8)):
                    rw_lazy(dtype, state, idx.astype(it), vals, cf, tr, dirty=dirty)
    # every declared signature without an EMA is compiled (and nothing else
    # but the declared ones with an EMA, which tests of the EMA compile)
    declared = {n: _declared(n) for n in KERNELS}
    plain = {n: {s for s in declared[n] if str(s[rk.EMA_ARG[n]]) == "none"}
             for n in KERNELS}  # fmt: skip
    counts = {n: set(getattr(rk, n).signatures) for n in KERNELS}
    assert all(plain[n] <= counts[n] <= declared[n] for n in KERNELS), counts
    # read-only gradients use the declared signatures; a wrong type is refused
    state = rw_state(rng, 10, 3, np.float32, False)
    vals = np.ones((2, 3), np.float32)
    vals.flags.writeable = False
    cf, tr = rw_coef(np.float32), rw_transform(np.float32, vals, None, None)
    rw_lazy(np.float32, state, np.array([1, 3]), vals, cf, tr)
    with pytest.raises(TypeError):
        rw_lazy(np.float32, state, np.array([1, 3]), np.ones((2, 3)), cf, tr)
    assert {n: set(getattr(rk, n).signatures) for n in KERNELS} == counts


def _declared(name):
    return {tuple(sig) for sigs in rk.SIGNATURES[name].values() for sig in sigs}


def test_ensure_compiled_selects_variants(tmp_path):
    """``amsgrad``, ``dirty``, ``decay`` and ``ema`` compile only the matching
    signatures, and every kernel lands in the on-disk cache (fresh
    ``NUMBA_CACHE_DIR``, float32)."""
    script = textwrap.dedent(
        """
        import warnings
        import numpy as np
        from numba.core.errors import NumbaWarning
        from numbadam.kernels import rowwise_cpu as rk

        warnings.simplefilter("error", NumbaWarning)
        lazy = rk.adam_rowwise_lazy_cpu
        rk.ensure_compiled(
            lazy, np.float32, amsgrad=False, dirty=True, decay=False, ema=False
        )
        assert len(lazy.signatures) == 2, lazy.signatures  # int32 and int64
        for sig in lazy.signatures:
            assert str(sig[3]) == "none" and str(sig[18]) != "none", sig
            assert str(sig[14]) == "none" and str(sig[15]) == "none", sig
        for name in rk.SIGNATURES:
            rk.ensure_compiled(getattr(rk, name), np.float32, ema=False)
        assert len(lazy.signatures) == 16
        rk.ensure_compiled(
            lazy, np.float32, amsgrad=True, dirty=False, decay=True, ema=True
        )
        assert len(lazy.signatures) == 18
        assert sum(str(sig[15]) != "none" for sig in lazy.signatures) == 2
        print("ok")
        """
    )
    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    proc = subprocess.run(
        [sys.executable, "-c", script],
        env=env,
        text=True,
        capture_output=True,
        timeout=900,
        check=False,
    )
    tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-25:])
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", tail
    indexed = {p.name.split("-")[0] for p in tmp_path.rglob("rowwise_cpu.*.nbi")}
    for name in KERNELS:
        assert f"rowwise_cpu.{name}" in indexed, f"{name} has no on-disk cache index"


# ---------------------------------------------------------------------------
# the EMA of the weights (use_ema), fused
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("overwrite", [False, True], ids=["", "overwrite"])
@pytest.mark.parametrize("mode", ["dense", "sparse", "lazy"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_ema_follows_the_stored_value(dtype, mode, overwrite):
    """The EMA argument changes nothing else (``m``, ``v``, ``vhat`` and, without
    an overwrite, ``var`` bit for bit as without it); the average becomes
    ``(momentum * average) + ((1 - momentum) * var)`` of the value stored, in
    the compute dtype, rounded once; TF's rule moves every row's (the +0.0
    rows, which it otherwise skips, too), the lazy rule the listed rows'.
    With ``overwrite`` those rows of ``var`` take their averages."""
    rng = np.random.default_rng([31, FLOAT_DTYPES.index(dtype), len(mode), overwrite])
    rows, width, k = 40, 3, 30
    state = rw_state(rng, rows, width, dtype, True, zero_rows=10)
    avg0 = np.array(rng.standard_normal((rows, width)), dtype)
    c = rw_compute(dtype).type
    wd = None if mode == "sparse" else (c(0.25), c(0.125))  # (skip needs no wd)
    cf = rw_coef(dtype)
    avg = avg0.copy()
    ema = (avg, 0.75, overwrite)
    if mode == "dense":
        g = np.array(rng.standard_normal((rows, width)) * 2, dtype)
        tr = rw_transform(dtype, g, 0.7, 1.5)
        plain = rw_dense(dtype, state, g, cf, tr, wd=wd)
        got = rw_dense(dtype, state, g, cf, tr, wd=wd, ema=ema)
        moved = np.arange(rows)
    else:
        idx, vals = _slices(rng, rows, width, k, dtype, hot=rows - 12)
        tr = rw_transform(dtype, vals, 0.7, 1.5)
        plain = RUN[mode](dtype, state, idx, vals, cf, tr, wd=wd)
        got = RUN[mode](dtype, state, idx, vals, cf, tr, wd=wd, ema=ema)
        moved = np.arange(rows) if mode == "sparse" else np.unique(idx)
    mom = c(0.75)
    with np.errstate(all="ignore"):
        new = (mom * avg0[moved].astype(c)) + ((c(1) - mom) * plain[0][moved].astype(c))
    want = avg0.copy()
    want[moved] = new.astype(dtype)
    assert_bitwise(avg, want, "average")
    assert_state_bitwise(got[1:], plain[1:], "with an EMA")
    var = plain[0].copy()
    if overwrite:
        var[moved] = want[moved]
    assert_bitwise(got[0], var, "var")
    if mode == "sparse":  # the +0.0 rows of the TF rule, skipped without an EMA
        assert_bitwise(plain[0][-10:], state[0][-10:], "skipped rows")
        assert not np.array_equal(avg[-10:], avg0[-10:])
