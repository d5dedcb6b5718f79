"""Fused Adam kernels for the CPU: ``@njit(parallel=True)`` over flat arrays.

Every kernel updates its arrays **in place** in one pass: each element of ``var``,
``m``, ``v`` (and ``vhat``) is read once and written once, with no temporaries the
size of the variable. (The sparse TF-rule kernels read, and do not rewrite,
stretches without a gradient whose ``m`` and ``v`` are ``+0.0``: the arithmetic
would give them back bit for bit.) They know nothing of optimizers,
hyperparameters or slots: the caller passes C-contiguous arrays and the per-step
scalars.

Storage and compute types
-------------------------
float64 and float32 arrays are computed in their own type. Numba's CPU target has
no float16 arithmetic, so float16 arrays are passed as ``uint16`` views of their
bits; those kernels widen every element to float32, compute in float32, and round
once (to nearest even) on store. Scalars are always of the compute type.

Determinism
-----------
Work is split into blocks of a fixed size given by the caller (never by thread
count) and every element's arithmetic is independent of the others, so results are
bitwise identical whatever the number of threads. Reductions use a fixed number of
chunks for the same reason.

Compilation
-----------
Public kernels call only private ``@njit`` helpers, never each other, so that
locking one kernel's signatures cannot stop another from compiling. They are
compiled lazily, one explicit signature per storage dtype (see
:data:`SIGNATURES` and :func:`ensure_compiled`), and cached on disk. After
:func:`ensure_compiled` a kernel accepts only its declared signatures: it never
compiles a new specialisation behind the caller's back.

Layout
------
This module holds the signatures and :func:`ensure_compiled` and re-exports
every kernel and helper, which live in private siblings: ``_cpu_common``
(compile options, float16 bits, loads and stores, the element arithmetic),
``_cpu_dense`` (the dense step, the gradient norm) and ``_cpu_sparse`` (the
sparse and lazy steps, the sum of duplicate rows, the sort). Numba keys a
kernel's on-disk cache on the kernel's own file only: after editing a helper
in another file, delete the caches (``find numbadam -name '*.nb[ic]' -delete``)
or run with a fresh ``NUMBA_CACHE_DIR``, or the kernels that inline it run
stale code.
"""

from __future__ import annotations

import threading

import numpy as np
from numba import types

# The kernels and their helpers live in private siblings, by family; every name
# is re-exported here, the module the backends (and new kernels) import.
from ._cpu_accum import (  # noqa: F401
    _accumulate_run,
    _dense_accum_run,
    _ema_run,
    _mean,
    accumulate_cpu,
    adam_dense_accum_cpu,
    ema_dense_cpu,
    ema_rows_cpu,
    sum_squares_accum_cpu,
)
from ._cpu_common import (  # noqa: F401
    _PARALLEL,
    _SERIAL,
    _adam_elem,
    _as_stored_impl,
    _bits_impl,
    _clip,
    _ema_span_impl,
    _is_identity,
    _load_impl,
    _moments,
    _prefetch,
    _prefetch_span,
    _span_impl,
    _step,
    _store_impl,
    _store_var,
    _transform,
    _zero_of_impl,
    as_stored,
    bits,
    ema_span,
    float_to_half_bits,
    half_bits_to_float,
    load,
    span,
    store,
    zero_of,
)
from ._cpu_dense import (  # noqa: F401
    _dense_run,
    adam_dense_cpu,
    sum_squares_cpu,
)
from ._cpu_sparse import (  # noqa: F401
    _INSERTION_MAX,
    _PREFETCH_GROUPS,
    _RADIX,
    _RADIX_BITS,
    _SKIP_CHUNK,
    _all_zero_bits,
    _decay_run,
    _decay_span,
    _dup_scratch,
    _grad_row,
    _group_grad,
    _groups,
    _lazy_group,
    _prefetch_group,
    _scratch_like_impl,
    _stable_sort_keys,
    _zero_rows_stay,
    adam_sparse_cpu,
    adam_sparse_lazy_cpu,
    index_range_cpu,
    scratch_like,
    sum_duplicate_rows_cpu,
)

__all__ = [
    "adam_dense_cpu",
    "adam_sparse_cpu",
    "adam_sparse_lazy_cpu",
    "sum_duplicate_rows_cpu",
    "sum_squares_cpu",
    "index_range_cpu",
    "accumulate_cpu",
    "adam_dense_accum_cpu",
    "ema_dense_cpu",
    "ema_rows_cpu",
    "sum_squares_accum_cpu",
    "half_bits_to_float",
    "float_to_half_bits",
    "SIGNATURES",
    "VHAT_ARG",
    "DECAY_ARG",
    "EMA_ARG",
    "DIRTY_ARG",
    "ensure_compiled",
    "STORAGE_DTYPES",
]


# ---------------------------------------------------------------------------
# Explicit signatures, compiled lazily per storage dtype
# ---------------------------------------------------------------------------

#: Storage dtypes with kernels: NumPy dtype -> (array element type, compute type).
STORAGE_DTYPES = {
    np.dtype(np.float64): (types.float64, types.float64),
    np.dtype(np.float32): (types.float32, types.float32),
    np.dtype(np.float16): (types.uint16, types.float32),
}


def _arr(dt, ndim=1, readonly=False):
    return types.Array(dt, ndim, "C", readonly=readonly)


def ema_type(s, c):
    """The Numba type of the EMA argument of storage type ``s``, compute ``c``."""
    return types.Tuple((_arr(s), c, c, types.boolean))


def _signatures(storage):
    s, c = STORAGE_DTYPES[np.dtype(storage)]
    W, R = _arr(s), _arr(s, readonly=True)
    vals2 = _arr(c, 2, readonly=True)
    i64, none = types.int64, types.none
    idx64 = _arr(i64, readonly=True)
    dedup = [
        (_arr(it, readonly=True), _arr(s, 2, readonly=True))
        + (c,) * 4
        + (i64, _arr(i64), _arr(c, 2), i64)
        for it in (types.int32, types.int64)
    ]
    # (the vhat argument, position VHAT_ARG: None for Adam, an array for
    # AMSGrad; the weight-decay argument, position DECAY_ARG: None, or the
    # pair (weight_decay, lr_t) of the compute type)
    decays = (none, types.UniTuple(c, 2))
    # (the EMA argument, position EMA_ARG: None, or (average, momentum,
    # 1 - momentum, overwrite))
    emas = (none, ema_type(s, c))
    return {
        "adam_dense_cpu": [
            (W, W, W, h, R) + (c,) * 8 + (d, a, i64, i64)
            for h in (none, W)
            for d in decays
            for a in emas
        ],
        "adam_sparse_cpu": [
            (W, W, W, h, idx64, vals2) + (c,) * 4 + (d, a, i64)
            for h in (none, W)
            for d in decays
            for a in emas
        ],
        "adam_sparse_lazy_cpu": [
            (W, W, W, h, _arr(it, readonly=True), _arr(s, 2, readonly=True))
            + (c,) * 8
            + (d, a, i64, i64, dm)
            for h in (none, W)
            for it in (types.int32, types.int64)
            for d in decays
            for a in emas
            for dm in (none, _arr(types.uint8))
        ],
        "sum_duplicate_rows_cpu": dedup,
        "sum_squares_cpu": [(R, c, c, i64)],
    }


#: Kernel name -> storage dtype (index dtype for ``index_range_cpu``) -> list
#: of argument-type tuples.
SIGNATURES = {
    name: {dt: _signatures(dt)[name] for dt in STORAGE_DTYPES}
    for name in _signatures(np.float64)
}
SIGNATURES["index_range_cpu"] = {
    np.dtype(np.int32): [(_arr(types.int32, readonly=True),)],
    np.dtype(np.int64): [(_arr(types.int64, readonly=True),)],
}

#: Position of the ``vhat`` argument of the kernels that take one (None: Adam).
VHAT_ARG = {"adam_dense_cpu": 3, "adam_sparse_cpu": 3, "adam_sparse_lazy_cpu": 3}

#: Position of the weight-decay argument (None, or ``(weight_decay, lr_t)``).
DECAY_ARG = {"adam_dense_cpu": 13, "adam_sparse_cpu": 10, "adam_sparse_lazy_cpu": 14}

#: Position of the EMA argument (None, or ``(average, momentum, 1 - momentum,
#: overwrite)``), right after the weight decay's.
EMA_ARG = {"adam_dense_cpu": 14, "adam_sparse_cpu": 11, "adam_sparse_lazy_cpu": 15}


def _accum_signatures(storage):
    # gradient accumulation (#13, _cpu_accum): acc is an array of the storage
    # dtype; steps (the divisor N) a scalar of the compute type
    s, c = STORAGE_DTYPES[np.dtype(storage)]
    W, R = _arr(s), _arr(s, readonly=True)
    i64 = types.int64
    return {
        "accumulate_cpu": [(W, R, types.boolean, i64, i64)],
        "adam_dense_accum_cpu": [
            (W, W, W, h, R, R) + (c,) * 9 + (d, a, i64, i64)
            for h in (types.none, W)
            for d in (types.none, types.UniTuple(c, 2))
            for a in (types.none, ema_type(s, c))
        ],
        # the EMA-only pass of an accumulating call (use_ema)
        "ema_dense_cpu": [(W, W, c, c, types.boolean, i64, i64)],
        "ema_rows_cpu": [
            (_arr(s, 2), _arr(s, 2), _arr(i64, readonly=True), c, c, types.boolean)
        ],
        "sum_squares_accum_cpu": [(R, R, c, c, c, i64)],
    }


for _name in _accum_signatures(np.float64):
    SIGNATURES[_name] = {dt: _accum_signatures(dt)[_name] for dt in STORAGE_DTYPES}
VHAT_ARG["adam_dense_accum_cpu"] = 3
DECAY_ARG["adam_dense_accum_cpu"] = 15
EMA_ARG["adam_dense_accum_cpu"] = 16
#: Position of the ``dirty`` row mask (None, or a ``uint8`` array of ``R`` rows).
DIRTY_ARG = {"adam_sparse_lazy_cpu": 18}

_compiled: set = set()
_lock = threading.Lock()


def ensure_compiled(
    kernel, dtype, amsgrad=None, decay=None, ema=None, dirty=False
) -> None:
    """Compile ``kernel``'s explicit signatures for storage ``dtype`` (once).

    For a kernel with a ``vhat`` argument (:data:`VHAT_ARG`), ``amsgrad``
    selects the AMSGrad (True) or Adam (False) signatures; None compiles both.
    Likewise ``decay`` for the weight-decay argument (:data:`DECAY_ARG`),
    ``ema`` for the EMA argument (:data:`EMA_ARG`), and ``dirty`` for the row
    mask (:data:`DIRTY_ARG`), whose default ``False`` compiles only the
    signatures without one.
    Loads from the on-disk cache when possible. Afterwards the kernel's
    dispatcher accepts arrays matching its compiled signatures (writable arrays
    where read-only ones are declared, too) and compiles nothing new.
    """
    name = kernel.py_func.__name__
    key = (name, np.dtype(dtype), amsgrad, decay, ema, dirty)
    if key in _compiled:
        return
    with _lock:
        if key in _compiled:
            return
        sigs = SIGNATURES[name][key[1]]
        at = VHAT_ARG.get(name)
        if at is not None and amsgrad is not None:
            sigs = [sig for sig in sigs if (sig[at] != types.none) == amsgrad]
        at = DECAY_ARG.get(name)
        if at is not None and decay is not None:
            sigs = [sig for sig in sigs if (sig[at] != types.none) == decay]
        at = EMA_ARG.get(name)
        if at is not None and ema is not None:
            sigs = [sig for sig in sigs if (sig[at] != types.none) == ema]
        at = DIRTY_ARG.get(name)
        if at is not None and dirty is not None:
            sigs = [sig for sig in sigs if (sig[at] != types.none) == dirty]
        kernel.disable_compile(False)
        try:
            for sig in sigs:
                kernel.compile(sig)
        finally:
            # (a dispatcher with no signature at all may not be locked)
            if kernel.signatures:
                kernel.disable_compile(True)
        _compiled.add(key)
