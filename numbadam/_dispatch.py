"""Validation, backend choice and kernel launch for one Adam step.

The optimizer hands this layer ``(variable, gradient)`` pairs. For each pair the
backend owning the variable (NumPy arrays: CPU; anything exposing
``__cuda_array_interface__`` or ``__cuda_ndarray__``: CUDA) first *prepares* a
work item: every check happens there and nothing is written. Only once every
pair of a call is prepared does the optimizer create slots and run the steps, so
bad input never leaves a variable or slot half-updated.

A backend object has this interface (the CUDA backend in ``_dispatch_cuda``
implements the same):

``name``
    ``"cpu"`` or ``"cuda"``.
``check_variable(var, label)``
    Raise ``TypeError``/``ValueError`` if ``var`` cannot be optimised.
``prepare_dense(var, grad, label) -> DenseWork``
``prepare_sparse(var, grad: IndexedSlices, label) -> SparseWork``
    Validate and canonicalise a gradient (no mutation).
``zeros_like(var)``
    A new zero slot with ``var``'s shape and dtype, on ``var``'s device.
``to_host(arr) -> numpy.ndarray``
    A host copy.
``assign(dst, host_value)``
    Copy a host array of ``dst``'s shape into ``dst``, in place.
``dense_step(work, m, v, vhat, coef, clipvalue, clipnorm)``
``sparse_step(work, m, v, vhat, coef, clipvalue, clipnorm, lazy=False)``
    Run the fused kernels (``vhat`` is ``None`` without AMSGrad; ``lazy``
    updates only the rows with a gradient).
"""

from __future__ import annotations

import math
from typing import Any, Optional

import numpy as np

from . import _config
from ._types import AdamCoefficients, IndexedSlices

__all__ = [
    "is_device_array",
    "backend_for",
    "compute_dtype",
    "SUPPORTED_DTYPES",
    "CPUBackend",
    "DenseWork",
    "SparseWork",
]

SUPPORTED_DTYPES = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))  # what the kernels take
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


def cast_gradient_dtype(gdtype: Any, vdtype: Any, label: str) -> None:
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
    the variable's dtype), ``width``, ``staged``, ``label``.
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
        self.maxkey = maxkey  # the largest index, when the backend knows it


def _kernel_view(a: np.ndarray) -> np.ndarray:
    # Numba's CPU target has no float16: hand the kernels the raw bits.
    return a.view(np.uint16) if a.dtype.char == "e" else a


class CPUBackend:
    """Backend for NumPy arrays: the ``@njit(parallel=True)`` kernels."""

    name = "cpu"

    def __init__(self) -> None:
        from .kernels import cpu  # numba compiles lazily, per dtype, on first use

        self._k = cpu
        self._ready: dict = {}  # (kernel name, dtype char) -> compiled dispatcher
        self._identity: dict = {}  # dtype char -> (lo, hi, mul, div) of no clipping

    def _kernel(self, name: str, dtype: np.dtype):
        kern = self._ready.get((name, dtype.char))
        if kern is None:
            kern = getattr(self._k, name)
            self._k.ensure_compiled(kern, dtype)
            self._ready[(name, dtype.char)] = kern
        return kern

    def _transform(self, dtype, clipvalue, clipnorm, grad_flat):
        # (lo, hi, mul, div) of the clipping, the norm taken over grad_flat
        if clipvalue is None and clipnorm is None:
            tr = self._identity.get(dtype.char)
            if tr is None:
                tr = self._identity[dtype.char] = transform_scalars(
                    dtype, None, None, None
                )
            return tr
        sumsq = None
        if clipnorm is not None:
            lo, hi, _, _ = transform_scalars(dtype, clipvalue, None, None)
            sumsq = self._sumsq(grad_flat, lo, hi)
        return transform_scalars(dtype, clipvalue, clipnorm, sumsq)

    # -- validation ---------------------------------------------------------

    def check_variable(self, var: Any, label: str) -> None:
        if (
            type(var) is np.ndarray
            and var.dtype in SUPPORTED_DTYPES
            and var.flags.writeable
        ):
            return  # the common case, cheaply (native float16/32/64 only)
        if not isinstance(var, np.ndarray):
            raise TypeError(
                f"{label} is a {type(var).__name__}, not a numpy.ndarray "
                "(or an array exposing __cuda_array_interface__)"
            )
        check_float_dtype(var.dtype, label)
        if not var.flags.writeable:
            raise ValueError(f"{label} is read-only; Adam updates variables in place")

    def _gradient_array(self, grad: Any, label: str, what: str) -> np.ndarray:
        if is_device_array(grad):
            raise TypeError(
                f"{what} of {label} is a CUDA array but the variable is a NumPy "
                "array; pass both on the same device"
            )
        try:
            arr = np.asarray(grad)
        except Exception as exc:  # ragged lists and the like
            raise TypeError(f"{what} of {label} is not an array: {exc}") from None
        if arr.dtype.kind != "f":
            raise TypeError(
                f"{what} of {label} has dtype {arr.dtype}; expected a floating dtype"
            )
        return arr

    def prepare_dense(self, var: np.ndarray, grad: Any, label: str) -> DenseWork:
        self.check_variable(var, label)
        if type(var) is not np.ndarray:  # a subclass (np.matrix stays 2-D): its memory
            var = var.view(np.ndarray)
        if type(grad) is np.ndarray and grad.dtype is var.dtype:
            g = grad
        else:
            g = self._gradient_array(grad, label, "gradient")
            cast_gradient_dtype(g.dtype, var.dtype, label)
        if g.shape != var.shape:
            raise ValueError(
                f"gradient of {label} has shape {g.shape}, the variable {var.shape}"
            )
        if g.dtype is not var.dtype or not g.flags.c_contiguous:
            g = np.ascontiguousarray(g, dtype=var.dtype)
        if g.ndim != 1:
            g = g.reshape(-1)
        if var.flags.c_contiguous:
            return DenseWork(
                var, var if var.ndim == 1 else var.reshape(-1), g, False, label
            )
        return DenseWork(var, np.ascontiguousarray(var).reshape(-1), g, True, label)

    def prepare_sparse(
        self, var: np.ndarray, grad: IndexedSlices, label: str
    ) -> SparseWork:
        self.check_variable(var, label)
        if type(var) is not np.ndarray:
            var = var.view(np.ndarray)
        if var.ndim == 0:
            raise ValueError(f"{label} is 0-d; an IndexedSlices gradient needs rows")
        if grad.dense_shape is not None and tuple(grad.dense_shape) != var.shape:
            raise ValueError(
                f"IndexedSlices for {label} has dense_shape {tuple(grad.dense_shape)}"
                f", the variable {var.shape}"
            )
        idx = self._gradient_indices(grad.indices, label)
        vals = self._gradient_array(grad.values, label, "IndexedSlices values")
        if vals.dtype is not var.dtype:
            cast_gradient_dtype(vals.dtype, var.dtype, label)
        if vals.ndim == 0 or vals.shape[0] != idx.shape[0]:
            raise ValueError(
                f"IndexedSlices for {label}: {idx.shape[0]} indices but values of "
                f"shape {vals.shape}"
            )
        if vals.shape[1:] != var.shape[1:]:
            raise ValueError(
                f"IndexedSlices for {label}: rows of shape {vals.shape[1:]}, the "
                f"variable's rows {var.shape[1:]}"
            )
        nrows = var.shape[0]
        hi = 0
        if idx.dtype in _INDEX_DTYPES and not idx.flags.c_contiguous:
            idx = np.ascontiguousarray(idx)  # (a strided view: the kernels take C)
        if idx.size:
            if idx.dtype in _INDEX_DTYPES:
                lo, hi = self._kernel("index_range_cpu", idx.dtype)(idx)
            else:  # other integer types, uint64 beyond int64 included
                lo, hi = idx.min(), idx.max()
            if lo < 0:
                raise IndexError(f"IndexedSlices for {label}: negative index {lo}")
            if hi >= nrows:
                raise IndexError(
                    f"IndexedSlices for {label}: index {hi} out of range for "
                    f"{nrows} rows"
                )
        if idx.dtype not in _INDEX_DTYPES:
            idx = idx.astype(np.int64)  # in range, so exact
        width = math.prod(var.shape[1:])
        if vals.dtype is not var.dtype or not vals.flags.c_contiguous:
            vals = np.ascontiguousarray(vals, dtype=var.dtype)
        if vals.ndim != 2:
            vals = vals.reshape(idx.shape[0], width)
        staged = not var.flags.c_contiguous
        flat = np.ascontiguousarray(var).reshape(-1) if staged else var.reshape(-1)
        return SparseWork(var, flat, idx, vals, width, staged, label, int(hi))

    def _gradient_indices(self, indices: Any, label: str) -> np.ndarray:
        if is_device_array(indices):
            raise TypeError(
                f"IndexedSlices indices of {label} are a CUDA array but the "
                "variable is a NumPy array"
            )
        idx = np.asarray(indices)
        if idx.dtype.kind not in "iu":
            raise TypeError(
                f"IndexedSlices indices of {label} have dtype {idx.dtype}; "
                "expected integers"
            )
        if idx.ndim != 1:
            raise ValueError(
                f"IndexedSlices indices of {label} have shape {idx.shape}; expected 1-D"
            )
        return idx

    # -- state --------------------------------------------------------------

    def zeros_like(self, var: np.ndarray) -> np.ndarray:
        return np.zeros(var.shape, var.dtype)

    def to_host(self, arr: Any) -> np.ndarray:
        return np.array(arr, copy=True)

    def assign(self, dst: np.ndarray, value: np.ndarray) -> None:
        dst[...] = value

    # -- steps --------------------------------------------------------------

    def _sumsq(self, flat: np.ndarray, lo, hi) -> float:
        k = self._kernel("sum_squares_cpu", flat.dtype)
        return k(_kernel_view(flat), lo, hi, _config.NORM_CHUNKS)

    def dense_step(
        self,
        work: DenseWork,
        m: np.ndarray,
        v: np.ndarray,
        vhat: Optional[np.ndarray],
        coef: AdamCoefficients,
        clipvalue: Optional[float],
        clipnorm: Optional[float],
    ) -> None:
        x, g = work.flat, work.grad
        n = x.shape[0]
        if n == 0:
            return
        dtype = x.dtype
        tr = self._transform(dtype, clipvalue, clipnorm, g)
        mf = m if m.ndim == 1 else m.reshape(-1)
        vf = v if v.ndim == 1 else v.reshape(-1)
        if dtype.char == "e":
            x, g, mf, vf = (a.view(np.uint16) for a in (x, g, mf, vf))
        serial = n <= _config.CPU_SERIAL_MAX
        if vhat is None:
            if serial:
                self._kernel("adam_dense_run_cpu", dtype)(x, g, mf, vf, *coef, *tr)
            else:
                k = self._kernel("adam_dense_cpu", dtype)
                k(x, g, mf, vf, *coef, *tr, _config.CPU_BLOCK)
        else:
            hf = _kernel_view(vhat.reshape(-1))
            if serial:
                k = self._kernel("amsgrad_dense_run_cpu", dtype)
                k(x, g, mf, vf, hf, *coef, *tr)
            else:
                k = self._kernel("amsgrad_dense_cpu", dtype)
                k(x, g, mf, vf, hf, *coef, *tr, _config.CPU_BLOCK)
        if work.staged:
            work.var[...] = work.flat.reshape(work.var.shape)

    def sparse_step(
        self,
        work: SparseWork,
        m: np.ndarray,
        v: np.ndarray,
        vhat: Optional[np.ndarray],
        coef: AdamCoefficients,
        clipvalue: Optional[float],
        clipnorm: Optional[float],
        lazy: bool = False,
    ) -> None:
        if work.flat.size == 0:
            return
        dtype = work.flat.dtype
        tr = self._transform(dtype, clipvalue, clipnorm, work.values.reshape(-1))
        k = work.indices.shape[0]
        maxkey = work.maxkey
        if maxkey is None:
            maxkey = int(work.indices.max()) if k else 0
        x = _kernel_view(work.flat)
        mf, vf = _kernel_view(m.reshape(-1)), _kernel_view(v.reshape(-1))
        vals = _kernel_view(work.values)
        hf = None if vhat is None else _kernel_view(vhat.reshape(-1))
        nt = _config.get_num_threads()  # (the workers unique rows are dealt to)
        if lazy:  # one fused pass over the unique rows: no summed-rows buffer
            if hf is None:
                kern = self._kernel("adam_lazy_sparse_cpu", dtype)
                kern(x, mf, vf, work.indices, vals, *tr, maxkey, *coef, nt)
            else:
                kern = self._kernel("amsgrad_lazy_sparse_cpu", dtype)
                kern(x, mf, vf, hf, work.indices, vals, *tr, maxkey, *coef, nt)
        else:  # sum duplicates, then one pass over the whole table
            uidx = np.empty(k, np.int64)
            uvals = np.empty((k, work.width), compute_dtype(dtype))
            dedup = self._kernel("sum_duplicate_rows_cpu", dtype)
            u = dedup(work.indices, vals, *tr, maxkey, uidx, uvals, nt)
            uidx, uvals = uidx[:u], uvals[:u]
            rows = _config.CPU_SPARSE_BLOCK_ROWS
            if hf is None:
                kern = self._kernel("adam_sparse_cpu", dtype)
                kern(x, mf, vf, uidx, uvals, *coef, rows)
            else:
                kern = self._kernel("amsgrad_sparse_cpu", dtype)
                kern(x, mf, vf, hf, uidx, uvals, *coef, rows)
        if work.staged:
            work.var[...] = work.flat.reshape(work.var.shape)


_CPU: Optional[CPUBackend] = None
_CUDA: Any = None


def backend_for(var: Any):
    """The backend that owns ``var``: CPU for NumPy arrays, CUDA for device arrays."""
    global _CPU, _CUDA
    if type(var) is np.ndarray and _CPU is not None:  # the common case, cheaply
        return _CPU
    if is_device_array(var):
        if _CUDA is None:
            from ._dispatch_cuda import CUDABackend  # imports numba.cuda lazily

            _CUDA = CUDABackend()
        return _CUDA
    if _CPU is None:
        _CPU = CPUBackend()
    return _CPU
