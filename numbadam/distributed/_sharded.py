"""ZeRO stage 1 Adam: replicated parameters, optimizer state sharded over ranks."""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .. import _config, _dispatch
from .._backend import DenseWork, SparseWork, global_norm_scalars, transform_scalars
from .._step import Label, Step
from .._types import IndexedSlices
from ..adam import Adam
from ._collective import Deadline, check_timeout
from ._comm import Communicator, get_communicator
from ._data_parallel import (
    _check_host,
    _common_dtype,
    allgather_slices,
    average,
    check_agreement,
    step_signature,
)
from ._embedding import ShardedEmbedding
from ._sharded_state import ShardedStateMixin
from ._shards import Part, Shard, rank_slot_dir

__all__ = ["ShardedAdam", "BUCKET_MIN_ELEMENTS"]

#: Variables with at least this many elements get their own Reduce_scatter and
#: Allgatherv, straight from the gradient and into the variable (no copies);
#: smaller ones are packed together into one buffer per collective.
BUCKET_MIN_ELEMENTS = 1 << 16


class ShardedStep(Step):
    """A :class:`~numbadam._step.Step` of ShardedAdam.

    ``sources`` is set by the aggregate hook for the transform hook: the items
    as they were before the slicing (one per pair, the whole averaged
    gradient) and, per sliced item, ``(index of its source, whether its
    gradient is a partial slice whose sum of squares must be all-reduced)``.
    """

    __slots__ = ("sources",)


class ShardedAdam(ShardedStateMixin, Adam):
    """ZeRO stage 1 :class:`~numbadam.Adam`: parameters are replicated, the
    optimizer state is split over the ranks.

    Every variable is seen flattened and cut into ``size`` contiguous, near-equal
    slices (:func:`~numbadam.distributed.partition`; sizes need not divide).
    Rank ``r`` keeps ``m``, ``v`` (``vhat``) only for its slice ``r`` (1/N of the
    unsharded optimizer's state). Each :meth:`apply_gradients` is collective:

    1. dense gradients, packed rank-major into one buffer, are reduce-scattered
       (``Reduce_scatter``, uneven counts) and divided by the number of ranks,
       so each rank gets the average gradient of its slices;
    2. each rank runs the same fused Adam kernels on its slices;
    3. the updated slices are all-gathered (``Allgatherv``) into every rank's
       variables.

    :class:`~numbadam.IndexedSlices` gradients of ordinary variables are
    all-gathered (indices and values, rank order) and each rank applies the part
    falling in its slice. Variables that are a
    :class:`~numbadam.distributed.ShardedEmbedding` (rows *and* state sharded)
    take IndexedSlices of global row ids: the rows are routed to their owners
    with ``Alltoallv`` and each owner applies the sparse step to its block once
    per step (``m``, ``v`` decay on every row, as in TensorFlow).

    With ``gradient_accumulation_steps`` each rank accumulates what it steps:
    its slices of the averaged dense gradients, and the IndexedSlices rows of
    its slices, kept until the applying call and then stepped with their
    mean rows (as :class:`~numbadam.Adam` does).

    Results equal the single-process optimizer's on the averaged gradients to
    float tolerance (the average is a sum over ranks divided by their number)
    and are bit-identical across ranks.

    Parameters
    ----------
    learning_rate, beta_1, beta_2, epsilon, amsgrad, name, **kwargs
        As :class:`numbadam.Adam` (``sparse_mode``, ``clipnorm``, ``clipvalue``,
        ``decay``, ``weight_decay``...). ``slot_dir``: a folder (the same path
        on every rank, shared or not) in which each rank keeps its slices of
        the slots as ``.npy`` memory maps, in a folder of its own that it
        creates, ``rank-RRRRR-of-NNNNN`` (see ``docs/state-on-disk.md``).
    comm : Communicator, mpi4py communicator, "mpi", "self" or None
        See :func:`~numbadam.distributed.get_communicator`.
    timeout : float, optional
        Seconds each of a step's collective phases may take before the job is
        aborted with a message naming the step (see
        :class:`DistributedAdam`); ``None``, the default, waits forever.

    Attributes
    ----------
    comm : Communicator
    last_comm_seconds : float
        Wall time in communication (packing included) during the last step.

    Notes
    -----
    ``clipnorm`` uses the norm of the *whole* averaged gradient of a variable
    (partial sums of squares of every slice, combined by one ``Allreduce`` per
    step), not of the slice; the kernels then apply TensorFlow's
    ``(clip(g, -clipvalue, clipvalue) * clipnorm) / max(norm, clipnorm)`` in
    their one pass, as on one process. The step is
    :class:`~numbadam.OptimizerV2`'s one pipeline: the collectives are its
    aggregate, transform and finish hooks, the Adam kernels its apply hooks. A
    slice of a table that starts or ends inside a row is stepped as up to three
    small tables (partial row, whole rows, partial row), so the TF and lazy
    rules are the kernels' own; under ``second_moment="row"`` a variable of
    two or more dimensions is cut at rows instead (whole rows per rank, one
    ``v`` each). Variables must be C-contiguous NumPy arrays, the same on every
    rank, passed in the same order with gradients of the same kinds (checked
    at every step, as in :class:`DistributedAdam`, before any data moves).

    Besides the state, a rank keeps communication buffers from step to step
    (no page faults per step): the averaged gradient of its slices (1/N of the
    parameters) and the packing buffers of the variables smaller than
    :data:`BUCKET_MIN_ELEMENTS`; :meth:`state_nbytes` counts the state only.

    :attr:`weights` and :meth:`get_slot` give this rank's slices (1-D);
    :meth:`get_weights` gathers the full state in Keras' order (collective) and
    :meth:`set_weights` takes a full list; :meth:`save_sharded` /
    :meth:`load_sharded` write and read one file per rank and re-slice at load.

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam.distributed import ShardedAdam
    >>> w = np.zeros(3, np.float32)
    >>> opt = ShardedAdam(learning_rate=0.1, comm="self")
    >>> _ = opt.apply_gradients([(np.ones(3, np.float32), w)])
    >>> w.astype(float).round(3).tolist(), opt.get_slot(w, "m").shape
    ([-0.1, -0.1, -0.1], (3,))
    """

    _cached_launches = False  # (the aggregate hook needs every pair's work)

    def __init__(
        self,
        learning_rate: Any = 0.001,
        beta_1: Any = 0.9,
        beta_2: Any = 0.999,
        epsilon: Any = 1e-7,
        amsgrad: bool = False,
        name: str = "Adam",
        comm: Any = None,
        timeout: Optional[float] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            learning_rate, beta_1, beta_2, epsilon, amsgrad, name, **kwargs
        )
        self.comm: Communicator = get_communicator(comm)
        self.timeout = check_timeout(timeout)
        self._deadline = Deadline(self.comm, self.timeout, type(self).__name__)
        self.last_comm_seconds = 0.0
        self._ws: Dict[Any, np.ndarray] = {}  # communication buffers
        if self._slot_dir is not None:  # this rank's own folder inside it
            owner = f"{type(self).__name__} {self._name!r}"
            self._slot_dir = rank_slot_dir(self._slot_dir, self.comm, owner)

    # -- variables and slots -------------------------------------------------------

    @property
    def _entries(self) -> List[Tuple[str, Shard]]:
        # (slot name, shard) of every slot: the weights after iterations
        return self._table.order  # type: ignore[return-value]

    @property
    def _order(self) -> List[Shard]:
        # the variables, in slot-creation order
        return self._table.entries()  # type: ignore[return-value]

    def _key(self, var: Any) -> Any:
        if isinstance(var, ShardedEmbedding):
            return ("emb", id(var))
        return self._var_key(var)

    def _shard_for(self, var: Any, label: str) -> Shard:
        key = self._key(var)
        sh = self._table.entry(var, key)
        if sh is not None:
            return sh
        if isinstance(var, ShardedEmbedding):
            if var.comm.size != self.comm.size or var.comm.rank != self.comm.rank:
                raise ValueError(
                    f"{label} is sharded over {var.comm.size} ranks, the optimizer's "
                    f"communicator has {self.comm.size}"
                )
        else:
            _check_host(var, label)
            _dispatch.backend_for(var).check_variable(var, label)
            if not var.flags.c_contiguous:
                raise ValueError(
                    f"{label} is not C-contiguous; ShardedAdam updates contiguous "
                    "slices of each variable and all-gathers them in place"
                )
            # (second_moment="row": a 2-D+ variable is cut at its rows)
            if self._row_slots and var.ndim >= 2:
                return Shard(key, var, self.comm, label, rows=True)
        return Shard(key, var, self.comm, label)

    # -- the step: hooks of OptimizerV2's one pipeline ------------------------------
    #
    # prepare: every pair validated locally (no communication); aggregate: the
    # agreement check, then Reduce_scatter / Allgatherv / Alltoallv turn each
    # item into the work of this rank's slice; transform: clipnorm's norm of the
    # whole gradient from partial sums (one Allreduce); the Adam kernels run on
    # the slices; finish: iterations, then the Allgatherv of the variables.

    def _prepare(self, grads_and_vars: Any) -> Optional[Step]:
        pairs = self._check_pairs(grads_and_vars)
        if not pairs:
            return None
        _config.check()
        items, skipped, seen = [], [], {}
        need = self._iterations is None or not self._hypers_created
        for i, (g, v) in enumerate(pairs):
            label = Label(v, i)
            sh = self._shard_for(v, label)
            if sh.key in seen:
                raise ValueError(
                    f"{label} appears twice in grads_and_vars (also at position "
                    f"{seen[sh.key]}); sum its gradients first"
                )
            seen[sh.key] = i
            if g is None:
                skipped.append(label)
                continue
            need = need or self._table.entry(v, sh.key) is not sh
            backend = _dispatch.backend_for(sh.view)
            if sh.emb is not None:
                idx, vals = sh.emb.prepare_gradient(g, label)
                table = sh.emb.local
                work = SparseWork(sh.emb, table.reshape(-1), idx, vals,
                                  sh.shape[1], False, label)  # fmt: skip
                items.append((True, work, backend, v, sh))
            elif isinstance(g, IndexedSlices):
                items.append((True, backend.prepare_sparse(v, g, label), backend, v, sh))
            else:
                _check_host(g, label)
                items.append((False, backend.prepare_dense(v, g, label), backend, v, sh))
        if not items:
            raise ValueError(f"No gradients provided for any variable: {skipped}.")
        self._table.check_variables(items)  # (overlapping variables, slots)
        # var_list: the shards of the step (every rank creates their slots and
        # joins their all-gathers, even where its own slice is empty)
        return ShardedStep(
            self._step_count(), items, [it[4] for it in items], need, skipped
        )

    def _aggregate_gradients(self, step: Step) -> None:
        """Each item becomes the averaged gradient of this rank's slice (collective)."""
        t0 = time.perf_counter()
        self._deadline.arm(f"step {step.iteration + 1}'s gradient collectives")
        try:
            check_agreement(self.comm, step_signature(step), type(self).__name__)
            self._scatter(step)
        finally:
            self._deadline.disarm()
        self.last_comm_seconds = time.perf_counter() - t0

    def _scatter(self, step: Step) -> None:
        comm, size = self.comm, self.comm.size
        out: List[Any] = []
        # the clipnorm norm of each output item: (source item, partial sum
        # over the ranks?) -- filled here, used by _transform_gradients
        norms: List[Tuple[int, bool]] = []
        dense = [it for it in step.items if not it[0]]
        grads = self._reduce_scatter(dense) if size > 1 else {}
        rows_all = [it for it in step.items if it[0] and it[4].emb is None]
        gathered = self._gather_rows(rows_all) if size > 1 else {}
        for k, (sparse, w, backend, var, sh) in enumerate(step.items):
            if not sparse:
                g = grads.get(sh.key, w.grad)  # (one process: the whole gradient)
                work = DenseWork(var, sh.view, g, False, w.label)
                out.append((False, work, backend, var, sh))
                norms.append((k, True))
            elif sh.emb is not None:
                e = sh.emb
                order, sc, rc = e._route(w.indices)
                width = sh.shape[1]
                r_idx = comm.alltoallv(w.indices[order], sc, rc)
                r_vals = comm.alltoallv(
                    np.ascontiguousarray(w.values[order]).reshape(-1),
                    sc * width, rc * width,
                )  # fmt: skip
                vals = average(r_vals, size).reshape(-1, width)
                work = SparseWork(e.local, w.flat, r_idx - e.row_start, vals,
                                  width, False, w.label)  # fmt: skip
                out.append((True, work, backend, var, sh))
                norms.append((k, True))
            else:
                idx, vals = gathered.get(sh.key, (w.indices, w.values))
                for part, work in self._slice_rows(sh, idx, vals, w.label):
                    out.append((True, work, backend, var, part))
                    norms.append((k, False))
                step.items[k] = (True, SparseWork(var, w.flat, idx, vals, w.width,
                                                  False, w.label), backend, var, sh)
        step.sources = (list(step.items), norms)
        step.items = out

    def _reduce_scatter(self, dense: List[Any]) -> Dict[Any, np.ndarray]:
        # Reduce_scatter, straight from the gradient for large float32/64
        # variables, one rank-major packed buffer for the rest.
        comm, size = self.comm, self.comm.size
        grads: Dict[Any, np.ndarray] = {}
        small = []
        for _, w, _, _, sh in dense:
            g = w.grad
            if g.size < BUCKET_MIN_ELEMENTS or g.dtype.char == "e":
                small.append((sh, g))  # float16 is summed in the float32 buffer
            else:
                out = self._workspace(("rs", sh.key), sh.hi - sh.lo, g.dtype)
                mine = comm.reduce_scatter_sum(g, sh.counts, out=out)
                np.divide(mine, mine.dtype.type(size), out=mine)
                grads[sh.key] = mine
        if small:
            cd = _common_dtype(g.dtype for _, g in small)
            counts = sum((sh.counts for sh, _ in small), np.zeros(size, np.int64))
            send = self._workspace("pack", int(counts.sum()), cd)
            off = 0
            for r in range(size):
                for sh, g in small:
                    a, b = int(sh.bounds[r]), int(sh.bounds[r + 1])
                    send[off : off + b - a] = g[a:b]
                    off += b - a
            mine = comm.reduce_scatter_sum(
                send, counts, out=self._workspace("packed", int(counts[comm.rank]), cd)
            )
            np.divide(mine, mine.dtype.type(size), out=mine)
            off = 0
            for sh, _ in small:
                n = sh.hi - sh.lo
                grads[sh.key] = mine[off : off + n].astype(sh.dtype, copy=False)
                off += n
        return grads

    def _gather_rows(self, rows_all: List[Any]) -> Dict[Any, Tuple[Any, Any]]:
        # IndexedSlices of replicated variables: every rank holds the whole
        # averaged gradient (rank order, duplicates kept)
        gathered = allgather_slices(self.comm, [it[1] for it in rows_all])
        return {it[4].key: g for it, g in zip(rows_all, gathered)}

    def _slice_rows(self, sh: Shard, idx: np.ndarray, vals: np.ndarray, label: Any):
        """The sparse works of this rank's slice ``[lo, hi)`` of a table.

        The slice need not start or end on a row (it does for a row-aligned
        shard): it is cut into a partial first row, whole rows, and a partial
        last row, each a table of its own
        for the sparse kernels (which then sum duplicates and apply the TF or
        the lazy rule, clipping included, exactly as on the whole table).
        """
        width = vals.shape[1]
        lo, hi = sh.lo, sh.hi
        flat = sh.view
        pieces = []  # (first row, rows, first column, columns, offset in slice)
        r0, c0 = divmod(lo, width)
        r1, c1 = divmod(hi, width)
        if r0 == r1:  # within one row
            if hi > lo:
                pieces.append((r0, 1, c0, hi - lo, 0))
        else:
            off = 0
            if c0:
                pieces.append((r0, 1, c0, width - c0, 0))
                off = width - c0
                r0 += 1
            if r1 > r0:
                pieces.append((r0, r1 - r0, 0, width, off))
                off += (r1 - r0) * width
            if c1:
                pieces.append((r1, 1, 0, c1, off))
        for row, nrows, col, ncols, off in pieces:
            sel = (idx >= row) & (idx < row + nrows)
            v = vals[sel]
            if ncols != width:
                v = v[:, col : col + ncols]
            n = nrows * ncols
            # (a row-aligned shard is one piece: its own slots, row-wise v too)
            part = sh if sh.row_bounds is not None else Part(sh, off, off + n)
            work = SparseWork(flat[off : off + n].reshape(nrows, ncols),
                              flat[off : off + n], idx[sel] - row,
                              np.ascontiguousarray(v), ncols, False, label)  # fmt: skip
            yield part, work

    def _transform_gradients(self, step: Step) -> None:
        """clipvalue, and clipnorm (global_clipnorm) by the norm of each
        variable's (all variables') whole averaged gradient: partial sums of
        squares of the slices, one Allreduce."""
        cv, cn, gcn = self._clipvalue, self._clipnorm, self._global_clipnorm
        originals, norms = step.sources
        if cn is None and gcn is None:
            step.transforms = [
                transform_scalars(it[1].flat.dtype, cv, None, None) for it in step.items
            ]
            return
        sums = np.zeros(len(originals), np.float64)
        partial = np.zeros(len(originals), bool)
        if self._acc_apply:
            # the norm of the cycle's mean gradient: every rank's slices of
            # it (a replicated table's parts too), added up by the Allreduce
            partial[:] = True
            for it, (k, _) in zip(step.items, norms):
                sums[k] += self._acc_sumsq(it, cv)
        for it, (k, is_partial) in zip(step.items, norms):
            sparse, w, backend = it[0], it[1], it[2]
            if is_partial and not self._acc_apply:
                sums[k] = backend.sumsq(w.values if sparse else w.grad, cv)
                partial[k] = True
        if self.comm.size > 1 and partial.any():
            self._deadline.arm(f"step {step.iteration + 1}'s clipnorm Allreduce")
            try:
                self.comm.allreduce_sum_(sums)
            finally:
                self._deadline.disarm()
        for k, (sparse, w, backend, _, _) in enumerate(originals):
            if sparse and not partial[k]:  # the whole gradient on every rank
                sums[k] = backend.sumsq(w.values, cv)
        if gcn is not None:  # all variables' norms together, in pair order
            total = 0.0
            for x in sums.tolist():
                total += x
            step.transforms = [
                global_norm_scalars(it[1].flat.dtype, cv, gcn, total)
                for it in step.items
            ]
            return
        step.transforms = [
            transform_scalars(it[1].flat.dtype, cv, cn, sums[k])
            for it, (k, _) in zip(step.items, norms)
        ]

    def _create_step_weights(self, step: Step) -> None:
        self._create_shard_slots(step.var_list)

    # -- gradient accumulation: the hooks of numbadam._accum ------------------------
    #
    # The aggregate hook runs before the accumulation, so a cycle accumulates
    # what this rank steps: its slices of the averaged dense gradients, the
    # rows routed to its block of a ShardedEmbedding, and the parts of its
    # slice of a replicated table (each a small table, keyed by its offset).

    def _member_key(self, item: Any) -> Any:
        holder = item[4]
        return holder.shard.key if isinstance(holder, Part) else holder.key

    def _pending_key(self, item: Any) -> Any:
        holder = item[4]
        if isinstance(holder, Part):
            return (holder.shard.key, holder.a)
        return holder.key

    def _mean_item(self, item: Any, uniq: np.ndarray, mean: np.ndarray) -> Any:
        # the mean rows in the item's own table (a part of a slice, or the
        # block of an embedding table), not the whole variable
        sparse, w, backend, var, holder = item
        mean = np.ascontiguousarray(mean.reshape(-1, w.width))
        work = SparseWork(w.var, w.flat, uniq, mean, w.width, False, w.label)
        return (True, work, backend, var, holder)

    def _finish(self, step: Step) -> None:
        super()._finish(step)
        t0 = time.perf_counter()
        self._deadline.arm(f"step {step.iteration + 1}'s Allgatherv of the variables")
        try:
            self._allgather_params([sh for sh in step.var_list if sh.emb is None])
        finally:
            self._deadline.disarm()
        self.last_comm_seconds += time.perf_counter() - t0

    def _workspace(self, name: Any, n: int, dtype: Any) -> np.ndarray:
        # Communication buffers reused from step to step (no page faults).
        buf = self._ws.get(name)
        if buf is None or buf.dtype != dtype or buf.size < n:
            buf = self._ws[name] = np.empty(n, dtype)
        return buf[:n]

    def _allgather_params(self, shards: List[Shard]) -> None:
        comm = self.comm
        if not shards or comm.size == 1:
            return
        # Large variables in place, each with its own Allgatherv (no copies)...
        small = []
        for sh in shards:
            if sh.size < BUCKET_MIN_ELEMENTS:
                small.append(sh)
            else:
                comm.allgatherv(None, sh.counts, out=sh.var.reshape(-1))
        if not small:
            return
        # ... the small ones, maybe of several dtypes, in one Allgatherv of bytes.
        itemsize = [sh.dtype.itemsize for sh in small]
        counts = sum(
            (sh.counts * s for sh, s in zip(small, itemsize)),
            np.zeros(comm.size, np.int64),
        )
        send = self._workspace("send8", int(counts[comm.rank]), np.uint8)
        off = 0
        for sh in small:
            b = sh.view.view(np.uint8)
            send[off : off + b.size] = b
            off += b.size
        recv = comm.allgatherv(
            send, counts, out=self._workspace("recv8", int(counts.sum()), np.uint8)
        )
        off = 0
        for r in range(comm.size):
            for sh, s in zip(small, itemsize):
                a, b = int(sh.bounds[r]) * s, int(sh.bounds[r + 1]) * s
                if r != comm.rank:
                    sh.var.reshape(-1).view(np.uint8)[a:b] = recv[off : off + b - a]
                off += b - a
