"""numbadam.keras3: the optimizer state of Keras 3 ``.weights.h5`` files.

The fixtures in ``tests/data`` were written by Keras 3 (JAX backend) with
``tests/data/make_keras3_fixture.py``: a few Adam steps, ``save_weights``, then
what Keras computed at the next step from a fixed gradient. Tests that read or
write files need h5py (the ``test`` extra has it); those that run Keras itself
skip without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import stat
import sys

import numpy as np
import pytest
from helpers import assert_bitwise, assert_unchanged, keras3_or_skip, snapshot

import numbadam
from numbadam import CheckpointError, keras3

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
HAVE_H5PY = importlib.util.find_spec("h5py") is not None
needs_h5py = pytest.mark.skipif(not HAVE_H5PY, reason="h5py is not installed")
f32 = np.float32


def fixture(case):
    """(path of the .weights.h5, the npz of Keras' next step)."""
    return os.path.join(DATA, f"keras3_{case}.weights.h5"), dict(
        np.load(os.path.join(DATA, f"keras3_{case}.npz"))
    )


def file_vars(path):
    import h5py

    with h5py.File(path, "r") as f:
        g = f["optimizer/vars"]
        return [np.asarray(g[str(j)][()]) for j in range(len(g))]


def keras_config(npz):
    return json.loads(str(npz["config"]))


def numbadam_twin(npz):
    """A numbadam Adam configured as the fixture's Keras optimizer."""
    cfg = keras_config(npz)
    lr = cfg["learning_rate"]
    if isinstance(lr, dict):
        c = lr["config"]
        lr = numbadam.schedules.ExponentialDecay(
            c["initial_learning_rate"], c["decay_steps"], c["decay_rate"]
        )
    return numbadam.Adam(
        lr, cfg["beta_1"], cfg["beta_2"], cfg["epsilon"], amsgrad=cfg["amsgrad"]
    )


def model_vars(path, npz):
    arrays = keras3.load_keras_variables(path)
    return [arrays[p] for p in npz["paths"]]


def keras_indices(n, with_lr, amsgrad):
    """Keras 3's dataset index of (var i, slot): written from Keras' build()."""
    base = 2 if with_lr else 1
    out = {}
    for i in range(n):
        out[(i, "m")] = base + 2 * i  # momentum and velocity interleaved
        out[(i, "v")] = base + 2 * i + 1
        if amsgrad:
            out[(i, "vhat")] = base + 2 * n + i  # velocity_hat after all of them
    return out


def ulp(x):
    return np.spacing(np.abs(x).astype(np.float32))


# ---------------------------------------------------------------------------
# without h5py
# ---------------------------------------------------------------------------


def test_missing_h5py_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "h5py", None)  # (import h5py now fails)
    w = np.zeros(2, np.float32)
    opt = numbadam.Adam()
    opt.build([w])
    calls = [
        lambda: keras3.save_keras_optimizer(tmp_path / "a.weights.h5", opt, [w]),
        lambda: keras3.load_keras_optimizer(tmp_path / "a.weights.h5", opt, [w]),
        lambda: keras3.load_keras_variables(tmp_path / "a.weights.h5"),
    ]
    for call in calls:
        with pytest.raises(ImportError, match=r"numbadam\[keras\].*h5py"):
            call()
    assert not os.listdir(tmp_path)


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("schedule", [False, True])
def test_layout(amsgrad, schedule):
    lr = numbadam.schedules.ExponentialDecay(0.1, 10, 0.5) if schedule else 0.1
    opt = numbadam.Adam(lr, amsgrad=amsgrad)
    shapes = [(3, 4), (4,), ()]
    got = keras3.keras_layout(opt, [np.zeros(s, np.float32) for s in shapes])
    want = ["iteration"] + ([] if schedule else ["learning_rate"])
    for i in range(3):
        want += [f"momentum (m) of variable {i}", f"velocity (v) of variable {i}"]
    if amsgrad:
        want += [f"velocity_hat (vhat) of variable {i}" for i in range(3)]
    assert got == want
    assert len(opt.weights) == 0  # (describing builds nothing)


# ---------------------------------------------------------------------------
# Keras' files (the fixtures)
# ---------------------------------------------------------------------------


@needs_h5py
@pytest.mark.parametrize("case", ["adam", "amsgrad"])
def test_fixture_layout_is_what_the_docs_say(case):
    import h5py

    path, npz = fixture(case)
    cfg = keras_config(npz)
    with_lr = not isinstance(cfg["learning_rate"], dict)
    saved = file_vars(path)
    with h5py.File(path, "r") as f:
        assert sorted(f["optimizer"]) == ["vars"]
        shapes = [tuple(f[p].shape) for p in npz["paths"]]
    assert saved[0].shape == () and saved[0].dtype == np.int32  # JAX's "int"
    assert int(saved[0]) == 4  # 8 samples, batches of 4, 2 epochs
    if with_lr:
        assert saved[1].shape == () and saved[1].dtype == np.float32
    idx = keras_indices(len(shapes), with_lr, cfg["amsgrad"])
    assert len(saved) == 1 + with_lr + len(idx)
    for (i, _), j in idx.items():
        assert saved[j].shape == shapes[i] and saved[j].dtype == np.float32


@needs_h5py
@pytest.mark.parametrize("case", ["adam", "amsgrad"])
def test_load_gives_keras_state(case):
    path, npz = fixture(case)
    cfg = keras_config(npz)
    saved = file_vars(path)
    vars_ = model_vars(path, npz)
    opt = numbadam.Adam(0.5, amsgrad=cfg["amsgrad"])
    if isinstance(cfg["learning_rate"], dict):
        opt = numbadam_twin(npz)
    assert keras3.load_keras_optimizer(path, opt, vars_) == 4
    assert int(opt.iterations) == 4
    with_lr = not isinstance(cfg["learning_rate"], dict)
    if with_lr:  # restored, as Keras' load_weights does
        assert opt.learning_rate == saved[1] and saved[1] == f32(0.01)
    for (i, slot), j in keras_indices(len(vars_), with_lr, cfg["amsgrad"]).items():
        assert_bitwise(opt.get_slot(vars_[i], slot), saved[j], f"{slot} of {i}")


@needs_h5py
@pytest.mark.parametrize("case", ["adam", "amsgrad"])
def test_loaded_state_gives_keras_next_step_with_keras_arithmetic(case):
    # Keras 3's own step, in NumPy float32 from the state numbadam loaded,
    # reproduces what Keras computed bit for bit: the state is Keras' and in
    # the right roles. (Keras 3 rounds 1 - beta from float64, not 1 - f32(beta).)
    path, npz = fixture(case)
    cfg = keras_config(npz)
    vars_ = model_vars(path, npz)
    opt = numbadam_twin(npz)
    step = keras3.load_keras_optimizer(path, opt, vars_)
    if isinstance(cfg["learning_rate"], dict):
        c = cfg["learning_rate"]["config"]
        p = f32(step) / f32(c["decay_steps"])
        lr = f32(c["initial_learning_rate"]) * f32(c["decay_rate"]) ** p
    else:
        lr = f32(opt.learning_rate)
    b1, b2, eps, t = cfg["beta_1"], cfg["beta_2"], cfg["epsilon"], f32(step + 1)
    alpha = lr * np.sqrt(f32(1) - f32(b2) ** t) / (f32(1) - f32(b1) ** t)
    for i, x in enumerate(vars_):
        g = npz[f"grad_{i}"]
        m = opt.get_slot(x, "m") + (g - opt.get_slot(x, "m")) * f32(1 - b1)
        v = opt.get_slot(x, "v") + (g * g - opt.get_slot(x, "v")) * f32(1 - b2)
        d = np.maximum(opt.get_slot(x, "vhat"), v) if cfg["amsgrad"] else v
        assert_bitwise(x - (m * alpha) / (np.sqrt(d) + f32(eps)), npz[f"next_var_{i}"])


@needs_h5py
@pytest.mark.parametrize("case", ["adam", "amsgrad"])
def test_numbadam_continues_keras_training(case):
    path, npz = fixture(case)
    cfg = keras_config(npz)
    vars_ = model_vars(path, npz)
    before = [x.copy() for x in vars_]
    opt = numbadam_twin(npz)
    keras3.load_keras_optimizer(path, opt, vars_)
    old = {(i, s): opt.get_slot(x, s).copy() for i, x in enumerate(vars_) for s in "mv"}
    opt.apply_gradients([(npz[f"grad_{i}"], x) for i, x in enumerate(vars_)])
    assert int(opt.iterations) == 5
    next_opt = [npz[f"next_opt_{j}"] for j in range(len(file_vars(path)))]
    with_lr = not isinstance(cfg["learning_rate"], dict)
    idx = keras_indices(len(vars_), with_lr, cfg["amsgrad"])
    for i, x in enumerate(vars_):
        g = npz[f"grad_{i}"]
        m, v = opt.get_slot(x, "m"), opt.get_slot(x, "v")
        km, kv = next_opt[idx[(i, "m")]], next_opt[idx[(i, "v")]]
        # the one difference: (1 - beta) rounded to float32 from float64 (Keras
        # 3) or from float32 beta (numbadam, tf-keras), e.g. 0.001 vs 0.00099998713
        tol_m = 1e-6 * (np.abs(g) + np.abs(old[(i, "m")])) + 2 * ulp(km)
        tol_v = 3e-5 * (g * g + old[(i, "v")]) + 2 * ulp(kv)
        assert np.all(np.abs(m - km) <= tol_m), f"m of {i}"
        assert np.all(np.abs(v - kv) <= tol_v), f"v of {i}"
        if cfg["amsgrad"]:
            kvh = next_opt[idx[(i, "vhat")]]
            assert np.all(np.abs(opt.get_slot(x, "vhat") - kvh) <= tol_v + ulp(kvh))
        kx = npz[f"next_var_{i}"]
        tol_x = 1e-4 * np.abs(kx - before[i]) + 2 * ulp(kx)
        assert np.all(np.abs(x - kx) <= tol_x), f"variable {i}"
        assert np.all(x != before[i])  # (a step was taken)


@needs_h5py
def test_load_keras_variables_natural_order(tmp_path):
    path, npz = fixture("adam")
    arrays = keras3.load_keras_variables(path)
    assert list(arrays) == list(npz["paths"])
    for a in arrays.values():
        assert a.flags.writeable and a.flags.owndata
    # dense_2 before dense_10, vars/2 before vars/10
    w = np.zeros(1, np.float32)
    opt = numbadam.Adam()
    opt.build([w])
    names = ["layers/dense_10/vars/0", "layers/dense_2/vars/10"]
    names += ["layers/dense_2/vars/2", "vars/0"]
    out = tmp_path / "m.weights.h5"
    keras3.save_keras_optimizer(out, opt, [w], variables={k: w for k in names})
    assert list(keras3.load_keras_variables(out)) == [names[2], names[1], names[0]] + [
        names[3]
    ]


# ---------------------------------------------------------------------------
# numbadam -> file -> numbadam
# ---------------------------------------------------------------------------


def train(opt, vars_, steps, seed):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        opt.apply_gradients(
            [(rng.standard_normal(x.shape).astype(x.dtype), x) for x in vars_]
        )


@needs_h5py
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("schedule", [False, True])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_round_trip_bitwise(tmp_path, amsgrad, schedule, dtype):
    def make():
        lr = numbadam.schedules.ExponentialDecay(0.05, 2, 0.7) if schedule else 0.05
        return numbadam.Adam(lr, beta_1=0.8, amsgrad=amsgrad)

    rng = np.random.default_rng(3)
    shapes = [(3, 4), (4,), ()]
    vars_ = [rng.standard_normal(s).astype(dtype) for s in shapes]
    opt = make()
    train(opt, vars_, 3, seed=1)
    path = tmp_path / "run.weights.h5"
    keras3.save_keras_optimizer(path, opt, vars_)
    twin_vars = [x.copy() for x in vars_]
    twin = make()
    assert keras3.load_keras_optimizer(path, twin, twin_vars) == 3
    assert len(file_vars(path)) == 1 + (not schedule) + len(shapes) * (2 + amsgrad)
    for a, b in zip(twin.get_weights(), opt.get_weights()):
        assert_bitwise(a, b)
    train(opt, vars_, 2, seed=2)
    train(twin, twin_vars, 2, seed=2)
    for a, b in zip(twin_vars + twin.get_weights(), vars_ + opt.get_weights()):
        assert_bitwise(a, b)


@needs_h5py
def test_round_trip_learning_rate(tmp_path):
    w = np.zeros(2, np.float32)
    opt = numbadam.Adam(0.1)
    opt.build([w])
    path = tmp_path / "a.weights.h5"
    keras3.save_keras_optimizer(path, opt, [w])
    assert file_vars(path)[1] == f32(0.1)
    twin = numbadam.Adam(0.3)
    keras3.load_keras_optimizer(path, twin, [w.copy()], restore_learning_rate=False)
    assert twin.learning_rate == f32(0.3)
    sched = numbadam.schedules.ExponentialDecay(0.1, 10, 0.5)
    other = numbadam.Adam(sched)
    with pytest.raises(CheckpointError, match="restore_learning_rate=False"):
        keras3.load_keras_optimizer(path, other, [w.copy()])
    assert other.weights == []
    keras3.load_keras_optimizer(path, other, [w.copy()], restore_learning_rate=False)
    assert other.learning_rate is sched


@pytest.mark.cuda
@needs_h5py
def test_round_trip_cuda(tmp_path, cuda_backend):
    from numba import cuda

    host = [np.arange(6, dtype=np.float32).reshape(2, 3), np.ones(3, np.float32)]
    dev = [cuda.to_device(x) for x in host]
    opt = numbadam.Adam(0.1, amsgrad=True)
    rng = np.random.default_rng(0)
    for _ in range(2):
        opt.apply_gradients(
            [(cuda.to_device(rng.standard_normal(x.shape).astype(np.float32)), x)
             for x in dev]
        )  # fmt: skip
    path = tmp_path / "gpu.weights.h5"
    keras3.save_keras_optimizer(path, opt, dev, variables={"vars/0": dev[0]})
    twin_dev = [cuda.to_device(x.copy_to_host()) for x in dev]
    twin = numbadam.Adam(0.1, amsgrad=True)
    keras3.load_keras_optimizer(path, twin, twin_dev)
    for a, b in zip(twin.get_weights(), opt.get_weights()):
        assert_bitwise(a, b)
    assert_bitwise(keras3.load_keras_variables(path)["vars/0"], dev[0].copy_to_host())


# ---------------------------------------------------------------------------
# numbadam -> Keras' file
# ---------------------------------------------------------------------------


@needs_h5py
def test_save_into_keras_file_keeps_the_rest(tmp_path):
    import h5py

    src, npz = fixture("adam")
    path = tmp_path / "model.weights.h5"
    shutil.copy(src, path)
    os.chmod(path, 0o640)
    vars_ = model_vars(src, npz)
    opt = numbadam_twin(npz)
    keras3.load_keras_optimizer(path, opt, vars_)
    train(opt, vars_, 3, seed=5)
    kernel_path = str(npz["paths"][0])
    keras3.save_keras_optimizer(path, opt, vars_, variables={kernel_path: vars_[0]})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    assert os.listdir(tmp_path) == ["model.weights.h5"]  # (no temporary left)
    saved = file_vars(path)
    assert saved[0].dtype == np.int32 and int(saved[0]) == 7  # (the file's dtype)
    idx = keras_indices(len(vars_), True, False)
    for (i, slot), j in idx.items():
        assert_bitwise(saved[j], opt.get_slot(vars_[i], slot))
    old, new = keras3.load_keras_variables(src), keras3.load_keras_variables(path)
    assert list(old) == list(new)
    for k in old:
        assert_bitwise(new[k], vars_[0] if k == kernel_path else old[k], k)
    with h5py.File(src, "r") as a, h5py.File(path, "r") as b:
        assert dict(a["optimizer/vars"].attrs) == dict(b["optimizer/vars"].attrs)
        assert dict(a["layers/dense/vars"].attrs) == dict(b["layers/dense/vars"].attrs)


@needs_h5py
def test_rewriting_keras_state_is_bitwise_and_does_not_grow(tmp_path):
    src, npz = fixture("amsgrad")
    path = tmp_path / "model.weights.h5"
    shutil.copy(src, path)
    vars_ = model_vars(src, npz)
    opt = numbadam_twin(npz)
    keras3.load_keras_optimizer(path, opt, vars_)
    for _ in range(3):
        keras3.save_keras_optimizer(path, opt, vars_)
    for a, b in zip(file_vars(path), file_vars(src)):
        assert_bitwise(a, b)
    assert os.path.getsize(path) == os.path.getsize(src)


@needs_h5py
def test_save_refuses_an_int32_overflow(tmp_path):
    src, npz = fixture("adam")
    path = tmp_path / "model.weights.h5"
    shutil.copy(src, path)
    vars_ = model_vars(src, npz)
    opt = numbadam_twin(npz)
    keras3.load_keras_optimizer(path, opt, vars_)
    opt.iterations = 2**31
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="int32"):
        keras3.save_keras_optimizer(path, opt, vars_)
    assert path.read_bytes() == before and os.listdir(tmp_path) == [path.name]


# ---------------------------------------------------------------------------
# bad input: clear errors, nothing changed
# ---------------------------------------------------------------------------


def load_fails(path, opt, vars_, exc, match):
    before = snapshot(opt, vars_)
    with pytest.raises(exc, match=match) as info:
        keras3.load_keras_optimizer(path, opt, vars_)
    assert_unchanged(before, opt, vars_)
    return info.value


@needs_h5py
def test_load_bad_var_list():
    path, npz = fixture("adam")
    vars_ = model_vars(path, npz)
    err = load_fails(path, numbadam.Adam(), vars_[:3], CheckpointError, "entries")
    assert str(path) in str(err) and "optimizer/vars" in str(err)
    swapped = [vars_[0].T.copy()] + vars_[1:]
    load_fails(path, numbadam.Adam(), swapped, CheckpointError, r"optimizer/vars/2'")
    wide = [x.astype(np.float64) for x in vars_]
    load_fails(path, numbadam.Adam(), wide, CheckpointError, "float64")
    with pytest.raises(ValueError, match="empty"):
        keras3.load_keras_optimizer(path, numbadam.Adam(), [])
    with pytest.raises(ValueError, match="again"):
        keras3.load_keras_optimizer(path, numbadam.Adam(), vars_[:3] + vars_[:1])
    with pytest.raises(TypeError, match="not an array"):
        keras3.load_keras_optimizer(path, numbadam.Adam(), [[1.0]] + vars_[1:])
    with pytest.raises(TypeError, match="numbadam optimizer"):
        keras3.load_keras_optimizer(path, object(), vars_)


@needs_h5py
def test_load_amsgrad_mismatch():
    path, npz = fixture("amsgrad")
    vars_ = model_vars(path, npz)
    err = load_fails(path, numbadam.Adam(), vars_, CheckpointError, "amsgrad=True")
    assert "use_ema" in str(err)
    path, npz = fixture("adam")
    vars_ = model_vars(path, npz)
    load_fails(path, numbadam.Adam(amsgrad=True), vars_, CheckpointError, "entries")


def keras_ema_file(src, dst, averages):
    """``src`` with Keras 3's use_ema averages inserted after learning_rate."""
    import h5py

    shutil.copy(src, dst)
    with h5py.File(dst, "r+") as f:
        old = [np.asarray(f["optimizer/vars"][k][()]) for k in map(str, range(10))]
        del f["optimizer/vars"]
        new = old[:2] + averages + old[2:]
        for j, v in enumerate(new):
            f.create_dataset(f"optimizer/vars/{j}", data=v)


@needs_h5py
def test_load_refuses_ema_averages(tmp_path):
    src, npz = fixture("adam")
    vars_ = model_vars(src, npz)
    path = tmp_path / "ema.weights.h5"
    keras_ema_file(src, path, [x.copy() for x in vars_])
    load_fails(path, numbadam.Adam(), vars_, CheckpointError, "use_ema=True")
    # 2 + 3n entries fit amsgrad too: the shapes tell them apart
    load_fails(
        path, numbadam.Adam(amsgrad=True), vars_, CheckpointError, "optimizer/vars/3'"
    )


@needs_h5py
def test_load_refuses_negative_second_moments(tmp_path):
    # same shapes everywhere: only the values show the file is not Adam's
    rng = np.random.default_rng(0)
    vars_ = [rng.standard_normal(3).astype(np.float32) for _ in range(2)]
    opt = numbadam.Adam(amsgrad=True)
    train(opt, vars_, 2, seed=0)
    path = tmp_path / "a.weights.h5"
    keras3.save_keras_optimizer(path, opt, vars_)
    import h5py

    with h5py.File(path, "r+") as f:
        f["optimizer/vars/3"][...] = -np.abs(f["optimizer/vars/3"][()]) - 1
    fresh = numbadam.Adam(amsgrad=True)
    load_fails(path, fresh, vars_, CheckpointError, "optimizer/vars/3'.*negative")


@needs_h5py
def test_load_bad_files(tmp_path):
    import h5py

    w = [np.zeros(2, np.float32)]
    opt = numbadam.Adam()
    with pytest.raises(FileNotFoundError):
        keras3.load_keras_optimizer(tmp_path / "missing.h5", opt, w)
    load_fails(tmp_path, opt, w, CheckpointError, "folder")
    junk = tmp_path / "junk.weights.h5"
    junk.write_bytes(b"not an hdf5 file at all")
    load_fails(junk, opt, w, CheckpointError, "not an HDF5 file")
    with pytest.raises(CheckpointError, match="not an HDF5 file"):
        keras3.load_keras_variables(junk)
    layers_only = tmp_path / "layers.weights.h5"
    shutil.copy(fixture("adam")[0], layers_only)
    with h5py.File(layers_only, "r+") as f:
        del f["optimizer"]
    load_fails(layers_only, opt, w, CheckpointError, "no 'optimizer/vars' group")
    linked = tmp_path / "linked.weights.h5"
    with h5py.File(linked, "w") as f:
        f["optimizer/vars/0"] = np.int64(1)
        f["optimizer/vars/1"] = np.float32(0.1)
        f["optimizer/vars/2"] = np.zeros(2, np.float32)
        f["optimizer/vars/3"] = h5py.SoftLink("/optimizer/vars/2")
    load_fails(linked, opt, w, CheckpointError, "SoftLink")
    with h5py.File(linked, "r+") as f:
        del f["optimizer/vars/3"]
        f["optimizer/vars/x"] = np.zeros(2, np.float32)
    load_fails(linked, opt, w, CheckpointError, r"\['x'\]")
    with h5py.File(linked, "r+") as f:
        del f["optimizer/vars/x"]
        f["optimizer/vars/3"] = np.zeros(2, np.float32)
        f["optimizer/vars/0"][...] = -1
    load_fails(linked, opt, w, CheckpointError, "not a step count")
    with h5py.File(linked, "r+") as f:
        f["optimizer/vars/0"][...] = 1
        del f["optimizer/vars/1"]
        f["optimizer/vars/1"] = np.float32(np.nan)
    load_fails(linked, opt, w, CheckpointError, "learning_rate.*not finite")


@needs_h5py
def test_load_refuses_state_of_other_variables():
    path, npz = fixture("adam")
    vars_ = model_vars(path, npz)
    opt = numbadam.Adam()
    stranger = np.zeros(5, np.float32)
    train(opt, vars_ + [stranger], 1, seed=0)
    load_fails(path, opt, vars_, ValueError, "not in var_list")


@needs_h5py
def test_load_into_a_trained_optimizer_overwrites_it():
    path, npz = fixture("adam")
    vars_ = model_vars(path, npz)
    opt = numbadam_twin(npz)
    train(opt, vars_, 2, seed=0)
    keras3.load_keras_optimizer(path, opt, vars_)
    saved = file_vars(path)
    assert int(opt.iterations) == 4
    assert_bitwise(opt.get_slot(vars_[0], "m"), saved[2])


@needs_h5py
def test_save_bad_input(tmp_path):
    w = [np.zeros((2, 2), np.float32), np.zeros(2, np.float32)]
    path = tmp_path / "a.weights.h5"
    with pytest.raises(ValueError, match="no state yet"):
        keras3.save_keras_optimizer(path, numbadam.Adam(), w)
    opt = numbadam.Adam()
    opt.build(w[:1])
    with pytest.raises(ValueError, match=r"var_list\[1\].*no slot 'm'"):
        keras3.save_keras_optimizer(path, opt, w)
    other = numbadam.Adam()
    other.build(w + [np.zeros(3, np.float32)])
    with pytest.raises(ValueError, match="not in var_list"):
        keras3.save_keras_optimizer(path, other, w)
    opt.build(w)
    with pytest.raises(IsADirectoryError):
        keras3.save_keras_optimizer(tmp_path, opt, w)
    with pytest.raises(ValueError, match="optimizer group"):
        keras3.save_keras_optimizer(path, opt, w, variables={"optimizer/vars/0": w[0]})
    with pytest.raises(TypeError, match="map file paths"):
        keras3.save_keras_optimizer(path, opt, w, variables=[w[0]])
    assert os.listdir(tmp_path) == []
    with pytest.raises(FileNotFoundError, match="no such folder"):
        keras3.save_keras_optimizer(tmp_path / "no" / "a.weights.h5", opt, w)


@needs_h5py
def test_save_leaves_bad_targets_alone(tmp_path):
    opt = numbadam.Adam()
    w = [np.zeros(2, np.float32)]
    opt.build(w)
    junk = tmp_path / "notes.txt"
    junk.write_bytes(b"precious, not hdf5")
    with pytest.raises(CheckpointError, match="left alone"):
        keras3.save_keras_optimizer(junk, opt, w)
    assert junk.read_bytes() == b"precious, not hdf5"
    src, npz = fixture("adam")
    path = tmp_path / "model.weights.h5"
    shutil.copy(src, path)
    before = path.read_bytes()
    vars_ = model_vars(src, npz)
    kopt = numbadam_twin(npz)
    keras3.load_keras_optimizer(path, kopt, vars_)
    bad = {str(npz["paths"][0]): vars_[0].T.copy()}  # wrong shape
    with pytest.raises(CheckpointError, match=r"layers/dense/vars/0.*\(4, 3\)"):
        keras3.save_keras_optimizer(path, kopt, vars_, variables=bad)
    assert path.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["model.weights.h5", "notes.txt"]
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        with pytest.raises(CheckpointError, match="FIFO"):
            keras3.save_keras_optimizer(fifo, opt, w)
        with pytest.raises(CheckpointError, match="FIFO"):
            keras3.load_keras_optimizer(fifo, numbadam.Adam(), w)


@needs_h5py
def test_save_into_an_empty_file_keeps_its_mode(tmp_path):
    path = tmp_path / "empty.weights.h5"
    path.write_bytes(b"")
    os.chmod(path, 0o600)
    opt = numbadam.Adam()
    w = [np.ones(2, np.float32)]
    opt.build(w)
    keras3.save_keras_optimizer(path, opt, w)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert len(file_vars(path)) == 4


# ---------------------------------------------------------------------------
# with Keras itself (skipped without it)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keras():
    if not HAVE_H5PY:
        pytest.skip("h5py is not installed")
    return keras3_or_skip()


@pytest.fixture(scope="module")
def keras_cases(keras):
    spec = importlib.util.spec_from_file_location(
        "make_keras3_fixture", os.path.join(DATA, "make_keras3_fixture.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.cases(keras)


def keras_model(keras_cases, case):
    make_model, make_opt, paths = keras_cases[case]
    model = make_model()
    model(np.zeros((1, 3), np.float32))  # (Keras loads only into built models)
    model.compile(optimizer=make_opt(), loss="mse")
    model.optimizer.build(model.trainable_variables)  # (or load skips it)
    return model, list(paths)


@pytest.mark.parametrize("case", ["adam", "amsgrad"])
def test_keras_continues_numbadam_training(tmp_path, keras, keras_cases, case):
    src, npz = fixture(case)
    path = tmp_path / "model.weights.h5"
    shutil.copy(src, path)
    vars_ = model_vars(src, npz)
    opt = numbadam_twin(npz)
    keras3.load_keras_optimizer(path, opt, vars_)
    train(opt, vars_, 3, seed=7)
    model, paths = keras_model(keras_cases, case)
    keras3.save_keras_optimizer(path, opt, vars_, variables=dict(zip(paths, vars_)))
    model.load_weights(path)
    # Keras holds numbadam's state, bit for bit, in its own order
    keras_vars = [np.asarray(v) for v in model.optimizer.variables]
    for k, w in zip(keras_vars, file_vars(path)):
        assert_bitwise(k, w.astype(k.dtype))
    assert int(keras_vars[0]) == 7
    for i, x in enumerate(vars_):
        assert_bitwise(np.asarray(model.trainable_variables[i]), x)
    # and the next step agrees with numbadam's (to the 1 - beta rounding)
    before = [x.copy() for x in vars_]
    grads = [npz[f"grad_{i}"] for i in range(len(vars_))]
    model.optimizer.apply_gradients(zip(grads, model.trainable_variables))
    opt.apply_gradients(list(zip(grads, vars_)))
    for i, x in enumerate(vars_):
        kx = np.asarray(model.trainable_variables[i])
        tol = 1e-4 * np.abs(kx - before[i]) + 2 * ulp(kx)
        assert np.all(np.abs(x - kx) <= tol), f"variable {i}"


def test_keras_reads_a_new_numbadam_file(tmp_path, keras, keras_cases):
    src, npz = fixture("adam")
    vars_ = [x.copy() for x in model_vars(src, npz)]
    opt = numbadam_twin(npz)
    train(opt, vars_, 2, seed=3)
    model, paths = keras_model(keras_cases, "adam")
    path = tmp_path / "fresh.weights.h5"
    keras3.save_keras_optimizer(path, opt, vars_, variables=dict(zip(paths, vars_)))
    assert file_vars(path)[0].dtype == np.int64
    model.load_weights(path)
    assert int(np.asarray(model.optimizer.variables[0])) == 2
    for k, w in zip(model.optimizer.variables[1:], file_vars(path)[1:]):
        assert_bitwise(np.asarray(k), w)


@pytest.mark.parametrize(
    "kwargs", [{"use_ema": True}]
)
@pytest.mark.parametrize("amsgrad", [False, True])
def test_keras_state_numbadam_cannot_hold_is_refused(
    tmp_path, keras, keras_cases, kwargs, amsgrad
):
    make_model, _, paths = keras_cases["adam"]
    keras.utils.set_random_seed(0)
    model = make_model()
    model.compile(optimizer=keras.optimizers.Adam(0.01, **kwargs), loss="mse")
    x = np.ones((8, 3), np.float32)
    model.fit(x, np.zeros((8, 2), np.float32), batch_size=4, verbose=0)
    path = tmp_path / "k.weights.h5"
    model.save_weights(path)
    vars_ = [keras3.load_keras_variables(path)[p] for p in paths]
    load_fails(path, numbadam.Adam(amsgrad=amsgrad), vars_, CheckpointError, "use_ema")
