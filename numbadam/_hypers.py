"""Hyperparameters of an OptimizerV2: floats, callables and schedules, TF's rounding.

A mixin of :class:`numbadam.OptimizerV2` (its ``_hyper`` dict and
``_hypers_created`` flag are the optimizer's): constants are Python floats
until the first step and float32 after it, as TF's hyperparameter variables;
callables and schedules are evaluated at each step and validated there.

NumPy float64 values (a ``np.float64`` scalar, a 0-d float64 array, or what a
callable or schedule returns) stay float64, as in TF: its hyperparameter
variable takes the dtype of the initial value (``tf.Variable(0.999)`` is
float32, ``tf.Variable(np.float64(0.999))`` float64) and ``tf.cast`` of a
callable's result converts a Python float to float32 but keeps a float64
array's dtype. The per-step scalars then cast the value once to the compute
dtype (``numbadam._coefficients``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Tuple

import numpy as np

from . import schedules

__all__ = ["HyperparameterMixin", "is_float64", "is_number"]


def is_number(x: Any) -> bool:
    """A real number: a Python/NumPy scalar or a 0-d integer/float array."""
    return isinstance(x, numbers.Real) or (
        isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype.kind in "iuf"
    )


def is_float64(x: Any) -> bool:
    """A NumPy float64 scalar or array: TF keeps it float64 (a Python float not)."""
    return isinstance(x, np.float64) or (
        isinstance(x, np.ndarray) and x.dtype.type is np.float64
    )


class HyperparameterMixin:
    """``_set_hyper`` / ``_get_hyper`` / ``_hyper_value``: Keras' hyper API."""

    _hyper: Dict[str, Any]
    _hypers_created: bool

    # ------------------------------------------------------------------
    # hyperparameters
    # ------------------------------------------------------------------

    def _set_hyper(self, name: str, value: Any) -> None:
        if isinstance(value, schedules.LearningRateSchedule) or callable(value):
            self._hyper[name] = value
            return
        if not is_number(value) or isinstance(value, bool):
            raise TypeError(
                f"hyperparameter {name!r} must be a float, a zero-argument callable "
                f"or a learning-rate schedule, got {value!r}"
            )
        self._check_hyper_range(name, value)
        f64 = is_float64(value)
        if not self._hypers_created:
            # Before the first step TF keeps the value as given.
            self._hyper[name] = np.float64(value) if f64 else float(value)
            return
        # After it, TF assigns into the variable the first step made, whose
        # dtype is fixed (float32, or float64 from a float64 value: a Python
        # float is then kept exactly); a callable or schedule is replaced, and
        # the value's own type decides, as at the first step.
        prev = type(self._hyper.get(name))
        if prev is np.float32 or prev is np.float64:
            f64 = prev is np.float64
        self._hyper[name] = np.float64(value) if f64 else np.float32(value)

    # name -> (low, high): the allowed half-open range [low, high) of a
    # hyperparameter; every numeric hyperparameter must be finite (deviation:
    # TF accepts anything and steps to non-finite weights).
    _HYPER_RANGES: Dict[str, Tuple[float, float]] = {"decay": (0.0, math.inf)}

    def _check_hyper_range(self, name: str, value: Any) -> None:
        """Raise ValueError unless ``value`` (and its float32 rounding) is allowed."""
        with np.errstate(over="ignore"):
            v32 = np.float32(value)  # (what a step uses: 1 - 1e-9 rounds to 1)
        low, high = self._HYPER_RANGES.get(name, (-math.inf, math.inf))
        if not (math.isfinite(value) and math.isfinite(v32)):
            raise ValueError(f"hyperparameter {name!r} must be finite, got {value!r}")
        if not (low <= value < high and low <= v32 < high):
            bound = f"[{low}, {high})" if high != math.inf else f">= {low}"
            raise ValueError(
                f"hyperparameter {name!r} must be in {bound} (in float32), got "
                f"{value!r}"
            )

    def _get_hyper(self, name: str) -> Any:
        return self._hyper[name]

    def _create_hypers(self) -> None:
        if self._hypers_created:
            return
        for name, value in self._hyper.items():
            if not callable(value) and type(value) is not np.float64:
                self._hyper[name] = np.float32(value)
        self._hypers_created = True

    def _hyper_value(self, name: str, step: int) -> Any:
        """The hyperparameter's value for this step, as TF's variable or tensor.

        A ``np.float32`` scalar (rounded to float32 as in TF), or a
        ``np.float64`` scalar for a NumPy float64 value (see the module's
        docstring).
        """
        value = self._hyper[name]
        t = type(value)
        if t is np.float32 or t is np.float64:
            return value
        if isinstance(value, schedules.LearningRateSchedule):
            value = value(step)
        elif callable(value):
            value = value()
        if value is None or isinstance(value, (str, bytes, bool, np.bool_)):
            # (np.float32 would take None as NaN and a bool as 0 or 1)
            raise TypeError(
                f"hyperparameter {name!r} evaluated to {value!r}, not a real number"
            )
        try:
            out = np.float64(value) if is_float64(value) else np.float32(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"hyperparameter {name!r} evaluated to {value!r}, not a real number"
            ) from None
        if np.ndim(out) != 0:
            raise TypeError(f"hyperparameter {name!r} evaluated to a non-scalar")
        self._check_hyper_range(name, value)
        return out

    def _serialize_hyperparameter(self, name: str) -> Any:
        value = self._hyper[name]
        if isinstance(value, schedules.LearningRateSchedule):
            return schedules.serialize(value)
        if callable(value):
            value = value()
        if isinstance(value, np.generic) and type(value) is not np.float64:
            # (a np.float64 is a float that keeps its dtype through from_config,
            # as TF's config holds the variable's NumPy value; JSON drops it)
            return value.item()
        return value

