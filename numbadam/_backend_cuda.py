"""The CUDA backend: validation and launches of the ``@cuda.jit`` kernels.

Imported by :func:`numbadam._dispatch.backend_for` the first time it sees a
device array, never by ``import numbadam``. It implements
:class:`numbadam._backend.Backend` for variables that expose
``__cuda_array_interface__`` (Numba device arrays, CuPy arrays, PyTorch CUDA
tensors, ...) or ``__cuda_ndarray__`` (Numba's arrays, including the
simulator's, which expose only this one).

Policies
--------
Host and device
    A device variable takes device gradients only: a host gradient (NumPy
    array, list, scalar) or host ``IndexedSlices.values`` raise ``TypeError``
    naming the variable, as the CPU backend does for a device gradient. Nothing
    is copied behind the caller's back. The exception is
    ``IndexedSlices.indices``: k integers, they may be a host array (checked on
    the host, then copied to the device once) or a device array (int32 or
    int64; range-checked on the device, only the min and max come back).
Layout
    C-contiguous arrays are used in place. A strided device view (a column
    slice, a transpose; up to 4-D, positive strides) is staged like the CPU
    backend stages a NumPy view: gathered into a contiguous device copy,
    stepped, and scattered back (two extra passes over the variable). A
    strided gradient is gathered likewise. A gradient of another floating
    dtype that casts ``same_kind`` to the variable's is cast on the device
    (one extra pass), as the CPU backend casts on the host; device indices of
    an integer dtype other than int32/int64 are cast to int64 on the device.
    A gradient (or IndexedSlices values) overlapping its variable in place is
    copied on the device first, as the CPU backend does.
State
    Slots are Numba device arrays on the current device, whatever the
    variable's array type (a CuPy or PyTorch variable gets Numba slots). The
    optimizer's ``iterations`` stays on the host: the per-step scalars are
    computed there.
Streams
    Kernels run on the default stream. Foreign arrays are wrapped with
    :func:`numba.cuda.as_cuda_array`, which synchronises their stream.
Host syncs
    A step with ``clipnorm`` copies back one float64 (the sum of squares); a
    sparse gradient with device indices copies back their min and max during
    validation. The gradient itself never leaves the device.
"""

from __future__ import annotations

from typing import Any, List, Optional, Tuple

import numpy as np

from . import _config
from ._backend import (
    INDEX_DTYPES,
    Average,
    Decay,
    DenseWork,
    SparseWork,
    Transform,
    cast_gradient_dtype,
    check_float_dtype,
    check_index_dtype,
    check_index_range,
    check_slices_shapes,
    compute_dtype,
    is_device_array,
    transform_scalars,
)
from ._backend_cuda_arrays import (
    INSTALL_HINT,
    CudaArrays,
    cuda,
    typed,
    typed_decay,
    typed_ema,
)
from ._types import AdamCoefficients, IndexedSlices

__all__ = ["CUDABackend", "INSTALL_HINT"]

_INT64_MIN = np.iinfo(np.int64).min
_INT64_MAX = np.iinfo(np.int64).max

class CUDABackend(CudaArrays):
    """Backend for CUDA arrays: the ``@cuda.jit`` kernels of ``kernels.cuda``."""

    name = "cuda"

    def __init__(self) -> None:
        from .kernels import cuda as kernels  # compiles lazily, per dtype

        self._k = kernels
        self._ready: dict = {}  # (kernel, dtype char or None, amsgrad) -> kernel
        self._rows: Any = None  # the row-wise launches, on first use

    # -- validation -----------------------------------------------------------

    def _variable(self, var: Any, label: Any):
        if not is_device_array(var):
            raise TypeError(
                f"{label} is a {type(var).__name__}, not an array exposing "
                "__cuda_array_interface__ (or a numpy.ndarray)"
            )
        cai = getattr(var, "__cuda_array_interface__", None)
        if cai is not None and cai.get("data", (0, False))[1]:
            raise ValueError(f"{label} is read-only; Adam updates variables in place")
        d = self._wrap(var)
        check_float_dtype(d.dtype, label)
        if not d.is_c_contiguous():
            self._view4(d, label, "", writable=True)  # raises if it cannot be staged
        return d

    def check_variable(self, var: Any, label: Any) -> None:
        self._variable(var, label)

    def prepare_dense(self, var: Any, grad: Any, label: Any) -> DenseWork:
        d = self._variable(var, label)
        dtype = np.dtype(d.dtype)
        g = self._device_float(grad, label, "gradient")
        cast_gradient_dtype(g.dtype, dtype, label)
        if tuple(g.shape) != tuple(d.shape):
            raise ValueError(
                f"gradient of {label} has shape {tuple(g.shape)}, the variable "
                f"{tuple(d.shape)}"
            )
        g = self._cast(self._contiguous(g, label, "gradient of"), dtype)
        flat, staged = self._variable_flat(d, label)
        g = self._unaliased(g, flat, staged)
        return DenseWork(var, flat, g, staged, label)

    def prepare_sparse(self, var: Any, grad: IndexedSlices, label: Any) -> SparseWork:
        d = self._variable(var, label)
        dtype = np.dtype(d.dtype)
        shape = tuple(d.shape)
        idx = self._indices(grad.indices, label)
        vals = self._device_float(grad.values, label, "IndexedSlices values")
        cast_gradient_dtype(vals.dtype, dtype, label)
        check_slices_shapes(
            label, shape, grad.dense_shape, tuple(idx.shape), tuple(vals.shape)
        )
        k = int(idx.shape[0])
        idx = self._checked_indices(self._device_indices(idx, label), shape[0], label)
        width = int(np.prod(shape[1:], dtype=np.int64))
        vals = self._contiguous(vals, label, "IndexedSlices values of")
        vals = self._cast(vals.reshape(k, width), dtype)
        flat, staged = self._variable_flat(d, label)
        vals = self._unaliased(vals, flat, staged)
        return SparseWork(var, flat, idx, vals, width, staged, label)

    def _indices(self, indices: Any, label: Any):
        """The indices as a wrapped device array or a host array (dtype checked)."""
        idx = self._wrap(indices) if is_device_array(indices) else np.asarray(indices)
        check_index_dtype(idx.dtype, label)
        return idx

    def _device_indices(self, idx: Any, label: Any):
        """Device indices as C-contiguous int32/int64 (others cast on the device)."""
        if not is_device_array(idx):
            return idx
        if not idx.is_c_contiguous():
            raise ValueError(
                f"IndexedSlices indices of {label} are a non-contiguous CUDA array"
            )
        dt = np.dtype(idx.dtype)
        if dt not in INDEX_DTYPES:  # e.g. uint16: to int64, on the device
            out = cuda.device_array(int(idx.shape[0]), np.int64)
            if out.shape[0]:
                kern = self._kernel(self._k.index_cast_cuda, dt)
                self._launch(kern, int(idx.shape[0]), idx, out)
            idx = out
        return idx

    def _checked_indices(self, idx: Any, nrows: int, label: Any):
        """Range-check ``idx``; return it as a device int32/int64 array."""
        k = int(idx.shape[0])
        if isinstance(idx, np.ndarray):
            if k:
                check_index_range(int(idx.min()), int(idx.max()), nrows, label)
            if idx.dtype not in INDEX_DTYPES:
                idx = idx.astype(np.int64)
            return cuda.to_device(np.ascontiguousarray(idx))
        if k:
            out = cuda.to_device(np.array([_INT64_MAX, _INT64_MIN], np.int64))
            kern = self._kernel(self._k.index_bounds_cuda, np.dtype(idx.dtype))
            self._launch(kern, k, idx, out)
            lo, hi = out.copy_to_host()
            check_index_range(int(lo), int(hi), nrows, label)
        return idx

    # -- state ----------------------------------------------------------------

    def zeros_like(self, var: Any):
        return self.zeros(tuple(self._wrap(var).shape), var)

    def zeros(self, shape: Any, like: Any):
        dtype = np.dtype(self._wrap(like).dtype)
        out = cuda.device_array(tuple(shape), dtype)
        n = int(np.prod(shape, dtype=np.int64))
        if n:
            kern = self._kernel(self._k.fill_cuda, dtype)
            self._launch(kern, n, self._flat(out), 0.0)
        return out

    def row_mask(self, nrows: int) -> Any:
        return cuda.to_device(np.zeros(nrows, np.uint8))

    def to_host(self, arr: Any) -> np.ndarray:
        return np.asarray(self._wrap(arr).copy_to_host())

    def host_rows(self, arr: Any) -> Any:
        """What a state-dir save reads of ``arr``: a :class:`DeviceRows` whose
        rows come to the host on demand (a C-contiguous array of 1-D or more),
        else a host copy."""
        d = self._wrap(arr)
        if (
            len(d.shape) == 0
            or not d.is_c_contiguous()
            or np.dtype(d.dtype) not in self._k.STORAGE_DTYPES
        ):
            return self.to_host(arr)
        from ._backend_cuda_rows import DeviceRows

        return DeviceRows(self, d)

    def take_rows(self, src: Any, rows: np.ndarray) -> np.ndarray:
        """Host copy of the rows ``rows`` (in range, int64 on the host) of the
        2-D device array ``src``: gathered on the device, then copied."""
        out = cuda.device_array((rows.shape[0], int(src.shape[1])), src.dtype)
        kern = self._kernel(self._k.take_rows_cuda, np.dtype(src.dtype))
        self._launch(kern, int(out.shape[0] * out.shape[1]), src,
                     cuda.to_device(rows), out)  # fmt: skip
        return np.asarray(out.copy_to_host())

    def copy(self, arr: Any) -> Any:
        out = cuda.device_array(tuple(arr.shape), np.dtype(arr.dtype))
        out.copy_to_device(arr)
        return out

    def assign(self, dst: Any, value: Any) -> None:
        d = self._wrap(dst)
        host = np.ascontiguousarray(
            np.asarray(value, dtype=d.dtype).reshape(tuple(d.shape))
        )
        d.copy_to_device(host)

    # -- steps ----------------------------------------------------------------

    def sumsq(
        self, grad: Any, clipvalue: Optional[float] = None, acc: Any = None
    ) -> float:
        dtype = np.dtype(grad.dtype)
        lo, hi, _, _ = transform_scalars(dtype, clipvalue, None, None)
        if acc is not None:  # the norm of the mean (g + acc) / steps (#13)
            return self._sumsq_accum(grad, dtype, lo, hi, acc)
        return self._sumsq(self._flat(self._wrap(grad)), dtype, lo, hi)

    def _sumsq_accum(self, grad: Any, dtype: np.dtype, lo, hi, acc: Any) -> float:
        flat = self._flat(self._wrap(grad))
        a, steps = acc
        n = int(flat.shape[0])
        blocks, tpb = self._dims(n)
        partials = cuda.device_array(blocks, np.float64)
        shared = self._shared(tpb)
        kern = self._kernel(self._k.sum_squares_accum_cuda, dtype)
        c = compute_dtype(dtype).type
        self._configure(kern, blocks, tpb, shared)(
            flat, self._flat(self._wrap(a)), c(steps), lo, hi, partials
        )
        out = cuda.device_array(1, np.float64)
        kern = self._kernel(self._k.sum_partials_cuda)
        self._configure(kern, 1, tpb, shared)(partials, out)
        return float(out.copy_to_host()[0])

    def accumulate(self, acc: Any, grad: Any, first: bool) -> None:
        """``acc = 0 + grad`` (``first``) or ``acc += grad`` (gradient
        accumulation); ``grad`` is a work item's 1-D gradient."""
        n = int(grad.shape[0])
        if n == 0:
            return
        kern = self._kernel(self._k.accumulate_cuda, np.dtype(grad.dtype))
        self._launch(kern, n, self._flat(self._wrap(acc)), grad, bool(first))

    def keep_slices(self, work: SparseWork) -> Tuple[np.ndarray, Any]:
        """An accumulating call's IndexedSlices, kept until the applying call
        (:meth:`mean_rows`): the indices copied to the host (k integers), the
        values to a new device array (they never leave the device)."""
        return self.to_host(work.indices), self.copy(work.values)

    def mean_rows(
        self, indices: List[Any], values: List[Any], steps: int
    ) -> Tuple[np.ndarray, Any]:
        """``(unique indices, mean rows)`` of an accumulation cycle's slices,
        as :meth:`numbadam._backend_cpu.CPUBackend.mean_rows`, bit for bit.

        ``indices`` are host arrays, ``values`` device arrays (a host one is
        copied to the device). The indices are grouped on the host (a stable
        sort of k integers); one kernel (:func:`mean_rows_cuda`) adds each
        index's rows in call order and divides. Returns the int64 indices
        (host, ascending) and a ``(u, ...)`` device array of the values'
        dtype.
        """
        idx = np.concatenate([np.asarray(i, np.int64) for i in indices])
        parts = [
            cuda.to_device(np.ascontiguousarray(v)) if isinstance(v, np.ndarray)
            else self._wrap(v)
            for v in values
        ]  # fmt: skip
        k = int(idx.shape[0])
        order = np.argsort(idx, kind="stable")
        keys = idx[order]
        first = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
        uniq = keys[first] if k else keys
        tail = tuple(parts[0].shape[1:])
        dtype = np.dtype(parts[0].dtype)
        out = cuda.device_array((uniq.shape[0],) + tail, dtype)
        width = int(np.prod(tail, dtype=np.int64))
        n = int(uniq.shape[0]) * width
        if n == 0:
            return uniq, out
        if len(parts) == 1:
            vals = parts[0].reshape(k, width)
        else:  # the cycle's values, concatenated on the device
            vals = cuda.device_array((k, width), dtype)
            at = 0
            for p in parts:
                rows = int(p.shape[0])
                if rows:
                    vals[at : at + rows].copy_to_device(p.reshape(rows, width))
                at += rows
        starts = np.append(first, k).astype(np.int64)
        kern = self._kernel(self._k.mean_rows_cuda, dtype)
        c = compute_dtype(dtype).type
        self._launch(
            kern, n, vals, cuda.to_device(order.astype(np.int64)),
            cuda.to_device(starts), c(steps), out.reshape(uniq.shape[0], width),
        )  # fmt: skip
        return uniq, out

    def _sumsq(self, flat: Any, dtype: np.dtype, lo, hi) -> float:
        """``sum(clip(flat, lo, hi)**2)`` in float64: fixed block partials, then
        one block adds them in a fixed order. Only the sum comes back."""
        n = int(flat.shape[0])
        blocks, tpb = self._dims(n)
        partials = cuda.device_array(blocks, np.float64)
        shared = self._shared(tpb)
        kern = self._kernel(self._k.sum_squares_cuda, dtype)
        self._configure(kern, blocks, tpb, shared)(flat, lo, hi, partials)
        out = cuda.device_array(1, np.float64)
        kern = self._kernel(self._k.sum_partials_cuda)
        self._configure(kern, 1, tpb, shared)(partials, out)
        return float(out.copy_to_host()[0])

    def _sorted(self, indices: Any) -> Tuple[Any, Any]:
        """``(keys, pos)``: ``indices`` as int64, stable-sorted, and their positions.

        Tiles of ``CUDA_THREADS_PER_BLOCK`` are rank-sorted in shared memory,
        then adjacent runs are merged (one launch per doubling). Arrays have at
        least one element (unused when ``indices`` is empty).
        """
        k = int(indices.shape[0])
        keys = cuda.device_array(max(k, 1), np.int64)
        pos = cuda.device_array(max(k, 1), np.int64)
        if k == 0:
            return keys, pos
        tpb = self._threads()
        ntiles = -(-k // tpb)
        blocks = max(1, min(int(_config.CUDA_MAX_BLOCKS), ntiles))
        sort = self._kernel(self._k.sort_tiles_cuda, np.dtype(indices.dtype))
        self._configure(sort, blocks, tpb, self._shared(tpb))(indices, keys, pos, k)
        width = tpb
        if width < k:
            merge = self._kernel(self._k.merge_runs_cuda)
            keys2 = cuda.device_array(k, np.int64)
            pos2 = cuda.device_array(k, np.int64)
            while width < k:
                self._launch(merge, k, keys, pos, keys2, pos2, width, k)
                keys, keys2, pos, pos2 = keys2, keys, pos2, pos
                width *= 2
        return keys, pos

    def ema_step(
        self, work: Any, ema: Average, rows: Optional[np.ndarray] = None
    ) -> None:
        """The EMA-only pass of an accumulating call, as
        :meth:`numbadam._backend_cpu.CPUBackend.ema_step` (``rows``: unique
        int64 rows on the host, or None)."""
        flat = work.flat
        n = int(flat.shape[0])
        if n == 0:
            return
        dtype = np.dtype(flat.dtype)
        avg, mom, omm, overwrite = typed_ema(ema, dtype, self._flat)
        if rows is None:
            kern = self._kernel(self._k.ema_dense_cuda, dtype)
            self._launch(kern, n, flat, avg, mom, omm, overwrite)
        elif rows.shape[0]:
            shape = (n // work.width, work.width)
            kern = self._kernel(self._k.ema_rows_cuda, dtype)
            self._launch(
                kern, int(rows.shape[0]) * work.width, flat.reshape(shape),
                avg.reshape(shape),
                cuda.to_device(np.ascontiguousarray(rows, np.int64)),
                mom, omm, overwrite,
            )  # fmt: skip
        if overwrite:
            self._writeback(work)

    def dense_step(
        self,
        work: DenseWork,
        m: Any,
        v: Any,
        vhat: Optional[Any],
        coef: AdamCoefficients,
        tr: Transform,
        wd: Decay = None,
        acc: Any = None,
        ema: Average = None,
    ) -> None:
        n = int(work.flat.shape[0])
        if n == 0:
            return
        dtype = np.dtype(work.flat.dtype)
        coef = typed(coef, dtype)
        dec = typed_decay(wd, dtype)
        if tuple(v.shape) != tuple(m.shape):  # one second moment per row
            avg = typed_ema(ema, dtype, self._flat)
            self._rowwise().dense_step(
                self, work, m, v, vhat, coef, tr, dec, acc, avg
            )
            return
        mf, vf = self._flat(m), self._flat(v)
        slot = () if vhat is None else (self._flat(vhat),)
        dec = typed_decay(wd, dtype)
        if acc is not None:  # the applying call of gradient accumulation
            a, steps = acc
            kern = self._kernel(
                self._k.adam_dense_accum_cuda, dtype, vhat is not None, wd is not None,
                ema is not None,
            )  # fmt: skip
            c = compute_dtype(dtype).type
            af = self._flat(self._wrap(a))
            self._launch(
                kern, n, work.flat, mf, vf, slot, work.grad, af, c(steps), *coef,
                *tr, dec, typed_ema(ema, dtype, self._flat),
            )  # fmt: skip
            self._writeback(work)
            return
        kern = self._kernel(
            self._k.adam_dense_cuda, dtype, vhat is not None, wd is not None,
            ema is not None,
        )  # fmt: skip
        avg = typed_ema(ema, dtype, self._flat)
        self._launch(kern, n, work.flat, mf, vf, slot, work.grad, *coef, *tr, dec, avg)
        self._writeback(work)

    def sparse_step(
        self,
        work: SparseWork,
        m: Any,
        v: Any,
        vhat: Optional[Any],
        coef: AdamCoefficients,
        tr: Transform,
        lazy: bool = False,
        wd: Decay = None,
        ema: Average = None,
        dirty: Any = None,
    ) -> None:
        if dirty is not None and not lazy:  # (TF's rule: callers mark every row)
            raise TypeError("only lazy steps mark a row mask")
        marks = () if dirty is None else (self._flat(dirty),)
        n = int(work.flat.shape[0])
        if n == 0:
            return
        dtype = np.dtype(work.flat.dtype)
        k = int(work.indices.shape[0])
        coef = typed(coef, dtype)
        if tuple(v.shape) != tuple(m.shape):  # one second moment per row
            dec = typed_decay(wd, dtype)
            avg = typed_ema(ema, dtype, self._flat)
            self._rowwise().sparse_step(
                self, work, m, v, vhat, coef, tr, lazy, dec, avg, marks
            )
            return
        keys, pos = self._sorted(work.indices)
        values = work.values
        if k == 0:
            if lazy:
                return
            values = cuda.device_array((1, work.width), dtype)  # never read
        mf, vf = self._flat(m), self._flat(v)
        slot = () if vhat is None else (self._flat(vhat),)
        args = (typed_decay(wd, dtype), typed_ema(ema, dtype, self._flat))
        if lazy:
            kern = self._kernel(
                self._k.adam_sparse_lazy_cuda, dtype, vhat is not None,
                wd is not None, ema is not None, len(marks) > 0,
            )  # fmt: skip
            args += (marks,)
        else:
            kern = self._kernel(
                self._k.adam_sparse_cuda, dtype, vhat is not None, wd is not None,
                ema is not None,
            )  # fmt: skip
        items = k * work.width if lazy else n
        self._launch(
            kern, items, work.flat, mf, vf, slot, keys, pos, k, values, *coef, *tr,
            *args,
        )  # fmt: skip
        self._writeback(work)

    def _rowwise(self) -> Any:
        # the row-wise second moment's launches (``v`` of one value per row)
        if self._rows is None:
            from ._backend_cuda_rowwise import RowwiseCUDA

            self._rows = RowwiseCUDA()
        return self._rows
