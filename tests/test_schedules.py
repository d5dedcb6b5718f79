"""Tests of ``numbadam.schedules`` against float64 references from the Keras formulas.

TensorFlow casts every constant and the step to float32 and then computes in
float32. The references below take the constants already rounded to float32
(``f32``), which is part of the semantics, and then compute in float64, so the
only remaining difference is the rounding of a handful of float32 operations;
each tolerance is an error bound for those operations, not a fitted number.
Steps stay below 2**24 so that their cast to float32 is exact.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import numbadam
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


# --- ExponentialDecay ----------------------------------------------------------


@SETTINGS
@given(
    step=steps,
    lr0=rates,
    decay_steps=int_decay_steps,
    decay_rate=st.floats(0.01, 2.0),
    staircase=st.booleans(),
)
def test_exponential_matches_reference(step, lr0, decay_steps, decay_rate, staircase):
    p = step / decay_steps
    if staircase:
        p = math.floor(p)
    assume(abs(p * math.log(f32(decay_rate))) < 60)  # stays a normal float32
    s = schedules.ExponentialDecay(lr0, decay_steps, decay_rate, staircase)
    want = ref_exponential(step, f32(lr0), f32(decay_steps), f32(decay_rate), staircase)
    # The exponent's rounding is amplified by |ln(rate)| * p.
    rtol = 4 * EPS * (3 + p * abs(math.log(f32(decay_rate))))
    assert_close(s(step), want, rtol * abs(want) + TINY)


@SETTINGS
@given(step=steps, decay_steps=st.floats(0.5, 1e5), decay_rate=st.floats(0.5, 1.0))
def test_exponential_float_decay_steps(step, decay_steps, decay_rate):
    p = step / f32(decay_steps)
    assume(abs(p * math.log(f32(decay_rate))) < 60)
    s = schedules.ExponentialDecay(0.1, decay_steps, decay_rate)
    want = ref_exponential(step, f32(0.1), f32(decay_steps), f32(decay_rate), False)
    rtol = 4 * EPS * (3 + p * abs(math.log(f32(decay_rate))))
    assert_close(s(step), want, rtol * abs(want) + TINY)


def test_exponential_boundaries():
    s = schedules.ExponentialDecay(0.1, 100, 0.5)
    assert s(0) == np.float32(0.1)
    assert_close(s(100), f32(0.1) * 0.5, 4 * EPS * 0.05)
    assert_close(s(300), f32(0.1) * 0.125, 4 * EPS * 0.0125)
    stairs = schedules.ExponentialDecay(0.1, 100, 0.5, staircase=True)
    assert stairs(99) == np.float32(0.1)
    assert_close(stairs(100), f32(0.1) * 0.5, 4 * EPS * 0.05)
    assert_close(stairs(199), f32(0.1) * 0.5, 4 * EPS * 0.05)
    assert stairs(99) != s(99)


def test_constants_cast_to_float32_first():
    # TensorFlow casts decay_rate to float32 before the power: 0.9999999 becomes
    # 1 - 2**-23, and a million steps turn that rounding into a 2% difference.
    s = schedules.ExponentialDecay(1.0, 1, 0.9999999)
    rate = f32(0.9999999)
    assert rate != 0.9999999
    want = ref_exponential(10**6, 1.0, 1.0, rate, False)
    p_log = 10**6 * abs(math.log(rate))
    assert_close(s(10**6), want, 4 * EPS * (3 + p_log) * want)


def test_step_cast_to_float32():
    # float32 cannot hold 2**24 + 1: TensorFlow's cast rounds it to 2**24.
    for cls in (schedules.ExponentialDecay, schedules.InverseTimeDecay):
        s = cls(0.1, 2**20, 0.5)
        assert s(2**24 + 1) == s(2**24)
        assert s(2**24 + 2) != s(2**24)


# --- PiecewiseConstantDecay ------------------------------------------------------


@st.composite
def piecewise_cases(draw):
    boundaries = sorted(
        draw(st.lists(st.integers(-1000, 10**6), min_size=1, max_size=6, unique=True))
    )
    values = draw(
        st.lists(
            st.floats(-10.0, 10.0, width=32),
            min_size=len(boundaries) + 1,
            max_size=len(boundaries) + 1,
        )
    )
    # Most draws land on or next to a boundary, where the rule matters.
    near = st.sampled_from(boundaries).flatmap(
        lambda b: st.sampled_from([b - 1, b, b + 1])
    )
    step = draw(st.one_of(near, st.integers(-2000, 2 * 10**6)))
    return boundaries, values, step


@SETTINGS
@given(piecewise_cases())
def test_piecewise_matches_reference(case):
    boundaries, values, step = case
    s = schedules.PiecewiseConstantDecay(boundaries, values)
    want = np.float32(ref_piecewise(step, boundaries, values))
    for typed_step in (step, np.int64(step), np.float64(step)):
        got = s(typed_step)
        assert type(got) is np.float32
        assert got == want
    # Between two integers, in float64, the interval is the upper one.
    half = np.float64(step) + 0.5
    assert s(half) == np.float32(ref_piecewise(float(half), boundaries, values))


def test_piecewise_keras_example():
    # The example of the tf-keras docstring: 1.0 for the first 100001 steps.
    s = schedules.PiecewiseConstantDecay([100000, 110000], [1.0, 0.5, 0.1])
    expected = {0: 1.0, 100000: 1.0, 100001: 0.5, 110000: 0.5, 110001: 0.1}
    for step, value in expected.items():
        assert s(step) == np.float32(value), step


def test_piecewise_float_boundaries_and_steps():
    s = schedules.PiecewiseConstantDecay([0.5, 2.5], [3.0, 2.0, 1.0])
    assert s(np.float64(0.5)) == np.float32(3.0)
    assert s(np.float64(0.75)) == np.float32(2.0)
    assert s(np.float64(2.5)) == np.float32(2.0)
    assert s(np.float64(2.5000001)) == np.float32(1.0)
    # An integer step compares with the boundaries truncated toward zero (tf.cast),
    # which for steps >= 0 is the same as comparing with the real boundary.
    assert [s(k) for k in range(4)] == [np.float32(v) for v in (3, 2, 2, 1)]


def test_piecewise_boundary_cast_to_float32_step():
    # TensorFlow casts the boundaries to the step's dtype: 16777219 becomes
    # 16777220 in float32, so a float32 step of 16777220 is still "<=" it, while
    # the same step as an exact integer is past it.
    s = schedules.PiecewiseConstantDecay([16777219], [1.0, 2.0])
    assert s(np.float32(16777220)) == np.float32(1.0)
    assert s(np.int64(16777220)) == np.float32(2.0)
    assert s(np.float64(16777220)) == np.float32(2.0)
    # A Python float step becomes a float32 tensor in TensorFlow.
    assert s(16777220.0) == np.float32(1.0)


def test_piecewise_nan_step_takes_first_value():
    # tf.case falls back to its default, values[0], when no predicate holds.
    s = schedules.PiecewiseConstantDecay([1, 2], [3.0, 2.0, 1.0])
    assert s(np.float64("nan")) == np.float32(3.0)


# --- InverseTimeDecay ------------------------------------------------------------


@SETTINGS
@given(
    step=steps,
    lr0=rates,
    decay_steps=any_decay_steps,
    decay_rate=st.floats(0.0, 10.0),
    staircase=st.booleans(),
)
def test_inverse_time_matches_reference(step, lr0, decay_steps, decay_rate, staircase):
    if staircase:
        # floor(step / decay_steps) is exact in float32 for integer arguments
        # below 2**24; a fractional decay_steps could round across an integer.
        decay_steps = math.ceil(decay_steps)
    s = schedules.InverseTimeDecay(lr0, decay_steps, decay_rate, staircase)
    want = ref_inverse_time(
        step, f32(lr0), f32(decay_steps), f32(decay_rate), staircase
    )
    assert_close(s(step), want, 8 * EPS * abs(want) + TINY)


def test_inverse_time_boundaries():
    s = schedules.InverseTimeDecay(0.1, 10, 0.5)
    assert s(0) == np.float32(0.1)
    assert_close(s(20), f32(0.1) / 2.0, 8 * EPS * 0.05)
    assert_close(s(5), f32(0.1) / 1.25, 8 * EPS * 0.08)
    stairs = schedules.InverseTimeDecay(0.1, 10, 0.5, staircase=True)
    assert stairs(9) == np.float32(0.1)
    assert_close(stairs(10), f32(0.1) / 1.5, 8 * EPS * 0.07)
    assert_close(stairs(19), f32(0.1) / 1.5, 8 * EPS * 0.07)


# --- PolynomialDecay -------------------------------------------------------------


def polynomial_tol(step, lr0, decay_steps, end, power, cycle, want):
    """Error bound of the float32 evaluation of the polynomial schedule."""
    if cycle:
        multiplier = 1 if step == 0 else math.ceil(step / decay_steps)
        horizon = decay_steps * multiplier
    else:
        step, horizon = min(step, decay_steps), decay_steps
    p = step / horizon
    q = 1.0 - p
    # p carries about two roundings; 1 - p magnifies them by p / q.
    rel_q = 0.0 if q == 0 else 3 * EPS * p / q + EPS
    term = abs(lr0 - end) * q**power
    return term * (power * rel_q + 6 * EPS) + 3 * EPS * (abs(want) + abs(end)) + TINY


@SETTINGS
@given(
    step=steps,
    lr0=rates,
    decay_steps=int_decay_steps,
    end=st.floats(0.0, 1e-2),
    power=st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.floats(0.0, 5.0)),
    cycle=st.booleans(),
)
def test_polynomial_matches_reference(step, lr0, decay_steps, end, power, cycle):
    s = schedules.PolynomialDecay(lr0, decay_steps, end, power, cycle)
    args = (step, f32(lr0), f32(decay_steps), f32(end), f32(power), cycle)
    want = ref_polynomial(*args)
    assert_close(s(step), want, polynomial_tol(*args, want))


@SETTINGS
@given(step=steps, decay_steps=st.floats(0.5, 1e5), power=st.floats(0.0, 3.0))
def test_polynomial_float_decay_steps(step, decay_steps, power):
    s = schedules.PolynomialDecay(0.1, decay_steps, 0.001, power)
    args = (step, f32(0.1), f32(decay_steps), f32(0.001), f32(power), False)
    want = ref_polynomial(*args)
    assert_close(s(step), want, polynomial_tol(*args, want))


def test_polynomial_boundaries():
    lr0, end = f32(0.1), f32(0.01)
    s = schedules.PolynomialDecay(0.1, 100, 0.01, power=2.0)
    assert_close(s(0), lr0, 4 * EPS * 0.1)
    assert s(100) == np.float32(0.01)
    assert s(1000) == np.float32(0.01)  # clipped at decay_steps
    assert_close(s(50), (lr0 - end) * 0.25 + end, 8 * EPS * 0.04)
    default = schedules.PolynomialDecay(0.1, 10)
    assert default(10) == np.float32(0.0001)


def test_polynomial_cycle_boundaries():
    lr0, end = f32(0.1), f32(0.01)
    c = schedules.PolynomialDecay(0.1, 100, 0.01, cycle=True)
    # Step 0 is special-cased to a multiplier of 1, not ceil(0) = 0 (a 0/0).
    assert_close(c(0), lr0, 4 * EPS * 0.1)
    assert c(100) == np.float32(0.01)
    # Just past a period the horizon is the next multiple of decay_steps.
    assert_close(c(101), (lr0 - end) * (1 - 101 / 200) + end, 8 * EPS * 0.06)
    assert c(200) == np.float32(0.01)
    assert_close(c(201), (lr0 - end) * (1 - 201 / 300) + end, 8 * EPS * 0.04)
    assert c(101) > c(100)
    assert c(101) < c(1)


# --- CosineDecay -----------------------------------------------------------------


def cosine_tol(from_lr, alpha, want):
    # The angle's rounding (pi and the fraction in float32) moves the cosine by
    # a few float32 ulps of pi; the products add a relative error each.
    return 8 * EPS * (math.pi + 2) * abs(from_lr) * (1 + abs(alpha)) + 4 * EPS * abs(
        want
    )


@SETTINGS
@given(
    step=steps,
    lr0=rates,
    decay_steps=any_decay_steps,
    alpha=st.floats(0.0, 1.0),
)
def test_cosine_matches_reference(step, lr0, decay_steps, alpha):
    s = schedules.CosineDecay(lr0, decay_steps, alpha)
    want = ref_cosine(step, f32(lr0), f32(decay_steps), alpha, None, 0)
    assert_close(s(step), want, cosine_tol(f32(lr0), alpha, want) + TINY)


@SETTINGS
@given(
    step=st.integers(0, 2**23),
    lr0=st.floats(0.0, 1.0),
    decay_steps=st.integers(1, 2**22),
    alpha=st.floats(0.0, 1.0),
    warmup_target=rates,
    warmup_steps=st.integers(0, 2**22),
)
def test_cosine_warmup_matches_reference(
    step, lr0, decay_steps, alpha, warmup_target, warmup_steps
):
    s = schedules.CosineDecay(
        lr0,
        decay_steps,
        alpha,
        warmup_target=warmup_target,
        warmup_steps=warmup_steps,
    )
    want = ref_cosine(
        step, f32(lr0), f32(decay_steps), alpha, f32(warmup_target), warmup_steps
    )
    if step < warmup_steps:
        tol = 4 * EPS * (abs(f32(lr0)) + abs(f32(warmup_target)) + abs(want))
    else:
        tol = cosine_tol(f32(warmup_target), alpha, want)
    assert_close(s(step), want, tol + TINY)


def test_cosine_boundaries():
    lr0 = f32(0.1)
    s = schedules.CosineDecay(0.1, 100, alpha=0.2)
    assert_close(s(0), lr0, cosine_tol(lr0, 0.2, 0.1))
    assert_close(s(50), lr0 * 0.6, cosine_tol(lr0, 0.2, 0.06))
    assert_close(s(100), lr0 * 0.2, cosine_tol(lr0, 0.2, 0.02))
    assert s(100) == s(10**6)  # clipped at decay_steps
    # warmup_steps without a warmup_target is ignored, as in tf-keras.
    ignored = schedules.CosineDecay(0.1, 100, alpha=0.2, warmup_steps=50)
    assert all(ignored(k) == s(k) for k in (0, 25, 50, 150))


def test_cosine_warmup_boundaries():
    lr0, target = f32(0.01), f32(0.2)
    w = schedules.CosineDecay(0.01, 100, alpha=0.1, warmup_target=0.2, warmup_steps=10)
    assert w(0) == np.float32(0.01)
    assert_close(w(5), (lr0 + target) / 2, 4 * EPS * 0.3)
    # The decay starts from warmup_target, not initial_learning_rate.
    assert_close(w(10), target, cosine_tol(target, 0.1, 0.2))
    assert_close(w(60), target * 0.55, cosine_tol(target, 0.1, 0.11))
    assert_close(w(110), target * 0.1, cosine_tol(target, 0.1, 0.02))
    assert w(110) == w(10**6)
    # No warmup steps: the decay starts from warmup_target at step 0.
    z = schedules.CosineDecay(0.01, 100, warmup_target=0.2)
    assert z(0) == np.float32(0.2)


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


@SETTINGS
@given(
    step=steps,
    lr0=rates,
    first_decay_steps=any_decay_steps,
    t_mul=st.one_of(st.sampled_from([1.0, 2.0, 3.0, 1.5]), st.floats(1.05, 4.0)),
    m_mul=st.floats(0.0, 1.5),
    alpha=st.floats(0.0, 1.0),
)
def test_restarts_matches_reference(step, lr0, first_decay_steps, t_mul, m_mul, alpha):
    c = restart_fraction(step, first_decay_steps)
    t32 = f32(t_mul)
    index = c if t32 == 1 else math.log(1 - c * (1 - t32)) / math.log(t32)
    assume(m_mul <= 1 or index * math.log(f32(m_mul)) < 60)  # stays finite
    s = schedules.CosineDecayRestarts(lr0, first_decay_steps, t_mul, m_mul, alpha)
    candidates = ref_restarts(
        step, f32(lr0), f32(first_decay_steps), f32(t_mul), f32(m_mul), f32(alpha)
    )
    assert_restarts(s(step), candidates)


@SETTINGS
@given(
    step=st.integers(0, 10**4),
    first_decay_steps=int_decay_steps,
    t_mul=st.floats(0.5, 0.99),
    m_mul=st.floats(0.5, 1.5),
)
def test_restarts_shrinking_periods(step, first_decay_steps, t_mul, m_mul):
    # Far from the horizon D / (1 - T), where the cancellation eats the bits.
    horizon = first_decay_steps / (1 - f32(t_mul))
    assume(step < 0.9 * horizon)
    s = schedules.CosineDecayRestarts(0.1, first_decay_steps, t_mul, m_mul)
    candidates = ref_restarts(
        step, f32(0.1), f32(first_decay_steps), f32(t_mul), f32(m_mul), 0.0
    )
    assert_restarts(s(step), candidates)


# (step, value / lr0) with D = 10, T = 2, M = 0.5, alpha = 0.2: periods start at
# 0, 10, 30, 70 with 1, 0.5, 0.25, 0.125 times the cosine part.
RESTART_PROBES = [
    (0, 1.0),
    (5, 0.8 * 0.5 + 0.2),
    (9, 0.8 * 0.5 * (1 + math.cos(math.pi * 0.9)) + 0.2),
    (10, 0.8 * 0.5 + 0.2),
    (11, 0.8 * 0.25 * (1 + math.cos(math.pi / 20)) + 0.2),
    (20, 0.8 * 0.25 + 0.2),
    (29, 0.8 * 0.25 * (1 + math.cos(math.pi * 19 / 20)) + 0.2),
    (30, 0.8 * 0.25 + 0.2),
    (50, 0.8 * 0.125 + 0.2),
    (70, 0.8 * 0.125 + 0.2),
]


@pytest.mark.parametrize("step, want", RESTART_PROBES)
def test_restarts_boundaries(step, want):
    s = schedules.CosineDecayRestarts(0.1, 10, t_mul=2.0, m_mul=0.5, alpha=0.2)
    assert_close(s(step), f32(0.1) * want, 16 * EPS * 0.1)


def test_restarts_t_mul_one():
    s = schedules.CosineDecayRestarts(0.1, 10, t_mul=1.0, m_mul=0.5)
    lr0 = f32(0.1)
    for k in range(6):
        # Each period starts afresh at the same length, scaled by 0.5**k.
        assert_close(s(10 * k), lr0 * 0.5**k, 8 * EPS * 0.1)
        assert_close(s(10 * k + 5), lr0 * 0.5**k * 0.5, 16 * EPS * 0.1)
        assert s(10 * k + 9) < s(10 * k + 10)
    # A t_mul that rounds to 1 in float32 takes the same branch, as tf.cond does.
    near = schedules.CosineDecayRestarts(0.1, 10, t_mul=1.0 + 1e-9, m_mul=0.5)
    assert all(near(k) == s(k) for k in range(0, 200, 7))


def test_restarts_periods_grow_by_t_mul():
    # T = 3: periods of 4, 12, 36 steps starting at 0, 4, 16, 52; at the middle of
    # each the cosine part is one half.
    s = schedules.CosineDecayRestarts(1.0, 4, t_mul=3.0)
    for start, length in ((0, 4), (4, 12), (16, 36), (52, 108)):
        # ref_restarts bounds the error by about 50 ulps of 0.5 here.
        assert_close(s(start + length // 2), 0.5, 128 * EPS)
        assert s(start + length - 1) < s(start + length // 2) < s(start + 1)


def test_restarts_nan_past_shrinking_horizon():
    # T = 0.5: periods of 10, 5, 2.5, ... steps add up to 20.
    s = schedules.CosineDecayRestarts(0.1, 10, t_mul=0.5)
    # Step 12 is 0.4 of the way through the second period, [10, 15).
    want = f32(0.1) * 0.5 * (1 + math.cos(0.4 * math.pi))
    assert_close(s(12), want, 64 * EPS * 0.1)
    assert np.isfinite(s(19))
    for step in (20, 25, 1000):
        assert np.isnan(s(step)), step


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


@SETTINGS
@given(
    step=steps,
    lr0=rates,
    decay_steps=any_decay_steps,
    num_periods=st.one_of(st.sampled_from([0.5, 1.0, 2.0]), st.floats(0.0, 50.0)),
    alpha=st.floats(0.0, 1.0),
    beta=st.floats(0.0, 0.1),
)
def test_linear_cosine_matches_reference(
    step, lr0, decay_steps, num_periods, alpha, beta
):
    s = schedules.LinearCosineDecay(lr0, decay_steps, num_periods, alpha, beta)
    args = (step, f32(lr0), f32(decay_steps), f32(num_periods), f32(alpha), f32(beta))
    want = ref_linear_cosine(*args)
    assert_close(s(step), want, linear_cosine_tol(*args, want))


def test_linear_cosine_boundaries():
    lr0, beta = f32(0.1), f32(0.001)
    s = schedules.LinearCosineDecay(0.1, 100)
    assert_close(s(0), lr0 * (1 + beta), 8 * EPS * 0.1)
    assert_close(s(50), lr0 * (0.25 + beta), 16 * EPS * 0.1)
    # At decay_steps the cosine part is exactly 0 (cos of float32 pi is -1).
    assert s(100) == np.float32(lr0) * np.float32(beta)
    assert s(100) == s(10**6)  # clipped at decay_steps
    # A whole period: the cosine is back at 1, so only the linear part decays.
    full = schedules.LinearCosineDecay(0.1, 100, num_periods=1.0, alpha=0.5)
    assert_close(full(100), lr0 * (0.5 + beta), 16 * EPS * 0.1)
    assert_close(full(50), lr0 * beta, 16 * EPS * 0.1)


def noise_std(step, decay_steps, initial_variance, variance_decay):
    s = min(step, decay_steps)
    return math.sqrt(initial_variance / (1.0 + s) ** variance_decay)


def recovered_noise(value, step, lr0, decay_steps, num_periods, alpha, beta):
    """The noise term that makes the reference formula give ``value``."""
    s = min(step, decay_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * 2 * num_periods * s / decay_steps))
    linear = (decay_steps - s) / decay_steps
    return (float(value) / lr0 - beta) / cosine - alpha - linear


@SETTINGS
@given(
    step=steps,
    lr0=rates,
    decay_steps=any_decay_steps,
    num_periods=st.floats(0.0, 50.0),
    alpha=st.floats(0.0, 1.0),
    beta=st.floats(0.0, 0.1),
    seed=st.one_of(st.none(), st.integers(0, 2**64)),
)
def test_noisy_without_variance_is_linear_cosine(
    step, lr0, decay_steps, num_periods, alpha, beta, seed
):
    noisy = schedules.NoisyLinearCosineDecay(
        lr0, decay_steps, 0.0, 0.55, num_periods, alpha, beta, seed
    )
    args = (step, f32(lr0), f32(decay_steps), f32(num_periods), f32(alpha), f32(beta))
    want = ref_linear_cosine(*args)
    assert_close(noisy(step), want, linear_cosine_tol(*args, want))
    # The same operations in the same order: the same bits.
    plain = schedules.LinearCosineDecay(lr0, decay_steps, num_periods, alpha, beta)
    assert noisy(step) == plain(step)


@pytest.mark.parametrize(
    "step, seeded",
    [(0, True), (10, True), (60, True), (99, True), (100, True), (5000, True)]
    + [(10, False)],
)
def test_noisy_statistics(step, seeded):
    # Many draws at one step: the recovered noise has mean 0 and the standard
    # deviation of the formula, and about 68% of it lies within one deviation.
    # Bounds are 5 standard errors. With seeds the draws are fixed, so the test
    # is deterministic; the one unseeded case fails with probability ~1e-6.
    lr0, decay_steps, variance, decay = 0.1, 100, 2.0, 0.55
    # The cosine part stays away from 0 at these steps (it is 0 at step 40).
    num_periods, alpha, beta = 1.25, 0.1, 0.01
    n = 4000
    if seeded:
        values = [
            schedules.NoisyLinearCosineDecay(
                lr0, decay_steps, variance, decay, num_periods, alpha, beta, seed
            )(step)
            for seed in range(n)
        ]
    else:
        s = schedules.NoisyLinearCosineDecay(
            lr0, decay_steps, variance, decay, num_periods, alpha, beta
        )
        values = [s(step) for _ in range(n)]
    consts = (f32(lr0), decay_steps, f32(num_periods), f32(alpha), f32(beta))
    noise = np.array([recovered_noise(v, step, *consts) for v in values])
    sigma = noise_std(step, decay_steps, variance, f32(decay))
    assert abs(noise.mean()) < 5 * sigma / math.sqrt(n)
    assert abs(noise.std() / sigma - 1) < 5 * math.sqrt(0.5 / n)
    inside = np.mean(np.abs(noise) < sigma)
    assert abs(inside - 0.6827) < 5 * math.sqrt(0.6827 * 0.3173 / n)
    assert len(set(values)) > 0.99 * n


def test_noisy_seed_fixes_noise_per_step():
    make = schedules.NoisyLinearCosineDecay
    s = make(0.1, 100, num_periods=1.0, seed=42)
    again = make(0.1, 100, num_periods=1.0, seed=42)
    other = make(0.1, 100, num_periods=1.0, seed=43)
    # (Not step 50, where the cosine part is 0 and multiplies the noise away.)
    probes = [0, 1, 2, 25, 99, 100, 101, 102, 10**6]
    first = [s(k) for k in probes]
    assert [s(k) for k in reversed(probes)] == first[::-1]  # no state between calls
    assert [again(k) for k in probes] == first
    assert all(other(k) != s(k) for k in probes)
    # The key is the step before the clip at decay_steps, so past it (where
    # num_periods=1 keeps the cosine at 1) each step has its own noise.
    assert len({s(k) for k in (100, 101, 102, 10**6)}) == 4
    assert s(np.float32(-0.0)) == s(0)
    # A negative seed is taken modulo 2**64.
    assert make(0.1, 100, seed=-1)(7) == make(0.1, 100, seed=2**64 - 1)(7)
    assert make(0.1, 100, seed=np.int64(5))(7) == make(0.1, 100, seed=5)(7)


def test_noisy_unseeded_differs_between_calls():
    s = schedules.NoisyLinearCosineDecay(0.1, 100)
    assert len({s(10) for _ in range(20)}) == 20


def test_noisy_structure_without_noise_effect():
    # With the default half period the cosine part is exactly 0 from decay_steps
    # on, so the noise is multiplied away and the rate is lr0 * beta.
    s = schedules.NoisyLinearCosineDecay(0.1, 100, initial_variance=5.0, seed=1)
    for step in (100, 101, 5000):
        assert s(step) == np.float32(0.1) * np.float32(0.001)


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
