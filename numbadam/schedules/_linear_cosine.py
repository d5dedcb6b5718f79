"""Linear cosine decay and its noisy variant (Bello et al., 2017).

Private: the public names are re-exported by :mod:`numbadam.schedules`.
"""

from __future__ import annotations

from collections.abc import Callable
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
    _seed,
    _step_f32,
)


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
