"""AdamW: :class:`~numbadam.Adam` with Keras 3's decoupled weight decay on."""

from __future__ import annotations

from typing import Any

from .adam import Adam

__all__ = ["AdamW"]


class AdamW(Adam):
    """Adam with decoupled weight decay, with Keras 3's ``AdamW`` defaults.

    Every step first decays each variable, ``var -= (var * weight_decay) *
    lr_t`` (``lr_t`` the step's learning rate), then takes the Adam update
    (see :class:`~numbadam.Adam`, whose ``weight_decay`` this sets). torch's
    ``AdamW`` computes ``var *= 1 - lr * weight_decay`` (the same formula,
    rounded differently) and defaults to 0.01; see ``docs/semantics.md``.

    Parameters
    ----------
    learning_rate : float, callable or LearningRateSchedule, default 0.001
    weight_decay : float, default 0.004
        Keras 3's default; ``None`` or ``0`` turn the decay off.
    beta_1 : float or callable, default 0.9
    beta_2 : float or callable, default 0.999
    epsilon : float or callable, default 1e-7
    amsgrad : bool, default False
    name : str, default "AdamW"
    **kwargs
        As :class:`~numbadam.Adam` (``sparse_mode``, ``clipnorm``, ...).

    Raises
    ------
    ValueError
        For a negative, NaN or infinite ``weight_decay``, and as
        :class:`~numbadam.Adam`.

    Examples
    --------
    >>> import numpy as np
    >>> import numbadam
    >>> opt = numbadam.AdamW(learning_rate=0.1, weight_decay=0.5)
    >>> w = np.array([2.0, -2.0])
    >>> _ = opt.apply_gradients([(np.zeros(2), w)])  # Adam moves nothing here
    >>> w.round(6).tolist()
    [1.9, -1.9]
    >>> opt.get_config()["weight_decay"]
    0.5
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        weight_decay: Any = 0.004,
        beta_1: Any = 0.9,
        beta_2: Any = 0.999,
        epsilon: Any = 1e-7,
        amsgrad: bool = False,
        name: str = "AdamW",
        **kwargs: Any,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            amsgrad=amsgrad,
            name=name,
            weight_decay=weight_decay,
            **kwargs,
        )
