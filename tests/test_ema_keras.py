"""``use_ema`` against Keras 3: its ``.weights.h5`` files and Keras itself.

The fixture ``tests/data/keras3_ema.*`` was written by Keras 3 (JAX) with
``tests/data/make_keras3_fixture.py ema``: the ``adam`` model trained 4 steps
with ``use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=3``, then one
more step recorded. Tests that read files need h5py; those that run Keras
import it or skip (``helpers.keras3_or_skip``).
"""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from helpers import assert_bitwise, keras3_or_skip

import numbadam
from numbadam import keras3

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
HAVE_H5PY = importlib.util.find_spec("h5py") is not None
needs_h5py = pytest.mark.skipif(not HAVE_H5PY, reason="h5py is not installed")
f32 = np.float32
H5 = os.path.join(DATA, "keras3_ema.weights.h5")


def _npz():
    return dict(np.load(os.path.join(DATA, "keras3_ema.npz")))


def _file_vars(path):
    import h5py

    with h5py.File(path, "r") as f:
        g = f["optimizer/vars"]
        return [np.asarray(g[str(j)][()]) for j in range(len(g))]


def _twin(cfg):
    return numbadam.Adam(
        cfg["learning_rate"], cfg["beta_1"], cfg["beta_2"], cfg["epsilon"],
        use_ema=True, ema_momentum=cfg["ema_momentum"],
        ema_overwrite_frequency=cfg["ema_overwrite_frequency"],
    )  # fmt: skip


def _keras_index(n, i, what):
    # Keras 3's build(): iteration, learning_rate, the averages (the base
    # optimizer's build), then momentum and velocity interleaved (Adam's)
    return {"average": 2 + i, "m": 2 + n + 2 * i, "v": 2 + n + 2 * i + 1}[what]


def test_layout_puts_averages_first():
    opt = numbadam.Adam(0.01, use_ema=True)
    got = keras3.keras_layout(opt, [np.zeros(2, f32), np.zeros(3, f32)])
    assert got == [
        "iteration", "learning_rate",
        "average (average) of variable 0", "average (average) of variable 1",
        "momentum (m) of variable 0", "velocity (v) of variable 0",
        "momentum (m) of variable 1", "velocity (v) of variable 1",
    ]  # fmt: skip


@needs_h5py
def test_load_keras_ema_state_and_its_next_average():
    npz = _npz()
    cfg = json.loads(str(npz["config"]))
    arrays = keras3.load_keras_variables(H5)
    vars_ = [arrays[p] for p in npz["paths"]]
    saved = _file_vars(H5)
    assert len(saved) == 2 + 3 * len(vars_)
    opt = _twin(cfg)
    assert keras3.load_keras_optimizer(H5, opt, vars_) == 4
    n = len(vars_)
    for i, x in enumerate(vars_):
        for what in ("average", "m", "v"):
            j = _keras_index(n, i, what)
            assert_bitwise(opt.get_slot(x, what), saved[j], f"{what} of {i}")
    # Keras' next average, from its next variable, is the formula with
    # Keras' float32 scalars (momentum = f32(0.9), 1 - momentum in float32)
    mom = f32(cfg["ema_momentum"])
    for i, x in enumerate(vars_):
        want = (mom * opt.get_slot(x, "average")) + (
            (f32(1) - mom) * npz[f"next_var_{i}"]
        )
        assert_bitwise(npz[f"next_opt_{_keras_index(n, i, 'average')}"], want)


@needs_h5py
def test_plain_adam_refuses_an_ema_file():
    npz = _npz()
    arrays = keras3.load_keras_variables(H5)
    vars_ = [arrays[p] for p in npz["paths"]]
    with pytest.raises(numbadam.CheckpointError, match="use_ema=True"):
        keras3.load_keras_optimizer(H5, numbadam.Adam(0.01), vars_)


@needs_h5py
def test_save_load_round_trip_bitwise(tmp_path):
    rng = np.random.default_rng(9)
    xs = [np.array(rng.standard_normal(s), f32) for s in [(3, 2), (2,)]]
    opt = numbadam.Adam(0.05, use_ema=True, ema_momentum=0.8)
    for _ in range(3):
        opt.apply_gradients(
            [(np.array(rng.standard_normal(x.shape), f32), x) for x in xs]
        )
    path = tmp_path / "ema.weights.h5"
    keras3.save_keras_optimizer(path, opt, xs)
    twin = numbadam.Adam(0.05, use_ema=True, ema_momentum=0.8)
    ys = [x.copy() for x in xs]
    keras3.load_keras_optimizer(path, twin, ys)
    for a, b in zip(opt.get_weights(), twin.get_weights()):
        assert_bitwise(b, a)


# ---------------------------------------------------------------------------
# Keras itself (the k3venv of the project's helpers has it)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras():
    return keras3_or_skip()


@pytest.mark.parametrize("freq", [None, 3])
@pytest.mark.parametrize("momentum", [0.9, 0.0])
def test_live_keras_bitwise(keras, freq, momentum):
    # beta_1 = beta_2 = 0 makes Keras 3's Adam step numbadam's bit for bit
    # (1 - beta is 1 in both roundings): the averages and the overwrites
    # then follow Keras' exactly.
    rng = np.random.default_rng([10, freq or 0])
    x0 = np.array(rng.standard_normal((5, 3)), f32)
    kw = dict(beta_1=0.0, beta_2=0.0, use_ema=True, ema_momentum=momentum,
              ema_overwrite_frequency=freq)  # fmt: skip
    kvar = keras.Variable(x0.copy(), dtype="float32")
    kopt = keras.optimizers.Adam(0.05, **kw)
    x = x0.copy()
    opt = numbadam.Adam(0.05, **kw)
    for s in range(7):
        g = np.array(rng.standard_normal(x0.shape), f32)
        kopt.apply_gradients([(keras.ops.convert_to_tensor(g), kvar)])
        opt.apply_gradients([(g, x)])
        avg = [v for v in kopt.variables if v.path.endswith("_average")][0]
        assert_bitwise(x, np.asarray(kvar), f"var, step {s + 1}")
        assert_bitwise(opt.get_slot(x, "average"), np.asarray(avg), f"avg {s + 1}")
    kopt.finalize_variable_values([kvar])
    opt.finalize_variable_values([x])
    assert_bitwise(x, np.asarray(kvar), "finalized")


def test_live_keras_default_betas(keras):
    # Default betas: Keras 3 rounds 1 - beta from float64, numbadam from
    # float32 beta (docs/keras3.md): the averages agree to float32 tolerance.
    rng = np.random.default_rng(11)
    x0 = np.array(rng.standard_normal(20), f32)
    kw = dict(use_ema=True, ema_momentum=0.95, ema_overwrite_frequency=4)
    kvar = keras.Variable(x0.copy(), dtype="float32")
    kopt = keras.optimizers.Adam(0.01, **kw)
    x = x0.copy()
    opt = numbadam.Adam(0.01, **kw)
    for _ in range(9):
        g = np.array(rng.standard_normal(x0.shape), f32)
        kopt.apply_gradients([(keras.ops.convert_to_tensor(g), kvar)])
        opt.apply_gradients([(g, x)])
    avg = [v for v in kopt.variables if v.path.endswith("_average")][0]
    np.testing.assert_allclose(opt.get_slot(x, "average"), np.asarray(avg), rtol=1e-5)
    np.testing.assert_allclose(x, np.asarray(kvar), rtol=1e-5)


@needs_h5py
def test_keras_loads_numbadam_ema_state(keras, tmp_path):
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    model.compile(
        optimizer=keras.optimizers.Adam(0.01, use_ema=True, ema_momentum=0.9),
        loss="mse",
    )
    model.optimizer.build(model.trainable_variables)
    xs = [np.asarray(v).copy() for v in model.trainable_variables]
    opt = numbadam.Adam(0.01, use_ema=True, ema_momentum=0.9)
    rng = np.random.default_rng(12)
    for _ in range(3):
        opt.apply_gradients(
            [(np.array(rng.standard_normal(x.shape), f32), x) for x in xs]
        )
    path = tmp_path / "m.weights.h5"
    paths = ["layers/dense/vars/0", "layers/dense/vars/1"]
    keras3.save_keras_optimizer(path, opt, xs, variables=dict(zip(paths, xs)))
    model.load_weights(path)
    n = len(xs)
    kv = [np.asarray(v) for v in model.optimizer.variables]
    assert int(kv[0]) == 3
    for i, x in enumerate(xs):
        for what in ("average", "m", "v"):
            assert_bitwise(kv[_keras_index(n, i, what)], opt.get_slot(x, what))
