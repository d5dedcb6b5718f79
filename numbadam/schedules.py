r"""Learning-rate schedules with the semantics of ``tf.keras.optimizers.schedules``.

Each schedule is a callable ``schedule(step) -> numpy.float32`` with the class
name, constructor arguments, defaults and ``get_config`` keys of its tf-keras
namesake, so a Keras schedule config can be deserialized here and vice versa.

Notes
-----
TensorFlow evaluates a schedule in the dtype of ``initial_learning_rate``
converted to a tensor, which is ``float32`` for a Python float; ``step`` and the
other constants are cast to that dtype before any arithmetic. This module always
computes in ``float32``, with NumPy ``float32`` scalars and in the operation
order of the tf-keras source, and returns a ``numpy.float32``; the optimizer
then casts the value to each variable's dtype, as OptimizerV2 does. Two
deviations follow from always using ``float32``: a ``float64``
``initial_learning_rate`` (which would make TensorFlow compute in ``float64``)
is computed in ``float32`` here, and an integer ``initial_learning_rate`` (on
which most tf-keras schedules fail with a dtype error) is treated as a float.

Overflow and invalid operations give ``inf`` or ``nan`` silently, as in
TensorFlow, instead of NumPy warnings. Results agree with TensorFlow 2 on CPU to
within a few float32 ulps, not bit for bit: ``pow`` and ``cos`` come from
different math libraries, and TensorFlow flushes subnormal results to zero.

Examples
--------
>>> from numbadam import schedules
>>> s = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
>>> round(float(s(10)), 6)
0.05
>>> config = schedules.serialize(s)
>>> config["class_name"]
'ExponentialDecay'
>>> round(float(schedules.deserialize(config)(20)), 6)
0.025
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import numpy as np

__all__ = [
    "CosineDecay",
    "CosineDecayRestarts",
    "ExponentialDecay",
    "InverseTimeDecay",
    "LearningRateSchedule",
    "LinearCosineDecay",
    "NoisyLinearCosineDecay",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "deserialize",
    "serialize",
]

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


class ExponentialDecay(LearningRateSchedule):
    r"""Exponential decay of the learning rate.

    Parameters
    ----------
    initial_learning_rate : float
        The learning rate at step 0.
    decay_steps : int or float
        Steps over which the rate is multiplied by ``decay_rate``; positive.
    decay_rate : float
        Multiplicative decay per ``decay_steps`` steps; non-negative.
    staircase : bool, default False
        If True, decay in discrete steps: the exponent is floored.
    name : str, optional
        Kept for Keras compatibility (TensorFlow's name scope); unused.

    Raises
    ------
    ValueError
        If ``decay_steps <= 0``, ``decay_rate < 0`` or an argument is not finite.
    TypeError
        If an argument has the wrong type.

    Notes
    -----
    .. math::

        p = \frac{\mathrm{step}}{\mathrm{decay\_steps}}
        \quad (\lfloor p \rfloor \text{ if staircase}), \qquad
        \eta(\mathrm{step}) = \eta_0 \, \mathrm{decay\_rate}^{\,p}

    computed in ``float32``.

    Examples
    --------
    >>> from numbadam.schedules import ExponentialDecay
    >>> s = ExponentialDecay(0.1, decay_steps=100, decay_rate=0.5)
    >>> round(float(s(100)), 6), round(float(s(50)), 6)
    (0.05, 0.070711)
    >>> stairs = ExponentialDecay(0.1, 100, 0.5, staircase=True)
    >>> round(float(stairs(150)), 6)
    0.05
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        decay_rate: float,
        staircase: bool = False,
        name: str | None = None,
    ) -> None:
        self.initial_learning_rate = _real(
            initial_learning_rate, "initial_learning_rate"
        )
        self.decay_steps = _positive(decay_steps, "decay_steps")
        self.decay_rate = _non_negative(decay_rate, "decay_rate")
        self.staircase = _flag(staircase, "staircase")
        self.name = _name(name)

    def __call__(self, step: StepLike) -> np.float32:
        """Return the learning rate at ``step``.

        Parameters
        ----------
        step : int, float or 0-d array
            The optimizer step, cast to ``float32``.

        Returns
        -------
        numpy.float32
            The decayed learning rate.
        """
        s = _step_f32(step)
        with np.errstate(all="ignore"):
            p = s / np.float32(self.decay_steps)
            if self.staircase:
                p = np.floor(p)
            return np.float32(self.initial_learning_rate) * np.power(
                np.float32(self.decay_rate), p
            )

    def get_config(self) -> dict[str, Any]:
        """Return the Keras config.

        Returns
        -------
        dict
            Keys ``initial_learning_rate``, ``decay_steps``, ``decay_rate``,
            ``staircase``, ``name``.
        """
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class PiecewiseConstantDecay(LearningRateSchedule):
    r"""A piecewise constant learning rate.

    Parameters
    ----------
    boundaries : sequence of int or float
        Strictly increasing step boundaries; at least one.
    values : sequence of float
        Learning rates of the ``len(boundaries) + 1`` intervals.
    name : str, optional
        Kept for Keras compatibility (TensorFlow's name scope); unused.

    Raises
    ------
    ValueError
        If ``len(values) != len(boundaries) + 1``, ``boundaries`` is empty or not
        strictly increasing, or a number is not finite.
    TypeError
        If an entry is not a real number.

    Notes
    -----
    Each interval is closed on the right:

    .. math::

        \eta(\mathrm{step}) = \begin{cases}
            v_0 & \mathrm{step} \le b_0 \\
            v_i & b_{i-1} < \mathrm{step} \le b_i \\
            v_n & \mathrm{step} > b_{n-1}
        \end{cases}

    so the step equal to a boundary still gets the earlier value. As in
    TensorFlow the boundaries are cast to the dtype of ``step`` before the
    comparison: truncated toward zero for an integer step, rounded for a float
    one (a Python float step counts as ``float32``, as ``tf.convert_to_tensor``
    makes it). The selected value is returned as ``float32``; TensorFlow would
    return integer ``values`` as ``int32``.

    Examples
    --------
    >>> from numbadam.schedules import PiecewiseConstantDecay
    >>> s = PiecewiseConstantDecay([100, 200], [1.0, 0.5, 0.1])
    >>> [round(float(s(k)), 6) for k in (0, 100, 101, 200, 201)]
    [1.0, 1.0, 0.5, 0.5, 0.1]
    """

    def __init__(
        self,
        boundaries: Sequence[int | float],
        values: Sequence[float],
        name: str | None = None,
    ) -> None:
        boundaries = [_real(b, "boundaries") for b in boundaries]
        values = [_real(v, "values") for v in values]
        if len(boundaries) != len(values) - 1:
            raise ValueError(
                "The length of `boundaries` should be 1 less than the length of "
                f"`values`. Received: boundaries={boundaries} of length "
                f"{len(boundaries)}, and values={values} of length {len(values)}."
            )
        if not boundaries:
            # tf-keras fails here with an IndexError on the first call.
            raise ValueError("`boundaries` must contain at least one boundary.")
        if any(b0 >= b1 for b0, b1 in zip(boundaries[:-1], boundaries[1:])):
            raise ValueError(
                f"`boundaries` must be strictly increasing, got {boundaries}."
            )
        self.boundaries = boundaries
        self.values = values
        self.name = _name(name)

    def __call__(self, step: StepLike) -> np.float32:
        """Return the learning rate at ``step``.

        Parameters
        ----------
        step : int, float or 0-d array
            The optimizer step, compared in its own dtype.

        Returns
        -------
        numpy.float32
            The value of the interval holding ``step``.
        """
        s = _step_array(step)
        # np.float64 subclasses float but keeps its dtype in tf.convert_to_tensor.
        if type(step) is float:
            s = s.astype(np.float32)
        # Casting is monotone, so the cast boundaries are still non-decreasing and
        # the count of those below the step is the interval index. A NaN step
        # compares false everywhere and gets values[0], tf.case's default.
        bounds = np.array(self.boundaries).astype(s.dtype)
        index = int(np.count_nonzero(s > bounds))
        return np.float32(self.values[index])

    def get_config(self) -> dict[str, Any]:
        """Return the Keras config.

        Returns
        -------
        dict
            Keys ``boundaries``, ``values``, ``name``.
        """
        return {
            "boundaries": list(self.boundaries),
            "values": list(self.values),
            "name": self.name,
        }


class InverseTimeDecay(LearningRateSchedule):
    r"""Inverse time decay of the learning rate.

    Parameters
    ----------
    initial_learning_rate : float
        The learning rate at step 0.
    decay_steps : int or float
        Step scale of the decay; positive.
    decay_rate : float
        Decay rate; non-negative.
    staircase : bool, default False
        If True, floor ``step / decay_steps``.
    name : str, optional
        Kept for Keras compatibility (TensorFlow's name scope); unused.

    Raises
    ------
    ValueError
        If ``decay_steps <= 0``, ``decay_rate < 0`` or an argument is not finite.
    TypeError
        If an argument has the wrong type.

    Notes
    -----
    .. math::

        p = \frac{\mathrm{step}}{\mathrm{decay\_steps}}
        \quad (\lfloor p \rfloor \text{ if staircase}), \qquad
        \eta(\mathrm{step}) = \frac{\eta_0}{1 + \mathrm{decay\_rate}\, p}

    computed in ``float32``.

    Examples
    --------
    >>> from numbadam.schedules import InverseTimeDecay
    >>> s = InverseTimeDecay(0.1, decay_steps=10, decay_rate=0.5)
    >>> round(float(s(20)), 6), round(float(s(5)), 6)
    (0.05, 0.08)
    >>> round(float(InverseTimeDecay(0.1, 10, 0.5, staircase=True)(5)), 6)
    0.1
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        decay_rate: float,
        staircase: bool = False,
        name: str | None = None,
    ) -> None:
        self.initial_learning_rate = _real(
            initial_learning_rate, "initial_learning_rate"
        )
        self.decay_steps = _positive(decay_steps, "decay_steps")
        # A negative rate would divide by zero at step -1/decay_rate.
        self.decay_rate = _non_negative(decay_rate, "decay_rate")
        self.staircase = _flag(staircase, "staircase")
        self.name = _name(name)

    def __call__(self, step: StepLike) -> np.float32:
        """Return the learning rate at ``step``.

        Parameters
        ----------
        step : int, float or 0-d array
            The optimizer step, cast to ``float32``.

        Returns
        -------
        numpy.float32
            The decayed learning rate.
        """
        s = _step_f32(step)
        with np.errstate(all="ignore"):
            p = s / np.float32(self.decay_steps)
            if self.staircase:
                p = np.floor(p)
            denom = _ONE + np.float32(self.decay_rate) * p
            return np.float32(self.initial_learning_rate) / denom

    def get_config(self) -> dict[str, Any]:
        """Return the Keras config.

        Returns
        -------
        dict
            Keys ``initial_learning_rate``, ``decay_steps``, ``decay_rate``,
            ``staircase``, ``name``.
        """
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class PolynomialDecay(LearningRateSchedule):
    r"""Polynomial decay from ``initial_learning_rate`` to ``end_learning_rate``.

    Parameters
    ----------
    initial_learning_rate : float
        The learning rate at step 0.
    decay_steps : int or float
        Steps to reach ``end_learning_rate``; positive.
    end_learning_rate : float, default 0.0001
        The learning rate from ``decay_steps`` on (without ``cycle``).
    power : float, default 1.0
        Exponent of the polynomial; non-negative.
    cycle : bool, default False
        If True, restart the decay after each ``decay_steps`` period, over a
        horizon stretched to the next multiple of ``decay_steps``.
    name : str, optional
        Kept for Keras compatibility (TensorFlow's name scope); unused.

    Raises
    ------
    ValueError
        If ``decay_steps <= 0``, ``power < 0`` or an argument is not finite.
    TypeError
        If an argument has the wrong type.

    Notes
    -----
    Without ``cycle`` the step is clipped, :math:`s = \min(\mathrm{step}, D)`
    with :math:`D = \mathrm{decay\_steps}`. With ``cycle`` the horizon grows
    instead, :math:`D' = D \lceil \mathrm{step} / D \rceil`, with the multiplier
    taken as 1 at step 0. Then

    .. math::

        \eta(\mathrm{step}) = (\eta_0 - \eta_\mathrm{end})
        \left(1 - \frac{s}{D}\right)^{\mathrm{power}} + \eta_\mathrm{end},

    computed in ``float32``. With ``cycle`` a step that is an exact multiple of
    ``decay_steps`` gets ``end_learning_rate``, and the next step jumps back up
    (to a smaller value than at the start of the previous period, as the horizon
    is longer).

    Examples
    --------
    >>> from numbadam.schedules import PolynomialDecay
    >>> s = PolynomialDecay(0.1, decay_steps=100, end_learning_rate=0.01)
    >>> round(float(s(50)), 6), round(float(s(1000)), 6)
    (0.055, 0.01)
    >>> c = PolynomialDecay(0.1, 100, 0.01, cycle=True)
    >>> round(float(c(100)), 6), round(float(c(150)), 6)
    (0.01, 0.0325)
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        end_learning_rate: float = 0.0001,
        power: float = 1.0,
        cycle: bool = False,
        name: str | None = None,
    ) -> None:
        self.initial_learning_rate = _real(
            initial_learning_rate, "initial_learning_rate"
        )
        self.decay_steps = _positive(decay_steps, "decay_steps")
        self.end_learning_rate = _real(end_learning_rate, "end_learning_rate")
        # A negative power is infinite at the end of the decay.
        self.power = _non_negative(power, "power")
        self.cycle = _flag(cycle, "cycle")
        self.name = _name(name)

    def __call__(self, step: StepLike) -> np.float32:
        """Return the learning rate at ``step``.

        Parameters
        ----------
        step : int, float or 0-d array
            The optimizer step, cast to ``float32``.

        Returns
        -------
        numpy.float32
            The decayed learning rate.
        """
        s = _step_f32(step)
        decay_steps = np.float32(self.decay_steps)
        with np.errstate(all="ignore"):
            if self.cycle:
                # Step 0 would give a zero multiplier and a 0/0 fraction.
                if s == 0:
                    multiplier = _ONE
                else:
                    multiplier = np.ceil(s / decay_steps)
                decay_steps = decay_steps * multiplier
            else:
                s = np.minimum(s, decay_steps)
            p = s / decay_steps
            lr0 = np.float32(self.initial_learning_rate)
            end = np.float32(self.end_learning_rate)
            return (lr0 - end) * np.power(_ONE - p, np.float32(self.power)) + end

    def get_config(self) -> dict[str, Any]:
        """Return the Keras config.

        Returns
        -------
        dict
            Keys ``initial_learning_rate``, ``decay_steps``,
            ``end_learning_rate``, ``power``, ``cycle``, ``name``.
        """
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "cycle": self.cycle,
            "name": self.name,
        }


class CosineDecay(LearningRateSchedule):
    r"""Cosine decay, with an optional linear warmup before it.

    Parameters
    ----------
    initial_learning_rate : float
        The learning rate at step 0.
    decay_steps : int or float
        Length of the cosine decay; positive.
    alpha : float, default 0.0
        Final learning rate as a fraction of the rate the decay starts from.
    name : str, optional
        Kept for Keras compatibility (TensorFlow's name scope); unused.
    warmup_target : float, optional
        If given, the rate rises linearly from ``initial_learning_rate`` to
        ``warmup_target`` over ``warmup_steps`` steps, and the cosine decay then
        starts from ``warmup_target``. If None there is no warmup and
        ``warmup_steps`` is ignored.
    warmup_steps : int or float, default 0
        Length of the warmup; non-negative.

    Raises
    ------
    ValueError
        If ``decay_steps <= 0``, ``warmup_steps < 0`` or an argument is not
        finite.
    TypeError
        If an argument has the wrong type.

    Notes
    -----
    With :math:`D` = ``decay_steps``, :math:`W` = ``warmup_steps``, and the
    decay

    .. math::

        d(s, \eta) = \eta \left((1 - \alpha)\,
        \tfrac12 \left(1 + \cos \frac{\pi s}{D}\right) + \alpha\right),

    the schedule is :math:`d(\min(\mathrm{step}, D), \eta_0)` without warmup.
    With warmup, :math:`s = \min(\mathrm{step}, D + W)` and

    .. math::

        \eta(\mathrm{step}) = \begin{cases}
            \eta_0 + (\eta_\mathrm{target} - \eta_0)\, s / W & s < W \\
            d(s - W, \eta_\mathrm{target}) & s \ge W.
        \end{cases}

    Everything is ``float32`` except :math:`1 - \alpha`, which tf-keras
    computes in Python (double precision) before rounding it to ``float32``.

    Examples
    --------
    >>> from numbadam.schedules import CosineDecay
    >>> s = CosineDecay(0.1, decay_steps=100, alpha=0.1)
    >>> round(float(s(50)), 6), round(float(s(100)), 6), round(float(s(500)), 6)
    (0.055, 0.01, 0.01)
    >>> w = CosineDecay(0.0, 100, warmup_target=0.2, warmup_steps=10)
    >>> round(float(w(5)), 6), round(float(w(10)), 6), round(float(w(60)), 6)
    (0.1, 0.2, 0.1)
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        alpha: float = 0.0,
        name: str | None = None,
        warmup_target: float | None = None,
        warmup_steps: float = 0,
    ) -> None:
        self.initial_learning_rate = _real(
            initial_learning_rate, "initial_learning_rate"
        )
        self.decay_steps = _positive(decay_steps, "decay_steps")
        self.alpha = _real(alpha, "alpha")
        self.name = _name(name)
        self.warmup_target = (
            None if warmup_target is None else _real(warmup_target, "warmup_target")
        )
        self.warmup_steps = _non_negative(warmup_steps, "warmup_steps")

    def _decay(
        self, s: np.float32, decay_steps: np.float32, decay_from: np.float32
    ) -> np.float32:
        fraction = s / decay_steps
        cosine = _HALF * (_ONE + np.cos(_PI * fraction))
        # tf-keras writes (1 - self.alpha) on the Python number, so that
        # difference is taken in double precision and only then cast.
        decayed = np.float32(1 - self.alpha) * cosine + np.float32(self.alpha)
        return decay_from * decayed

    def __call__(self, step: StepLike) -> np.float32:
        """Return the learning rate at ``step``.

        Parameters
        ----------
        step : int, float or 0-d array
            The optimizer step, cast to ``float32``.

        Returns
        -------
        numpy.float32
            The warmed-up or decayed learning rate.
        """
        s = _step_f32(step)
        lr0 = np.float32(self.initial_learning_rate)
        decay_steps = np.float32(self.decay_steps)
        with np.errstate(all="ignore"):
            if self.warmup_target is None:
                return self._decay(np.minimum(s, decay_steps), decay_steps, lr0)
            target = np.float32(self.warmup_target)
            warmup_steps = np.float32(self.warmup_steps)
            s = np.minimum(s, decay_steps + warmup_steps)
            if s < warmup_steps:
                return (target - lr0) * (s / warmup_steps) + lr0
            return self._decay(s - warmup_steps, decay_steps, target)

    def get_config(self) -> dict[str, Any]:
        """Return the Keras config.

        Returns
        -------
        dict
            Keys ``initial_learning_rate``, ``decay_steps``, ``alpha``, ``name``,
            ``warmup_target``, ``warmup_steps``.
        """
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "name": self.name,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }


class CosineDecayRestarts(LearningRateSchedule):
    r"""Cosine decay with warm restarts (SGDR).

    Parameters
    ----------
    initial_learning_rate : float
        The learning rate at step 0.
    first_decay_steps : int or float
        Length of the first period; positive.
    t_mul : float, default 2.0
        Each period is ``t_mul`` times as long as the one before; positive.
    m_mul : float, default 1.0
        Each period starts from ``m_mul`` times the rate the one before started
        from.
    alpha : float, default 0.0
        Final learning rate of each period as a fraction of the rate that period
        starts from.
    name : str, optional
        Kept for Keras compatibility (TensorFlow's name scope); unused.

    Raises
    ------
    ValueError
        If ``first_decay_steps <= 0``, ``t_mul <= 0`` or an argument is not
        finite.
    TypeError
        If an argument has the wrong type.

    Notes
    -----
    With :math:`D` = ``first_decay_steps``, :math:`T` = ``t_mul``, :math:`M` =
    ``m_mul`` and :math:`c = \mathrm{step} / D`, the index :math:`i` of the
    current period and the fraction :math:`f` of it completed are

    .. math::

        i = \lfloor c \rfloor, \quad f = c - i \qquad (T = 1), \qquad
        i = \left\lfloor \frac{\ln(1 - c\,(1 - T))}{\ln T} \right\rfloor, \quad
        f = \frac{c - (1 - T^i) / (1 - T)}{T^i} \qquad (T \ne 1),

    and then

    .. math::

        \eta(\mathrm{step}) = \eta_0 \left((1 - \alpha)\,
        \tfrac12 M^i \left(1 + \cos \pi f\right) + \alpha\right),

    all in ``float32``, :math:`1 - \alpha` included (tf-keras casts ``alpha``
    to a tensor first here, unlike in :class:`CosineDecay`). The branch is
    chosen on ``float32(t_mul) == 1``, as TensorFlow's ``tf.cond`` does.

    For :math:`T \ne 1` the period index is the floor of a rounded quotient of
    logarithms: at the first step of a period that quotient can round to just
    below the integer, and the step then gets the end of the previous period
    (:math:`f \approx 1`) instead of the start of the new one. TensorFlow does
    the same, but its ``log`` comes from another math library, so at such a
    step the two may land on different sides (with NumPy's ``float32`` ``log``
    this happens even for :math:`T = 2`, at the start of the sixteenth period).
    With :math:`T < 1` the periods shrink and add up to :math:`D / (1 - T)`
    steps; from there on the logarithm's argument is not positive and the
    result is ``nan``, as in TensorFlow.

    References
    ----------
    I. Loshchilov and F. Hutter, "SGDR: Stochastic Gradient Descent with Warm
    Restarts", ICLR 2017, https://arxiv.org/abs/1608.03983.

    Examples
    --------
    >>> from numbadam.schedules import CosineDecayRestarts
    >>> s = CosineDecayRestarts(0.1, first_decay_steps=10)
    >>> [round(float(s(k)), 6) for k in (0, 5, 10, 20, 30)]
    [0.1, 0.05, 0.1, 0.05, 0.1]
    >>> c = CosineDecayRestarts(0.1, 10, t_mul=1.0, m_mul=0.5)
    >>> [round(float(c(k)), 6) for k in (5, 10, 15, 20)]
    [0.05, 0.05, 0.025, 0.025]
    """

    def __init__(
        self,
        initial_learning_rate: float,
        first_decay_steps: float,
        t_mul: float = 2.0,
        m_mul: float = 1.0,
        alpha: float = 0.0,
        name: str | None = None,
    ) -> None:
        self.initial_learning_rate = _real(
            initial_learning_rate, "initial_learning_rate"
        )
        self.first_decay_steps = _positive(first_decay_steps, "first_decay_steps")
        # ln(t_mul) is the divisor of the period index: nan or -inf at t_mul <= 0.
        self.t_mul = _positive(t_mul, "t_mul")
        self.m_mul = _real(m_mul, "m_mul")
        self.alpha = _real(alpha, "alpha")
        self.name = _name(name)

    def __call__(self, step: StepLike) -> np.float32:
        """Return the learning rate at ``step``.

        Parameters
        ----------
        step : int, float or 0-d array
            The optimizer step, cast to ``float32``.

        Returns
        -------
        numpy.float32
            The decayed learning rate.
        """
        s = _step_f32(step)
        t_mul = np.float32(self.t_mul)
        alpha = np.float32(self.alpha)
        with np.errstate(all="ignore"):
            fraction = s / np.float32(self.first_decay_steps)
            if t_mul == _ONE:
                i_restart = np.floor(fraction)
                fraction = fraction - i_restart
            else:
                i_restart = np.floor(
                    np.log(_ONE - fraction * (_ONE - t_mul)) / np.log(t_mul)
                )
                t_pow = np.power(t_mul, i_restart)
                sum_r = (_ONE - t_pow) / (_ONE - t_mul)
                fraction = (fraction - sum_r) / t_pow
            m_fac = np.power(np.float32(self.m_mul), i_restart)
            cosine = _HALF * m_fac * (_ONE + np.cos(_PI * fraction))
            decayed = (_ONE - alpha) * cosine + alpha
            return np.float32(self.initial_learning_rate) * decayed

    def get_config(self) -> dict[str, Any]:
        """Return the Keras config.

        Returns
        -------
        dict
            Keys ``initial_learning_rate``, ``first_decay_steps``, ``t_mul``,
            ``m_mul``, ``alpha``, ``name``.
        """
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "first_decay_steps": self.first_decay_steps,
            "t_mul": self.t_mul,
            "m_mul": self.m_mul,
            "alpha": self.alpha,
            "name": self.name,
        }


def _linear_cosine(
    s: np.float32,
    decay_steps: np.float32,
    num_periods: float,
    alpha: float,
    beta: float,
    initial_learning_rate: float,
    noise: Callable[[np.float32], np.float32] | None = None,
) -> np.float32:
    """The linear cosine decay of tf-keras at the clipped step ``s``.

    ``noise``, if given, is a callable of the clipped step returning the
    ``float32`` term added to the linear part.
    """
    linear = (decay_steps - s) / decay_steps
    if noise is not None:
        linear = linear + noise(s)
    fraction = np.float32(2.0) * np.float32(num_periods) * (s / decay_steps)
    cosine = _HALF * (_ONE + np.cos(_PI * fraction))
    decayed = (np.float32(alpha) + linear) * cosine + np.float32(beta)
    return np.float32(initial_learning_rate) * decayed


class LinearCosineDecay(LearningRateSchedule):
    r"""Linear cosine decay (Bello et al.), with an optional number of periods.

    Parameters
    ----------
    initial_learning_rate : float
        The learning rate at step 0 is ``initial_learning_rate * (1 + alpha +
        beta)``.
    decay_steps : int or float
        Length of the decay; positive.
    num_periods : float, default 0.5
        Number of periods of the cosine over ``decay_steps``.
    alpha : float, default 0.0
        Added to the linear part before it multiplies the cosine.
    beta : float, default 0.001
        Added to the product; with the default ``num_periods`` the learning rate
        from ``decay_steps`` on is ``initial_learning_rate * beta``.
    name : str, optional
        Kept for Keras compatibility (TensorFlow's name scope); unused.

    Raises
    ------
    ValueError
        If ``decay_steps <= 0`` or an argument is not finite.
    TypeError
        If an argument has the wrong type.

    Notes
    -----
    With :math:`D` = ``decay_steps``, :math:`P` = ``num_periods`` and
    :math:`s = \min(\mathrm{step}, D)`,

    .. math::

        \eta(\mathrm{step}) = \eta_0 \left(\left(\alpha + \frac{D - s}{D}\right)
        \tfrac12 \left(1 + \cos\left(\pi \cdot 2P \frac{s}{D}\right)\right)
        + \beta\right),

    computed in ``float32`` in tf-keras' order (``2P`` first, then times
    :math:`s / D`). This is TensorFlow's
    ``tf.compat.v1.train.linear_cosine_decay`` and the
    ``tf.keras.experimental.LinearCosineDecay`` schedule of TensorFlow 2.

    References
    ----------
    I. Bello, B. Zoph, V. Vasudevan and Q. V. Le, "Neural Optimizer Search with
    Reinforcement Learning", ICML 2017, https://arxiv.org/abs/1709.07417.

    Examples
    --------
    >>> from numbadam.schedules import LinearCosineDecay
    >>> s = LinearCosineDecay(0.1, decay_steps=100)
    >>> [round(float(s(k)), 6) for k in (0, 50, 100, 500)]
    [0.1001, 0.0251, 0.0001, 0.0001]
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        num_periods: float = 0.5,
        alpha: float = 0.0,
        beta: float = 0.001,
        name: str | None = None,
    ) -> None:
        self.initial_learning_rate = _real(
            initial_learning_rate, "initial_learning_rate"
        )
        self.decay_steps = _positive(decay_steps, "decay_steps")
        self.num_periods = _real(num_periods, "num_periods")
        self.alpha = _real(alpha, "alpha")
        self.beta = _real(beta, "beta")
        self.name = _name(name)

    def __call__(self, step: StepLike) -> np.float32:
        """Return the learning rate at ``step``.

        Parameters
        ----------
        step : int, float or 0-d array
            The optimizer step, cast to ``float32``.

        Returns
        -------
        numpy.float32
            The decayed learning rate.
        """
        s = _step_f32(step)
        decay_steps = np.float32(self.decay_steps)
        with np.errstate(all="ignore"):
            return _linear_cosine(
                np.minimum(s, decay_steps),
                decay_steps,
                self.num_periods,
                self.alpha,
                self.beta,
                self.initial_learning_rate,
            )

    def get_config(self) -> dict[str, Any]:
        """Return the Keras config.

        Returns
        -------
        dict
            Keys ``initial_learning_rate``, ``decay_steps``, ``num_periods``,
            ``alpha``, ``beta``, ``name``.
        """
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "num_periods": self.num_periods,
            "alpha": self.alpha,
            "beta": self.beta,
            "name": self.name,
        }


class NoisyLinearCosineDecay(LearningRateSchedule):
    r"""Linear cosine decay with Gaussian noise on the linear part.

    Parameters
    ----------
    initial_learning_rate : float
        Scale of the schedule, as in :class:`LinearCosineDecay`.
    decay_steps : int or float
        Length of the decay; positive.
    initial_variance : float, default 1.0
        Variance of the noise at step 0; non-negative.
    variance_decay : float, default 0.55
        Exponent of the variance's decay.
    num_periods : float, default 0.5
        Number of periods of the cosine over ``decay_steps``.
    alpha : float, default 0.0
        Added to the linear part before it multiplies the cosine.
    beta : float, default 0.001
        Added to the product.
    seed : int, optional
        If given, the noise at a step is a fixed function of ``seed`` and the
        step (see Notes); if None, each call draws fresh noise, as in
        TensorFlow.
    name : str, optional
        Kept for Keras compatibility (TensorFlow's name scope); unused.

    Raises
    ------
    ValueError
        If ``decay_steps <= 0``, ``initial_variance < 0`` or an argument is not
        finite.
    TypeError
        If an argument has the wrong type (``seed`` must be an int or None).

    Notes
    -----
    With :math:`D`, :math:`P`, :math:`s = \min(\mathrm{step}, D)` as in
    :class:`LinearCosineDecay`, :math:`\sigma_0^2` = ``initial_variance`` and
    :math:`\gamma` = ``variance_decay``,

    .. math::

        \epsilon \sim \mathcal N\!\left(0,\;
        \frac{\sigma_0^2}{(1 + s)^\gamma}\right), \qquad
        \eta(\mathrm{step}) = \eta_0 \left(\left(\alpha + \frac{D - s}{D}
        + \epsilon\right) \tfrac12 \left(1 + \cos\left(\pi \cdot 2P
        \frac{s}{D}\right)\right) + \beta\right),

    in ``float32`` and tf-keras' order: :math:`\epsilon` is a ``float32``
    standard normal draw times :math:`\sqrt{\sigma_0^2 / (1 + s)^\gamma}`,
    added to :math:`(D - s)/D` before :math:`\alpha` is. With
    ``initial_variance=0`` the noise is zero and the schedule equals
    :class:`LinearCosineDecay` bit for bit.

    Deviation: TensorFlow draws from its own random generator, advanced at each
    call, so its noise cannot be reproduced here and two calls at the same step
    differ even with a seed. With an integer ``seed`` numbadam draws the
    standard normal from a ``numpy.random.Generator(numpy.random.Philox(key=
    (seed mod 2**64) * 2**32 + k))``, where ``k`` is the bit pattern (as
    ``uint32``) of the ``float32`` step before the clip at ``decay_steps``: the
    same step always gives the same rate, so a run resumed from a checkpoint
    sees the same learning rates. With
    ``seed=None`` each call uses a freshly seeded generator, as TensorFlow
    does without a seed. ``seed`` comes before ``name``, as in tf-keras (the
    TensorFlow 2 ``tf.keras.experimental`` class has no ``seed``; its configs
    load here with ``seed=None``).

    References
    ----------
    I. Bello, B. Zoph, V. Vasudevan and Q. V. Le, "Neural Optimizer Search with
    Reinforcement Learning", ICML 2017, https://arxiv.org/abs/1709.07417.

    Examples
    --------
    >>> from numbadam.schedules import LinearCosineDecay, NoisyLinearCosineDecay
    >>> s = NoisyLinearCosineDecay(0.1, decay_steps=100, seed=7)
    >>> bool(s(10) == s(10)), bool(s(10) == s(11))
    (True, False)
    >>> quiet = NoisyLinearCosineDecay(0.1, 100, initial_variance=0.0)
    >>> bool(quiet(30) == LinearCosineDecay(0.1, 100)(30))
    True
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        initial_variance: float = 1.0,
        variance_decay: float = 0.55,
        num_periods: float = 0.5,
        alpha: float = 0.0,
        beta: float = 0.001,
        seed: int | None = None,
        name: str | None = None,
    ) -> None:
        self.initial_learning_rate = _real(
            initial_learning_rate, "initial_learning_rate"
        )
        self.decay_steps = _positive(decay_steps, "decay_steps")
        # The noise's standard deviation is the square root of the variance.
        self.initial_variance = _non_negative(initial_variance, "initial_variance")
        self.variance_decay = _real(variance_decay, "variance_decay")
        self.num_periods = _real(num_periods, "num_periods")
        self.alpha = _real(alpha, "alpha")
        self.beta = _real(beta, "beta")
        self.seed = _seed(seed)
        self.name = _name(name)

    def _generator(self, s: np.float32) -> np.random.Generator:
        if self.seed is None:
            return np.random.default_rng()
        # A counter-based generator keyed on (seed, step) needs no state between
        # calls. Adding zero maps -0.0 to 0.0, so both spellings of step 0 agree.
        bits = int(np.float32(s + np.float32(0.0)).view(np.uint32))
        key = (self.seed % 2**64) * 2**32 + bits
        return np.random.Generator(np.random.Philox(key=key))

    def __call__(self, step: StepLike) -> np.float32:
        """Return the learning rate at ``step``.

        Parameters
        ----------
        step : int, float or 0-d array
            The optimizer step, cast to ``float32``.

        Returns
        -------
        numpy.float32
            The decayed learning rate, with noise.
        """
        s = _step_f32(step)
        decay_steps = np.float32(self.decay_steps)
        generator = self._generator(s)

        def noise(clipped: np.float32) -> np.float32:
            variance = np.float32(self.initial_variance) / np.power(
                _ONE + clipped, np.float32(self.variance_decay)
            )
            std = np.sqrt(variance)
            return generator.standard_normal(dtype=np.float32) * std

        with np.errstate(all="ignore"):
            return _linear_cosine(
                np.minimum(s, decay_steps),
                decay_steps,
                self.num_periods,
                self.alpha,
                self.beta,
                self.initial_learning_rate,
                noise,
            )

    def get_config(self) -> dict[str, Any]:
        """Return the Keras config.

        Returns
        -------
        dict
            Keys ``initial_learning_rate``, ``decay_steps``,
            ``initial_variance``, ``variance_decay``, ``num_periods``,
            ``alpha``, ``beta``, ``seed``, ``name``.
        """
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "initial_variance": self.initial_variance,
            "variance_decay": self.variance_decay,
            "num_periods": self.num_periods,
            "alpha": self.alpha,
            "beta": self.beta,
            "seed": self.seed,
            "name": self.name,
        }


_BUILTIN: dict[str, type[LearningRateSchedule]] = {
    cls.__name__: cls
    for cls in (
        ExponentialDecay,
        PiecewiseConstantDecay,
        InverseTimeDecay,
        PolynomialDecay,
        CosineDecay,
        CosineDecayRestarts,
        LinearCosineDecay,
        NoisyLinearCosineDecay,
    )
}


def serialize(schedule: LearningRateSchedule) -> dict[str, Any]:
    """Serialize a schedule to a JSON-compatible dict.

    Parameters
    ----------
    schedule : LearningRateSchedule
        The schedule; it must implement ``get_config``.

    Returns
    -------
    dict
        ``{"class_name": type(schedule).__name__, "config":
        schedule.get_config()}``, the legacy Keras format.

    Raises
    ------
    TypeError
        If ``schedule`` is not a :class:`LearningRateSchedule`.

    Examples
    --------
    >>> from numbadam.schedules import InverseTimeDecay, serialize
    >>> serialize(InverseTimeDecay(0.1, 10, 0.5))["config"]["decay_rate"]
    0.5
    """
    if not isinstance(schedule, LearningRateSchedule):
        raise TypeError(
            "`schedule` must be a LearningRateSchedule, got "
            f"{schedule!r} of type {type(schedule).__name__}."
        )
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(
    config: Mapping[str, Any],
    custom_objects: Mapping[str, type[LearningRateSchedule]] | None = None,
) -> LearningRateSchedule:
    """Build a schedule from the output of :func:`serialize`.

    Parameters
    ----------
    config : mapping
        ``{"class_name": str, "config": dict}``. Other keys, such as the
        ``module`` and ``registered_name`` of the newer Keras format, are
        ignored.
    custom_objects : mapping of str to class, optional
        Extra schedule classes by name; they take precedence over the built-in
        ones, as in Keras.

    Returns
    -------
    LearningRateSchedule
        ``cls.from_config(config["config"])`` for the named class.

    Raises
    ------
    ValueError
        If ``class_name`` names no known schedule.
    TypeError
        If ``config`` is not a mapping with ``class_name`` and ``config`` keys.

    Examples
    --------
    >>> from numbadam.schedules import deserialize
    >>> s = deserialize(
    ...     {
    ...         "class_name": "PolynomialDecay",
    ...         "config": {"initial_learning_rate": 0.1, "decay_steps": 100},
    ...     }
    ... )
    >>> round(float(s(100)), 6)
    0.0001
    """
    if (
        not isinstance(config, Mapping)
        or "class_name" not in config
        or "config" not in config
    ):
        raise TypeError(
            "`config` must be a dict with keys 'class_name' and 'config', "
            f"got {config!r}."
        )
    class_name = config["class_name"]
    custom = dict(custom_objects or {})
    cls = custom.get(class_name, _BUILTIN.get(class_name))
    if cls is None:
        known = sorted(set(_BUILTIN) | set(custom))
        raise ValueError(
            f"Unknown learning rate schedule {class_name!r}; known schedules are "
            f"{known}. Pass custom classes in `custom_objects`."
        )
    return cls.from_config(config["config"])
