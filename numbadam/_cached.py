"""Cached launches: the step pipeline's shortcuts for calls that come back.

A mixin of :class:`numbadam.OptimizerV2`. Training loops pass the same
variables call after call; two shortcuts keep what a validated call found and
check each new call against it, every pair every time:

- a list of the same small dense variables (at least the backend's
  ``MULTI_MIN``), seen twice in a row: the prepare hook hands the pipeline one
  multi-tensor work item (the backend's ``multi_work`` / ``prepare_multi``);
- one dense pair of a plain step (no clipping, weight decay, average,
  accumulation or incremental-save tracking) whose variable stepped before:
  the backend's plan (``dense_plan`` / ``plan_gradient`` / ``plan_step``),
  kept in the variable's slot-table entry, re-checks the gradient, the
  variable and its slots, then the coefficients hook runs and the plan
  launches the general path's kernel with the same arguments. This skips the
  pipeline's per-call objects, which are most of a small variable's cost.

A call that does not pass a check (another dtype, a strided gradient, a
view of written memory, a new slot, anything unusual) takes the general
path, which validates and explains; nothing is written before. Subclasses
whose hooks do more (aggregation, accumulation) set ``_cached_launches`` to
False, and the pipeline then never takes either shortcut.
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from . import _config
from ._ema import SLOT as _EMA_SLOT
from ._step import MULTI, Step

__all__ = ["CachedLaunchMixin"]


class CachedLaunchMixin:
    """The cached launches of an optimizer (reads the pipeline's state)."""

    #: Whether calls that come back may take the cached launches (subclasses
    #: whose hooks do more than the base pipeline's say no).
    _cached_launches = True

    def _init_cached(self) -> None:
        # the multi-tensor path: (backend, MultiWork) of the list that came back
        self._multi: Any = None
        self._last_ids: Tuple[int, ...] = ()
        self._multi_ids: Tuple[int, ...] = ()

    # -- one plain dense pair ------------------------------------------------

    def _plain_step(self) -> bool:
        """Whether this optimizer's step is the plain one a plan launches:
        no clipping, average, accumulation or incremental-save tracking
        (optimizers with more features add theirs)."""
        return (
            self._clipnorm is None
            and self._global_clipnorm is None
            and self._clipvalue is None
            and self._accum_steps is None
            and not self._use_ema
            and self._dirty is None
        )

    def _planned(self, pair: Any) -> Optional[np.ndarray]:
        """The step of a one-pair call through its variable's plan, returning
        ``iterations``; None (nothing evaluated or written) for the general
        path."""
        if type(pair) is not tuple or len(pair) != 2:
            return None
        g, v = pair
        entry = self._table.by_id.get(id(v))
        if entry is None or entry.var is not v or entry.plan is None:
            return None
        backend, plan = entry.plan
        it = self._iterations
        if (
            it is None
            or not self._hypers_created
            or plan.amsgrad != self._amsgrad_slots()
            or not self._plain_step()
        ):
            return None
        gk = backend.plan_gradient(plan, g, entry.slots)
        if gk is None:
            return None
        _config.check()
        step = int(it)
        coef = self._plan_coefficients(step, plan)  # (may raise)
        backend.plan_step(plan, gk, coef)
        it[()] = step + 1
        return it

    def _plan_coefficients(self, step: int, plan: Any) -> Any:
        """The coefficients hook for one plan's storage dtype (``plan.dtype``,
        compute dtype ``plan.cdt``; optimizers may shortcut constants)."""
        return self._prepare_step(step, plan.dtypes)[plan.dtype]

    def _remember_pair(self, step: Step) -> None:
        # one dense pair of a plain step: its plan, for the next calls
        sparse, work, backend, v, _ = step.items[0]
        if sparse or step.skipped:
            return
        entry = self._table.entry(v)
        if entry is None or entry.plan is not None or entry.var is not v:
            return
        make = getattr(backend, "dense_plan", None)
        if make is None or not self._plain_step():
            return
        plan = make(v, work, entry.slots, self._amsgrad_slots())
        if plan is not None:
            entry.plan = (backend, plan)

    # -- a list of small dense variables -------------------------------------

    def _prepare_multi(self, grads_and_vars: Any) -> Optional[Step]:
        """The prepare hook's step of one multi-tensor work item when this call
        passes the same list again, else None (nothing written)."""
        multi = self._multi
        if (
            multi is not None
            and type(grads_and_vars) is list
            and self._clipnorm is None
            and self._global_clipnorm is None
            and multi[1].amsgrad == bool(self._amsgrad_slots())
            and (getattr(multi[1], "ep", None) is not None) == self._use_ema
        ):
            backend, work = multi
            if backend.prepare_multi(work, grads_and_vars):
                _config.check()
                return Step(self._step_count(), [(MULTI, work, backend, None, None)],
                            [], False, [])  # fmt: skip
        return None

    def _remember(self, step: Step) -> None:
        """After a general-path step: what the next calls may reuse."""
        if len(step.items) == 1:
            self._remember_pair(step)
        else:
            self._remember_list(step)

    def _remember_list(self, step: Step) -> None:
        # A list of the same dense variables twice in a row: from the next call
        # on, one multi-tensor launch (the backend's MultiWork) steps them all,
        # every pair still checked each call (prepare_multi).
        items = step.items
        if len(items) < 2 or step.skipped or items[0][0] is MULTI:
            return
        ids = tuple(id(it[3]) for it in items)
        if ids != self._last_ids:
            self._last_ids = ids
            return
        if (
            self._multi is not None
            and self._multi_ids == ids
            and self._multi[1].amsgrad == self._amsgrad_slots()
        ):
            return  # (this call did not qualify, e.g. a gradient to cast)
        backend = items[0][2]
        make = getattr(backend, "multi_work", None)
        if make is None or any(it[0] or it[2] is not backend for it in items):
            return
        variables = [it[3] for it in items]
        work = make(
            variables, [self._entry(v).slots for v in variables],
            self._amsgrad_slots(),
        )  # fmt: skip
        if work is not None and self._use_ema:
            backend.set_multi_averages(
                work, [self._entry(v).slots[_EMA_SLOT] for v in variables]
            )
        self._multi = None if work is None else (backend, work)
        self._multi_ids = ids
