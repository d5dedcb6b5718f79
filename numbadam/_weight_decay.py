"""Decoupled weight decay (Keras 3's ``weight_decay``): validation and scalars.

Keras 3 decays a variable before its optimizer update, in the variable's
dtype, left to right: ``var -= (var * weight_decay) * lr``, with the step's
learning rate. numbadam passes the kernels the pair ``(weight_decay, lr_t)``
in the compute dtype (float32 for float16 variables), or ``None`` when there
is no decay, and the kernels fuse it into the Adam pass.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Tuple

import numpy as np

__all__ = ["check_weight_decay", "decay_scalars"]


def check_weight_decay(value: Any) -> Optional[float]:
    """``value`` as a float, or ``None``; raises for anything but a finite
    real number >= 0 (or ``None``).

    Examples
    --------
    >>> check_weight_decay(0.004), check_weight_decay(None)
    (0.004, None)
    """
    if value is None:
        return None
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"weight_decay must be a real number or None, got {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0:  # (NaN < 0 is False)
        raise ValueError(
            f"weight_decay must be a finite number >= 0, received: {value}"
        )
    return value


def decay_scalars(
    cdt: Any, weight_decay: float, lr32: Any, decay: float, step: int
) -> Tuple[Any, Any]:
    """``(weight_decay, lr_t)`` of compute dtype ``cdt`` for step ``step``.

    ``lr_t`` is the step's learning rate after the time-inverse ``decay``, with
    the arithmetic of the Adam coefficients (:mod:`numbadam._coefficients`):
    the float32 learning rate, ``lr / (1 + decay * step)`` rounded in float32
    for float32 (and float16) variables, in float64 from the float32 values
    widened for float64 ones. ``weight_decay`` is cast directly to ``cdt``
    (Keras 3 casts the Python float to the variable's dtype).

    Examples
    --------
    >>> import numpy as np
    >>> wd, lr_t = decay_scalars(np.dtype(np.float32), 0.5, np.float32(0.25), 0.0, 3)
    >>> type(wd).__name__, float(wd), float(lr_t)
    ('float32', 0.5, 0.25)
    """
    # (the rounding of numbadam._coefficients.coefficient_block: a np.float64
    # learning rate or decay is kept, anything else was rounded to float32)
    d = float(decay) if type(decay) is np.float64 else float(np.float32(decay))
    if np.dtype(cdt) == np.float64:
        lr_t = float(lr32) if type(lr32) is np.float64 else float(np.float32(lr32))
        if decay > 0:
            lr_t = lr_t / (1.0 + d * float(step))
        return (float(weight_decay), lr_t)
    f32 = np.float32
    lr_t = f32(lr32)
    if decay > 0:
        lr_t = lr_t / (f32(1.0) + f32(d) * f32(step))
    return (f32(weight_decay), f32(lr_t))
