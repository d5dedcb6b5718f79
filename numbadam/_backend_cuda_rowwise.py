"""Row-wise second-moment steps of the CUDA backend (``second_moment="row"``).

The twin of :mod:`numbadam._backend_cpu_rowwise`:
:class:`numbadam._backend_cuda.CUDABackend` hands a step here when its ``v``
slot has not the shape of ``m``; the kernels of
:mod:`numbadam.kernels.rowwise_cuda` (one thread per row; the lazy kernel one
per sorted gradient row), imported lazily.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._backend import compute_dtype

__all__ = ["RowwiseCUDA"]


class RowwiseCUDA:
    """The row-wise launches of one CUDA backend (its kernels compiled once)."""

    def __init__(self) -> None:
        from .kernels import rowwise_cuda  # (imports numba.cuda)

        self._k = rowwise_cuda
        self._ready: set = set()

    def _kernel(
        self, kernel: Any, dtype: np.dtype, amsgrad: bool, decay: bool,
        acc: bool = False, dirty: bool = False, ema: bool = False,
    ):  # fmt: skip
        key = (kernel, dtype.char, amsgrad, decay, acc, dirty, ema)
        if key not in self._ready:
            mask = dirty if kernel is self._k.adam_rowwise_lazy_cuda else None
            accs = acc if kernel is self._k.adam_rowwise_dense_cuda else None
            self._k.ensure_compiled(kernel, dtype, amsgrad, mask, decay, accs, ema)
            self._ready.add(key)
        return kernel

    def dense_step(
        self, be, work, m, v, vhat, coef, tr, dec, acc=None, ema=()
    ) -> None:
        """``be``: the CUDA backend (launches, flat views); ``coef``, ``dec``
        and ``ema`` (the kernels' ``()`` or EMA tuple) already typed; ``acc =
        (accumulator, N)`` on the applying call of gradient accumulation (the
        step on the mean gradient)."""
        rows = int(v.shape[0])
        if int(work.flat.shape[0]) == 0 or rows == 0:
            return
        dtype = np.dtype(work.flat.dtype)
        slot = () if vhat is None else (be._flat(vhat),)
        if acc is None:
            accs, steps = (), 1
        else:
            accs, steps = (be._flat(be._wrap(acc[0])),), acc[1]
        kern = self._kernel(
            self._k.adam_rowwise_dense_cuda, dtype, vhat is not None, len(dec) > 0,
            len(accs) > 0, ema=len(ema) > 0,
        )  # fmt: skip
        c = compute_dtype(dtype).type
        be._launch(kern, rows, work.flat, be._flat(m), be._flat(v), slot, work.grad,
                   accs, c(steps), *coef, *tr, dec, ema)  # fmt: skip
        be._writeback(work)

    def sparse_step(
        self, be, work, m, v, vhat, coef, tr, lazy, dec, ema=(), marks=()
    ):
        """``ema``: the kernels' EMA argument; ``marks``: ``()`` or ``(row
        mask,)`` (lazy steps)."""
        rows = int(v.shape[0])
        if int(work.flat.shape[0]) == 0 or rows == 0:
            return
        dtype = np.dtype(work.flat.dtype)
        k = int(work.indices.shape[0])
        if k == 0 and lazy:
            return
        keys, pos = be._sorted(work.indices)
        values = work.values
        if k == 0:
            from numba import cuda

            values = cuda.device_array((1, work.width), dtype)  # never read
        slot = () if vhat is None else (be._flat(vhat),)
        ams, has = vhat is not None, len(dec) > 0
        mf, vf = be._flat(m), be._flat(v)
        avg = len(ema) > 0
        if lazy:
            kern = self._kernel(
                self._k.adam_rowwise_lazy_cuda, dtype, ams, has, dirty=len(marks) > 0,
                ema=avg,
            )  # fmt: skip
            be._launch(kern, k, work.flat, mf, vf, slot, keys, pos, k, values, *coef,
                       *tr, dec, ema, marks)  # fmt: skip
        else:
            kern = self._kernel(
                self._k.adam_rowwise_sparse_cuda, dtype, ams, has, ema=avg
            )
            be._launch(kern, rows, work.flat, mf, vf, slot, keys, pos, k, values,
                       *coef, *tr, dec, ema)  # fmt: skip
        be._writeback(work)
