"""Configs, ``serialize`` and ``deserialize`` (``numbadam.schedules._serialize``):
Keras' keys and formats, TensorFlow's configs, round trips, custom classes.

References and tolerances: ``schedule_helpers.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from schedule_helpers import (
    EPS,
    INSTANCES,
    KERAS_KEYS,
    SETTINGS,
    STEP_PROBES,
    any_decay_steps,
    assert_close,
    assert_restarts,
    by_name,
    f32,
    linear_cosine_tol,
    rates,
    ref_linear_cosine,
    ref_restarts,
    steps,
)

import numbadam
from numbadam import schedules

# --- Adam.from_config with the schedules of TF configs ---------------------------

TF_SCHEDULE_CONFIGS = [
    # As TensorFlow 2's get_config writes them (defaults spelled out).
    {
        "class_name": "CosineDecayRestarts",
        "config": {
            "initial_learning_rate": 0.1,
            "first_decay_steps": 3,
            "t_mul": 2.0,
            "m_mul": 0.5,
            "alpha": 0.1,
            "name": "SGDR",
        },
    },
    {
        "class_name": "LinearCosineDecay",
        "config": {
            "initial_learning_rate": 0.05,
            "decay_steps": 4,
            "num_periods": 0.5,
            "alpha": 0.0,
            "beta": 0.001,
            "name": None,
        },
    },
    # TensorFlow 2's tf.keras.experimental version has no seed ...
    {
        "class_name": "NoisyLinearCosineDecay",
        "config": {
            "initial_learning_rate": 0.05,
            "decay_steps": 4,
            "initial_variance": 0.0,
            "variance_decay": 0.55,
            "num_periods": 0.5,
            "alpha": 0.0,
            "beta": 0.001,
            "name": None,
        },
    },
    # ... tf-keras's has one, and the newer format adds module and registered_name.
    {
        "module": "keras.optimizers.schedules",
        "class_name": "NoisyLinearCosineDecay",
        "config": {
            "initial_learning_rate": 0.05,
            "decay_steps": 4,
            "initial_variance": 1.0,
            "variance_decay": 0.55,
            "num_periods": 0.5,
            "alpha": 0.0,
            "beta": 0.001,
            "seed": 11,
            "name": None,
        },
        "registered_name": None,
    },
]


def tf_candidates(blob, step):
    """``ref_restarts``-style ``(value, tol)`` candidates for a noise-free config."""
    config = blob["config"]
    consts = {k: f32(v) if isinstance(v, float) else v for k, v in config.items()}
    lr0 = consts["initial_learning_rate"]
    if blob["class_name"] == "CosineDecayRestarts":
        keys = ("first_decay_steps", "t_mul", "m_mul", "alpha")
        return ref_restarts(step, lr0, *(consts[k] for k in keys))
    keys = ("decay_steps", "num_periods", "alpha", "beta")
    args = (step, lr0, *(consts[k] for k in keys))
    want = ref_linear_cosine(*args)
    return [(want, linear_cosine_tol(*args, want))]


@pytest.mark.parametrize(
    "blob", TF_SCHEDULE_CONFIGS, ids=lambda b: b["class_name"] + str(len(b))
)
def test_deserialize_tf_configs(blob):
    s = schedules.deserialize(json.loads(json.dumps(blob)))
    assert type(s).__name__ == blob["class_name"]
    want = dict(blob["config"])
    if blob["class_name"] == "NoisyLinearCosineDecay":
        want.setdefault("seed", None)
    assert s.get_config() == {key: want[key] for key in KERAS_KEYS[blob["class_name"]]}
    if blob["config"].get("initial_variance", 0.0) == 0.0:
        for step in range(12):
            assert_restarts(s(step), tf_candidates(blob, step))


@pytest.mark.parametrize(
    "blob", TF_SCHEDULE_CONFIGS, ids=lambda b: b["class_name"] + str(len(b))
)
def test_adam_from_tf_config_with_schedule(blob):
    tf_config = {
        "name": "Adam",
        "learning_rate": blob,
        "decay": 0.0,
        "beta_1": 0.9,
        "beta_2": 0.999,
        "epsilon": 1e-07,
        "amsgrad": False,
    }
    opt = numbadam.Adam.from_config(json.loads(json.dumps(tf_config)))
    assert type(opt.learning_rate).__name__ == blob["class_name"]
    assert opt.get_config()["learning_rate"] == {
        "class_name": blob["class_name"],
        "config": opt.learning_rate.get_config(),
    }
    # Stepping uses the schedule at iterations: the same bits as an Adam built
    # from the schedule directly.
    direct = numbadam.Adam(learning_rate=schedules.deserialize(blob))
    a, b = np.ones(3, np.float32), np.ones(3, np.float32)
    for k in range(8):
        g = np.array([1.0, -1.0, 0.25], np.float32) * (k + 1)
        opt.apply_gradients([(g, a)])
        direct.apply_gradients([(g, b)])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, np.ones(3, np.float32))
    clone = numbadam.Adam.from_config(json.loads(json.dumps(opt.get_config())))
    assert clone.learning_rate.get_config() == opt.learning_rate.get_config()


@pytest.mark.parametrize("schedule", INSTANCES, ids=by_name)
def test_config_keys_and_json(schedule):
    config = schedule.get_config()
    assert list(config) == KERAS_KEYS[type(schedule).__name__]
    assert json.loads(json.dumps(config)) == config


@pytest.mark.parametrize("schedule", INSTANCES, ids=by_name)
def test_from_config_round_trip(schedule):
    config = json.loads(json.dumps(schedule.get_config()))
    clone = type(schedule).from_config(config)
    assert type(clone) is type(schedule)
    assert clone.get_config() == schedule.get_config()
    assert [clone(k) for k in STEP_PROBES] == [schedule(k) for k in STEP_PROBES]


@pytest.mark.parametrize("schedule", INSTANCES, ids=by_name)
def test_serialize_round_trip(schedule):
    blob = schedules.serialize(schedule)
    assert blob == {
        "class_name": type(schedule).__name__,
        "config": schedule.get_config(),
    }
    clone = schedules.deserialize(json.loads(json.dumps(blob)))
    assert type(clone) is type(schedule)
    assert [clone(k) for k in STEP_PROBES] == [schedule(k) for k in STEP_PROBES]


@SETTINGS
@given(
    lr0=rates,
    decay_steps=any_decay_steps,
    rate=st.floats(0.0, 1.0),
    flag=st.booleans(),
    step=steps,
)
def test_serialize_round_trip_property(lr0, decay_steps, rate, flag, step):
    built = [
        schedules.ExponentialDecay(lr0, decay_steps, rate, flag),
        schedules.InverseTimeDecay(lr0, decay_steps, rate, flag),
        schedules.PolynomialDecay(lr0, decay_steps, rate * lr0, 1 + rate, flag),
        schedules.CosineDecay(lr0, decay_steps, rate),
        schedules.CosineDecay(0.0, decay_steps, rate, None, lr0, decay_steps),
        schedules.CosineDecayRestarts(lr0, decay_steps, 1 + rate, rate, rate),
        schedules.CosineDecayRestarts(lr0, decay_steps, 1.0, 1 - rate),
        schedules.LinearCosineDecay(lr0, decay_steps, 1 + rate, rate, rate / 10),
        schedules.NoisyLinearCosineDecay(
            lr0, decay_steps, rate, 0.55, 0.5, rate, 0.001, seed=int(flag)
        ),
    ]
    for schedule in built:
        blob = json.loads(json.dumps(schedules.serialize(schedule)))
        clone = schedules.deserialize(blob)
        assert clone.get_config() == schedule.get_config()
        assert np.array_equal(clone(step), schedule(step), equal_nan=True)


def test_deserialize_keras_formats():
    # The config of the tf-keras deserialize docstring, plus the keys of the
    # newer Keras format, which carry nothing needed here.
    blob = {
        "module": "keras.optimizers.schedules",
        "class_name": "PolynomialDecay",
        "config": {
            "cycle": False,
            "decay_steps": 10000,
            "end_learning_rate": 0.01,
            "initial_learning_rate": 0.1,
            "name": None,
            "power": 0.5,
        },
        "registered_name": None,
    }
    s = schedules.deserialize(blob)
    assert isinstance(s, schedules.PolynomialDecay)
    assert s(10000) == np.float32(0.01)
    assert_close(s(0), f32(0.1), 4 * EPS * 0.1)
    assert_close(s(2500), (f32(0.1) - f32(0.01)) * 0.75**0.5 + f32(0.01), 1e-8)


class Reciprocal(schedules.LearningRateSchedule):
    def __init__(self, scale):
        self.scale = scale

    def __call__(self, step):
        return np.float32(self.scale) / np.float32(step + 1)

    def get_config(self):
        return {"scale": self.scale}


def test_deserialize_custom_objects():
    blob = schedules.serialize(Reciprocal(2.0))
    assert blob == {"class_name": "Reciprocal", "config": {"scale": 2.0}}
    with pytest.raises(ValueError, match="Reciprocal"):
        schedules.deserialize(blob)
    clone = schedules.deserialize(blob, custom_objects={"Reciprocal": Reciprocal})
    assert isinstance(clone, Reciprocal)
    assert clone(3) == np.float32(0.5)


def test_custom_objects_shadow_builtins():
    blob = {"class_name": "CosineDecay", "config": {"scale": 4.0}}
    clone = schedules.deserialize(blob, custom_objects={"CosineDecay": Reciprocal})
    assert isinstance(clone, Reciprocal)


@pytest.mark.parametrize(
    "blob, error",
    [
        ({"class_name": "StepDecay", "config": {}}, ValueError),
        ({"class_name": "ExponentialDecay"}, TypeError),
        ({"config": {}}, TypeError),
        ("ExponentialDecay", TypeError),
        (None, TypeError),
    ],
)
def test_deserialize_rejects(blob, error):
    with pytest.raises(error):
        schedules.deserialize(blob)


def test_from_config_rejects_unknown_key():
    config = schedules.InverseTimeDecay(0.1, 3, 0.5).get_config()
    config["bogus"] = 1
    with pytest.raises(TypeError):
        schedules.InverseTimeDecay.from_config(config)


def test_serialize_rejects_non_schedule():
    with pytest.raises(TypeError, match="LearningRateSchedule"):
        schedules.serialize(lambda step: 0.1)
