"""``clipvalue``, ``clipnorm`` and ``global_clipnorm``: a mixin of OptimizerV2.

The three thresholds (validated when set) and the pipeline's transform hook,
``_transform_gradients``, which turns them into each item's ``(lo, hi, mul,
div)`` kernel scalars (numbadam._backend), in TensorFlow's order.
"""

from __future__ import annotations

import math
from typing import Any, Optional

from ._backend import global_norm_scalars, identity_transform, transform_scalars
from ._hypers import is_number
from ._slots import FlatState
from ._step import Step

__all__ = ["ClippingMixin"]


class ClippingMixin:
    """The clipping thresholds of an optimizer and its transform hook.

    Reads ``_acc_apply`` / ``_acc_sumsq`` of the accumulation mixin (an
    applying call clips the mean gradient).
    """

    _clipnorm: Optional[float] = None
    _global_clipnorm: Optional[float] = None
    _clipvalue: Optional[float] = None

    @staticmethod
    def _check_real(value: Any, what: str) -> float:
        if not is_number(value) or isinstance(value, bool):
            raise TypeError(f"{what} must be a real number, got {value!r}")
        if not math.isfinite(value) or value < 0:  # (NaN < 0 is False)
            raise ValueError(f"Expected a finite {what} >= 0, received: {value}")
        return float(value)

    @property
    def clipnorm(self) -> Optional[float]:
        """Per-gradient L2-norm clipping threshold, or ``None``."""
        return self._clipnorm

    @clipnorm.setter
    def clipnorm(self, value: Optional[float]) -> None:
        if value is not None and self._global_clipnorm is not None:
            raise ValueError(
                "Cannot accept both `clipnorm` and `global_clipnorm`. Received: "
                f"`clipnorm`={value}, `global_clipnorm`={self._global_clipnorm}."
            )
        self._clipnorm = None if value is None else self._check_real(value, "clipnorm")

    @property
    def global_clipnorm(self) -> Optional[float]:
        """Joint L2-norm clipping threshold of all gradients of a call, or ``None``.

        As tf-keras' ``global_clipnorm``: every gradient of an
        :meth:`apply_gradients` call is scaled by ``clip / max(norm, clip)``
        (TF's ``clip_by_global_norm``), ``norm`` being the L2 norm of all of
        them together (after ``clipvalue``). Exclusive with ``clipnorm``.
        """
        return self._global_clipnorm

    @global_clipnorm.setter
    def global_clipnorm(self, value: Optional[float]) -> None:
        if value is not None and self._clipnorm is not None:
            raise ValueError(
                "Cannot accept both `clipnorm` and `global_clipnorm`. Received: "
                f"`clipnorm`={self._clipnorm}, `global_clipnorm`={value}."
            )
        self._global_clipnorm = (
            None if value is None else self._check_real(value, "global_clipnorm")
        )

    @property
    def clipvalue(self) -> Optional[float]:
        """Per-element clipping threshold, or ``None``."""
        return self._clipvalue

    @clipvalue.setter
    def clipvalue(self, value: Optional[float]) -> None:
        self._clipvalue = (
            None if value is None else self._check_real(value, "clipvalue")
        )

    def _transform_gradients(self, step: Step) -> None:
        """Hook 3: the ``(lo, hi, mul, div)`` transform of each item's gradient.

        TF's order: ``clip_by_value`` (``clipvalue``), then ``clip_by_norm``
        (``clipnorm``, each gradient by its own L2 norm, taken after the value
        clipping); the kernels apply the transform in their one pass.
        """
        cv, cn, gcn = self._clipvalue, self._clipnorm, self._global_clipnorm
        if cv is None and cn is None and gcn is None:
            items = step.items
            if len(items) == 1:
                step.transforms = [identity_transform(items[0][1].flat.dtype)]
            else:
                step.transforms = [identity_transform(it[1].flat.dtype) for it in items]
            return
        if gcn is not None:
            total = 0.0  # (float64, added in pair order: the same bits every run)
            for it in step.items:
                total += self._sumsq_item(it, cv)
            step.transforms = [
                global_norm_scalars(it[1].flat.dtype, cv, gcn, total)
                for it in step.items
            ]
            return
        out = []
        for it in step.items:
            sparse, work, backend = it[0], it[1], it[2]
            sumsq = None
            if cn is not None:
                if self._acc_apply:  # the norm of the mean gradient
                    sumsq = self._acc_sumsq(it, cv)
                else:
                    sumsq = backend.sumsq(work.values if sparse else work.grad, cv)
            out.append(transform_scalars(work.flat.dtype, cv, cn, sumsq))
        step.transforms = out

    def _sumsq_item(self, item: Any, clipvalue: Optional[float]) -> float:
        # The sum of squares of one item's (value-clipped) gradient; a
        # ParameterBuffer's one pass adds its variables' sums in order, as a
        # list of its pairs would, so both take the same global norm.
        if self._acc_apply:
            return self._acc_sumsq(item, clipvalue)
        sparse, work, backend, var, holder = item
        if sparse:
            return backend.sumsq(work.values, clipvalue)
        if var is None and isinstance(holder, FlatState):
            total = 0.0
            for g in holder.buffer.grads:
                total += backend.sumsq(g, clipvalue) if g.size else 0.0
            return total
        return backend.sumsq(work.grad, clipvalue)
