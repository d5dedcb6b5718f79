"""An OptimizerV2-compatible base class for optimizers over NumPy and CUDA arrays.

It mirrors ``tf.keras.optimizers.legacy.Optimizer`` (OptimizerV2): hyperparameters
as floats, zero-argument callables or learning-rate schedules; slots created
lazily in TensorFlow's order; ``weights`` / ``get_weights`` / ``set_weights``
compatible with Keras checkpoints; ``apply_gradients`` / ``minimize``.

NumPy has no automatic differentiation, so the loss callables of
:meth:`OptimizerV2.minimize`, :meth:`OptimizerV2.get_gradients` and
:meth:`OptimizerV2.get_updates` follow SciPy's ``jac=True`` convention: a
zero-argument callable returning ``(loss_value, [gradient per parameter])``.
"""

from __future__ import annotations

import logging
import threading
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from . import _config, _dispatch, schedules
from ._accum import AccumulationMixin
from ._cached import CachedLaunchMixin
from ._clipping import ClippingMixin
from ._ema import EmaMixin
from ._flat import GradsAndVars, ParameterBuffer
from ._hypers import HyperparameterMixin, is_float64, is_number
from ._loss_api import LossMixin
from ._slots import SlotTable, check_slots
from ._state import StateMixin, describe
from ._step import MULTI, Label, Step
from ._types import IndexedSlices

__all__ = ["OptimizerV2"]

logger = logging.getLogger("numbadam")

_ALLOWED_KWARGS = (
    "clipnorm", "clipvalue", "lr", "decay", "global_clipnorm",
    "gradient_accumulation_steps", "slot_dir",
)  # fmt: skip
#: Keras 3's EMA arguments (numbadam._ema), validated there.
_EMA_KWARGS = ("use_ema", "ema_momentum", "ema_overwrite_frequency")

Hyper = Union[float, Callable[[], float], "schedules.LearningRateSchedule"]


# (kept importable under their old names: adam.py and tests use them)
_is_number = is_number
_describe = describe


class OptimizerV2(
    AccumulationMixin, CachedLaunchMixin, ClippingMixin, HyperparameterMixin,
    StateMixin, LossMixin, EmaMixin,
):
    """Base class of numbadam optimizers (the Keras OptimizerV2 contract).

    :meth:`apply_gradients` is one pipeline of hooks, in this order (Keras'
    split, with numbadam's "validate everything first"): ``_prepare`` (every
    pair and its slots validated and cast; nothing written), ``_aggregate_gradients``
    (identity; the distributed optimizers all-reduce or reduce-scatter),
    ``_transform_gradients`` (clipvalue and clipnorm as per-pair kernel
    scalars), ``_prepare_step`` (the coefficients), ``_resource_apply_dense`` /
    ``_resource_apply_sparse`` (the kernels) and ``_finish`` (``iterations``;
    all-gathers). Subclasses implement ``_create_slots(var_list)``,
    ``_prepare_step`` and the two ``_resource_apply_*`` hooks, and override
    others to add a feature (see CONTRIBUTING.md). Do not instantiate this
    class directly.

    Parameters
    ----------
    name : str
        Name of the optimizer, returned by :meth:`get_config`.
    **kwargs
        ``clipnorm`` (float >= 0): clip each gradient to this L2 norm;
        ``global_clipnorm`` (float >= 0): clip all gradients of a call by
        their joint L2 norm (exclusive with ``clipnorm``);
        ``clipvalue`` (float >= 0): clip each gradient element to
        ``[-clipvalue, clipvalue]`` (applied before ``clipnorm``); ``lr``
        (deprecated alias of ``learning_rate``); ``decay`` (float >= 0): the
        learning rate at step ``t`` is ``lr / (1 + decay * t)``;
        ``gradient_accumulation_steps`` (int >= 2 or None): Keras 3's
        gradient accumulation, the mean gradient of every ``N`` calls applied
        on the ``N``-th (see ``docs/semantics.md``); Keras 3's
        ``use_ema`` (bool, default False), ``ema_momentum`` (in ``[0, 1]``,
        default 0.99) and ``ema_overwrite_frequency`` (int >= 1 or None): an
        exponential moving average of every variable, ``average =
        (momentum * average) + ((1 - momentum) * var)`` after each step
        (``momentum`` 0 on the first), fused into the step's pass; every
        ``ema_overwrite_frequency``-th step the variables take their averages,
        as :meth:`finalize_variable_values` does (see ``docs/semantics.md``);
        ``slot_dir`` (str or os.PathLike): an existing, writable folder in
        which the slots of NumPy variables are ``.npy`` memory maps, one file
        per slot (see ``docs/state-on-disk.md``; not part of
        :meth:`get_config`).

    Raises
    ------
    TypeError
        For an unknown keyword argument.
    ValueError
        For a ``gradient_accumulation_steps`` that is not None or an integer
        >= 2; for both ``clipnorm`` and ``global_clipnorm``; for a negative
        ``clipnorm``, ``global_clipnorm``, ``clipvalue``, ``lr`` or ``decay``, or a
        NaN or infinite one; an ``ema_momentum`` outside ``[0, 1]`` or NaN; an
        ``ema_overwrite_frequency`` that is not an integer >= 1 (or None); a
        ``slot_dir`` holding another optimizer's slots.
    FileNotFoundError, NotADirectoryError, PermissionError
        For a ``slot_dir`` that is missing, not a folder or not writable.

    Examples
    --------
    :class:`~numbadam.Adam` is an OptimizerV2; its state is
    :attr:`~numbadam.OptimizerV2.weights`, ``[iterations, m..., v...]`` in
    Keras' order:

    >>> import numpy as np
    >>> import numbadam
    >>> opt = numbadam.Adam(learning_rate=0.1, clipnorm=1.0)
    >>> isinstance(opt, numbadam.OptimizerV2)
    True
    >>> w = np.zeros(3, np.float32)
    >>> _ = opt.apply_gradients([(np.full(3, 2.0, np.float32), w)])
    >>> [tuple(x.shape) for x in opt.weights], int(opt.iterations)
    ([(), (3,), (3,)], 1)
    >>> config = opt.get_config()
    >>> config["name"], config["clipnorm"]
    ('Adam', 1.0)

    A config and the weights rebuild the optimizer: both then take the same
    steps, bit for bit.

    >>> twin = numbadam.Adam.from_config(config)
    >>> w2 = w.copy()
    >>> twin.build([w2])
    >>> twin.set_weights(opt.get_weights())
    >>> g = np.array([0.5, -1.0, 2.0], np.float32)
    >>> _ = opt.apply_gradients([(g, w)])
    >>> _ = twin.apply_gradients([(g, w2)])
    >>> bool(np.array_equal(w, w2)), int(twin.iterations)
    (True, 2)
    """

    def __init__(self, name: str, **kwargs: Any) -> None:
        accumulation = kwargs.pop("gradient_accumulation_steps", None)
        kwargs = dict(kwargs)
        self._init_ema(kwargs)  # (pops and checks the EMA arguments first)
        for k, val in kwargs.items():
            if k not in _ALLOWED_KWARGS:
                raise TypeError(
                    f"Unexpected keyword argument passed to optimizer: {k!r} "
                    f"(allowed: {', '.join(_ALLOWED_KWARGS + _EMA_KWARGS)})"
                )
            if k != "slot_dir" and val is not None and _is_number(val) and val < 0:
                raise ValueError(f"Expected {k} >= 0, received: {val}")
            if k == "lr":
                warnings.warn(
                    "The `lr` argument is deprecated, use `learning_rate` instead.",
                    UserWarning,
                    stacklevel=3,
                )
        self._name = str(name)
        # One step at a time per optimizer: two threads stepping concurrently
        # would both read ``iterations`` and lose a step. Reentrant, so a
        # callable hyperparameter or a subclass may call back in.
        self._lock = threading.RLock()
        self._hyper: Dict[str, Any] = {}
        self._hypers_created = False
        self._weights: List[Any] = []
        self._iterations: Optional[np.ndarray] = None
        # per-variable slots, ParameterBuffers' flat slots (numbadam._slots)
        self._table = SlotTable()
        self._init_cached()  # (numbadam._cached)
        decay = kwargs.pop("decay", 0.0)
        self._initial_decay = 0.0 if decay is None else self._check_decay(decay)
        self._clipnorm = self._global_clipnorm = None
        self.clipnorm = kwargs.pop("clipnorm", None)
        self.global_clipnorm = kwargs.pop("global_clipnorm", None)
        self.clipvalue = kwargs.pop("clipvalue", None)
        self._init_accumulation(accumulation)
        # slots on disk (numbadam._slotdir), checked now, claimed at the first slot
        slot_dir = kwargs.pop("slot_dir", None)
        self._slot_dir = self._prefetch = None
        if slot_dir is not None:
            from ._prefetch import Prefetcher
            from ._slotdir import SlotDir

            self._slot_dir = SlotDir(slot_dir, f"{type(self).__name__} {self._name!r}")
            self._prefetch = Prefetcher()
        # row masks of the incremental state-dir saves (numbadam._dirty)
        self._dirty: Any = None

    # ------------------------------------------------------------------
    # simple attributes
    # ------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The optimizer's name."""
        return self._name

    @classmethod
    def _check_decay(cls, value: Any) -> float:
        # A Python float (TF: float32 in tf.cast) or a np.float64, kept float64
        # as tf.cast keeps a float64 array's dtype
        decay = cls._check_real(value, "decay")
        return np.float64(decay) if is_float64(value) else decay

    # ------------------------------------------------------------------
    # steps
    # ------------------------------------------------------------------

    @staticmethod
    def _label(var: Any, position: int) -> Label:
        return Label(var, position)

    def _check_pairs(self, grads_and_vars: Any) -> List[Tuple[Any, Any]]:
        try:
            items = list(grads_and_vars)
        except TypeError:
            raise TypeError(
                "grads_and_vars must be an iterable of (gradient, variable) pairs, "
                f"got {type(grads_and_vars).__name__}"
            ) from None
        pairs = []
        for i, item in enumerate(items):
            if type(item) is tuple and len(item) == 2 and item[1] is not None:
                pairs.append(item)  # the common case, cheaply
                continue
            if (
                isinstance(item, (str, bytes, np.ndarray))
                or _dispatch.is_device_array(item)
                or not hasattr(item, "__len__")
                or len(item) != 2
            ):
                raise TypeError(
                    f"grads_and_vars item {i} is not a (gradient, variable) pair: "
                    f"{type(item).__name__}"
                )
            g, v = item
            if v is None:
                raise TypeError(f"grads_and_vars item {i} has variable None")
            pairs.append((g, v))
        return pairs

    def apply_gradients(
        self,
        grads_and_vars: Iterable[Tuple[Any, Any]],
        name: Optional[str] = None,
        experimental_aggregate_gradients: bool = True,
    ) -> Optional[np.ndarray]:
        """Apply one step of gradients to variables, in place.

        Every pair is validated before any variable or slot changes: on an
        exception nothing has been modified and the optimizer remains usable.

        Parameters
        ----------
        grads_and_vars : iterable of (gradient, variable)
            Gradients are arrays of the variable's shape (cast to its dtype when
            a same-kind cast exists) or :class:`~numbadam.IndexedSlices`; a
            ``None`` gradient skips its pair with a logged warning. Variables are
            writable float16/32/64 NumPy arrays (any shape, strided views too) or
            CUDA arrays. A ``zip`` is fine.
        name : str, optional
            Ignored (Keras compatibility).
        experimental_aggregate_gradients : bool, optional
            Ignored (Keras compatibility).

        Returns
        -------
        numpy.ndarray or None
            :attr:`iterations` after the step (with
            ``gradient_accumulation_steps``: the counter of calls,
            ``weights[0]``, as Keras 3); ``None`` for an empty list, which is a
            no-op.

        Raises
        ------
        ValueError
            If every gradient is ``None``; shape mismatches; a variable given
            twice; two variables sharing memory (views of one array), a
            variable whose elements alias each other (a zero stride), or one
            of this optimizer's slots as a variable; read-only variables.
        TypeError
            Malformed pairs; non-float or non-array variables and gradients;
            mixing host and device arrays in one pair.
        IndexError
            Sparse indices out of range.

        Notes
        -----
        Thread-safe: calls on one optimizer from several threads are
        serialised by a per-optimizer lock (each is one whole step), so none is
        lost. Calls on different optimizers run in parallel.
        """
        with self._lock:
            if (
                self._cached_launches
                and type(grads_and_vars) is list
                and len(grads_and_vars) == 1
            ):
                out = self._planned(grads_and_vars[0])  # (numbadam._cached)
                if out is not None:
                    return out
            return self._apply_gradients(grads_and_vars)

    def _apply_gradients(self, grads_and_vars: Any) -> Optional[np.ndarray]:
        # The one step pipeline; subclasses override hooks, never this.
        step = self._prepare(grads_and_vars)
        if step is None:
            return None
        self._aggregate_gradients(step)
        n = self._accum_steps  # (gradient accumulation: numbadam._accum)
        if n is not None and self._accumulate(step):
            return self._iterations  # (an accumulating call: Keras 3's counter)
        self._transform_gradients(step)
        step.coefficients = self._prepare_step(
            step.iteration if n is None else step.iteration // n,
            {item[1].flat.dtype for item in step.items},
        )
        if step.skipped:
            logger.warning(
                "Gradients do not exist for variables %s when minimizing the loss; "
                "they were skipped.",
                [str(x) for x in step.skipped],
            )
        # --- from here on nothing can fail on user input ---
        if step.need_weights:
            self._create_step_weights(step)
        coefs = step.coefficients
        for (sparse, work, backend, v, holder), tr in zip(step.items, step.transforms):
            if sparse is MULTI:
                self._resource_apply_dense_multi(
                    work, backend, coefs[work.flat.dtype], tr
                )
                continue
            slots = (holder if holder is not None else self._entry(v)).slots
            if sparse:
                self._resource_apply_sparse(
                    work, backend, slots, coefs[work.flat.dtype], tr
                )
            else:
                self._resource_apply_dense(
                    work, backend, slots, coefs[work.flat.dtype], tr
                )
        self._finish(step)
        if self._acc_apply:
            self._end_cycle()
        return self._iterations

    # -- the hooks, in pipeline order ---------------------------------------------

    def _prepare_buffer(self, buf: ParameterBuffer) -> Any:
        """The one-pass step of a ParameterBuffer; NotImplemented to fall back."""
        state = self._table.buffer_state(buf)
        if state is None:
            return NotImplemented  # slots exist per variable already
        if self._clipnorm is not None:
            return NotImplemented  # each variable is clipped by its own norm
        _config.check()
        backend = _dispatch.backend_for(buf.data)
        work = backend.prepare_dense(buf.data, buf.grad, "ParameterBuffer")
        check_slots(state.slots, buf.data, "ParameterBuffer")
        need = (
            self._iterations is None
            or not self._hypers_created
            or any(name not in state.slots for name in self._required_slots())
        )
        return Step(
            self._step_count(), [(False, work, backend, None, state)],
            list(buf.params), need, [],
        )  # fmt: skip


    def _step_count(self) -> int:
        return 0 if self._iterations is None else int(self._iterations)

    def _prepare(self, grads_and_vars: Any) -> Optional[Step]:
        """Hook 1: validate and cast every pair and its slots; nothing is written.

        Returns ``None`` for an empty list. Raises on any bad input.
        """
        if type(grads_and_vars) is GradsAndVars:
            step = self._prepare_buffer(grads_and_vars.buffer)
            if step is not NotImplemented:
                return step
        if self._cached_launches:
            step = self._prepare_multi(grads_and_vars)
            if step is not None:
                return step
        pairs = self._check_pairs(grads_and_vars)
        if not pairs:
            return None
        _config.check()  # (the CUDA backend reads launch sizes while preparing)
        live = []
        skipped = []
        seen: Dict[Any, int] = {}
        single = len(pairs) == 1  # (nothing to be given twice)
        backend_for = _dispatch.backend_for
        by_id = self._table.by_id
        nreq = len(self._required_slots())
        need_weights = self._iterations is None or not self._hypers_created
        for i, (g, v) in enumerate(pairs):
            label = Label(v, i)
            backend = backend_for(v)
            if g is None:  # (prepare_dense/prepare_sparse check the others)
                backend.check_variable(v, label)
            entry = by_id.get(id(v))  # (the table's fast path, inline)
            if entry is None or entry.var is not v:
                entry = self._entry(v)
            if entry is None or len(entry.slots) < nreq:
                need_weights = True
            if not single:
                key = id(entry) if entry is not None else self._var_key(v)
                if key in seen:
                    raise ValueError(
                        f"{label} appears twice in grads_and_vars (also at "
                        f"position {seen[key]}); sum its gradients first"
                    )
                seen[key] = i
            if entry is not None and g is not None:
                check_slots(entry.slots, v, label, self._row_slots)
            if g is None:
                skipped.append(label)
            elif isinstance(g, IndexedSlices):
                live.append(
                    (True, backend.prepare_sparse(v, g, label), backend, v, entry)
                )
            else:
                live.append(
                    (False, backend.prepare_dense(v, g, label), backend, v, entry)
                )
        if not live:
            names = [str(x) for x in skipped]
            raise ValueError(f"No gradients provided for any variable: {names}.")
        self._table.check_variables(live)  # (overlapping variables, slots)
        for i in self._table.aliased_gradients(live):
            _, work, backend = live[i][:3]  # (read while written: copied first)
            if live[i][0]:
                work.values = backend.copy(work.values)
            else:
                work.grad = backend.copy(work.grad)
        var_list = [item[3] for item in live] if need_weights else []
        it = self._iterations
        return Step(0 if it is None else int(it), live, var_list, need_weights, skipped)

    def _aggregate_gradients(self, step: Step) -> None:
        """Hook 2: combine gradients across replicas (here: nothing to combine).

        Distributed optimizers replace ``step.items``' work items with the
        averaged (or reduce-scattered) gradients. Must not write variables or
        slots.
        """

    def _prepare_step(self, step: int, dtypes: set) -> Any:
        """Hook 4: the per-step coefficients by storage dtype (TF's
        ``_prepare_local``); evaluates callable hyperparameters and may raise."""
        raise NotImplementedError

    def _create_step_weights(self, step: Step) -> None:
        """Create ``iterations``, the hyperparameters and the step's missing slots."""
        self._create_all_weights(step.var_list)

    def _resource_apply_dense(
        self, work: Any, backend: Any, slots: Dict[str, Any], coef: Any, transform: Any
    ) -> None:
        """Hook 5a: one dense pair's update, in place (TF's
        ``_resource_apply_dense``)."""
        raise NotImplementedError

    def _resource_apply_sparse(
        self, work: Any, backend: Any, slots: Dict[str, Any], coef: Any, transform: Any
    ) -> None:
        """Hook 5b: one IndexedSlices pair's update, in place."""
        raise NotImplementedError

    def _finish(self, step: Step) -> None:
        """Hook 6: after every update (``iterations`` += 1)."""
        self._iterations[()] = step.iteration + 1
        if self._cached_launches:
            self._remember(step)

    def _amsgrad_slots(self) -> bool:
        """Whether the multi-tensor launch needs the ``vhat`` slots."""
        return False

    def _resource_apply_dense_multi(
        self, work: Any, backend: Any, coef: Any, transform: Any
    ) -> None:
        """Hook 5c: the dense update of many variables in one launch."""
        raise NotImplementedError

    def _required_slots(self) -> Tuple[str, ...]:
        """Slot names every variable has after a step (subclasses override)."""
        return ()

    # ------------------------------------------------------------------
    # config
    # ------------------------------------------------------------------

    def get_config(self) -> Dict[str, Any]:
        """The optimizer's configuration, a JSON-serialisable dict (Keras keys)."""
        config: Dict[str, Any] = {"name": self._name}
        if self._clipnorm is not None:
            config["clipnorm"] = self._clipnorm
        if self._global_clipnorm is not None:
            config["global_clipnorm"] = self._global_clipnorm
        if self._clipvalue is not None:
            config["clipvalue"] = self._clipvalue
        if self._accum_steps is not None:
            config["gradient_accumulation_steps"] = self._accum_steps
        if self._use_ema:  # (Keras 3's keys; absent at the defaults, as in tf-keras)
            config.update(self._ema_config())
        return config

    @classmethod
    def from_config(cls, config: Dict[str, Any], custom_objects: Optional[Dict] = None):
        """Create an optimizer from :meth:`get_config`'s output.

        ``lr`` is accepted for ``learning_rate``; a serialised schedule is
        deserialised (``custom_objects`` maps class names to custom schedules).
        """
        config = dict(config)
        if "lr" in config:
            config["learning_rate"] = config.pop("lr")
        if isinstance(config.get("learning_rate"), dict):
            config["learning_rate"] = schedules.deserialize(
                config["learning_rate"], custom_objects=custom_objects
            )
        return cls(**config)

    def __repr__(self) -> str:
        return f"<numbadam.{type(self).__name__} name={self._name!r}>"
