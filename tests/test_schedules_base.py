"""What every schedule shares (``numbadam.schedules._base``): the base class, the
step types accepted and refused, the checks of constructor arguments, defaults.

References and tolerances: ``schedule_helpers.py``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from schedule_helpers import (
    INSTANCES,
    by_name,
)

from numbadam import schedules


@pytest.mark.parametrize("schedule", INSTANCES, ids=by_name)
def test_step_types_agree(schedule):
    expected = schedule(7)
    for step in (
        np.int32(7),
        np.int64(7),
        np.uint8(7),
        np.float32(7),
        np.float64(7),
        7.0,
        np.array(7),
        np.array(7.0, dtype=np.float32),
    ):
        got = schedule(step)
        assert type(got) is np.float32, type(step)
        assert got == expected, type(step)


@pytest.mark.parametrize("schedule", INSTANCES, ids=by_name)
@pytest.mark.parametrize("step", [np.zeros(2), [1, 2], "3", True, 1j, None])
def test_bad_step_rejected(schedule, step):
    with pytest.raises(TypeError, match="step"):
        schedule(step)


def test_base_class_contract():
    base = schedules.LearningRateSchedule()
    with pytest.raises(NotImplementedError):
        base(0)
    with pytest.raises(NotImplementedError):
        base.get_config()

    class CallOnly(schedules.LearningRateSchedule):
        def __call__(self, step):
            return np.float32(0.1)

    # As in tf-keras, a schedule without get_config works but does not serialize.
    only = CallOnly()
    assert only(5) == np.float32(0.1)
    with pytest.raises(NotImplementedError):
        schedules.serialize(only)
    assert "CallOnly" in repr(only)


def test_numpy_arguments_give_plain_config():
    s = schedules.ExponentialDecay(
        np.float32(0.5), np.int64(100), np.array(0.25), np.bool_(True)
    )
    config = s.get_config()
    assert type(config["initial_learning_rate"]) is float
    assert type(config["decay_steps"]) is int
    assert type(config["decay_rate"]) is float
    assert config["staircase"] is True
    assert json.loads(json.dumps(config)) == config
    p = schedules.PiecewiseConstantDecay(np.array([1, 2]), np.array([1.0, 0.5, 0.25]))
    assert json.loads(json.dumps(p.get_config())) == {
        "boundaries": [1, 2],
        "values": [1.0, 0.5, 0.25],
        "name": None,
    }


def test_repr_names_class_and_arguments():
    text = repr(schedules.InverseTimeDecay(0.1, 3, 0.5))
    assert text.startswith("InverseTimeDecay(")
    assert "decay_steps=3" in text


# --- constructor validation ------------------------------------------------------

NAN, INF = float("nan"), float("inf")

BAD_ARGUMENTS = [
    (schedules.ExponentialDecay, (0.1, 0, 0.5), {}, ValueError, "decay_steps"),
    (schedules.ExponentialDecay, (0.1, -3, 0.5), {}, ValueError, "decay_steps"),
    (schedules.ExponentialDecay, (0.1, 10, -0.5), {}, ValueError, "decay_rate"),
    (schedules.ExponentialDecay, (NAN, 10, 0.5), {}, ValueError, "initial_learning"),
    (schedules.ExponentialDecay, (0.1, INF, 0.5), {}, ValueError, "decay_steps"),
    (schedules.ExponentialDecay, ("0.1", 10, 0.5), {}, TypeError, "initial_learning"),
    (schedules.ExponentialDecay, (0.1, True, 0.5), {}, TypeError, "decay_steps"),
    (schedules.ExponentialDecay, (0.1, 10, 0.5, "yes"), {}, TypeError, "staircase"),
    (schedules.ExponentialDecay, (0.1, 10, 0.5), {"name": 3}, TypeError, "name"),
    (schedules.ExponentialDecay, (np.ones(2), 10, 0.5), {}, TypeError, "scalar"),
    (schedules.InverseTimeDecay, (0.1, 0.0, 0.5), {}, ValueError, "decay_steps"),
    (schedules.InverseTimeDecay, (0.1, 10, -1.0), {}, ValueError, "decay_rate"),
    (schedules.InverseTimeDecay, (0.1, 10, 0.5, 1), {}, TypeError, "staircase"),
    (schedules.PolynomialDecay, (0.1, 0), {}, ValueError, "decay_steps"),
    (schedules.PolynomialDecay, (0.1, 10), {"power": -1.0}, ValueError, "power"),
    (schedules.PolynomialDecay, (0.1, 10, INF), {}, ValueError, "end_learning"),
    (schedules.PolynomialDecay, (0.1, 10), {"cycle": 1}, TypeError, "cycle"),
    (schedules.CosineDecay, (0.1, 0), {}, ValueError, "decay_steps"),
    (schedules.CosineDecay, (0.1, 10, INF), {}, ValueError, "alpha"),
    (schedules.CosineDecay, (0.1, 10), {"warmup_steps": -1}, ValueError, "warmup_st"),
    (schedules.CosineDecay, (0.1, 10), {"warmup_target": NAN}, ValueError, "warmup_t"),
    (schedules.CosineDecay, (0.1, 10), {"warmup_target": "x"}, TypeError, "warmup_t"),
    (schedules.CosineDecayRestarts, (0.1, 0), {}, ValueError, "first_decay_steps"),
    (schedules.CosineDecayRestarts, (0.1, -5), {}, ValueError, "first_decay_steps"),
    (schedules.CosineDecayRestarts, (0.1, 10, 0.0), {}, ValueError, "t_mul"),
    (schedules.CosineDecayRestarts, (0.1, 10, -2.0), {}, ValueError, "t_mul"),
    (schedules.CosineDecayRestarts, (0.1, 10), {"m_mul": INF}, ValueError, "m_mul"),
    (schedules.CosineDecayRestarts, (0.1, 10), {"alpha": NAN}, ValueError, "alpha"),
    (schedules.CosineDecayRestarts, (0.1, 10), {"t_mul": "2"}, TypeError, "t_mul"),
    (schedules.CosineDecayRestarts, (0.1, 10), {"name": 1}, TypeError, "name"),
    (schedules.LinearCosineDecay, (0.1, 0), {}, ValueError, "decay_steps"),
    (schedules.LinearCosineDecay, (0.1, 10, INF), {}, ValueError, "num_periods"),
    (schedules.LinearCosineDecay, (0.1, 10), {"alpha": NAN}, ValueError, "alpha"),
    (schedules.LinearCosineDecay, (0.1, 10), {"beta": "x"}, TypeError, "beta"),
    (schedules.NoisyLinearCosineDecay, (0.1, -1), {}, ValueError, "decay_steps"),
    (schedules.NoisyLinearCosineDecay, (0.1, 10, -1.0), {}, ValueError, "initial_v"),
    (schedules.NoisyLinearCosineDecay, (0.1, 10, 1.0, INF), {}, ValueError, "varia"),
    (schedules.NoisyLinearCosineDecay, (0.1, 10), {"beta": NAN}, ValueError, "beta"),
    (schedules.NoisyLinearCosineDecay, (0.1, 10), {"seed": 1.5}, TypeError, "seed"),
    (schedules.NoisyLinearCosineDecay, (0.1, 10), {"seed": "1"}, TypeError, "seed"),
    (schedules.NoisyLinearCosineDecay, (0.1, 10), {"seed": True}, TypeError, "seed"),
    (schedules.PiecewiseConstantDecay, ([1, 2], [1.0]), {}, ValueError, "length"),
    (schedules.PiecewiseConstantDecay, ([1], [1.0, 2, 3]), {}, ValueError, "length"),
    (schedules.PiecewiseConstantDecay, ([], [1.0]), {}, ValueError, "at least one"),
    (schedules.PiecewiseConstantDecay, ([2, 1], [1, 2, 3]), {}, ValueError, "increas"),
    (schedules.PiecewiseConstantDecay, ([1, 1], [1, 2, 3]), {}, ValueError, "increas"),
    (schedules.PiecewiseConstantDecay, ([1], [1.0, NAN]), {}, ValueError, "values"),
    (schedules.PiecewiseConstantDecay, (["1"], [1.0, 2.0]), {}, TypeError, "boundar"),
]


@pytest.mark.parametrize(
    "cls, args, kwargs, error, match",
    BAD_ARGUMENTS,
    ids=[f"{c.__name__}-{i}" for i, (c, *_) in enumerate(BAD_ARGUMENTS)],
)
def test_bad_arguments(cls, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        cls(*args, **kwargs)


def test_defaults_match_keras():
    assert schedules.ExponentialDecay(0.1, 1, 0.5).get_config()["staircase"] is False
    poly = schedules.PolynomialDecay(0.1, 1).get_config()
    assert (poly["end_learning_rate"], poly["power"], poly["cycle"]) == (
        0.0001,
        1.0,
        False,
    )
    cos = schedules.CosineDecay(0.1, 1).get_config()
    assert (cos["alpha"], cos["warmup_target"], cos["warmup_steps"]) == (0.0, None, 0)
    assert schedules.PiecewiseConstantDecay([1], [1, 2]).get_config()["name"] is None
    restarts = schedules.CosineDecayRestarts(0.1, 1).get_config()
    assert (restarts["t_mul"], restarts["m_mul"], restarts["alpha"]) == (2.0, 1.0, 0.0)
    assert restarts["name"] is None
    linear = schedules.LinearCosineDecay(0.1, 1).get_config()
    assert (linear["num_periods"], linear["alpha"], linear["beta"]) == (0.5, 0.0, 0.001)
    noisy = schedules.NoisyLinearCosineDecay(0.1, 1).get_config()
    assert (noisy["initial_variance"], noisy["variance_decay"]) == (1.0, 0.55)
    assert (noisy["num_periods"], noisy["alpha"], noisy["beta"]) == (0.5, 0.0, 0.001)
    assert noisy["seed"] is None and noisy["name"] is None
