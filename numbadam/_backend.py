"""The backend interface: what the optimizer asks of a device, and its policies.

The optimizer hands a backend ``(variable, gradient)`` pairs. For each pair the
backend owning the variable first *prepares* a work item: every check happens
there and nothing is written. Only once every pair of a call is prepared does
the optimizer create slots and run the steps, so bad input never leaves a
variable or slot half-updated.

This module holds what every backend shares: the :class:`Backend` protocol, the
work types (:class:`DenseWork`, :class:`SparseWork`), the dtype policy
(:data:`SUPPORTED_DTYPES`, :func:`compute_dtype`, :func:`check_float_dtype`,
:func:`cast_gradient_dtype`), the clipping scalars (:func:`transform_scalars`)
and the one validation of :class:`~numbadam.IndexedSlices` shapes
(:func:`check_slices_shapes`, :func:`check_index_range`). The implementations
are siblings that import this module and never each other:
:mod:`numbadam._backend_cpu` (NumPy arrays) and :mod:`numbadam._backend_cuda`
(CUDA arrays, imported lazily); :mod:`numbadam._dispatch` chooses between them.

Layering: kernels know nothing of this module; this module knows no kernel;
the backends know both; the optimizer knows only this interface and
:func:`numbadam._dispatch.backend_for`.
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Protocol, Tuple

import numpy as np

from ._types import AdamCoefficients, IndexedSlices

__all__ = [
    "Backend",
    "DenseWork",
    "SparseWork",
    "SUPPORTED_DTYPES",
    "INDEX_DTYPES",
    "is_device_array",
    "compute_dtype",
    "check_float_dtype",
    "cast_gradient_dtype",
    "transform_scalars",
    "identity_transform",
    "global_norm_scalars",
    "Transform",
    "Decay",
    "Average",
    "check_slices_shapes",
    "check_index_dtype",
    "check_index_range",
]

SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
#: Index dtypes the kernels take; other integer indices are converted to int64.
INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_SUPPORTED_NAMES = "float16, float32 or float64"


def is_device_array(x: Any) -> bool:
    """True for CUDA arrays (including Numba's simulator arrays)."""
    if isinstance(x, np.ndarray):
        return False
    try:
        return hasattr(x, "__cuda_array_interface__") or hasattr(x, "__cuda_ndarray__")
    except Exception:
        # e.g. a PyTorch CUDA tensor that requires grad raises RuntimeError: it is
        # a device array all the same (the backend explains to pass param.data)
        return True


_COMPUTE = {
    "e": np.dtype(np.float32),
    "f": np.dtype(np.float32),
    "d": np.dtype(np.float64),
}


def compute_dtype(dtype: Any) -> np.dtype:
    """The dtype the kernels compute in for a variable of ``dtype``.

    float16 variables are computed in float32 and rounded once on store.
    """
    c = _COMPUTE.get(getattr(dtype, "char", None))
    if c is not None:
        return c
    dtype = np.dtype(dtype)
    return _COMPUTE.get(dtype.char, dtype)


def check_float_dtype(dtype: Any, what: str) -> None:
    """Raise ``TypeError`` unless ``dtype`` is native float16, float32 or float64."""
    dtype = np.dtype(dtype)
    if dtype in SUPPORTED_DTYPES:
        return
    if dtype.kind == "f" and not dtype.isnative:
        raise TypeError(
            f"{what} has non-native byte order ({dtype.str}); variables are updated "
            "in place, so pass a native-endian array "
            "(var.astype(var.dtype.newbyteorder('=')))"
        )
    raise TypeError(f"{what} has dtype {dtype}; expected {_SUPPORTED_NAMES}")


def cast_gradient_dtype(gdtype: Any, vdtype: Any, label: Any) -> None:
    """Check a gradient dtype can be cast (same kind) to the variable's."""
    gdtype = np.dtype(gdtype)
    if gdtype.kind != "f" or not np.can_cast(gdtype, vdtype, casting="same_kind"):
        raise TypeError(
            f"gradient of {label} has dtype {gdtype}; expected a floating dtype "
            f"castable to the variable's {np.dtype(vdtype)}"
        )


def transform_scalars(
    dtype: Any, clipvalue: Optional[float], clipnorm: Optional[float], sumsq: Any
):
    """``(lo, hi, mul, div)`` of TF's clip_by_value then clip_by_norm.

    ``sumsq`` is the sum of squares of the value-clipped gradient (float64), or
    ``None`` when ``clipnorm`` is unset. Computed in the compute ``dtype``.
    """
    c = compute_dtype(dtype).type
    if clipvalue is None:
        lo, hi = c(-np.inf), c(np.inf)
    else:
        lo, hi = c(-clipvalue), c(clipvalue)
    if clipnorm is None:
        return lo, hi, c(1), c(1)
    l2sum = c(sumsq)
    # TF: the norm is sqrt(sum) when the sum is positive, else the sum itself.
    l2norm = np.sqrt(l2sum) if l2sum > 0 else l2sum
    cn = c(clipnorm)
    return lo, hi, cn, np.maximum(l2norm, cn)


def global_norm_scalars(
    dtype: Any, clipvalue: Optional[float], global_clipnorm: float, total: Any
):
    """``(lo, hi, mul, div)`` of TF's clip_by_value then clip_by_global_norm.

    ``total`` is the sum of squares of every (value-clipped) gradient of the
    call, in float64. As ``tf.clip_by_global_norm``, in the compute ``dtype``:
    ``norm = sqrt(total)``, ``scale = clip * min(1 / norm, 1 / clip) + (norm -
    norm)`` (NaN for a non-finite norm), and each element becomes ``g * scale``
    (``div`` is 1).
    """
    c = compute_dtype(dtype).type
    lo, hi, _, one = transform_scalars(dtype, clipvalue, None, None)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        norm = np.sqrt(c(total))
        cn = c(global_clipnorm)
        scale = cn * np.minimum(c(1) / norm, c(1) / cn)
        scale = scale + (norm - norm)
    return lo, hi, c(scale), one


#: ``(lo, hi, mul, div)``: a gradient element ``g`` enters the step as
#: ``clip(g, lo, hi) * mul / div``, in the compute dtype (the kernels' order).
Transform = Tuple[Any, Any, Any, Any]

#: Decoupled weight decay of a step: ``None`` (none), or ``(weight_decay, lr_t)``
#: as scalars of the compute dtype (NumPy scalars or Python floats holding
#: values of it); ``var -= (var * weight_decay) * lr_t`` before the Adam step.
Decay = Optional[Tuple[Any, Any]]

#: The EMA of the weights in a step: ``None`` (none), or ``(average, momentum,
#: one_minus_momentum, overwrite)``: the average slot (the variable's shape and
#: dtype, on its device), two scalars of the compute dtype and a bool. After
#: the Adam step ``average = (momentum * average) + (one_minus_momentum *
#: var)``; with ``overwrite`` the variable then takes the average's value.
Average = Optional[Tuple[Any, Any, Any, bool]]

_IDENTITY: Dict[Any, Transform] = {}


def identity_transform(dtype: Any) -> Transform:
    """The transform of no clipping for ``dtype`` (cached: one lookup per pair)."""
    tr = _IDENTITY.get(dtype)
    if tr is None:
        tr = _IDENTITY[dtype] = transform_scalars(dtype, None, None, None)
    return tr


def check_slices_shapes(
    label: Any,
    var_shape: Tuple[int, ...],
    dense_shape: Optional[Tuple[int, ...]],
    index_shape: Tuple[int, ...],
    values_shape: Tuple[int, ...],
) -> None:
    """The shape rules of an :class:`~numbadam.IndexedSlices` for a variable.

    The variable has rows (not 0-d), ``dense_shape`` (when given) is the
    variable's shape, the indices are 1-D, one row of values per index, and
    each row has the shape of the variable's rows. Raises ``ValueError``
    naming ``label``; dtypes and index ranges are checked by the backend.
    """
    if len(var_shape) == 0:
        raise ValueError(f"{label} is 0-d; an IndexedSlices gradient needs rows")
    if dense_shape is not None and tuple(dense_shape) != tuple(var_shape):
        raise ValueError(
            f"IndexedSlices for {label} has dense_shape {tuple(dense_shape)}"
            f", the variable {tuple(var_shape)}"
        )
    if len(index_shape) != 1:
        raise ValueError(
            f"IndexedSlices indices of {label} have shape {tuple(index_shape)}; "
            "expected 1-D"
        )
    k = index_shape[0]
    if len(values_shape) == 0 or values_shape[0] != k:
        raise ValueError(
            f"IndexedSlices for {label}: {k} indices but values of shape "
            f"{tuple(values_shape)}"
        )
    if tuple(values_shape[1:]) != tuple(var_shape[1:]):
        raise ValueError(
            f"IndexedSlices for {label}: rows of shape {tuple(values_shape[1:])}, "
            f"the variable's rows {tuple(var_shape[1:])}"
        )


def check_index_dtype(dtype: Any, label: Any) -> None:
    """Raise ``TypeError`` unless IndexedSlices indices have an integer dtype."""
    if np.dtype(dtype).kind not in "iu":
        raise TypeError(
            f"IndexedSlices indices of {label} have dtype {np.dtype(dtype)}; "
            "expected integers"
        )


def check_index_range(lo: int, hi: int, nrows: int, label: Any) -> None:
    """Raise ``IndexError`` unless ``0 <= lo`` and ``hi < nrows``."""
    if lo < 0:
        raise IndexError(f"IndexedSlices for {label}: negative index {lo}")
    if hi >= nrows:
        raise IndexError(
            f"IndexedSlices for {label}: index {hi} out of range for {nrows} rows"
        )


class DenseWork:
    """A validated dense pair, in the shapes the kernels take.

    Attributes: ``var`` (the user's variable), ``flat`` (a 1-D C-contiguous view
    of it, or a staging copy), ``grad`` (1-D C-contiguous, the variable's dtype),
    ``staged`` (``flat`` is a copy to write back into ``var``), ``label``.
    """

    __slots__ = ("var", "flat", "grad", "staged", "label")

    def __init__(self, var: Any, flat: Any, grad: Any, staged: bool, label: Any):
        self.var = var
        self.flat = flat
        self.grad = grad
        self.staged = staged
        self.label = label


class SparseWork:
    """A validated IndexedSlices pair, in the shapes the kernels take.

    Attributes: ``var``, ``flat`` (a 1-D view, or staging copy, of the ``(R, W)``
    table), ``indices`` (1-D int32/int64), ``values`` (``(k, W)`` C-contiguous,
    the variable's dtype), ``width``, ``staged``, ``label``, ``maxkey`` (the
    largest index, when the backend knows it, else ``None``).
    """

    __slots__ = (
        "var", "flat", "indices", "values", "width", "staged", "label", "maxkey"
    )  # fmt: skip

    def __init__(
        self, var, flat, indices, values, width, staged, label, maxkey=None
    ) -> None:
        self.var = var
        self.flat = flat
        self.indices = indices
        self.values = values
        self.width = width
        self.staged = staged
        self.label = label
        self.maxkey = maxkey


class Backend(Protocol):
    """What the optimizer asks of the backend that owns a variable.

    ``label`` is the variable's name for error messages (formatted only when an
    error is raised). ``vhat`` is ``None`` without AMSGrad. Steps update the
    variable and its slots in place; ``prepare_*`` and ``check_variable`` never
    write anything.
    """

    #: ``"cpu"`` or ``"cuda"``.
    name: str

    def check_variable(self, var: Any, label: Any) -> None:
        """Raise ``TypeError``/``ValueError`` if ``var`` cannot be optimised."""

    def prepare_dense(self, var: Any, grad: Any, label: Any) -> DenseWork:
        """Validate and canonicalise a dense gradient (no mutation)."""

    def prepare_sparse(self, var: Any, grad: IndexedSlices, label: Any) -> SparseWork:
        """Validate and canonicalise an IndexedSlices gradient (no mutation)."""

    def zeros_like(self, var: Any) -> Any:
        """A new zero slot with ``var``'s shape and dtype, on ``var``'s device."""

    def zeros(self, shape: Tuple[int, ...], like: Any) -> Any:
        """A new zero slot of ``shape`` with ``like``'s dtype, on its device."""

    def row_mask(self, nrows: int) -> Any:
        """A new zero ``uint8`` array of ``nrows`` on this backend's device:
        the row mask lazy steps mark (``sparse_step``'s ``dirty``)."""

    def to_host(self, arr: Any) -> np.ndarray:
        """A host (NumPy) copy of ``arr``."""

    def host_rows(self, arr: Any) -> Any:
        """``arr`` as a state-dir save reads it: a NumPy array, or a *row
        source* (``shape``, ``dtype``, ``ndim``, ``nbytes``; ``[a:b]`` and
        ``[rows]`` give host arrays) that copies only the rows written, a
        bounded piece at a time (:mod:`numbadam._statedir`)."""

    def copy(self, arr: Any) -> Any:
        """A new array of ``arr``'s shape and dtype holding its values, on its
        device (a gradient that shares memory with what the step writes)."""

    def assign(self, dst: Any, value: np.ndarray) -> None:
        """Copy a host array of ``dst``'s shape into ``dst``, in place."""

    def sumsq(self, grad: Any, clipvalue: Optional[float]) -> float:
        """``sum(clip(grad, -clipvalue, clipvalue) ** 2)`` in float64 over every
        element of a C-contiguous ``grad`` (a work item's ``grad`` or
        ``values``), deterministic whatever the thread count (no clipping for
        ``None``)."""

    def accumulate(self, acc: Any, grad: Any, first: bool) -> None:
        """``acc = 0 + grad`` (``first``) or ``acc += grad`` in place: an
        accumulating call of gradient accumulation (``grad`` a work item's 1-D
        gradient)."""

    def keep_slices(self, work: SparseWork) -> Tuple[np.ndarray, Any]:
        """Owned copies of an accumulating call's IndexedSlices, kept until the
        applying call: ``(indices on the host, values on this device)``."""

    def mean_rows(
        self, indices: List[Any], values: List[Any], steps: int
    ) -> Tuple[np.ndarray, Any]:
        """``(unique int64 indices on the host, ascending; mean rows on this
        device)`` of an accumulation cycle's slices, listed in call order: each
        index's rows added in that order from zero in the compute dtype,
        divided by ``steps``, rounded once to the values' dtype (the same bits
        on every backend)."""

    def ema_step(
        self, work: Any, ema: Average, rows: Optional[np.ndarray] = None
    ) -> None:
        """Move the average of :data:`Average` ``ema`` towards the variable of
        the work item ``work`` without a step (an accumulating call with
        ``use_ema``), over every element, or over the unique host int64
        ``rows`` of the first axis only; on an overwrite step the variable
        takes the average."""

    def dense_step(
        self,
        work: DenseWork,
        m: Any,
        v: Any,
        vhat: Optional[Any],
        coef: AdamCoefficients,
        transform: Transform,
        wd: Decay = None,
        acc: Any = None,
        ema: Average = None,
    ) -> None:
        """One fused Adam pass over a dense pair, its gradient transformed by
        ``transform`` (see :data:`Transform`), decayed first by ``wd`` (see
        :data:`Decay`), its average moved by ``ema`` (:data:`Average`). With
        ``acc = (accumulator, N)`` (the applying call of gradient
        accumulation) the gradient is ``(grad + accumulator) / N``. A ``v``
        (and ``vhat``) of another shape than ``m`` holds one value per row of
        the variable (``second_moment="row"``): the row-wise step."""

    def sparse_step(
        self,
        work: SparseWork,
        m: Any,
        v: Any,
        vhat: Optional[Any],
        coef: AdamCoefficients,
        transform: Transform,
        lazy: bool = False,
        wd: Decay = None,
        ema: Average = None,
        dirty: Optional[np.ndarray] = None,
    ) -> None:
        """One fused Adam pass over an IndexedSlices pair (``lazy``: only the
        rows with a gradient change), its values transformed by ``transform``
        before duplicates are summed; ``wd`` (:data:`Decay`) decays every row
        first (``lazy``: the rows with a gradient); ``ema`` (:data:`Average`)
        moves every row's average (``lazy``: the rows with a gradient);
        ``dirty``, a uint8 mask of the table's rows from :meth:`row_mask`,
        gets a 1 for each row a lazy step changes (lazy steps only; None
        elsewhere)."""
