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

import warnings
from typing import Any, Optional, Tuple

import numpy as np

from . import _config
from ._backend import (
    INDEX_DTYPES,
    DenseWork,
    SparseWork,
    Average,
    Decay,
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
from ._overlap import overlaps
from ._types import AdamCoefficients, IndexedSlices

__all__ = ["CUDABackend", "INSTALL_HINT"]

INSTALL_HINT = (
    "numbadam's CUDA backend needs the optional numba-cuda package: "
    "pip install numbadam[cuda] (or pip install numba-cuda). It runs on an "
    "NVIDIA GPU, or without one under Numba's CUDA simulator "
    "(set NUMBA_ENABLE_CUDASIM=1 before numba is imported)."
)


def _import_numba_cuda():
    """``numba.cuda`` from numba-cuda, or one clear error saying what to install."""
    try:
        # numba-cuda itself: numba's deprecated built-in numba.cuda lacks what
        # the kernels use (numba.cuda.extending, libdevice)
        import numba_cuda  # noqa: F401
        from numba import cuda
        from numba.cuda import extending  # noqa: F401
    except ImportError as exc:
        raise ImportError(f"{INSTALL_HINT} ({exc})") from exc
    if not cuda.is_available():
        raise RuntimeError(
            "a CUDA array was given but no CUDA GPU is available "
            f"({cuda.cuda_error()}). {INSTALL_HINT}"
        )
    return cuda


cuda = _import_numba_cuda()

from numba import config as _numba_config  # noqa: E402  (after the check above)

_SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)

_INT64_MIN = np.iinfo(np.int64).min
_INT64_MAX = np.iinfo(np.int64).max
_MAX_STAGED_NDIM = 4
# numba-cuda warns below 128 blocks; small variables make small grids on purpose.
_FEW_BLOCKS = 128


def _typed(coef: AdamCoefficients, dtype: np.dtype) -> AdamCoefficients:
    # The per-step scalars as NumPy scalars of the compute dtype (they may come
    # as Python floats): CUDA kernels, and the simulator's Python arithmetic,
    # type their scalar arguments from the values passed.
    c = compute_dtype(dtype).type
    return AdamCoefficients(*(c(x) for x in coef))


def _typed_decay(wd: Any, dtype: np.dtype) -> tuple:
    # the kernels' weight-decay argument: () or (weight_decay, lr_t), typed
    if wd is None:
        return ()
    c = compute_dtype(dtype).type
    return (c(wd[0]), c(wd[1]))


def _typed_ema(ema: Any, dtype: np.dtype, flat: Any) -> tuple:
    # the kernels' EMA argument: () or (average, momentum, 1 - momentum,
    # overwrite), the average flat and the scalars typed
    if ema is None:
        return ()
    c = compute_dtype(dtype).type
    return (flat(ema[0]), c(ema[1]), c(ema[2]), bool(ema[3]))


class CUDABackend:
    """Backend for CUDA arrays: the ``@cuda.jit`` kernels of ``kernels.cuda``."""

    name = "cuda"

    def __init__(self) -> None:
        from .kernels import cuda as kernels  # compiles lazily, per dtype

        self._k = kernels
        self._ready: dict = {}  # (kernel, dtype char or None, amsgrad) -> kernel
        self._rows: Any = None  # the row-wise launches, on first use

    # -- launches -------------------------------------------------------------

    def _kernel(
        self,
        kernel: Any,
        dtype: Optional[np.dtype] = None,
        amsgrad=None,
        decay=None,
        ema=None,
    ) -> Any:
        """``kernel`` (of ``kernels.cuda``) compiled for ``dtype`` (and the Adam
        or AMSGrad variant, with or without weight decay), once."""
        key = (kernel, None if dtype is None else dtype.char, amsgrad, decay, ema)
        ready = self._ready.get(key)
        if ready is None:
            self._k.ensure_compiled(kernel, dtype, amsgrad, decay, ema)
            ready = self._ready[key] = kernel
        return ready

    def _threads(self) -> int:
        tpb = int(_config.CUDA_THREADS_PER_BLOCK)
        if not 1 <= tpb <= self._k.MAX_THREADS_PER_BLOCK:
            raise ValueError(
                f"numbadam._config.CUDA_THREADS_PER_BLOCK={tpb}; expected 1 to 1024"
            )
        return tpb

    def _dims(self, n: int) -> Tuple[int, int]:
        """``(blocks, threads)`` of a grid-stride launch over ``n`` items."""
        tpb = self._threads()
        blocks = max(1, min(int(_config.CUDA_MAX_BLOCKS), -(-n // tpb)))
        return blocks, tpb

    @staticmethod
    def _configure(kernel, blocks: int, tpb: int, shared: int = 0):
        # ``shared``: bytes of dynamic shared memory per block (0: none)
        if blocks >= _FEW_BLOCKS:
            return kernel[blocks, tpb, 0, shared]
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Grid size")
            return kernel[blocks, tpb, 0, shared]

    def _shared(self, tpb: int) -> int:
        return tpb * self._k.SHARED_BYTES_PER_THREAD

    def _launch(self, kernel, n: int, *args) -> None:
        blocks, tpb = self._dims(n)
        self._configure(kernel, blocks, tpb)(*args)

    # -- arrays ---------------------------------------------------------------

    @staticmethod
    def _wrap(x: Any):
        """A Numba device array viewing ``x`` (``x`` itself for Numba arrays)."""
        if getattr(x, "__cuda_ndarray__", False):
            return x
        if _SIMULATOR:
            raise TypeError(
                f"a {type(x).__name__} exposing __cuda_array_interface__ cannot be "
                "used under the CUDA simulator; use numba.cuda.to_device arrays"
            )
        return cuda.as_cuda_array(x)

    @staticmethod
    def _flat(d: Any):
        return d.reshape(int(np.prod(d.shape, dtype=np.int64)))

    @staticmethod
    def _view4(d: Any, label: Any, what: str, writable: bool = False):
        """``d`` as a 4-D strided view of the same memory (for gather/scatter)."""
        shape, strides = tuple(d.shape), tuple(d.strides)
        if (
            len(shape) > _MAX_STAGED_NDIM
            or any(st < 0 for st in strides)
            or (writable and any(st == 0 and n > 1 for st, n in zip(strides, shape)))
        ):
            raise ValueError(
                f"{what + ' ' if what else ''}{label} is a non-contiguous CUDA "
                f"array with strides "
                f"{strides}; the CUDA backend stages views of up to "
                f"{_MAX_STAGED_NDIM} dimensions with positive strides only: pass "
                "a C-contiguous array"
            )
        pad = _MAX_STAGED_NDIM - len(shape)
        shape4, strides4 = (1,) * pad + shape, (0,) * pad + strides
        if _SIMULATOR:
            from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

            return FakeCUDAArray(
                np.lib.stride_tricks.as_strided(d._ary, shape4, strides4)
            )
        from numba.cuda.cudadrv.devicearray import DeviceNDArray

        return DeviceNDArray(
            shape4, strides4, d.dtype, stream=d.stream, gpu_data=d.gpu_data
        )

    def _contiguous(self, d: Any, label: Any, what: str):
        """``d`` flattened: a view when C-contiguous, else a gathered copy."""
        if d.is_c_contiguous():
            return self._flat(d)
        dtype = np.dtype(d.dtype)
        view = self._view4(d, label, what)
        n = int(np.prod(d.shape, dtype=np.int64))
        out = cuda.device_array(n, dtype)
        if n:
            self._launch(self._kernel(self._k.gather_cuda, dtype), n, view, out)
        return out

    def _writeback(self, work: Any) -> None:
        """Scatter a staged variable's flat copy back into the user's view."""
        if work.staged:
            d = self._wrap(work.var)
            view = self._view4(d, work.label, "", writable=True)
            n = int(work.flat.shape[0])
            kern = self._kernel(self._k.scatter_cuda, np.dtype(d.dtype))
            self._launch(kern, n, work.flat, view)

    def _variable_flat(self, d: Any, label: Any) -> Tuple[Any, bool]:
        if d.is_c_contiguous():
            return self._flat(d), False
        self._view4(d, label, "", writable=True)  # raises if it cannot be staged
        return self._contiguous(d, label, ""), True

    def _device_float(self, x: Any, label: Any, what: str):
        if not is_device_array(x):
            raise TypeError(
                f"{what} of {label} is a host {type(x).__name__} but the variable "
                "is a CUDA array; move it to the variable's device first (e.g. "
                "numba.cuda.to_device(g)): numbadam does not copy gradients "
                "implicitly"
            )
        d = self._wrap(x)
        if np.dtype(d.dtype).kind != "f":
            raise TypeError(
                f"{what} of {label} has dtype {d.dtype}; expected a floating dtype"
            )
        return d

    def _unaliased(self, g: Any, flat: Any, staged: bool):
        """``g``, or a device copy of it where its memory overlaps ``flat``.

        The CPU backend's rule (NumPy's for ufuncs): as if the gradient had
        been copied first. The kernels' threads write the variable while others
        read the gradient; a gradient viewing the variable (a shifted slice,
        lazy IndexedSlices values viewing the table) would race. A staged
        variable is stepped in a copy, and a gathered or cast gradient is a
        copy, so those never alias.
        """
        return g if staged or not overlaps(g, flat) else self.copy(g)

    def _cast(self, d: Any, dtype: np.dtype):
        """``d`` (1-D or 2-D, contiguous) in ``dtype``: itself, or a device copy."""
        if np.dtype(d.dtype) == dtype:
            return d
        out = cuda.device_array(tuple(d.shape), dtype)
        n = int(np.prod(d.shape, dtype=np.int64))
        if n:
            self._launch(
                self._kernel(self._k.cast_cuda, dtype), n, self._flat(d), self._flat(out)
            )
        return out

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
            self._launch(self._kernel(self._k.fill_cuda, dtype), n, self._flat(out), 0.0)
        return out

    def to_host(self, arr: Any) -> np.ndarray:
        return np.asarray(self._wrap(arr).copy_to_host())

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

    def device_copy(self, host: np.ndarray) -> Any:
        """A device copy of a host array (the mean slices of an applying call)."""
        return cuda.to_device(np.ascontiguousarray(host))

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
        avg, mom, omm, overwrite = _typed_ema(ema, dtype, self._flat)
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
        coef = _typed(coef, dtype)
        dec = _typed_decay(wd, dtype)
        if tuple(v.shape) != tuple(m.shape):  # one second moment per row
            self._rowwise().dense_step(self, work, m, v, vhat, coef, tr, dec)
            return
        mf, vf = self._flat(m), self._flat(v)
        slot = () if vhat is None else (self._flat(vhat),)
        dec = _typed_decay(wd, dtype)
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
                *tr, dec, _typed_ema(ema, dtype, self._flat),
            )  # fmt: skip
            self._writeback(work)
            return
        kern = self._kernel(
            self._k.adam_dense_cuda, dtype, vhat is not None, wd is not None,
            ema is not None,
        )  # fmt: skip
        avg = _typed_ema(ema, dtype, self._flat)
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
    ) -> None:
        n = int(work.flat.shape[0])
        if n == 0:
            return
        dtype = np.dtype(work.flat.dtype)
        k = int(work.indices.shape[0])
        coef = _typed(coef, dtype)
        if tuple(v.shape) != tuple(m.shape):  # one second moment per row
            dec = _typed_decay(wd, dtype)
            self._rowwise().sparse_step(self, work, m, v, vhat, coef, tr, lazy, dec)
            return
        keys, pos = self._sorted(work.indices)
        values = work.values
        if k == 0:
            if lazy:
                return
            values = cuda.device_array((1, work.width), dtype)  # never read
        mf, vf = self._flat(m), self._flat(v)
        slot = () if vhat is None else (self._flat(vhat),)
        kern = self._k.adam_sparse_lazy_cuda if lazy else self._k.adam_sparse_cuda
        kern = self._kernel(
            kern, dtype, vhat is not None, wd is not None, ema is not None
        )
        items = k * work.width if lazy else n
        self._launch(
            kern, items, work.flat, mf, vf, slot, keys, pos, k, values, *coef, *tr,
            _typed_decay(wd, dtype), _typed_ema(ema, dtype, self._flat),
        )  # fmt: skip
        self._writeback(work)

    def _rowwise(self) -> Any:
        # the row-wise second moment's launches (``v`` of one value per row)
        if self._rows is None:
            from ._backend_cuda_rowwise import RowwiseCUDA

            self._rows = RowwiseCUDA()
        return self._rows
