"""The base class of the schedules and the argument checks they share.

Private: the public names are re-exported by :mod:`numbadam.schedules`.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any, Union

import numpy as np

#: What a schedule accepts as ``step``: a real scalar of any NumPy or Python type.
StepLike = Union[int, float, np.integer, np.floating, np.ndarray]

# Python float constants are spelled as float32 scalars so that the arithmetic
# stays float32 under NumPy 1.x value-based casting as well as under NEP 50.
_ONE = np.float32(1.0)
_HALF = np.float32(0.5)
_PI = np.float32(math.pi)


def _real(value: Any, name: str) -> int | float:
    """Return ``value`` as a finite plain Python int or float.

    Plain Python values keep ``get_config`` JSON-serialisable; integers stay
    integers so that a config round trip preserves them.
    """
    if isinstance(value, np.ndarray):
        if value.shape != ():
            raise TypeError(
                f"`{name}` must be a scalar, got an array of shape {value.shape}."
            )
        value = value[()]
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"`{name}` must be a real number, got {value!r} "
            f"of type {type(value).__name__}."
        )
    value = int(value) if isinstance(value, numbers.Integral) else float(value)
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be finite, got {value!r}.")
    return value


def _positive(value: Any, name: str) -> int | float:
    value = _real(value, name)
    if value <= 0:
        raise ValueError(f"`{name}` must be positive, got {value!r}.")
    return value


def _non_negative(value: Any, name: str) -> int | float:
    value = _real(value, name)
    if value < 0:
        raise ValueError(f"`{name}` must be non-negative, got {value!r}.")
    return value


def _flag(value: Any, name: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(
            f"`{name}` must be a bool, got {value!r} of type {type(value).__name__}."
        )
    return bool(value)


def _seed(value: Any) -> int | None:
    if value is not None and (
        isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral)
    ):
        raise TypeError(
            f"`seed` must be an int or None, got {value!r} "
            f"of type {type(value).__name__}."
        )
    return None if value is None else int(value)


def _name(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(
            f"`name` must be a str or None, got {value!r} "
            f"of type {type(value).__name__}."
        )
    return value


def _step_array(step: StepLike) -> np.ndarray:
    """Return ``step`` as a 0-d array of its own (integer or float) dtype."""
    arr = np.asarray(step)
    if arr.shape != ():
        raise TypeError(f"`step` must be a scalar, got an array of shape {arr.shape}.")
    if arr.dtype.kind not in "iuf":
        raise TypeError(
            f"`step` must be a real number, got {step!r} of dtype {arr.dtype}."
        )
    return arr


def _step_f32(step: StepLike) -> np.float32:
    # tf.cast rounds to nearest, as astype does.
    return _step_array(step).astype(np.float32)[()]


class LearningRateSchedule:
    """Base class of learning-rate schedules, as ``tf.keras`` defines it.

    A subclass implements ``__call__(step)``, returning the learning rate at the
    optimizer step ``step`` (the number of updates already applied), and, to be
    serializable, ``get_config()`` returning its constructor arguments. As in
    tf-keras the base class is not an ``abc.ABC``: a subclass that only
    implements ``__call__`` can be instantiated, and calling the missing method
    raises :class:`NotImplementedError`.

    Examples
    --------
    >>> from numbadam.schedules import LearningRateSchedule
    >>> class Halving(LearningRateSchedule):
    ...     def __init__(self, initial_learning_rate):
    ...         self.initial_learning_rate = initial_learning_rate
    ...
    ...     def __call__(self, step):
    ...         return self.initial_learning_rate / (step + 1)
    ...
    ...     def get_config(self):
    ...         return {"initial_learning_rate": self.initial_learning_rate}
    >>> s = Halving.from_config({"initial_learning_rate": 0.5})
    >>> s(1)
    0.25
    """

    def __call__(self, step: StepLike) -> np.float32:
        """Return the learning rate at ``step``.

        Parameters
        ----------
        step : int, float or 0-d array
            The optimizer step.

        Returns
        -------
        numpy.float32
            The learning rate.

        Raises
        ------
        NotImplementedError
            Always, in the base class.
        """
        raise NotImplementedError(
            f"Learning rate schedule '{type(self).__name__}' "
            "must override `__call__(self, step)`."
        )

    def get_config(self) -> dict[str, Any]:
        """Return the constructor arguments as a JSON-serialisable dict.

        Returns
        -------
        dict
            Keyword arguments that rebuild an equivalent schedule.

        Raises
        ------
        NotImplementedError
            Always, in the base class.
        """
        raise NotImplementedError(
            f"Learning rate schedule '{type(self).__name__}' "
            "must override `get_config()` in order to be serializable."
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> LearningRateSchedule:
        """Build a schedule from the output of :meth:`get_config`.

        Parameters
        ----------
        config : mapping
            Constructor keyword arguments.

        Returns
        -------
        LearningRateSchedule
            ``cls(**config)``.
        """
        return cls(**config)

    def __repr__(self) -> str:
        try:
            config = self.get_config()
        except NotImplementedError:
            return object.__repr__(self)
        args = ", ".join(f"{key}={value!r}" for key, value in config.items())
        return f"{type(self).__name__}({args})"
