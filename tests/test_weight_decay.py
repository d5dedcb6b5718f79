"""Decoupled weight decay (Keras 3's ``weight_decay``) and AdamW.

Compared with tests/reference.py (``var - var * wd * lr_t`` before the Adam
update, in float64), and bitwise with the paths it must not disturb: no decay
is plain Adam, a sparse step is the dense step of the zero-filled gradient,
lazy steps leave untouched rows alone, CUDA equals the CPU.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numbadam
from numbadam import IndexedSlices
from tests.helpers import (
    FLOAT_DTYPES,
    assert_bitwise,
    assert_close,
    assert_state,
    oracle_state,
    to_device,
    to_host,
)
from tests.reference import adam_dense_ref, adam_sparse_ref, clip_ref

HP = dict(lr=0.05, beta_1=0.9, beta_2=0.999, epsilon=1e-7)


def _opt(wd=0.1, **kw):
    return numbadam.Adam(learning_rate=HP["lr"], weight_decay=wd, **kw)


def _expected(before, grad, it, wd, decay=0.0, lr=HP["lr"], lazy=False):
    hp = dict(HP, lr=lr, decay=decay, vhat=before["vhat"], weight_decay=wd)
    if isinstance(grad, IndexedSlices):
        idx = np.asarray(grad.indices)
        vals = np.asarray(grad.values, np.float64)
        x, m, v, h = adam_sparse_ref(
            before["var"], idx, vals, before["m"], before["v"], it + 1, **hp
        )
        if lazy:  # only the rows with a gradient change
            rows = np.zeros(before["var"].shape[0], bool)
            rows[idx] = True
            x = np.where(rows[:, None], x, before["var"])
            m = np.where(rows[:, None], m, before["m"])
            v = np.where(rows[:, None], v, before["v"])
            if h is not None:
                h = np.where(rows[:, None], h, before["vhat"])
        return {"var": x, "m": m, "v": v, "vhat": h, "g": None}
    g = np.asarray(grad, np.float64)
    x, m, v, h = adam_dense_ref(before["var"], g, before["m"], before["v"], it + 1, **hp)
    return {"var": x, "m": m, "v": v, "vhat": h, "g": g}


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dense_matches_reference(dtype, amsgrad):
    rng = np.random.default_rng(1)
    var = rng.standard_normal((40, 3)).astype(dtype)
    opt = _opt(0.2, amsgrad=amsgrad, decay=0.01)
    for it in range(4):
        g = rng.standard_normal(var.shape).astype(dtype)
        before = oracle_state(opt, var, amsgrad)
        want = _expected(before, g.astype(np.float64), it, 0.2, decay=0.01)
        opt.apply_gradients([(g, var)])
        assert_state(opt, var, before, want, dtype, f"step {it + 1}")


@pytest.mark.parametrize("lazy", [False, True], ids=["tf-rule", "lazy"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sparse_matches_reference(dtype, amsgrad, lazy):
    rng = np.random.default_rng(2)
    var = rng.standard_normal((30, 4)).astype(dtype)
    mode = "lazy" if lazy else "dense"
    opt = _opt(0.3, amsgrad=amsgrad, sparse_mode=mode)
    for it in range(3):
        idx = rng.integers(0, 15, 8)  # duplicates; rows 15.. never touched
        vals = rng.standard_normal((8, 4)).astype(dtype)
        before = oracle_state(opt, var, amsgrad)
        untouched = var[15:].copy()
        grad = IndexedSlices(vals, idx, var.shape)
        want = _expected(before, grad, it, 0.3, lazy=lazy)
        opt.apply_gradients([(grad, var)])
        assert_state(opt, var, before, want, dtype, f"step {it + 1}")
        if lazy:
            assert_bitwise(var[15:], untouched, "untouched rows")
        elif it == 0:
            assert not np.array_equal(var[15:], untouched)  # decayed too


def test_schedule_learning_rate_scales_the_decay():
    sched = numbadam.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    opt = numbadam.Adam(learning_rate=sched, weight_decay=0.25)
    var = np.full(4, 2.0)
    for it in range(3):
        lr = 0.1 * 0.5**it
        before = oracle_state(opt, var, False)
        want = _expected(before, np.zeros(4), it, 0.25, lr=lr)
        opt.apply_gradients([(np.zeros(4), var)])
        assert_close(var, want["var"], np.float64, 2.0, f"step {it + 1}")


@settings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from(FLOAT_DTYPES),
    amsgrad=st.booleans(),
    mode=st.sampled_from(["dense", "lazy"]),
    off=st.sampled_from([None, 0, 0.0]),
    seed=st.integers(0, 2**16),
)
def test_no_weight_decay_is_plain_adam(dtype, amsgrad, mode, off, seed):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((12, 3)).astype(dtype)
    b = a.copy()
    oa = numbadam.Adam(0.1, amsgrad=amsgrad, sparse_mode=mode, weight_decay=off)
    ob = numbadam.Adam(0.1, amsgrad=amsgrad, sparse_mode=mode)
    for _ in range(2):
        g = rng.standard_normal(a.shape).astype(dtype)
        sp = IndexedSlices(g[:5], rng.integers(0, 12, 5), a.shape)
        for grad in (g, sp):
            oa.apply_gradients([(grad, a)])
            ob.apply_gradients([(grad, b)])
    assert_bitwise(a, b, "var")
    for x, y in zip(oa.get_weights(), ob.get_weights()):
        assert_bitwise(x, y, "weights")


@settings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from(FLOAT_DTYPES),
    amsgrad=st.booleans(),
    wd=st.sampled_from([0.004, 0.1, 1.5]),
    seed=st.integers(0, 2**16),
)
def test_sparse_equals_dense_zero_filled(dtype, amsgrad, wd, seed):
    # TF's rule under weight decay: the dense step of the summed, zero-filled
    # gradient, bit for bit (rows with m = v = 0 are decayed, not skipped)
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((600, 2)).astype(dtype)  # > one skip chunk of zeros
    b = a.copy()
    oa, ob = _opt(wd, amsgrad=amsgrad), _opt(wd, amsgrad=amsgrad)
    for _ in range(2):
        # unique rows: the summed gradient is then exact in float16 too
        idx = rng.choice(20, 6, replace=False)
        vals = rng.standard_normal((6, 2)).astype(dtype)
        dense = np.zeros(a.shape, np.float32 if dtype == np.float16 else dtype)
        np.add.at(dense, idx, vals.astype(dense.dtype))
        oa.apply_gradients([(IndexedSlices(vals, idx, a.shape), a)])
        ob.apply_gradients([(dense.astype(dtype), b)])
    assert_bitwise(a, b, "var")
    for x, y in zip(oa.get_weights(), ob.get_weights()):
        assert_bitwise(x, y, "weights")


def test_float16_decays_in_float32():
    # one rounding on store: (x - (x * wd) * lr) and the Adam step in float32
    x = np.array([1.0, -3.0, 100.0], np.float16)
    opt = numbadam.Adam(learning_rate=0.01, weight_decay=0.3)
    opt.apply_gradients([(np.zeros(3, np.float16), x.copy())])
    f = np.float32
    x32 = x.astype(f)
    want = (x32 - (x32 * f(0.3)) * f(0.01)).astype(np.float16)  # m = v = 0: no step
    y = x.copy()
    numbadam.Adam(learning_rate=0.01, weight_decay=0.3).apply_gradients(
        [(np.zeros(3, np.float16), y)]
    )
    assert_bitwise(y, want, "float16")


def test_adamw_defaults_and_config():
    opt = numbadam.AdamW()
    assert opt.weight_decay == 0.004 and opt.name == "AdamW"
    cfg = opt.get_config()
    assert cfg["weight_decay"] == 0.004 and cfg["learning_rate"] == 0.001
    assert cfg["beta_1"] == 0.9 and cfg["epsilon"] == 1e-7 and not cfg["amsgrad"]
    again = numbadam.AdamW.from_config(cfg)
    assert again.get_config() == cfg
    assert "weight_decay" not in numbadam.Adam().get_config()
    cfg = numbadam.Adam(weight_decay=0.5).get_config()
    assert numbadam.Adam.from_config(cfg).weight_decay == 0.5
    # the same steps as Adam with the same weight_decay
    a, b = np.ones(5, np.float32), np.ones(5, np.float32)
    g = np.linspace(-1, 1, 5).astype(np.float32)
    numbadam.AdamW().apply_gradients([(g, a)])
    numbadam.Adam(weight_decay=0.004).apply_gradients([(g, b)])
    assert_bitwise(a, b)


@pytest.mark.parametrize("bad", [-0.1, float("nan"), float("inf"), -float("inf")])
def test_bad_weight_decay_raises(bad):
    with pytest.raises(ValueError, match="weight_decay"):
        numbadam.Adam(weight_decay=bad)
    with pytest.raises(ValueError, match="weight_decay"):
        numbadam.AdamW(weight_decay=bad)
    opt = numbadam.Adam()
    with pytest.raises(ValueError, match="weight_decay"):
        opt.weight_decay = bad
    assert opt.weight_decay is None


def test_bad_weight_decay_type():
    for bad in ("0.1", True, [0.1]):
        with pytest.raises(TypeError, match="weight_decay"):
            numbadam.Adam(weight_decay=bad)


def test_exclude_from_weight_decay():
    w, b = np.full(3, 2.0), np.full(3, 2.0)
    opt = numbadam.AdamW(learning_rate=0.1, weight_decay=0.5)
    opt.exclude_from_weight_decay(var_list=[b[:]])  # a new view: the same memory
    z = np.zeros(3)
    opt.apply_gradients([(z, w), (z, b)])
    assert_bitwise(b, np.full(3, 2.0), "excluded")
    assert_close(w, 2.0 - 2.0 * 0.5 * float(np.float32(0.1)) + 0 * w, np.float64)
    with pytest.raises(ValueError, match="before"):
        opt.exclude_from_weight_decay(var_list=[w])
    with pytest.raises(TypeError, match="variables="):
        numbadam.AdamW().exclude_from_weight_decay(var_names=["bias"])


def _decayed(opt, params):
    """Which of ``params`` (name -> array of 2.0) one step with zero
    gradients decays."""
    z = [(np.zeros_like(v), v) for v in params.values()]
    opt.apply_gradients(z)
    return {k: bool((v != 2.0).all()) for k, v in params.items()}


def test_exclude_by_var_names_searches_the_names_of_variables():
    names = ("dense/kernel", "dense/bias", "layer_norm/gamma", "embedding")
    params = {n: np.full(3, 2.0) for n in names}
    opt = numbadam.AdamW(learning_rate=0.1, weight_decay=0.5)
    # Keras 3: "|".join(var_names), re.search in each name
    opt.exclude_from_weight_decay(var_names=["bias", "norm"], variables=params)
    assert _decayed(opt, params) == {
        "dense/kernel": True, "dense/bias": False,
        "layer_norm/gamma": False, "embedding": True,
    }  # fmt: skip
    # regular expressions, and var_list together with var_names
    params = {n: np.full(2, 2.0) for n in ("a/kernel", "b/kernel_1", "c/bias")}
    extra = np.full(2, 2.0)
    opt = numbadam.AdamW(learning_rate=0.1, weight_decay=0.5)
    opt.exclude_from_weight_decay([extra], [r"kernel$"], variables=params)
    got = _decayed(opt, {**params, "extra": extra})
    assert got == {"a/kernel": False, "b/kernel_1": True, "c/bias": True,
                   "extra": False}  # fmt: skip


def test_each_exclusion_call_replaces_the_last_as_in_keras():
    w, b = np.full(2, 2.0), np.full(2, 2.0)
    opt = numbadam.AdamW(learning_rate=0.1, weight_decay=0.5)
    opt.exclude_from_weight_decay(var_list=[w])
    opt.exclude_from_weight_decay(var_list=[b])
    assert _decayed(opt, {"w": w, "b": b}) == {"w": True, "b": False}


@pytest.mark.parametrize(
    "args, kw, err, match",
    [
        ((None, "bias"), {"variables": {}}, TypeError, "list of strings"),
        ((None, [3]), {"variables": {}}, TypeError, "not a string"),
        ((None, ["("]), {"variables": {"x": np.ones(1)}}, ValueError, "regular"),
        ((None, ["b"]), {"variables": [np.ones(1)]}, TypeError, "mapping"),
        ((None, ["b"]), {"variables": {"b": [1.0]}}, TypeError, r"variables\['b'\]"),
        ((None, ["b"]), {"variables": {1: np.ones(1)}}, TypeError, "key 1"),
        ((None, None), {"variables": {"b": np.ones(1)}}, TypeError, "pass var_names"),
        (([[1.0]],), {}, TypeError, r"var_list\[0\]"),
    ],
)
def test_bad_exclusions_raise_and_keep_the_previous_ones(args, kw, err, match):
    w, b = np.full(2, 2.0), np.full(2, 2.0)
    opt = numbadam.AdamW(learning_rate=0.1, weight_decay=0.5)
    opt.exclude_from_weight_decay(var_list=[b])
    with pytest.raises(err, match=match):
        opt.exclude_from_weight_decay(*args, **kw)
    assert _decayed(opt, {"w": w, "b": b}) == {"w": True, "b": False}


@pytest.mark.parametrize("excluded", ["none", "some", "all"])
def test_exclusion_in_a_parameter_buffer(excluded):
    buf = numbadam.ParameterBuffer([(4,), (2, 3)], np.float64)
    for p in buf.params:
        p[...] = 1.5
    refs = [np.full(p.shape, 1.5) for p in buf.params]
    ex_buf = {"none": [], "some": [buf.params[1]], "all": list(buf.params)}[excluded]
    ex_ref = {"none": [], "some": [refs[1]], "all": refs}[excluded]
    fast = numbadam.AdamW(learning_rate=0.1, weight_decay=0.2)
    slow = numbadam.AdamW(learning_rate=0.1, weight_decay=0.2)
    fast.exclude_from_weight_decay(var_list=ex_buf)
    slow.exclude_from_weight_decay(var_list=ex_ref)
    rng = np.random.default_rng(0)
    for _ in range(3):
        gs = [rng.standard_normal(p.shape) for p in buf.params]
        for bg, g in zip(buf.grads, gs):
            bg[...] = g
        fast.apply_gradients(buf.grads_and_vars())
        slow.apply_gradients(list(zip(gs, refs)))
    for p, r in zip(buf.params, refs):
        assert_bitwise(p, r)


def test_multi_tensor_path_with_decay():
    shapes = [(3,), (10, 4), (), (7,), (2, 2, 2)] * 3
    rng = np.random.default_rng(5)
    va = [rng.standard_normal(s) for s in shapes]
    vb = [x.copy() for x in va]
    fast = numbadam.AdamW(learning_rate=0.01, weight_decay=0.1, decay=0.01)
    slow = numbadam.AdamW(learning_rate=0.01, weight_decay=0.1, decay=0.01)
    slow._cached_launches = False
    for _ in range(5):
        gs = [rng.standard_normal(s) for s in shapes]
        fast.apply_gradients(list(zip(gs, va)))
        slow.apply_gradients(list(zip(gs, vb)))
    assert fast._multi is not None  # the one-launch path ran
    assert slow._multi is None  # (and the reference's did not)
    for x, y in zip(va, vb):
        assert_bitwise(x, y)
    for x, y in zip(fast.get_weights(), slow.get_weights()):
        assert_bitwise(x, y)


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["dense-grad", "dense", "lazy"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_cuda_equals_cpu(dtype, amsgrad, mode):
    pytest.importorskip("numba.cuda")
    rng = np.random.default_rng(7)
    host = rng.standard_normal((20, 3)).astype(dtype)
    dev = to_device(host.copy(), "cuda")
    sm = "lazy" if mode == "lazy" else "dense"
    oc = _opt(0.2, amsgrad=amsgrad, sparse_mode=sm, decay=0.01)
    og = _opt(0.2, amsgrad=amsgrad, sparse_mode=sm, decay=0.01)
    for _ in range(2):
        if mode == "dense-grad":
            g = rng.standard_normal(host.shape).astype(dtype)
            gc, gg = g, to_device(g, "cuda")
        else:
            idx = rng.integers(0, 8, 5)
            vals = rng.standard_normal((5, 3)).astype(dtype)
            gc = IndexedSlices(vals, idx, host.shape)
            gg = IndexedSlices(to_device(vals, "cuda"), idx, host.shape)
        oc.apply_gradients([(gc, host)])
        og.apply_gradients([(gg, dev)])
    assert_bitwise(to_host(dev), host, "var")
    for x, y in zip(og.get_weights(), oc.get_weights()):
        assert_bitwise(to_host(x), y, "weights")


_ = clip_ref  # (the reference's clipping; these tests do not clip)
