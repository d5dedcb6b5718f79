"""``LinearCosineDecay`` and ``NoisyLinearCosineDecay``
(``numbadam.schedules._linear_cosine``) against float64 references and the
statistics of the noise.

References and tolerances: ``schedule_helpers.py``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from schedule_helpers import (
    EPS,
    SETTINGS,
    any_decay_steps,
    assert_close,
    f32,
    linear_cosine_tol,
    rates,
    ref_linear_cosine,
    steps,
)

from numbadam import schedules


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
