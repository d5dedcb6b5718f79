"""``CosineDecay`` and ``CosineDecayRestarts`` (``numbadam.schedules._cosine``)
against float64 references.

References and tolerances: ``schedule_helpers.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from schedule_helpers import (
    EPS,
    SETTINGS,
    TINY,
    any_decay_steps,
    assert_close,
    assert_restarts,
    f32,
    int_decay_steps,
    rates,
    ref_cosine,
    ref_restarts,
    restart_fraction,
    steps,
)

from numbadam import schedules

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
