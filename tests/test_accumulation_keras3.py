"""Gradient accumulation and Keras 3: ``.weights.h5`` state and live steps.

The fixture ``tests/data/keras3_accum.*`` was written by Keras 3 (JAX) with
``tests/data/make_keras3_accum_fixture.py``: Adam with
``gradient_accumulation_steps=3`` saved after 4 calls, in the middle of a
cycle, then two more Keras calls. The file tests need h5py; the live ones
run Keras itself and skip without it (``KERAS_BACKEND=jax python -m pytest
tests/test_accumulation_keras3.py`` in an environment with keras and jax).
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from helpers import keras3_or_skip

import numbadam
from numbadam import keras3

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
needs_h5py = pytest.mark.skipif(
    importlib.util.find_spec("h5py") is None, reason="h5py is not installed"
)
f32 = np.float32


def fixture():
    path = os.path.join(DATA, "keras3_accum.weights.h5")
    npz = dict(np.load(os.path.join(DATA, "keras3_accum.npz")))
    arrays = keras3.load_keras_variables(path)
    return path, npz, [arrays[p] for p in npz["paths"]]


def file_vars(path):
    import h5py

    with h5py.File(path, "r") as f:
        g = f["optimizer/vars"]
        return [np.asarray(g[str(j)][()]) for j in range(len(g))]


def ulp(x):
    return np.spacing(np.abs(x).astype(np.float32))


@needs_h5py
def test_layout_and_load_mid_cycle():
    path, npz, vars_ = fixture()
    n = len(vars_)
    opt = numbadam.Adam(0.5, gradient_accumulation_steps=3)
    assert keras3.keras_layout(opt, vars_)[2 : 2 + n] == [
        f"gradient_accumulator (accumulator) of variable {i}" for i in range(n)
    ]
    assert keras3.load_keras_optimizer(path, opt, vars_) == 1  # updates
    saved = file_vars(path)
    assert int(opt.weights[0]) == int(saved[0]) == 4  # calls
    for i, x in enumerate(vars_):
        acc = opt.get_slot(x, "accumulator")
        assert saved[2 + i].any() and np.array_equal(acc, saved[2 + i])
        assert np.array_equal(opt.get_slot(x, "m"), saved[2 + n + 2 * i])


@needs_h5py
def test_loaded_state_gives_keras_steps_with_keras_arithmetic():
    # Keras 3's own arithmetic in NumPy float32, from the state numbadam
    # loaded: acc = g + acc, then the mean (g + acc) / 3 and the Adam step of
    # t = 2, reproduces what Keras computed, bit for bit. (Under JAX, XLA
    # compiles Keras' division by the constant 3 into a product with the
    # float32 reciprocal of 3; numbadam divides, as Keras' source and its
    # TensorFlow backend do: the two means may differ in the last bit.)
    path, npz, vars_ = fixture()
    cfg = json.loads(str(npz["config"]))
    opt = numbadam.Adam(0.01, gradient_accumulation_steps=3)
    keras3.load_keras_optimizer(path, opt, vars_)
    b1, b2, eps = cfg["beta_1"], cfg["beta_2"], cfg["epsilon"]
    lr, t = f32(opt.learning_rate), f32(int(opt.iterations) + 1)
    jax = str(npz["backend"]) == "jax"
    alpha = lr * np.sqrt(f32(1) - f32(b2) ** t) / (f32(1) - f32(b1) ** t)
    for i, x in enumerate(vars_):
        acc = npz[f"grad_0_{i}"] + opt.get_slot(x, "accumulator")
        total = npz[f"grad_1_{i}"] + acc
        g = total * (f32(1) / f32(3)) if jax else total / f32(3)
        m = opt.get_slot(x, "m") + (g - opt.get_slot(x, "m")) * f32(1 - b1)
        v = opt.get_slot(x, "v") + (g * g - opt.get_slot(x, "v")) * f32(1 - b2)
        want = x - (m * alpha) / (np.sqrt(v) + f32(eps))
        assert np.array_equal(want, npz[f"next_var_{i}"]), f"variable {i}"


@needs_h5py
def test_numbadam_finishes_the_keras_cycle(tmp_path):
    path, npz, vars_ = fixture()
    before = [x.copy() for x in vars_]
    opt = numbadam.Adam(0.01, gradient_accumulation_steps=3)
    keras3.load_keras_optimizer(path, opt, vars_)
    for k in range(2):
        opt.apply_gradients(
            [(npz[f"grad_{k}_{i}"], x) for i, x in enumerate(vars_)]
        )
    assert int(opt.iterations) == 2 and int(opt.weights[0]) == 6
    for i, x in enumerate(vars_):
        kx = npz[f"next_var_{i}"]
        # (1 - beta) rounds from float64 in Keras 3, from float32 beta here
        tol = 1e-4 * np.abs(kx - before[i]) + 2 * ulp(kx)
        assert np.all(np.abs(x - kx) <= tol), f"variable {i}"
    out = tmp_path / "next.weights.h5"
    keras3.save_keras_optimizer(out, opt, vars_)
    written = file_vars(out)
    next_opt = [npz[f"next_opt_{j}"] for j in range(len(written))]
    assert int(written[0]) == int(next_opt[0]) == 6
    for j in range(2, 2 + len(vars_)):  # the cycle ended: zeros, as Keras'
        assert not written[j].any() and not next_opt[j].any()


@needs_h5py
def test_round_trip_mid_cycle_bitwise(tmp_path):
    rng = np.random.default_rng(3)
    vars_ = [rng.standard_normal((3, 2)).astype(f32), np.zeros(2, f32)]
    opt = numbadam.Adam(0.1, gradient_accumulation_steps=4)
    grads = [
        [rng.standard_normal(v.shape).astype(f32) for v in vars_] for _ in range(7)
    ]
    for gs in grads[:2]:
        opt.apply_gradients(list(zip(gs, vars_)))
    path = tmp_path / "a.weights.h5"
    keras3.save_keras_optimizer(path, opt, vars_)
    twin_vars = [v.copy() for v in vars_]
    twin = numbadam.Adam(0.1, gradient_accumulation_steps=4)
    keras3.load_keras_optimizer(path, twin, twin_vars)
    for gs in grads[2:]:
        opt.apply_gradients(list(zip(gs, vars_)))
        twin.apply_gradients(list(zip([g.copy() for g in gs], twin_vars)))
    assert all(np.array_equal(a, b) for a, b in zip(vars_, twin_vars))


@needs_h5py
def test_with_ema_layout_and_round_trip_mid_cycle_bitwise(tmp_path):
    # Keras 3's BaseOptimizer.build creates, per variable, the average and
    # then the gradient accumulator; Adam.build then m and v per variable
    rng = np.random.default_rng(5)
    vars_ = [rng.standard_normal(s).astype(f32) for s in ((3, 2), (2,))]
    kw = dict(use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=3,
              gradient_accumulation_steps=2)  # fmt: skip
    opt = numbadam.Adam(0.1, **kw)
    names = [r.split(" ")[0] for r in keras3.keras_layout(opt, vars_)]
    assert names == ["iteration", "learning_rate"] + [
        "average", "gradient_accumulator"] * 2 + ["momentum", "velocity"] * 2
    grads = [
        [rng.standard_normal(v.shape).astype(f32) for v in vars_] for _ in range(9)
    ]
    for gs in grads[:3]:  # one cycle and one accumulating call
        opt.apply_gradients(list(zip(gs, vars_)))
    path = tmp_path / "e.weights.h5"
    keras3.save_keras_optimizer(path, opt, vars_)
    written = file_vars(path)
    for i, x in enumerate(vars_):
        assert np.array_equal(written[2 + 2 * i], opt.get_slot(x, "average"))
        assert np.array_equal(written[3 + 2 * i], opt.get_slot(x, "accumulator"))
        assert written[3 + 2 * i].any()  # the pending call's gradient
    twin_vars = [v.copy() for v in vars_]
    twin = numbadam.Adam(0.1, **kw)
    keras3.load_keras_optimizer(path, twin, twin_vars)
    for gs in grads[3:]:
        opt.apply_gradients(list(zip(gs, vars_)))
        twin.apply_gradients(list(zip([g.copy() for g in gs], twin_vars)))
    assert all(np.array_equal(a, b) for a, b in zip(vars_, twin_vars))
    for a, b in zip(opt.get_weights(), twin.get_weights()):
        assert np.array_equal(a, b)


# -- live: Keras 3 itself ------------------------------------------------------


@pytest.fixture(scope="module")
def keras():
    return keras3_or_skip()


@pytest.mark.parametrize(
    "make",
    [
        lambda m: m.Adam(0.05, gradient_accumulation_steps=3),
        lambda m: m.Adam(
            0.05, amsgrad=True, clipvalue=0.3, gradient_accumulation_steps=2
        ),
        lambda m: m.AdamW(0.05, weight_decay=0.1, gradient_accumulation_steps=4),
        lambda m: m.AdamW(
            0.05, weight_decay=0.1, gradient_accumulation_steps=3, use_ema=True,
            ema_momentum=0.7, ema_overwrite_frequency=4,
        ),
    ],
    ids=["adam", "amsgrad-clipvalue", "adamw", "adamw-ema"],
)
def test_live_side_by_side(keras, make):
    rng = np.random.default_rng(4)
    shapes = [(5, 3), (3,)]
    init = [rng.standard_normal(s).astype(f32) for s in shapes]
    kvars = [keras.Variable(x.copy()) for x in init]
    nvars = [x.copy() for x in init]
    kopt, nopt = make(keras.optimizers), make(numbadam)
    for call in range(12):
        gs = [rng.standard_normal(s).astype(f32) for s in shapes]
        kopt.apply_gradients(
            [(keras.ops.convert_to_tensor(g), v) for g, v in zip(gs, kvars)]
        )
        ret = nopt.apply_gradients(list(zip(gs, nvars)))
        assert int(ret) == int(kopt._iterations) == call + 1
        assert int(nopt.iterations) == int(kopt.iterations)
        for kv, nv in zip(kvars, nvars):
            kx = np.asarray(kv)
            assert np.all(np.abs(nv - kx) <= 1e-5 * np.abs(kx) + 1e-6), call
    accs = [np.asarray(v) for v in kopt.variables if "gradient_accumulator" in v.path]
    weights = nopt.get_weights()
    for j, a in enumerate(accs):  # the accumulators, bit for bit
        assert np.array_equal(weights[1 + j], a)
    if nopt.get_config().get("use_ema"):  # the averages, moved on every call
        avgs = [np.asarray(v) for v in kopt.variables if v.path.endswith("average")]
        assert len(avgs) == len(nvars)
        for nv, a in zip(nvars, avgs):
            na = nopt.get_slot(nv, "average")
            assert np.all(np.abs(na - a) <= 1e-5 * np.abs(a) + 1e-6)
