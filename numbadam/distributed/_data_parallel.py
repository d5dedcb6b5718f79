"""Data-parallel Adam (Horovod-style): replicated state, averaged gradients."""

from __future__ import annotations

import time
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from .. import _backend, _dispatch
from .._accum import ACCUMULATOR
from .._backend import DenseWork, SparseWork
from .._flat import GradsAndVars
from ..adam import Adam
from .._types import IndexedSlices
from .._step import Label, Step
from . import _checkpoint
from ._collective import Deadline, check_agreement, check_timeout
from ._comm import Communicator, get_communicator
from ._embedding import ShardedEmbedding
from ._shards import rank_slot_dir

__all__ = ["DistributedAdam", "broadcast_variables"]


def _check_host(var: Any, label: Any) -> None:
    if _dispatch.is_device_array(var):
        raise TypeError(
            f"{label} is a CUDA array; numbadam.distributed works on NumPy arrays"
        )


def check_host_pairs(pairs: List[Tuple[Any, Any]]) -> List[Tuple[Any, Any]]:
    """Refuse CUDA arrays and ShardedEmbedding variables (before anything else)."""
    for i, (g, v) in enumerate(pairs):
        label = Label(v, i)
        if isinstance(v, ShardedEmbedding):
            raise TypeError(
                f"{label}: a ShardedEmbedding's rows live on different ranks; "
                "use ShardedAdam for it"
            )
        _check_host(v, label)
        if g is not None and not isinstance(g, IndexedSlices):
            _check_host(g, label)
    return pairs


def step_signature(step: Step) -> Tuple[Any, ...]:
    """The pairs of a step as the collectives see them, by position."""
    sig = [
        (
            getattr(w.label, "position", 0),
            "sparse" if sparse else "dense",
            tuple(w.var.shape),
            w.flat.dtype.name,
        )
        for sparse, w, _, _, _ in step.items
    ]
    for label in step.skipped:
        var = label.var
        sig.append((label.position, "none", tuple(var.shape), str(var.dtype)))
    sig.sort()
    return tuple(sig)


def average(vals: np.ndarray, size: int) -> np.ndarray:
    """``vals / size``: divided in the compute dtype, stored in ``vals``' dtype."""
    if size == 1:
        return vals
    cdt = _backend.compute_dtype(vals.dtype)
    return (vals.astype(cdt) / cdt.type(size)).astype(vals.dtype)


def allgather_slices(comm: Communicator, works: List[Any]) -> List[Tuple[Any, Any]]:
    """Every rank's IndexedSlices of each work item, in rank order, averaged.

    Collective: one ``Allgather`` of the counts, then an ``Allgatherv`` of the
    indices (int64) and of the values of each item. Returns ``(indices,
    values (k, width))`` per item; duplicates are kept.
    """
    counts = comm.allgather_counts(
        np.array([w.indices.shape[0] for w in works], np.int64)
    )
    out = []
    for j, w in enumerate(works):
        c = counts[:, j]
        idx = comm.allgatherv(w.indices.astype(np.int64, copy=False), c)
        vals = comm.allgatherv(w.values.reshape(-1), c * w.width)
        out.append((idx, average(vals, comm.size).reshape(-1, w.width)))
    return out


def _common_dtype(dtypes: Iterable[np.dtype]) -> np.dtype:
    # One buffer for every dense gradient: the widest compute dtype (float16 is
    # summed in float32, like its kernels compute).
    cdts = {_backend.compute_dtype(d) for d in dtypes}
    return (
        np.dtype(np.float64) if np.dtype(np.float64) in cdts else np.dtype(np.float32)
    )


def broadcast_variables(
    variables: Sequence[np.ndarray], root: int = 0, comm: Any = None
):
    """Overwrite every rank's ``variables`` with root's, in place (``Bcast``).

    Call once before training so that every rank starts from identical
    parameters (and, with ``opt.weights`` after ``opt.build(vars)`` on every
    rank, identical optimizer state).

    Parameters
    ----------
    variables : sequence of ndarray
        The same arrays (shape and dtype) on every rank, in the same order.
    root : int, default 0
    comm : optional
        See :func:`~numbadam.distributed.get_communicator`.

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam.distributed import broadcast_variables
    >>> w = np.ones(3)
    >>> broadcast_variables([w], comm="self")
    """
    c = get_communicator(comm)
    for i, var in enumerate(variables):
        if not isinstance(var, np.ndarray):
            raise TypeError(f"variable {i} is a {type(var).__name__}, not an ndarray")
        if var.flags.c_contiguous:
            c.bcast_(var.reshape(-1), root=root)
        else:
            tmp = np.ascontiguousarray(var)
            c.bcast_(tmp.reshape(-1), root=root)
            var[...] = tmp


#: What the sharded-checkpoint format's refusals point to.
_USE_INSTEAD = "use save()/load() or save_state_dir()/load_state_dir()"


class DistributedAdam(Adam):
    """Data-parallel :class:`~numbadam.Adam`: every rank holds all variables and
    all optimizer state, and applies the average of the ranks' gradients.

    Each :meth:`apply_gradients` is collective. Dense gradients are packed into
    one buffer and averaged with a single in-place ``Allreduce`` (sum, then
    divided by the number of ranks); each :class:`~numbadam.IndexedSlices` is
    exchanged with ``Allgatherv`` of its indices and values (rank order), its
    values divided by the number of ranks, and applied as IndexedSlices. Then
    the ordinary Adam step runs on every rank with the same averaged gradients,
    so after every step all ranks hold bit-identical variables and slots
    (given identical starting variables: see :func:`broadcast_variables`).

    With ``gradient_accumulation_steps=N`` every call averages its gradients
    over the ranks, as above, and accumulates the averages (the applying call
    steps with the mean of the cycle's averages, the mean over ranks and
    calls); the accumulators, like every slot, are the same on every rank.
    ``local_accumulation=True`` communicates on the applying call only: each
    rank accumulates its own gradients, and the applying call all-reduces
    every rank's cycle sum (accumulator plus this call's gradient) in one
    packed ``Allreduce`` and all-gathers the cycle's IndexedSlices, saving
    ``N - 1`` rounds of collectives per cycle (as PyTorch DDP's
    ``no_sync()``). The result equals the default's to float tolerance (the
    sums are taken in another order); mid-cycle the accumulators are each
    rank's own, so :meth:`get_weights` and the checkpoints refuse until the
    cycle is finished.
    ``use_ema`` keeps the averages of the variables as :class:`~numbadam.Adam`.
    With ``slot_dir=path`` (the same path on every rank) each rank keeps its
    slots as memory maps in a folder of its own inside it,
    ``rank-RRRRR-of-NNNNN``, which it creates. Checkpoints are written from
    one rank: :func:`numbadam.save_state_dir` on several ranks refuses every
    rank but 0 (``ValueError``, nothing written), since all ranks hold the
    same state.

    Parameters
    ----------
    learning_rate, beta_1, beta_2, epsilon, amsgrad, name, **kwargs
        As :class:`numbadam.Adam` (``sparse_mode``, ``clipnorm``, ``clipvalue``,
        ``decay``...; clipping applies to the averaged gradient).
    comm : Communicator, mpi4py communicator, "mpi", "self" or None
        See :func:`~numbadam.distributed.get_communicator`; ``None`` is the
        world of this launch (one process without MPI).
    timeout : float, optional
        Seconds a step's collectives may take; past that the job is aborted
        (``MPI_Abort``) with a message on standard error naming the step.
        ``None`` (the default): no deadline. Ranks must take the same number of
        steps: one that stops early leaves the others waiting in their next
        collective, which only a timeout ends.
    local_accumulation : bool, default False
        With ``gradient_accumulation_steps``: accumulate each rank's own
        gradients and communicate on the applying call only (see above). An
        execution setting, like ``timeout``: not part of :meth:`get_config`.

    Attributes
    ----------
    comm : Communicator
    last_comm_seconds : float
        Wall time spent in communication (packing included) by the last step.

    Notes
    -----
    The dense buffer has the widest compute dtype of the gradients (float64 if
    any variable is float64, else float32); the average is rounded to each
    variable's dtype. Every rank must pass the same variables, in the same
    order, with gradients of the same kinds (dense, IndexedSlices or ``None``):
    each step first compares a signature of its pairs (position, kind, shape,
    dtype) across the ranks, one small ``Allgather``, and raises the same
    ``ValueError`` on every rank when they differ, before any data moves or
    anything changes. Variables are NumPy arrays. The step is
    :class:`~numbadam.OptimizerV2`'s one pipeline with the averaging as its
    aggregate hook.

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam.distributed import DistributedAdam
    >>> w = np.zeros(2, np.float32)
    >>> opt = DistributedAdam(learning_rate=0.1, comm="self")
    >>> _ = opt.apply_gradients([(np.ones(2, np.float32), w)])
    >>> w.astype(float).round(3).tolist()
    [-0.1, -0.1]
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
        local_accumulation: bool = False,
        **kwargs: Any,
    ) -> None:
        if not isinstance(local_accumulation, (bool, np.bool_)):
            raise TypeError(
                f"local_accumulation must be a bool, got {local_accumulation!r}"
            )
        super().__init__(
            learning_rate, beta_1, beta_2, epsilon, amsgrad, name, **kwargs
        )
        if local_accumulation and self._accum_steps is None:
            raise ValueError(
                "local_accumulation=True needs gradient_accumulation_steps (an "
                "integer >= 2): it is how the calls of a cycle communicate"
            )
        self.local_accumulation = bool(local_accumulation)
        self._reduced = False  # (an applying call whose cycle is reduced here)
        self.comm: Communicator = get_communicator(comm)
        self.timeout = check_timeout(timeout)
        self._deadline = Deadline(self.comm, self.timeout, type(self).__name__)
        self.last_comm_seconds = 0.0
        self._tracked: Dict[int, Any] = {}  # variables with slots, first-seen order
        self._buf: Optional[np.ndarray] = None  # the Allreduce buffer
        if self._slot_dir is not None:  # this rank's own folder inside it
            owner = f"{type(self).__name__} {self._name!r}"
            self._slot_dir = rank_slot_dir(self._slot_dir, self.comm, owner)

    # -- the step: hooks of OptimizerV2's one pipeline ------------------------------

    def _prepare(self, grads_and_vars: Any) -> Optional[Step]:
        if type(grads_and_vars) is not GradsAndVars or self.comm.size > 1:
            # (a ParameterBuffer's one-pass step needs no averaging on one
            # process; on several, its pairs are averaged one by one)
            grads_and_vars = check_host_pairs(self._check_pairs(grads_and_vars))
        return super()._prepare(grads_and_vars)

    def _aggregate_gradients(self, step: Step) -> None:
        """The average over the ranks: one ``Allreduce`` of every dense gradient
        packed together, an ``Allgatherv`` per IndexedSlices (collective)."""
        comm = self.comm
        self.last_comm_seconds = 0.0
        self._reduced = False
        if comm.size == 1:  # the average of one gradient is itself
            return
        n = self._accum_steps
        local = self.local_accumulation
        if local and step.iteration % n != n - 1:
            # an accumulating call of local accumulation: this rank's own
            # gradients (the applying call's signature check covers the
            # cycle, whose calls each rank checks against its first)
            return
        t0 = time.perf_counter()
        self._deadline.arm(f"step {step.iteration + 1}'s collectives")
        try:
            check_agreement(comm, step_signature(step), type(self).__name__)
            self._average(step, cycle=local)
        finally:
            self._deadline.disarm()
        self.last_comm_seconds = time.perf_counter() - t0

    def _average(self, step: Step, cycle: bool = False) -> None:
        """Each item's gradient averaged over the ranks: the dense ones packed
        into one buffer and all-reduced, each IndexedSlices all-gathered in
        rank order (values divided by the ranks).

        With ``cycle`` (the applying call under ``local_accumulation``) the
        whole cycle instead: a dense item's sum is this rank's accumulator
        plus its gradient, divided by ranks x N (the mean the step takes);
        an IndexedSlices item brings this rank's pending slices of the cycle
        before this call's. Nothing of the optimizer's state is written.
        """
        comm, n = self.comm, self._accum_steps if cycle else 1
        items = step.items
        dense = [k for k, it in enumerate(items) if not it[0]]
        sparse = [k for k, it in enumerate(items) if it[0]]
        if dense:
            total = sum(items[k][1].grad.size for k in dense)
            dt = _common_dtype(items[k][1].grad.dtype for k in dense)
            if self._buf is None or self._buf.dtype != dt or self._buf.size < total:
                self._buf = np.empty(total, dt)  # reused: no page faults per step
            buf = self._buf[:total]
            off = 0
            for k in dense:
                g = items[k][1].grad
                part = buf[off : off + g.size]
                part[...] = g
                acc = self._cycle_sum(items[k]) if cycle else None
                if acc is not None:
                    np.add(part, acc.reshape(-1), out=part)
                off += g.size
            comm.allreduce_sum_(buf)
            np.divide(buf, buf.dtype.type(comm.size * n), out=buf)
            off = 0
            for k in dense:
                sparse_, w, backend, var, holder = items[k]
                size = w.grad.size
                g = buf[off : off + size].astype(w.flat.dtype, copy=False)
                off += size
                items[k] = (sparse_, DenseWork(w.var, w.flat, g, w.staged, w.label),
                            backend, var, holder)  # fmt: skip
        if sparse:
            works = [
                self._cycle_slices(items[k]) if cycle else items[k][1] for k in sparse
            ]
            for k, (idx, vals) in zip(sparse, allgather_slices(comm, works)):
                sparse_, w, backend, var, holder = items[k]
                work = SparseWork(w.var, w.flat, idx, vals, w.width, w.staged, w.label)
                items[k] = (sparse_, work, backend, var, holder)
        self._reduced = cycle

    # -- local accumulation: the applying call reduces the whole cycle --------------

    def _cycle_slices(self, item: Any) -> SparseWork:
        # an IndexedSlices item's slices of this rank's cycle, concatenated
        # in call order (before the all-gather of the applying call)
        w = item[1]
        idx, vals = self._cycle_rows(item)
        idx = np.concatenate([np.asarray(i, np.int64) for i in idx])
        return SparseWork(w.var, w.flat, idx, np.concatenate(vals), w.width,
                          w.staged, w.label)  # fmt: skip

    def _cycle_sum(self, item: Any) -> Optional[np.ndarray]:
        # this rank's accumulator of a dense item when it holds the cycle's
        # partial sum, else None (zero)
        entry = self._entry(item[3])
        acc = None if entry is None else entry.slots.get(ACCUMULATOR)
        return acc if acc is not None and self._live(acc) else None

    def _acc_arg(self, slots: Dict[str, Any]) -> Any:
        return None if self._reduced else super()._acc_arg(slots)

    def _acc_sumsq(self, item: Any, clipvalue: Optional[float]) -> float:
        if self._reduced and not item[0]:  # (the gradient is the mean)
            return item[2].sumsq(item[1].grad, clipvalue)
        return super()._acc_sumsq(item, clipvalue)

    def _cycle_rows(self, item: Any) -> Tuple[List[Any], List[Any]]:
        if self._reduced:  # (the all-gathered slices are the whole cycle's)
            return [item[1].indices], [item[1].values]
        return super()._cycle_rows(item)

    def _end_cycle(self) -> None:
        super()._end_cycle()
        self._reduced = False

    def _check_no_pending(self, what: str) -> None:
        n = self._accum_steps
        phase = int(self._counter()) % n if n is not None else 0
        if self.local_accumulation and self.comm.size > 1 and phase:
            raise ValueError(
                f"{what}: with local_accumulation each rank holds its own "
                f"partial sums until the cycle's applying call (this is call "
                f"{phase} of {n}); finish the cycle first"
            )
        super()._check_no_pending(what)

    def _finish(self, step: Step) -> None:
        super()._finish(step)
        for _, _, _, var, holder in step.items:
            # (var is None for a ParameterBuffer's one pass over its flat arrays)
            self._track([var] if var is not None else holder.buffer.params)

    # -- checkpoints ---------------------------------------------------------------

    def _check_state_dir_save(self) -> None:
        # the state is replicated: one writer, rank 0, rather than every rank
        # into one folder (whose saves would remove each other's files)
        if self.comm.size > 1 and self.comm.rank != 0:
            raise ValueError(
                f"save_state_dir of a {type(self).__name__} on {self.comm.size} "
                f"ranks is for rank 0 only (this is rank {self.comm.rank}): the "
                "state is the same on every rank; call it under "
                "`if opt.comm.rank == 0:`. Nothing was written"
            )

    def _track(self, var_list) -> None:
        for var in var_list:
            self._tracked.setdefault(id(var), var)  # holding var keeps its id

    def build(self, var_list: Iterable[Any]) -> None:
        var_list = list(var_list)
        super().build(var_list)
        self._track(var_list)

    build.__doc__ = Adam.build.__doc__

    def _entries(self):
        # (slot name, variable) of every slot, in weights order, from the
        # public slot API only.
        owner = {}
        for var in self._tracked.values():
            for sname in self.get_slot_names():
                try:
                    owner[id(self.get_slot(var, sname))] = (sname, var)
                except KeyError:
                    pass
        it = self.iterations
        return [owner[id(w)] for w in self.weights if w is not it]

    def save_sharded(self, path: str) -> None:
        """Save the state in the sharded-checkpoint format (collective; rank 0 writes).

        The state is replicated, so one shard holds all of it. Load it with
        :meth:`load_sharded`, or into a :class:`ShardedAdam` at any number of
        ranks.

        Raises
        ------
        ValueError
            With ``second_moment="row"`` (the format holds slots shaped like
            their variables) or ``gradient_accumulation_steps`` (it holds no
            accumulators). Use :meth:`save` or :meth:`save_state_dir`.
        """
        _checkpoint.check_shardable(self, "save_sharded", _USE_INSTEAD)
        entries = self._entries()
        variables, weights, index = [], [], {}
        for sname, var in entries:
            key = self._var_key(var)
            if key not in index:
                index[key] = len(variables)
                variables.append(
                    {
                        "shape": list(var.shape),
                        "dtype": var.dtype.name,
                        "layout": "flat",
                    }
                )
            weights.append({"name": sname, "variable": index[key]})
        it = self.iterations
        arrays = [
            np.ascontiguousarray(w).reshape(-1) for w in self.weights if w is not it
        ]
        _checkpoint.write(
            path,
            self.comm,
            {"kind": type(self).__name__, "config": self.get_config()},
            variables,
            weights,
            [(0, int(np.prod(v["shape"], dtype=np.int64))) for v in variables],
            arrays,
            int(self.iterations),
            [0],
        )

    def load_sharded(self, path: str, var_list: Optional[Sequence[Any]] = None) -> None:
        """Load a sharded checkpoint saved at any number of ranks (no communication).

        Parameters
        ----------
        path : str
        var_list : sequence of ndarray, optional
            The variables, in the order of the saved ones; when given, their
            slots are created first (:meth:`build`). Otherwise the optimizer
            must already have exactly the saved slots.

        Raises
        ------
        ValueError
            With ``second_moment="row"`` or ``gradient_accumulation_steps``
            (see :meth:`save_sharded`).
        """
        _checkpoint.check_shardable(self, "load_sharded", _USE_INSTEAD)
        if var_list is not None:
            self.build(var_list)
        entries = self._entries()
        with _checkpoint.Reader(path) as r:
            order, seen = [], {}
            for _, var in entries:
                key = self._var_key(var)
                if key not in seen:
                    seen[key] = len(order)
                    order.append(var)
            r.check_variables([(tuple(v.shape), v.dtype) for v in order])
            saved = [(w["name"], w["variable"]) for w in r.weights]
            mine = [(s, seen[self._var_key(v)]) for s, v in entries]
            if saved != mine:
                raise ValueError(
                    f"checkpoint {path} has slots {saved}, the optimizer {mine}"
                )
            values = [np.asarray(r.iterations, np.int64)]
            for k, (_, var) in enumerate(entries):
                values.append(r.read(k, 0, var.size).reshape(var.shape))
        self.set_weights(values)
