"""NumPy float64 hyperparameters stay float64, as in TensorFlow (issue #13 item 5).

TF's hyperparameter variable takes the dtype of its initial value
(``tf.Variable(0.999)`` is float32, ``tf.Variable(np.float64(0.999))`` float64),
and ``tf.cast`` of a callable's result turns a Python float into float32 first
but keeps a float64 NumPy value. So for a float64 variable only Python floats
(and float32 values) are rounded to float32; for a float32 or float16 variable
a float64 value is cast to float32 once.

The expected numbers are computed here from the formulas in float64 NumPy
scalars, in TF's operation order (``docs/semantics.md``), not taken from
numbadam.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numbadam
from helpers import to_device, to_host
from numbadam import schedules

F64 = np.float64


def tf_step64(var, g, *, lr, b1, b2, eps=1e-7, decay=0.0, step=0, m=0.0, v=0.0):
    """One Adam step of a float64 variable with the hyperparameters as given
    (already float64 values: float32-rounded or not), TF's order."""
    lr, b1, b2, eps, decay = F64(lr), F64(b1), F64(b2), F64(eps), F64(decay)
    lr_t = lr / (F64(1) + decay * F64(step)) if decay > 0 else lr
    t = F64(step + 1)
    alpha = (lr_t * np.sqrt(F64(1) - b2**t)) / (F64(1) - b1**t)
    g = np.asarray(g, F64)
    m = m + (g - m) * (F64(1) - b1)
    v = v + (g * g - v) * (F64(1) - b2)
    var = np.asarray(var, F64) - (m * alpha) / (np.sqrt(v) + eps)
    return var, m, v


def f32(x):
    """``x`` rounded to float32, as a float64 value (TF's float32 variable)."""
    return F64(np.float32(x))


def step_once(opt, var, grad, backend="cpu"):
    var = to_device(var, backend)
    opt.apply_gradients([(to_device(grad, backend), var)])
    slots = [to_host(opt.get_slot(var, name)) for name in ("m", "v")]
    return to_host(var), *slots


def assert_bits(actual, expected, what=""):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.dtype == expected.dtype, what
    assert actual.tobytes() == expected.tobytes(), (what, actual, expected)


# -- the issue's example --------------------------------------------------------


def test_issue_example_float64_beta_2(backend):
    # Adam(beta_2=np.float64(0.999)), float64 var [1.0], grad [0.5]: TF 2.21's
    # v after one step is 2.5000000000000020e-4 (1 - 0.999 in float64).
    opt = numbadam.Adam(beta_2=np.float64(0.999))
    w, m, v = step_once(opt, np.array([1.0]), np.array([0.5]), backend)
    want_v = F64(0.25) * (F64(1) - F64(0.999))
    assert want_v == 2.5000000000000020e-4  # TF's measured value
    assert_bits(v, np.array([want_v]), "v")
    want_w, want_m, _ = tf_step64(
        [1.0], [0.5], lr=f32(0.001), b1=f32(0.9), b2=F64(0.999)
    )
    assert_bits(m, want_m, "m")
    assert_bits(w, want_w, "var")


def test_python_float_beta_2_still_rounded_to_float32():
    opt = numbadam.Adam(beta_2=0.999)
    w, m, v = step_once(opt, np.array([1.0]), np.array([0.5]))
    want_v = F64(0.25) * (F64(1) - f32(0.999))
    assert float(np.float32(want_v)) == float(np.float32(2.4999678e-4))
    assert want_v != F64(0.25) * (F64(1) - F64(0.999))
    assert_bits(v, np.array([want_v]), "v")
    want_w, _, _ = tf_step64([1.0], [0.5], lr=f32(0.001), b1=f32(0.9), b2=f32(0.999))
    assert_bits(w, want_w, "var")


def test_float32_values_and_python_callables_still_rounded():
    want = F64(0.25) * (F64(1) - f32(0.999))
    for b2 in (np.float32(0.999), np.array(0.999, np.float32), lambda: 0.999):
        _, _, v = step_once(numbadam.Adam(beta_2=b2), np.array([1.0]), np.array([0.5]))
        assert_bits(v, np.array([want]), repr(b2))


class _F64Schedule(schedules.LearningRateSchedule):
    def __call__(self, step):
        return np.float64(0.1) / (1 + step)

    def get_config(self):
        return {}


@pytest.mark.parametrize(
    "kind", ["scalar", "array0d", "callable", "callable_array0d", "schedule"]
)
def test_float64_forms_of_every_hyperparameter(kind):
    lr, b1, b2, decay = 0.1, 0.8, 0.99, 0.3

    def form(x):
        return {
            "scalar": np.float64(x),
            "array0d": np.array(x),
            "callable": lambda: np.float64(x),
            "callable_array0d": lambda: np.array(x),
            "schedule": np.float64(x),  # (the schedule is the learning rate)
        }[kind]

    lr_hyper = _F64Schedule() if kind == "schedule" else form(lr)
    opt = numbadam.Adam(lr_hyper, beta_1=form(b1), beta_2=form(b2), decay=F64(decay))
    w, g = np.array([1.0, -2.0, 3.0]), np.array([0.5, 0.25, -4.0])
    m = v = 0.0
    want = w.copy()
    for step in range(3):
        lr_step = F64(0.1) / (1 + step) if kind == "schedule" else F64(lr)
        want, m, v = tf_step64(
            want, g, lr=lr_step, b1=F64(b1), b2=F64(b2), decay=F64(decay),
            step=step, m=m, v=v,
        )  # fmt: skip
        opt.apply_gradients([(g, w)])
        assert_bits(w, want, f"step {step}")
    assert_bits(opt.get_slot(w, "m"), m, "m")
    assert_bits(opt.get_slot(w, "v"), v, "v")


def test_float64_decay_is_kept_and_python_decay_rounded():
    g = np.array([0.5])
    for decay, d in ((F64(0.1), F64(0.1)), (0.1, f32(0.1))):
        opt = numbadam.Adam(0.1, decay=decay)
        w = np.array([1.0])
        want, m, v = tf_step64([1.0], g, lr=f32(0.1), b1=f32(0.9), b2=f32(0.999))
        opt.apply_gradients([(g, w)])
        want, m, v = tf_step64(
            want, g, lr=f32(0.1), b1=f32(0.9), b2=f32(0.999), decay=d, step=1,
            m=m, v=v,
        )  # fmt: skip
        opt.apply_gradients([(g, w)])
        assert_bits(w, want, repr(decay))


def test_changing_decay_type_between_steps_is_seen():
    # The scalar cache is keyed on values: 0.1 and np.float64(0.1) are equal
    # but give different scalars (f32(0.1) against 0.1).
    # (Two steps first: the second computes a block of the next steps.)
    g = np.array([0.5])
    opt = numbadam.Adam(0.1, decay=0.1)
    w = np.array([1.0])
    want, m, v = np.array([1.0]), 0.0, 0.0
    for step in range(4):
        if step == 2:
            opt.decay = np.float64(0.1)
        d = f32(0.1) if step < 2 else F64(0.1)
        want, m, v = tf_step64(
            want, g, lr=f32(0.1), b1=f32(0.9), b2=f32(0.999), decay=d, step=step,
            m=m, v=v,
        )  # fmt: skip
        opt.apply_gradients([(g, w)])
        assert_bits(w, want, f"step {step}")


# -- float32 and float16 variables: cast once -------------------------------------


@settings(deadline=None, max_examples=40)
@given(
    dtype=st.sampled_from([np.float16, np.float32]),
    lr=st.floats(1e-6, 1.0),
    b1=st.floats(0.0, 0.999),
    b2=st.floats(0.0, 0.999),
    decay=st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
)
def test_low_precision_variables_take_the_float32_cast(dtype, lr, b1, b2, decay):
    # TF casts a float64 hyperparameter to float32 once: the same as giving
    # its float32 rounding (and the same as today's Python-float rounding).
    g = np.array([0.5, -3.0, 1e-3], dtype)
    results = []
    for conv in (np.float64, np.float32, float):
        opt = numbadam.Adam(conv(lr), beta_1=conv(b1), beta_2=conv(b2),
                            decay=conv(decay))  # fmt: skip
        w = np.array([1.0, 2.0, -1.0], dtype)
        for _ in range(2):
            opt.apply_gradients([(g, w)])
        results.append(w)
    assert_bits(results[0], results[1], "float64 vs float32 hypers")
    assert_bits(results[0], results[2], "float64 vs Python float hypers")


def test_one_call_mixes_dtypes():
    # One float64 beta_2, a float32 and a float64 variable in the same call.
    g32, g64 = np.array([0.5], np.float32), np.array([0.5])
    w32, w64 = np.array([1.0], np.float32), np.array([1.0])
    opt = numbadam.Adam(beta_2=np.float64(0.999))
    opt.apply_gradients([(g32, w32), (g64, w64)])
    assert_bits(opt.get_slot(w64, "v"), np.array([F64(0.25) * (1 - F64(0.999))]))
    alone = np.array([1.0], np.float32)
    numbadam.Adam(beta_2=np.float32(0.999)).apply_gradients([(g32, alone)])
    assert_bits(w32, alone)


# -- storage, assignment, config -------------------------------------------------


def test_stored_types_follow_tf_variables():
    opt = numbadam.Adam(learning_rate=np.float64(0.1), beta_1=0.9)
    assert type(opt.learning_rate) is np.float64 and type(opt.beta_1) is float
    opt.apply_gradients([(np.ones(1), np.zeros(1))])
    assert type(opt.learning_rate) is np.float64
    assert type(opt.beta_1) is np.float32
    # TF assigns into the variable the first step made, keeping its dtype: a
    # Python float into a float64 one stays exact, a float64 into a float32 one
    # is rounded
    opt.learning_rate = 0.3
    assert type(opt.learning_rate) is np.float64 and opt.learning_rate == 0.3
    opt.beta_1 = np.float64(0.7)
    assert type(opt.beta_1) is np.float32 and opt.beta_1 == np.float32(0.7)
    # a callable is replaced; then the new value's own type decides
    opt.beta_2 = lambda: 0.5
    opt.beta_2 = np.float64(0.995)
    assert type(opt.beta_2) is np.float64 and opt.beta_2 == 0.995
    # before the first step a value simply replaces the previous one
    fresh = numbadam.Adam(learning_rate=np.float64(0.1))
    fresh.learning_rate = 0.2
    assert type(fresh.learning_rate) is float
    fresh.learning_rate = np.array(0.25)
    assert type(fresh.learning_rate) is np.float64


def test_config_keeps_float64_in_memory_and_json_drops_it():
    opt = numbadam.Adam(beta_2=np.float64(0.999), decay=np.float64(0.01))
    opt.apply_gradients([(np.ones(1), np.zeros(1))])
    cfg = opt.get_config()
    assert type(cfg["beta_2"]) is np.float64 and cfg["beta_2"] == 0.999
    assert type(cfg["decay"]) is np.float64
    assert type(cfg["beta_1"]) is float and cfg["beta_1"] == f32(0.9)
    text = json.dumps(cfg)
    assert json.loads(text)["beta_2"] == 0.999

    g = np.array([0.5])
    w_twin, w_json = np.array([1.0]), np.array([1.0])
    numbadam.Adam.from_config(cfg).apply_gradients([(g, w_twin)])
    numbadam.Adam.from_config(json.loads(text)).apply_gradients([(g, w_json)])
    # in memory the twin keeps beta_2 = 0.999 in float64 (beta_1 was already
    # float32-rounded); through JSON beta_2 is a Python float, so float32
    want64, _, _ = tf_step64([1.0], g, lr=f32(0.001), b1=f32(0.9), b2=F64(0.999))
    want32, _, _ = tf_step64([1.0], g, lr=f32(0.001), b1=f32(0.9), b2=f32(0.999))
    assert_bits(w_twin, want64, "from_config(get_config())")
    assert_bits(w_json, want32, "from_config(json)")


def test_float64_value_rounding_to_one_is_still_refused():
    # (a float32 variable would use its float32 rounding, 1.0)
    with pytest.raises(ValueError, match="beta_2"):
        numbadam.Adam(beta_2=np.float64(1 - 1e-9))
