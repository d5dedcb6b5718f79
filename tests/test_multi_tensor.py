"""The multi-tensor path: a list of the same small dense variables, call after
call, is stepped by one launch (numbadam._backend_cpu.MultiWork).

It must be invisible: the same bits as the per-variable path (an optimizer with
the path switched off, on copies), every pair still validated on every call,
nothing changed by a bad call, and a fallback to the general path whenever a
call does not qualify.
"""

from __future__ import annotations

import numpy as np
import pytest

import numbadam
from numbadam import _config

SHAPES = [(3,), (10, 4), (), (7,), (2, 2, 2)] * 3  # 15 variables (>= MULTI_MIN)


def _pair_of_optimizers(**kw):
    fast = numbadam.Adam(**kw)
    slow = numbadam.Adam(**kw)
    slow._cached_launches = False  # the reference: every pair through the general path
    return fast, slow


def _variables(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def _grads(variables, rng):
    return [rng.standard_normal(v.shape).astype(v.dtype) for v in variables]


def _assert_same(a_vars, b_vars, a, b):
    for x, y in zip(a_vars, b_vars):
        assert x.dtype == y.dtype and x.tobytes() == y.tobytes()
    wa, wb = a.get_weights(), b.get_weights()
    assert len(wa) == len(wb)
    for x, y in zip(wa, wb):
        assert x.tobytes() == y.tobytes()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize(
    "kw",
    [{}, {"amsgrad": True}, {"clipvalue": 0.3}, {"decay": 0.1, "learning_rate": 0.05}],
)
def test_same_bits_as_the_per_variable_path(dtype, kw):
    fast, slow = _pair_of_optimizers(**kw)
    va, vb = _variables(dtype), _variables(dtype)
    rng = np.random.default_rng(1)
    for _ in range(6):
        gs = _grads(va, rng)
        fast.apply_gradients(list(zip(gs, va)))
        slow.apply_gradients(list(zip([g.copy() for g in gs], vb)))
    assert fast._multi is not None, "the path was not taken"
    assert slow._multi is None, "the reference took it too"
    _assert_same(va, vb, fast, slow)
    assert int(fast.iterations) == 6


def _warm(kw=None):
    fast, slow = _pair_of_optimizers(**(kw or {}))
    va, vb = _variables(np.float32), _variables(np.float32)
    rng = np.random.default_rng(2)
    for _ in range(3):
        gs = _grads(va, rng)
        fast.apply_gradients(list(zip(gs, va)))
        slow.apply_gradients(list(zip(gs, vb)))
    assert fast._multi is not None
    return fast, slow, va, vb, rng


def _snapshot(opt, variables):
    return [v.copy() for v in variables], [w.copy() for w in opt.get_weights()]


def _unchanged(opt, variables, snap):
    vs, ws = snap
    assert all(a.tobytes() == b.tobytes() for a, b in zip(variables, vs))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(opt.get_weights(), ws))


@pytest.mark.parametrize(
    "spoil, exc",
    [
        (lambda gs, vs: gs.__setitem__(4, np.zeros(3, np.float32)), ValueError),
        (lambda gs, vs: gs.__setitem__(2, "x"), TypeError),
        (lambda gs, vs: gs.__setitem__(0, np.zeros(3, np.int32)), TypeError),
        (lambda gs, vs: setattr(vs[5].flags, "writeable", False), ValueError),
    ],
    ids=["shape", "not-an-array", "int-gradient", "read-only-variable"],
)
def test_a_bad_call_is_refused_with_nothing_changed(spoil, exc):
    fast, _, va, _, rng = _warm()
    gs = _grads(va, rng)
    spoil(gs, va)
    snap = _snapshot(fast, va)
    with pytest.raises(exc):
        fast.apply_gradients(list(zip(gs, va)))
    _unchanged(fast, va, snap)
    va[5].flags.writeable = True
    fast.apply_gradients(list(zip(_grads(va, rng), va)))  # still works
    assert int(fast.iterations) == 4


def test_a_read_only_slot_is_refused():
    fast, _, va, _, rng = _warm()
    m = fast.get_slot(va[3], "m")
    m.flags.writeable = False
    snap = _snapshot(fast, va)
    with pytest.raises(ValueError, match="read-only"):
        fast.apply_gradients(list(zip(_grads(va, rng), va)))
    _unchanged(fast, va, snap)


def test_calls_that_do_not_qualify_fall_back_with_the_same_bits():
    fast, slow, va, vb, rng = _warm()
    # a float64 gradient for a float32 variable (cast), a non-contiguous
    # gradient, a gradient viewing another variable's memory, another order
    for make in (
        lambda gs: [g.astype(np.float64) if i == 1 else g for i, g in enumerate(gs)],
        lambda gs: [np.asfortranarray(g) if g.ndim > 1 else g for g in gs],
        lambda gs: gs,
    ):
        gs = make(_grads(va, rng))
        fast.apply_gradients(list(zip(gs, va)))
        slow.apply_gradients(list(zip([np.array(g) for g in gs], vb)))
        _assert_same(va, vb, fast, slow)
    order = list(range(len(va)))[::-1]
    gs = _grads(va, rng)
    fast.apply_gradients([(gs[i], va[i]) for i in order])
    slow.apply_gradients([(gs[i], vb[i]) for i in order])
    _assert_same(va, vb, fast, slow)


@pytest.mark.parametrize("other", [False, True], ids=["own", "another"])
def test_gradient_viewing_a_variable_takes_the_general_path(other):
    # A gradient that is a view of a variable (its own, or another one of the
    # call) must not be read while the launch writes: the call takes the
    # general path, whose result the reference optimizer gives too.
    fast, slow, va, vb, rng = _warm()
    src = 1
    gs = _grads(va, rng)
    if other:  # variable 3 is (7,), variable 13 (2, 2, 2)
        gs[3] = va[13].reshape(-1)[:7]
    else:
        gs[1] = va[src].reshape(-1)[:40].reshape(10, 4)
    gsb = list(gs)
    if other:
        gsb[3] = vb[13].reshape(-1)[:7]
    else:
        gsb[1] = vb[src].reshape(-1)[:40].reshape(10, 4)
    fast.apply_gradients(list(zip(gs, va)))
    slow.apply_gradients(list(zip(gsb, vb)))
    _assert_same(va, vb, fast, slow)


def test_clipnorm_and_large_variables_take_the_general_path(monkeypatch):
    fast, slow = _pair_of_optimizers(clipnorm=0.5)
    va, vb = _variables(np.float32), _variables(np.float32)
    rng = np.random.default_rng(3)
    for _ in range(3):
        gs = _grads(va, rng)
        fast.apply_gradients(list(zip(gs, va)))
        slow.apply_gradients(list(zip(gs, vb)))
    _assert_same(va, vb, fast, slow)
    monkeypatch.setattr(_config, "CPU_SERIAL_MAX", 20)  # (10, 4) is now "large"
    opt = numbadam.Adam()
    vs = _variables(np.float32)
    for _ in range(3):
        opt.apply_gradients(list(zip(_grads(vs, rng), vs)))
    assert opt._multi is None


def test_amsgrad_switched_on_midway():
    fast, slow, va, vb, rng = _warm()
    fast.amsgrad = slow.amsgrad = True
    for _ in range(4):
        gs = _grads(va, rng)
        fast.apply_gradients(list(zip(gs, va)))
        slow.apply_gradients(list(zip(gs, vb)))
    _assert_same(va, vb, fast, slow)
    assert fast._multi is not None and fast._multi[1].amsgrad


def test_signatures_do_not_grow():
    from numbadam.kernels import multi_cpu

    fast, _, va, _, rng = _warm()
    before = len(multi_cpu.adam_dense_multi_cpu.signatures)
    for _ in range(3):
        fast.apply_gradients(list(zip(_grads(va, rng), va)))
    assert len(multi_cpu.adam_dense_multi_cpu.signatures) == before
