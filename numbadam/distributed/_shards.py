"""The pieces of ShardedAdam's slot table: a variable's shard and a part of it."""

from __future__ import annotations

from typing import Dict

import numpy as np

from .._slots import Entry
from ._comm import Communicator, partition
from ._embedding import ShardedEmbedding

__all__ = ["Shard", "Part"]


class Shard(Entry):
    """One variable as ShardedAdam sees it: this rank's flat range and its slots
    (an entry of the optimizer's slot table, holding 1-D slices)."""

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
    )

    def __init__(self, key, var, comm: Communicator, label: str) -> None:
        self.key = key
        self.var = var
        self.label = label
        self.shape = tuple(var.shape)
        self.dtype = np.dtype(var.dtype)
        self.slots: Dict[str, np.ndarray] = {}
        self.interval = None  # (Entry's: set once found clear of the slots)
        if isinstance(var, ShardedEmbedding):
            self.emb = var
            self.size = var.size
            self.bounds = var.row_bounds * var.shape[1]
            self.view = var.local.reshape(-1)
        else:
            self.emb = None
            self.size = int(var.size)
            self.bounds = partition(self.size, comm.size)
            self.view = None
        self.lo = int(self.bounds[comm.rank])
        self.hi = int(self.bounds[comm.rank + 1])
        if self.emb is None:
            self.view = var.reshape(-1)[self.lo : self.hi]

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.bounds)


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
