"""Memory overlap of arrays: address intervals first, exact checks only after.

An optimizer step writes every variable of an ``apply_gradients`` call in
place, one after the other. Two variables that share memory (``w`` and
``w.reshape(-1)``, ``w`` and ``w.T``, ``buf[:-1]`` and ``buf[1:]``) would have
their common elements updated twice, the second time with the first update's
slots; a variable whose elements alias each other (a zero stride) is written
several times per element; and a variable that is one of the optimizer's own
slots would be its own moment estimate. All are refused before anything is
written.

What this module gives:

- :func:`memory`: the ``(space, lo, hi)`` byte interval of a host or device
  array (NumPy's ``__array_interface__``, ``__cuda_array_interface__``, or the
  NumPy array behind one of Numba's simulator arrays) and a host ndarray with
  the same address, shape and strides, on which NumPy's exact overlap test
  runs. A device pointer is never dereferenced: NumPy's test is arithmetic on
  addresses and strides.
- :func:`overlaps` (two arrays, exact) and :func:`internal_overlap` (one array
  whose elements alias each other).
- :class:`SlotIndex`: the intervals of an optimizer's slots, sorted once, for
  ``O(log n)`` queries.
- :func:`first_overlap`: the first pair of intersecting intervals that really
  overlaps among many (one sort, then a sweep).

Layering: NumPy only; the slot table (:mod:`numbadam._slots`) and the
backends use it.
"""

from __future__ import annotations

import bisect
from typing import Any, Callable, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "HOST",
    "DEVICE",
    "Memory",
    "memory",
    "overlaps",
    "internal_overlap",
    "first_overlap",
    "SlotIndex",
]

#: Address spaces: host memory (NumPy arrays, the simulator's arrays) and
#: device pointers (``__cuda_array_interface__``).
HOST, DEVICE = 0, 1

#: ``(space, lo, hi, host)``: bytes ``[lo, hi)`` of address space ``space``, and
#: a host ndarray of the same address, shape and strides (never read).
Memory = Tuple[int, int, int, np.ndarray]

# np.shares_memory's bound on the work of its exact solver; beyond it the two
# arrays count as overlapping (only pathological strides get there)
_MAX_WORK = 1 << 20
# internal_overlap enumerates the offsets of a strided array up to this size;
# a larger array with strides that are not nested counts as overlapping
_MAX_ENUMERATE = 1 << 24
# (numpy.exceptions is NumPy >= 1.25; before, the class lived in numpy itself)
_TooHard = getattr(getattr(np, "exceptions", np), "TooHardError")


class _Interface:
    """An ``__array_interface__`` holder: ``np.asarray`` of it is a host array
    of that address, shape and strides (for arithmetic, never read)."""

    def __init__(self, iface: dict) -> None:
        self.__array_interface__ = iface


def _interval(ptr: int, shape, strides, itemsize: int) -> Optional[Tuple[int, int]]:
    lo = hi = ptr
    for n, s in zip(shape, strides):
        if n == 0:
            return None
        if s >= 0:
            hi += s * (n - 1)
        else:
            lo += s * (n - 1)
    return lo, hi + itemsize


def _c_strides(shape, itemsize: int) -> Tuple[int, ...]:
    out, step = [], itemsize
    for n in reversed(shape):
        out.append(step)
        step *= max(int(n), 1)
    return tuple(reversed(out))


_ITEMSIZE: dict = {}  # typestr -> itemsize


def _span(x: Any) -> Optional[Tuple[int, int, int, Any]]:
    """``(space, lo, hi, source)``: ``source`` is ``x`` itself for an ndarray,
    else its interface as ``(ptr, shape, strides, typestr)``; ``None`` for
    empty arrays and objects without an array interface."""
    if isinstance(x, np.ndarray):
        if x.size == 0:
            return None
        ptr = x.__array_interface__["data"][0]
        iv = _interval(ptr, x.shape, x.strides, x.itemsize)
        return None if iv is None else (HOST, iv[0], iv[1], x)
    try:
        iface = getattr(x, "__cuda_array_interface__", None)
        space = DEVICE
        if iface is None:  # (Numba's simulator arrays: host memory)
            iface = getattr(x, "__array_interface__", None)
            space = HOST
        if not isinstance(iface, dict):
            return None
        typestr = iface["typestr"]
        itemsize = _ITEMSIZE.get(typestr)
        if itemsize is None:
            itemsize = _ITEMSIZE[typestr] = np.dtype(typestr).itemsize
        shape = tuple(int(n) for n in iface["shape"])
        ptr = int(iface["data"][0])
        strides = iface.get("strides")
        strides = (
            _c_strides(shape, itemsize)
            if strides is None
            else tuple(int(s) for s in strides)
        )
    except Exception:  # (a PyTorch tensor that requires grad, and the like)
        return None
    iv = _interval(ptr, shape, strides, itemsize)
    if iv is None:
        return None
    return space, iv[0], iv[1], (ptr, shape, strides, typestr)


def _host(source: Any) -> np.ndarray:
    """The host ndarray of a ``_span`` source (a shadow for an interface)."""
    if isinstance(source, np.ndarray):
        return source
    ptr, shape, strides, typestr = source
    iface = {
        "shape": shape,
        "strides": strides,
        "typestr": typestr,
        "data": (ptr, False),
        "version": 3,
    }
    return np.asarray(_Interface(iface))


def memory(x: Any) -> Optional[Memory]:
    """The memory of array ``x``: ``(space, lo, hi, host_view)``, or ``None``.

    ``None`` for empty arrays (they own no bytes) and for objects that expose
    no array interface.

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam._overlap import memory, HOST
    >>> a = np.zeros((3, 4), np.float32)
    >>> space, lo, hi, _ = memory(a[:, 1])
    >>> space == HOST, hi - lo             # rows 0..2 of column 1: 2 strides + 4
    (True, 36)
    >>> memory(np.zeros(0)) is None
    True
    """
    span = _span(x)
    if span is None:
        return None
    return span[0], span[1], span[2], _host(span[3])


def _shares(a: np.ndarray, b: np.ndarray) -> bool:
    try:
        return bool(np.shares_memory(a, b, max_work=_MAX_WORK))
    except _TooHard:  # (may overlap: count it as overlapping)
        return True


def overlaps(a: Any, b: Any) -> bool:
    """True if arrays ``a`` and ``b`` (both host or both device) share a byte.

    Bounds first; NumPy's exact test only when the intervals intersect.

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam._overlap import overlaps
    >>> t = np.zeros((4, 4))
    >>> overlaps(t[:, 0], t[:, 1]), overlaps(t, t.T), overlaps(t[:2], t[2:])
    (False, True, False)
    """
    sa, sb = _span(a), _span(b)
    if sa is None or sb is None or sa[0] != sb[0]:
        return False
    if sa[1] >= sb[2] or sb[1] >= sa[2]:
        return False
    return _shares(_host(sa[3]), _host(sb[3]))


def internal_overlap(x: np.ndarray) -> bool:
    """True if two elements of host array ``x`` share a byte (its strides alias).

    A zero stride on an axis longer than one (``np.broadcast_to``) aliases;
    so does any ``as_strided`` view whose strides are too small for the
    dimensions they step over. Strides nested as those of C- or F-ordered
    arrays, slices and transposes are decided at once; others by listing the
    offsets.

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam._overlap import internal_overlap
    >>> a = np.zeros((3, 4))
    >>> internal_overlap(a.T[::2]), internal_overlap(np.broadcast_to(a[0], (3, 4)))
    (False, True)
    """
    itemsize = x.itemsize
    dims = sorted((abs(s), n) for n, s in zip(x.shape, x.strides) if n > 1)
    if not dims or 0 in x.shape:
        return False
    span = itemsize
    for s, n in dims:
        if s < span:
            break
        span += s * (n - 1)
    else:
        return False  # nested strides: each axis steps over the ones below
    if dims[0][0] == 0:
        return True
    if x.size > _MAX_ENUMERATE:
        return True  # (cannot tell cheaply: treated as aliasing)
    offs = np.zeros(1, np.int64)
    for s, n in dims:
        offs = (offs[:, None] + np.arange(n, dtype=np.int64) * s).reshape(-1)
    offs.sort()
    return bool(np.any(np.diff(offs) < itemsize))


def first_overlap(
    intervals: List[Tuple[int, int, int, int]], host: Callable[[int], Any]
) -> Optional[Tuple[int, int]]:
    """The first pair ``(i, j)`` whose memory overlaps, or ``None``.

    ``intervals`` are ``(space, lo, hi, i)`` (sorted here, in place);
    ``host(i)`` gives the host view of ``i``'s memory for the exact test,
    which runs only on pairs whose intervals intersect.

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam._overlap import first_overlap, memory
    >>> buf = np.zeros(10)
    >>> arrays = [buf[5:], buf[:5], buf[4:6]]
    >>> mems = [memory(a) for a in arrays]
    >>> first_overlap([m[:3] + (i,) for i, m in enumerate(mems)], lambda i: mems[i][3])
    (1, 2)
    """
    intervals.sort()
    active: List[Tuple[int, int, int, int]] = []
    space, maxhi = None, 0
    for rec in intervals:
        sp, lo, hi, i = rec
        if sp != space or lo >= maxhi:  # the common case: after every other one
            active = [rec]
            space, maxhi = sp, hi
            continue
        active = [a for a in active if a[2] > lo]
        for a in active:
            if _shares(host(a[3]), host(i)):
                return (a[3], i) if a[3] < i else (i, a[3])
        active.append(rec)
        maxhi = max(maxhi, hi)
    return None


class SlotIndex:
    """The byte intervals of an optimizer's slots, sorted, for overlap queries.

    Built from ``(name, owner, array)`` records; :meth:`find` returns the
    record of a slot sharing memory with given bytes, or ``None``.

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam._overlap import SlotIndex, memory
    >>> m = np.zeros(6)
    >>> index = SlotIndex([("m", "w", m)])
    >>> index.find(memory(m[2:4])) is not None, index.find(memory(np.ones(6)))
    (True, None)
    """

    def __init__(self, records: Sequence[Tuple[str, Any, Any]]) -> None:
        rows = []
        for rec in records:
            mem = memory(rec[2])
            if mem is not None:
                rows.append((mem[0], mem[1], mem[2], len(rows), rec, mem[3]))
        rows.sort(key=lambda r: r[:3])
        # per space: los (sorted), the running max of his, the rows
        self._spaces: dict = {}
        for row in rows:
            los, pmax, rs = self._spaces.setdefault(row[0], ([], [], []))
            los.append(row[1])
            pmax.append(max(row[2], pmax[-1]) if pmax else row[2])
            rs.append(row)

    def find(self, mem: Optional[Memory]) -> Optional[Tuple[str, Any, Any]]:
        """The ``(name, owner, array)`` of a slot overlapping ``mem``, or None.

        Of several (a ParameterBuffer's flat slot and its views), the
        smallest of those containing ``mem``'s interval, else the smallest.
        """
        if mem is None or mem[0] not in self._spaces:
            return None
        los, pmax, rows = self._spaces[mem[0]]
        _, lo, hi, host = mem
        best = None
        k = bisect.bisect_left(los, hi) - 1  # rows[:k+1] start below hi
        while k >= 0 and pmax[k] > lo:
            row = rows[k]
            if row[2] > lo and _shares(row[5], host):
                key = (not (row[1] <= lo and hi <= row[2]), row[2] - row[1])
                if best is None or key < best[0]:
                    best = (key, row)
            k -= 1
        return None if best is None else best[1][4]
