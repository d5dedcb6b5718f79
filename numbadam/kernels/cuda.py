"""Fused Adam kernels for CUDA: ``@cuda.jit`` twins of :mod:`numbadam.kernels.cpu`.

Imported lazily (by :mod:`numbadam._backend_cuda`) the first time a device array
is seen: importing it imports ``numba.cuda``, which needs the optional
``numba-cuda`` package.

Every kernel updates its arrays **in place** in one pass over flat, C-contiguous
device arrays, with a grid-stride loop: any launch size covers any array. The
caller picks the launch size (from :mod:`numbadam._config`) and passes the
per-step scalars in the compute type. The kernels know nothing of optimizers,
hyperparameters or slots.

Arithmetic
----------
The element arithmetic is the CPU kernels', operation for operation (see
``_moments``, ``_step`` and ``_transform`` in :mod:`numbadam.kernels.cpu`):

- float16 arrays are native: every element is widened (exactly) to float32 on
  load, computed in float32 and rounded once (to nearest even) on store;
- products go through :func:`_mul`, which on the GPU is ``__fmul_rn`` /
  ``__dmul_rn``: NVVM contracts a plain ``a * b + c`` into one FMA (a single
  rounding), which would make the GPU differ from the CPU and from the
  simulator;
- square root and division are IEEE, correctly rounded (numba-cuda's default
  without ``fastmath``), like the CPU's.

So a step on the GPU gives the CPU's bits for float16, float32 and float64,
except for the gradient-norm reduction of ``clipnorm``, which sums in a
different (but fixed) order: see :func:`sum_squares_cuda`.

Determinism
-----------
No float atomics. Reductions use fixed block partials combined in a fixed
order; sparse gradients are deduplicated by a stable sort on the device (tile
rank sort, then merge passes), after which every duplicate is added in its
order of appearance. The same inputs and launch configuration give the same
bits on every run.

Sparse steps
------------
``indices`` are first sorted (stably) into ``keys`` with the original positions
in ``pos``, by :func:`sort_tiles_cuda` and :func:`merge_runs_cuda`. The fused
pass (:func:`adam_sparse_cuda`) then walks the whole ``(R, W)`` table: each
element binary-searches its row in ``keys``; a row with a gradient sums its
transformed duplicates starting from zero, in appearance order, and every other
row takes the dense arithmetic with ``g = 0`` (so a sparse step is bitwise the
dense step with a zero-filled gradient). The lazy kernels
(:func:`adam_sparse_lazy_cuda`) touch only the rows in ``keys``. Scratch is
O(k), never O(R).

Helpers
-------
:func:`index_bounds_cuda` range-checks indices on the device (integer atomics);
:func:`sum_squares_cuda` / :func:`sum_partials_cuda` reduce the gradient norm;
:func:`cast_cuda`, :func:`index_cast_cuda`, :func:`fill_cuda`,
:func:`gather_cuda` and :func:`scatter_cuda` cast, zero and stage strided views;
:func:`take_rows_cuda` gathers the rows a state-dir delta save writes.

Compilation
-----------
Kernels are compiled lazily, one explicit signature set per storage (or index)
dtype (:data:`SIGNATURES`, :func:`ensure_compiled`), and cached on disk
(``cache=True``). Under the simulator (``NUMBA_ENABLE_CUDASIM=1``) nothing is
compiled: the kernels run as Python on NumPy scalars, with the same operations.

Layout
------
This module holds the launch constants, the signatures and
:func:`ensure_compiled` and re-exports every kernel and helper, which live in
private siblings: ``_cuda_common`` (primitives, element arithmetic, searches,
the block sum), ``_cuda_dense`` (the dense step, the gradient norm, fill, cast,
gather and scatter) and ``_cuda_sparse`` (the sparse and lazy steps, the sort,
the index checks). As on the CPU, a kernel's on-disk cache is keyed on its own
file only: after editing a helper in another file, delete the caches.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import config as _numba_config
from numba import types

# The kernels and their helpers live in private siblings, by family; every name
# is re-exported here, the module the backend (and new kernels) import.
from ._cuda_accum import (  # noqa: F401
    accumulate_cuda,
    adam_dense_accum_cuda,
    ema_dense_cuda,
    ema_rows_cuda,
    mean_rows_cuda,
    sum_squares_accum_cuda,
)
from ._cuda_common import (  # noqa: F401
    _adam_update,
    _block_sum,
    _clip,
    _lower_bound,
    _moments,
    _mul,
    _mul_cuda,
    _slot_is_pos_zero_cuda,
    _slot_max_cuda,
    _sqrt,
    _sqrt_cuda,
    _step,
    _transform,
    _upper_bound,
    _widen,
    _widen_cuda,
    _zero,
    _zero_cuda,
    as_stored,
    has_ema,
    decayed,
    has_decay,
    mark_row,
    slot_is_pos_zero,
    slot_max,
    store_var,
)
from ._cuda_dense import (  # noqa: F401
    _unravel4,
    adam_dense_cuda,
    cast_cuda,
    fill_cuda,
    gather_cuda,
    index_cast_cuda,
    scatter_cuda,
    sum_partials_cuda,
    sum_squares_cuda,
    take_rows_cuda,
)
from ._cuda_sparse import (  # noqa: F401
    _INT64_MAX,
    _INT64_MIN,
    _is_pos_zero,
    _row_gradient,
    _segment_gradient,
    _zero_rows_stay,
    adam_sparse_cuda,
    adam_sparse_lazy_cuda,
    index_bounds_cuda,
    merge_runs_cuda,
    sort_tiles_cuda,
)

__all__ = [
    "adam_dense_cuda",
    "adam_sparse_cuda",
    "adam_sparse_lazy_cuda",
    "slot_max",
    "slot_is_pos_zero",
    "sum_squares_cuda",
    "sum_partials_cuda",
    "index_bounds_cuda",
    "sort_tiles_cuda",
    "merge_runs_cuda",
    "fill_cuda",
    "cast_cuda",
    "gather_cuda",
    "scatter_cuda",
    "take_rows_cuda",
    "index_cast_cuda",
    "accumulate_cuda",
    "adam_dense_accum_cuda",
    "ema_dense_cuda",
    "ema_rows_cuda",
    "mean_rows_cuda",
    "sum_squares_accum_cuda",
    "MAX_THREADS_PER_BLOCK",
    "SHARED_BYTES_PER_THREAD",
    "SIGNATURES",
    "VHAT_ARG",
    "ensure_compiled",
    "STORAGE_DTYPES",
    "INDEX_DTYPES",
]

#: Largest block the kernels support (CUDA's limit). The kernels with shared
#: scratch (the sort and the reductions) take it as *dynamic* shared memory of
#: ``8 * blockDim.x`` bytes: see :data:`SHARED_BYTES_PER_THREAD`.
MAX_THREADS_PER_BLOCK = 1024

#: Dynamic shared memory per thread of :func:`sort_tiles_cuda`,
#: :func:`sum_squares_cuda` and :func:`sum_partials_cuda` (one int64 or float64),
#: passed at launch: ``kernel[blocks, threads, 0, threads * 8]``.
SHARED_BYTES_PER_THREAD = 8

SIMULATOR = bool(_numba_config.ENABLE_CUDASIM)


# ---------------------------------------------------------------------------
# Explicit signatures, compiled lazily per storage dtype
# ---------------------------------------------------------------------------

#: Storage dtypes with kernels: NumPy dtype -> (array element type, compute type).
STORAGE_DTYPES = {
    np.dtype(np.float64): (types.float64, types.float64),
    np.dtype(np.float32): (types.float32, types.float32),
    np.dtype(np.float16): (types.float16, types.float32),
}

#: Integer dtypes of device indices: int32 and int64 are used as they are,
#: the others are first cast to int64 on the device.
INDEX_DTYPES = {
    np.dtype(np.int32): types.int32,
    np.dtype(np.int64): types.int64,
}
_OTHER_INTEGERS = {
    np.dtype(t): getattr(types, np.dtype(t).name)
    for t in (np.int8, np.int16, np.uint8, np.uint16, np.uint32, np.uint64)
}


def _arr(dt, ndim=1, layout="C"):
    return types.Array(dt, ndim, layout)


def _signatures(storage):
    s, c = STORAGE_DTYPES[np.dtype(storage)]
    A = _arr(s)
    i64, f64 = types.int64, types.float64
    K = _arr(i64)
    tr = (c,) * 4  # lo, hi, mul, div
    coef = (c,) * 4  # alpha, omb1, omb2, eps
    sparse_tail = (K, K, i64, _arr(s, 2)) + coef + tr
    view = _arr(s, 4, "A")
    # the vhat argument (VHAT_ARG): () for Adam, (vhat,) for AMSGrad
    slots = (types.Tuple(()), types.UniTuple(A, 1))
    # the weight-decay argument (DECAY_ARG): () or (weight_decay, lr_t)
    decays = (types.Tuple(()), types.UniTuple(c, 2))
    # the EMA argument (EMA_ARG): () or (average, momentum, 1 - momentum,
    # overwrite)
    emas = (types.Tuple(()), types.Tuple((A, c, c, types.boolean)))
    # the row mask of the lazy kernel (DIRTY_ARG): () or (uint8 mask,)
    marks = (types.Tuple(()), types.UniTuple(_arr(types.uint8), 1))
    return {
        "adam_dense_cuda": [
            (A, A, A, h, A) + coef + tr + (d, a)
            for h in slots
            for d in decays
            for a in emas
        ],
        "adam_sparse_cuda": [
            (A, A, A, h) + sparse_tail + (d, a)
            for h in slots
            for d in decays
            for a in emas
        ],
        "adam_sparse_lazy_cuda": [
            (A, A, A, h) + sparse_tail + (d, a, r)
            for h in slots
            for d in decays
            for a in emas
            for r in marks
        ],
        "sum_squares_cuda": [(A, c, c, _arr(f64))],
        "fill_cuda": [(A, f64)],
        "cast_cuda": [(_arr(src), A) for src, _ in STORAGE_DTYPES.values() if src != s],
        "gather_cuda": [(view, A)],
        "scatter_cuda": [(A, view)],
        "take_rows_cuda": [(_arr(s, 2), K, _arr(s, 2))],
    }


def _index_signatures(dtype):
    it = INDEX_DTYPES.get(np.dtype(dtype))
    if it is None:
        return {
            "index_cast_cuda": [
                (_arr(_OTHER_INTEGERS[np.dtype(dtype)]), _arr(types.int64))
            ]
        }
    K = _arr(types.int64)
    return {
        "index_bounds_cuda": [(_arr(it), K)],
        "sort_tiles_cuda": [(_arr(it), K, K, types.int64)],
    }


#: Kernel name -> dtype -> list of argument-type tuples. The dtype is the
#: variable's storage dtype, or the indices' dtype for the index kernels.
SIGNATURES = {
    name: {dt: _signatures(dt)[name] for dt in STORAGE_DTYPES}
    for name in _signatures(np.float64)
}
for _dt in list(INDEX_DTYPES) + list(_OTHER_INTEGERS):
    for _name, _sigs in _index_signatures(_dt).items():
        SIGNATURES.setdefault(_name, {})[_dt] = _sigs

#: Kernels whose signatures depend on no dtype.
SHARED_SIGNATURES = {
    "sum_partials_cuda": [(_arr(types.float64), _arr(types.float64))],
    "merge_runs_cuda": [(_arr(types.int64),) * 4 + (types.int64, types.int64)],
}

#: Position of the ``vhat`` argument (``()`` or ``(vhat,)``) of the step kernels.
VHAT_ARG = {"adam_dense_cuda": 3, "adam_sparse_cuda": 3, "adam_sparse_lazy_cuda": 3}

#: Position of the weight-decay argument (``()`` or ``(weight_decay, lr_t)``).
DECAY_ARG = {"adam_dense_cuda": 13, "adam_sparse_cuda": 16, "adam_sparse_lazy_cuda": 16}

#: Position of the EMA argument (``()`` or ``(average, momentum, 1 - momentum,
#: overwrite)``).
EMA_ARG = {"adam_dense_cuda": 14, "adam_sparse_cuda": 17, "adam_sparse_lazy_cuda": 17}

#: Position of the row mask (``()`` or ``(dirty,)``) of the lazy kernel.
DIRTY_ARG = {"adam_sparse_lazy_cuda": 18}


def _accum_signatures(storage):
    # gradient accumulation (#13, _cuda_accum): acc of the storage dtype,
    # steps (the divisor N) a scalar of the compute type
    s, c = STORAGE_DTYPES[np.dtype(storage)]
    A = _arr(s)
    return {
        "accumulate_cuda": [(A, A, types.boolean)],
        "adam_dense_accum_cuda": [
            (A, A, A, h, A, A) + (c,) * 9 + (d, a)
            for h in (types.Tuple(()), types.UniTuple(A, 1))
            for d in (types.Tuple(()), types.UniTuple(c, 2))
            for a in (types.Tuple(()), types.Tuple((A, c, c, types.boolean)))
        ],
        # the EMA-only pass of an accumulating call (use_ema)
        "ema_dense_cuda": [(A, A, c, c, types.boolean)],
        "ema_rows_cuda": [
            (_arr(s, 2), _arr(s, 2), _arr(types.int64), c, c, types.boolean)
        ],
        "sum_squares_accum_cuda": [(A, A, c, c, c, _arr(types.float64))],
        # the mean rows of a cycle's IndexedSlices (values, order, starts,
        # steps, out)
        "mean_rows_cuda": [
            (_arr(s, 2), _arr(types.int64), _arr(types.int64), c, _arr(s, 2))
        ],
    }


for _name in _accum_signatures(np.float64):
    SIGNATURES[_name] = {dt: _accum_signatures(dt)[_name] for dt in STORAGE_DTYPES}
VHAT_ARG["adam_dense_accum_cuda"] = 3
DECAY_ARG["adam_dense_accum_cuda"] = 15
EMA_ARG["adam_dense_accum_cuda"] = 16

_compiled: set = set()
_lock = threading.Lock()


def ensure_compiled(
    kernel, dtype=None, amsgrad=None, decay=None, ema=None, dirty=None
) -> None:
    """Compile ``kernel``'s explicit signatures for ``dtype`` (once).

    ``dtype`` is the storage (or index) dtype keying :data:`SIGNATURES`, or
    ``None`` for the kernels of :data:`SHARED_SIGNATURES`; for the step kernels
    (:data:`VHAT_ARG`) ``amsgrad`` selects the AMSGrad (True) or Adam (False)
    signatures, None both; ``decay`` likewise selects those with or without
    weight decay (:data:`DECAY_ARG`), ``ema`` with or without an EMA
    (:data:`EMA_ARG`), ``dirty`` with or without a row mask
    (:data:`DIRTY_ARG`). Loads from the on-disk cache when possible;
    afterwards the kernel compiles nothing new at call time. A no-op under the
    simulator.
    """
    if SIMULATOR:
        return
    name = kernel.py_func.__name__
    key = (
        name, None if dtype is None else np.dtype(dtype), amsgrad, decay, ema, dirty
    )
    if key in _compiled:
        return
    with _lock:
        if key in _compiled:
            return
        sigs = SHARED_SIGNATURES[name] if dtype is None else SIGNATURES[name][key[1]]
        at = VHAT_ARG.get(name)
        if at is not None and amsgrad is not None:
            sigs = [sig for sig in sigs if (len(sig[at]) == 1) == amsgrad]
        at = DECAY_ARG.get(name)
        if at is not None and decay is not None:
            sigs = [sig for sig in sigs if (len(sig[at]) == 2) == decay]
        at = EMA_ARG.get(name)
        if at is not None and ema is not None:
            sigs = [sig for sig in sigs if (len(sig[at]) == 4) == ema]
        at = DIRTY_ARG.get(name)
        if at is not None and dirty is not None:
            sigs = [sig for sig in sigs if (len(sig[at]) == 1) == dirty]
        kernel.disable_compile(False)
        try:
            for sig in sigs:
                kernel.compile(sig)
        finally:
            if kernel.signatures:  # numba asserts there is one to disable
                kernel.disable_compile(True)
        _compiled.add(key)
