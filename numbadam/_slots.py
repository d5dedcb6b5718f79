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

The table also answers whether the variables of one step overlap each other,
themselves or a slot (:meth:`SlotTable.check_variables`, with
:mod:`numbadam._overlap`): it keeps the ids of its slot arrays for the fast
path and sorts their address intervals once for the rest.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._overlap import SlotIndex, first_overlap, internal_overlap, memory

__all__ = [
    "Entry", "FlatState", "SlotTable", "memory_key", "check_slots", "slot_shape"
]  # fmt: skip

_ndarray = np.ndarray  # (a global lookup, not an attribute, on the fast path)


class Entry:
    """The slots of one variable (slot name -> array); holds ``var``.

    ``interval`` is the variable's ``(space, lo, hi)`` byte interval once a
    step has found it clear of the optimizer's slots and of itself (``None``
    before). Slots created later are new memory, so that stays true.
    ``plan`` is the ``(backend, plan)`` of the variable's cached plain step
    (:mod:`numbadam._cached`), or ``None``.
    """

    __slots__ = ("var", "slots", "interval", "plan")

    def __init__(self, var: Any) -> None:
        self.var = var
        self.slots: Dict[str, Any] = {}
        self.interval: Optional[Tuple[int, int, int]] = None
        self.plan: Any = None  # (backend, plan) of numbadam._cached


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


def slot_shape(var: Any, name: str, rows: Tuple[str, ...] = ()) -> Tuple[int, ...]:
    """The shape of slot ``name`` of ``var``: the variable's, or ``(R,)`` (one
    value per row) for a slot named in ``rows`` of a variable of ``R`` rows
    and two or more dimensions (``Adam(second_moment="row")``'s ``v`` and
    ``vhat``).

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam._slots import slot_shape
    >>> rows = ("v", "vhat")
    >>> slot_shape(np.zeros((4, 3)), "v", rows), slot_shape(np.zeros((4, 3)), "m", rows)
    ((4,), (4, 3))
    >>> slot_shape(np.zeros(5), "v", rows)  # 1-D: element-wise
    (5,)
    """
    shape = tuple(var.shape)
    if rows and len(shape) >= 2 and name in rows:
        return shape[:1]
    return shape


def check_slots(
    slots: Dict[str, Any], var: Any, label: Any, rows: Tuple[str, ...] = ()
) -> None:
    """Raise ValueError unless every slot can take this step's in-place write.

    ``rows``: the names of slots kept per row (:func:`slot_shape`).
    """
    shape, dtype = var.shape, var.dtype
    for name, slot in slots.items():
        if rows:
            shape = slot_shape(var, name, rows)
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
        # key -> Entry
        self._entries: Dict[Any, Entry] = {}
        #: id(var) -> Entry for the very object that created the entry (the
        #: per-step fast path: no address computation); check ``entry.var is
        #: var`` (an id may be reused).
        self.by_id: Dict[int, Entry] = {}
        #: Slot names in first-creation order.
        self.names: List[str] = []
        #: (slot name, entry) of every slot, in creation order.
        self.order: List[Tuple[str, Entry]] = []
        # ParameterBuffers: id(buffer) -> FlatState; id(view) -> (state, index)
        self._flat: Dict[int, FlatState] = {}
        self._flat_owner: Dict[int, Tuple[FlatState, int]] = {}
        #: ids of every slot array (entries' and ParameterBuffers' flat ones):
        #: the fast path of check_variables (the table holds the arrays).
        self.slot_ids: set = set()
        self._index: Optional[SlotIndex] = None  # (rebuilt after a new slot)

    # -- per-variable entries --------------------------------------------------

    def entry(self, var: Any, key: Any = None) -> Optional[Entry]:
        """The entry of ``var`` (by identity, then by ``key`` or memory), or None."""
        entry = self.by_id.get(id(var))
        if entry is not None and entry.var is var:
            return entry
        return self._entries.get(memory_key(var) if key is None else key)

    def new_entry(self, var: Any, key: Any = None) -> Entry:
        """Register an empty entry for ``var`` (under ``key``, default its memory)."""
        entry = Entry(var)
        self._entries[memory_key(var) if key is None else key] = entry
        self.by_id[id(var)] = entry
        return entry

    def register(self, entry: Entry, key: Any) -> None:
        """Register an entry of the caller's own (e.g. a shard) under ``key``."""
        self._entries[key] = entry
        self.by_id[id(entry.var)] = entry

    def add(self, entry: Entry, name: str, array: Any) -> None:
        """Record ``array`` as slot ``name`` of ``entry``, in creation order."""
        entry.slots[name] = array
        self.slot_ids.add(id(array))
        self._index = None
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

    def in_buffer(self, var: Any) -> bool:
        """Whether ``var`` is a variable of a ParameterBuffer in the table."""
        owner = self._flat_owner.get(id(var))
        return owner is not None and owner[0].buffer.params[owner[1]] is var

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
            self.slot_ids.add(id(flat))
            self._index = None
        return buf.slot_views(flat)[i]

    # -- memory overlap --------------------------------------------------------

    def slot_index(self) -> SlotIndex:
        """The address intervals of every slot, sorted (built when first needed
        after a slot was added)."""
        if self._index is None:
            recs: List[Tuple[str, Any, Any]] = [
                (name, entry, entry.slots[name]) for name, entry in self.order
            ]
            for state in self._flat.values():
                recs.extend((name, state, a) for name, a in state.slots.items())
            self._index = SlotIndex(recs)
        return self._index

    def check_variables(self, items: Sequence[Any]) -> None:
        """Raise ValueError if the variables of one step share memory.

        ``items`` are a step's ``(sparse, work, backend, var, holder)`` tuples
        (:class:`numbadam._step.Step`; ``work.label`` names the variable).
        Refused: two variables that overlap (views of one array), a variable
        whose elements alias each other (zero or too-small strides), and a
        variable that is (a view of) one of this table's slots. Nothing is
        written either way.

        When every variable is a NumPy array owning its memory (``base is
        None``) and none is a slot, no two can overlap: one cheap loop. Else
        the address intervals are sorted once and only intersecting ones get
        NumPy's exact test; a variable's interval is kept in its entry once it
        is found clear of the slots.
        """
        ids = self.slot_ids
        for it in items:
            v = it[3]
            if type(v) is not _ndarray or v.base is not None or id(v) in ids:
                self._check_variables(items)
                return

    def aliased_gradients(self, items: Sequence[Any]) -> List[int]:
        """Positions of the step's items whose gradient shares memory with a
        variable of the step or one of this table's slots.

        The kernels write the variables and slots while they read the
        gradients (a dense work's ``grad``, a sparse work's ``values``); such
        a gradient is to be copied first, NumPy's rule for overlapping
        operands (e.g. a view of a slot ``m`` as the gradient, or one pair's
        gradient viewing another pair's variable). When every gradient and
        variable is a NumPy array owning its memory, none can be a view of
        another and slots are never views of user arrays: one cheap loop.
        """
        for it in items:
            v, w = it[3], it[1]
            g = w.values if it[0] else w.grad
            if (type(g) is not _ndarray or g.base is not None
                    or type(v) is not _ndarray or v.base is not None):
                break  # fmt: skip
        else:
            return []
        variables = SlotIndex([("", i, it[1].var) for i, it in enumerate(items)])
        slots = self.slot_index()
        out = []
        for i, it in enumerate(items):
            mem = memory(it[1].values if it[0] else it[1].grad)
            if variables.find(mem) is not None or slots.find(mem) is not None:
                out.append(i)
        return out

    def _check_variables(self, items: Sequence[Any]) -> None:
        recs = []
        mems: Dict[int, Any] = {}
        for i, it in enumerate(items):
            v, holder = it[3], it[4]
            entry = holder if isinstance(holder, Entry) else None
            iv = None if entry is None else entry.interval
            if iv is None:
                mem = memory(v)
                if mem is None:
                    continue  # (empty: no bytes to share)
                mems[i] = mem
                label = it[1].label
                if internal_overlap(mem[3]):
                    raise ValueError(
                        f"{label} overlaps itself in memory (strides "
                        f"{tuple(mem[3].strides)}: some of its elements are the "
                        "same bytes, e.g. after numpy.broadcast_to or as_strided); "
                        "the step would update them more than once. Pass a copy"
                    )
                hit = self.slot_index().find(mem)
                if hit is not None:
                    raise ValueError(
                        f"{label} shares memory with this optimizer's slot {hit[0]!r} "
                        f"of {_owner(hit[1])}; the optimizer's own state cannot "
                        "be stepped as a variable (pass a copy)"
                    )
                iv = mem[:3]
                if entry is not None:
                    entry.interval = iv
            recs.append(iv + (i,))
        if len(recs) < 2:
            return

        def host(i: int) -> Any:
            mem = mems.get(i)
            if mem is None:
                mem = mems[i] = memory(items[i][3])
            return mem[3]

        pair = first_overlap(recs, host)
        if pair is not None:
            a, b = (items[k][1].label for k in pair)
            raise ValueError(
                f"{b} overlaps {a} in memory (views of one array); one step "
                "would update the shared elements twice. Pass each array once, "
                "as one variable"
            )


def _owner(owner: Any) -> str:
    if isinstance(owner, FlatState):
        return f"a ParameterBuffer ({owner.buffer.data.size} elements)"
    var = owner.var
    shape = getattr(var, "shape", None)
    if shape is None:
        return f"a {type(var).__name__}"
    return f"the variable of shape {tuple(shape)}, {getattr(var, 'dtype', '')}"
