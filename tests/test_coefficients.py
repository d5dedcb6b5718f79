"""The per-step scalars equal TF's graph arithmetic done with NumPy scalars."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from numbadam.adam import _coefficients


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
    got = _coefficients(c, *args)
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
