"""Adam, numerically faithful to ``tf.keras.optimizers.legacy.Adam``."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence

import numpy as np

from . import _backend
from ._accum import ACCUMULATOR
from ._coefficients import CoefficientCache
from ._ema import SLOT as EMA_SLOT
from ._slots import memory_key
from ._types import AdamCoefficients
from ._weight_decay import check_weight_decay, decay_scalars, excluded_variables
from .optimizer import OptimizerV2, _is_number

__all__ = ["Adam"]


_SPARSE_MODES = ("dense", "lazy")
_SECOND_MOMENTS = ("element", "row")


def _check_epsilon(eps: Any) -> float:
    if not _is_number(eps) or isinstance(eps, bool):
        raise TypeError(f"epsilon evaluated to {eps!r}, not a real number")
    eps = float(eps)
    if not eps >= 0:  # (NaN too)
        raise ValueError(f"epsilon must be >= 0 and not NaN, got {eps!r}")
    return eps


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
    weight_decay : float or None, default None
        Decoupled weight decay, as Keras 3's: before each step's Adam update
        ``var -= (var * weight_decay) * lr_t`` with that step's learning rate
        (after ``decay`` and schedules), fused into the same pass. Sparse
        gradients: every row is decayed under ``sparse_mode="dense"``, only the
        rows with a gradient under ``"lazy"``. ``None`` or ``0``: no decay (the
        results of plain Adam, bit for bit). See
        :meth:`exclude_from_weight_decay` and :class:`~numbadam.AdamW`.
    second_moment : {"element", "row"}, default "element"
        ``"row"``: variables of two or more dimensions keep one second moment
        per row (the first axis; the rest is flattened to ``D`` values), as
        FBGEMM's partial row-wise Adam: ``v`` (and ``vhat``) have shape
        ``(R,)`` and follow the mean of the row's squared gradient, so the
        state is ``R * (D + 1)`` values instead of ``2 * R * D``. Dense and
        sparse gradients (either ``sparse_mode``) take the same row rule;
        0-d and 1-D variables stay element-wise, and the variables of a
        :class:`~numbadam.ParameterBuffer` are stepped one by one. Not part
        of Keras' Adam: serialised by :meth:`get_config` only when ``"row"``;
        :func:`numbadam.keras3.save_keras_optimizer` refuses such state.
        Works with ``gradient_accumulation_steps`` and ``use_ema`` (the
        average fused into the row-wise pass). See ``docs/semantics.md``.
    **kwargs
        ``clipnorm``, ``global_clipnorm`` (all gradients of a call clipped
        by their joint norm; not with ``clipnorm``), ``clipvalue``, ``lr``
        (deprecated alias of
        ``learning_rate``, with a ``UserWarning``), ``decay`` (``lr / (1 + decay
        * iterations)``), ``gradient_accumulation_steps`` (Keras 3's: an int
        ``N >= 2`` makes every ``N`` calls one update with the mean of their
        gradients; ``iterations`` then counts updates and ``weights[0]``
        calls; see ``docs/semantics.md``); Keras 3's ``use_ema`` (default False),
        ``ema_momentum`` (default 0.99) and ``ema_overwrite_frequency``
        (default None): an EMA of every variable, ``average = (momentum *
        average) + ((1 - momentum) * var)`` after each step (momentum 0 on the
        first), in the same pass, the variables overwritten by their averages
        every ``ema_overwrite_frequency`` steps and by
        :meth:`finalize_variable_values`; slot ``"average"`` (sparse: every
        row under ``sparse_mode="dense"``, the rows with a gradient under
        ``"lazy"``, whose averages start as a copy of the variable); ``slot_dir`` (a folder: the slots of NumPy
        variables as ``.npy`` memory maps there; ``docs/state-on-disk.md``).

    Raises
    ------
    TypeError
        For an unknown keyword argument or a hyperparameter of the wrong type.
    ValueError
        For a negative ``clipnorm``, ``clipvalue``, ``lr``, ``decay`` or
        ``weight_decay``; a NaN
        or infinite hyperparameter; ``beta_1`` or ``beta_2`` outside
        ``[0, 1)``; an ``ema_momentum`` outside ``[0, 1]``; an
        ``ema_overwrite_frequency`` that is not an integer >= 1 or None; a
        negative or NaN ``epsilon`` (callables and schedules: at the step,
        before anything changes).

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
    dtype, except NumPy float64 values (``np.float64``, 0-d float64 arrays,
    or what a callable or schedule returns), which TF keeps in float64 and
    casts directly; ``epsilon`` is always cast directly. Sparse gradients
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

    _HYPER_RANGES = {
        **OptimizerV2._HYPER_RANGES,
        "beta_1": (0.0, 1.0),
        "beta_2": (0.0, 1.0),
    }

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: Any = 0.9,
        beta_2: Any = 0.999,
        epsilon: Any = 1e-7,
        amsgrad: bool = False,
        name: str = "Adam",
        sparse_mode: str = "dense",
        weight_decay: Any = None,
        second_moment: str = "element",
        **kwargs: Any,
    ) -> None:
        weight_decay = check_weight_decay(weight_decay)
        if not isinstance(second_moment, str) or second_moment not in _SECOND_MOMENTS:
            raise ValueError(
                f"second_moment must be one of {_SECOND_MOMENTS}, got "
                f"{second_moment!r}"
            )
        super().__init__(name, **kwargs)
        self._weight_decay = weight_decay
        self._wd_excluded: set = set()  # memory keys of excluded variables
        self._step_decay: Dict[Any, Any] = {}  # storage dtype -> Decay, per step
        if sparse_mode not in _SPARSE_MODES:
            raise ValueError(
                f"sparse_mode must be one of {_SPARSE_MODES}, got {sparse_mode!r}"
            )
        self.sparse_mode = sparse_mode
        self._second_moment = second_moment
        if second_moment == "row":  # (see _slots.slot_shape)
            self._row_slots = ("v", "vhat")
        self._coefficients = CoefficientCache()
        self._set_hyper("learning_rate", kwargs.get("lr", learning_rate))
        self._set_hyper("decay", self._initial_decay)
        self._set_hyper("beta_1", beta_1)
        self._set_hyper("beta_2", beta_2)
        self.epsilon = epsilon
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
    def epsilon(self) -> Any:
        """Epsilon hat: a float or a callable; ``0`` or ``None`` mean 1e-7."""
        return self._epsilon

    @epsilon.setter
    def epsilon(self, value: Any) -> None:
        if not (value is None or callable(value) or _is_number(value)):
            raise TypeError(f"epsilon must be a float or a callable, got {value!r}")
        if value is not None and not callable(value):
            _check_epsilon(value)  # (a constant is checked once, here)
        self._epsilon = value or 1e-7

    @property
    def decay(self) -> float:
        """Time-inverse learning-rate decay: ``lr / (1 + decay * iterations)``."""
        return self._initial_decay

    @decay.setter
    def decay(self, value: float) -> None:
        self._initial_decay = self._check_decay(value)
        self._set_hyper("decay", self._initial_decay)

    @property
    def weight_decay(self) -> Any:
        """Decoupled weight decay (Keras 3's), or ``None``."""
        return self._weight_decay

    @weight_decay.setter
    def weight_decay(self, value: Any) -> None:
        self._weight_decay = check_weight_decay(value)

    def exclude_from_weight_decay(
        self,
        var_list: Optional[Sequence[Any]] = None,
        var_names: Optional[Sequence[str]] = None,
        *,
        variables: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """Exclude variables from the weight decay (Keras 3's method).

        As in Keras 3, each call replaces the exclusions of the previous one,
        and it must come before the first step.

        Parameters
        ----------
        var_list : list of arrays, optional
            Variables (NumPy or CUDA arrays) that get no weight decay, matched
            by their memory, shape, strides and dtype (a new view of the same
            elements is the same variable).
        var_names : list of str, optional
            Keras 3's anchor words: joined into one regular expression
            (``"|".join(var_names)``) and searched in every name of
            ``variables``; the arrays whose names match get no weight decay
            (``var_names=["bias"]`` exempts every bias).
        variables : mapping of str to array, keyword-only
            The names of the arrays, which arrays lack: a model's parameters
            by name, or by Keras path as
            :func:`numbadam.keras3.load_keras_variables` returns them (Keras
            searches the short name, ``"kernel"``; numbadam the key, e.g.
            ``"dense/kernel"``, which contains it). Needed with ``var_names``.

        Raises
        ------
        ValueError
            After the first step (as Keras 3: exclusions are configured before
            the optimizer is built), or ``var_names`` that are no regular
            expression.
        TypeError
            ``var_names`` without ``variables`` (or the reverse); entries that
            are not arrays or strings. Nothing changes then.

        Examples
        --------
        >>> import numpy as np
        >>> import numbadam
        >>> w, b = np.ones(2, np.float32), np.ones(2, np.float32)
        >>> opt = numbadam.AdamW(learning_rate=0.5, weight_decay=0.5)
        >>> opt.exclude_from_weight_decay(var_list=[b])
        >>> zero = np.zeros(2, np.float32)
        >>> _ = opt.apply_gradients([(zero, w), (zero, b)])
        >>> w.tolist(), b.tolist()
        ([0.75, 0.75], [1.0, 1.0])
        >>> params = {"dense/kernel": np.ones(2), "dense/bias": np.ones(2)}
        >>> opt = numbadam.AdamW(learning_rate=0.5, weight_decay=0.5)
        >>> opt.exclude_from_weight_decay(var_names=["bias"], variables=params)
        >>> _ = opt.apply_gradients([(np.zeros(2), v) for v in params.values()])
        >>> {k: v.tolist() for k, v in params.items()}
        {'dense/kernel': [0.75, 0.75], 'dense/bias': [1.0, 1.0]}
        """
        excluded = excluded_variables(var_list, var_names, variables)
        if self._iterations is not None:
            raise ValueError(
                "exclude_from_weight_decay can only be configured before the "
                "optimizer is built (before its first step)"
            )
        self._wd_excluded = {memory_key(var) for var in excluded}

    @property
    def second_moment(self) -> str:
        """``"element"`` or ``"row"`` (one second moment per row of 2-D+ variables)."""
        return self._second_moment

    def _decay_of(self, work) -> Any:
        # the Decay argument of one work item (None: excluded, or no decay).
        # Excluded: the array it steps, or the user's variable it came from
        # (its label's; a distributed work may step a view of part of it)
        ex = self._wd_excluded
        if ex and (
            memory_key(work.var) in ex
            or memory_key(getattr(work.label, "var", work.var)) in ex
        ):
            return None
        return self._step_decay.get(work.flat.dtype)

    def _prepare_buffer(self, buf):
        # Row-wise slots are per variable: the buffer's pairs one by one.
        if self._row_slots:
            return NotImplemented
        # A one-pass step decays all of the buffer or none of it: with only
        # some of its variables excluded, the per-variable pairs instead.
        if self._weight_decay and self._wd_excluded:
            out = sum(memory_key(p) in self._wd_excluded for p in buf.params)
            if 0 < out < len(buf.params):
                return NotImplemented
            if out:  # every variable excluded: the whole buffer is
                self._wd_excluded.add(memory_key(buf.data))
        return super()._prepare_buffer(buf)

    def _plain_step(self) -> bool:
        # (the cached plan of one pair launches the kernel without decay)
        return not self._weight_decay and super()._plain_step()

    def _plan_coefficients(self, step: int, plan: Any) -> AdamCoefficients:
        # a plain step's scalars: no decay or average scalars to compute
        return self._coefficients.at(plan.cdt, self._step_hypers(step), step)

    def _remember_list(self, step) -> None:
        # one multi-tensor launch decays every variable alike, and keeps
        # element-wise slots only
        if self._wd_excluded:
            return
        if self._row_slots and any(
            len(getattr(it[3], "shape", ())) >= 2 for it in step.items
        ):
            return
        super()._remember_list(step)

    # -- the step ---------------------------------------------------------------

    def _create_slots(self, var_list) -> None:
        # Separate loops: TF's order of slot variables (all m, all v, all vhat);
        # gradient accumulators first, where Keras 3 creates them.
        if self._accum_steps is not None:
            for var in var_list:
                self.add_slot(var, ACCUMULATOR)
        for var in var_list:
            self.add_slot(var, "m")
        for var in var_list:
            self.add_slot(var, "v")
        if self.amsgrad:
            for var in var_list:
                self.add_slot(var, "vhat")
        self._create_ema_slots(var_list)  # (after them: weights order)

    def _required_slots(self):
        names = ("m", "v", "vhat") if self.amsgrad else ("m", "v")
        names = names + (EMA_SLOT,) if self._use_ema else names
        return names if self._accum_steps is None else (ACCUMULATOR,) + names

    def _prepare_step(self, step: int, dtypes: set) -> Dict[Any, AdamCoefficients]:
        """Per-step scalars by storage dtype, as TF's ``_prepare_local``."""
        hyp = self._step_hypers(step)
        lr, decay = hyp[0], hyp[4]
        # keyed by storage dtype (what _apply looks up), computed per compute dtype
        if self._weight_decay:
            self._step_decay = self._decays(step, dtypes, lr, decay)
        elif self._step_decay:
            self._step_decay = {}
        if self._use_ema or self._step_ema:
            self._ema_step_scalars(step, dtypes)
        if len(dtypes) == 1:
            for dtype in dtypes:
                cdt = _backend.compute_dtype(dtype)
                return {dtype: self._coefficients.at(cdt, hyp, step)}
        by_compute: Dict[Any, AdamCoefficients] = {}
        out = {}
        for dtype in dtypes:
            cdt = _backend.compute_dtype(dtype)
            coef = by_compute.get(cdt)
            if coef is None:
                coef = by_compute[cdt] = self._coefficients.at(cdt, hyp, step)
            out[dtype] = coef
        return out

    def _step_hypers(self, step: int) -> tuple:
        """``(lr, beta_1, beta_2, epsilon, decay)`` of ``step``: callables and
        schedules evaluated (and validated), constants as they are (the
        coefficient cache's key)."""
        hyper = self._hyper  # (float32 values need no evaluation: the common case)
        lr, b1, b2 = hyper["learning_rate"], hyper["beta_1"], hyper["beta_2"]
        # np.float32, or np.float64 for a NumPy float64 value (cast to the
        # compute dtype once, in the coefficients)
        if type(lr) is not np.float32 and type(lr) is not np.float64:
            lr = self._hyper_value("learning_rate", self._schedule_step(step))
        if type(b1) is not np.float32 and type(b1) is not np.float64:
            b1 = self._hyper_value("beta_1", step)
        if type(b2) is not np.float32 and type(b2) is not np.float64:
            b2 = self._hyper_value("beta_2", step)
        eps = self.epsilon
        if type(eps) is not float:  # (the common case skips these checks)
            if callable(eps):
                eps = eps()
            eps = _check_epsilon(eps)  # (read now: a 0-d array may change in place)
        return (lr, b1, b2, eps, self._initial_decay)

    def _decays(self, step, dtypes, lr32, decay) -> Dict[Any, Any]:
        # the weight-decay argument of the kernels, by storage dtype
        if not self._weight_decay:  # (None or 0: no decay, the Adam kernels)
            return {}
        return {
            dt: decay_scalars(
                _backend.compute_dtype(dt), self._weight_decay, lr32, decay, step
            )
            for dt in dtypes
        }

    def _resource_apply_dense(self, work, backend, slots, coef, transform) -> None:
        vhat = slots["vhat"] if self.amsgrad else None
        wd = self._decay_of(work) if self._step_decay else None
        ema = self._ema_arg(work, slots) if self._step_ema else None
        # (the applying call of gradient accumulation steps with the mean)
        acc = self._acc_arg(slots) if self._acc_apply else None
        backend.dense_step(
            work, slots["m"], slots["v"], vhat, coef, transform, wd, acc=acc, ema=ema
        )
        if self._dirty is not None:  # (incremental state-dir saves: all rows)
            self._dirty.touch(slots["m"])

    def _accumulated(self, step) -> None:
        # Keras 3 moves the averages on every call, accumulating ones too, at
        # its ``iterations`` then: the number of updates so far
        if self._use_ema:
            self._ema_pass(step, step.iteration // self._accum_steps)

    def _amsgrad_slots(self) -> bool:
        return self.amsgrad

    def _resource_apply_dense_multi(self, work, backend, coef, transform) -> None:
        wd = self._step_decay.get(work.flat.dtype) if self._step_decay else None
        ema = self._step_ema.get(work.flat.dtype) if self._step_ema else None
        backend.dense_multi_step(work, coef, transform, wd, ema)
        if self._dirty is not None:
            for slots in getattr(work, "slots", ()):
                self._dirty.touch(slots[0])

    def _resource_apply_sparse(self, work, backend, slots, coef, transform) -> None:
        vhat = slots["vhat"] if self.amsgrad else None
        wd = self._decay_of(work) if self._step_decay else None
        ema = self._ema_arg(work, slots) if self._step_ema else None
        lazy = self.sparse_mode == "lazy"
        if lazy and self._prefetch is not None:
            self._prefetch.rows(work, slots)  # (memory-mapped state: pages ahead)
        dirty = None
        if self._dirty is not None:  # (incremental state-dir saves)
            dirty = self._dirty.step_mask(slots["m"], work, backend, lazy)
        backend.sparse_step(
            work, slots["m"], slots["v"], vhat, coef, transform, lazy=lazy, wd=wd,
            ema=ema, dirty=dirty,
        )  # fmt: skip

    def get_config(self) -> Dict[str, Any]:
        """Configuration with Keras' keys.

        Hyperparameters are float32-rounded after the first step, as in TF,
        except NumPy float64 ones, which stay ``np.float64`` (a ``float``:
        ``from_config`` keeps them float64, a JSON round trip makes them
        Python floats, rounded to float32 again).

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
        if self._second_moment != "element":
            config["second_moment"] = self._second_moment
        if self._weight_decay is not None:
            config["weight_decay"] = self._weight_decay
        return config

    def set_weights(self, weights) -> None:
        """Set the state; a Keras-1 list of ``3n+1`` weights is cut, as in TF.

        (The Keras 1 Adam kept ``vhat`` even without AMSGrad.) Only that form
        is cut: a non-AMSGrad optimizer holding ``2n+1`` weights (``n >= 1``)
        takes ``[iterations, m..., v..., vhat...]`` and drops the ``vhat``,
        whose shapes must be the variables'. Any other length raises.

        Raises
        ------
        ValueError
            If the list has neither the optimizer's length nor the Keras-1
            form, or a shape differs.
        """
        with self._lock:
            self._set_keras_weights(list(weights))

    def _set_keras_weights(self, weights) -> None:
        params = self.weights
        num_vars = (len(params) - 1) // 2
        if (
            not self.amsgrad
            and self._accum_steps is None
            and not self._use_ema
            and num_vars >= 1
            and len(params) == 2 * num_vars + 1
            and len(weights) == 3 * num_vars + 1
        ):
            for i, (p, w) in enumerate(
                zip(params[1 : num_vars + 1], weights[len(params) :])
            ):
                shape = tuple(np.shape(w))
                if shape != tuple(p.shape):
                    raise ValueError(
                        f"Keras-1 weight list: vhat weight {len(params) + i} has "
                        f"shape {shape}, its variable {tuple(p.shape)}"
                    )
            weights = weights[: len(params)]
        super().set_weights(weights)
