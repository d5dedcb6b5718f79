"""Small value types shared by the optimizer and the dispatch layer."""

from __future__ import annotations

import operator
from typing import Any, NamedTuple, Optional, Sequence

__all__ = ["IndexedSlices", "AdamCoefficients"]


class IndexedSlices:
    """A sparse gradient: rows ``indices`` of a table, with the given ``values``.

    The NumPy counterpart of ``tf.IndexedSlices``, as produced by an embedding
    lookup: the dense gradient it stands for is a zero array of ``dense_shape``
    with ``values[i]`` added to row ``indices[i]``. Duplicate indices are allowed
    and are summed.

    Parameters
    ----------
    values : array_like
        Gradient rows, shape ``(k,) + dense_shape[1:]``.
    indices : array_like of int
        Row index of each value, shape ``(k,)``; int32 or int64 (other integer
        types are accepted and converted).
    dense_shape : sequence of int, optional
        Shape of the dense gradient; when given it must equal the variable's shape.

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam import IndexedSlices
    >>> g = IndexedSlices(np.ones((2, 3), np.float32), np.array([4, 4]), (10, 3))
    >>> g.indices.tolist(), g.values.shape, g.dense_shape
    ([4, 4], (2, 3), (10, 3))
    """

    __slots__ = ("values", "indices", "dense_shape")

    def __init__(
        self,
        values: Any,
        indices: Any,
        dense_shape: Optional[Sequence[int]] = None,
    ) -> None:
        self.values = values
        self.indices = indices
        if dense_shape is None:
            self.dense_shape = None
            return
        try:
            shape = tuple(operator.index(d) for d in dense_shape)
        except TypeError:
            raise TypeError(
                f"IndexedSlices dense_shape must be a sequence of integers, got "
                f"{dense_shape!r}"
            ) from None
        if any(d < 0 for d in shape):
            raise ValueError(f"IndexedSlices dense_shape {shape} has a negative size")
        self.dense_shape = shape

    def __repr__(self) -> str:
        shape = getattr(self.values, "shape", None)
        return (
            f"IndexedSlices(values=<shape {shape}>, "
            f"indices=<{len(self.indices) if hasattr(self.indices, '__len__') else '?'}"
            f" rows>, dense_shape={self.dense_shape})"
        )


class AdamCoefficients(NamedTuple):
    """The per-step scalars of one Adam step, values of the kernels' compute dtype.

    (Python floats or NumPy scalars holding values exactly representable in the
    compute dtype.)

    ``alpha = lr_t * sqrt(1 - beta_2**t) / (1 - beta_1**t)`` is the step size with
    the bias correction folded in; ``one_minus_beta_1`` and ``one_minus_beta_2``
    are ``1 - beta`` rounded as TensorFlow rounds them.
    """

    alpha: Any
    one_minus_beta_1: Any
    one_minus_beta_2: Any
    epsilon: Any
