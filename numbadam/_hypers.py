"""Hyperparameters of an OptimizerV2: floats, callables and schedules, TF's rounding.

A mixin of :class:`numbadam.OptimizerV2` (its ``_hyper`` dict and
``_hypers_created`` flag are the optimizer's): constants are Python floats
until the first step and float32 after it, as TF's hyperparameter variables;
callables and schedules are evaluated at each step and validated there.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Dict, Tuple

import numpy as np

from . import schedules

__all__ = ["HyperparameterMixin", "is_number"]


def is_number(x: Any) -> bool:
    """A real number: a Python/NumPy scalar or a 0-d integer/float array."""
    return isinstance(x, numbers.Real) or (
        isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype.kind in "iuf"
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
        # Before the first step TF keeps the Python value; after it, a float32
        # variable, assigned in place.
        self._hyper[name] = np.float32(value) if self._hypers_created else float(value)

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
            if not callable(value):
                self._hyper[name] = np.float32(value)
        self._hypers_created = True

    def _hyper_value(self, name: str, step: int) -> np.float32:
        """The hyperparameter's value for this step, rounded to float32 as in TF."""
        value = self._hyper[name]
        if type(value) is np.float32:
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
            out = np.float32(value)
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
        if isinstance(value, np.generic):
            return value.item()
        return value

