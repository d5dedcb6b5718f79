"""Launches and device arrays of the CUDA backend.

A mixin of :class:`numbadam._backend_cuda.CUDABackend` (it uses the backend's
``_k``, the kernels of ``kernels.cuda``, and ``_ready``): compiled kernels by
dtype and variant, grid sizes and launches, and the device-array helpers of
validation (wrapping foreign arrays, flat views, staging strided views
through gather/scatter, casts and copies). Also where ``numba.cuda`` is
imported, with one clear error when numba-cuda or a GPU is missing.
"""

from __future__ import annotations

import warnings
from typing import Any, Optional, Tuple

import numpy as np

from . import _config
from ._backend import compute_dtype, is_device_array
from ._overlap import overlaps
from ._types import AdamCoefficients

__all__ = ["CudaArrays", "INSTALL_HINT", "cuda", "typed", "typed_decay", "typed_ema"]

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

_MAX_STAGED_NDIM = 4
# numba-cuda warns below 128 blocks; small variables make small grids on purpose.
_FEW_BLOCKS = 128


def typed(coef: AdamCoefficients, dtype: np.dtype) -> AdamCoefficients:
    # The per-step scalars as NumPy scalars of the compute dtype (they may come
    # as Python floats): CUDA kernels, and the simulator's Python arithmetic,
    # type their scalar arguments from the values passed.
    c = compute_dtype(dtype).type
    return AdamCoefficients(*(c(x) for x in coef))


def typed_decay(wd: Any, dtype: np.dtype) -> tuple:
    # the kernels' weight-decay argument: () or (weight_decay, lr_t), typed
    if wd is None:
        return ()
    c = compute_dtype(dtype).type
    return (c(wd[0]), c(wd[1]))


def typed_ema(ema: Any, dtype: np.dtype, flat: Any) -> tuple:
    # the kernels' EMA argument: () or (average, momentum, 1 - momentum,
    # overwrite), the average flat and the scalars typed
    if ema is None:
        return ()
    c = compute_dtype(dtype).type
    return (flat(ema[0]), c(ema[1]), c(ema[2]), bool(ema[3]))


class CudaArrays:
    """Launches and device-array helpers of the CUDA backend (a mixin)."""

    _k: Any
    _ready: dict

    # -- launches -------------------------------------------------------------

    def _kernel(
        self,
        kernel: Any,
        dtype: Optional[np.dtype] = None,
        amsgrad=None,
        decay=None,
        ema=None,
        dirty=None,
    ) -> Any:
        """``kernel`` (of ``kernels.cuda``) compiled for ``dtype`` (and the Adam
        or AMSGrad variant, with or without weight decay, an EMA, a row
        mask), once."""
        key = (
            kernel, None if dtype is None else dtype.char, amsgrad, decay, ema, dirty
        )  # fmt: skip
        ready = self._ready.get(key)
        if ready is None:
            self._k.ensure_compiled(kernel, dtype, amsgrad, decay, ema, dirty)
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
            kern = self._kernel(self._k.cast_cuda, dtype)
            self._launch(kern, n, self._flat(d), self._flat(out))
        return out
