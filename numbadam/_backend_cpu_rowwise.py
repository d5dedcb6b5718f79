"""Row-wise second-moment steps of the CPU backend (``second_moment="row"``).

:class:`numbadam._backend_cpu.CPUBackend` hands a step here when the ``v``
slot it is given has not the shape of ``m`` (one value per row of an ``(R,
D)`` table, see :func:`numbadam._slots.slot_shape`): the kernels of
:mod:`numbadam.kernels.rowwise_cpu`, with the same transform, weight decay,
staging and determinism as the element-wise steps. A table of ``R`` rows of
any trailing shape is the flat ``(R, D)``, ``D = prod(shape[1:])``.
"""

from __future__ import annotations

from typing import Any, Optional

import numpy as np

from . import _config
from ._backend import Decay, DenseWork, SparseWork, Transform, compute_dtype
from ._types import AdamCoefficients

__all__ = ["RowwiseCPU"]


def _kv(a: np.ndarray) -> np.ndarray:
    # Numba's CPU target has no float16: the kernels take the raw bits
    a = a if a.ndim == 1 else a.reshape(-1)
    return a.view(np.uint16) if a.dtype.char == "e" else a


class RowwiseCPU:
    """The row-wise launches of one CPU backend (its kernels compiled once)."""

    def __init__(self) -> None:
        from .kernels import rowwise_cpu  # (compiled lazily, per dtype)

        self._k = rowwise_cpu
        self._ready: set = set()

    def _kernel(
        self, kernel: Any, dtype: np.dtype, amsgrad: bool, decay: bool,
        dirty: bool = False, acc: bool = False, ema: bool = False,
    ):  # fmt: skip
        key = (kernel, dtype.char, amsgrad, decay, dirty, acc, ema)
        if key not in self._ready:
            mask = dirty if kernel is self._k.adam_rowwise_lazy_cpu else None
            accs = acc if kernel is self._k.adam_rowwise_dense_cpu else None
            self._k.ensure_compiled(kernel, dtype, amsgrad, mask, decay, accs, ema)
            self._ready.add(key)
        return kernel

    def dense_step(
        self,
        work: DenseWork,
        m: np.ndarray,
        v: np.ndarray,
        vhat: Optional[np.ndarray],
        coef: AdamCoefficients,
        tr: Transform,
        wd: Decay = None,
        acc: Any = None,
        ema: Any = None,
    ) -> None:
        """The dense row-wise step; with ``acc = (accumulator, N)`` (the
        applying call of gradient accumulation) on the mean ``(grad +
        accumulator) / N``, formed in the kernel; ``ema`` the kernels' EMA
        argument (the average a flat kernel view) or None."""
        x = work.flat
        if x.shape[0] == 0 or v.shape[0] == 0:
            return
        dtype = x.dtype
        hf = None if vhat is None else _kv(vhat)
        af, steps = (None, 1) if acc is None else (_kv(acc[0]), acc[1])
        k = self._kernel(
            self._k.adam_rowwise_dense_cpu, dtype, hf is not None, wd is not None,
            acc=af is not None, ema=ema is not None,
        )  # fmt: skip
        k(_kv(x), _kv(m), _kv(v), hf, _kv(work.grad), af,
          compute_dtype(dtype).type(steps), *coef, *tr, wd, ema,
          _config.CPU_SERIAL_MAX)  # fmt: skip
        if work.staged:
            work.var[...] = work.flat.reshape(work.var.shape)

    def sparse_step(
        self,
        backend: Any,
        work: SparseWork,
        m: np.ndarray,
        v: np.ndarray,
        vhat: Optional[np.ndarray],
        coef: AdamCoefficients,
        tr: Transform,
        lazy: bool,
        wd: Decay,
        ema: Any = None,
        dirty: Optional[np.ndarray] = None,
    ) -> None:
        if work.flat.size == 0:
            return
        dtype = work.flat.dtype
        k = work.indices.shape[0]
        maxkey = work.maxkey
        if maxkey is None:
            maxkey = int(work.indices.max()) if k else 0
        x, mf, vf = _kv(work.flat), _kv(m), _kv(v)
        vals = work.values  # ((k, D): kept 2-D)
        if vals.dtype.char == "e":
            vals = vals.view(np.uint16)
        hf = None if vhat is None else _kv(vhat)
        nt = _config.get_num_threads()
        ams, dec, has = hf is not None, wd is not None, ema is not None
        if lazy:  # one fused pass per unique row
            kern = self._kernel(
                self._k.adam_rowwise_lazy_cpu, dtype, ams, dec, dirty is not None,
                ema=has,
            )  # fmt: skip
            kern(x, mf, vf, hf, work.indices, vals, *coef, *tr, wd, ema, maxkey, nt,
                 dirty)  # fmt: skip
        else:  # duplicates summed (the element path's kernel), then every row
            uidx = np.empty(k, np.int64)
            uvals = np.empty((k, work.width), compute_dtype(dtype))
            dedup = backend._kernel(backend._k.sum_duplicate_rows_cpu, dtype)
            u = dedup(work.indices, vals, *tr, maxkey, uidx, uvals, nt)
            kern = self._kernel(
                self._k.adam_rowwise_sparse_cpu, dtype, ams, dec, ema=has
            )
            kern(x, mf, vf, hf, uidx[:u], uvals[:u], *coef, wd, ema,
                 _config.CPU_SPARSE_BLOCK_ROWS)  # fmt: skip
        if work.staged:
            work.var[...] = work.flat.reshape(work.var.shape)
