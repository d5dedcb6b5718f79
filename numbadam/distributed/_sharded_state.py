"""ShardedAdam's state API: slots, gathered and local weights, sharded checkpoints.

A mixin of :class:`numbadam.distributed.ShardedAdam`, which provides
``comm``, ``_entries`` (``(slot name, shard)`` in Keras' order), ``_order``
(the shards in variable order), the slot table, ``_shard_for`` / ``_key``
(a variable's shard) and ``_allgather_params``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Iterable, List, Optional, Sequence

import numpy as np

from .._accum import ACCUMULATOR, check_cycle_start
from .._ema import SLOT as EMA_SLOT
from . import _checkpoint
from ._embedding import ShardedEmbedding
from ._shards import Shard

__all__ = ["ShardedStateMixin"]

#: What the sharded-checkpoint format's refusals point to.
_GATHER_INSTEAD = "gather get_weights() (collective) and save that"


class ShardedStateMixin:
    """Slots, weights and checkpoints of an optimizer whose slots are sharded."""

    # -- slots ----------------------------------------------------------------------

    def _create_shard_slots(self, shards: Sequence[Shard]) -> None:
        _ = self.iterations
        self._create_hypers()
        for sh in shards:
            if self._table.entry(sh.var, sh.key) is not sh:
                self._table.register(sh, sh.key)
        names = [ACCUMULATOR] if self._accum_steps is not None else []
        names += ["m", "v"] + (["vhat"] if self.amsgrad else [])
        names += [EMA_SLOT] if self._use_ema else []
        sd = self._slot_dir
        if sd is not None:  # every file and the room first (numbadam._slotdir)
            needs = [(sh.view, tuple(n for n in names if n not in sh.slots))
                     for sh in shards]  # fmt: skip
            sd.check([(view, missing) for view, missing in needs if missing])
        for name in names:
            for sh in shards:
                if name not in sh.slots:
                    slot = self._zero_slice(sh, name)
                    if name == EMA_SLOT and self.sparse_mode == "lazy":
                        slot[...] = sh.view  # (as Adam: a copy under the lazy rule)
                    self._table.add(sh, name, slot)

    def _zero_slice(self, sh: Shard, name: str) -> np.ndarray:
        # this rank's zero slice of slot ``name``: a memory map in slot_dir,
        # or in memory (the caller checked the slot_dir first); a row-wise
        # slot of a sharded table holds one value per local row
        _, _, lo, hi = sh.layout(name, self._row_slots)
        n = hi - lo
        if self._slot_dir is None:
            return np.zeros(n, sh.dtype)
        return self._slot_dir.zeros(sh.view, name, (n,), sh.dtype)

    def build(self, var_list: Iterable[Any]) -> None:
        """Create ``iterations`` and this rank's slot slices for ``var_list`` now.

        ``var_list`` may hold NumPy arrays and
        :class:`~numbadam.distributed.ShardedEmbedding` tables.
        """
        shards = []
        for i, var in enumerate(var_list):
            sh = self._shard_for(var, self._label(var, i))
            if all(s.key != sh.key for s in shards):
                shards.append(sh)
        self._create_shard_slots(shards)

    def exclude_from_weight_decay(
        self,
        var_list: Optional[Sequence[Any]] = None,
        var_names: Optional[Sequence[str]] = None,
        *,
        variables: Optional[Mapping[str, Any]] = None,
    ) -> None:
        """As :meth:`numbadam.Adam.exclude_from_weight_decay`; the variables
        may be :class:`~numbadam.distributed.ShardedEmbedding` tables too."""

        def local(var: Any) -> Any:  # (a table's steps run on its local rows)
            return var.local if isinstance(var, ShardedEmbedding) else var

        if var_list is not None and not isinstance(var_list, (str, bytes)):
            var_list = [local(v) for v in var_list]
        if isinstance(variables, Mapping):
            variables = {k: local(v) for k, v in variables.items()}
        super().exclude_from_weight_decay(var_list, var_names, variables=variables)

    def add_slot(self, var: Any, slot_name: str, initializer: Any = "zeros") -> Any:
        """Create (once) and return this rank's slice of slot ``slot_name`` of ``var``.

        The initializer gives the whole slot (as
        :meth:`numbadam.OptimizerV2.add_slot`); this rank keeps its slice (1-D).
        No communication.
        """
        if not isinstance(slot_name, str):
            raise TypeError(f"slot_name must be a str, got {slot_name!r}")
        sh = self._shard_for(var, f"add_slot({slot_name!r}) variable")
        if slot_name in sh.slots:
            return sh.slots[slot_name]
        _, shape, lo, hi = sh.layout(slot_name, self._row_slots)
        init = self._initial_value(initializer, shape, sh.dtype).reshape(-1)
        if self._slot_dir is not None:
            self._slot_dir.check([(sh.view, (slot_name,))])
        if self._table.entry(sh.var, sh.key) is not sh:
            self._table.register(sh, sh.key)
        slot = self._zero_slice(sh, slot_name)
        slot[...] = init[lo:hi]
        self._table.add(sh, slot_name, slot)
        return sh.slots[slot_name]

    def get_slot(self, var: Any, slot_name: str) -> np.ndarray:
        """This rank's slice (1-D, live) of slot ``slot_name`` of ``var``.

        Raises
        ------
        KeyError
            If ``var`` has no such slot (yet).
        """
        sh = self._table.entry(var, self._key(var))
        if sh is None or slot_name not in sh.slots:
            raise KeyError(
                f"no slot {slot_name!r} for this variable; slots are created on the "
                f"variable's first gradient. Known slot names: {self._table.names}"
            )
        return sh.slots[slot_name]

    def gather_slot(self, var: Any, slot_name: str) -> np.ndarray:
        """The whole slot ``slot_name`` of ``var``, in ``var``'s shape (collective)."""
        self.get_slot(var, slot_name)
        sh = self._table.entry(var, self._key(var))
        return self._gather(sh, sh.slots[slot_name], slot_name)

    def _overwrite_with_average(self, var_list: List[Any]) -> None:
        # finalize_variable_values: every rank's slices of the averages, put
        # together into the replicated variables (collective) or a table's
        # local rows (its own slice)
        shards = []
        for i, var in enumerate(var_list):
            sh = self._table.entry(var, self._key(var))
            if sh is None or EMA_SLOT not in sh.slots:
                raise ValueError(
                    f"variable {i} has no EMA average in this optimizer; pass the "
                    "variables the optimizer stepped"
                )
            shards.append(sh)
        for sh in shards:
            sh.view[...] = sh.slots[EMA_SLOT]
        self._allgather_params([sh for sh in shards if sh.emb is None])

    # -- weights --------------------------------------------------------------------

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
        if steps is not None:
            check_cycle_start(
                int(host[0]), steps,
                [(k, weights[k]) for k, (name, _) in enumerate(self._entries, 1)
                 if name == ACCUMULATOR],
            )  # fmt: skip
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
        _checkpoint.check_shardable(self, "save_sharded", _GATHER_INSTEAD)
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
        _checkpoint.check_shardable(self, "load_sharded", _GATHER_INSTEAD)
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
