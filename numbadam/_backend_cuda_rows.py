"""Device arrays read by rows: what a state-dir save writes from a CUDA array.

A checkpoint of a CUDA table used to start with a host copy of every array,
even for a delta save that writes a few of its rows, and needed host memory
for the whole table. :class:`DeviceRows` is handed to the writer instead (the
``Backend.host_rows`` seam): it has an array's ``shape``, ``dtype``,
``ndim``, ``nbytes``, and its rows come to the host on demand, a bounded
piece at a time: ``rows[a:b]`` copies a contiguous run, ``rows[index]``
gathers the rows ``index`` on the device (:func:`take_rows_cuda`) and copies
only them.
"""

from __future__ import annotations

from typing import Any, Tuple

import numpy as np

__all__ = ["DeviceRows"]


class DeviceRows:
    """The rows of a C-contiguous device array (at least 1-D), copied to the
    host by slice or by index (a 1-D array of rows) on demand.

    Read-only; the array must not change while a save reads it (the saves
    hold the optimizer's lock, as its steps do).
    """

    __slots__ = ("_backend", "_d", "shape", "dtype", "ndim", "nbytes", "_width")

    def __init__(self, backend: Any, d: Any) -> None:
        # backend: the CUDABackend (its take_rows gathers on the device)
        self._backend = backend
        self._d = d
        self.shape: Tuple[int, ...] = tuple(int(n) for n in d.shape)
        self.dtype = np.dtype(d.dtype)
        self.ndim = len(self.shape)
        self._width = int(np.prod(self.shape[1:], dtype=np.int64))
        self.nbytes = self.shape[0] * self._width * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, slice):
            a, b, step = key.indices(self.shape[0])
            if step != 1:
                raise IndexError("DeviceRows takes slices of step 1")
            if b <= a:
                return np.empty((0,) + self.shape[1:], self.dtype)
            return np.asarray(self._d[a:b].copy_to_host())
        rows = np.asarray(key)
        if rows.ndim != 1 or rows.dtype.kind not in "iu":
            raise IndexError("DeviceRows takes a slice or a 1-D integer array")
        out_shape = (rows.shape[0],) + self.shape[1:]
        if rows.shape[0] == 0 or self._width == 0:
            return np.empty(out_shape, self.dtype)
        rows = rows.astype(np.int64)
        if rows.min() < 0 or rows.max() >= self.shape[0]:
            raise IndexError(f"rows out of range for {self.shape[0]} rows")
        src = self._d.reshape(self.shape[0], self._width)
        return self._backend.take_rows(src, rows).reshape(out_shape)

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        # the whole array (what NumPy gets from np.asarray)
        host = np.asarray(self._d.copy_to_host())
        return host if dtype is None else host.astype(dtype)
