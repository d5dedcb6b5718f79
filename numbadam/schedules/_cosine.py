"""Cosine decay (with linear warmup) and cosine decay with restarts (SGDR).

Private: the public names are re-exported by :mod:`numbadam.schedules`.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._base import (
    _HALF,
    _ONE,
    _PI,
    LearningRateSchedule,
    StepLike,
    _name,
    _non_negative,
    _positive,
    _real,
    _step_f32,
)


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
