"""The per-step scalars equal TF's graph arithmetic done with NumPy scalars."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import numbadam
from numbadam._coefficients import coefficient_block, coefficients


def numpy_scalars(c, lr32, b1_32, b2_32, eps, decay, step):
    # TF's _prepare_local: float32 hyperparameters cast to the variable dtype,
    # each operation rounded in it; Eigen's alpha = (lr * sqrt(1-b2^t)) / (1-b1^t)
    one = c(1)
    lr_t = c(lr32)
    with np.errstate(all="ignore"):
        if decay > 0:
            lr_t = lr_t / (one + c(np.float32(decay)) * c(step))
        b1, b2, t = c(b1_32), c(b2_32), c(step + 1)
        alpha = (lr_t * np.sqrt(one - b2**t)) / (one - b1**t)
        return alpha, one - b1, one - b2, c(eps)


@settings(deadline=None, max_examples=400)
@given(
    c=st.sampled_from([np.float32, np.float64]),
    lr=st.floats(1e-8, 10.0),
    b1=st.one_of(st.sampled_from([0.9, 0.0, 1.0, 0.5]), st.floats(0.0, 1.0)),
    b2=st.one_of(st.sampled_from([0.999, 1.0, 1.5]), st.floats(0.0, 1.0)),
    eps=st.one_of(st.sampled_from([1e-7, 1e-8]), st.floats(0.0, 1.0)),
    decay=st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
    step=st.one_of(st.integers(0, 100), st.integers(0, 10**8)),
)
def test_coefficients_bitwise(c, lr, b1, b2, eps, decay, step):
    args = (np.float32(lr), np.float32(b1), np.float32(b2), eps, decay, step)
    got = coefficients(c, *args)
    want = numpy_scalars(c, *args)
    for g, w in zip(got, want):
        # a value of c exactly (the kernels' c-typed arguments take it unrounded)
        assert np.isnan(g) or c(g) == g, (got, want)
        assert type(w) is c
        assert (np.isnan(g) and np.isnan(w)) or (
            c(g) == w and np.signbit(g) == np.signbit(w)
        ), (
            got,
            want,
        )


def _bits(coef):
    return [np.float64(x).tobytes() for x in coef]


@settings(deadline=None, max_examples=60)
@given(
    c=st.sampled_from([np.float32, np.float64]),
    lr=st.floats(1e-8, 10.0),
    b1=st.floats(0.0, 1.0),
    b2=st.floats(0.0, 1.0),
    decay=st.one_of(st.just(0.0), st.floats(0.0, 1.0)),
    step=st.one_of(st.integers(0, 100), st.integers(0, 10**8)),
    count=st.integers(1, 70),
)
def test_coefficient_block_equals_step_by_step(c, lr, b1, b2, decay, step, count):
    args = (np.float32(lr), np.float32(b1), np.float32(b2), 1e-7, decay)
    block = coefficient_block(c, *args, step, count)
    assert len(block) == count
    for i, coef in enumerate(block):
        assert _bits(coef) == _bits(coefficients(c, *args, step + i)), i


def test_optimizer_scalars_follow_steps_and_changes():
    # The optimizer reuses a block of precomputed scalars while its
    # hyperparameters stay the same objects: every step, jump, and change of a
    # hyperparameter must still give the step-by-step scalars, bit for bit.
    opt = numbadam.Adam(0.01, beta_1=0.8, decay=0.01)
    opt.apply_gradients([(np.ones(3, np.float32), np.zeros(3, np.float32))])
    dtypes = {np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)}
    steps = list(range(0, 140)) + [3, 2, 500, 5, 5, 10**7, 6]
    for n, step in enumerate(steps):
        if n == 90:
            opt.learning_rate = 0.02
        if n == 100:
            opt.epsilon = 1e-3
        if n == 110:
            opt.decay = 0.0
        if n == 120:
            opt.beta_2 = lambda: 0.99  # a callable: new objects every step
        got = opt._prepare_step(step, dtypes)
        hyp = [np.float32(opt._hyper_value(k, step)) for k in ("learning_rate",
               "beta_1", "beta_2")]  # fmt: skip
        for dt in dtypes:
            c = np.float64 if dt == np.float64 else np.float32
            want = coefficients(c, *hyp, opt.epsilon, opt.decay, step)
            assert _bits(got[dt]) == _bits(want), (n, step, dt)


def test_epsilon_array_changed_in_place_is_read_every_step():
    # The scalar cache is keyed on values: a 0-d array epsilon (or one returned
    # by a callable) that changes in place must change the next step.
    eps = np.array(1e-7)
    opt = numbadam.Adam(0.1, epsilon=eps)
    ref = numbadam.Adam(0.1, epsilon=1e-7)
    w, w_ref = np.ones(4, np.float32), np.ones(4, np.float32)
    g = np.full(4, 1e-4, np.float32)
    for _ in range(3):
        opt.apply_gradients([(g, w)])
        ref.apply_gradients([(g, w_ref)])
    assert np.array_equal(w, w_ref)
    eps[()] = 0.5
    ref.epsilon = 0.5
    opt.apply_gradients([(g, w)])
    ref.apply_gradients([(g, w_ref)])
    assert np.array_equal(w, w_ref)
    box = np.array(1e-7)
    call = numbadam.Adam(0.1, epsilon=lambda: box)
    ref2 = numbadam.Adam(0.1, epsilon=1e-7)
    w_call, w_ref2 = np.ones(4, np.float32), np.ones(4, np.float32)
    call.apply_gradients([(g, w_call)])
    ref2.apply_gradients([(g, w_ref2)])
    box[()] = 0.5
    ref2.epsilon = 0.5
    call.apply_gradients([(g, w_call)])
    ref2.apply_gradients([(g, w_ref2)])
    assert np.array_equal(w_call, w_ref2)
    assert not np.array_equal(w_call, w)  # (the change is visible at all)
