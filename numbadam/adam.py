"""Adam, numerically faithful to ``tf.keras.optimizers.legacy.Adam``."""

from __future__ import annotations

from typing import Any, Dict

import numpy as np
from numba import njit

from . import _dispatch
from ._types import AdamCoefficients
from .optimizer import OptimizerV2, _is_number

__all__ = ["Adam"]


@njit(cache=True, error_model="numpy")
def _scalars32(lr, b1, b2, eps, decay, step):
    # TF's per-step scalars for float32 variables, every operation rounded to
    # float32 as TF's graph rounds it (the hyperparameters are float32 values)
    one = np.float32(1.0)
    lr_t = np.float32(lr)
    if decay > 0:
        lr_t = lr_t / (one + np.float32(decay) * np.float32(step))
    b1c, b2c = np.float32(b1), np.float32(b2)
    t = np.float32(step + 1)
    # Eigen's ApplyAdam: (lr * sqrt(1 - b2^t)) / (1 - b1^t)
    alpha = (lr_t * np.sqrt(one - b2c**t)) / (one - b1c**t)
    return alpha, one - b1c, one - b2c, np.float32(eps)


@njit(cache=True, error_model="numpy")
def _scalars64(lr, b1, b2, eps, decay, step):
    # the float32 hyperparameters widened exactly, then float64 arithmetic
    lr_t = np.float64(lr)
    if decay > 0:
        lr_t = lr_t / (1.0 + np.float64(decay) * np.float64(step))
    b1c, b2c = np.float64(b1), np.float64(b2)
    t = np.float64(step + 1)
    alpha = (lr_t * np.sqrt(1.0 - b2c**t)) / (1.0 - b1c**t)
    return alpha, 1.0 - b1c, 1.0 - b2c, np.float64(eps)


@njit(cache=True, error_model="numpy")
def _alphas32(lr, b1, b2, eps, decay, step, out):
    # _scalars32's alpha for steps step, step + 1, ... (float32 values in float64)
    for i in range(out.shape[0]):
        out[i] = _scalars32(lr, b1, b2, eps, decay, step + i)[0]


@njit(cache=True, error_model="numpy")
def _alphas64(lr, b1, b2, eps, decay, step, out):
    for i in range(out.shape[0]):
        out[i] = _scalars64(lr, b1, b2, eps, decay, step + i)[0]


def _same_objects(a: tuple, b: tuple) -> bool:
    # (five hyperparameters; unrolled: a generator costs more than the lookup)
    return (
        a[0] is b[0] and a[1] is b[1] and a[2] is b[2] and a[3] is b[3] and a[4] is b[4]
    )


#: Steps of scalars computed at once while the hyperparameters stay the same.
COEFFICIENT_BLOCK = 64


def _coefficient_block(c, lr32, b1_32, b2_32, eps, decay, step, count):
    """``[_coefficients(c, ..., step + i) for i in range(count)]``, bit for bit,
    from one compiled call: only ``alpha`` depends on the step."""
    if type(eps) is not float:
        eps = float(eps)
    d32 = float(np.float32(decay)) if decay > 0 else 0.0
    f = _scalars64 if c is np.float64 else _scalars32
    first = f(lr32, b1_32, b2_32, eps, d32, step)
    if count == 1:
        return [AdamCoefficients(*first)]
    alphas = np.empty(count)
    (_alphas64 if c is np.float64 else _alphas32)(
        lr32, b1_32, b2_32, eps, d32, step, alphas
    )
    _, omb1, omb2, e = first
    return [AdamCoefficients(a, omb1, omb2, e) for a in alphas.tolist()]


def _coefficients(c, lr32, b1_32, b2_32, eps, decay, step) -> AdamCoefficients:
    """TF's ``_prepare_local`` for compute type ``c`` (np.float32 or np.float64).

    The float32-rounded hyperparameters are cast to ``c`` and every operation is
    rounded in ``c``, as TF's graph does; ``epsilon`` is cast directly. A tiny
    compiled function does the arithmetic (the same IEEE operations and C
    ``pow``/``powf`` as NumPy scalars, at a tenth of the Python cost).

    The results are Python floats holding values of ``c`` exactly (the CPU
    kernels' float32 arguments take them without rounding; the CUDA backend
    casts them to ``c``): building four NumPy scalars would cost more than
    the arithmetic.
    """
    return _coefficient_block(c, lr32, b1_32, b2_32, eps, decay, step, 1)[0]


_SPARSE_MODES = ("dense", "lazy")


class Adam(OptimizerV2):
    r"""Adam with Keras/TensorFlow 2 semantics, on NumPy and CUDA arrays.

    Parameters
    ----------
    learning_rate : float, callable or LearningRateSchedule, default 0.001
        The step size; a zero-argument callable is re-read at every step and a
        schedule is evaluated at ``iterations`` before the increment.
    beta_1 : float or callable, default 0.9
        Decay rate of the first-moment estimate.
    beta_2 : float or callable, default 0.999
        Decay rate of the second-moment estimate.
    epsilon : float or callable, default 1e-7
        "Epsilon hat", added outside the square root; ``0`` or ``None`` mean
        1e-7, as in Keras.
    amsgrad : bool, default False
        Keep ``vhat = max(vhat, v)`` and divide by ``sqrt(vhat)`` (Reddi et al.).
    name : str, default "Adam"
    sparse_mode : {"dense", "lazy"}, default "dense"
        How :class:`~numbadam.IndexedSlices` gradients update a table.
        ``"dense"`` is TensorFlow's rule: every row takes the dense step (``m``
        and ``v`` decay on rows without a gradient), one pass over the table.
        ``"lazy"`` is the LazyAdam rule of TensorFlow Addons: only rows with a
        gradient change (their ``m``, ``v`` and values, with the bias
        correction of the global step); its cost does not depend on the
        table's size. Not part of Keras' Adam: serialised by
        :meth:`get_config` only when ``"lazy"``.
    **kwargs
        ``clipnorm``, ``clipvalue``, ``lr`` (deprecated alias of
        ``learning_rate``, with a ``UserWarning``), ``decay`` (``lr / (1 + decay
        * iterations)``).

    Raises
    ------
    TypeError
        For an unknown keyword argument or a hyperparameter of the wrong type.
    ValueError
        For a negative ``clipnorm``, ``clipvalue``, ``lr`` or ``decay``.

    Notes
    -----
    With :math:`t` = ``iterations + 1`` and :math:`g` the (clipped) gradient:

    .. math::

        \alpha_t &= \eta_t \sqrt{1 - \beta_2^t} / (1 - \beta_1^t) \\
        m &\leftarrow m + (g - m)(1 - \beta_1) \\
        v &\leftarrow v + (g^2 - v)(1 - \beta_2) \\
        \theta &\leftarrow \theta - \alpha_t m / (\sqrt{v} + \hat\epsilon)

    As in TensorFlow, ``learning_rate``, ``beta_1``, ``beta_2``, ``decay`` and
    callable results are rounded to float32 before being cast to the variable's
    dtype, and ``epsilon`` is cast directly. Sparse gradients
    (:class:`~numbadam.IndexedSlices`) are clipped, their duplicate indices
    summed, and then every row of the table takes the dense step with a zero
    gradient where it has none (``m`` and ``v`` decay everywhere), in one fused
    pass. float16 variables are computed in float32 and rounded once on store.
    See ``docs/semantics.md`` for every formula and deviation.

    References
    ----------
    .. [1] Kingma and Ba, "Adam: A Method for Stochastic Optimization", 2014.
    .. [2] Reddi, Kale and Kumar, "On the Convergence of Adam and Beyond", 2018.

    Examples
    --------
    >>> import numpy as np
    >>> import numbadam
    >>> opt = numbadam.Adam(learning_rate=0.1)
    >>> w = np.array([1.0, 2.0], dtype=np.float32)
    >>> _ = opt.apply_gradients([(np.array([0.5, -0.5], np.float32), w)])
    >>> w.astype(float).round(4).tolist(), int(opt.iterations)
    ([0.9, 2.1], 1)
    >>> opt.get_slot_names()
    ['m', 'v']
    """

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: Any = 0.9,
        beta_2: Any = 0.999,
        epsilon: Any = 1e-7,
        amsgrad: bool = False,
        name: str = "Adam",
        sparse_mode: str = "dense",
        **kwargs: Any,
    ) -> None:
        super().__init__(name, **kwargs)
        if sparse_mode not in _SPARSE_MODES:
            raise ValueError(
                f"sparse_mode must be one of {_SPARSE_MODES}, got {sparse_mode!r}"
            )
        self.sparse_mode = sparse_mode
        self._coef_blocks: Dict[Any, Any] = {}  # compute dtype -> (hypers, step, list)
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self._set_hyper("beta_1", beta_1)
        self._set_hyper("beta_2", beta_2)
        if not (epsilon is None or callable(epsilon) or _is_number(epsilon)):
            raise TypeError(f"epsilon must be a float or a callable, got {epsilon!r}")
        self.epsilon = epsilon or 1e-7
        if not isinstance(amsgrad, (bool, np.bool_)) and (
            not _is_number(amsgrad) or amsgrad not in (0, 1)
        ):  # bool("no") is True: a string would silently turn AMSGrad on
            raise TypeError(f"amsgrad must be a bool, got {amsgrad!r}")
        self.amsgrad = bool(amsgrad)

    # -- hyperparameter properties (Keras exposes them as attributes) ---------

    @property
    def learning_rate(self) -> Any:
        """The learning rate: a float, a callable or a schedule."""
        return self._get_hyper("learning_rate")

    @learning_rate.setter
    def learning_rate(self, value: Any) -> None:
        self._set_hyper("learning_rate", value)

    lr = learning_rate

    @property
    def beta_1(self) -> Any:
        """Decay rate of the first moment."""
        return self._get_hyper("beta_1")

    @beta_1.setter
    def beta_1(self, value: Any) -> None:
        self._set_hyper("beta_1", value)

    @property
    def beta_2(self) -> Any:
        """Decay rate of the second moment."""
        return self._get_hyper("beta_2")

    @beta_2.setter
    def beta_2(self, value: Any) -> None:
        self._set_hyper("beta_2", value)

    @property
    def decay(self) -> float:
        """Time-inverse learning-rate decay: ``lr / (1 + decay * iterations)``."""
        return self._initial_decay

    @decay.setter
    def decay(self, value: float) -> None:
        self._initial_decay = self._check_real(value, "decay")
        self._set_hyper("decay", self._initial_decay)

    # -- the step ---------------------------------------------------------------

    def _create_slots(self, var_list) -> None:
        # Separate loops: TF's order of slot variables (all m, all v, all vhat).
        for var in var_list:
            self.add_slot(var, "m")
        for var in var_list:
            self.add_slot(var, "v")
        if self.amsgrad:
            for var in var_list:
                self.add_slot(var, "vhat")

    def _required_slots(self):
        return ("m", "v", "vhat") if self.amsgrad else ("m", "v")

    def _prepare_step(self, step: int, dtypes: set) -> Dict[Any, AdamCoefficients]:
        """Per-step scalars by storage dtype, as TF's ``_prepare_local``."""
        hyper = self._hyper  # (float32 values need no evaluation: the common case)
        lr32, b1_32, b2_32 = hyper["learning_rate"], hyper["beta_1"], hyper["beta_2"]
        if type(lr32) is not np.float32:
            lr32 = self._hyper_value("learning_rate", step)
        if type(b1_32) is not np.float32:
            b1_32 = self._hyper_value("beta_1", step)
        if type(b2_32) is not np.float32:
            b2_32 = self._hyper_value("beta_2", step)
        eps = self.epsilon
        if type(eps) is not float:  # (the common case skips these checks)
            if callable(eps):
                eps = eps()
            if not _is_number(eps) or isinstance(eps, bool):
                raise TypeError(f"epsilon evaluated to {eps!r}, not a real number")
        decay = self._initial_decay
        # keyed by storage dtype (what _apply looks up), computed per compute dtype
        by_compute: Dict[Any, AdamCoefficients] = {}
        out = {}
        for dtype in dtypes:
            cdt = _dispatch.compute_dtype(dtype)
            coef = by_compute.get(cdt)
            if coef is None:
                hyp = (lr32, b1_32, b2_32, eps, decay)
                coef = by_compute[cdt] = self._coefficients_at(cdt, hyp, step)
            out[dtype] = coef
        return out

    def _coefficients_at(
        self, cdt: np.dtype, hyp: tuple, step: int
    ) -> AdamCoefficients:
        # While the hyperparameters are the very objects of the last step (fixed
        # floats; a callable or schedule returns new ones), the scalars of the
        # next COEFFICIENT_BLOCK steps come from one compiled call, the same bits
        # as step by step, and a step takes its own from the list.
        block = self._coef_blocks.get(cdt)
        count = 1
        if block is not None and _same_objects(block[0], hyp):
            i = step - block[1]
            if 0 <= i < len(block[2]):
                return block[2][i]
            count = COEFFICIENT_BLOCK
        coefs = _coefficient_block(cdt.type, *hyp, step, count)
        self._coef_blocks[cdt] = (hyp, step, coefs)
        return coefs[0]

    def _apply(self, sparse: bool, work: Any, backend: Any, slots: Dict, state: Any):
        coef = state[work.flat.dtype]
        vhat = slots["vhat"] if self.amsgrad else None
        if sparse:
            backend.sparse_step(
                work, slots["m"], slots["v"], vhat, coef, self._clipvalue,
                self._clipnorm, lazy=self.sparse_mode == "lazy",
            )  # fmt: skip
        else:
            backend.dense_step(
                work, slots["m"], slots["v"], vhat, coef, self._clipvalue,
                self._clipnorm,
            )  # fmt: skip

    def get_config(self) -> Dict[str, Any]:
        """Configuration with Keras' keys.

        Hyperparameters are float32-rounded after the first step, as in TF.

        Examples
        --------
        >>> import numbadam
        >>> cfg = numbadam.Adam(learning_rate=0.01, amsgrad=True).get_config()
        >>> cfg["learning_rate"], cfg["amsgrad"], cfg["epsilon"]
        (0.01, True, 1e-07)
        """
        config = super().get_config()
        config.update(
            {
                "learning_rate": self._serialize_hyperparameter("learning_rate"),
                "decay": self._initial_decay,
                "beta_1": self._serialize_hyperparameter("beta_1"),
                "beta_2": self._serialize_hyperparameter("beta_2"),
                "epsilon": self.epsilon,
                "amsgrad": self.amsgrad,
            }
        )
        if self.sparse_mode != "dense":
            config["sparse_mode"] = self.sparse_mode
        return config

    def set_weights(self, weights) -> None:
        """Set the state; Keras-1 lists of ``3n+1`` weights are cut, as in TF.

        (The Keras 1 Adam kept ``vhat`` even without AMSGrad.)
        """
        params = self.weights
        num_vars = int((len(params) - 1) / 2)
        weights = list(weights)
        if len(weights) == 3 * num_vars + 1:
            weights = weights[: len(params)]
        super().set_weights(weights)
