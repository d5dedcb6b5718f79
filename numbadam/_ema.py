"""The exponential moving average of the weights (Keras 3's ``use_ema``).

Keras 3 (``BaseOptimizer._update_model_variables_moving_average``) moves an
average of every variable after its update, in the variable's dtype, left to
right::

    momentum = cast(iterations != 0, dtype) * ema_momentum
    average = (momentum * average) + ((1 - momentum) * var)

with ``iterations`` read before the step's increment (so the first step makes
the average the variable), and every ``ema_overwrite_frequency``-th step
(``(iterations + 1) % ema_overwrite_frequency == 0``) copies the averages into
the variables. numbadam fuses both into the kernels' one pass: the kernels
take ``(average, momentum, 1 - momentum, overwrite)``
(:data:`numbadam._backend.Average`); this module validates the arguments and
computes those scalars. :class:`EmaMixin` gives
:class:`~numbadam.OptimizerV2` the arguments, ``finalize_variable_values``
and the EMA-only pass of an accumulating call (:meth:`EmaMixin._ema_pass`).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import _dispatch
from ._backend import compute_dtype

__all__ = ["check_ema", "ema_scalars", "EmaMixin", "SLOT"]

#: The slot holding a variable's average (Keras 3's ``"average"`` variables).
SLOT = "average"


def _check_momentum(value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise TypeError(f"ema_momentum must be a real number, got {value!r}")
    value = float(value)
    if not 0.0 <= value <= 1.0:  # (NaN too)
        raise ValueError(
            "`ema_momentum` must be in the range [0, 1]. "
            f"Received: ema_momentum={value}"
        )
    return value


def _check_frequency(value: Any) -> Optional[int]:
    if value is None:
        return None
    if (
        isinstance(value, (bool, np.bool_))
        or not isinstance(value, (int, np.integer))
        or value < 1
    ):
        raise ValueError(
            "`ema_overwrite_frequency` must be an integer >= 1 or None. "
            f"Received: ema_overwrite_frequency={value!r}"
        )
    return int(value)


def check_ema(
    use_ema: Any, ema_momentum: Any, ema_overwrite_frequency: Any
) -> Tuple[bool, float, Optional[int]]:
    """The three EMA arguments, validated (raises before anything is set).

    ``use_ema`` must be a bool; ``ema_momentum`` a real number in ``[0, 1]``
    (not NaN); ``ema_overwrite_frequency`` ``None`` or an integer ``>= 1``.
    Unlike Keras 3, which checks them only with ``use_ema=True`` and reads a
    frequency of ``0`` as ``None``, they are always checked and ``0`` is
    refused.

    Examples
    --------
    >>> check_ema(True, 0.9, 10)
    (True, 0.9, 10)
    >>> check_ema(False, 1.5, None)
    Traceback (most recent call last):
        ...
    ValueError: `ema_momentum` must be in the range [0, 1]. Received: ema_momentum=1.5
    """
    if not isinstance(use_ema, (bool, np.bool_)) and not (
        isinstance(use_ema, (int, np.integer)) and use_ema in (0, 1)
    ):
        raise TypeError(f"use_ema must be a bool, got {use_ema!r}")
    return (
        bool(use_ema),
        _check_momentum(ema_momentum),
        _check_frequency(ema_overwrite_frequency),
    )


def ema_scalars(
    dtype: Any, ema_momentum: float, iteration: int, frequency: Optional[int]
) -> Tuple[Any, Any, bool]:
    """``(momentum, 1 - momentum, overwrite)`` of a step, for storage ``dtype``.

    Keras 3's arithmetic in the variable's dtype: ``momentum`` is
    ``ema_momentum`` cast to the dtype (``0`` at ``iteration == 0``) and
    ``1 - momentum`` is computed in the dtype. float16 values are those of
    float16, returned as float32: the kernels compute a float16 average in
    float32 and round it once (Keras 3 rounds each operation to float16).
    ``overwrite`` is whether the step
    (``iterations`` = ``iteration`` before its increment) copies the averages
    into the variables.

    Examples
    --------
    >>> import numpy as np
    >>> mom, omm, ow = ema_scalars(np.float32, 0.99, 3, 4)
    >>> type(mom).__name__, bool(omm == np.float32(1) - np.float32(0.99)), ow
    ('float32', True, True)
    >>> [float(x) for x in ema_scalars(np.float64, 0.99, 0, None)[:2]]
    [0.0, 1.0]
    """
    dt = np.dtype(dtype)
    t = dt.type
    mom = t(0) if iteration == 0 else t(ema_momentum)
    omm = t(1) - mom
    overwrite = bool(frequency) and (int(iteration) + 1) % frequency == 0
    c = compute_dtype(dt).type
    if dt == np.float64:
        return float(mom), float(omm), overwrite
    return c(mom), c(omm), overwrite


class EmaMixin:
    """``use_ema``, ``ema_momentum``, ``ema_overwrite_frequency`` of an optimizer.

    State: the slot :data:`SLOT` of every variable (created with the other
    slots, after them; zeros as in Keras 3, or a copy of the variable under
    ``sparse_mode="lazy"``). Per step :meth:`_ema_step_scalars` fills
    ``_step_ema`` (storage dtype -> scalars) and :meth:`_ema_arg` builds a
    work item's kernel argument.
    """

    _use_ema: bool = False
    _ema_momentum: float = 0.99
    _ema_overwrite_frequency: Optional[int] = None
    _step_ema: Dict[Any, Any] = {}

    def _init_ema(self, kwargs: Dict[str, Any]) -> None:
        # (pops the three arguments; raises before anything is set)
        use, mom, freq = check_ema(
            kwargs.pop("use_ema", False),
            kwargs.pop("ema_momentum", 0.99),
            kwargs.pop("ema_overwrite_frequency", None),
        )
        self._use_ema, self._ema_momentum, self._ema_overwrite_frequency = (
            use,
            mom,
            freq,
        )
        self._step_ema = {}

    @property
    def use_ema(self) -> bool:
        """Whether the optimizer keeps an EMA of the weights (Keras 3's)."""
        return self._use_ema

    @property
    def ema_momentum(self) -> float:
        """``average = ema_momentum * average + (1 - ema_momentum) * var``."""
        return self._ema_momentum

    @ema_momentum.setter
    def ema_momentum(self, value: Any) -> None:
        self._ema_momentum = _check_momentum(value)

    @property
    def ema_overwrite_frequency(self) -> Optional[int]:
        """Every this many steps the variables take their averages (or None)."""
        return self._ema_overwrite_frequency

    @ema_overwrite_frequency.setter
    def ema_overwrite_frequency(self, value: Any) -> None:
        self._ema_overwrite_frequency = _check_frequency(value)

    def _ema_config(self) -> Dict[str, Any]:
        return {
            "use_ema": self._use_ema,
            "ema_momentum": self._ema_momentum,
            "ema_overwrite_frequency": self._ema_overwrite_frequency,
        }

    # -- the step ------------------------------------------------------------

    def _ema_step_scalars(self, iteration: int, dtypes: Any) -> None:
        """Fill ``_step_ema`` for this step (``iteration``: before the increment)."""
        if not self._use_ema:
            if self._step_ema:
                self._step_ema = {}
            return
        mom, freq = self._ema_momentum, self._ema_overwrite_frequency
        self._step_ema = {dt: ema_scalars(dt, mom, iteration, freq) for dt in dtypes}

    def _ema_arg(self, work: Any, slots: Dict[str, Any]) -> Any:
        """The EMA argument of a work item's step (None without EMA)."""
        if not self._step_ema:
            return None
        return (slots[SLOT],) + self._step_ema[work.flat.dtype]

    def _ema_initializer(self, var: Any) -> Any:
        # zeros (Keras 3); under the lazy rule a copy of the variable, so rows
        # that never get a gradient have their value as average
        if getattr(self, "sparse_mode", "dense") != "lazy":
            return "zeros"
        host = _dispatch.backend_for(var).to_host(var)
        return lambda shape, dtype: host

    def _create_ema_slots(self, var_list: List[Any]) -> None:
        if self._use_ema:
            for var in var_list:
                self.add_slot(var, SLOT, self._ema_initializer(var))

    # -- outside the fused pass ------------------------------------------------

    def _ema_pass(self, step: Any, iteration: int) -> None:
        """Move the averages of a call that does not step: an accumulating
        call of gradient accumulation, which Keras 3 follows with an EMA
        update like every call (``iteration``: the ``iterations`` Keras reads
        then, the number of updates so far).

        The variables of the call move, by the kernels' EMA arithmetic: every
        element for a dense gradient and for IndexedSlices under the TF rule
        (as the dense step would), the rows the call's IndexedSlices list
        under the lazy rule. On an overwrite step they take their averages.
        """
        self._ema_step_scalars(iteration, {it[1].flat.dtype for it in step.items})
        lazy = getattr(self, "sparse_mode", "dense") == "lazy"
        dirty = getattr(self, "_dirty", None)
        for sparse, work, backend, var, holder in step.items:
            slots = (holder if holder is not None else self._entry(var)).slots
            rows = None
            if sparse and lazy:
                rows = np.unique(backend.to_host(work.indices).astype(np.int64))
            backend.ema_step(work, self._ema_arg(work, slots), rows)
            if dirty is not None:  # (incremental state-dir saves)
                mask = dirty.step_mask(slots["m"], work, backend, rows is not None)
                if isinstance(mask, np.ndarray):
                    mask[rows] = 1
                elif mask is not None:  # (a device mask: every row, simply)
                    dirty.touch(slots["m"])

    def _overwrite_with_average(self, var_list: List[Any]) -> None:
        """Keras 3's ``_overwrite_model_variables_with_average_value``."""
        pairs = []
        for i, var in enumerate(var_list):
            entry = self._entry(var)
            if entry is None or SLOT not in entry.slots:
                raise ValueError(
                    f"variable {i} has no EMA average in this optimizer; pass the "
                    "variables the optimizer stepped"
                )
            pairs.append((var, entry.slots[SLOT]))
        for var, avg in pairs:
            backend = _dispatch.backend_for(var)
            backend.assign(var, backend.to_host(avg))

    def finalize_variable_values(self, var_list: List[Any]) -> None:
        """Set the final values of ``var_list``: with ``use_ema``, their averages.

        As Keras 3's: the variables are overwritten by the EMA the optimizer
        kept; without ``use_ema`` nothing happens.

        Raises
        ------
        ValueError
            If a variable has no average (it was never stepped); nothing is
            written then.

        Examples
        --------
        >>> import numpy as np
        >>> import numbadam
        >>> opt = numbadam.Adam(learning_rate=0.5, use_ema=True, ema_momentum=0.5)
        >>> w = np.zeros(2, np.float32)
        >>> for _ in range(2):
        ...     _ = opt.apply_gradients([(np.ones(2, np.float32), w)])
        >>> w.round(4).tolist(), opt.get_slot(w, "average").round(4).tolist()
        ([-1.0, -1.0], [-0.75, -0.75])
        >>> opt.finalize_variable_values([w])
        >>> bool((w == opt.get_slot(w, "average")).all())
        True
        """
        if self._use_ema:
            with self._lock:
                self._overwrite_with_average(list(var_list))
