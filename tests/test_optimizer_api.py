"""The OptimizerV2 contract: iterations, weights, slots, config, loss-driven API."""

from __future__ import annotations

import json
import warnings
import zlib

import numpy as np
import pytest
from helpers import (
    assert_bitwise,
    assert_close,
    assert_state,
    assert_unchanged,
    oracle_state,
    oracle_step,
    snapshot,
    to_device,
    to_host,
)
from reference import clip_ref, hyper32

import numbadam
from numbadam import IndexedSlices, schedules


def _rng(*key):
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def _vars(rng, backend, *shapes_dtypes):
    return [
        to_device(np.array(rng.standard_normal(s), dtype=dt), backend)
        for s, dt in shapes_dtypes
    ]


def _grads(rng, backend, variables):
    return [
        to_device(np.array(rng.standard_normal(v.shape), dtype=v.dtype), backend)
        for v in variables
    ]


# ---------------------------------------------------------------------------
# iterations
# ---------------------------------------------------------------------------


def test_iterations_created_on_first_read(backend):
    opt = numbadam.Adam()
    assert opt.weights == []
    it = opt.iterations
    assert isinstance(it, np.ndarray)
    assert it.shape == () and it.dtype == np.int64
    assert int(it) == 0
    assert len(opt.weights) == 1 and opt.weights[0] is it
    rng = _rng("iterations")
    (w,) = _vars(rng, backend, ((4,), np.float32))
    for k in range(1, 4):
        out = opt.apply_gradients(zip(_grads(rng, backend, [w]), [w]))
        assert out is opt.iterations is it  # updated in place
        assert int(opt.iterations) == k
    assert opt.weights[0] is it
    assert opt.get_weights()[0].dtype == np.int64 and int(opt.get_weights()[0]) == 3


def test_iterations_created_by_first_step():
    opt = numbadam.Adam()
    w = np.zeros(3, np.float32)
    opt.apply_gradients([(np.ones(3, np.float32), w)])
    assert len(opt.weights) == 3
    assert opt.weights[0] is opt.iterations and int(opt.iterations) == 1


def test_iterations_assignment_sets_bias_correction_step():
    opt = numbadam.Adam(0.1)
    w = np.linspace(-1, 1, 5)
    opt.iterations = 41
    assert int(opt.iterations) == 41
    g = np.arange(5.0) - 2
    before = oracle_state(opt, w, False)
    exp = oracle_step(before, g, 41, lr=0.1, beta_1=0.9, beta_2=0.999, epsilon=1e-7)
    opt.apply_gradients([(g, w)])
    assert_state(opt, w, before, exp, np.float64, "t=42")
    with pytest.raises(ValueError, match="iterations"):
        opt.iterations = -1
    assert int(opt.iterations) == 42


# ---------------------------------------------------------------------------
# weights
# ---------------------------------------------------------------------------


def test_get_weights_empty_on_fresh_optimizer():
    assert numbadam.Adam().get_weights() == []
    assert numbadam.Adam().weights == []


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_weights_order(backend, amsgrad):
    """``[iterations, m..., v..., vhat...]`` per call's new variables, in order."""
    rng = _rng("order", amsgrad)
    a, b, c = _vars(
        rng, backend, ((3,), np.float32), ((2, 2), np.float64), ((5,), np.float16)
    )
    opt = numbadam.Adam(amsgrad=amsgrad)
    opt.apply_gradients(zip(_grads(rng, backend, [a, b]), [a, b]))
    names = ["m", "v"] + (["vhat"] if amsgrad else [])
    expected = [opt.iterations]
    for name in names:
        expected += [opt.get_slot(a, name), opt.get_slot(b, name)]
    # a second call: only c is new; its slots follow
    opt.apply_gradients(zip(_grads(rng, backend, [c, a]), [c, a]))
    for name in names:
        expected.append(opt.get_slot(c, name))
    assert len(opt.weights) == len(expected)
    for i, (w, e) in enumerate(zip(opt.weights, expected)):
        assert w is e, f"weight {i}"
    assert opt.variables() == opt.weights
    host = opt.get_weights()
    assert [h.shape for h in host] == [tuple(e.shape) for e in expected]
    for h, e in zip(host, expected):
        assert isinstance(h, np.ndarray)
        assert_bitwise(h, to_host(e))
    # get_weights returns copies
    host[1][...] = 123
    assert not np.any(to_host(opt.weights[1]) == 123)
    assert opt.get_slot_names() == names


@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_set_weights_round_trip_into_fresh_optimizer(backend, amsgrad):
    rng = _rng("roundtrip", amsgrad)
    specs = (((6, 3), np.float32), ((7,), np.float64), ((4,), np.float16))
    host0 = [np.array(rng.standard_normal(s), dtype=dt) for s, dt in specs]
    va = [to_device(h.copy(), backend) for h in host0]
    opt1 = numbadam.Adam(0.05, amsgrad=amsgrad)
    for _ in range(3):
        opt1.apply_gradients(zip(_grads(rng, backend, va), va))
    weights = opt1.get_weights()
    vb = [to_device(to_host(v), backend) for v in va]
    opt2 = numbadam.Adam(0.05, amsgrad=amsgrad)
    opt2.build(vb)
    assert len(opt2.weights) == len(weights)
    assert int(opt2.iterations) == 0
    opt2.set_weights(weights)
    assert int(opt2.iterations) == 3
    for x, y in zip(opt2.get_weights(), weights):
        assert_bitwise(x, y)
    for _ in range(2):
        gs = _grads(rng, backend, va)
        opt1.apply_gradients(zip(gs, va))
        opt2.apply_gradients(zip(gs, vb))
    for x, y in zip(va, vb):
        assert_bitwise(x, y, "variables after resuming")
    for x, y in zip(opt1.get_weights(), opt2.get_weights()):
        assert_bitwise(x, y, "weights after resuming")


@pytest.mark.parametrize("bad", [-1, 1.5, np.nan, np.inf])
def test_set_weights_rejects_bad_iterations(bad):
    """A negative, fractional or non-finite step count would corrupt the bias
    correction: ValueError, and no weight changes (the slots come after it)."""
    a = np.ones((2, 3), np.float32)
    opt = numbadam.Adam()
    opt.apply_gradients([(np.ones((2, 3), np.float32), a)])
    before = [w.copy() for w in opt.get_weights()]
    new = [np.array(bad)] + [np.full((2, 3), 9.0, np.float32)] * 2
    with pytest.raises(ValueError, match=r"iterations.*non-negative integer"):
        opt.set_weights(new)
    for w, b in zip(opt.get_weights(), before):
        assert_bitwise(w, b)


def test_set_weights_keras1_list_is_cut():
    """A Keras-1 Adam list of 3n+1 weights (with vhat) is cut to 2n+1."""
    rng = _rng("keras1")
    a, b = np.zeros(3, np.float32), np.zeros((2, 2), np.float32)
    opt = numbadam.Adam()
    opt.build([a, b])
    assert len(opt.weights) == 5
    new = [np.array(7, np.int64)] + [
        rng.standard_normal(s).astype(np.float32) for s in [(3,), (2, 2)] * 3
    ]
    opt.set_weights(new)
    for w, n in zip(opt.get_weights(), new[:5]):
        assert_bitwise(w, n)
    assert int(opt.iterations) == 7


def _trained(rng):
    a, b = np.zeros(3, np.float32), np.zeros((2, 2), np.float64)
    opt = numbadam.Adam(amsgrad=True)
    opt.apply_gradients(
        [
            (rng.standard_normal(3).astype(np.float32), a),
            (rng.standard_normal((2, 2)), b),
        ]
    )
    return opt, [a, b]


def test_set_weights_wrong_length_changes_nothing():
    rng = _rng("wronglen")
    opt, variables = _trained(rng)
    snap = snapshot(opt, variables)
    bad = [np.ones_like(w) for w in opt.get_weights()]
    with pytest.raises(ValueError, match="length 6.*expecting 7|expecting 7"):
        opt.set_weights(bad[:-1])
    with pytest.raises(ValueError):
        opt.set_weights(bad + [np.ones(3)])
    assert_unchanged(snap, opt, variables)


def test_set_weights_wrong_shape_changes_nothing():
    rng = _rng("wrongshape")
    opt, variables = _trained(rng)
    snap = snapshot(opt, variables)
    bad = [np.ones_like(w) for w in opt.get_weights()]
    bad[4] = np.ones((4,))  # v of b has shape (2, 2)
    with pytest.raises(ValueError, match="weight 4"):
        opt.set_weights(bad)
    assert_unchanged(snap, opt, variables)  # weights 0..3 were not assigned either
    opt.apply_gradients([(np.ones(3, np.float32), variables[0])])
    assert int(opt.iterations) == 2


# ---------------------------------------------------------------------------
# slots and weights added by hand
# ---------------------------------------------------------------------------


def test_get_slot_and_names():
    opt = numbadam.Adam(amsgrad=True)
    assert opt.get_slot_names() == []
    w, other = np.zeros(3), np.zeros(3)
    with pytest.raises(KeyError):
        opt.get_slot(w, "m")
    opt.apply_gradients([(np.ones(3), w)])
    assert opt.get_slot_names() == ["m", "v", "vhat"]
    for name in ("m", "v", "vhat"):
        s = opt.get_slot(w, name)
        assert s.shape == w.shape and s.dtype == w.dtype
        assert s is opt.get_slot(w[...], name)  # a new view object of the same array
    assert np.all(opt.get_slot(w, "m") != 0)
    with pytest.raises(KeyError, match="bogus"):
        opt.get_slot(w, "bogus")
    with pytest.raises(KeyError):
        opt.get_slot(other, "m")


def test_add_slot_initializers():
    opt = numbadam.Adam()
    w = np.zeros((2, 3), np.float32)
    z = opt.add_slot(w, "z")
    assert z.shape == (2, 3) and z.dtype == np.float32 and np.all(z == 0)
    o = opt.add_slot(w, "o", "ones")
    assert np.all(o == 1)
    c = opt.add_slot(w, "c", 0.25)
    assert np.all(c == np.float32(0.25))
    arr = np.arange(3.0)
    a = opt.add_slot(w, "a", arr)
    assert_bitwise(a, np.broadcast_to(arr, (2, 3)).astype(np.float32))
    f = opt.add_slot(w, "f", lambda shape, dtype: np.full(shape, 3, dtype))
    assert f.dtype == np.float32 and np.all(f == 3)
    assert opt.weights == [z, o, c, a, f]
    assert opt.get_slot_names() == ["z", "o", "c", "a", "f"]
    # a second call returns the same slot, not re-initialised
    z[0, 0] = 9
    assert opt.add_slot(w, "z", "ones") is z and z[0, 0] == 9
    assert opt.get_slot(w, "c") is c
    with pytest.raises(ValueError, match="initializer"):
        opt.add_slot(w, "bad", "uniform")


def test_add_weight():
    opt = numbadam.Adam()
    x = opt.add_weight("x", (2, 3))
    assert isinstance(x, np.ndarray) and x.shape == (2, 3) and x.dtype == np.float32
    assert np.all(x == 0)
    y = opt.add_weight("y", (4,), dtype=np.float64, initializer="ones")
    assert y.dtype == np.float64 and np.all(y == 1)
    s = opt.add_weight("s", (), dtype=np.int64, initializer=5)
    assert s.shape == () and int(s) == 5
    assert opt.weights == []  # as Keras: returned, not tracked


# ---------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------


def test_get_config_defaults():
    cfg = numbadam.Adam().get_config()
    assert cfg == {
        "name": "Adam",
        "learning_rate": 0.001,
        "decay": 0.0,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-7,
        "amsgrad": False,
    }
    cfg = numbadam.Adam(clipnorm=1.0, clipvalue=0.5, name="opt").get_config()
    assert cfg["clipnorm"] == 1.0 and cfg["clipvalue"] == 0.5 and cfg["name"] == "opt"


def test_config_round_trip():
    opt = numbadam.Adam(
        0.01,
        beta_1=0.8,
        beta_2=0.95,
        epsilon=1e-4,
        amsgrad=True,
        name="custom",
        clipnorm=2.0,
        clipvalue=0.5,
        decay=0.01,
    )
    cfg = opt.get_config()
    json.dumps(cfg)
    opt2 = numbadam.Adam.from_config(cfg)
    assert opt2.get_config() == cfg
    assert isinstance(opt2, numbadam.Adam)
    # the same numbers step the same way
    a, b = np.ones(4), np.ones(4)
    for k in range(3):
        g = np.array([1.0, -2.0, 3.0, 0.5]) * (k + 1)
        opt.apply_gradients([(g, a)])
        opt2.apply_gradients([(g, b)])
    assert_bitwise(a, b)


def test_config_round_trip_with_schedule():
    sched = schedules.ExponentialDecay(0.1, decay_steps=3, decay_rate=0.5)
    opt = numbadam.Adam(learning_rate=sched)
    cfg = opt.get_config()
    assert cfg["learning_rate"] == {
        "class_name": "ExponentialDecay",
        "config": sched.get_config(),
    }
    cfg = json.loads(json.dumps(cfg))
    opt2 = numbadam.Adam.from_config(cfg)
    assert isinstance(opt2.learning_rate, schedules.ExponentialDecay)
    assert opt2.get_config() == cfg
    a, b = np.ones(3, np.float32), np.ones(3, np.float32)
    for _ in range(4):
        g = np.array([1.0, -1.0, 0.25], np.float32)
        opt.apply_gradients([(g, a)])
        opt2.apply_gradients([(g, b)])
    assert_bitwise(a, b)


def test_from_config_accepts_lr():
    opt = numbadam.Adam.from_config({"lr": 0.25, "beta_1": 0.5})
    assert opt.get_config()["learning_rate"] == 0.25
    assert opt.get_config()["beta_1"] == 0.5


def test_get_config_rounded_to_float32_after_first_step():
    opt = numbadam.Adam(learning_rate=0.001, beta_1=0.9, beta_2=0.999)
    assert opt.get_config()["learning_rate"] == 0.001
    opt.apply_gradients([(np.ones(2), np.zeros(2))])
    cfg = opt.get_config()
    assert cfg["learning_rate"] == float(np.float32(0.001)) != 0.001
    assert cfg["beta_1"] == hyper32(0.9) and cfg["beta_2"] == hyper32(0.999)
    assert type(cfg["learning_rate"]) is float
    json.dumps(cfg)
    # assigning after the first step stores float32 as well
    opt.learning_rate = 0.1
    assert opt.get_config()["learning_rate"] == hyper32(0.1)


def test_callable_hyperparameter_config_is_evaluated():
    opt = numbadam.Adam(learning_rate=lambda: 0.5)
    assert opt.get_config()["learning_rate"] == 0.5


# ---------------------------------------------------------------------------
# constructor arguments
# ---------------------------------------------------------------------------


def test_lr_kwarg_warns_and_overrides():
    with pytest.warns(UserWarning, match="lr"):
        opt = numbadam.Adam(learning_rate=0.5, lr=0.1)
    assert opt.get_config()["learning_rate"] == 0.1
    w, ref = np.zeros(3), np.zeros(3)
    opt.apply_gradients([(np.ones(3), w)])
    numbadam.Adam(0.1).apply_gradients([(np.ones(3), ref)])
    assert_bitwise(w, ref)


def test_learning_rate_alone_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        numbadam.Adam(learning_rate=0.5)


def test_unknown_kwarg():
    with pytest.raises(TypeError, match="momentum"):
        numbadam.Adam(momentum=0.9)


@pytest.mark.parametrize("kw", ["clipnorm", "clipvalue", "decay"])
def test_negative_arguments(kw):
    with pytest.raises(ValueError, match=kw):
        numbadam.Adam(**{kw: -1.0})
    opt = numbadam.Adam()
    with pytest.raises(ValueError, match=kw):
        setattr(opt, kw, -0.5)


@pytest.mark.parametrize("eps", [0, 0.0, None])
def test_epsilon_zero_or_none_means_default(eps):
    opt = numbadam.Adam(0.1, epsilon=eps)
    assert opt.get_config()["epsilon"] == 1e-7
    a, b = np.zeros(3), np.zeros(3)
    g = np.array([1e-9, 0.0, -1e-8])  # small gradients: epsilon matters
    opt.apply_gradients([(g, a)])
    numbadam.Adam(0.1, epsilon=1e-7).apply_gradients([(g, b)])
    assert_bitwise(a, b)
    assert not np.array_equal(a, np.zeros(3))


# ---------------------------------------------------------------------------
# loss-driven API (SciPy's jac=True convention)
# ---------------------------------------------------------------------------


def _quadratic(params, targets, calls=None):
    def loss():
        if calls is not None:
            calls.append(1)
        value = sum(float(np.sum((p - t) ** 2)) for p, t in zip(params, targets))
        return value, [2 * (p - t) for p, t in zip(params, targets)]

    return loss


def test_minimize_matches_apply_gradients():
    rng = _rng("minimize")
    t = [rng.standard_normal(4), rng.standard_normal((2, 3)).astype(np.float32)]
    a = [np.zeros(4), np.zeros((2, 3), np.float32)]
    b = [x.copy() for x in a]
    oa, ob = numbadam.Adam(0.1), numbadam.Adam(0.1)
    calls = []
    for _ in range(4):
        expected_value, grads = _quadratic(a, t)()
        value = oa.minimize(_quadratic(a, t, calls), var_list=lambda: a)
        assert value == expected_value
        ob.apply_gradients(zip(grads, b))
    assert len(calls) == 4
    for x, y in zip(a, b):
        assert_bitwise(x, y)
    assert int(oa.iterations) == 4


def test_minimize_grad_loss_scales_gradients():
    t = [np.array([1.0, -2.0, 3.0])]
    a, b = [np.zeros(3)], [np.zeros(3)]
    oa, ob = numbadam.Adam(0.1), numbadam.Adam(0.1)
    for _ in range(3):
        _, grads = _quadratic(a, t)()
        oa.minimize(_quadratic(a, t), a, grad_loss=0.5)
        ob.apply_gradients([(grads[0] * 0.5, b[0])])
    assert_bitwise(a[0], b[0])


def test_minimize_sparse_and_none_gradients(caplog):
    w = np.zeros((5, 2))
    u = np.ones(2)

    def loss():
        return 1.5, [IndexedSlices(np.ones((2, 2)), np.array([0, 3])), None]

    assert numbadam.Adam(0.1).minimize(loss, [w, u]) == 1.5
    assert np.all(w[[0, 3]] < 0) and np.all(w[[1, 2, 4]] == 0)
    assert np.all(u == 1)


def test_minimize_bad_loss():
    opt = numbadam.Adam()
    w = np.zeros(2)
    with pytest.raises(TypeError):
        opt.minimize(lambda: 1.0, [w])  # not (value, grads)
    with pytest.raises(ValueError):
        opt.minimize(lambda: (1.0, [np.ones(2), np.ones(2)]), [w])
    with pytest.raises(TypeError):
        opt.minimize(lambda: (1.0, [np.ones(2)]), [w], tape=object())
    assert np.all(w == 0) and opt.weights == []


@pytest.mark.parametrize("clip", [{}, {"clipvalue": 0.3}, {"clipnorm": 0.5}])
def test_get_gradients_returns_raw_gradients(clip):
    # tf-keras' legacy get_gradients only checks for None: clipping is done once,
    # by apply_gradients
    params = [np.zeros(6), np.zeros((2, 2))]
    grads = [np.linspace(-3, 3, 6), np.full((2, 2), 4.0)]
    opt = numbadam.Adam(**clip)
    out = opt.get_gradients(lambda: (0.0, [g.copy() for g in grads]), params)
    assert len(out) == 2
    for o, g in zip(out, grads):
        assert_bitwise(np.asarray(o), g)
    assert opt.weights == []  # no step taken


def test_get_gradients_none_raises():
    opt = numbadam.Adam()
    params = [np.zeros(2), np.zeros(3)]
    with pytest.raises(ValueError, match="variable 1.*None|None.*variable 1"):
        opt.get_gradients(lambda: (0.0, [np.ones(2), None]), params)


def test_get_updates_clips_once():
    t = [np.array([3.0, -1.0, 0.5]), np.array([[2.0, 2.0]])]
    a = [np.zeros(3), np.zeros((1, 2))]
    b = [x.copy() for x in a]
    oa = numbadam.Adam(0.1, clipnorm=1.0)
    ob = numbadam.Adam(0.1, clipnorm=1.0)
    for k in range(3):
        out = oa.get_updates(_quadratic(a, t), a)
        assert isinstance(out, list) and len(out) == 1
        assert out[0] is oa.iterations and int(out[0]) == k + 1
        ob.apply_gradients(zip(_quadratic(b, t)()[1], b))
    for x, y in zip(a, b):
        assert_bitwise(x, y)
    # and a reference step from the once-clipped gradients agrees
    c = [np.zeros(3), np.zeros((1, 2))]
    oc = numbadam.Adam(0.1)
    for _ in range(3):
        grads = [clip_ref(g, None, 1.0) for g in _quadratic(c, t)()[1]]
        oc.apply_gradients(zip(grads, c))
    for x, y in zip(a, c):
        assert_close(x, y, np.float64, what="get_updates vs once-clipped step")


@pytest.mark.parametrize("bad", ["no", "yes", None, 2, [True]])
def test_amsgrad_must_be_a_bool(bad):
    with pytest.raises(TypeError, match=r"amsgrad must be a bool"):
        numbadam.Adam(amsgrad=bad)


def test_amsgrad_bool_like_values():
    assert numbadam.Adam(amsgrad=np.True_).amsgrad is True
    assert numbadam.Adam(amsgrad=0).amsgrad is False


def _set_weights_rejected(opt, new):
    before = [w.copy() for w in opt.get_weights()]
    with pytest.raises(ValueError, match=r"length|Keras-1"):
        opt.set_weights(new)
    assert len(opt.weights) == len(before)
    for w, b in zip(opt.get_weights(), before):
        assert_bitwise(w, b)


def test_set_weights_amsgrad_too_long_list_raises():
    """AMSGrad holds 3n+1 weights: a longer list is not cut (TF cuts it)."""
    rng = _rng("amsgrad-long")
    a, b = np.zeros(3, np.float32), np.zeros((2, 2), np.float32)
    opt = numbadam.Adam(amsgrad=True)
    opt.build([a, b])
    assert len(opt.weights) == 7
    # 10 = 3 * ((7 - 1) // 2) + 1: what TF's rule would silently cut to 7
    new = [np.array(7, np.int64)] + [
        rng.standard_normal(s).astype(np.float32) for s in [(3,), (2, 2)] * 4
    ] + [np.zeros(3, np.float32)]
    assert len(new) == 10
    _set_weights_rejected(opt, new)


@pytest.mark.parametrize("extra", [1, 3])
def test_set_weights_other_lengths_raise(extra):
    opt = numbadam.Adam()
    opt.build([np.zeros(3, np.float32), np.zeros((2, 2), np.float32)])
    new = [np.array(1, np.int64)] + [np.zeros(3, np.float32), np.zeros((2, 2))] * 2
    _set_weights_rejected(opt, new + [np.zeros(3, np.float32)] * extra)


def test_set_weights_keras1_form_checks_vhat_shapes():
    opt = numbadam.Adam()
    opt.build([np.zeros(3, np.float32), np.zeros((2, 2), np.float32)])
    new = [np.array(1, np.int64)] + [np.zeros(3, np.float32), np.zeros((2, 2))] * 2
    _set_weights_rejected(opt, new + [np.zeros((2, 2)), np.zeros(3)])


def test_set_weights_unbuilt_one_element_list_raises():
    """No weights yet: [iterations] is not a Keras-1 list of 0 variables."""
    opt = numbadam.Adam()
    with pytest.raises(ValueError, match="length 1"):
        opt.set_weights([np.array(5, np.int64)])
    assert opt.weights == []


@pytest.mark.parametrize(
    "var, initializer, exc, pattern",
    [
        ([1.0, 2.0], "zeros", TypeError, r"list"),
        (np.zeros(3, np.int32), "zeros", TypeError, r"int32"),
        ("w", "zeros", TypeError, r"str"),
        (np.zeros(3, np.float32), "twos", ValueError, r"initializer"),
        (np.zeros(3, np.float32), np.ones(4), ValueError, r"broadcast"),
    ],
    ids=["list", "int array", "string", "bad initializer", "bad initial value"],
)
def test_add_slot_bad_input_leaves_no_trace(var, initializer, exc, pattern):
    """add_slot on a non-array (or with a broken initializer): no phantom slot."""
    opt = numbadam.Adam()
    w = np.zeros(2, np.float32)
    opt.add_slot(w, "m")
    with pytest.raises(exc, match=pattern):
        opt.add_slot(var, "extra", initializer)
    assert opt.get_slot_names() == ["m"]
    assert len(opt.weights) == 1
    if isinstance(var, np.ndarray):
        with pytest.raises(KeyError):
            opt.get_slot(var, "m")
    assert opt.add_slot(w, "m") is opt.get_slot(w, "m")


@pytest.mark.parametrize("buffer", [False, True], ids=["pairs", "ParameterBuffer"])
def test_threads_share_one_optimizer(buffer):
    """Two threads x 100 steps on one optimizer: 200 steps, none lost or mixed.

    The variables are large enough for the parallel kernels, which release the
    GIL, so without the optimizer's lock both threads read the same
    ``iterations`` and steps are lost.
    """
    import threading

    n_threads, n_steps, size = 2, 100, 200_000
    g = np.linspace(-1.0, 1.0, size).astype(np.float32)

    def make():
        if buffer:
            buf = numbadam.ParameterBuffer([(size // 2,), (size // 2,)])
            buf.grad[...] = g
            return buf.data, buf.grads_and_vars()
        w = np.zeros(size, np.float32)
        return w, [(g, w)]

    w, pairs = make()
    opt = numbadam.Adam(1e-3)
    start = threading.Barrier(n_threads)
    errors = []

    def work():
        try:
            start.wait()
            for _ in range(n_steps):
                opt.apply_gradients(pairs)
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(n_threads)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert int(opt.iterations) == n_threads * n_steps
    # the same steps one after the other (the gradient is the same every step)
    w_seq, pairs_seq = make()
    seq = numbadam.Adam(1e-3)
    for _ in range(n_threads * n_steps):
        seq.apply_gradients(pairs_seq)
    assert_bitwise(w, w_seq)
    for a, b in zip(opt.get_weights(), seq.get_weights()):
        assert_bitwise(a, b)
