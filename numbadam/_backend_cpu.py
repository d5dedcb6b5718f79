"""The CPU backend: validation and launches of the ``@njit(parallel=True)`` kernels.

It implements :class:`numbadam._backend.Backend` for NumPy arrays (writable,
native float16/32/64, any shape and strides: strided views are staged through a
contiguous copy and written back). Gradients are cast on the host when a
same-kind cast exists; nothing is written before every check has passed.
"""

from __future__ import annotations

import math
from typing import Any, List, Optional

import numpy as np

from . import _config
from ._backend import (
    INDEX_DTYPES,
    SUPPORTED_DTYPES,
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
from ._backend_cpu_cached import MULTI_MIN, CachedLaunches, MultiWork, kernel_view
from ._types import AdamCoefficients, IndexedSlices

__all__ = ["CPUBackend", "MultiWork", "MULTI_MIN"]

_kernel_view = kernel_view


def _unaliased(g: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``g``, or a copy of it where its memory may overlap ``var``'s.

    NumPy's rule for ufuncs with overlapping operands: the result is as if the
    input had been copied first. (The kernels write ``var`` while they read
    ``g``: a gradient that is a shifted view of its variable, or lazy
    IndexedSlices values viewing the table, would read updated elements.)
    Two arrays that both own their memory cannot overlap, which skips the
    bounds check in the common case.
    """
    if (g.base is not None or var.base is not None) and np.may_share_memory(g, var):
        return g.copy()
    return g


def _ema_view(ema: Any) -> Any:
    # the kernels' EMA argument: the average as a flat kernel view
    avg, mom, omm, overwrite = ema
    return (_kernel_view(avg.reshape(-1)), mom, omm, bool(overwrite))


class CPUBackend(CachedLaunches):
    """Backend for NumPy arrays: the ``@njit(parallel=True)`` kernels (and the
    cached launches of :mod:`numbadam._backend_cpu_cached`)."""

    name = "cpu"

    def __init__(self) -> None:
        from .kernels import cpu, multi_cpu  # (compiled lazily, per dtype)

        self._k = cpu
        self._k_multi = multi_cpu
        self._ready: dict = {}  # (kernel, dtype char, amsgrad) -> compiled kernel
        self._rows: Any = None  # the row-wise launches, on first use

    def _kernel(
        self,
        kernel: Any,
        dtype: np.dtype,
        amsgrad: Optional[bool] = None,
        decay: Optional[bool] = None,
        ema: Optional[bool] = None,
        dirty: bool = False,
    ):
        """``kernel`` (a dispatcher of ``kernels.cpu``) compiled for ``dtype``
        (and the Adam or AMSGrad variant, with or without weight decay, an EMA
        and a dirty-row mask), once."""
        key = (kernel, dtype.char, amsgrad, decay, ema, dirty)
        ready = self._ready.get(key)
        if ready is None:
            self._k.ensure_compiled(kernel, dtype, amsgrad, decay, ema, dirty)
            ready = self._ready[key] = kernel
        return ready

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
        if isinstance(grad, np.ma.MaskedArray):
            # np.asarray drops the mask: masked entries would step as their data
            raise TypeError(
                f"{what} of {label} is a numpy.ma.MaskedArray; its mask would be "
                "ignored. Pass grad.filled(0.0) (masked entries as zero gradient) "
                "or a plain array"
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
        g = _unaliased(g, var)
        if var.flags.c_contiguous:
            return DenseWork(
                var, var if var.ndim == 1 else var.reshape(-1), g, False, label
            )
        return DenseWork(var, np.ascontiguousarray(var).reshape(-1), g, True, label)

    def prepare_sparse(
        self, var: np.ndarray, grad: IndexedSlices, label: Any
    ) -> SparseWork:
        self.check_variable(var, label)
        if type(var) is not np.ndarray:
            var = var.view(np.ndarray)
        if is_device_array(grad.indices):
            raise TypeError(
                f"IndexedSlices indices of {label} are a CUDA array but the "
                "variable is a NumPy array"
            )
        if isinstance(grad.indices, np.ma.MaskedArray):
            raise TypeError(
                f"IndexedSlices indices of {label} are a numpy.ma.MaskedArray; "
                "its mask would be ignored. Pass the unmasked indices only"
            )
        idx = np.asarray(grad.indices)
        check_index_dtype(idx.dtype, label)
        vals = self._gradient_array(grad.values, label, "IndexedSlices values")
        if vals.dtype is not var.dtype:
            cast_gradient_dtype(vals.dtype, var.dtype, label)
        check_slices_shapes(label, var.shape, grad.dense_shape, idx.shape, vals.shape)
        nrows = var.shape[0]
        hi = 0
        if idx.dtype in INDEX_DTYPES and not idx.flags.c_contiguous:
            idx = np.ascontiguousarray(idx)  # (a strided view: the kernels take C)
        if idx.size:
            if idx.dtype in INDEX_DTYPES:
                lo, hi = self._kernel(self._k.index_range_cpu, idx.dtype)(idx)
            else:  # other integer types, uint64 beyond int64 included
                lo, hi = idx.min(), idx.max()
            check_index_range(lo, hi, nrows, label)
        if idx.dtype not in INDEX_DTYPES:
            idx = idx.astype(np.int64)  # in range, so exact
        width = math.prod(var.shape[1:])
        if vals.dtype is not var.dtype or not vals.flags.c_contiguous:
            vals = np.ascontiguousarray(vals, dtype=var.dtype)
        if vals.ndim != 2:
            vals = vals.reshape(idx.shape[0], width)
        vals = _unaliased(vals, var)
        staged = not var.flags.c_contiguous
        flat = np.ascontiguousarray(var).reshape(-1) if staged else var.reshape(-1)
        return SparseWork(var, flat, idx, vals, width, staged, label, int(hi))

    # -- state --------------------------------------------------------------

    def zeros_like(self, var: np.ndarray) -> np.ndarray:
        return np.zeros(var.shape, var.dtype)

    def zeros(self, shape: Any, like: np.ndarray) -> np.ndarray:
        return np.zeros(shape, like.dtype)

    def row_mask(self, nrows: int) -> np.ndarray:
        return np.zeros(nrows, np.uint8)

    def to_host(self, arr: Any) -> np.ndarray:
        return np.array(arr, copy=True)

    def host_rows(self, arr: Any) -> np.ndarray:
        """What a state-dir save reads of ``arr``: the array itself (a plain
        ndarray view of a subclass, such as a memmap); anything else as a
        host copy."""
        if not isinstance(arr, np.ndarray):
            return self.to_host(arr)
        return arr if type(arr) is np.ndarray else arr.view(np.ndarray)

    def copy(self, arr: np.ndarray) -> np.ndarray:
        return arr.copy()

    def assign(self, dst: np.ndarray, value: np.ndarray) -> None:
        dst[...] = value

    # -- steps --------------------------------------------------------------

    def _sumsq(self, flat: np.ndarray, lo, hi) -> float:
        k = self._kernel(self._k.sum_squares_cpu, flat.dtype)
        return k(_kernel_view(flat), lo, hi, _config.NORM_CHUNKS)

    def sum_rows(
        self, indices: np.ndarray, values: np.ndarray
    ) -> "tuple[np.ndarray, np.ndarray]":
        """``(unique indices, summed rows)`` of host IndexedSlices parts.

        ``indices`` (non-negative, 1-D) and ``values`` (``(k, ...)``, float)
        as concatenated; the rows of each index are added in order of
        appearance, starting from zero, in the compute dtype
        (``sum_duplicate_rows_cpu``, deterministic for any thread count).
        Returns the indices ascending (int64) and a ``(u, ...)`` array of the
        compute dtype.
        """
        k = int(indices.shape[0])
        tail = tuple(values.shape[1:])
        dtype = np.dtype(values.dtype)
        cdt = compute_dtype(dtype)
        width = math.prod(tail)
        if k == 0 or width == 0:
            uniq = np.unique(np.asarray(indices, np.int64))
            return uniq, np.zeros((uniq.shape[0],) + tail, cdt)
        idx = np.ascontiguousarray(indices, np.int64)
        vals = np.ascontiguousarray(values).reshape(k, width)
        if dtype.char == "e":
            vals = vals.view(np.uint16)
        uidx = np.empty(k, np.int64)
        uvals = np.empty((k, width), cdt)
        inf = cdt.type(np.inf)
        dedup = self._kernel(self._k.sum_duplicate_rows_cpu, dtype)
        u = dedup(idx, vals, -inf, inf, cdt.type(1), cdt.type(1), int(idx.max()),
                  uidx, uvals, _config.get_num_threads())  # fmt: skip
        return uidx[:u], uvals[:u].reshape((u,) + tail)

    def keep_slices(self, work: SparseWork) -> "tuple[np.ndarray, np.ndarray]":
        """Owned copies of ``work``'s indices and values: an accumulating call's
        IndexedSlices, kept until the applying call (:meth:`mean_rows`)."""
        return self.to_host(work.indices), self.to_host(work.values)

    def mean_rows(
        self, indices: List[Any], values: List[Any], steps: int
    ) -> "tuple[np.ndarray, np.ndarray]":
        """``(unique indices, mean rows)`` of an accumulation cycle's slices.

        ``indices`` and ``values`` list the cycle's slices in call order (host
        arrays; values of one dtype and row shape). The rows of one index are
        added in order, starting from zero, in the compute dtype (float32 for
        float16: :meth:`sum_rows`), divided by ``steps`` there and rounded
        once to the storage dtype. Returns int64 indices, ascending, and a
        ``(u, ...)`` array of the values' dtype.
        """
        idx = np.concatenate([np.asarray(i, np.int64) for i in indices])
        vals = np.concatenate(values)
        uniq, sums = self.sum_rows(idx, vals)
        with np.errstate(all="ignore"):
            np.divide(sums, sums.dtype.type(steps), out=sums)
        return uniq, sums.astype(vals.dtype, copy=False)

    def sumsq(
        self, grad: np.ndarray, clipvalue: Optional[float] = None, acc: Any = None
    ) -> float:
        lo, hi, _, _ = transform_scalars(grad.dtype, clipvalue, None, None)
        flat = grad if grad.ndim == 1 else grad.reshape(-1)
        if acc is not None:  # the norm of the mean (g + acc) / steps (#13)
            k = self._kernel(self._k.sum_squares_accum_cpu, flat.dtype)
            a, steps = acc
            c = compute_dtype(flat.dtype).type
            return k(_kernel_view(flat), _kernel_view(a.reshape(-1)), c(steps), lo,
                     hi, _config.NORM_CHUNKS)  # fmt: skip
        return self._sumsq(flat, lo, hi)

    def accumulate(self, acc: np.ndarray, grad: np.ndarray, first: bool) -> None:
        """``acc = 0 + grad`` (``first``) or ``acc += grad`` (gradient
        accumulation); ``grad`` is a work item's 1-D gradient."""
        if grad.shape[0] == 0:
            return
        k = self._kernel(self._k.accumulate_cpu, grad.dtype)
        k(_kernel_view(acc.reshape(-1)), _kernel_view(grad), bool(first),
          _config.CPU_BLOCK, _config.CPU_SERIAL_MAX)  # fmt: skip

    def ema_step(
        self, work: Any, ema: Average, rows: Optional[np.ndarray] = None
    ) -> None:
        """The EMA-only pass of an accumulating call (``use_ema``).

        ``average = (momentum * average) + ((1 - momentum) * var)`` in place,
        and ``var = average`` on an overwrite step: the step kernels' EMA
        arithmetic without a step. ``work`` is the call's dense or sparse work
        item of the variable, ``ema`` the kernels' ``(average, momentum, 1 -
        momentum, overwrite)`` and ``rows`` the unique int64 rows (first axis)
        to move, or None for every element.
        """
        flat = work.flat
        n = flat.shape[0]
        if n == 0:
            return
        avg, mom, omm, overwrite = ema
        x, a = _kernel_view(flat), _kernel_view(avg.reshape(-1))
        if rows is None:
            k = self._kernel(self._k.ema_dense_cpu, flat.dtype)
            k(x, a, mom, omm, bool(overwrite), _config.CPU_BLOCK,
              _config.CPU_SERIAL_MAX)  # fmt: skip
        else:
            shape = (n // work.width, work.width)
            k = self._kernel(self._k.ema_rows_cpu, flat.dtype)
            k(x.reshape(shape), a.reshape(shape), rows, mom, omm, bool(overwrite))
        if overwrite and work.staged:
            work.var[...] = flat.reshape(work.var.shape)

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
        ema: Average = None,
    ) -> None:
        if v.shape != m.shape:  # one second moment per row
            ea = None if ema is None else _ema_view(ema)
            return self._rowwise().dense_step(work, m, v, vhat, coef, tr, wd, acc, ea)
        x, g = work.flat, work.grad
        n = x.shape[0]
        if n == 0:
            return
        dtype = x.dtype
        mf = m if m.ndim == 1 else m.reshape(-1)
        vf = v if v.ndim == 1 else v.reshape(-1)
        if dtype.char == "e":
            x, g, mf, vf = (a.view(np.uint16) for a in (x, g, mf, vf))
        hf = None if vhat is None else _kernel_view(vhat.reshape(-1))
        ea = None if ema is None else _ema_view(ema)
        if acc is None:
            k = self._kernel(
                self._k.adam_dense_cpu, dtype, hf is not None, wd is not None,
                ea is not None,
            )  # fmt: skip
            k(x, mf, vf, hf, g, *coef, *tr, wd, ea, _config.CPU_BLOCK,
              _config.CPU_SERIAL_MAX)  # fmt: skip
        else:  # the applying call of gradient accumulation: (g + acc) / steps
            a, steps = acc
            k = self._kernel(
                self._k.adam_dense_accum_cpu, dtype, hf is not None, wd is not None,
                ea is not None,
            )  # fmt: skip
            k(x, mf, vf, hf, g, _kernel_view(a.reshape(-1)),
              compute_dtype(dtype).type(steps), *coef, *tr, wd, ea,
              _config.CPU_BLOCK, _config.CPU_SERIAL_MAX)  # fmt: skip
        if work.staged:
            work.var[...] = work.flat.reshape(work.var.shape)

    def sparse_step(
        self,
        work: SparseWork,
        m: np.ndarray,
        v: np.ndarray,
        vhat: Optional[np.ndarray],
        coef: AdamCoefficients,
        tr: Transform,
        lazy: bool = False,
        wd: Decay = None,
        ema: Average = None,
        dirty: Optional[np.ndarray] = None,
    ) -> None:
        # dirty: a uint8 mask of the table's rows that the lazy kernel sets
        # where it steps a row (incremental checkpoints; lazy steps only)
        if v.shape != m.shape:  # one second moment per row
            ea = None if ema is None else _ema_view(ema)
            self._rowwise().sparse_step(self, work, m, v, vhat, coef, tr, lazy, wd,
                                        ea, dirty)  # fmt: skip
            return
        if work.flat.size == 0:
            return
        dtype = work.flat.dtype
        k = work.indices.shape[0]
        maxkey = work.maxkey
        if maxkey is None:
            maxkey = int(work.indices.max()) if k else 0
        x = _kernel_view(work.flat)
        mf, vf = _kernel_view(m.reshape(-1)), _kernel_view(v.reshape(-1))
        vals = _kernel_view(work.values)
        hf = None if vhat is None else _kernel_view(vhat.reshape(-1))
        nt = _config.get_num_threads()  # (the workers unique rows are dealt to)
        ams, dec = hf is not None, wd is not None
        ea = None if ema is None else _ema_view(ema)
        if lazy:  # one fused pass over the unique rows: no summed-rows buffer
            kern = self._kernel(
                self._k.adam_sparse_lazy_cpu, dtype, ams, dec, ea is not None,
                dirty is not None,
            )  # fmt: skip
            kern(x, mf, vf, hf, work.indices, vals, *coef, *tr, wd, ea, maxkey, nt,
                 dirty)  # fmt: skip
        else:  # sum duplicates, then one pass over the whole table
            uidx = np.empty(k, np.int64)
            uvals = np.empty((k, work.width), compute_dtype(dtype))
            dedup = self._kernel(self._k.sum_duplicate_rows_cpu, dtype)
            u = dedup(work.indices, vals, *tr, maxkey, uidx, uvals, nt)
            kern = self._kernel(
                self._k.adam_sparse_cpu, dtype, ams, dec, ea is not None
            )
            kern(x, mf, vf, hf, uidx[:u], uvals[:u], *coef, wd, ea,
                 _config.CPU_SPARSE_BLOCK_ROWS)  # fmt: skip
        if work.staged:
            work.var[...] = work.flat.reshape(work.var.shape)

    def _rowwise(self) -> Any:
        # the row-wise second moment's launches (``v`` of one value per row)
        if self._rows is None:
            from ._backend_cpu_rowwise import RowwiseCPU

            self._rows = RowwiseCPU()
        return self._rows
