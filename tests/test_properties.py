"""hypothesis properties of Adam over random shapes, dtypes and hyperparameters.

Tests taking ``backend`` build their ``@given`` function inside the test so that
the number of examples can depend on it (the CUDA simulator is slow). The CPU
work-splitting knobs are made small so that random sizes cross block boundaries.
"""

from __future__ import annotations

import json

import numba
import numpy as np
import pytest
from helpers import (
    FLOAT_DTYPES,
    assert_bitwise,
    assert_close,
    n_examples,
    run_checked,
    to_device,
    to_host,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import numbadam
from numbadam import IndexedSlices, _config

DTYPES = st.sampled_from(FLOAT_DTYPES)
SHAPES = st.lists(st.integers(0, 7), min_size=0, max_size=3).map(tuple)
TABLES = st.tuples(st.integers(1, 12), st.lists(st.integers(1, 4), max_size=2)).map(
    lambda t: (t[0],) + tuple(t[1])
)
SEEDS = st.integers(0, 2**32 - 1)
HYPERS = st.fixed_dictionaries(
    {
        "learning_rate": st.floats(1e-4, 1.0),
        "beta_1": st.floats(0.0, 0.99),
        "beta_2": st.floats(0.5, 0.9999),
        "epsilon": st.floats(1e-8, 1e-1),
        "amsgrad": st.booleans(),
        "clipvalue": st.none() | st.floats(0.05, 5.0),
        "clipnorm": st.none() | st.floats(0.05, 5.0),
        "decay": st.sampled_from([0.0, 0.0, 0.1, 1.0]),
    }
)


def _small_blocks():
    # random sizes then take both the serial and the blocked dense kernels
    _config.CPU_SERIAL_MAX = 40
    _config.CPU_BLOCK = 16
    _config.CPU_SPARSE_BLOCK_ROWS = 2
    _config.NORM_CHUNKS = 3


def _grad(rng, shape, dtype):
    mag = 10.0 ** rng.uniform(-3, 1, size=shape)
    return np.array(rng.standard_normal(shape) * mag, dtype=dtype)


def _sparse(rng, shape, dtype, k):
    idx = rng.integers(0, shape[0], size=k)  # duplicates likely
    vals = _grad(rng, (k,) + shape[1:], dtype)
    return IndexedSlices(vals, idx, shape)


def _dyadic(rng, shape, dtype, lim=40):
    """Multiples of 1/8: sums and squares of a few of them are exact everywhere."""
    return np.array(rng.integers(-lim, lim + 1, size=shape) / 8.0, dtype=dtype)


def _slices(g, backend):
    """``g`` on ``backend``; on CUDA, indices other than int32/int64 stay on the
    host (device indices must be int32 or int64)."""
    idx = np.asarray(g.indices)
    if idx.dtype in (np.int32, np.int64):
        idx = to_device(idx, backend)
    return IndexedSlices(to_device(g.values, backend), idx, g.dense_shape)


# ---------------------------------------------------------------------------
# optimizer == oracle
# ---------------------------------------------------------------------------


def test_dense_matches_oracle(backend):
    _small_blocks()

    @settings(deadline=None, max_examples=n_examples(backend, 60, 10))
    @given(dtype=DTYPES, shape=SHAPES, hp=HYPERS, steps=st.integers(1, 4), seed=SEEDS)
    def prop(dtype, shape, hp, steps, seed):
        rng = np.random.default_rng(seed)
        var0 = np.array(rng.standard_normal(shape) * 2, dtype=dtype)
        grads = [_grad(rng, shape, dtype) for _ in range(steps)]
        run_checked(backend, var0, grads, hp)

    prop()


def test_sparse_matches_oracle(backend):
    _small_blocks()

    @settings(deadline=None, max_examples=n_examples(backend, 60, 10))
    @given(
        dtype=DTYPES,
        shape=TABLES,
        hp=HYPERS,
        seed=SEEDS,
        ks=st.lists(st.integers(0, 15), min_size=1, max_size=4),
    )
    def prop(dtype, shape, hp, seed, ks):
        rng = np.random.default_rng(seed)
        var0 = np.array(rng.standard_normal(shape) * 2, dtype=dtype)
        grads = [_sparse(rng, shape, dtype, k) for k in ks]
        run_checked(backend, var0, grads, hp)

    prop()


# ---------------------------------------------------------------------------
# sparse == dense, duplicates == pre-summed (bitwise)
# ---------------------------------------------------------------------------


def test_sparse_unique_equals_dense_zero_filled(backend):
    """Unique indices: bitwise the dense step with a zero-filled gradient."""
    _small_blocks()

    @settings(deadline=None, max_examples=n_examples(backend, 50, 10))
    @given(
        dtype=DTYPES,
        shape=TABLES,
        seed=SEEDS,
        amsgrad=st.booleans(),
        clipvalue=st.sampled_from([None, 0.5, 2.0]),
        clipnorm=st.sampled_from([None, 0.25, 3.0]),
        steps=st.integers(1, 4),
    )
    def prop(dtype, shape, seed, amsgrad, clipvalue, clipnorm, steps):
        rng = np.random.default_rng(seed)
        var0 = np.array(rng.standard_normal(shape), dtype=dtype)
        kw = {
            "learning_rate": 0.1,
            "amsgrad": amsgrad,
            "clipvalue": clipvalue,
            "clipnorm": clipnorm,
        }
        os_, od = numbadam.Adam(**kw), numbadam.Adam(**kw)
        ws, wd = to_device(var0.copy(), backend), to_device(var0.copy(), backend)
        for _ in range(steps):
            k = int(rng.integers(0, shape[0] + 1))
            idx = rng.permutation(shape[0])[:k]
            vals = _dyadic(rng, (k,) + shape[1:], dtype)
            dense = np.zeros(shape, dtype)
            dense[idx] = vals
            os_.apply_gradients(
                [(_slices(IndexedSlices(vals, idx, shape), backend), ws)]
            )
            od.apply_gradients([(to_device(dense, backend), wd)])
        assert_bitwise(ws, wd, "var")
        for name in os_.get_slot_names():
            assert_bitwise(os_.get_slot(ws, name), od.get_slot(wd, name), name)

    prop()


def _mostly_zero(rng, shape, dtype):
    """Long runs of +0.0 (crossing the kernels' 256-element skip chunks) with a
    few -0.0, subnormal, NaN, infinite and ordinary entries."""
    n = int(np.prod(shape))
    a = np.zeros(n, dtype)
    specials = np.array([-0.0, np.finfo(dtype).smallest_subnormal, np.nan, np.inf, 0.5])
    for _ in range(int(rng.integers(0, 6))):
        a[int(rng.integers(0, n))] = specials[int(rng.integers(0, len(specials)))]
    return np.abs(a).reshape(shape) if rng.random() < 0.5 else a.reshape(shape)


def test_zero_state_stretches_equal_dense_zero_filled(backend):
    """Rows without a gradient whose moments are +0.0 are skipped by the sparse
    kernels: bitwise the dense step anyway, for tables crossing the skip chunks,
    -0.0/NaN/inf entries in the variable and state, and the hyperparameters
    for which skipping would change bits (lr <= 0, eps = 0 or inf). An
    infinite lr, a negative eps and beta_1 = 1 are refused by the optimizer
    (ValueError at the step, test_bad_input.py), so they never reach a kernel."""
    _small_blocks()

    @settings(deadline=None, max_examples=n_examples(backend, 60, 8))
    @given(
        dtype=DTYPES,
        rows=st.integers(1, 300),
        width=st.sampled_from([1, 3, 64]),
        seed=SEEDS,
        amsgrad=st.booleans(),
        lr=st.sampled_from([0.1, -0.1, 0.0, -0.0, 1e-30]),
        eps=st.sampled_from([1e-7, 1e-30, 0.0, np.inf]),
        beta_1=st.sampled_from([0.9, 0.0]),
        steps=st.integers(1, 3),
    )
    def prop(dtype, rows, width, seed, amsgrad, lr, eps, beta_1, steps):
        rng = np.random.default_rng(seed)
        shape = (rows, width)
        var0 = np.array(rng.standard_normal(shape), dtype=dtype)
        var0.reshape(-1)[rng.integers(0, var0.size, 3)] = [-0.0, np.nan, np.inf]
        kw = {
            # callables: a constant epsilon of 0 means 1e-7 (Keras)
            "learning_rate": lambda: lr,
            "epsilon": lambda: eps,
            "beta_1": beta_1,
            "amsgrad": amsgrad,
        }
        os_, od = numbadam.Adam(**kw), numbadam.Adam(**kw)
        ws, wd = to_device(var0.copy(), backend), to_device(var0.copy(), backend)
        os_.build([ws])
        od.build([wd])
        state = [np.zeros((), np.int64)] + [
            _mostly_zero(rng, shape, dtype) for _ in os_.get_slot_names()
        ]
        os_.set_weights(state)
        od.set_weights(state)
        with np.errstate(all="ignore"):
            for _ in range(steps):
                k = int(rng.integers(0, min(rows, 4) + 1))
                idx = rng.permutation(rows)[:k]
                vals = _dyadic(rng, (k, width), dtype)
                dense = np.zeros(shape, dtype)
                dense[idx] = vals
                os_.apply_gradients(
                    [(_slices(IndexedSlices(vals, idx, shape), backend), ws)]
                )
                od.apply_gradients([(to_device(dense, backend), wd)])
        _assert_bitwise_nan_aside(ws, wd, "var")
        for name in os_.get_slot_names():
            _assert_bitwise_nan_aside(
                os_.get_slot(ws, name), od.get_slot(wd, name), name
            )

    prop()


def _assert_bitwise_nan_aside(actual, expected, what):
    # NaN in the same places; every other bit equal. (IEEE 754 leaves the sign
    # and payload of a NaN result open: with NaN operands on both sides of a
    # subtraction, differently compiled loops may return either one.)
    a, e = np.asarray(to_host(actual)), np.asarray(to_host(expected))
    nan = np.isnan(a)
    assert np.array_equal(nan, np.isnan(e)), f"{what}: NaN in different places"
    assert_bitwise(np.where(nan, 0, a), np.where(nan, 0, e), what)


def test_duplicates_equal_presummed(backend):
    """Duplicate rows are summed (after clipping each); exact sums: bitwise."""
    _small_blocks()

    @settings(deadline=None, max_examples=n_examples(backend, 50, 10))
    @given(
        dtype=DTYPES,
        shape=TABLES,
        seed=SEEDS,
        amsgrad=st.booleans(),
        clipvalue=st.sampled_from([None, 0.5, 2.0]),
        steps=st.integers(1, 3),
        index_dtype=st.sampled_from([np.int32, np.int64, np.uint16]),
    )
    def prop(dtype, shape, seed, amsgrad, clipvalue, steps, index_dtype):
        rng = np.random.default_rng(seed)
        var0 = np.array(rng.standard_normal(shape), dtype=dtype)
        o_dup = numbadam.Adam(0.1, amsgrad=amsgrad, clipvalue=clipvalue)
        o_sum = numbadam.Adam(0.1, amsgrad=amsgrad)  # gets pre-clipped sums
        wa, wb = to_device(var0.copy(), backend), to_device(var0.copy(), backend)
        for _ in range(steps):
            k = int(rng.integers(0, 3 * shape[0]))
            idx = rng.integers(0, shape[0], size=k)
            vals = _dyadic(rng, (k,) + shape[1:], dtype, lim=20)
            clipped = (
                vals if clipvalue is None else np.clip(vals, -clipvalue, clipvalue)
            )
            uniq = rng.permutation(np.unique(idx))  # any order of unique indices
            summed = np.zeros((len(uniq),) + shape[1:], np.float64)
            for j, i in enumerate(uniq):
                summed[j] = clipped[idx == i].astype(np.float64).sum(axis=0)
            assert np.array_equal(summed.astype(dtype), summed)  # exact in dtype
            o_dup.apply_gradients(
                [
                    (
                        _slices(
                            IndexedSlices(vals, idx.astype(index_dtype), shape), backend
                        ),
                        wa,
                    )
                ]
            )
            o_sum.apply_gradients(
                [
                    (
                        _slices(
                            IndexedSlices(summed.astype(dtype), uniq, shape), backend
                        ),
                        wb,
                    )
                ]
            )
        assert_bitwise(wa, wb, "var")
        for name in o_dup.get_slot_names():
            assert_bitwise(o_dup.get_slot(wa, name), o_sum.get_slot(wb, name), name)

    prop()


def test_duplicates_match_float64_sum(backend):
    """Random (inexact) duplicates: the oracle sums them in float64 (np.add.at)."""

    @settings(deadline=None, max_examples=n_examples(backend, 30, 8))
    @given(
        dtype=st.sampled_from([np.float32, np.float64]),
        seed=SEEDS,
        clipnorm=st.sampled_from([None, 1.0]),
    )
    def prop(dtype, seed, clipnorm):
        rng = np.random.default_rng(seed)
        shape = (5, 3)
        var0 = np.array(rng.standard_normal(shape), dtype=dtype)
        grads = []
        for _ in range(3):
            idx = np.array([0, 0, 0, 2, 4, 2])
            grads.append(IndexedSlices(_grad(rng, (6, 3), dtype), idx, shape))
        run_checked(backend, var0, grads, {"learning_rate": 0.1, "clipnorm": clipnorm})

    prop()


# ---------------------------------------------------------------------------
# AMSGrad
# ---------------------------------------------------------------------------


def test_vhat_monotone_and_above_v(backend):
    _small_blocks()

    @settings(deadline=None, max_examples=n_examples(backend, 40, 8))
    @given(
        dtype=DTYPES,
        shape=TABLES,
        seed=SEEDS,
        beta_2=st.floats(0.5, 0.999),
        steps=st.integers(2, 6),
        sparse=st.booleans(),
    )
    def prop(dtype, shape, seed, beta_2, steps, sparse):
        rng = np.random.default_rng(seed)
        opt = numbadam.Adam(0.05, beta_2=beta_2, amsgrad=True)
        w = to_device(np.array(rng.standard_normal(shape), dtype=dtype), backend)
        prev = np.zeros(shape, dtype)
        for s in range(steps):
            shrink = 10.0**-s  # falling gradients make v fall below vhat
            if sparse:
                g = _sparse(rng, shape, dtype, int(rng.integers(0, 6)))
                g.values = np.array(g.values * shrink, dtype=dtype)
                g = _slices(g, backend)
            else:
                g = to_device(
                    np.array(_grad(rng, shape, dtype) * shrink, dtype=dtype), backend
                )
            opt.apply_gradients([(g, w)])
            v = to_host(opt.get_slot(w, "v"))
            vhat = to_host(opt.get_slot(w, "vhat"))
            assert vhat.dtype == np.dtype(dtype)
            assert np.all(vhat >= prev), "vhat decreased"
            assert np.all(vhat >= v), "vhat < v"
            prev = vhat

    prop()


# ---------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------


def _with_threads(n, fn):
    old = numba.get_num_threads()
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))
    try:
        return fn()
    finally:
        numba.set_num_threads(old)


@settings(deadline=None, max_examples=25)
@given(
    dtype=DTYPES,
    n=st.integers(0, 700),
    seed=SEEDS,
    amsgrad=st.booleans(),
    clipnorm=st.sampled_from([None, 0.5]),
    sparse=st.sampled_from([None, "dense", "lazy"]),
)
def test_one_thread_equals_two_threads(dtype, n, seed, amsgrad, clipnorm, sparse):
    _config.CPU_SERIAL_MAX = 1  # the parallel kernels
    _config.CPU_BLOCK = 64
    _config.CPU_SPARSE_BLOCK_ROWS = 4
    try:
        rng = np.random.default_rng(seed)
        rows = max(n // 5, 1)
        var0 = np.array(rng.standard_normal((rows, 5)), dtype=dtype)
        grads = []
        for _ in range(3):
            if sparse:
                grads.append(
                    _sparse(rng, (rows, 5), dtype, int(rng.integers(0, 3 * rows)))
                )
            else:
                grads.append(_grad(rng, (rows, 5), dtype))

        def run():
            w = var0.copy()
            opt = numbadam.Adam(
                0.1, amsgrad=amsgrad, clipnorm=clipnorm, sparse_mode=sparse or "dense"
            )
            for g in grads:
                opt.apply_gradients([(g, w)])
            return [w] + opt.get_weights()

        one = _with_threads(1, run)
        two = _with_threads(2, run)
        for a, b in zip(one, two):
            assert_bitwise(a, b)
    finally:
        _config.reset()


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------


@settings(deadline=None, max_examples=40)
@given(hp=HYPERS, name=st.text(min_size=1, max_size=8), step=st.booleans())
def test_config_round_trip(hp, name, step):
    opt = numbadam.Adam(name=name, **hp)
    if step:
        opt.apply_gradients([(np.ones(2, np.float32), np.zeros(2, np.float32))])
    cfg = opt.get_config()
    cfg2 = json.loads(json.dumps(cfg))
    again = numbadam.Adam.from_config(cfg2)
    assert again.get_config() == cfg
    for key in ("learning_rate", "beta_1", "beta_2"):
        expected = float(np.float32(hp[key])) if step else hp[key]
        assert cfg[key] == expected
    assert cfg["epsilon"] == hp["epsilon"] and cfg["amsgrad"] == hp["amsgrad"]
    for key in ("clipvalue", "clipnorm"):
        assert cfg.get(key) == hp[key]


def test_weights_round_trip(backend):
    @settings(deadline=None, max_examples=n_examples(backend, 30, 6))
    @given(
        specs=st.lists(st.tuples(SHAPES, DTYPES), min_size=1, max_size=3),
        amsgrad=st.booleans(),
        steps=st.integers(1, 3),
        seed=SEEDS,
    )
    def prop(specs, amsgrad, steps, seed):
        rng = np.random.default_rng(seed)
        host0 = [np.array(rng.standard_normal(s), dtype=d) for s, d in specs]
        va = [to_device(h.copy(), backend) for h in host0]
        opt = numbadam.Adam(0.1, amsgrad=amsgrad)
        for _ in range(steps):
            opt.apply_gradients(
                [
                    (to_device(_grad(rng, h.shape, h.dtype), backend), v)
                    for h, v in zip(host0, va)
                ]
            )
        weights = opt.get_weights()
        vb = [to_device(to_host(v), backend) for v in va]
        fresh = numbadam.Adam(0.1, amsgrad=amsgrad)
        fresh.build(vb)
        fresh.set_weights(weights)
        for x, y in zip(fresh.get_weights(), weights):
            assert_bitwise(x, y)
        gs = [_grad(rng, h.shape, h.dtype) for h in host0]
        opt.apply_gradients([(to_device(g, backend), v) for g, v in zip(gs, va)])
        fresh.apply_gradients([(to_device(g, backend), v) for g, v in zip(gs, vb)])
        for x, y in zip(va, vb):
            assert_bitwise(x, y)

    prop()


# ---------------------------------------------------------------------------
# CPU == CUDA
# ---------------------------------------------------------------------------


@pytest.mark.cuda
def test_cpu_equals_cuda(cuda_backend):
    _small_blocks()

    @settings(deadline=None, max_examples=10)
    @given(dtype=DTYPES, shape=TABLES, hp=HYPERS, seed=SEEDS, sparse=st.booleans())
    def prop(dtype, shape, hp, seed, sparse):
        rng = np.random.default_rng(seed)
        var0 = np.array(rng.standard_normal(shape), dtype=dtype)
        if sparse:
            grads = [
                _sparse(rng, shape, dtype, int(rng.integers(0, 8))) for _ in range(3)
            ]
        else:
            grads = [_grad(rng, shape, dtype) for _ in range(3)]
        oc, og = numbadam.Adam(**hp), numbadam.Adam(**hp)
        wc, wg = var0.copy(), to_device(var0.copy(), "cuda")
        for g in grads:
            oc.apply_gradients([(g, wc)])
            gd = _slices(g, "cuda") if sparse else to_device(g, "cuda")
            og.apply_gradients([(gd, wg)])
            assert_close(wg, wc.astype(np.float64), dtype, what="var")
            for name in oc.get_slot_names():
                assert_close(
                    og.get_slot(wg, name),
                    oc.get_slot(wc, name).astype(np.float64),
                    dtype,
                    what=name,
                )

    prop()
