"""ParameterBuffer (one-pass multi-tensor step) and the lazy sparse mode.

Their numerics against the oracle are rows and layouts of the numerics table
(``tests/cases.py``, ``test_numerics.py``); this file keeps the properties and
the API.
"""

from __future__ import annotations

import json
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numbadam


def test_lazy_rows_equal_dense_rows_on_first_step():
    # on the first step every touched row has m = v = 0 in both modes
    rng = np.random.default_rng(4)
    idx = np.array([5, 1, 5, 9])
    vals = rng.standard_normal((4, 6)).astype(np.float32)
    a = rng.standard_normal((12, 6)).astype(np.float32)
    b = a.copy()
    numbadam.Adam(0.1).apply_gradients([(numbadam.IndexedSlices(vals, idx), a)])
    numbadam.Adam(0.1, sparse_mode="lazy").apply_gradients(
        [(numbadam.IndexedSlices(vals, idx), b)]
    )
    assert np.array_equal(a, b)


def test_sparse_mode_config_round_trip():
    opt = numbadam.Adam(sparse_mode="lazy")
    cfg = opt.get_config()
    assert cfg["sparse_mode"] == "lazy"
    assert numbadam.Adam.from_config(json.loads(json.dumps(cfg))).sparse_mode == "lazy"
    assert "sparse_mode" not in numbadam.Adam().get_config()  # Keras' keys only
    with pytest.raises(ValueError, match="sparse_mode"):
        numbadam.Adam(sparse_mode="eager")


@settings(deadline=None, max_examples=25)
@given(
    sizes=st.lists(st.integers(0, 300), min_size=1, max_size=6),
    amsgrad=st.booleans(),
    clipnorm=st.sampled_from([None, 0.5]),
    clipvalue=st.sampled_from([None, 0.3]),
    dtype=st.sampled_from([np.float16, np.float32, np.float64]),
    seed=st.integers(0, 2**16),
)
def test_buffer_equals_per_variable(sizes, amsgrad, clipnorm, clipvalue, dtype, seed):
    rng = np.random.default_rng(seed)
    shapes = [(s,) if s % 2 else (s // 2, 2) for s in sizes]
    buf = numbadam.ParameterBuffer(shapes, dtype)
    buf.data[:] = rng.standard_normal(buf.data.size)
    separate = [p.copy() for p in buf.params]
    kw = dict(amsgrad=amsgrad, clipnorm=clipnorm, clipvalue=clipvalue)
    o1, o2 = numbadam.Adam(0.01, **kw), numbadam.Adam(0.01, **kw)
    for _ in range(3):
        buf.grad[:] = rng.standard_normal(buf.grad.size)
        o1.apply_gradients(buf.grads_and_vars())
        o2.apply_gradients([(g.copy(), p) for g, p in zip(buf.grads, separate)])
    for a, b in zip(buf.params, separate):
        assert np.array_equal(a, b)
    w1, w2 = o1.get_weights(), o2.get_weights()
    assert len(w1) == len(w2) == 1 + len(shapes) * (3 if amsgrad else 2)
    for a, b in zip(w1, w2):
        assert a.shape == b.shape and np.array_equal(a, b)
    # slots of a buffer variable are views of one flat array, in TF's order
    m0 = o1.get_slot(buf.params[0], "m")
    assert m0.base is not None and m0.shape == shapes[0]


def test_buffer_from_arrays_and_mixed_use():
    a, b = np.arange(6.0).reshape(2, 3), np.ones(4)
    buf = numbadam.ParameterBuffer.from_arrays([a, b])
    assert buf.data.dtype == np.float64
    assert np.array_equal(buf.params[0], a) and np.array_equal(buf.params[1], b)
    opt = numbadam.Adam(0.1)
    buf.grads[0][...] = 1.0
    buf.grads[1][...] = 2.0
    opt.apply_gradients(buf.grads_and_vars())
    # the same views may also be passed one by one; slots are shared
    g0 = np.full((2, 3), 1.0)
    opt.apply_gradients([(g0, buf.params[0])])
    assert (
        opt.get_slot(buf.params[0], "m").base is opt.get_slot(buf.params[1], "m").base
    )
    assert int(opt.iterations) == 2


def test_buffer_state_set_weights_round_trip():
    buf = numbadam.ParameterBuffer([(3,), (2, 2)])
    opt = numbadam.Adam(0.1)
    buf.grad[:] = np.linspace(-1, 1, buf.grad.size)
    opt.apply_gradients(buf.grads_and_vars())
    saved = opt.get_weights()
    buf2 = numbadam.ParameterBuffer([(3,), (2, 2)])
    opt2 = numbadam.Adam(0.1)
    opt2.build(buf2.params)
    opt2.set_weights(saved)
    buf2.data[:] = buf.data
    buf2.grad[:] = buf.grad
    opt.apply_gradients(buf.grads_and_vars())
    opt2.apply_gradients(buf2.grads_and_vars())
    assert np.array_equal(buf.data, buf2.data)


@pytest.mark.parametrize("mode", ["dense", "lazy"])
def test_no_allocation_proportional_to_the_variable(mode):
    # tracemalloc sees NumPy's allocations: a step may allocate O(k * width)
    # for a sparse gradient, never O(table) or O(n).
    rows, width, k = 20000, 16, 64
    table = np.zeros((rows, width), np.float32)
    dense = np.zeros(200_000, np.float32)
    g = np.ones_like(dense)
    idx = np.arange(k) * 7
    vals = np.ones((k, width), np.float32)
    opt = numbadam.Adam(sparse_mode=mode)
    pairs = [(g, dense), (numbadam.IndexedSlices(vals, idx, table.shape), table)]
    opt.apply_gradients(pairs)  # slots are created (and kernels compiled) here
    tracemalloc.start()
    try:
        for _ in range(3):
            opt.apply_gradients(pairs)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 16 * k * width * 4 + 64 * 1024, peak  # << 800 KB variable


def test_thread_count_setting_and_bitwise_equality():
    rng = np.random.default_rng(0)
    w0 = rng.standard_normal(100_000).astype(np.float32)
    g = rng.standard_normal(100_000).astype(np.float32)
    before = numbadam.get_num_threads()
    results = []
    try:
        for n in sorted({1, before}):
            numbadam.set_num_threads(n)
            assert numbadam.get_num_threads() == n
            w = w0.copy()
            opt = numbadam.Adam(0.01, clipnorm=1.0)
            for _ in range(3):
                opt.apply_gradients([(g, w)])
            results.append(w)
    finally:
        numbadam.reset_num_threads()
    assert all(np.array_equal(results[0], r) for r in results)
    with pytest.raises(ValueError):
        numbadam.set_num_threads(0)


@pytest.mark.parametrize(
    "shapes, exc, pattern",
    [
        (["ab"], TypeError, r"sequences of integers"),
        ([(3.5,)], TypeError, r"sequences of integers"),
        ([3], TypeError, r"sequences of integers"),
        ([(2, -1)], ValueError, r"negative"),
    ],
)
def test_parameter_buffer_bad_shapes(shapes, exc, pattern):
    with pytest.raises(exc, match=pattern):
        numbadam.ParameterBuffer(shapes)


@pytest.mark.parametrize("which", ["grads", "params"])
def test_buffer_views_cannot_be_rebound(which):
    """``buf.grads[i] = g`` would be a silent zero gradient: TypeError."""
    buf = numbadam.ParameterBuffer([(3,), (2, 2)])
    views = getattr(buf, which)
    first = views[0]
    with pytest.raises(TypeError, match=rf"{which}\[0\].*\[\.\.\.\] = "):
        views[0] = np.ones(3, np.float32)
    with pytest.raises(TypeError, match=rf"{which}\[-1\]"):
        views[-1] = np.ones((2, 2), np.float32)
    with pytest.raises(TypeError):
        del views[0]
    assert views[0] is first and not np.any(buf.data) and not np.any(buf.grad)
    # still a sequence: len, iteration, unpacking, negative indexing
    a, b = views
    assert len(views) == 2 and a is first and b is views[-1]
    assert [v.shape for v in views] == [(3,), (2, 2)]


def test_buffer_grads_in_place_operators_work():
    buf = numbadam.ParameterBuffer([(3,), (2,)])
    buf.grads[0] += 2.0
    buf.grads[1][...] = -1.0
    assert buf.grad.tolist() == [2.0, 2.0, 2.0, -1.0, -1.0]
    opt = numbadam.Adam(0.1)
    opt.apply_gradients(buf.grads_and_vars())
    assert np.all(buf.params[0] < 0) and np.all(buf.params[1] > 0)


@pytest.mark.parametrize(
    "shapes",
    [
        [(2**40, 2**40)],  # 2**80 elements: wraps to 0 in int64
        [(3,), (2**31, 2**31, 4)],  # 2**64 * 4: wraps to 3 in total
        [(2**62,), (2**62,)],  # each fits int64, their sum does not
    ],
)
def test_buffer_size_overflow(shapes):
    with pytest.raises(ValueError, match=r"too large.*variable \d+ has shape"):
        numbadam.ParameterBuffer(shapes)
