"""One ``apply_gradients`` call on its way through the step pipeline's hooks.

:class:`Step` and :class:`Label` are the seam between
:class:`numbadam.OptimizerV2`'s pipeline and the subclasses that override its
hooks (numbadam.distributed).
"""

from __future__ import annotations

from typing import Any, List

from ._state import describe

__all__ = ["MULTI", "Label", "Step"]


class Label:
    """A variable's name for error messages, formatted only when needed.

    ``variable {position} (shape ..., dtype)``; part of the hook seam (with
    :class:`Step`) that subclasses in numbadam.distributed use.
    """

    __slots__ = ("var", "position")

    def __init__(self, var: Any, position: int) -> None:
        self.var = var
        self.position = position

    def __str__(self) -> str:
        return f"variable {self.position} ({describe(self.var)})"

    __format__ = lambda self, spec: format(str(self), spec)  # noqa: E731


#: The kind of a Step item stepping many dense variables in one launch.
MULTI = "multi"


class Step:
    """One :meth:`OptimizerV2.apply_gradients` call on its way through the hooks.

    ``items`` are ``(sparse, work, backend, var, holder)`` tuples: the
    validated work item of each pair with a gradient (a
    :class:`~numbadam._backend.DenseWork` or ``SparseWork``), the backend that
    owns it, the user's variable, and the object whose ``slots`` dict holds its
    slots (``None`` until they are created). Hooks may replace items (an
    aggregate hook swaps in averaged gradients) but never a variable.
    ``transforms`` (one per item) and ``coefficients`` (storage dtype ->
    :class:`~numbadam._types.AdamCoefficients`) are filled by their hooks.
    """

    __slots__ = (
        "iteration", "items", "var_list", "need_weights", "transforms",
        "coefficients", "skipped",
    )  # fmt: skip

    def __init__(self, iteration: int, items: List[Any], var_list: List[Any],
                 need_weights: bool, skipped: List[Any]) -> None:  # fmt: skip
        self.iteration = iteration
        self.items = items
        self.var_list = var_list
        self.need_weights = need_weights
        self.skipped = skipped
        self.transforms: List[Any] = []
        self.coefficients: Any = None
