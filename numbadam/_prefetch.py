"""Prefetch the pages a lazy step will touch in memory-mapped state.

A lazy step reads and writes only the rows of its batch. When the table or
its slots are memory-mapped files (:mod:`numbadam._slotdir`, or the user's
own :class:`numpy.memmap`) and not in the page cache, each of those rows is a
page fault, and the kernel's threads take them one after another. Before the
kernel, :class:`Prefetcher` sorts the batch's unique rows, merges them into
page ranges and asks the kernel for them all at once
(``madvise(MADV_WILLNEED)`` on the mapping: the reads are queued together and
overlap). Without :func:`mmap.mmap.madvise` (Windows, Python builds without
it) it does nothing: the step is correct either way, only slower on a cold
cache.

This module knows nothing of kernels; the optimizer calls it before the
backend's step (layering: kernels know nothing of files).
"""

from __future__ import annotations

import mmap
from typing import Any, Dict, Optional, Tuple

import numpy as np

__all__ = ["Prefetcher", "mapping_of", "willneed_rows"]

_PAGE = mmap.PAGESIZE
_WILLNEED = getattr(mmap, "MADV_WILLNEED", None)
_HAS_MADVISE = _WILLNEED is not None and hasattr(mmap.mmap, "madvise")
#: Ranges of pages at most this many pages apart are asked for as one.
GAP_PAGES = 4


def mapping_of(a: Any) -> Optional[Tuple[mmap.mmap, int]]:
    """``(mmap, offset of a's first byte in it)`` for a memory-mapped array.

    Follows ``a.base`` to the :class:`mmap.mmap` of a :class:`numpy.memmap`
    (views and reshapes included); ``None`` for other arrays.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from numbadam._prefetch import mapping_of
    >>> path = os.path.join(tempfile.mkdtemp(), "t.npy")
    >>> mm = np.lib.format.open_memmap(path, "w+", np.float32, (8, 4))
    >>> mapping_of(mm[2:].view(np.ndarray))[1] - mapping_of(mm)[1]
    32
    >>> mapping_of(np.zeros(3)) is None
    True
    """
    base = a
    for _ in range(64):
        if isinstance(base, mmap.mmap):
            break
        base = getattr(base, "base", None)
        if base is None:
            return None
    else:
        return None
    start = np.frombuffer(base, np.uint8, count=0).__array_interface__["data"][0]
    return base, a.__array_interface__["data"][0] - start


def willneed_rows(a: np.ndarray, rows: np.ndarray, where: Any = None) -> int:
    """Ask for the pages of ``a[rows]`` (``rows`` sorted, unique); calls made.

    ``where`` is :func:`mapping_of` ``(a)`` if already known. Ranges less
    than :data:`GAP_PAGES` pages apart are one call.
    """
    if where is None:
        where = mapping_of(a)
    if where is None or not _HAS_MADVISE or not len(rows) or a.ndim == 0:
        return 0
    mm, off = where
    rb = a.strides[0] if a.ndim else a.itemsize
    rowlen = int(a[0].nbytes) if a.ndim > 1 else a.itemsize
    lo = off + rows.astype(np.int64) * rb
    first = lo // _PAGE
    last = (lo + max(rowlen, 1) - 1) // _PAGE
    # merge ranges closer than GAP_PAGES (rows sorted: so are their pages):
    # fewer calls, for a few pages read that no row needs
    brk = np.flatnonzero(first[1:] > last[:-1] + GAP_PAGES) + 1
    starts = first[np.concatenate(([0], brk))]
    ends = last[np.concatenate((brk - 1, [len(rows) - 1]))] + 1
    size = len(mm)
    calls = 0
    for s, e in zip(starts.tolist(), ends.tolist()):
        s *= _PAGE
        n = min(e * _PAGE, size) - s
        if n > 0:
            try:
                mm.madvise(_WILLNEED, s, n)
            except OSError:
                return calls  # (not supported on this mapping: give up quietly)
            calls += 1
    return calls


class Prefetcher:
    """Before each lazy step: madvise the pages of its rows in every
    memory-mapped array of the step (variable and slots)."""

    def rows(self, work: Any, slots: Dict[str, Any]) -> None:
        """Prefetch the rows of ``work`` (a SparseWork) in ``work.var`` and
        ``slots`` (those that are memory-mapped; others are skipped)."""
        if not _HAS_MADVISE or not isinstance(work.var, np.ndarray):
            return
        targets = [(a, mapping_of(a)) for a in (work.var, *slots.values())]
        targets = [(a, w) for a, w in targets if w is not None and a.ndim]
        if not targets:
            return
        rows = np.unique(np.asarray(work.indices))
        for a, w in targets:
            willneed_rows(a, rows, w)
