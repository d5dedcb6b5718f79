"""Flat parameter buffers: many variables, one kernel pass."""

from __future__ import annotations

import math
import operator
from typing import Any, Iterable, List, Sequence, Tuple

import numpy as np

from ._backend import check_float_dtype

__all__ = ["ParameterBuffer"]


class GradsAndVars(tuple):
    """``(gradient, variable)`` pairs of one :class:`ParameterBuffer`, in order.

    An immutable tuple, so :meth:`numbadam.Adam.apply_gradients` can trust it
    still pairs the buffer's own gradient views with its variable views and update
    every variable in one fused pass over the flat arrays.
    """

    buffer: "ParameterBuffer"

    def __new__(cls, buffer: "ParameterBuffer") -> "GradsAndVars":
        self = super().__new__(cls, tuple(zip(buffer.grads, buffer.params)))
        self.buffer = buffer
        return self


class _Views(tuple):
    """Per-variable views of a ParameterBuffer: a sequence whose items stay put.

    ``buf.grads[i] = g`` would rebind the item and leave the flat buffer, which
    the optimizer reads, untouched (a zero gradient): refused. In-place
    operators (``buf.grads[i] += g``) write into the view and rebind the same
    object, so they are allowed.
    """

    def __new__(cls, views: Iterable[np.ndarray], name: str) -> "_Views":
        self = super().__new__(cls, views)
        self._name = name
        return self

    def __setitem__(self, index: Any, value: Any) -> None:
        if isinstance(index, int) and -len(self) <= index < len(self):
            if value is tuple.__getitem__(self, index):
                return  # buf.grads[i] += g: already written in place
        raise TypeError(
            f"ParameterBuffer.{self._name}[{index!r}] cannot be rebound (the flat "
            f"buffer would not see it); write into the view instead: "
            f"buf.{self._name}[{index!r}][...] = value"
        )

    def __delitem__(self, index: Any) -> None:
        raise TypeError(f"ParameterBuffer.{self._name} has a fixed length")

    def __getnewargs__(self):  # (copy and pickle)
        return (tuple(self), self._name)


def _shape(s: Any) -> Tuple[int, ...]:
    # a tuple of non-negative ints (numpy integers too; no floats, no strings)
    try:
        shape = tuple(operator.index(d) for d in s)
    except TypeError:
        raise TypeError(
            f"ParameterBuffer shapes must be sequences of integers, got {s!r}"
        ) from None
    if any(d < 0 for d in shape):
        raise ValueError(f"ParameterBuffer shape {shape} has a negative size")
    return shape


class ParameterBuffer:
    """Variables allocated as views of one flat array, gradients likewise.

    An optimizer step on ``buffer.grads_and_vars()`` is one kernel pass over the
    flat arrays instead of one call per variable (what apex's and DeepSpeed's
    flat buffers do), with numerics, slots and :meth:`~numbadam.Adam.get_weights`
    identical to passing the variables one by one. Write each gradient into its
    view of :attr:`grads` (e.g. ``np.matmul(..., out=buf.grads[i])`` or
    ``buf.grads[i][...] = g``).

    Parameters
    ----------
    shapes : sequence of tuple of int
        Shape of each variable.
    dtype : dtype, default float32
        float16, float32 or float64.

    Raises
    ------
    TypeError
        For a non-float dtype or a shape that is not a sequence of integers.
    ValueError
        For a negative size, or more elements than can be addressed.

    Attributes
    ----------
    data, grad : numpy.ndarray
        The flat, C-contiguous value and gradient buffers.
    params, grads : sequence of numpy.ndarray
        Per-variable views of ``data`` and ``grad``, in order: indexable,
        iterable, unpackable, but an item cannot be rebound (``buf.grads[i] =
        g`` raises ``TypeError``; write ``buf.grads[i][...] = g``).
    offsets : numpy.ndarray
        Start of each variable in the flat buffers (length ``n + 1``).

    Notes
    -----
    With ``clipnorm`` set, each variable's gradient is clipped by its own norm
    (Keras' rule), so the optimizer falls back to one pass per variable.

    Examples
    --------
    >>> import numpy as np
    >>> import numbadam
    >>> buf = numbadam.ParameterBuffer([(3, 2), (2,)])
    >>> w, b = buf.params
    >>> buf.grads[0][...] = 1.0
    >>> buf.grads[1][...] = -1.0
    >>> opt = numbadam.Adam(learning_rate=0.1)
    >>> _ = opt.apply_gradients(buf.grads_and_vars())
    >>> w.astype(float).round(3).tolist(), b.astype(float).round(3).tolist()
    ([[-0.1, -0.1], [-0.1, -0.1], [-0.1, -0.1]], [0.1, 0.1])

    Rebinding a view instead of writing into it would be a silent zero
    gradient, so it raises:

    >>> try:
    ...     buf.grads[1] = np.ones(2, np.float32)
    ... except TypeError as exc:
    ...     print(str(exc).split("; ")[1])
    write into the view instead: buf.grads[1][...] = value
    """

    def __init__(self, shapes: Iterable[Sequence[int]], dtype: Any = np.float32):
        dtype = np.dtype(dtype)
        check_float_dtype(dtype, "ParameterBuffer")
        self.shapes: List[Tuple[int, ...]] = [_shape(s) for s in shapes]
        sizes = [math.prod(s) for s in self.shapes]  # (exact: no int64 wrap-around)
        total = sum(sizes)
        limit = np.iinfo(np.intp).max // dtype.itemsize
        if total > limit:
            big = max(range(len(sizes)), key=sizes.__getitem__)
            raise ValueError(
                f"ParameterBuffer of {total} elements is too large (at most {limit} "
                f"{dtype} elements are addressable); variable {big} has shape "
                f"{self.shapes[big]} ({sizes[big]} elements)"
            )
        self.offsets = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        total = int(self.offsets[-1])
        self.data = np.zeros(total, dtype)
        self.grad = np.zeros(total, dtype)
        n = len(self.shapes)
        self.params = _Views((self._view(self.data, i) for i in range(n)), "params")
        self.grads = _Views((self._view(self.grad, i) for i in range(n)), "grads")
        self._pairs = GradsAndVars(self)

    @classmethod
    def from_arrays(cls, arrays: Sequence[Any], dtype: Any = None) -> "ParameterBuffer":
        """A buffer holding copies of ``arrays`` (use its :attr:`params` after).

        Parameters
        ----------
        arrays : sequence of array_like
        dtype : dtype, optional
            Defaults to the first array's dtype.
        """
        arrays = [np.asarray(a) for a in arrays]
        if dtype is None:
            dtype = arrays[0].dtype if arrays else np.float32
        buf = cls([a.shape for a in arrays], dtype)
        for view, a in zip(buf.params, arrays):
            view[...] = a
        return buf

    def _view(self, flat: np.ndarray, i: int) -> np.ndarray:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return flat[a:b].reshape(self.shapes[i])

    def slot_views(self, flat: np.ndarray) -> List[np.ndarray]:
        """Per-variable views of a flat array laid out like :attr:`data`."""
        return [self._view(flat, i) for i in range(len(self.shapes))]

    def grads_and_vars(self) -> GradsAndVars:
        """The pairs to pass to ``apply_gradients`` for the one-pass step."""
        return self._pairs

    def __len__(self) -> int:
        return len(self.shapes)

    def __repr__(self) -> str:
        return (
            f"ParameterBuffer({len(self.shapes)} variables, {self.data.size} "
            f"elements, {self.data.dtype})"
        )
