"""Exponential, piecewise-constant, inverse-time and polynomial decay.

Private: the public names are re-exported by :mod:`numbadam.schedules`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ._base import (
    _ONE,
    LearningRateSchedule,
    StepLike,
    _flag,
    _name,
    _non_negative,
    _positive,
    _real,
    _step_array,
    _step_f32,
)


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
