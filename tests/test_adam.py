"""``numbadam.Adam`` through the public API, beyond the numerics table.

The numerics of every hyperparameter, layout and dtype are the rows of
``tests/cases.py`` (run by ``test_numerics.py``); a feature's numerics go
there. This file keeps what a row cannot say: a float64 trajectory against an
independent multi-step oracle run, sparse == dense, hyperparameters reassigned
between steps, empty shapes, views and subclasses updated in place, casts,
``None`` gradients. Where the oracle is used, it starts from the optimizer's
own state at every step and must match to ``helpers.TOLERANCE``.
"""

from __future__ import annotations

import logging
import zlib

import numpy as np
import pytest
from helpers import (
    FLOAT_DTYPES,
    assert_bitwise,
    assert_close,
    assert_state,
    assert_unchanged,
    oracle_state,
    oracle_step,
    run_checked,
    sizes,
    snapshot,
    to_device,
    to_host,
)
from reference import run_reference

import numbadam
from numbadam import IndexedSlices

STEPS = 6


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def random_var(rng, shape, dtype):
    return np.array(rng.standard_normal(shape) * 2, dtype=dtype)


def random_grads(rng, shape, dtype, steps=STEPS, shrinking=False):
    """Gradients of mixed magnitudes; ``shrinking`` makes ``v`` fall (AMSGrad)."""
    out = []
    mag = 10.0 ** rng.uniform(-2, 1, size=shape)
    for s in range(steps):
        scale = mag * (0.05 if shrinking and s >= 2 else 1.0)
        out.append(np.array(rng.standard_normal(shape) * scale, dtype=dtype))
    return out


def random_sparse(rng, nrows, row_shape, dtype, k, index_dtype=np.int64):
    """An IndexedSlices with duplicate indices and untouched rows."""
    idx = rng.integers(0, max(nrows // 2, 1), size=k)  # upper half never touched
    if k >= 3:
        idx[1] = idx[0]  # a duplicate for sure
        idx[2] = idx[0]
    vals = (rng.standard_normal((k,) + tuple(row_shape)) * 3).astype(dtype)
    return IndexedSlices(vals, idx.astype(index_dtype), (nrows,) + tuple(row_shape))


# ---------------------------------------------------------------------------
# dense
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_float64_matches_independent_run(backend_path, amsgrad):
    """float64 follows TF's operation order: the trajectory is within an ulp or so."""
    backend = backend_path
    rng = _rng("f64 run", amsgrad)
    shape = sizes(backend, (300,), (200,))
    var0 = random_var(rng, shape, np.float64)
    grads = random_grads(rng, shape, np.float64, steps=8, shrinking=amsgrad)
    kw = {
        "learning_rate": 0.01,
        "beta_1": 0.8,
        "beta_2": 0.99,
        "epsilon": 1e-3,
        "amsgrad": amsgrad,
    }
    ref = run_reference(
        var0, grads, lr=0.01, beta_1=0.8, beta_2=0.99, epsilon=1e-3, amsgrad=amsgrad
    )
    opt = numbadam.Adam(**kw)
    var = to_device(var0.copy(), backend)
    for s, g in enumerate(grads):
        opt.apply_gradients([(to_device(g, backend), var)])
        x, m, v, h = ref[s]
        got = {"var": var, "m": opt.get_slot(var, "m"), "v": opt.get_slot(var, "v")}
        want = {"var": x, "m": m, "v": v}
        if amsgrad:
            got["vhat"], want["vhat"] = opt.get_slot(var, "vhat"), h
        for key, arr in got.items():
            a = to_host(arr)
            err = np.max(np.abs(a - want[key]) / np.maximum(np.abs(want[key]), 1e-300))
            assert err <= 1e-15, f"step {s + 1} {key}: relative error {err:.3g}"


# ---------------------------------------------------------------------------
# sparse
# ---------------------------------------------------------------------------


def test_sparse_3d_table(backend):
    """A 3-D table: IndexedSlices rows are (4, 3) blocks."""
    rng = _rng("sparse3d")
    var0 = random_var(rng, (10, 4, 3), np.float64)
    grads = [random_sparse(rng, 10, (4, 3), np.float64, k) for k in (5, 3, 7, 2, 6)]
    run_checked(backend, var0, grads, {"learning_rate": 0.1, "amsgrad": True})


def test_sparse_untouched_rows_equal_dense_zero_gradient(backend):
    """A row that never gets a gradient moves like a dense row with g = 0."""
    rng = _rng("sparse-decay")
    var0 = random_var(rng, (8, 3), np.float32)
    opt_s, opt_d = numbadam.Adam(0.1), numbadam.Adam(0.1)
    ws, wd = to_device(var0.copy(), backend), to_device(var0.copy(), backend)
    for _ in range(STEPS):
        vals = rng.standard_normal((2, 3)).astype(np.float32)
        idx = np.array([1, 5])
        dense = np.zeros((8, 3), np.float32)
        dense[idx] = vals
        opt_s.apply_gradients(
            [
                (
                    IndexedSlices(
                        to_device(vals, backend), to_device(idx, backend), (8, 3)
                    ),
                    ws,
                )
            ]
        )
        opt_d.apply_gradients([(to_device(dense, backend), wd)])
    assert_bitwise(ws, wd, "var")
    assert_bitwise(opt_s.get_slot(ws, "m"), opt_d.get_slot(wd, "m"), "m")
    assert_bitwise(opt_s.get_slot(ws, "v"), opt_d.get_slot(wd, "v"), "v")


# ---------------------------------------------------------------------------
# clipping, hyperparameters reassigned
# ---------------------------------------------------------------------------


def test_clipnorm_below_threshold_is_identity(backend):
    g = np.full(10, 0.01, np.float64)  # norm 0.0316 < 1
    var0 = np.ones(10)
    a, b = to_device(var0.copy(), backend), to_device(var0.copy(), backend)
    numbadam.Adam(0.1, clipnorm=1.0).apply_gradients([(to_device(g, backend), a)])
    numbadam.Adam(0.1).apply_gradients([(to_device(g, backend), b)])
    assert_bitwise(a, b)


def test_learning_rate_reassigned_between_steps(backend):
    rng = _rng("reassign")
    var0 = random_var(rng, (20,), np.float64)
    grads = random_grads(rng, (20,), np.float64)
    opt = numbadam.Adam(0.1)
    var = to_device(var0.copy(), backend)
    lrs = [0.1, 0.1, 0.3, 0.3, 0.01, 0.01]
    for it, g in enumerate(grads):
        if it and lrs[it] != lrs[it - 1]:
            opt.learning_rate = lrs[it]
        before = oracle_state(opt, var, False)
        exp = oracle_step(
            before, g, it, lr=lrs[it], beta_1=0.9, beta_2=0.999, epsilon=1e-7
        )
        opt.apply_gradients([(to_device(g, backend), var)])
        assert_state(opt, var, before, exp, np.float64, f"step {it + 1}")


# ---------------------------------------------------------------------------
# shapes, layouts, casts
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    # (), 1-D and N-D shapes are rows of the numerics table (test_numerics.py)
    "shape",
    [(0,), (0, 3), (1,)],
    ids=lambda s: f"shape{s}",
)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_shapes(backend_path, dtype, shape):
    backend = backend_path
    rng = _rng("shape", shape, np.dtype(dtype).name)
    var0 = random_var(rng, shape, dtype)
    grads = random_grads(rng, shape, dtype, steps=5)
    res = run_checked(backend, var0, grads, {"learning_rate": 0.1})
    opt, var = res["opt"], res["var"]
    assert int(opt.iterations) == 5
    assert tuple(opt.get_slot(var, "m").shape) == shape
    assert np.dtype(opt.get_slot(var, "v").dtype) == np.dtype(dtype)


def test_strided_views_updated_in_place(cpu_path):
    """Non-contiguous views (a column slice, a transpose) are updated in place."""
    rng = _rng("strided")
    base = random_var(rng, (8, 10), np.float32)
    other = random_var(rng, (6, 4), np.float64)
    base0, other0 = base.copy(), other.copy()
    opt = numbadam.Adam(0.1)
    for it in range(STEPS):
        view, tview = base[:, ::2], other.T  # fresh view objects every step
        gv = rng.standard_normal(view.shape).astype(np.float32)
        gt = rng.standard_normal(tview.shape)
        bv, bt = oracle_state(opt, view, False), oracle_state(opt, tview, False)
        ev = oracle_step(bv, gv, it, lr=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
        et = oracle_step(bt, gt, it, lr=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
        opt.apply_gradients([(gv, view), (gt, tview)])
        assert_state(opt, base[:, ::2], bv, ev, np.float32, f"view step {it + 1}")
        assert_state(opt, other.T, bt, et, np.float64, f"transpose step {it + 1}")
    assert_bitwise(base[:, 1::2], base0[:, 1::2], "columns outside the view")
    assert not np.array_equal(base[:, ::2], base0[:, ::2])
    assert not np.array_equal(other, other0)
    assert len(opt.weights) == 5  # one m and one v per variable, not per view object


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")  # np.matrix itself
@pytest.mark.parametrize("kind", ["matrix", "memmap"])
def test_ndarray_subclass_variables(kind, tmp_path):
    """np.matrix (always 2-D) and np.memmap variables are updated in place,
    bit for bit as plain arrays, by dense and sparse steps."""
    rng = _rng("subclass", kind)
    base = random_var(rng, (4, 3), np.float32)
    if kind == "matrix":
        var = np.matrix(base.copy())
    else:
        var = np.memmap(tmp_path / "w.dat", np.float32, "w+", shape=(4, 3))
        var[...] = base
    plain = base.copy()
    o_sub, o_plain = numbadam.Adam(0.1), numbadam.Adam(0.1)
    for _ in range(2):
        g = rng.standard_normal((4, 3)).astype(np.float32)
        sl = IndexedSlices(g[:2], np.array([3, 1]), (4, 3))
        o_sub.apply_gradients([(g, var)])
        o_sub.apply_gradients([(sl, var)])
        o_plain.apply_gradients([(g, plain)])
        o_plain.apply_gradients([(sl, plain)])
    assert type(var) is (np.matrix if kind == "matrix" else np.memmap)
    assert_bitwise(np.asarray(var), plain, "variable")
    assert_bitwise(o_sub.get_slot(var, "v"), o_plain.get_slot(plain, "v"), "v")


@pytest.mark.parametrize("sparse_mode", ["dense", "lazy"])
@pytest.mark.parametrize("index_dtype", [np.int32, np.int64, np.uint16])
def test_strided_indices_and_values(sparse_mode, index_dtype):
    """IndexedSlices built from strided views (every other index, reversed
    values) step exactly as their contiguous copies do."""
    rng = _rng("strided-slices", sparse_mode, np.dtype(index_dtype).name)
    var0 = random_var(rng, (12, 3), np.float32)
    idx_base = rng.integers(0, 12, 16).astype(index_dtype)
    vals_base = rng.standard_normal((8, 6)).astype(np.float32)
    idx, vals = idx_base[::2], vals_base[::-1, ::2]
    assert not idx.flags.c_contiguous and not vals.flags.c_contiguous
    a, b = var0.copy(), var0.copy()
    oa = numbadam.Adam(0.1, sparse_mode=sparse_mode)
    ob = numbadam.Adam(0.1, sparse_mode=sparse_mode)
    for _ in range(2):
        oa.apply_gradients([(IndexedSlices(vals, idx, a.shape), a)])
        ob.apply_gradients([(IndexedSlices(vals.copy(), idx.copy(), b.shape), b)])
    assert_bitwise(a, b, "var")
    assert not np.array_equal(a, var0)


def test_float64_gradient_cast_for_float32_variable(backend):
    rng = _rng("cast")
    var0 = random_var(rng, (33,), np.float32)
    grads = [rng.standard_normal(33) for _ in range(STEPS)]  # float64
    a, b = to_device(var0.copy(), backend), to_device(var0.copy(), backend)
    oa, ob = numbadam.Adam(0.1), numbadam.Adam(0.1)
    for g in grads:
        oa.apply_gradients([(to_device(g, backend), a)])
        ob.apply_gradients([(to_device(g.astype(np.float32), backend), b)])
    assert np.dtype(a.dtype) == np.float32
    assert_bitwise(a, b, "var")
    assert_bitwise(oa.get_slot(a, "v"), ob.get_slot(b, "v"), "v")
    ref = run_reference(var0, [g.astype(np.float32) for g in grads], lr=0.1)
    assert_close(a, ref[-1][0], np.float32, what="var")


def test_zip_of_pairs(backend):
    rng = _rng("zip")
    v0 = [random_var(rng, (5,), np.float32), random_var(rng, (4, 2), np.float64)]
    a = [to_device(v.copy(), backend) for v in v0]
    b = [to_device(v.copy(), backend) for v in v0]
    oa, ob = numbadam.Adam(0.1), numbadam.Adam(0.1)
    for _ in range(3):
        gs = [rng.standard_normal(v.shape).astype(v.dtype) for v in v0]
        oa.apply_gradients(zip([to_device(g, backend) for g in gs], a))
        ob.apply_gradients([(to_device(g, backend), v) for g, v in zip(gs, b)])
    for x, y in zip(a, b):
        assert_bitwise(x, y)
    assert int(oa.iterations) == 3


def test_empty_list_is_a_noop():
    opt = numbadam.Adam()
    assert opt.apply_gradients([]) is None
    assert opt.apply_gradients(iter([])) is None
    assert opt.weights == []  # iterations not even created
    assert opt.get_weights() == []


# ---------------------------------------------------------------------------
# None gradients
# ---------------------------------------------------------------------------


def test_none_gradient_skipped_with_warning(backend, caplog):
    rng = _rng("none")
    a0, b0 = random_var(rng, (6,), np.float64), random_var(rng, (3, 2), np.float64)
    a, b = to_device(a0.copy(), backend), to_device(b0.copy(), backend)
    opt = numbadam.Adam(0.1)
    ga = rng.standard_normal(6)
    with caplog.at_level(logging.WARNING, logger="numbadam"):
        out = opt.apply_gradients([(to_device(ga, backend), a), (None, b)])
    assert int(out) == 1
    msgs = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("variable 1" in msg and "(3, 2)" in msg for msg in msgs), msgs
    assert_bitwise(b, b0, "skipped variable")
    with pytest.raises(KeyError):
        opt.get_slot(b, "m")
    assert len(opt.weights) == 3  # iterations, m_a, v_a
    # b's first real gradient: slots created now, bias correction at the global t=2
    gb = rng.standard_normal((3, 2))
    before = oracle_state(opt, b, False)
    exp = oracle_step(before, gb, 1, lr=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="numbadam"):
        opt.apply_gradients([(to_device(ga, backend), a), (to_device(gb, backend), b)])
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert_state(opt, b, before, exp, np.float64, "first step of b")
    w = opt.weights
    assert len(w) == 5
    assert w[3] is opt.get_slot(b, "m") and w[4] is opt.get_slot(b, "v")
    # and t=1 would have been a different (wrong) answer
    wrong = oracle_step(before, gb, 0, lr=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
    assert not np.allclose(wrong["var"], exp["var"], rtol=1e-9, atol=0)


def test_all_none_gradients_raise(backend):
    rng = _rng("allnone")
    a, b = (to_device(random_var(rng, (4,), np.float32), backend) for _ in range(2))
    opt = numbadam.Adam()
    with pytest.raises(ValueError, match="No gradients provided"):
        opt.apply_gradients([(None, a), (None, b)])
    assert opt.weights == []  # nothing created
    opt.apply_gradients([(to_device(np.ones(4, np.float32), backend), a)])
    snap = snapshot(opt, [a, b])
    with pytest.raises(ValueError, match="variable 0.*variable 1|variable 1"):
        opt.apply_gradients([(None, a), (None, b)])
    assert_unchanged(snap, opt, [a, b])
    assert int(opt.iterations) == 1
