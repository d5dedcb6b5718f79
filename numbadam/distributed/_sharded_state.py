"""ShardedAdam's state API: gathered and local weights, sharded checkpoints.

A mixin of :class:`numbadam.distributed.ShardedAdam`, which provides
``comm``, ``_entries`` (``(slot name, shard)`` in Keras' order), ``_order``
(the shards in variable order) and the slot table.
"""

from __future__ import annotations

from typing import Any, List, Optional, Sequence

import numpy as np

from .._accum import ACCUMULATOR
from . import _checkpoint
from ._shards import Shard

__all__ = ["ShardedStateMixin"]


class ShardedStateMixin:
    """Weights and checkpoints of an optimizer whose slots are sharded."""

    def _gather(self, sh: Shard, local: np.ndarray, name: str = "") -> np.ndarray:
        counts, shape, _, _ = sh.layout(name, self._row_slots)
        out = np.empty(int(np.sum(counts)), sh.dtype)
        self.comm.allgatherv(local, counts, out=out)
        return out.reshape(shape)

    @property
    def weights(self) -> List[Any]:
        """This rank's state arrays, live: ``[iterations, slot slices...]``
        (with ``gradient_accumulation_steps``, the counter of calls first)."""
        return [self._counter()] + [sh.slots[n] for n, sh in self._entries]

    def variables(self) -> List[Any]:
        """Same as :attr:`weights`."""
        return self.weights

    def state_nbytes(self) -> int:
        """Bytes of optimizer state held by this rank (slot slices + iterations)."""
        return int(sum(w.nbytes for w in self.weights))

    def get_weights(self) -> List[np.ndarray]:
        """The full state in Keras' order, gathered from all ranks (collective).

        Same list as an unsharded :class:`numbadam.Adam`'s ``get_weights()``.
        """
        steps = self._accum_steps
        if steps is not None:
            self._check_no_pending("get_weights")
        out = [np.array(self._counter(), copy=True)]
        for name, sh in self._entries:
            local = sh.slots[name]
            if steps is not None and name == ACCUMULATOR and not self._live(local):
                local = np.zeros_like(local)  # (no partial sum of this cycle)
            out.append(self._gather(sh, local, name))
        return out

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Set the state from a full list like :meth:`get_weights`' (no communication).

        Each rank keeps its slices. Call :meth:`build` first on a fresh optimizer.

        Raises
        ------
        ValueError
            If the length or a shape differs, or ``iterations`` is not a
            non-negative integer below ``2**63``.
        TypeError
            If ``iterations`` is not a real number.
        """
        weights = list(weights)
        if len(weights) != 1 + len(self._entries):
            raise ValueError(
                f"You called set_weights(weights) on optimizer {self._name} with a "
                f"weight list of length {len(weights)}, but the optimizer was "
                f"expecting {1 + len(self._entries)} weights (build it first)."
            )
        host = [np.asarray(weights[0])]
        if host[0].shape != ():
            raise ValueError(f"Optimizer weight 0 has shape () not {host[0].shape}")
        it = host[0]
        if it.dtype.kind not in "iuf":
            raise TypeError(f"Optimizer weight 0 has dtype {it.dtype}")
        if not (
            np.isfinite(it)
            and it >= 0
            and (it.dtype.kind in "iu" or float(it) == int(it))
            and int(it) < 2**63
        ):  # as OptimizerV2.set_weights: no wrapping or fractional step counts
            raise ValueError(
                "Optimizer weight 0 is iterations, which must be a non-negative "
                f"integer below 2**63, got {it!r}"
            )
        for k, ((name, sh), w) in enumerate(zip(self._entries, weights[1:]), 1):
            w = np.asarray(w)
            _, shape, lo, hi = sh.layout(name, self._row_slots)
            if w.shape != shape:
                raise ValueError(
                    f"Optimizer weight {k} has shape {shape} not compatible with "
                    f"provided weight shape {w.shape}"
                )
            host.append(w.reshape(-1)[lo:hi].astype(sh.dtype))
        steps = self._accum_steps
        if steps is not None and int(host[0]) % steps == 0:
            for k, (name, _) in enumerate(self._entries, 1):
                if name == ACCUMULATOR and np.any(np.asarray(weights[k]) != 0):
                    raise ValueError(
                        f"Optimizer weight {k} is a gradient accumulator and is "
                        f"not zero, but the counter of calls ({int(host[0])}) is "
                        f"at the start of a cycle of {steps}: the weights disagree"
                    )
        self._counter()[...] = host[0]
        for (name, sh), w in zip(self._entries, host[1:]):
            sh.slots[name][...] = w
        if steps is not None:
            self._reset_cycle(restored=int(host[0]) % steps != 0)

    def _checkpoint_weights(self) -> List[np.ndarray]:
        # numbadam.save_checkpoint's one file needs the whole state. Gathering it
        # is collective, and a save called on one rank only would hang: refuse.
        if self.comm.size > 1:
            raise ValueError(
                f"this ShardedAdam holds only rank {self.comm.rank}'s part of the "
                f"optimizer state ({self.comm.size} ranks), so one file of it could "
                "never be loaded; save it with opt.save_sharded(folder) on every "
                "rank and load it with opt.load_sharded(folder)"
            )
        return self.get_weights()

    def get_local_weights(self) -> List[np.ndarray]:
        """Copies of this rank's :attr:`weights` (no communication)."""
        return [np.array(w, copy=True) for w in self.weights]

    def set_local_weights(self, weights: Sequence[Any]) -> None:
        """Set this rank's slices from a list like :meth:`get_local_weights`'."""
        weights = list(weights)
        mine = self.weights
        if len(weights) != len(mine) or any(
            np.shape(w) != m.shape for w, m in zip(weights, mine)
        ):
            raise ValueError("local weights do not match this rank's slices")
        for m, w in zip(mine, weights):
            m[...] = w

    # -- checkpoints ---------------------------------------------------------------

    def _refuse_rowwise(self, what: str) -> None:
        if self._row_slots:
            raise ValueError(
                f"{type(self).__name__}.{what}: the sharded-checkpoint format "
                "holds slots shaped like their variables, and this optimizer has "
                "second_moment='row' (one v per row of its sharded tables)"
            )
        if self._accum_steps is not None:
            raise ValueError(
                f"{type(self).__name__}.{what}: the sharded-checkpoint format "
                "holds no gradient accumulators or counter of calls, and this "
                f"optimizer has gradient_accumulation_steps={self._accum_steps}; "
                "gather get_weights() (collective) and save that"
            )

    def save_sharded(self, path: str) -> None:
        """Save the state: one ``.npz`` per rank plus ``manifest.json`` (collective).

        :meth:`load_sharded` reads it back at this or any other number of ranks
        (and :meth:`DistributedAdam.load_sharded` at any number too).

        Raises
        ------
        ValueError
            With ``second_moment="row"``: the format holds slots shaped like
            their variables (use :func:`numbadam.save_checkpoint` on one
            process, or gather :meth:`get_weights`).
        """
        self._refuse_rowwise("save_sharded")
        index = {sh.key: i for i, sh in enumerate(self._order)}
        variables = [
            {
                "shape": list(sh.shape),
                "dtype": sh.dtype.name,
                "layout": "rows" if sh.emb is not None else "flat",
            }
            for sh in self._order
        ]
        _checkpoint.write(
            path,
            self.comm,
            {"kind": type(self).__name__, "config": self.get_config()},
            variables,
            [{"name": n, "variable": index[sh.key]} for n, sh in self._entries],
            [(sh.lo, sh.hi) for sh in self._order],
            [sh.slots[n] for n, sh in self._entries],
            int(self.iterations),
            list(range(self.comm.size)),
        )

    def load_sharded(self, path: str, var_list: Optional[Sequence[Any]] = None) -> None:
        """Load this rank's slices from a sharded checkpoint saved at any size.

        No communication: every rank reads the pieces of the shard files that
        overlap its slices.

        Parameters
        ----------
        path : str
        var_list : sequence, optional
            The variables in the saved order; :meth:`build` is called with them
            first. Otherwise the optimizer must already hold the saved slots.
        """
        self._refuse_rowwise("load_sharded")
        if var_list is not None:
            self.build(var_list)
        with _checkpoint.Reader(path) as r:
            r.check_variables([(sh.shape, sh.dtype) for sh in self._order])
            index = {sh.key: i for i, sh in enumerate(self._order)}
            mine = [(n, index[sh.key]) for n, sh in self._entries]
            saved = [(w["name"], w["variable"]) for w in r.weights]
            if saved != mine:
                raise ValueError(
                    f"checkpoint {path} has slots {saved}, the optimizer {mine}"
                )
            data = [r.read(k, sh.lo, sh.hi) for k, (_, sh) in enumerate(self._entries)]
            self.iterations[...] = r.iterations
        for (n, sh), d in zip(self._entries, data):
            sh.slots[n][...] = d
