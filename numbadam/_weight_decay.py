"""Decoupled weight decay (Keras 3's ``weight_decay``): validation and scalars.

Keras 3 decays a variable before its optimizer update, in the variable's
dtype, left to right: ``var -= (var * weight_decay) * lr``, with the step's
learning rate. numbadam passes the kernels the pair ``(weight_decay, lr_t)``
in the compute dtype (float32 for float16 variables), or ``None`` when there
is no decay, and the kernels fuse it into the Adam pass.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, List, Optional, Tuple

import numpy as np

from ._backend import is_device_array
from ._coefficients import decayed_lr

__all__ = ["check_weight_decay", "decay_scalars", "excluded_variables"]


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
    lr_t = decayed_lr(np.dtype(cdt).type, lr32, decay, step)
    if np.dtype(cdt) == np.float64:
        return (float(weight_decay), lr_t)
    return (np.float32(weight_decay), np.float32(lr_t))


def _is_array(x: Any) -> bool:
    return isinstance(x, np.ndarray) or is_device_array(x)


def excluded_variables(
    var_list: Any, var_names: Any, variables: Optional[Mapping]
) -> List[Any]:
    """The variables ``exclude_from_weight_decay`` exempts, validated.

    ``var_list``: arrays. ``var_names``: Keras 3's strings, joined into one
    regular expression (``"|".join(set(var_names))``) that is searched
    (``re.search``) in the *names* of ``variables``, a mapping from names
    (or Keras paths) to arrays; every array whose name matches is excluded
    with those of ``var_list``. Raises ``TypeError`` / ``ValueError`` naming
    the problem before anything is excluded.

    Examples
    --------
    >>> import numpy as np
    >>> w, b = np.ones(2), np.zeros(2)
    >>> ex = excluded_variables(None, ["bias"], {"dense/kernel": w, "dense/bias": b})
    >>> [x is b for x in ex]
    [True]
    """
    out: List[Any] = []
    for i, var in enumerate(var_list or ()):
        if not _is_array(var):
            raise TypeError(
                f"exclude_from_weight_decay: var_list[{i}] is a "
                f"{type(var).__name__}, not a NumPy or CUDA array"
            )
        out.append(var)
    if isinstance(var_names, str):
        raise TypeError(
            "exclude_from_weight_decay: var_names must be a list of strings, "
            f"not the string {var_names!r}"
        )
    names = list(var_names or ())
    if not names:
        if variables is not None:
            raise TypeError(
                "exclude_from_weight_decay: variables= names the arrays that "
                "var_names is matched against; pass var_names too"
            )
        return out
    for name in names:
        if not isinstance(name, str):
            raise TypeError(
                f"exclude_from_weight_decay: var_names holds {name!r}, not a string"
            )
    if variables is None:
        raise TypeError(
            "exclude_from_weight_decay: var_names needs named variables, and "
            "NumPy/CUDA arrays have no names; pass them as variables= (a "
            "mapping from names to arrays, e.g. numbadam.keras3."
            "load_keras_variables(path)) or the arrays themselves as var_list"
        )
    if not isinstance(variables, Mapping):
        raise TypeError(
            "exclude_from_weight_decay: variables must be a mapping from names "
            f"to arrays, not a {type(variables).__name__}"
        )
    try:
        pattern = re.compile("|".join(sorted(set(names))))
    except re.error as exc:
        raise ValueError(
            f"exclude_from_weight_decay: var_names {names!r} do not make a "
            f"regular expression: {exc}"
        ) from None
    for key, var in variables.items():
        if not isinstance(key, str):
            raise TypeError(
                f"exclude_from_weight_decay: variables has the key {key!r}, "
                "not a string"
            )
        if not _is_array(var):
            raise TypeError(
                f"exclude_from_weight_decay: variables[{key!r}] is a "
                f"{type(var).__name__}, not a NumPy or CUDA array"
            )
        if pattern.search(key) is not None:
            out.append(var)
    return out
