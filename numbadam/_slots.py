"""The slot table: where an optimizer keeps its per-variable state.

One :class:`SlotTable` serves the three shapes slots come in:

- per variable: an :class:`Entry` per variable, holding arrays of its shape;
- a :class:`~numbadam.ParameterBuffer` stepped in one pass: a
  :class:`FlatState` per buffer holding flat arrays of the buffer's size, and
  its variables' entries hold views of them (so ``get_slot`` and ``weights``
  see the same memory the one-pass kernel writes);
- sharded slices (``numbadam.distributed.ShardedAdam``): entries keyed by the
  optimizer's own key, holding this rank's 1-D slices.

An entry is found first by the identity of the very object that created it
(the per-step fast path), then by the variable's memory (address, shape,
strides, dtype), so a new view object of the same array finds the same slots.
An entry holds its variable, which keeps that memory from being reused. The
table records every slot in creation order (TensorFlow's order of slot
variables), which :attr:`numbadam.OptimizerV2.weights` follows.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

__all__ = ["Entry", "FlatState", "SlotTable", "memory_key", "check_slots"]


class Entry:
    """The slots of one variable (slot name -> array); holds ``var``."""

    __slots__ = ("var", "slots")

    def __init__(self, var: Any) -> None:
        self.var = var
        self.slots: Dict[str, Any] = {}


class FlatState:
    """The flat slot arrays of one ParameterBuffer (slot name -> flat array)."""

    __slots__ = ("buffer", "slots")

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer
        self.slots: Dict[str, Any] = {}


def memory_key(var: Any) -> Any:
    """What identifies a variable: its memory, shape, strides and dtype.

    The same memory, shape and strides is the same variable, even through a
    new view object. Empty arrays (which may share an address) and objects
    without an array interface are keyed by identity.
    """
    if isinstance(var, np.ndarray):
        if var.size == 0:
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


def check_slots(slots: Dict[str, Any], var: Any, label: Any) -> None:
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


class SlotTable:
    """Every slot of one optimizer: entries, ParameterBuffer states, order.

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam._slots import SlotTable
    >>> table = SlotTable()
    >>> w = np.zeros(3)
    >>> entry = table.new_entry(w)
    >>> table.add(entry, "m", np.zeros(3))
    >>> table.entry(w[:]) is entry, table.names, len(table.arrays())
    (True, ['m'], 1)
    """

    def __init__(self) -> None:
        # key -> Entry; plus id(var) -> Entry for the very object that created
        # the entry (the fast path: no address computation per step)
        self._entries: Dict[Any, Entry] = {}
        self._by_id: Dict[int, Entry] = {}
        #: Slot names in first-creation order.
        self.names: List[str] = []
        #: (slot name, entry) of every slot, in creation order.
        self.order: List[Tuple[str, Entry]] = []
        # ParameterBuffers: id(buffer) -> FlatState; id(view) -> (state, index)
        self._flat: Dict[int, FlatState] = {}
        self._flat_owner: Dict[int, Tuple[FlatState, int]] = {}

    # -- per-variable entries --------------------------------------------------

    def entry(self, var: Any, key: Any = None) -> Optional[Entry]:
        """The entry of ``var`` (by identity, then by ``key`` or memory), or None."""
        entry = self._by_id.get(id(var))
        if entry is not None and entry.var is var:
            return entry
        return self._entries.get(memory_key(var) if key is None else key)

    def new_entry(self, var: Any, key: Any = None) -> Entry:
        """Register an empty entry for ``var`` (under ``key``, default its memory)."""
        entry = Entry(var)
        self._entries[memory_key(var) if key is None else key] = entry
        self._by_id[id(var)] = entry
        return entry

    def register(self, entry: Entry, key: Any) -> None:
        """Register an entry of the caller's own (e.g. a shard) under ``key``."""
        self._entries[key] = entry
        self._by_id[id(entry.var)] = entry

    def add(self, entry: Entry, name: str, array: Any) -> None:
        """Record ``array`` as slot ``name`` of ``entry``, in creation order."""
        entry.slots[name] = array
        if name not in self.names:
            self.names.append(name)
        self.order.append((name, entry))

    def arrays(self) -> List[Any]:
        """Every slot array, in creation order."""
        return [entry.slots[name] for name, entry in self.order]

    def entries(self) -> List[Entry]:
        """The entries, in the order their first slot was created."""
        seen: Dict[int, Entry] = {}
        for _, entry in self.order:
            seen.setdefault(id(entry), entry)
        return list(seen.values())

    # -- ParameterBuffers ------------------------------------------------------

    def buffer_state(self, buf: Any) -> Optional[FlatState]:
        """The flat state of ParameterBuffer ``buf``; created on first use unless
        a variable of it already has slots of its own (then ``None``)."""
        state = self._flat.get(id(buf))
        if state is None:
            if not buf.params or any(self.entry(p) is not None for p in buf.params):
                return None
            state = self._flat[id(buf)] = FlatState(buf)
            for i, p in enumerate(buf.params):
                self._flat_owner[id(p)] = (state, i)
        return state

    def flat_slot(self, var: Any, name: str) -> Any:
        """For a variable of a ParameterBuffer in the table: the view of its slot
        ``name`` in the buffer's flat slot (created as zeros). Else ``None``."""
        owner = self._flat_owner.get(id(var))
        if owner is None:
            return None
        state, i = owner
        buf = state.buffer
        if buf.params[i] is not var:
            return None
        flat = state.slots.get(name)
        if flat is None:
            flat = state.slots[name] = np.zeros_like(buf.data)
        return buf.slot_views(flat)[i]
