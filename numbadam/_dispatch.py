"""The choice of backend for an array, and nothing else.

NumPy arrays run on :mod:`numbadam._backend_cpu`; anything exposing
``__cuda_array_interface__`` or ``__cuda_ndarray__`` (Numba device arrays, the
simulator's arrays, CuPy arrays, PyTorch CUDA tensors) on
:mod:`numbadam._backend_cuda`, which is imported, with ``numba.cuda``, only the
first time a device array is seen. Both implement
:class:`numbadam._backend.Backend`.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from ._backend import Backend, is_device_array
from ._backend_cpu import CPUBackend

__all__ = ["backend_for", "host_backend", "is_device_array"]

_CPU: Optional[CPUBackend] = None
_CUDA: Any = None


def backend_for(var: Any) -> Backend:
    """The backend that owns ``var``: CPU for NumPy arrays, CUDA for device arrays."""
    global _CPU, _CUDA
    if type(var) is np.ndarray and _CPU is not None:  # the common case, cheaply
        return _CPU
    if is_device_array(var):
        if _CUDA is None:
            from ._backend_cuda import CUDABackend  # imports numba.cuda lazily

            _CUDA = CUDABackend()
        return _CUDA
    return host_backend()


def host_backend() -> CPUBackend:
    """The CPU backend: host-side work for any backend's variables (e.g. the
    duplicate sums of a gradient-accumulation cycle's host copies)."""
    global _CPU
    if _CPU is None:
        _CPU = CPUBackend()
    return _CPU
