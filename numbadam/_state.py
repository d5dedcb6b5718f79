"""The state API of an OptimizerV2: iterations, slots, weights, build.

A mixin of :class:`numbadam.OptimizerV2`: ``iterations`` and the slots (kept
in a :class:`numbadam._slots.SlotTable`) in TensorFlow's order, Keras-style
``weights`` / ``get_weights`` / ``set_weights``, ``add_slot`` / ``get_slot``.
"""

from __future__ import annotations

import math
import threading
from typing import Any, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from . import _dispatch
from ._hypers import is_number
from ._slots import SlotTable, memory_key, slot_shape

__all__ = ["StateMixin"]


def describe(var: Any) -> str:
    """``shape (2, 3), float32`` of an array, or its type's name."""
    shape = getattr(var, "shape", None)
    dtype = getattr(var, "dtype", None)
    if shape is None:
        return type(var).__name__
    return f"shape {tuple(shape)}, {dtype}"


class StateMixin:
    """Iterations, slots and weights (the optimizer's state)."""

    _name: str
    _lock: "threading.RLock"
    _weights: List[Any]
    _iterations: Optional[np.ndarray]
    _table: SlotTable
    _slot_dir: Any
    #: Names of the slots kept per row (one value per row) for variables of
    #: two or more dimensions; see :func:`numbadam._slots.slot_shape`.
    _row_slots: Tuple[str, ...] = ()

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
        if (
            isinstance(value, bool)
            or not is_number(value)
            or not math.isfinite(value)
            or float(value) != int(value)
            or not 0 <= int(value) < 2**63
        ):  # (1e19 would overflow the int64 counter; NaN and inf have no int)
            raise ValueError(
                f"iterations must be a non-negative integer below 2**63, got {value!r}"
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
        return memory_key(var)

    def add_slot(self, var: Any, slot_name: str, initializer: Any = "zeros") -> Any:
        """Create (once) and return the slot ``slot_name`` of ``var``.

        Parameters
        ----------
        var : ndarray or CUDA array
            The variable the slot belongs to; the slot has its shape (one value
            per row for ``v`` and ``vhat`` under ``Adam(second_moment="row")``),
            dtype and device.
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
        shape = slot_shape(var, slot_name, self._row_slots)
        init = None
        if not (isinstance(initializer, str) and initializer == "zeros"):
            init = self._initial_value(initializer, shape, var.dtype)
        slot_dir = self._slot_dir
        if slot_dir is not None and isinstance(var, np.ndarray):
            if not self._table.in_buffer(var):
                slot_dir.check([(var, (slot_name,))])
        if shape != tuple(var.shape):  # one value per row (kept in memory)
            slot = backend.zeros(shape, var)
        else:
            slot = self._table.flat_slot(var, slot_name)
            if slot is None and slot_dir is not None and isinstance(var, np.ndarray):
                slot = slot_dir.zeros(var, slot_name)  # (numbadam._slotdir)
            if slot is None:
                slot = backend.zeros_like(var)
        if init is not None:
            backend.assign(slot, init)
        if entry is None:
            entry = self._table.new_entry(var)
        self._table.add(entry, slot_name, slot)
        self._weights.append(slot)
        return slot

    def _entry(self, var: Any) -> Any:
        return self._table.entry(var)

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
                f"no slot {slot_name!r} for variable ({describe(var)}); slots are "
                f"created on the variable's first gradient. Known slot names: "
                f"{self._table.names}"
            )
        return entry.slots[slot_name]

    def get_slot_names(self) -> List[str]:
        """Names of the slots created so far, e.g. ``["m", "v"]``."""
        return list(self._table.names)

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
        if self._slot_dir is not None:  # every file and the room first
            self._check_slot_dir(var_list)
        _ = self.iterations
        self._create_hypers()
        self._create_slots(var_list)

    def _create_slots(self, var_list: List[Any]) -> None:
        pass

    def _check_slot_dir(self, var_list: List[Any]) -> None:
        needs = []
        required = self._required_slots()
        for var in var_list:
            if not isinstance(var, np.ndarray) or self._table.in_buffer(var):
                continue
            entry = self._entry(var)
            names = tuple(
                n for n in required if entry is None or n not in entry.slots
            )
            if names:
                needs.append((var, names))
        self._slot_dir.check(needs)

    def _check_state_dir_save(self) -> None:
        """Raise ``ValueError`` if this process must not write a state folder.

        The seam of :func:`numbadam.save_state_dir`, asked before anything is
        written: any process may, here; ``DistributedAdam`` on several ranks
        allows rank 0 only (its state is replicated).
        """

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

