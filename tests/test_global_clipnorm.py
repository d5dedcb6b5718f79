"""global_clipnorm (#13): every gradient of a call clipped by their joint norm.

tf-keras legacy semantics: clip_by_value first, then ``clip_by_global_norm``;
exclusive with ``clipnorm``. Checked against tests/reference.py, and for the
bits that must not depend on how a call is made: thread counts, a
ParameterBuffer's one pass vs its pairs, the distributed optimizers on one
process.
"""

from __future__ import annotations

import numba
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import numbadam
from numbadam import IndexedSlices, ParameterBuffer
from numbadam.distributed import DistributedAdam, ShardedAdam

import reference as ref

TOL = {np.float16: 2e-3, np.float32: 2e-6, np.float64: 1e-12}


def _problem(seed, dtypes=(np.float32, np.float64, np.float16)):
    rng = np.random.default_rng(seed)
    shapes = [(5,), (3, 4), (6, 2)]
    variables = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
    dense = [rng.standard_normal(v.shape).astype(v.dtype) * 3 for v in variables[:2]]
    idx = np.array([0, 3, 3, 5])
    vals = (rng.standard_normal((4, 2)) * 3).astype(variables[2].dtype)
    return variables, dense, idx, vals


@pytest.mark.parametrize("clipvalue", [None, 1.5])
@pytest.mark.parametrize("gcn", [0.5, 4.0, 1e6])
def test_matches_the_reference(clipvalue, gcn):
    variables, dense, idx, vals = _problem(0)
    opt = numbadam.Adam(learning_rate=0.01, global_clipnorm=gcn, clipvalue=clipvalue)
    start = [v.astype(np.float64) for v in variables]
    opt.apply_gradients(
        [(dense[0], variables[0]), (dense[1], variables[1]),
         (IndexedSlices(vals, idx, variables[2].shape), variables[2])]
    )  # fmt: skip
    clipped = ref.clip_global_ref(dense + [vals], clipvalue, gcn)
    grads = clipped[:2] + [ref.sparse_to_dense((6, 2), idx, clipped[2])]
    for v, v0, g in zip(variables, start, grads):
        want = ref.run_reference(v0, [g], lr=0.01)[-1][0]
        np.testing.assert_allclose(v, want, rtol=TOL[v.dtype.type], atol=TOL[v.dtype.type])


def test_clipping_really_happens():
    # (a no-op global_clipnorm would pass a loose comparison above too easily)
    w = np.zeros(2, np.float64)
    opt = numbadam.Adam(learning_rate=1.0, global_clipnorm=1.0, beta_1=0.0, beta_2=0.0)
    w2 = np.zeros(2, np.float64)
    opt.apply_gradients([(np.array([3.0, 0.0]), w), (np.array([0.0, 4.0]), w2)])
    m = opt.get_slot(w, "m")
    np.testing.assert_allclose(m, [0.6, 0.0], rtol=1e-6)
    np.testing.assert_allclose(opt.get_slot(w2, "m"), [0.0, 0.8], rtol=1e-6)


def test_same_bits_for_any_thread_count():
    outs = []
    for threads in (1, 2):
        before = numba.get_num_threads()
        numba.set_num_threads(min(threads, numba.config.NUMBA_NUM_THREADS))
        try:
            rng = np.random.default_rng(5)
            vs = [rng.standard_normal(200_000).astype(np.float32) for _ in range(2)]
            opt = numbadam.Adam(global_clipnorm=1.0)
            for _ in range(3):
                opt.apply_gradients([(rng.standard_normal(v.shape).astype(v.dtype), v)
                                     for v in vs])  # fmt: skip
            outs.append([v.tobytes() for v in vs])
        finally:
            numba.set_num_threads(before)
    assert outs[0] == outs[1]


def test_parameter_buffer_one_pass_equals_its_pairs():
    shapes = [(4, 3), (7,), (2, 5)]
    a, b = ParameterBuffer(shapes, np.float32), ParameterBuffer(shapes, np.float32)
    rng = np.random.default_rng(2)
    init = rng.standard_normal(a.data.shape).astype(np.float32)
    a.data[...] = init
    b.data[...] = init
    oa = numbadam.Adam(global_clipnorm=0.7, clipvalue=1.0)
    ob = numbadam.Adam(global_clipnorm=0.7, clipvalue=1.0)
    for _ in range(3):
        g = (rng.standard_normal(a.grad.shape) * 2).astype(np.float32)
        a.grad[...] = g
        b.grad[...] = g
        oa.apply_gradients(a.grads_and_vars())
        ob.apply_gradients(list(zip(b.grads, b.params)))
    assert a.data.tobytes() == b.data.tobytes()


@pytest.mark.parametrize("cls", [DistributedAdam, ShardedAdam])
def test_distributed_on_one_process_equals_adam(cls):
    variables, dense, idx, vals = _problem(3, dtypes=(np.float32,) * 3)
    copies = [v.copy() for v in variables]
    a = numbadam.Adam(global_clipnorm=1.0)
    d = cls(global_clipnorm=1.0, comm="self")
    for opt, vs in ((a, variables), (d, copies)):
        opt.apply_gradients(
            [(dense[0], vs[0]), (dense[1], vs[1]),
             (IndexedSlices(vals, idx, vs[2].shape), vs[2])]
        )  # fmt: skip
    for x, y in zip(variables, copies):
        assert x.tobytes() == y.tobytes()


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 40),
    c=st.floats(1e-3, 1e3),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 2**16),
)
def test_one_variable_is_clipnorm(n, c, scale, seed):
    g = (np.random.default_rng(seed).standard_normal(n) * scale).astype(np.float64)
    w1, w2 = np.zeros(n), np.zeros(n)
    numbadam.Adam(global_clipnorm=c).apply_gradients([(g, w1)])
    numbadam.Adam(clipnorm=c).apply_gradients([(g, w2)])
    np.testing.assert_allclose(w1, w2, rtol=1e-12, atol=1e-300)


def test_config_round_trip_and_exclusivity():
    opt = numbadam.Adam(global_clipnorm=2.5)
    cfg = opt.get_config()
    assert cfg["global_clipnorm"] == 2.5 and "clipnorm" not in cfg
    assert numbadam.Adam.from_config(cfg).global_clipnorm == 2.5
    with pytest.raises(ValueError, match="both `clipnorm` and `global_clipnorm`"):
        numbadam.Adam(clipnorm=1.0, global_clipnorm=1.0)
    with pytest.raises(ValueError, match="both"):
        opt.clipnorm = 1.0
    assert opt.clipnorm is None
    with pytest.raises(ValueError, match="both"):
        numbadam.Adam(clipnorm=1.0).global_clipnorm = 1.0


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_bad_values_are_refused(bad):
    with pytest.raises(ValueError, match="global_clipnorm"):
        numbadam.Adam(global_clipnorm=bad)
