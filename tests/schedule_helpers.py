"""Shared pieces of the ``numbadam.schedules`` tests: float64 references from the
Keras formulas, their error bounds, hypothesis strategies and a table of schedules.

Tests of ``numbadam.schedules`` against float64 references from the Keras formulas.

TensorFlow casts every constant and the step to float32 and then computes in
float32. The references below take the constants already rounded to float32
(``f32``), which is part of the semantics, and then compute in float64, so the
only remaining difference is the rounding of a handful of float32 operations;
each tolerance is an error bound for those operations, not a fitted number.
Steps stay below 2**24 so that their cast to float32 is exact.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import settings
from hypothesis import strategies as st

from numbadam import schedules

EPS = 2.0**-24  # float32 unit roundoff
TINY = 1e-37  # below float32's smallest normal: underflow noise

MAX_STEP = 2**24

SETTINGS = settings(deadline=None, max_examples=150)


def f32(x):
    """Round ``x`` to float32, as TensorFlow's cast of a constant does."""
    return float(np.float32(x))


# --- float64 references, written from the tf-keras docstrings ------------------


def ref_exponential(step, lr0, decay_steps, decay_rate, staircase):
    p = step / decay_steps
    if staircase:
        p = math.floor(p)
    return lr0 * decay_rate**p


def ref_piecewise(step, boundaries, values):
    for boundary, value in zip(boundaries, values):
        if step <= boundary:
            return value
    return values[-1]


def ref_inverse_time(step, lr0, decay_steps, decay_rate, staircase):
    p = step / decay_steps
    if staircase:
        p = math.floor(p)
    return lr0 / (1.0 + decay_rate * p)


def ref_polynomial(step, lr0, decay_steps, end, power, cycle):
    if cycle:
        multiplier = 1 if step == 0 else math.ceil(step / decay_steps)
        decay_steps = decay_steps * multiplier
    else:
        step = min(step, decay_steps)
    return (lr0 - end) * (1.0 - step / decay_steps) ** power + end


def ref_cosine_decay(step, decay_steps, alpha, decay_from):
    step = min(step, decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * step / decay_steps))
    return decay_from * ((1.0 - alpha) * cosine + alpha)


def ref_cosine(step, lr0, decay_steps, alpha, warmup_target, warmup_steps):
    if warmup_target is None:
        return ref_cosine_decay(step, decay_steps, alpha, lr0)
    if step < warmup_steps:
        return lr0 + (warmup_target - lr0) * step / warmup_steps
    return ref_cosine_decay(step - warmup_steps, decay_steps, alpha, warmup_target)


def assert_close(got, want, tol):
    assert type(got) is np.float32, type(got)
    assert abs(float(got) - want) <= tol, (float(got), want, tol)


# --- strategies ----------------------------------------------------------------

steps = st.integers(0, MAX_STEP - 1)
rates = st.floats(1e-4, 10.0)
int_decay_steps = st.integers(1, 100_000)
any_decay_steps = st.one_of(int_decay_steps, st.floats(0.5, 1e5))


# --- CosineDecayRestarts ---------------------------------------------------------


def restart_fraction(step, decay_steps):
    # The quotient step / D is one correctly rounded float32 division in
    # TensorFlow, and a float64 division of the same float32 operands, rounded to
    # float32, gives those very bits (53 >= 2 * 24 + 2). The reference takes it
    # from there, since the floor of the period index amplifies its rounding.
    return f32(step / decay_steps)


def ref_restarts(step, lr0, decay_steps, t_mul, m_mul, alpha):
    """float64 values and error bounds of ``CosineDecayRestarts`` at ``step``.

    Returns a list of ``(value, tol)``: one entry, or two where the rounded
    logarithms of the period index may fall on either side of an integer (the
    first step of a period).
    """
    c = restart_fraction(step, decay_steps)
    if t_mul == 1.0:
        # In float32 too c - floor(c) is exact, and so is everything up to here.
        i = math.floor(c)
        periods = [(i, c - i, 0.0)]
    else:
        a = 1.0 - c * (1.0 - t_mul)
        if a <= 0:
            return [(math.nan, 0.0)]
        r = math.log(a) / math.log(t_mul)
        # The argument carries three roundings, magnified by the cancellation in
        # 1 - c (1 - T); the logarithms and the quotient add a few ulps of r.
        rel_a = 3 * EPS * (1 + abs(c * (1 - t_mul)) / a)
        window = 8 * ((rel_a + 4 * EPS) / abs(math.log(t_mul)) + 4 * EPS * abs(r))
        near = round(r)
        indices = [near - 1, near] if abs(r - near) <= window else [math.floor(r)]
        # r >= 0 for c >= 0, and float32 keeps that sign: no period before the first.
        indices = [i for i in indices if i >= 0]
        periods = []
        for i in indices:
            t_pow = t_mul**i
            sum_r = (1 - t_pow) / (1 - t_mul)
            frac = (c - sum_r) / t_pow
            # A few ulps of each term of c - sum_r, over T**i, and of frac itself.
            err = 8 * EPS * ((t_pow / abs(1 - t_mul) + abs(sum_r) + c) / t_pow + 1)
            periods.append((i, frac, err))
    out = []
    for i, frac, err in periods:
        m_fac = m_mul**i
        cosine = 0.5 * m_fac * (1 + math.cos(math.pi * frac))
        value = lr0 * ((1 - alpha) * cosine + alpha)
        # The angle is off by pi * err plus the roundings of pi and pi * frac; the
        # cosine, the power and the products and sums add an ulp or two each.
        angle_err = math.pi * (err + 2 * EPS * abs(frac)) + 2 * EPS
        cos_err = 0.5 * abs(m_fac) * (angle_err + 16 * EPS)
        tol = abs(lr0) * (
            abs(1 - alpha) * cos_err
            + 4 * EPS * (abs(1 - alpha) * abs(m_fac) + abs(alpha))
        ) + 2 * EPS * abs(value)
        out.append((value, tol + TINY))
    return out


def assert_restarts(got, candidates):
    assert type(got) is np.float32, type(got)
    if math.isnan(candidates[0][0]):
        assert math.isnan(got)
        return
    assert any(abs(float(got) - v) <= tol for v, tol in candidates), (
        float(got),
        candidates,
    )


# --- LinearCosineDecay and NoisyLinearCosineDecay --------------------------------


def ref_linear_cosine(step, lr0, decay_steps, num_periods, alpha, beta, noise=0.0):
    s = min(step, decay_steps)
    linear = (decay_steps - s) / decay_steps + noise
    cosine = 0.5 * (1.0 + math.cos(math.pi * 2 * num_periods * s / decay_steps))
    return lr0 * ((alpha + linear) * cosine + beta)


def linear_cosine_tol(step, lr0, decay_steps, num_periods, alpha, beta, want):
    s = min(step, decay_steps)
    linear = (decay_steps - s) / decay_steps
    angle = math.pi * 2 * num_periods * s / decay_steps
    # pi, s / D and the two products round the angle; the cosine is then off by
    # a few ulps of the angle, and each later sum and product adds an ulp or two.
    cos_err = 0.5 * 6 * EPS * (abs(angle) + 1) + EPS
    sum_err = 3 * EPS * (abs(linear) + abs(alpha))
    cosine = 0.5 * (1.0 + math.cos(angle))
    err = (
        abs(alpha + linear) * cos_err
        + cosine * sum_err
        + 2 * EPS * (abs((alpha + linear) * cosine) + abs(beta))
    )
    return 2 * (abs(lr0) * err + 2 * EPS * abs(want)) + TINY


# --- all schedules ---------------------------------------------------------------

INSTANCES = [
    schedules.ExponentialDecay(0.1, 7, 0.9, staircase=True, name="exp"),
    schedules.ExponentialDecay(0.1, 7.5, 0.9),
    schedules.PiecewiseConstantDecay([3, 10], [0.1, 0.01, 0.001], name="pw"),
    schedules.InverseTimeDecay(0.1, 3, 0.5, staircase=False),
    schedules.PolynomialDecay(0.1, 20, power=0.5, cycle=True),
    schedules.CosineDecay(0.1, 20, alpha=0.1),
    schedules.CosineDecay(0.0, 20, warmup_target=0.1, warmup_steps=5, name="cos"),
    schedules.CosineDecayRestarts(0.1, 5, name="sgdr"),
    schedules.CosineDecayRestarts(0.1, 4, t_mul=1.0, m_mul=0.5, alpha=0.1),
    schedules.LinearCosineDecay(0.1, 20, num_periods=2.0, alpha=0.1, beta=0.01),
    schedules.NoisyLinearCosineDecay(0.1, 20, seed=3, name="noisy"),
    schedules.NoisyLinearCosineDecay(0.1, 20.5, initial_variance=0.0, alpha=0.2),
]

KERAS_KEYS = {
    "ExponentialDecay": [
        "initial_learning_rate",
        "decay_steps",
        "decay_rate",
        "staircase",
        "name",
    ],
    "PiecewiseConstantDecay": ["boundaries", "values", "name"],
    "InverseTimeDecay": [
        "initial_learning_rate",
        "decay_steps",
        "decay_rate",
        "staircase",
        "name",
    ],
    "PolynomialDecay": [
        "initial_learning_rate",
        "decay_steps",
        "end_learning_rate",
        "power",
        "cycle",
        "name",
    ],
    "CosineDecay": [
        "initial_learning_rate",
        "decay_steps",
        "alpha",
        "name",
        "warmup_target",
        "warmup_steps",
    ],
    "CosineDecayRestarts": [
        "initial_learning_rate",
        "first_decay_steps",
        "t_mul",
        "m_mul",
        "alpha",
        "name",
    ],
    "LinearCosineDecay": [
        "initial_learning_rate",
        "decay_steps",
        "num_periods",
        "alpha",
        "beta",
        "name",
    ],
    "NoisyLinearCosineDecay": [
        "initial_learning_rate",
        "decay_steps",
        "initial_variance",
        "variance_decay",
        "num_periods",
        "alpha",
        "beta",
        "seed",
        "name",
    ],
}

STEP_PROBES = [0, 1, 3, 4, 7, 8, 10, 11, 19, 20, 21, 25, 40, 41, 1000]


def by_name(schedule):
    return type(schedule).__name__ + repr(schedule.get_config().get("name"))
