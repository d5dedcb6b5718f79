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
import math
import numbers
import threading
import warnings
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _config, _dispatch, schedules
from ._backend import identity_transform, transform_scalars
from ._flat import GradsAndVars, ParameterBuffer
from ._types import IndexedSlices

__all__ = ["OptimizerV2"]

logger = logging.getLogger("numbadam")

_ALLOWED_KWARGS = ("clipnorm", "clipvalue", "lr", "decay")

Hyper = Union[float, Callable[[], float], "schedules.LearningRateSchedule"]


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) or (
        isinstance(x, np.ndarray) and x.ndim == 0 and x.dtype.kind in "iuf"
    )


def _describe(var: Any) -> str:
    shape = getattr(var, "shape", None)
    dtype = getattr(var, "dtype", None)
    if shape is None:
        return type(var).__name__
    return f"shape {tuple(shape)}, {dtype}"


def _check_slots(slots: Dict[str, Any], var: Any, label: Any) -> None:
    """Raise ValueError unless every slot can take this step's in-place write."""
    shape, dtype = var.shape, var.dtype
    for name, slot in slots.items():
        # (flags.carray: writeable, aligned and C-contiguous in one attribute)
        if type(slot) is np.ndarray and slot.flags.carray and slot.shape == shape:
            if slot.dtype is dtype or slot.dtype == dtype:
                continue
        if type(slot) is np.ndarray and not slot.flags.writeable:
            raise ValueError(
                f"slot {name!r} of {label} is read-only; the optimizer updates "
                "its slots in place (set flags.writeable = True again)"
            )
        if type(slot) is np.ndarray and not slot.flags.carray:
            raise ValueError(f"slot {name!r} of {label} is not C-contiguous")
        if tuple(slot.shape) != tuple(shape) or slot.dtype != dtype:
            raise ValueError(
                f"slot {name!r} of {label} has shape {tuple(slot.shape)} and dtype "
                f"{slot.dtype}, the variable {tuple(shape)} and {dtype}"
            )


class Label:
    """A variable's name for error messages, formatted only when needed.

    ``variable {position} (shape ..., dtype)``; part of the hook seam (with
    :class:`Step`) that subclasses in numbadam.distributed use.
    """

    __slots__ = ("var", "position")

    def __init__(self, var: Any, position: int) -> None:
        self.var = var
        self.position = position

    def __str__(self) -> str:
        return f"variable {self.position} ({_describe(self.var)})"

    __format__ = lambda self, spec: format(str(self), spec)  # noqa: E731


class _Entry:
    """The slots of one variable; holding ``var`` keeps its address taken."""

    __slots__ = ("var", "slots")

    def __init__(self, var: Any) -> None:
        self.var = var
        self.slots: Dict[str, Any] = {}


class _FlatState:
    """Flat slot arrays of one ParameterBuffer: slot name -> flat array."""

    __slots__ = ("buffer", "slots")

    def __init__(self, buffer: ParameterBuffer) -> None:
        self.buffer = buffer
        self.slots: Dict[str, Any] = {}


class Step:
    """One :meth:`OptimizerV2.apply_gradients` call on its way through the hooks.

    ``items`` are ``(sparse, work, backend, var, holder)`` tuples: the
    validated work item of each pair with a gradient (a
    :class:`~numbadam._backend.DenseWork` or ``SparseWork``), the backend that
    owns it, the user's variable, and the object whose ``slots`` dict holds its
    slots (``None`` until they are created). Hooks may replace items (an
    aggregate hook swaps in averaged gradients) but never a variable.
    ``transforms`` (one per item) and ``coefficients`` (storage dtype ->
    :class:`~numbadam._types.AdamCoefficients`) are filled by their hooks.
    """

    __slots__ = (
        "iteration", "items", "var_list", "need_weights", "transforms",
        "coefficients", "skipped",
    )  # fmt: skip

    def __init__(self, iteration: int, items: List[Any], var_list: List[Any],
                 need_weights: bool, skipped: List[Any]) -> None:  # fmt: skip
        self.iteration = iteration
        self.items = items
        self.var_list = var_list
        self.need_weights = need_weights
        self.skipped = skipped
        self.transforms: List[Any] = []
        self.coefficients: Any = None


class OptimizerV2:
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
        ``clipvalue`` (float >= 0): clip each gradient element to
        ``[-clipvalue, clipvalue]`` (applied before ``clipnorm``); ``lr``
        (deprecated alias of ``learning_rate``); ``decay`` (float >= 0): the
        learning rate at step ``t`` is ``lr / (1 + decay * t)``.

    Raises
    ------
    TypeError
        For an unknown keyword argument.
    ValueError
        For a negative ``clipnorm``, ``clipvalue``, ``lr`` or ``decay``, or a
        NaN or infinite one.

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
        for k, val in kwargs.items():
            if k not in _ALLOWED_KWARGS:
                raise TypeError(
                    f"Unexpected keyword argument passed to optimizer: {k!r} "
                    f"(allowed: {', '.join(_ALLOWED_KWARGS)})"
                )
            if val is not None and _is_number(val) and val < 0:
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
        self._slot_names: List[str] = []
        # memory key -> _Entry; plus id(var) -> _Entry for the very object that
        # created the entry (the fast path: no address computation per step)
        self._slots: Dict[Any, _Entry] = {}
        self._by_id: Dict[int, _Entry] = {}
        # ParameterBuffers stepped in one pass: id(buffer) -> _FlatState, and
        # id(view) -> (state, index) so their slots are views of flat slots
        self._flat: Dict[int, _FlatState] = {}
        self._flat_owner: Dict[int, Tuple[_FlatState, int]] = {}
        decay = kwargs.pop("decay", 0.0)
        self._initial_decay = 0.0 if decay is None else self._check_real(decay, "decay")
        self.clipnorm = kwargs.pop("clipnorm", None)
        self.clipvalue = kwargs.pop("clipvalue", None)

    # ------------------------------------------------------------------
    # simple attributes
    # ------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The optimizer's name."""
        return self._name

    @staticmethod
    def _check_real(value: Any, what: str) -> float:
        if not _is_number(value) or isinstance(value, bool):
            raise TypeError(f"{what} must be a real number, got {value!r}")
        if not math.isfinite(value) or value < 0:  # (NaN < 0 is False)
            raise ValueError(f"Expected a finite {what} >= 0, received: {value}")
        return float(value)

    @property
    def clipnorm(self) -> Optional[float]:
        """Per-gradient L2-norm clipping threshold, or ``None``."""
        return self._clipnorm

    @clipnorm.setter
    def clipnorm(self, value: Optional[float]) -> None:
        self._clipnorm = None if value is None else self._check_real(value, "clipnorm")

    @property
    def clipvalue(self) -> Optional[float]:
        """Per-element clipping threshold, or ``None``."""
        return self._clipvalue

    @clipvalue.setter
    def clipvalue(self, value: Optional[float]) -> None:
        self._clipvalue = (
            None if value is None else self._check_real(value, "clipvalue")
        )

    # ------------------------------------------------------------------
    # hyperparameters
    # ------------------------------------------------------------------

    def _set_hyper(self, name: str, value: Any) -> None:
        if isinstance(value, schedules.LearningRateSchedule) or callable(value):
            self._hyper[name] = value
            return
        if not _is_number(value) or isinstance(value, bool):
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

    # ------------------------------------------------------------------
    # state: iterations, slots, weights
    # ------------------------------------------------------------------

    @property
    def iterations(self) -> np.ndarray:
        """The number of steps taken: a 0-d int64 array, updated in place.

        Created on first access (or on the first step) and then the first entry
        of :attr:`weights`. ``int(opt.iterations)`` gives a Python int.
        """
        if self._iterations is None:
            self._iterations = np.zeros((), np.int64)
            self._weights.append(self._iterations)
        return self._iterations

    @iterations.setter
    def iterations(self, value: Any) -> None:
        if not _is_number(value) or float(value) != int(value) or int(value) < 0:
            raise ValueError(
                f"iterations must be a non-negative integer, got {value!r}"
            )
        self.iterations[...] = int(value)

    @property
    def weights(self) -> List[Any]:
        """The optimizer's state arrays, live: ``[iterations, slots...]``.

        Slots appear in creation order (TF's: all ``m``, then all ``v``, then all
        ``vhat`` of the variables first seen in a call).
        """
        return self._weights

    def variables(self) -> List[Any]:
        """The optimizer's state arrays (same list as :attr:`weights`)."""
        return self._weights

    @staticmethod
    def _var_key(var: Any) -> Any:
        # Same memory, shape and strides means the same variable, even through
        # a new view object; the slot table holds var, so its address stays taken.
        if isinstance(var, np.ndarray):
            if var.size == 0:  # empty views may share an address; nothing aliases
                return ("obj", id(var))
            return (
                "cpu",
                var.__array_interface__["data"][0],
                var.shape,
                var.strides,
                var.dtype.str,
            )
        cai = getattr(var, "__cuda_array_interface__", None)
        if cai is not None and all(cai["shape"]):
            return (
                "cuda",
                cai["data"][0],
                tuple(cai["shape"]),
                cai.get("strides"),
                cai["typestr"],
            )
        return ("obj", id(var))

    def add_slot(self, var: Any, slot_name: str, initializer: Any = "zeros") -> Any:
        """Create (once) and return the slot ``slot_name`` of ``var``.

        Parameters
        ----------
        var : ndarray or CUDA array
            The variable the slot belongs to; the slot has its shape, dtype and
            device.
        slot_name : str
            Name of the slot, e.g. ``"m"``.
        initializer : "zeros", "ones", float, array_like or callable, optional
            Initial value; a callable is called as ``initializer(shape, dtype)``.

        Returns
        -------
        ndarray or CUDA array
            The slot (existing or new).

        Raises
        ------
        TypeError
            If ``var`` is not a float16/32/64 array or ``slot_name`` not a str.
        ValueError
            For a read-only ``var`` or an initializer that does not fit; in
            either case nothing is registered.
        """
        if not isinstance(slot_name, str):
            raise TypeError(f"slot_name must be a str, got {slot_name!r}")
        backend = _dispatch.backend_for(var)
        entry = self._entry(var)
        slot = None if entry is None else entry.slots.get(slot_name)
        if slot is not None:
            return slot
        # everything that can fail on user input first: no phantom name or entry
        backend.check_variable(var, f"add_slot({slot_name!r}) variable")
        init = None
        if not (isinstance(initializer, str) and initializer == "zeros"):
            init = self._initial_value(initializer, tuple(var.shape), var.dtype)
        slot = self._flat_slot(var, slot_name)
        if slot is None:
            slot = backend.zeros_like(var)
        if init is not None:
            backend.assign(slot, init)
        if entry is None:
            entry = _Entry(var)
            self._slots[self._var_key(var)] = entry
            self._by_id[id(var)] = entry
        if slot_name not in self._slot_names:
            self._slot_names.append(slot_name)
        entry.slots[slot_name] = slot
        self._weights.append(slot)
        return slot

    def _flat_slot(self, var: Any, slot_name: str) -> Any:
        owner = self._flat_owner.get(id(var))
        if owner is None:
            return None
        state, i = owner
        buf = state.buffer
        if buf.params[i] is not var:
            return None
        flat = state.slots.get(slot_name)
        if flat is None:
            flat = state.slots[slot_name] = np.zeros_like(buf.data)
        return buf.slot_views(flat)[i]

    def _prepare_buffer(self, buf: ParameterBuffer) -> Any:
        """The one-pass step of a ParameterBuffer; NotImplemented to fall back."""
        state = self._flat.get(id(buf))
        if state is None:
            if not buf.params or any(self._entry(p) is not None for p in buf.params):
                return NotImplemented  # slots exist per variable already
            state = self._flat[id(buf)] = _FlatState(buf)
            for i, p in enumerate(buf.params):
                self._flat_owner[id(p)] = (state, i)
        if self._clipnorm is not None:
            return NotImplemented  # each variable is clipped by its own norm
        _config.check()
        backend = _dispatch.backend_for(buf.data)
        work = backend.prepare_dense(buf.data, buf.grad, "ParameterBuffer")
        _check_slots(state.slots, buf.data, "ParameterBuffer")
        need = (
            self._iterations is None
            or not self._hypers_created
            or any(name not in state.slots for name in self._required_slots())
        )
        return Step(
            self._step_count(), [(False, work, backend, None, state)],
            list(buf.params), need, [],
        )  # fmt: skip

    def _entry(self, var: Any) -> Optional[_Entry]:
        entry = self._by_id.get(id(var))
        if entry is not None and entry.var is var:
            return entry
        return self._slots.get(self._var_key(var))

    @staticmethod
    def _initial_value(initializer: Any, shape: Tuple[int, ...], dtype: Any) -> Any:
        if isinstance(initializer, str):
            if initializer == "zeros":
                return np.zeros(shape, dtype)
            if initializer == "ones":
                return np.ones(shape, dtype)
            raise ValueError(
                f"unknown initializer {initializer!r}; use 'zeros', 'ones', a number, "
                "an array or a callable(shape, dtype)"
            )
        value = initializer(shape, dtype) if callable(initializer) else initializer
        value = np.broadcast_to(np.asarray(value, dtype=dtype), shape)
        return np.array(value)

    def get_slot(self, var: Any, slot_name: str) -> Any:
        """The slot ``slot_name`` of ``var``.

        Raises
        ------
        KeyError
            If ``var`` has no such slot (yet).
        """
        entry = self._entry(var)
        if entry is None or slot_name not in entry.slots:
            raise KeyError(
                f"no slot {slot_name!r} for variable ({_describe(var)}); slots are "
                f"created on the variable's first gradient. Known slot names: "
                f"{self._slot_names}"
            )
        return entry.slots[slot_name]

    def get_slot_names(self) -> List[str]:
        """Names of the slots created so far, e.g. ``["m", "v"]``."""
        return list(self._slot_names)

    def add_weight(
        self,
        name: str,
        shape: Sequence[int],
        dtype: Any = None,
        initializer: Any = "zeros",
        trainable: Optional[bool] = None,
    ) -> np.ndarray:
        """Create a non-slot state array (as Keras' ``Optimizer.add_weight``).

        Like Keras, the array is returned but not added to :attr:`weights`.

        Parameters
        ----------
        name : str
            Name of the weight (kept for compatibility; unused).
        shape : sequence of int
            Shape of the weight.
        dtype : dtype, optional
            Defaults to float32, as in Keras.
        initializer : "zeros", "ones", float, array_like or callable, optional
        trainable : bool, optional
            Kept for compatibility; unused.

        Returns
        -------
        numpy.ndarray
        """
        dtype = np.dtype(np.float32 if dtype is None else dtype)
        shape = (
            tuple(int(s) for s in np.atleast_1d(shape))
            if np.ndim(shape)
            else (() if shape == () or shape is None else (int(shape),))
        )
        return self._initial_value(initializer, shape, dtype)

    def build(self, var_list: Iterable[Any]) -> None:
        """Create ``iterations`` and every slot of ``var_list`` now.

        A step creates them lazily; call this first to :meth:`set_weights` a
        checkpoint into a fresh optimizer. Same as Keras' private
        ``_create_all_weights``.
        """
        var_list = list(var_list)
        for i, var in enumerate(var_list):
            _dispatch.backend_for(var).check_variable(var, self._label(var, i))
        with self._lock:
            self._create_all_weights(var_list)

    def _create_all_weights(self, var_list: List[Any]) -> None:
        _ = self.iterations
        self._create_hypers()
        self._create_slots(var_list)

    def _create_slots(self, var_list: List[Any]) -> None:
        pass

    def get_weights(self) -> List[np.ndarray]:
        """Host (NumPy) copies of :attr:`weights`, Keras checkpoint compatible."""
        out = []
        for w in self._weights:
            out.append(_dispatch.backend_for(w).to_host(w))
        return out

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Set the optimizer's state from a list like :meth:`get_weights`' output.

        Every shape is checked before anything is assigned.

        Raises
        ------
        ValueError
            If the length or any shape differs from :attr:`weights`, or
            ``iterations`` is not a non-negative integer below ``2**63``.
        TypeError
            If a weight is not numeric.
        """
        with self._lock:  # (never in the middle of another thread's step)
            self._set_weights(list(weights))

    def _set_weights(self, weights: List[Any]) -> None:
        params = self._weights
        if len(params) != len(weights):
            raise ValueError(
                f"You called set_weights(weights) on optimizer {self._name} with a "
                f"weight list of length {len(weights)}, but the optimizer was "
                f"expecting {len(params)} weights. Provided weights: "
                f"{str(weights)[:50]}..."
            )
        host = []
        for i, (p, w) in enumerate(zip(params, weights)):
            w = np.asarray(w)
            if tuple(p.shape) != w.shape:
                raise ValueError(
                    f"Optimizer weight {i} has shape {tuple(p.shape)} not compatible "
                    f"with provided weight shape {w.shape}"
                )
            if w.dtype.kind not in "iuf" and w.size:
                raise TypeError(f"Optimizer weight {i} has dtype {w.dtype}")
            if p is self._iterations and not (
                np.isfinite(w)
                and w >= 0
                and (w.dtype.kind in "iu" or float(w) == int(w))
                and int(w) < 2**63
            ):  # a negative, fractional or wrapping (int64) step count would
                # corrupt the bias correction
                raise ValueError(
                    f"Optimizer weight {i} is iterations, which must be a "
                    f"non-negative integer below 2**63, got {w!r}"
                )
            host.append(w.astype(p.dtype, copy=False))
        for p, w in zip(params, host):
            _dispatch.backend_for(p).assign(p, w)

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
            :attr:`iterations` after the step; ``None`` for an empty list, which
            is a no-op.

        Raises
        ------
        ValueError
            If every gradient is ``None``; shape mismatches; a variable given
            twice; read-only variables.
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
            return self._apply_gradients(grads_and_vars)

    def _apply_gradients(self, grads_and_vars: Any) -> Optional[np.ndarray]:
        # The one step pipeline; subclasses override hooks, never this.
        step = self._prepare(grads_and_vars)
        if step is None:
            return None
        self._aggregate_gradients(step)
        self._transform_gradients(step)
        step.coefficients = self._prepare_step(
            step.iteration, {item[1].flat.dtype for item in step.items}
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
        return self._iterations

    # -- the hooks, in pipeline order ---------------------------------------------

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
        pairs = self._check_pairs(grads_and_vars)
        if not pairs:
            return None
        _config.check()  # (the CUDA backend reads launch sizes while preparing)
        live = []
        skipped = []
        seen: Dict[Any, int] = {}
        backend_for = _dispatch.backend_for
        nreq = len(self._required_slots())
        need_weights = self._iterations is None or not self._hypers_created
        for i, (g, v) in enumerate(pairs):
            label = Label(v, i)
            backend = backend_for(v)
            if g is None:  # (prepare_dense/prepare_sparse check the others)
                backend.check_variable(v, label)
            entry = self._entry(v)
            if entry is None or len(entry.slots) < nreq:
                need_weights = True
            key = id(entry) if entry is not None else self._var_key(v)
            if key in seen:
                raise ValueError(
                    f"{label} appears twice in grads_and_vars (also at position "
                    f"{seen[key]}); sum its gradients first"
                )
            seen[key] = i
            if entry is not None and g is not None:
                _check_slots(entry.slots, v, label)
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
        var_list = [item[3] for item in live] if need_weights else []
        return Step(self._step_count(), live, var_list, need_weights, skipped)

    def _aggregate_gradients(self, step: Step) -> None:
        """Hook 2: combine gradients across replicas (here: nothing to combine).

        Distributed optimizers replace ``step.items``' work items with the
        averaged (or reduce-scattered) gradients. Must not write variables or
        slots.
        """

    def _transform_gradients(self, step: Step) -> None:
        """Hook 3: the ``(lo, hi, mul, div)`` transform of each item's gradient.

        TF's order: ``clip_by_value`` (``clipvalue``), then ``clip_by_norm``
        (``clipnorm``, each gradient by its own L2 norm, taken after the value
        clipping); the kernels apply the transform in their one pass.
        """
        cv, cn = self._clipvalue, self._clipnorm
        if cv is None and cn is None:
            step.transforms = [identity_transform(it[1].flat.dtype) for it in step.items]
            return
        out = []
        for sparse, work, backend, _, _ in step.items:
            sumsq = None
            if cn is not None:
                sumsq = backend.sumsq(work.values if sparse else work.grad, cv)
            out.append(transform_scalars(work.flat.dtype, cv, cn, sumsq))
        step.transforms = out

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

    def _required_slots(self) -> Tuple[str, ...]:
        """Slot names every variable has after a step (subclasses override)."""
        return ()

    # ------------------------------------------------------------------
    # loss-driven API (SciPy's jac=True convention)
    # ------------------------------------------------------------------

    @staticmethod
    def _call_loss(loss: Callable, n: int) -> Tuple[Any, List[Any]]:
        if not callable(loss):
            raise TypeError(
                "loss must be a zero-argument callable returning "
                "(loss_value, [gradient per parameter])"
            )
        out = loss()
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise TypeError(
                "loss() must return (loss_value, gradients) (SciPy's jac=True "
                f"convention), got {type(out).__name__}"
            )
        value, grads = out
        grads = list(grads)
        if len(grads) != n:
            raise ValueError(
                f"loss() returned {len(grads)} gradients for {n} parameters"
            )
        return value, grads

    def get_gradients(self, loss: Callable, params: Sequence[Any]) -> List[Any]:
        """Gradients of ``loss`` with respect to ``params`` (Keras 1 style).

        As in tf-keras, no clipping happens here: :meth:`apply_gradients`
        clips.

        Parameters
        ----------
        loss : callable
            ``loss() -> (loss_value, [gradient per parameter])``.
        params : sequence of arrays

        Returns
        -------
        list
            One gradient per parameter, as ``loss`` returned them.

        Raises
        ------
        ValueError
            If any gradient is ``None``.
        """
        params = list(params)
        _, grads = self._call_loss(loss, len(params))
        for i, (g, p) in enumerate(zip(grads, params)):
            if g is None:
                raise ValueError(
                    f"{self._label(p, i)} has `None` for gradient. Please make sure "
                    "that all of your ops have a gradient defined (i.e. are "
                    "differentiable)."
                )
        return grads

    def get_updates(self, loss: Callable, params: Sequence[Any]) -> List[Any]:
        """Apply one step from ``loss`` (Keras 1 style) and return ``[iterations]``.

        The gradients of :meth:`get_gradients` go through
        :meth:`apply_gradients`, which clips them, as in tf-keras.
        """
        params = list(params)
        grads = self.get_gradients(loss, params)
        return [self.apply_gradients(list(zip(grads, params)))]

    def minimize(
        self,
        loss: Callable,
        var_list: Union[Sequence[Any], Callable[[], Sequence[Any]]],
        grad_loss: Any = None,
        name: Optional[str] = None,
        tape: Any = None,
    ) -> Any:
        """Compute gradients with ``loss`` and apply them to ``var_list``.

        Parameters
        ----------
        loss : callable
            ``loss() -> (loss_value, [gradient per variable])``; a gradient may
            be ``None`` (skipped) or an :class:`~numbadam.IndexedSlices`.
        var_list : sequence of arrays, or a callable returning one
        grad_loss : float or array, optional
            The gradient of the final objective with respect to ``loss_value``;
            each gradient is multiplied by it (chain rule), as TF's ``grad_loss``.
        name : str, optional
            Ignored (Keras compatibility).
        tape : None
            Keras' GradientTape argument; must be ``None`` here.

        Returns
        -------
        object
            The loss value returned by ``loss``.
        """
        if tape is not None:
            raise TypeError("numbadam has no GradientTape: pass tape=None")
        if callable(var_list):
            var_list = var_list()
        var_list = list(var_list)
        value, grads = self._call_loss(loss, len(var_list))
        if grad_loss is not None:
            grads = [self._scale(g, grad_loss) for g in grads]
        self.apply_gradients(list(zip(grads, var_list)), name=name)
        return value

    @staticmethod
    def _scale(g: Any, factor: Any) -> Any:
        if g is None:
            return None
        values = g.values if isinstance(g, IndexedSlices) else g
        if _dispatch.is_device_array(values):
            raise TypeError(
                "grad_loss cannot scale CUDA gradients on the host; scale them on the "
                "device before minimize (or fold grad_loss into the loss callable)"
            )
        if isinstance(g, IndexedSlices):
            return IndexedSlices(
                np.asarray(g.values) * factor, g.indices, g.dense_shape
            )
        return g * factor

    # ------------------------------------------------------------------
    # config
    # ------------------------------------------------------------------

    def get_config(self) -> Dict[str, Any]:
        """The optimizer's configuration, a JSON-serialisable dict (Keras keys)."""
        config: Dict[str, Any] = {"name": self._name}
        if self._clipnorm is not None:
            config["clipnorm"] = self._clipnorm
        if self._clipvalue is not None:
            config["clipvalue"] = self._clipvalue
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
