"""``ExponentialDecay``, ``PiecewiseConstantDecay``, ``InverseTimeDecay`` and
``PolynomialDecay`` (``numbadam.schedules._decay``) against float64 references.

References and tolerances: ``schedule_helpers.py``.
"""

from __future__ import annotations

import math

import numpy as np
from hypothesis import assume, given
from hypothesis import strategies as st
from schedule_helpers import (
    EPS,
    SETTINGS,
    TINY,
    any_decay_steps,
    assert_close,
    f32,
    int_decay_steps,
    rates,
    ref_exponential,
    ref_inverse_time,
    ref_piecewise,
    ref_polynomial,
    steps,
)

from numbadam import schedules

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
