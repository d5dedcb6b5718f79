"""Gradient accumulation (Keras 3's ``gradient_accumulation_steps``, #13).

A mixin of :class:`numbadam.OptimizerV2`. With ``N = gradient_accumulation_steps``
the gradients of ``N`` consecutive :meth:`~numbadam.OptimizerV2.apply_gradients`
calls form one *cycle*: calls ``1 .. N-1`` only accumulate them, call ``N``
steps with their mean (Keras 3's ``(g + acc) / N``, then clipping, weight
decay and the Adam update). The counter of calls (``weights[0]``, Keras 3's
``_iterations``, the ``iteration`` of a ``.weights.h5`` file) decides where a
call stands: its *phase* is ``calls % N``, its *cycle* ``calls // N``; the
public ``iterations`` is the number of updates, ``calls // N``.

State is never ambiguous:

- Dense gradients add into the slot ``"accumulator"`` (the variable's shape and
  dtype). The first call of a cycle writes ``acc = 0 + g`` instead of adding,
  so what a finished cycle left there is overwritten and no pass ever zeroes
  it; an accumulator is *live* only when the phase is not 0 and its variable
  is in the current cycle (``_acc_marks``), and :meth:`get_weights` and the
  checkpoints report a non-live one as zeros, as Keras (which zeroes them)
  would hold it.
- IndexedSlices gradients are kept as owned copies (``_pending``, from the
  backend's ``keep_slices``: host indices, values on the variable's device),
  in call order; the applying call's ``mean_rows`` (the backend's) sums the
  rows of each index in that order, starting from zero (the order of
  :func:`numbadam.kernels.cpu.sum_duplicate_rows_cpu`), divides by ``N``, and
  one sparse step takes the unique rows. A table is never densified, and a
  CUDA table's values never leave the device.
  While slices are pending, :meth:`get_weights` and the checkpoints refuse
  (finish the cycle first).
- Every call of a cycle must bring gradients for the same variables as its
  first call, each of the same kind (dense or IndexedSlices); otherwise
  ``ValueError`` and nothing changes.
"""

from __future__ import annotations

import logging
import numbers
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import _dispatch
from ._state import StateMixin
from ._types import IndexedSlices

__all__ = [
    "AccumulationMixin",
    "ACCUMULATOR",
    "check_accumulation_steps",
    "check_cycle_start",
]

#: The slot of a variable's accumulated dense gradients.
ACCUMULATOR = "accumulator"


def check_accumulation_steps(value: Any) -> Optional[int]:
    """``value`` as an int >= 2, or ``None``; ``ValueError`` for anything else.

    Examples
    --------
    >>> check_accumulation_steps(4), check_accumulation_steps(None)
    (4, None)
    """
    if value is None:
        return None
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, numbers.Integral)
        or value < 2
    ):
        raise ValueError(
            "gradient_accumulation_steps must be None or an integer >= 2, "
            f"got {value!r}"
        )
    return int(value)


def check_cycle_start(calls: int, steps: int, accumulators: Any) -> None:
    """Refuse weights whose counter of calls is at the start of a cycle while
    an accumulator is not zero (``accumulators``: ``(index, value)`` pairs)."""
    if calls % steps:
        return
    for j, w in accumulators:
        w = np.asarray(w)
        if w.dtype.kind in "iuf" and np.any(w != 0):
            raise ValueError(
                f"Optimizer weight {j} is a gradient accumulator and is not "
                f"zero, but the counter of calls ({calls}) is at the start of "
                f"a cycle of {steps}: the weights disagree"
            )


class AccumulationMixin:
    """``gradient_accumulation_steps``: the cycle state and its checks."""

    _accum_steps: Optional[int] = None
    #: True while an applying call runs (read by the step hooks).
    _acc_apply = False

    def _init_accumulation(self, steps: Any) -> None:
        self._accum_steps = check_accumulation_steps(steps)
        if self._accum_steps is None:
            return
        if not getattr(self, "_accumulation_supported", True):
            raise ValueError(
                f"{type(self).__name__} does not support "
                "gradient_accumulation_steps yet"
            )
        self._cached_launches = False  # (the general path: one accumulator per pair)
        self._reset_cycle()

    def _reset_cycle(self, restored: bool = False) -> None:
        # member key -> "dense" / "sparse" of the current cycle; None: not known
        # (after set_weights mid-cycle, the next call decides)
        self._modes: Optional[Dict[Any, str]] = None
        self._pending: Dict[Any, list] = {}  # member key -> [(indices, values)]
        # id(accumulator array) -> the cycle whose sum it holds
        self._acc_marks: Dict[int, int] = {}
        if restored:
            cycle = int(self._counter()) // self._accum_steps
            for name, entry in self._table.order:
                if name == ACCUMULATOR:
                    self._acc_marks[id(entry.slots[name])] = cycle

    # -- the counter and ``iterations`` ----------------------------------------

    def _counter(self) -> np.ndarray:
        """The live 0-d int64 counter of calls (``weights[0]``; with no
        accumulation it is ``iterations``): the seam checkpoints and
        numbadam.keras3 identify the counter by."""
        return StateMixin.iterations.fget(self)

    @property
    def iterations(self) -> np.ndarray:
        """The number of updates: a 0-d int64 array.

        Without accumulation it is the live counter (``weights[0]``), updated
        in place. With ``gradient_accumulation_steps = N`` it is Keras 3's
        ``iterations``, ``calls // N``, a new array at each access, while
        ``weights[0]`` (and :meth:`apply_gradients`' return value) counts
        calls. Setting it to ``k`` sets the counter to ``k * N``: the start of
        a cycle, whose partial sums are dropped.

        Examples
        --------
        >>> import numpy as np
        >>> import numbadam
        >>> opt = numbadam.Adam(0.1, gradient_accumulation_steps=2)
        >>> w = np.zeros(2, np.float32)
        >>> calls = [int(opt.apply_gradients([(np.ones(2, np.float32), w)]))
        ...          for _ in range(3)]
        >>> calls, int(opt.iterations), w.astype(float).round(4).tolist()
        ([1, 2, 3], 1, [-0.1, -0.1])
        >>> opt.get_weights()[1].tolist()  # the accumulator of the new cycle
        [1.0, 1.0]
        """
        counter = self._counter()
        n = self._accum_steps
        if n is None:
            return counter
        return np.array(int(counter) // n, np.int64)

    @iterations.setter
    def iterations(self, value: Any) -> None:
        n = self._accum_steps
        StateMixin.iterations.fset(self, value)  # (validated there)
        if n is None:
            return
        calls = int(value) * n
        if calls >= 2**63:
            raise ValueError(
                f"iterations {value!r} times gradient_accumulation_steps {n} "
                "does not fit the int64 counter of calls"
            )
        self._counter()[...] = calls
        self._reset_cycle()

    def _schedule_step(self, step: int) -> int:
        # Keras 3 evaluates a schedule at the counter of calls: on the
        # applying call of update ``step`` that is step * N + N - 1
        n = self._accum_steps
        return step if n is None else step * n + n - 1

    # -- one call ----------------------------------------------------------------

    def _member_key(self, item: Any) -> Any:
        """The key of an item's variable in the cycle's membership checks."""
        var, holder = item[3], item[4]
        if var is None:  # a ParameterBuffer's one-pass item
            return ("buffer", id(holder))
        return self._var_key(var)

    def _pending_key(self, item: Any) -> Any:
        """The key of a sparse item's pending slices (one per item: a
        subclass stepping a variable as several items keys them apart)."""
        return self._member_key(item)

    def _accumulate(self, step: Any) -> bool:
        """Accumulate this call's gradients, or prepare the applying call.

        True: the call was an accumulating one and is complete. False: the
        applying call, whose sparse items now hold the mean slices; the
        pipeline goes on (``_acc_apply`` is True until it ends).
        """
        self._acc_apply = False
        n = self._accum_steps
        calls = step.iteration
        phase, cycle = calls % n, calls // n
        keys = [self._member_key(it) for it in step.items]
        kinds = ["sparse" if it[0] else "dense" for it in step.items]
        modes = self._modes
        if phase == 0:
            modes = None
        elif modes is None:  # set_weights mid-cycle: dense partial sums only
            for it, kind in zip(step.items, kinds):
                if kind == "sparse":
                    raise ValueError(
                        f"{it[1].label} has an IndexedSlices gradient in an "
                        "accumulation cycle restored mid-way (set_weights with "
                        f"call {phase} of {n}); restored partial sums are dense: "
                        "restore at the start of a cycle"
                    )
        else:
            if set(keys) != set(modes):
                new = sum(k not in modes for k in keys)
                gone = sum(k not in set(keys) for k in modes)
                raise ValueError(
                    f"gradient accumulation: call {phase + 1} of {n} of this "
                    f"cycle has gradients for {new} variables its first call "
                    f"had none for, and none for {gone} of that call's; pass "
                    "gradients for the same variables in every call of a cycle"
                )
            for it, key, kind in zip(step.items, keys, kinds):
                if modes[key] != kind:
                    raise ValueError(
                        f"{it[1].label} had {modes[key]} gradients earlier in "
                        f"this accumulation cycle and now a {kind} one; one "
                        "variable takes one kind of gradient per cycle"
                    )
        # --- validated: from here on nothing fails on user input -----------
        fresh = modes is None
        if fresh:
            self._modes = dict(zip(keys, kinds))
            self._pending = {}
            if phase == 0:
                self._acc_marks = {}
        if step.need_weights:
            self._create_step_weights(step)
        if phase == n - 1:
            self._acc_apply = True
            self._mean_items(step)
            return False
        first = phase == 0
        marks = self._acc_marks
        keep = {}
        for it in step.items:
            sparse, work, backend = it[0], it[1], it[2]
            if sparse:
                self._pending.setdefault(self._pending_key(it), []).append(
                    backend.keep_slices(work)
                )
                continue
            acc = self._acc_slot(it)
            backend.accumulate(acc, work.grad, first)
            if getattr(self, "_dirty", None) is not None:  # (state-dir deltas)
                holder = it[4] if it[4] is not None else self._entry(it[3])
                self._dirty.touch(holder.slots["m"])
            keep[id(acc)] = cycle
        if fresh and phase:  # restored: the accumulators of this call's variables
            marks = {k: c for k, c in marks.items() if k in keep}
        marks.update(keep)
        self._acc_marks = marks
        if step.skipped:
            self._log_skipped(step)
        self._accumulated(step)
        self._finish(step)
        return True

    @staticmethod
    def _log_skipped(step: Any) -> None:
        logging.getLogger("numbadam").warning(
            "Gradients do not exist for variables %s when minimizing the loss; "
            "they were skipped.",
            [str(x) for x in step.skipped],
        )

    def _accumulated(self, step: Any) -> None:
        """After an accumulating call's gradients are added, before ``_finish``.

        Keras 3 updates the EMA of the variables on every call, accumulating
        ones too: an EMA (``use_ema``) updates its averages here, as the
        applying call does after its update.
        """

    def _acc_slot(self, item: Any) -> Any:
        holder = item[4]
        if holder is None:
            holder = self._entry(item[3])
        return holder.slots[ACCUMULATOR]

    def _mean_items(self, step: Any) -> None:
        # the applying call's sparse items: the cycle's slices, concatenated
        # in call order, summed per index and divided by N, as one new work
        items = step.items
        for i, it in enumerate(items):
            if it[0]:
                idx, vals = self._cycle_rows(it)
                uniq, mean = it[2].mean_rows(idx, vals, self._accum_steps)
                items[i] = self._mean_item(it, uniq, mean)

    def _cycle_rows(self, item: Any) -> Tuple[List[Any], List[Any]]:
        """A sparse item's slices of the cycle, in call order: ``(indices,
        values)`` lists of its pending slices and this call's: host indices,
        values on the backend's device (:meth:`Backend.mean_rows` takes
        them)."""
        work, backend = item[1], item[2]
        pend = self._pending.get(self._pending_key(item), [])
        return (
            [p[0] for p in pend] + [backend.to_host(work.indices)],
            [p[1] for p in pend] + [work.values],
        )

    def _mean_item(self, item: Any, uniq: np.ndarray, mean: np.ndarray) -> Any:
        """The applying call's item of a sparse ``item``: its unique rows
        ``uniq`` with the cycle's ``mean`` rows, validated as IndexedSlices of
        its variable (a subclass stepping parts of tables builds its own)."""
        sparse, work, backend, var, holder = item
        mean = mean.reshape((mean.shape[0],) + tuple(var.shape[1:]))
        slices = IndexedSlices(mean, uniq, tuple(var.shape))
        return (True, backend.prepare_sparse(var, slices, work.label), backend, var,
                holder)  # fmt: skip

    def _end_cycle(self) -> None:
        """After the applying call: drop the cycle's pending slices."""
        self._acc_apply = False
        self._pending = {}
        self._modes = None

    def _acc_arg(self, slots: Dict[str, Any]) -> Any:
        """The ``acc`` argument of the applying call's dense step of a
        variable with ``slots``: ``(accumulator, N)``, the kernel forming
        ``(g + accumulator) / N``; None when the gradient already is the
        mean (a subclass that reduced the cycle itself)."""
        return (slots[ACCUMULATOR], self._accum_steps)

    def _acc_sumsq(self, item: Any, clipvalue: Optional[float]) -> float:
        # the sum of squares of an applying call's mean gradient
        sparse, work, backend, var, holder = item
        if sparse:
            return backend.sumsq(work.values, clipvalue)
        n = self._accum_steps
        if var is None:  # a ParameterBuffer: its variables' sums in order
            buf = holder.buffer
            views = buf.slot_views(holder.slots[ACCUMULATOR])
            total = 0.0
            for g, a in zip(buf.grads, views):
                if g.size:
                    total += backend.sumsq(g, clipvalue, acc=(a, n))
            return total
        return backend.sumsq(work.grad, clipvalue, acc=(self._acc_slot(item), n))

    # -- state ----------------------------------------------------------------

    def _live(self, w: Any) -> bool:
        # whether accumulator ``w`` holds the current cycle's sum
        calls = int(self._counter())
        n = self._accum_steps
        if calls % n == 0:
            return False
        cycle = calls // n
        marks = self._acc_marks
        if marks.get(id(w)) == cycle:
            return True
        base = getattr(w, "base", None)
        return base is not None and marks.get(id(base)) == cycle

    def _accumulators(self) -> Dict[int, Any]:
        return {
            id(e.slots[name]): e.slots[name]
            for name, e in self._table.order
            if name == ACCUMULATOR
        }

    def _check_no_pending(self, what: str) -> None:
        if self._pending and int(self._counter()) % self._accum_steps:
            raise ValueError(
                f"{what}: IndexedSlices gradients of {len(self._pending)} "
                "items are pending in an unfinished accumulation cycle (call "
                f"{int(self._counter()) % self._accum_steps} of "
                f"{self._accum_steps}); finish the cycle first"
            )

    def get_weights(self) -> List[np.ndarray]:
        """Host (NumPy) copies of :attr:`weights`, Keras checkpoint compatible.

        With gradient accumulation, an accumulator not holding the current
        cycle's partial sum is reported as zeros, and a cycle with pending
        IndexedSlices gradients raises ``ValueError``.
        """
        if self._accum_steps is None:
            return StateMixin.get_weights(self)
        self._check_no_pending("get_weights")
        return [_dispatch.backend_for(w).to_host(w) for w in self._reported()]

    def _checkpoint_weights(self) -> List[Any]:
        """The state a checkpoint saves, in :attr:`weights` order: the live
        arrays (a device array stays on its device: the writers copy what
        they write), an accumulator that holds no partial sum of the
        current cycle as host zeros."""
        if self._accum_steps is None:
            return list(self._weights)
        self._check_no_pending("cannot save")
        return self._reported()

    def _reported(self) -> List[Any]:
        # the weights as get_weights and the checkpoints report them: an
        # accumulator not holding the current cycle's partial sum as zeros
        accs = self._accumulators()
        return [
            np.zeros(tuple(w.shape), np.dtype(w.dtype))
            if id(w) in accs and not self._live(w)
            else w
            for w in self._weights
        ]

    def _set_weights(self, weights: List[Any]) -> None:
        n = self._accum_steps
        if n is None or len(weights) != len(self._weights):
            StateMixin._set_weights(self, weights)
            return
        counter = self._counter()
        accs = self._accumulators()
        pos = [j for j, p in enumerate(self._weights) if p is counter]
        calls = np.asarray(weights[pos[0]]) if pos else None
        if (
            calls is not None
            and calls.shape == ()
            and calls.dtype.kind in "iuf"
            and np.isfinite(calls)
            and calls >= 0
        ):
            check_cycle_start(
                int(calls), n,
                [(j, weights[j]) for j, p in enumerate(self._weights) if id(p) in accs],
            )  # fmt: skip
        StateMixin._set_weights(self, weights)
        self._reset_cycle(restored=int(counter) % n != 0)
