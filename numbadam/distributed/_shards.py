"""The pieces of ShardedAdam's slot table: a variable's shard and a part of it."""

from __future__ import annotations

import errno
import os
import stat
from typing import Dict

import numpy as np

from .._slotdir import SlotDir
from .._slots import Entry
from ._comm import Communicator, partition
from ._embedding import ShardedEmbedding

__all__ = ["Shard", "Part", "rank_slot_dir"]


def rank_slot_dir(parent: SlotDir, comm: Communicator, owner: str) -> SlotDir:
    """This rank's slot folder, ``rank-RRRRR-of-NNNNN`` inside ``parent``'s.

    Created if missing (a folder already there is used if it is a plain
    folder without another optimizer's marker); a link or a file of that
    name is refused, never replaced.
    """
    path = os.path.join(parent.path, f"rank-{comm.rank:05d}-of-{comm.size:05d}")
    try:
        os.mkdir(path)
    except FileExistsError:
        if not stat.S_ISDIR(os.lstat(path).st_mode):
            raise NotADirectoryError(
                errno.ENOTDIR,
                "this rank's slot folder is taken by something that is not a "
                "folder (a link or a file); it was left alone",
                path,
            ) from None
    return SlotDir(path, f"{owner} rank {comm.rank} of {comm.size}")


class Shard(Entry):
    """One variable as ShardedAdam sees it: this rank's flat range and its slots
    (an entry of the optimizer's slot table, holding 1-D slices).

    With ``rows`` (a replicated variable of two or more dimensions under
    ``second_moment="row"``) the ranges are whole rows of the first axis
    (:func:`partition` of the rows), so that each row, and its one second
    moment, belongs to one rank.
    """

    __slots__ = (
        "key",
        "emb",
        "shape",
        "dtype",
        "size",
        "bounds",
        "lo",
        "hi",
        "view",
        "label",
        "rank",
        "row_bounds",
    )

    def __init__(
        self, key, var, comm: Communicator, label: str, rows: bool = False
    ) -> None:
        self.key = key
        self.var = var
        self.label = label
        self.shape = tuple(var.shape)
        self.dtype = np.dtype(var.dtype)
        self.slots: Dict[str, np.ndarray] = {}
        self.interval = None  # (Entry's: set once found clear of the slots)
        self.row_bounds = None  # (rows of the row-wise slots, when row-aligned)
        if isinstance(var, ShardedEmbedding):
            self.emb = var
            self.size = var.size
            self.bounds = var.row_bounds * var.shape[1]
            self.row_bounds = var.row_bounds
            self.view = var.local.reshape(-1)
        else:
            self.emb = None
            self.size = int(var.size)
            if rows:
                width = self.size // self.shape[0] if self.shape[0] else 0
                self.row_bounds = partition(self.shape[0], comm.size)
                self.bounds = self.row_bounds * width
            else:
                self.bounds = partition(self.size, comm.size)
            self.view = None
        self.rank = comm.rank
        self.lo = int(self.bounds[comm.rank])
        self.hi = int(self.bounds[comm.rank + 1])
        if self.emb is None:
            self.view = var.reshape(-1)[self.lo : self.hi]

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.bounds)

    def layout(self, name: str, row_slots=()):
        """``(counts per rank, full shape, lo, hi)`` of slot ``name``'s slices:
        the variable's elements, or, for a row-wise slot of a row-aligned
        shard (``name`` in ``row_slots``), its rows (one value each)."""
        if self.row_bounds is not None and name in row_slots:
            rb = self.row_bounds
            lo, hi = int(rb[self.rank]), int(rb[self.rank + 1])
            return np.diff(rb), (self.shape[0],), lo, hi
        return self.counts, self.shape, self.lo, self.hi


class Part:
    """Elements ``[a, b)`` of a shard's slice: its slots are views of the shard's."""

    __slots__ = ("shard", "a", "b")

    def __init__(self, shard: Shard, a: int, b: int) -> None:
        self.shard = shard
        self.a = a
        self.b = b

    @property
    def slots(self) -> Dict[str, np.ndarray]:
        return {n: s[self.a : self.b] for n, s in self.shard.slots.items()}
