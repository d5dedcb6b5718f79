"""Variable layouts of the numerics table (``cases.py``).

A :class:`Layout` builds the variables of one run and their seeded gradients
for a few steps (:class:`Problem`): dense 1-D and N-D arrays, strided views, a
0-d array, an ``IndexedSlices`` table with duplicate indices, a
``ParameterBuffer``, and a list of variables of mixed dtypes. Layouts know
nothing of hyperparameters.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
from helpers import sizes, to_device, to_host

import numbadam
from numbadam import IndexedSlices

STEPS = 4
DTYPES = ("float16", "float32", "float64")
MIXED = "mixed"  # the dtype "axis" of the layout holding all three dtypes


@dataclass
class Problem:
    """The variables of one run and their gradients.

    ``grads[step][i]`` is variable ``i``'s host gradient (an array, or an
    IndexedSlices of host arrays); ``pairs`` turns one step's gradients into the
    argument of ``apply_gradients``; ``read(i)`` is a host copy of variable
    ``i``; ``outside`` lists memory next to the variables that must not change:
    ``(what, read, original)``.
    """

    variables: list[Any]
    dtypes: list[np.dtype]
    grads: list[list[Any]]
    read: Callable[[int], np.ndarray]
    pairs: Callable[[list[Any]], Any]
    outside: list[tuple[str, Callable[[], np.ndarray], np.ndarray]] = field(
        default_factory=list
    )


@dataclass(frozen=True)
class Layout:
    """How variables are laid out. ``knobs``: CPU ``_config`` values for the run
    (so that the small test sizes still take the blocked parallel kernels)."""

    name: str
    build: Callable[[np.random.Generator, Any, str], Problem]
    backends: tuple[str, ...] = ("cpu", "cuda")
    dtypes: tuple[str, ...] = DTYPES
    sparse: bool = False
    knobs: Mapping[str, int] = field(default_factory=dict)


def _var(rng, shape, dtype):
    return np.array(rng.standard_normal(shape) * 2, dtype=dtype)


def _dense_grads(rng, shape, dtype, steps=STEPS):
    """Mixed magnitudes, shrinking after two steps (so AMSGrad's ``vhat`` keeps
    an older, larger ``v``); first one entry of 3.0, so clipping acts, and one
    of 0.0, where ``v = 0`` makes the step ``0 / epsilon`` (NaN if epsilon
    were 0)."""
    mag = 10.0 ** rng.uniform(-2, 1, size=shape)
    out = []
    for s in range(steps):
        g = np.array(rng.standard_normal(shape) * mag * (0.05 if s >= 2 else 1.0))
        if s == 0:
            g.flat[:2] = (3.0, 0.0)[: g.size]
        out.append(g.astype(dtype))
    return out


def _sparse_grads(rng, shape, dtype, steps=STEPS):
    """IndexedSlices with duplicates, an empty step, int32 and int64 indices,
    one without ``dense_shape``; the upper half of the rows is never listed."""
    nrows, row = shape[0], tuple(shape[1:])
    out = []
    for s in range(steps):
        k = (9, 4, 0, 12)[s % 4]
        idx = rng.integers(0, max(nrows // 2, 1), size=k)
        if k >= 3:
            idx[1] = idx[2] = idx[0]
        vals = rng.standard_normal((k,) + row) * 3 * (0.05 if s >= 2 else 1.0)
        if s == 0 and vals.size:
            vals.flat[0] = 3.0
        g = IndexedSlices(
            vals.astype(dtype),
            idx.astype(np.int32 if s % 2 else np.int64),
            None if s == 1 else shape,
        )
        out.append(g)
    return out


def _on(g, backend):
    if isinstance(g, IndexedSlices):
        return IndexedSlices(
            to_device(g.values, backend), to_device(g.indices, backend), g.dense_shape
        )
    return to_device(g, backend)


def _plain(shapes_and_dtypes, kinds, rng, backend) -> Problem:
    """Independent variables, one ``(gradient, variable)`` pair each."""
    host = [_var(rng, s, dt) for s, dt in shapes_and_dtypes]
    variables = [to_device(h.copy(), backend) for h in host]
    per_var = [
        (_sparse_grads if kind == "sparse" else _dense_grads)(rng, s, dt)
        for (s, dt), kind in zip(shapes_and_dtypes, kinds)
    ]
    return Problem(
        variables=variables,
        dtypes=[np.dtype(dt) for _, dt in shapes_and_dtypes],
        grads=[list(step) for step in zip(*per_var)],
        read=lambda i: to_host(variables[i]),
        pairs=lambda gs: [(_on(g, backend), v) for g, v in zip(gs, variables)],
    )


def _dense_1d(rng, dtype, backend):
    return _plain([((sizes(backend, 50, 150),), dtype)], ["dense"], rng, backend)


def _dense_nd(rng, dtype, backend):
    return _plain(
        [(sizes(backend, (5, 7, 6), (3, 7, 7)), dtype)], ["dense"], rng, backend
    )


def _scalar(rng, dtype, backend):
    return _plain([((), dtype)], ["dense"], rng, backend)


def _sparse(rng, dtype, backend):
    shape = sizes(backend, (24, 3), (30, 5))
    return _plain([(shape, dtype)], ["sparse"], rng, backend)


def _mixed(rng, dtype, backend):
    n = sizes(backend, 30, 150)
    spec = [
        ((n,), np.float16),
        ((4, 5), np.float32),
        ((), np.float64),
        ((12, 2), np.float16),
    ]
    return _plain(spec, ["dense", "dense", "dense", "sparse"], rng, backend)


def _strided(rng, dtype, backend):
    """A column slice and a transpose, updated in place in their base arrays."""
    base0, other0 = _var(rng, (6, 10), dtype), _var(rng, (4, 3), dtype)
    base, other = to_device(base0.copy(), backend), to_device(other0.copy(), backend)
    # the same view objects every step: simulator arrays are keyed by identity
    variables = [base[:, ::2], other.T]
    readers = [lambda: to_host(base)[:, ::2], lambda: to_host(other).T]
    grads = zip(*(_dense_grads(rng, s, dtype) for s in [(6, 5), (3, 4)]))
    return Problem(
        variables=variables,
        dtypes=[np.dtype(dtype)] * 2,
        grads=[list(step) for step in grads],
        read=lambda i: readers[i](),
        pairs=lambda gs: [(to_device(g, backend), v) for g, v in zip(gs, variables)],
        outside=[
            ("columns outside the view", lambda: to_host(base)[:, 1::2], base0[:, 1::2])
        ],
    )


def _buffer(rng, dtype, backend):
    """One ParameterBuffer: one kernel pass (per variable under clipnorm)."""
    shapes = [(40,), (3, 4), (), (0, 2)]
    buf = numbadam.ParameterBuffer(shapes, dtype)
    buf.data[:] = _var(rng, buf.data.shape, dtype)
    grads = zip(*(_dense_grads(rng, s, dtype) for s in shapes))

    def pairs(gs):
        for view, g in zip(buf.grads, gs):
            view[...] = g
        return buf.grads_and_vars()

    return Problem(
        variables=list(buf.params),
        dtypes=[np.dtype(dtype)] * len(shapes),
        grads=[list(step) for step in grads],
        read=lambda i: buf.params[i].copy(),
        pairs=pairs,
    )


_BLOCKED = {"CPU_SERIAL_MAX": 1, "CPU_BLOCK": 64}

LAYOUTS: dict[str, Layout] = {
    lay.name: lay
    for lay in [
        Layout("dense_1d", _dense_1d),  # the serial CPU kernel
        Layout("dense_nd", _dense_nd, knobs=_BLOCKED),  # the blocked one
        Layout("strided", _strided),
        Layout("scalar", _scalar),
        Layout("sparse", _sparse, sparse=True, knobs={"CPU_SPARSE_BLOCK_ROWS": 4}),
        Layout(
            "buffer",
            _buffer,
            backends=("cpu",),  # a ParameterBuffer lives in host memory
            knobs={"CPU_SERIAL_MAX": 1, "CPU_BLOCK": 16},
        ),
        Layout("mixed", _mixed, dtypes=(MIXED,), sparse=True, knobs=_BLOCKED),
    ]
}
