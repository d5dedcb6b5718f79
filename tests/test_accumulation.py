"""Gradient accumulation (``gradient_accumulation_steps``, Keras 3's, #13).

Multi-call cycles do not fit the one-call rows of ``tests/cases.py``, so they
are tested here: against ``reference.run_accumulation_reference`` (float64,
to ``helpers.TOLERANCE``), bit for bit against a plain Adam fed the mean
gradient computed by NumPy in the compute dtype (Keras 3's ``(g + acc) / N``
with ``acc = (0 + g_1) + g_2 ...``), and for the state, config, checkpoints
and bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import assert_close
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from reference import SparseGrad, run_accumulation_reference

import numbadam
from numbadam import IndexedSlices


def _grads(seed, shape, count, dtype):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(dtype) for _ in range(count)]


def _keras_means(grads, n, dtype):
    # Keras 3's mean of each cycle, in the storage dtype: acc = 0 + g_1, then
    # acc = acc + g_k, then (g_n + acc) / n (float16 in float32, as numbadam)
    c = np.float32 if np.dtype(dtype) == np.float16 else dtype
    out = []
    for k in range(0, len(grads), n):
        acc = np.zeros_like(grads[k]) + grads[k]
        for g in grads[k + 1 : k + n - 1]:
            acc = (acc.astype(c) + g.astype(c)).astype(dtype)
        out.append(((grads[k + n - 1].astype(c) + acc.astype(c)) / c(n)).astype(c))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"amsgrad": True},
        {"clipnorm": 0.3},
        {"clipvalue": 0.2},
        {"weight_decay": 0.05},
        {"decay": 0.1},
    ],
    ids=["plain", "amsgrad", "clipnorm", "clipvalue", "wd", "decay"],
)
def test_dense_equals_plain_step_of_the_mean(dtype, kw, cpu_path):
    # bit for bit: the applying kernel forms (g + acc) / N and then is the
    # plain step, so a plain Adam fed NumPy's mean takes the same bits
    n = 3
    grads = _grads(1, (37, 5), 3 * n, dtype)
    w = np.random.default_rng(2).standard_normal((37, 5)).astype(dtype)
    w_ref = w.copy()
    acc = numbadam.Adam(0.05, gradient_accumulation_steps=n, **kw)
    plain = numbadam.Adam(0.05, **kw)
    means = _keras_means(grads, n, dtype)
    for call, g in enumerate(grads):
        before = w.copy()
        acc.apply_gradients([(g, w)])
        if (call + 1) % n:
            assert np.array_equal(w, before), "an accumulating call moved w"
        else:
            plain.apply_gradients([(means[call // n].astype(dtype), w_ref)])
            assert np.array_equal(w, w_ref)
            for a, b in zip(acc.get_weights()[2:], plain.get_weights()[1:]):
                assert np.array_equal(a, b)
    assert int(acc.iterations) == 3 and int(acc.weights[0]) == 3 * n


def test_float16_to_reference():
    n = 2
    grads = _grads(3, (64,), 6, np.float16)
    w0 = np.random.default_rng(4).standard_normal(64).astype(np.float16)
    w = w0.copy()
    opt = numbadam.Adam(0.01, gradient_accumulation_steps=n)
    for g in grads:
        opt.apply_gradients([(g, w)])
    ref = run_accumulation_reference(w0, grads, n, lr=0.01)[-1][0]
    # float16 variables round on store at each of the 3 updates: 3 half-ulps,
    # plus float16's rounding of the accumulated sum
    spacing = np.spacing(np.abs(ref).astype(np.float16)).astype(np.float64)
    assert np.all(np.abs(w.astype(np.float64) - ref) <= 2 * spacing)


@pytest.mark.parametrize("mode", ["dense", "lazy"])
@pytest.mark.parametrize("clip", [{}, {"clipnorm": 0.5}, {"clipvalue": 0.1}])
def test_sparse_to_reference(mode, clip):
    n = 3
    rng = np.random.default_rng(5)
    table0 = rng.standard_normal((30, 4)).astype(np.float64)
    table = table0.copy()
    opt = numbadam.Adam(0.1, gradient_accumulation_steps=n, sparse_mode=mode, **clip)
    grads = []
    for _ in range(2 * n):
        idx = rng.integers(0, 30, 5)
        vals = rng.standard_normal((5, 4))
        grads.append(SparseGrad(idx, vals))
        opt.apply_gradients([(IndexedSlices(vals, idx, (30, 4)), table)])
    ref = run_accumulation_reference(
        table0, grads, n, lr=0.1, sparse_mode=mode,
        clipnorm=clip.get("clipnorm"), clipvalue=clip.get("clipvalue"),
    )  # fmt: skip
    assert_close(table, ref[-1][0], np.float64, what="table")
    assert_close(opt.get_slot(table, "m"), ref[-1][1], np.float64, what="m")


def test_sparse_equals_dense_of_the_zero_filled_mean():
    # TF's rule: without duplicates inside a call, the summation order (call
    # order, from zero) is Keras' dense one: the same bits as dense gradients
    n = 2
    rng = np.random.default_rng(6)
    a = rng.standard_normal((20, 3)).astype(np.float32)
    b = a.copy()
    sp = numbadam.Adam(0.1, gradient_accumulation_steps=n)
    de = numbadam.Adam(0.1, gradient_accumulation_steps=n)
    for _ in range(2 * n):
        idx = rng.permutation(20)[:6]
        vals = rng.standard_normal((6, 3)).astype(np.float32)
        dense = np.zeros((20, 3), np.float32)
        dense[idx] = vals
        sp.apply_gradients([(IndexedSlices(vals, idx, (20, 3)), a)])
        de.apply_gradients([(dense, b)])
    assert np.array_equal(a, b)


def test_schedule_reads_the_call_count_bias_correction_the_updates():
    n = 2
    sched = numbadam.schedules.InverseTimeDecay(0.1, 1, 1.0)
    grads = _grads(7, (9,), 4 * n, np.float64)
    w0 = np.ones(9)
    w = w0.copy()
    opt = numbadam.Adam(sched, gradient_accumulation_steps=n)
    for g in grads:
        opt.apply_gradients([(g, w)])
    ref = run_accumulation_reference(w0, grads, n, lr=lambda it: 0.1 / (1 + it))
    assert_close(w, ref[-1][0], np.float64, scale=1.0, what="var")


def test_global_clipnorm_over_the_means_and_buffer():
    n = 2
    shapes = [(5,), (3, 4)]
    buf = numbadam.ParameterBuffer(shapes, np.float32)
    for p in buf.params:
        p[...] = 1.0
    ws = [np.ones(s, np.float32) for s in shapes]
    ws_plain = [np.ones(s, np.float32) for s in shapes]
    a = numbadam.Adam(0.1, global_clipnorm=0.5, gradient_accumulation_steps=n)
    b = numbadam.Adam(0.1, global_clipnorm=0.5, gradient_accumulation_steps=n)
    plain = numbadam.Adam(0.1, global_clipnorm=0.5)
    rng = np.random.default_rng(8)
    cycle = []
    for _ in range(2 * n):
        gs = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        cycle.append(gs)
        for g, bg in zip(gs, buf.grads):
            bg[...] = g
        a.apply_gradients(buf.grads_and_vars())
        b.apply_gradients(list(zip([g.copy() for g in gs], ws)))
        if len(cycle) == n:
            means = [(cycle[1][i] + (np.float32(0) + cycle[0][i])) / np.float32(n)
                     for i in range(len(shapes))]  # fmt: skip
            plain.apply_gradients(list(zip(means, ws_plain)))
            cycle = []
    for p, w, q in zip(buf.params, ws, ws_plain):
        assert np.array_equal(p, w) and np.array_equal(w, q)


def test_multi_tensor_list_falls_back_with_the_same_bits():
    n = 2
    shapes = [(4,)] * 9  # a list the multi-tensor path would take
    ws = [np.ones(s, np.float32) for s in shapes]
    ref = [np.ones(s, np.float32) for s in shapes]
    a = numbadam.Adam(0.1, gradient_accumulation_steps=n)
    plain = numbadam.Adam(0.1)
    rng = np.random.default_rng(9)
    for _ in range(3):
        g1 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        g2 = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        a.apply_gradients(list(zip(g1, ws)))
        a.apply_gradients(list(zip(g2, ws)))
        plain.apply_gradients(
            [((y + (np.float32(0) + x)) / np.float32(2), r)
             for x, y, r in zip(g1, g2, ref)]
        )  # fmt: skip
    assert all(np.array_equal(w, r) for w, r in zip(ws, ref))


# -- hypothesis: N calls of g are one call of g -----------------------------


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(2, 8),
    ints=st.lists(st.integers(-512, 512), min_size=1, max_size=40),
    dtype=st.sampled_from([np.float32, np.float64]),
    amsgrad=st.booleans(),
)
def test_n_calls_of_g_are_one_call_of_g(n, ints, dtype, amsgrad):
    # Exact: g holds small multiples of 2**-6, so every partial sum k * g is
    # exact and (n * g) / n == g; any n then gives the bits of one step of g.
    g = (np.array(ints, np.float64) / 64).astype(dtype)
    w = np.linspace(-1, 1, g.size).astype(dtype)
    w1 = w.copy()
    acc = numbadam.Adam(0.1, amsgrad=amsgrad, gradient_accumulation_steps=n)
    one = numbadam.Adam(0.1, amsgrad=amsgrad)
    for _ in range(n):
        acc.apply_gradients([(g.copy(), w)])
    one.apply_gradients([(g.copy(), w1)])
    assert np.array_equal(w, w1)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 5), seed=st.integers(0, 2**16))
def test_n_calls_to_reference(n, seed):
    # general values: (g + ... + g) / n is not g exactly; to the tolerance
    grads = _grads(seed, (17,), 2 * n, np.float32)
    w0 = np.random.default_rng(seed + 1).standard_normal(17).astype(np.float32)
    w = w0.copy()
    opt = numbadam.Adam(0.01, gradient_accumulation_steps=n)
    for g in grads:
        opt.apply_gradients([(g, w)])
    ref = run_accumulation_reference(w0, grads, n, lr=0.01)
    assert_close(w, ref[-1][0], np.float32, what="var")


# -- state ---------------------------------------------------------------------


def test_counters_and_the_iterations_setter():
    opt = numbadam.Adam(0.1, gradient_accumulation_steps=4)
    w = np.zeros(3, np.float32)
    for k in range(1, 7):
        ret = opt.apply_gradients([(np.ones(3, np.float32), w)])
        assert int(ret) == k == int(opt.weights[0]) == int(opt.get_weights()[0])
        assert int(opt.iterations) == k // 4
    opt.iterations = 5  # the start of update 5's cycle
    assert int(opt.weights[0]) == 20 and int(opt.iterations) == 5
    assert not opt.get_weights()[1].any()  # partial sums dropped
    with pytest.raises(ValueError, match="int64"):
        opt.iterations = 2**62


def test_stale_accumulators_read_as_zeros():
    opt = numbadam.Adam(0.1, gradient_accumulation_steps=2)
    w, u = np.zeros(3, np.float32), np.zeros(2, np.float32)
    g = np.full(3, 2.0, np.float32)
    opt.apply_gradients([(g, w), (np.ones(2, np.float32), u)])
    assert opt.get_weights()[1].tolist() == [2.0, 2.0, 2.0]
    assert opt.get_weights()[2].tolist() == [1.0, 1.0]
    opt.apply_gradients([(g, w), (np.ones(2, np.float32), u)])
    assert not opt.get_weights()[1].any() and not opt.get_weights()[2].any()
    assert opt.get_slot(w, "accumulator").any()  # (the raw memory is stale)
    opt.apply_gradients([(g, w)])  # a new cycle without u
    assert opt.get_weights()[1].tolist() == [2.0, 2.0, 2.0]
    assert not opt.get_weights()[2].any()


def test_weights_round_trip_mid_cycle_continues_bit_for_bit():
    n = 3
    grads = _grads(10, (11,), 2 * n, np.float32)
    w = np.zeros(11, np.float32)
    opt = numbadam.Adam(0.1, gradient_accumulation_steps=n)
    for g in grads[:4]:
        opt.apply_gradients([(g, w)])
    twin = numbadam.Adam.from_config(opt.get_config())
    w2 = w.copy()
    twin.build([w2])
    twin.set_weights(opt.get_weights())
    for g in grads[4:]:
        opt.apply_gradients([(g, w)])
        twin.apply_gradients([(g, w2)])
    assert np.array_equal(w, w2)
    assert [x.tolist() for x in opt.get_weights()] == [
        x.tolist() for x in twin.get_weights()
    ]


def test_set_weights_refuses_partial_sums_at_a_cycle_start():
    opt = numbadam.Adam(0.1, gradient_accumulation_steps=2)
    w = np.zeros(2, np.float32)
    opt.build([w])
    weights = opt.get_weights()
    weights[1] = np.ones(2, np.float32)
    with pytest.raises(ValueError, match="accumulator"):
        opt.set_weights(weights)
    assert not opt.get_weights()[1].any()


def test_checkpoint_mid_cycle_and_pending_slices(tmp_path):
    opt = numbadam.Adam(0.1, gradient_accumulation_steps=3)
    w = np.zeros(4, np.float32)
    t = np.zeros((5, 2), np.float32)
    gs = _grads(11, (4,), 6, np.float32)
    opt.apply_gradients([(gs[0], w)])
    path = numbadam.save_checkpoint(tmp_path / "a.npz", opt, {"w": w})
    ckpt = numbadam.load_checkpoint(path)
    w2, opt2 = ckpt.variables["w"], ckpt.optimizer
    assert int(opt2.weights[0]) == 1 and ckpt.step == 0
    for g in gs[1:]:
        opt.apply_gradients([(g, w)])
        opt2.apply_gradients([(g, w2)])
    assert np.array_equal(w, w2)
    sp = numbadam.Adam(0.1, gradient_accumulation_steps=2)
    sp.apply_gradients([(IndexedSlices(np.ones((1, 2), np.float32), [3]), t)])
    with pytest.raises(ValueError, match="pending"):
        sp.get_weights()
    with pytest.raises(numbadam.CheckpointError, match="pending"):
        numbadam.save_checkpoint(tmp_path / "b.npz", sp, {"t": t})
    sp.apply_gradients([(IndexedSlices(np.ones((1, 2), np.float32), [3]), t)])
    assert len(sp.get_weights()) == 4  # the cycle finished


def test_config_round_trip():
    opt = numbadam.AdamW(0.01, gradient_accumulation_steps=4)
    config = opt.get_config()
    assert config["gradient_accumulation_steps"] == 4
    assert numbadam.AdamW.from_config(config).get_config() == config
    assert "gradient_accumulation_steps" not in numbadam.Adam().get_config()


# -- bad input -------------------------------------------------------------------


@pytest.mark.parametrize("bad", [0, 1, -2, 2.0, 2.5, True, "4", np.float32(3)])
def test_bad_steps(bad):
    with pytest.raises(ValueError, match="gradient_accumulation_steps"):
        numbadam.Adam(gradient_accumulation_steps=bad)


def _state(opt, arrays):
    return [a.copy() for a in arrays] + [np.array(x, copy=True) for x in opt.weights]


def test_other_variables_mid_cycle_change_nothing():
    opt = numbadam.Adam(0.1, gradient_accumulation_steps=3)
    w, u = np.zeros(3, np.float32), np.zeros((1, 2), np.float32)
    g, h = np.ones(3, np.float32), np.ones((1, 2), np.float32)
    opt.apply_gradients([(g, w), (h, u)])
    before = _state(opt, [w, u])
    with pytest.raises(ValueError, match="same variables"):
        opt.apply_gradients([(g, w)])
    t = np.zeros((4, 2), np.float32)
    with pytest.raises(ValueError, match="same variables"):
        opt.apply_gradients([(g, w), (h, u), (np.ones((4, 2), np.float32), t)])
    with pytest.raises(ValueError, match="one kind"):
        opt.apply_gradients(
            [(g, w), (IndexedSlices(np.ones((1, 2), np.float32), [0]), u)]
        )
    after = _state(opt, [w, u])
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    opt.apply_gradients([(h, u), (g, w)])  # the same set, in any order
    assert int(opt.weights[0]) == 2


def test_kind_change_mid_cycle():
    opt = numbadam.Adam(0.1, gradient_accumulation_steps=2)
    t = np.zeros((4, 2), np.float32)
    opt.apply_gradients([(np.ones((4, 2), np.float32), t)])
    before = _state(opt, [t])
    with pytest.raises(ValueError, match="one kind"):
        opt.apply_gradients([(IndexedSlices(np.ones((1, 2), np.float32), [0]), t)])
    assert all(np.array_equal(a, b) for a, b in zip(before, _state(opt, [t])))


# -- CUDA ------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("kw", [{}, {"clipnorm": 0.4, "amsgrad": True}])
def test_cuda_equals_cpu(cuda_backend, kw):
    _check_cuda_equals_cpu((150,), (12, 13, 14), **kw)


def _check_cuda_equals_cpu(shape, seeds, **kw):
    # dense cycles (float32, float16) and lazy IndexedSlices cycles: the CUDA
    # arrays end with the CPU's bits, variables and every weight
    from numba import cuda

    n = 2
    for dtype in (np.float32, np.float16):
        grads = _grads(seeds[0], shape, 2 * n, dtype)
        w = np.random.default_rng(seeds[1]).standard_normal(shape).astype(dtype)
        wd = cuda.to_device(w)
        a = numbadam.Adam(0.1, gradient_accumulation_steps=n, **kw)
        b = numbadam.Adam(0.1, gradient_accumulation_steps=n, **kw)
        for g in grads:
            a.apply_gradients([(g, w)])
            b.apply_gradients([(cuda.to_device(g), wd)])
        assert np.array_equal(w, wd.copy_to_host())
        for x, y in zip(a.get_weights(), b.get_weights()):
            assert np.array_equal(x, y)
    t = np.zeros((10, 3), np.float32)
    td = cuda.to_device(t)
    # (the lazy cycles without clipping or AMSGrad, the row-wise mode kept)
    lazy = {k: v for k, v in kw.items() if k not in ("clipnorm", "amsgrad")}
    lazy.update(gradient_accumulation_steps=n, sparse_mode="lazy")
    a, b = numbadam.Adam(0.1, **lazy), numbadam.Adam(0.1, **lazy)
    rng = np.random.default_rng(seeds[2])
    for _ in range(2 * n):
        vals = rng.standard_normal((3, 3)).astype(np.float32)
        idx = rng.integers(0, 10, 3)
        a.apply_gradients([(IndexedSlices(vals, idx, (10, 3)), t)])
        b.apply_gradients(
            [(IndexedSlices(cuda.to_device(vals), cuda.to_device(idx), (10, 3)), td)]
        )
    assert np.array_equal(t, td.copy_to_host())


def test_restored_cycle_takes_the_next_calls_variables():
    opt = numbadam.Adam(0.1, gradient_accumulation_steps=3)
    w, u = np.zeros(3, np.float32), np.zeros((4, 2), np.float32)
    opt.apply_gradients([(np.ones(3, np.float32), w), (np.ones((4, 2), np.float32), u)])
    saved = opt.get_weights()
    opt.set_weights(saved)  # mid-cycle: the cycle's variables are not known
    sparse = IndexedSlices(np.ones((1, 2), np.float32), [1])
    before = _state(opt, [w, u])
    with pytest.raises(ValueError, match="restored mid-way"):
        opt.apply_gradients([(np.ones(3, np.float32), w), (sparse, u)])
    assert all(np.array_equal(a, b) for a, b in zip(before, _state(opt, [w, u])))
    opt.apply_gradients([(np.ones(3, np.float32), w)])  # u leaves the cycle
    weights = opt.get_weights()
    assert weights[1].tolist() == [2.0, 2.0, 2.0]  # restored sum + g
    assert not weights[2].any()  # u's partial sum is dropped


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 4),
    seed=st.integers(0, 2**16),
    dtype=st.sampled_from([np.float32, np.float64]),
)
def test_sparse_accumulation_properties(n, seed, dtype):
    # TF rule, no index repeated within a call: the bits of dense
    # accumulation of the zero-filled gradients. Lazy: rows no call of the
    # cycle lists keep every bit (values and slots).
    rng = np.random.default_rng(seed)
    t0 = rng.standard_normal((12, 2)).astype(dtype)
    a, b, lazy = t0.copy(), t0.copy(), t0.copy()
    sp = numbadam.Adam(0.1, gradient_accumulation_steps=n)
    de = numbadam.Adam(0.1, gradient_accumulation_steps=n)
    lz = numbadam.Adam(0.1, gradient_accumulation_steps=n, sparse_mode="lazy")
    touched = set()
    for _ in range(n):
        idx = rng.permutation(12)[: rng.integers(0, 6)]
        vals = rng.standard_normal((idx.size, 2)).astype(dtype)
        dense = np.zeros((12, 2), dtype)
        dense[idx] = vals
        touched.update(idx.tolist())
        sp.apply_gradients([(IndexedSlices(vals, idx, (12, 2)), a)])
        de.apply_gradients([(dense, b)])
        lz.apply_gradients([(IndexedSlices(vals, idx, (12, 2)), lazy)])
    assert np.array_equal(a, b)
    rest = sorted(set(range(12)) - touched)
    assert np.array_equal(lazy[rest], t0[rest])
    assert not lz.get_slot(lazy, "m")[rest].any()


# -- row-wise second moment (second_moment="row", #14) -------------------------


_ROW_KW = {
    "plain": {},
    "amsgrad": {"amsgrad": True},
    "clipnorm": {"clipnorm": 0.3},
    "clipvalue-wd": {"clipvalue": 0.2, "weight_decay": 0.05},
}


@pytest.mark.parametrize(
    "dtype, kw",
    [(dt, kw) for dt in (np.float32, np.float64) for kw in _ROW_KW.values()]
    # float16: not with clipnorm, whose small clipped gradients give a v
    # below float16's range (the reference's float64 v is not)
    + [(np.float16, _ROW_KW["plain"]), (np.float16, _ROW_KW["amsgrad"])],
    ids=[f"{dt}-{k}" for dt in ("f32", "f64") for k in _ROW_KW]
    + ["f16-plain", "f16-amsgrad"],
)
def test_row_wise_dense_equals_row_step_of_the_mean(dtype, kw, cpu_path):
    # the row-wise applying kernel forms (g + acc) / N and then is the plain
    # row-wise step: a row-wise Adam fed NumPy's mean takes the same bits
    # (float16: the mean is formed in float32, so compared with the reference)
    n = 3
    grads = _grads(21, (23, 6), 2 * n, dtype)
    w0 = np.random.default_rng(22).standard_normal((23, 6)).astype(dtype)
    w, w_ref = w0.copy(), w0.copy()
    acc = numbadam.Adam(0.05, second_moment="row", gradient_accumulation_steps=n, **kw)
    plain = numbadam.Adam(0.05, second_moment="row", **kw)
    means = _keras_means(grads, n, dtype)
    for call, g in enumerate(grads):
        before = w.copy()
        acc.apply_gradients([(g, w)])
        if (call + 1) % n:
            assert np.array_equal(w, before), "an accumulating call moved w"
            continue
        assert acc.get_slot(w, "v").shape == (23,)
        if dtype == np.float16:
            continue
        plain.apply_gradients([(means[call // n].astype(dtype), w_ref)])
        assert np.array_equal(w, w_ref)
        for a, b in zip(acc.get_weights()[2:], plain.get_weights()[1:]):
            assert np.array_equal(a, b)
    ref = run_accumulation_reference(
        w0, grads, n, lr=0.05, second_moment="row", amsgrad=kw.get("amsgrad", False),
        clipnorm=kw.get("clipnorm"), clipvalue=kw.get("clipvalue"),
        weight_decay=kw.get("weight_decay", 0.0),
    )[-1]  # fmt: skip
    tol = np.float32 if dtype == np.float16 else dtype
    if dtype == np.float16:
        spacing = np.spacing(np.abs(ref[0]).astype(np.float16)).astype(np.float64)
        assert np.all(np.abs(w.astype(np.float64) - ref[0]) <= 3 * spacing)
    else:
        assert_close(w, ref[0], tol, what="var")
        assert_close(acc.get_slot(w, "v"), ref[2], tol, what="v")


@pytest.mark.parametrize("mode", ["dense", "lazy"])
@pytest.mark.parametrize("clip", [{}, {"clipnorm": 0.5}, {"amsgrad": True}])
def test_row_wise_sparse_to_reference(mode, clip):
    # IndexedSlices cycles: the mean rows of the cycle take one row-wise
    # sparse step (TF's rule: every row; lazy: the cycle's rows only)
    n = 3
    rng = np.random.default_rng(23)
    table0 = rng.standard_normal((30, 4))
    table = table0.copy()
    opt = numbadam.Adam(0.1, gradient_accumulation_steps=n, sparse_mode=mode,
                        second_moment="row", **clip)  # fmt: skip
    grads = []
    for _ in range(2 * n):
        idx = rng.integers(0, 12, 5)
        vals = rng.standard_normal((5, 4))
        grads.append(SparseGrad(idx, vals))
        opt.apply_gradients([(IndexedSlices(vals, idx, (30, 4)), table)])
    ref = run_accumulation_reference(
        table0, grads, n, lr=0.1, sparse_mode=mode, second_moment="row",
        clipnorm=clip.get("clipnorm"), amsgrad=clip.get("amsgrad", False),
    )[-1]  # fmt: skip
    assert_close(table, ref[0], np.float64, what="table")
    assert_close(opt.get_slot(table, "m"), ref[1], np.float64, what="m")
    assert_close(opt.get_slot(table, "v"), ref[2], np.float64, what="v")
    if mode == "lazy":  # rows no call listed never moved
        assert np.array_equal(table[12:], table0[12:])


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 8),
    ints=st.lists(st.integers(-512, 512), min_size=3, max_size=3 * 12),
    dtype=st.sampled_from([np.float32, np.float64]),
    amsgrad=st.booleans(),
)
def test_row_wise_n_calls_of_g_are_one_call_of_g(n, ints, dtype, amsgrad):
    # exact multiples of 2**-6 (see test_n_calls_of_g_are_one_call_of_g)
    ints = ints[: len(ints) // 3 * 3]
    g = (np.array(ints, np.float64) / 64).astype(dtype).reshape(-1, 3)
    w = np.linspace(-1, 1, g.size).astype(dtype).reshape(g.shape)
    w1 = w.copy()
    kw = {"amsgrad": amsgrad, "second_moment": "row"}
    acc = numbadam.Adam(0.1, gradient_accumulation_steps=n, **kw)
    one = numbadam.Adam(0.1, **kw)
    for _ in range(n):
        acc.apply_gradients([(g.copy(), w)])
    one.apply_gradients([(g.copy(), w1)])
    assert np.array_equal(w, w1)
    assert np.array_equal(acc.get_slot(w, "v"), one.get_slot(w1, "v"))


def test_row_wise_checkpoint_mid_cycle_resumes_bitwise(tmp_path):
    n = 3
    grads = _grads(24, (9, 5), 2 * n, np.float32)
    w = np.random.default_rng(25).standard_normal((9, 5)).astype(np.float32)
    opt = numbadam.Adam(0.05, second_moment="row", gradient_accumulation_steps=n)
    for g in grads[:4]:
        opt.apply_gradients([(g, w)])
    path = tmp_path / "mid.npz"
    numbadam.save_checkpoint(path, opt, {"w": w})
    ck = numbadam.load_checkpoint(path)
    w2 = ck.variables["w"]
    for g in grads[4:]:
        opt.apply_gradients([(g, w)])
        ck.optimizer.apply_gradients([(g, w2)])
    assert np.array_equal(w, w2)
    for a, b in zip(opt.get_weights(), ck.optimizer.get_weights()):
        assert np.array_equal(a, b)


@pytest.mark.cuda
@pytest.mark.parametrize("kw", [{}, {"clipnorm": 0.4, "amsgrad": True}])
def test_row_wise_cuda_equals_cpu(cuda_backend, kw):
    _check_cuda_equals_cpu((40, 3), (26, 27, 28), second_moment="row", **kw)


# -- the mean rows of an IndexedSlices cycle -----------------------------------


def _twin_mean_rows(indices, values, steps):
    # NumPy: each index's rows added in order of appearance from zero
    # (np.add.at is unbuffered, in order), in the compute dtype, then / steps
    idx = np.concatenate([np.asarray(i, np.int64) for i in indices])
    vals = np.concatenate(values)
    c = np.float32 if vals.dtype == np.float16 else vals.dtype.type
    uniq, inverse = np.unique(idx, return_inverse=True)
    sums = np.zeros((uniq.shape[0],) + vals.shape[1:], c)
    np.add.at(sums, inverse.reshape(-1), vals.astype(c))
    with np.errstate(all="ignore"):
        return uniq, (sums / c(steps)).astype(vals.dtype)


def _cycle_slices(calls, k, rows, tail, dtype, seed):
    rng = np.random.default_rng(seed)
    hot = max(1, rows // 50)  # duplicates within and across calls
    indices = [rng.integers(0, hot, k) for _ in range(calls)]
    values = [
        # magnitudes 1e-3 .. 1e2: a sum in another order shows in the last bits
        np.array(
            rng.standard_normal((k,) + tail) * 10.0 ** rng.integers(-3, 3, (k,) + tail),
            dtype,
        )
        for _ in range(calls)
    ]
    for v in values:
        v.reshape(-1)[::7] = -0.0
    return indices, values


def _check_mean_rows(backend, indices, values, steps, to_device=None):
    want_u, want = _twin_mean_rows(indices, values, steps)
    vals = values if to_device is None else [to_device(v) for v in values]
    uniq, mean = backend.mean_rows(indices, vals, steps)
    mean = backend.to_host(mean)
    assert uniq.dtype == np.int64 and uniq.tolist() == want_u.tolist()
    assert mean.dtype == want.dtype and mean.shape == want.shape
    assert mean.tobytes() == want.tobytes()


@settings(max_examples=40, deadline=None)
@given(
    calls=st.integers(1, 4),
    k=st.integers(0, 70),
    rows=st.integers(1, 3000),
    tail=st.sampled_from([(3,), (2, 2), (0,), ()]),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_mean_rows_sums_in_order_of_appearance(calls, k, rows, tail, dtype, seed):
    from numbadam._dispatch import host_backend

    indices, values = _cycle_slices(calls, k, rows, tail, dtype, seed)
    _check_mean_rows(host_backend(), indices, values, calls + 1)


@pytest.mark.cuda
@settings(
    max_examples=12,
    deadline=None,
    # (the fixtures only check for a device and set launch sizes)
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    calls=st.integers(1, 3),
    k=st.integers(0, 12),
    tail=st.sampled_from([(3,), (2, 2), (0,), ()]),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_cuda_mean_rows_equal_the_cpu_bits(cuda_backend, calls, k, tail, dtype, seed):
    """The CUDA backend sums a cycle's rows on the device, bit for bit as the
    CPU (device values, host indices; and host values, copied over)."""
    from numba import cuda

    from numbadam._backend_cuda import CUDABackend

    indices, values = _cycle_slices(calls, k, 300, tail, dtype, seed)
    backend = CUDABackend()
    _check_mean_rows(backend, indices, values, calls + 1, cuda.to_device)
    _check_mean_rows(backend, indices, values, calls + 1)


@pytest.mark.cuda
def test_cuda_sparse_accumulation_keeps_values_on_the_device(cuda_backend):
    """An accumulating call keeps a CUDA table's values as a device copy (the
    caller may reuse its buffer), and the applying call's mean rows are made on
    the device: the cycle equals the CPU's bit for bit."""
    from numba import cuda

    from numbadam._backend_cuda import CUDABackend

    rng = np.random.default_rng(5)
    t = rng.standard_normal((10, 3)).astype(np.float32)
    cpu = numbadam.Adam(0.1, gradient_accumulation_steps=3)
    gpu = numbadam.Adam(0.1, gradient_accumulation_steps=3)
    tc, td = t.copy(), cuda.to_device(t)
    buf = cuda.device_array((4, 3), np.float32)  # one buffer, refilled per call
    made = []
    real = CUDABackend.mean_rows

    def spy(self, indices, values, steps):
        made.append([type(v).__module__.split(".")[0] for v in values])
        return real(self, indices, values, steps)

    CUDABackend.mean_rows = spy
    try:
        for _ in range(6):  # two cycles of 3 calls
            idx = rng.integers(0, 10, 4)
            vals = rng.standard_normal((4, 3)).astype(np.float32)
            cpu.apply_gradients([(IndexedSlices(vals, idx, (10, 3)), tc)])
            buf.copy_to_device(vals)
            grad = IndexedSlices(buf, cuda.to_device(idx), (10, 3))
            gpu.apply_gradients([(grad, td)])
            buf.copy_to_device(np.full((4, 3), np.nan, np.float32))  # reused
    finally:
        CUDABackend.mean_rows = real
    assert len(made) == 2 and all(len(m) == 3 for m in made)
    assert not any("numpy" in m for m in made)  # no host values
    assert td.copy_to_host().tobytes() == tc.tobytes()
    for a, b in zip(gpu.get_weights(), cpu.get_weights()):
        assert a.tobytes() == b.tobytes()
