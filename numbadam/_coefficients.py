"""Per-step scalars of Adam, with TensorFlow's float32/float64 arithmetic.

TF's ``_prepare_local`` computes, once per step and compute dtype, the step
size with the bias correction folded in and the ``1 - beta`` factors; the
kernels take them as arguments. Tiny compiled functions do the arithmetic
(the same IEEE operations and C ``pow``/``powf`` as NumPy scalars, at a tenth
of the Python cost), and :class:`CoefficientCache` computes the scalars of
:data:`COEFFICIENT_BLOCK` steps at once while the hyperparameter values stay
the same.
"""

from __future__ import annotations

import math
from typing import Any, Dict, List

import numpy as np
from numba import njit

from ._types import AdamCoefficients

__all__ = [
    "COEFFICIENT_BLOCK", "CoefficientCache", "coefficient_block", "coefficients",
    "decayed_lr",
]  # fmt: skip


@njit(cache=True, error_model="numpy")
def _lr_t32(lr, decay, step):
    # the learning rate after the time-inverse decay, rounded in float32
    lr_t = np.float32(lr)
    if decay > 0:
        lr_t = lr_t / (np.float32(1.0) + np.float32(decay) * np.float32(step))
    return lr_t


@njit(cache=True, error_model="numpy")
def _lr_t64(lr, decay, step):
    lr_t = np.float64(lr)
    if decay > 0:
        lr_t = lr_t / (1.0 + np.float64(decay) * np.float64(step))
    return lr_t


@njit(cache=True, error_model="numpy")
def _scalars32(lr, b1, b2, eps, decay, step):
    # TF's per-step scalars for float32 variables, every operation rounded to
    # float32 as TF's graph rounds it (lr, b1, b2 are float32 values; decay is
    # rounded here once, as tf.cast rounds a float64)
    one = np.float32(1.0)
    lr_t = _lr_t32(lr, decay, step)
    b1c, b2c = np.float32(b1), np.float32(b2)
    t = np.float32(step + 1)
    # Eigen's ApplyAdam: (lr * sqrt(1 - b2^t)) / (1 - b1^t)
    alpha = (lr_t * np.sqrt(one - b2c**t)) / (one - b1c**t)
    return alpha, one - b1c, one - b2c, np.float32(eps)


@njit(cache=True, error_model="numpy")
def _scalars64(lr, b1, b2, eps, decay, step):
    # the hyperparameters (float32 values widened exactly, or float64 ones),
    # then float64 arithmetic
    lr_t = _lr_t64(lr, decay, step)
    b1c, b2c = np.float64(b1), np.float64(b2)
    t = np.float64(step + 1)
    alpha = (lr_t * np.sqrt(1.0 - b2c**t)) / (1.0 - b1c**t)
    return alpha, 1.0 - b1c, 1.0 - b2c, np.float64(eps)


@njit(cache=True, error_model="numpy")
def _alphas32(lr, b1, b2, eps, decay, step, out):
    # _scalars32's alpha for steps step, step + 1, ... (float32 values in float64)
    for i in range(out.shape[0]):
        out[i] = _scalars32(lr, b1, b2, eps, decay, step + i)[0]


@njit(cache=True, error_model="numpy")
def _alphas64(lr, b1, b2, eps, decay, step, out):
    for i in range(out.shape[0]):
        out[i] = _scalars64(lr, b1, b2, eps, decay, step + i)[0]


#: Steps of scalars computed at once while the hyperparameters stay the same.
COEFFICIENT_BLOCK = 64


def coefficient_block(c, lr, b1, b2, eps, decay, step, count):
    """``[_coefficients(c, ..., step + i) for i in range(count)]``, bit for bit,
    from one compiled call: only ``alpha`` depends on the step."""
    if type(eps) is not float:
        eps = float(eps)
    d = _decay_value(decay)
    if type(lr) is np.float64 or type(b1) is np.float64 or type(b2) is np.float64:
        # TF's tf.cast of a float64 hyperparameter to c: one rounding for
        # float32, exact for float64 (float32 values widen exactly); one
        # argument type for the compiled functions
        lr, b1, b2 = c(lr), c(b1), c(b2)
    f = _scalars64 if c is np.float64 else _scalars32
    first = f(lr, b1, b2, eps, d, step)
    if count == 1:
        return [AdamCoefficients(*first)]
    alphas = np.empty(count)
    (_alphas64 if c is np.float64 else _alphas32)(lr, b1, b2, eps, d, step, alphas)
    _, omb1, omb2, e = first
    return [AdamCoefficients(a, omb1, omb2, e) for a in alphas.tolist()]


def _decay_value(decay: Any) -> float:
    # a np.float64 decay is kept (cast once to c in the compiled code), any
    # other value rounded to float32; 0.0 for none
    if not decay > 0:
        return 0.0
    return float(decay) if type(decay) is np.float64 else float(np.float32(decay))


def decayed_lr(c, lr, decay, step) -> float:
    """The learning rate of ``step`` after the time-inverse ``decay``,
    ``lr / (1 + decay * step)``, with the arithmetic of the coefficients'
    ``alpha`` for compute type ``c`` (a Python float holding a value of
    ``c``): ``lr`` a ``np.float64`` is cast to ``c``, anything else rounded
    to float32 first; rounded in float32 for float32, float64 for float64.

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam._coefficients import decayed_lr
    >>> decayed_lr(np.float32, np.float32(0.5), 1.0, 3)
    0.125
    """
    lr = c(lr) if type(lr) is np.float64 else np.float32(lr)
    f = _lr_t64 if c is np.float64 else _lr_t32
    return f(lr, _decay_value(decay), step)


def coefficients(c, lr, b1, b2, eps, decay, step) -> AdamCoefficients:
    """TF's ``_prepare_local`` for compute type ``c`` (np.float32 or np.float64).

    The hyperparameters (``lr``, ``b1``, ``b2``: float32-rounded values, or
    ``np.float64`` scalars; ``decay``: a Python float, rounded to float32 here,
    or a ``np.float64``) are cast to ``c`` and every operation is rounded in
    ``c``, as TF's graph does; ``epsilon`` is cast directly. A tiny compiled
    function does the arithmetic (the same IEEE operations and C
    ``pow``/``powf`` as NumPy scalars, at a tenth of the Python cost).

    The results are Python floats holding values of ``c`` exactly (the CPU
    kernels' float32 arguments take them without rounding; the CUDA backend
    casts them to ``c``): building four NumPy scalars would cost more than
    the arithmetic.
    """
    return coefficient_block(c, lr, b1, b2, eps, decay, step, 1)[0]


def _same(a: Any, b: Any) -> bool:
    # the same type and value, bit for bit (0.0 and -0.0 differ; NaN is never
    # the same); a Python float decay and a np.float64 one differ in use
    return a is b or (
        type(a) is type(b)
        and a == b
        and (a != 0 or math.copysign(1.0, a) == math.copysign(1.0, b))
    )


class CoefficientCache:
    """The per-step scalars of one optimizer, by compute dtype.

    While the hyperparameter values are those of the last step, the scalars of
    the next :data:`COEFFICIENT_BLOCK` steps come from one compiled call, the
    same bits as step by step, and each step takes its own from the list. The
    key is the values (immutable scalars), so a hyperparameter that changes
    between steps, by assignment or through a callable, is always seen.
    """

    __slots__ = ("_blocks",)

    def __init__(self) -> None:
        # compute dtype -> (hyperparameter values, first step, coefficients)
        self._blocks: Dict[Any, Any] = {}

    def at(self, cdt: np.dtype, hyp: tuple, step: int) -> AdamCoefficients:
        """The scalars of ``step`` for compute dtype ``cdt``.

        ``hyp`` is ``(lr, beta_1, beta_2, epsilon, decay)``: immutable
        scalars (NumPy float32 or float64 scalars and Python floats), never
        arrays.
        """
        block = self._blocks.get(cdt)
        count = 1
        if block is not None:
            old = block[0]
            if (  # (constants are the very same objects step after step)
                old[0] is hyp[0]
                and old[1] is hyp[1]
                and old[2] is hyp[2]
                and old[3] is hyp[3]
                and old[4] is hyp[4]
            ) or (
                _same(old[0], hyp[0])
                and _same(old[1], hyp[1])
                and _same(old[2], hyp[2])
                and _same(old[3], hyp[3])
                and _same(old[4], hyp[4])
            ):
                i = step - block[1]
                coefs: List[AdamCoefficients] = block[2]
                if 0 <= i < len(coefs):
                    return coefs[i]
                count = COEFFICIENT_BLOCK
        coefs = coefficient_block(cdt.type, *hyp, step, count)
        self._blocks[cdt] = (hyp, step, coefs)
        return coefs[0]

    def clear(self) -> None:
        """Forget every block (the next step computes its scalars afresh)."""
        self._blocks.clear()
