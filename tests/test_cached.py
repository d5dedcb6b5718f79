"""The cached plan of one dense pair (numbadam._cached, the CPU backend's
DensePlan): a one-pair call whose variable stepped before launches the
kernel with the arguments kept from the general path.

It must be invisible: the same bits as the general path (an optimizer with
the cached launches switched off, on copies) for every dtype, shape and
hyperparameter kind; every call still validated (a bad call raises the
general path's error with nothing changed); and every call that does not
qualify (a cast, a strided gradient, a view of written memory, a feature
switched on later) falls back to the general path.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numbadam
from numbadam import _config, schedules


def _pair_of_optimizers(**kw):
    fast = numbadam.Adam(**kw)
    slow = numbadam.Adam(**kw)
    slow._cached_launches = False  # the reference: the general path only
    return fast, slow


def _plan(opt, var):
    entry = opt._table.by_id.get(id(var))
    return None if entry is None else entry.plan


def _assert_same(va, vb, a, b):
    assert va.dtype == vb.dtype and va.tobytes() == vb.tobytes()
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()


def _warm(shape=(10,), dtype=np.float32, steps=3, seed=5, **kw):
    fast, slow = _pair_of_optimizers(**kw)
    rng = np.random.default_rng(seed)
    va = rng.standard_normal(shape).astype(dtype)
    vb = va.copy()
    for _ in range(steps):
        g = rng.standard_normal(shape).astype(dtype)
        fast.apply_gradients([(g, va)])
        slow.apply_gradients([(g.copy(), vb)])
    assert _plan(fast, va) is not None, "no plan was made"
    return fast, slow, va, vb, rng


_HYPERS = {
    "constants": {"learning_rate": 0.01},
    "amsgrad": {"learning_rate": 0.02, "amsgrad": True},
    "decay": {"learning_rate": 0.05, "decay": 0.1},
    "float64": {"learning_rate": np.float64(0.01), "beta_2": np.float64(0.99)},
    "callable": {"learning_rate": lambda: 0.003, "epsilon": lambda: 1e-5},
    "schedule": {
        "learning_rate": schedules.ExponentialDecay(0.01, 3, 0.5, staircase=True)
    },
}


@settings(deadline=None, max_examples=60)
@given(
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    shape=st.sampled_from([(), (1,), (7,), (3, 5), (2, 3, 4), (300,)]),
    hypers=st.sampled_from(sorted(_HYPERS)),
    steps=st.integers(2, 9),
    seed=st.integers(0, 2**16),
)
def test_same_bits_as_the_general_path(dtype, shape, hypers, steps, seed):
    fast, slow, va, vb, _ = _warm(shape, dtype, steps, seed, **_HYPERS[hypers])
    assert _plan(slow, vb) is None
    _assert_same(va, vb, fast, slow)
    assert int(fast.iterations) == steps


def test_large_variables_take_the_parallel_kernel_through_the_plan(monkeypatch):
    monkeypatch.setattr(_config, "CPU_SERIAL_MAX", 64)
    monkeypatch.setattr(_config, "CPU_BLOCK", 32)
    fast, slow, va, vb, rng = _warm(shape=(50, 7), steps=5)
    _assert_same(va, vb, fast, slow)


def test_rotating_variables_each_keep_a_plan():
    fast, slow = _pair_of_optimizers(learning_rate=0.01)
    rng = np.random.default_rng(6)
    va = [rng.standard_normal(20).astype(np.float32) for _ in range(5)]
    vb = [v.copy() for v in va]
    for step in range(12):
        i = step % 5
        g = rng.standard_normal(20).astype(np.float32)
        fast.apply_gradients([(g, va[i])])
        slow.apply_gradients([(g.copy(), vb[i])])
    assert all(_plan(fast, v) is not None for v in va)
    for a, b in zip(va, vb):
        assert a.tobytes() == b.tobytes()
    _assert_same(va[0], vb[0], fast, slow)


def _spoil_slot(attr, value):
    def spoil(opt, var, g):
        setattr(opt.get_slot(var, "m"), attr, value)
        return g

    return spoil


@pytest.mark.parametrize(
    "spoil, exc, match",
    [
        (lambda o, v, g: np.zeros(3, np.float32), ValueError, "shape"),
        (lambda o, v, g: g.astype(np.int32), TypeError, "dtype"),
        (lambda o, v, g: "x", TypeError, "floating dtype"),
        (lambda o, v, g: None, ValueError, "No gradients"),
        (lambda o, v, g: (setattr(v.flags, "writeable", False), g)[1],
         ValueError, "read-only"),
        (lambda o, v, g: (setattr(o.get_slot(v, "v").flags, "writeable", False), g)[1],
         ValueError, "read-only"),
        (_spoil_slot("shape", (2, 5)), ValueError, "shape"),
    ],
    ids=["shape", "int", "not-an-array", "none", "read-only-var", "read-only-slot",
         "slot-reshaped"],
)  # fmt: skip
def test_a_bad_call_is_refused_with_nothing_changed(spoil, exc, match):
    fast, _, va, _, rng = _warm()
    g = spoil(fast, va, rng.standard_normal(10).astype(np.float32))
    before = va.copy(), [w.copy() for w in fast.get_weights()]
    with pytest.raises(exc, match=match):
        fast.apply_gradients([(g, va)])
    assert va.tobytes() == before[0].tobytes()
    for a, b in zip(fast.get_weights(), before[1]):
        assert a.tobytes() == b.tobytes()


def test_a_bad_knob_is_refused(monkeypatch):
    fast, _, va, _, rng = _warm()
    monkeypatch.setattr(_config, "NORM_CHUNKS", 0)  # (unused by this step)
    with pytest.raises(ValueError, match="NORM_CHUNKS"):
        fast.apply_gradients([(rng.standard_normal(10).astype(np.float32), va)])
    assert int(fast.iterations) == 3


def test_a_raising_hyperparameter_changes_nothing():
    fast, _, va, _, rng = _warm()
    before = va.copy()

    def bad():
        raise RuntimeError("no rate today")

    fast.learning_rate = bad
    with pytest.raises(RuntimeError, match="no rate"):
        fast.apply_gradients([(rng.standard_normal(10).astype(np.float32), va)])
    assert va.tobytes() == before.tobytes() and int(fast.iterations) == 3


def test_a_callable_is_called_once_per_step():
    fast, _, va, _, rng = _warm()
    calls = []
    fast.learning_rate = lambda: calls.append(1) or 0.01
    for _ in range(4):
        fast.apply_gradients([(rng.standard_normal(10).astype(np.float32), va)])
    assert len(calls) == 4


@pytest.mark.parametrize(
    "make",
    [
        lambda g, v, o: g.astype(np.float64),  # cast
        lambda g, v, o: np.repeat(g, 2)[::2],  # strided
        lambda g, v, o: v[...],  # a view of the variable: as a copy
        lambda g, v, o: o.get_slot(v, "m")[...],  # a view of a slot: as a copy
        lambda g, v, o: np.asarray(g).view(np.ndarray).reshape(10)[:, None][:, 0],
    ],
    ids=["cast", "strided", "view-of-variable", "view-of-slot", "view"],
)
def test_calls_that_do_not_qualify_fall_back_with_the_same_bits(make):
    fast, slow, va, vb, rng = _warm()
    for _ in range(2):
        g = rng.standard_normal(10).astype(np.float32)
        fast.apply_gradients([(make(g, va, fast), va)])
        gb = make(g, vb, slow)
        slow.apply_gradients([(np.array(gb), vb)])  # (a copy taken first)
        _assert_same(va, vb, fast, slow)


@pytest.mark.parametrize(
    "switch",
    [
        lambda o: setattr(o, "clipnorm", 0.1),
        lambda o: setattr(o, "clipvalue", 0.05),
        lambda o: setattr(o, "global_clipnorm", 0.1),
        lambda o: setattr(o, "amsgrad", True),
        lambda o: setattr(o, "learning_rate", 0.5),
        lambda o: setattr(o, "beta_1", lambda: 0.5),
        lambda o: setattr(o, "epsilon", 0.1),
    ],
    ids=["clipnorm", "clipvalue", "global_clipnorm", "amsgrad", "lr", "beta_1",
         "epsilon"],
)  # fmt: skip
def test_a_setting_changed_after_the_plan_is_seen(switch):
    fast, slow, va, vb, rng = _warm()
    switch(fast)
    switch(slow)
    for _ in range(3):
        g = rng.standard_normal(10).astype(np.float32) * 10
        fast.apply_gradients([(g, va)])
        slow.apply_gradients([(g.copy(), vb)])
    _assert_same(va, vb, fast, slow)


def test_no_plan_for_what_it_does_not_launch(tmp_path):
    mapped = np.memmap(tmp_path / "w.dat", np.float32, "w+", shape=(10,))
    rng = np.random.default_rng(7)
    for kw, var in [
        ({"weight_decay": 0.1}, np.ones(10, np.float32)),
        ({"use_ema": True}, np.ones(10, np.float32)),
        ({"gradient_accumulation_steps": 2}, np.ones(10, np.float32)),
        ({}, np.ones((10, 2), np.float32)[:, 0]),  # strided: staged
        ({}, mapped),  # (an ndarray subclass)
    ]:
        opt = numbadam.Adam(**kw)
        for _ in range(3):
            opt.apply_gradients([(rng.standard_normal(10).astype(np.float32), var)])
        assert _plan(opt, var) is None, kw


def test_a_gradient_viewing_the_variable_shifted_acts_as_a_copy():
    # the variables are rows of one array; the gradient is a window of it
    # starting one element before the stepped row (read after written)
    fast, slow = _pair_of_optimizers(learning_rate=0.1)
    rng = np.random.default_rng(8)
    bufs = [rng.standard_normal((2, 10)).astype(np.float32)]
    bufs.append(bufs[0].copy())
    opts = [fast, slow]
    rows = [(buf[0], buf[1]) for buf in bufs]  # (the same view objects)
    for _ in range(3):
        g = rng.standard_normal(10).astype(np.float32)
        for opt, (r0, r1) in zip(opts, rows):
            opt.apply_gradients([(g.copy(), r0)])
            opt.apply_gradients([(g.copy(), r1)])
    assert _plan(fast, rows[0][1]) is not None
    for opt, (_, r1), buf in zip(opts, rows, bufs):
        g = buf.reshape(-1)[9:19]
        g = np.array(g) if opt is slow else g
        opt.apply_gradients([(g, r1)])
    _assert_same(rows[0][1], rows[1][1], fast, slow)
