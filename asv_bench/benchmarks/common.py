"""Seeded data shared by the benchmarks.

Append-only: benchmarks compare runs across commits, so existing helpers must
keep producing the same data. Add new helpers (or new seeds) at the end.
"""

from __future__ import annotations

import numpy as np

import numbadam

#: The seed of every benchmark's data.
SEED = 20240229

#: Dense sizes, in elements: inside L2, inside L3, far beyond any cache.
SIZES = [1_000, 100_000, 10_000_000]

#: Storage dtypes with kernels.
DTYPES = ["float16", "float32", "float64"]


def rng(seed: int = SEED) -> np.random.Generator:
    """A fresh generator, so every helper's output depends only on its seed."""
    return np.random.default_rng(seed)


def dense_problem(n: int, dtype="float32", seed: int = SEED):
    """``(variable, gradient)``: two standard-normal 1-D arrays of ``n`` elements."""
    r = rng(seed)
    var = r.standard_normal(n, dtype=np.float32).astype(dtype)
    grad = r.standard_normal(n, dtype=np.float32).astype(dtype)
    return var, grad


def sparse_problem(rows: int, width: int, nnz: int, dtype="float32", seed: int = SEED):
    """``(table, IndexedSlices)``: a ``(rows, width)`` table and ``nnz`` gradient rows.

    The indices are drawn with replacement, so some repeat, as in an embedding
    lookup of a batch.
    """
    r = rng(seed)
    table = r.standard_normal((rows, width), dtype=np.float32).astype(dtype)
    indices = r.integers(0, rows, size=nnz, dtype=np.int64)
    values = r.standard_normal((nnz, width), dtype=np.float32).astype(dtype)
    return table, numbadam.IndexedSlices(values, indices, table.shape)


def warmed_adam(pairs, **kwargs) -> numbadam.Adam:
    """An Adam that has taken one step on ``pairs``: kernels compiled, slots made."""
    opt = numbadam.Adam(**kwargs)
    opt.apply_gradients(pairs)
    return opt


def zipf_batches(rows: int, k: int, count: int, seed: int = SEED):
    """``count`` batches of ``k`` row indices with Zipf(1.2) frequencies (a few
    rows very often, most rarely: an embedding lookup), each of its own seed."""
    out = []
    for i in range(count):
        r = rng(seed + i)
        out.append(((r.zipf(1.2, k) - 1) % rows).astype(np.int64))
    return out
