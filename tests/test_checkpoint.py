"""Tests of numbadam.checkpoint's save and load (``_save``, ``_load``): round trips,
bit-identical resume, the optimizer class, the variables given to restore into.

Bad files: ``test_checkpoint_read.py``; file handling: ``test_checkpoint_files.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from checkpoint_helpers import (
    _bits,
    _expect,
    _set,
    _trained,
    _variant,
    save_good,
)

import numbadam
from numbadam import CheckpointError, load_checkpoint, save_checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# One training script, run here and in a fresh process: dense float32/float64/
# float16 variables, a sparse embedding table with duplicate indices, a schedule
# (so the restored step count matters) and clipnorm.
TRAIN_SCRIPT = textwrap.dedent(
    """
    import sys
    import numpy as np
    import numbadam
    from numbadam import schedules


    def make_variables():
        rng = np.random.default_rng(0)
        return {
            "dense/kernel": rng.standard_normal((6, 4)).astype(np.float32),
            "dense/bias": np.zeros(4, np.float64),
            "half": rng.standard_normal(5).astype(np.float16),
            "embedding": rng.standard_normal((40, 3)).astype(np.float32),
        }


    def make_optimizer(amsgrad):
        lr = schedules.ExponentialDecay(0.05, decay_steps=3, decay_rate=0.8)
        return numbadam.Adam(learning_rate=lr, amsgrad=amsgrad, clipnorm=2.0)


    def step(opt, variables, t):
        rng = np.random.default_rng(1000 + t)
        pairs = []
        for name, var in variables.items():
            if name == "embedding":
                idx = rng.integers(0, 10, 12)  # few rows: many duplicates
                vals = rng.standard_normal((12, 3)).astype(np.float32)
                g = numbadam.IndexedSlices(vals, idx, var.shape)
            else:
                g = rng.standard_normal(var.shape).astype(var.dtype)
            pairs.append((g, var))
        opt.apply_gradients(pairs)


    def train(opt, variables, start, stop):
        for t in range(start, stop):
            step(opt, variables, t)


    def dump(path, opt, variables):
        arrays = {f"var{i}": v for i, v in enumerate(variables.values())}
        arrays.update({f"w{i}": w for i, w in enumerate(opt.get_weights())})
        np.savez(path, **arrays)


    if __name__ == "__main__":
        ckpt_path, out_path, start, stop = sys.argv[1:5]
        ckpt = numbadam.load_checkpoint(ckpt_path)
        assert ckpt.step == int(start), (ckpt.step, start)
        train(ckpt.optimizer, ckpt.variables, int(start), int(stop))
        dump(out_path, ckpt.optimizer, ckpt.variables)
    """
)


@pytest.fixture(scope="module")
def script(tmp_path_factory):
    path = tmp_path_factory.mktemp("script") / "train_script.py"
    path.write_text(TRAIN_SCRIPT)
    namespace: dict = {"__name__": "train_script"}
    exec(compile(TRAIN_SCRIPT, str(path), "exec"), namespace)
    namespace["path"] = str(path)
    return namespace


@pytest.mark.parametrize("amsgrad", [False, True])
def test_resume_in_fresh_process_is_bit_identical(script, tmp_path, amsgrad):
    n, k = 9, 4
    full_vars = script["make_variables"]()
    full_opt = script["make_optimizer"](amsgrad)
    script["train"](full_opt, full_vars, 0, n)

    part_vars = script["make_variables"]()
    part_opt = script["make_optimizer"](amsgrad)
    script["train"](part_opt, part_vars, 0, k)
    ckpt = tmp_path / "ckpt.npz"
    save_checkpoint(ckpt, part_opt, part_vars)

    out = tmp_path / "resumed.npz"
    env = dict(
        os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    proc = subprocess.run(
        [sys.executable, script["path"], str(ckpt), str(out), str(k), str(n)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    with np.load(out, allow_pickle=False) as resumed:
        for i, v in enumerate(full_vars.values()):
            assert resumed[f"var{i}"].dtype == v.dtype
            assert _bits(resumed[f"var{i}"]) == _bits(v), list(full_vars)[i]
        weights = full_opt.get_weights()
        assert len(resumed.files) == len(full_vars) + len(weights)
        for i, w in enumerate(weights):
            assert _bits(resumed[f"w{i}"]) == _bits(w)
    assert int(full_opt.iterations) == n


def test_resume_in_process_with_slots_created_in_separate_calls(tmp_path):
    # Slots created over two calls are ordered [m_a, v_a, m_b, v_b]; a rebuilt
    # optimizer orders them [m_a, m_b, v_a, v_b]: loading maps them by role.
    def run(opt, a, b, steps):
        for t in steps:
            ga = np.full(3, 0.1 * (t + 1), np.float32)
            if t == 0:
                opt.apply_gradients([(ga, a)])
            else:
                opt.apply_gradients([(ga, a), (np.full(2, -0.2, np.float32), b)])

    a1, b1 = np.ones(3, np.float32), np.ones(2, np.float32)
    o1 = numbadam.Adam(0.01, amsgrad=True)
    run(o1, a1, b1, range(6))

    a2, b2 = np.ones(3, np.float32), np.ones(2, np.float32)
    o2 = numbadam.Adam(0.01, amsgrad=True)
    run(o2, a2, b2, range(3))
    save_checkpoint(tmp_path / "c.npz", o2, [a2, b2])
    a3, b3 = np.zeros(3, np.float32), np.zeros(2, np.float32)
    ckpt = load_checkpoint(tmp_path / "c.npz", [a3, b3])
    run(ckpt.optimizer, a3, b3, range(3, 6))
    assert _bits(a3) == _bits(a1) and _bits(b3) == _bits(b1)
    for w1 in o1.get_weights()[1:]:
        assert any(_bits(w1) == _bits(w3) for w3 in ckpt.optimizer.get_weights())


def test_round_trip_new_arrays(tmp_path):
    opt, variables = _trained(amsgrad=True)
    path = tmp_path / "c.npz"
    assert save_checkpoint(path, opt, variables, metadata={"epoch": 3}) == str(path)
    ckpt = load_checkpoint(path)
    assert ckpt.path == str(path)
    assert ckpt.step == 3 and ckpt.metadata == {"epoch": 3}
    assert list(ckpt.variables) == ["table", "bias"]
    for name, v in variables.items():
        assert _bits(ckpt.variables[name]) == _bits(v)
        assert ckpt.variables[name] is not v
        assert ckpt.variables[name].flags.writeable
    assert type(ckpt.optimizer) is numbadam.Adam
    assert ckpt.optimizer.get_config() == opt.get_config()
    got, want = ckpt.optimizer.get_weights(), opt.get_weights()
    assert len(got) == len(want) == 7
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and _bits(g) == _bits(w)


def test_restore_in_place_dict_and_list(tmp_path):
    opt, variables = _trained()
    path = tmp_path / "c.npz"
    save_checkpoint(path, opt, variables)
    table, bias = np.zeros((10, 2), np.float32), np.zeros(2, np.float32)
    ckpt = load_checkpoint(path, {"bias": bias, "table": table})
    assert ckpt.variables["table"] is table and _bits(table) == _bits(
        variables["table"]
    )
    assert ckpt.optimizer.get_slot(table, "m") is not None
    table2, bias2 = np.zeros((10, 2), np.float32), np.zeros(2, np.float32)
    load_checkpoint(path, [table2, bias2])
    assert _bits(bias2) == _bits(variables["bias"])


def test_list_variables_and_untrained_optimizer(tmp_path):
    w = np.ones(3)
    opt = numbadam.Adam()
    save_checkpoint(tmp_path / "c.npz", opt, [w])
    ckpt = load_checkpoint(tmp_path / "c.npz")
    assert ckpt.step == 0 and list(ckpt.variables) == ["0"]
    ckpt.optimizer.apply_gradients([(np.ones(3), ckpt.variables["0"])])
    opt.apply_gradients([(np.ones(3), w)])
    assert _bits(w) == _bits(ckpt.variables["0"])


def test_save_errors(tmp_path):
    opt, variables = _trained()
    with pytest.raises(CheckpointError, match="not in `variables`"):
        save_checkpoint(tmp_path / "c.npz", opt, {"table": variables["table"]})
    with pytest.raises(FileNotFoundError, match="no such folder"):
        save_checkpoint(tmp_path / "missing" / "c.npz", opt, variables)
    (tmp_path / "adir").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        save_checkpoint(tmp_path / "adir", opt, variables)
    assert sorted(os.listdir(tmp_path)) == ["adir"]  # no temporary file left
    (tmp_path / "adir").rmdir()
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(tmp_path / "c.npz", opt, variables, metadata={"x": object()})
    with pytest.raises(CheckpointError, match="only numeric"):
        save_checkpoint(tmp_path / "c.npz", numbadam.Adam(), {"s": np.array(["a"])})
    with pytest.raises(TypeError, match="numbadam optimizer"):
        save_checkpoint(tmp_path / "c.npz", object(), variables)
    assert os.listdir(tmp_path) == []


@pytest.fixture
def good(tmp_path):
    return save_good(tmp_path)


def test_mismatched_variables_given(good):
    path, variables = good
    table = np.zeros((10, 2), np.float32)
    bias = np.zeros(2, np.float32)
    _expect(
        path,
        "'extra'.*given but not in the file",
        {"table": table, "bias": bias, "extra": bias},
    )
    _expect(path, r"\['bias'\] are in the file but not given", {"table": table})
    _expect(path, "holds 2 variables, 1 were given", [table])
    _expect(
        path,
        r"'table' has shape \(10, 2\) in the file, \(5, 4\) given",
        {"table": np.zeros((5, 4), np.float32), "bias": bias},
    )
    _expect(
        path,
        "'bias' has dtype float32 in the file, float64 given",
        {"table": table, "bias": np.zeros(2)},
    )
    readonly = np.zeros(2, np.float32)
    readonly.flags.writeable = False
    _expect(path, "read-only", {"table": table, "bias": readonly})
    assert not table.any() and not bias.any()


def test_resume_parameter_buffer_in_place(tmp_path):
    # Variables that are views of one flat buffer (one fused pass per step).
    def make():
        buf = numbadam.ParameterBuffer([(3, 2), (2,), (4,)])
        for p in buf.params:
            p[...] = 0.5
        return buf

    def step(opt, buf, t):
        rng = np.random.default_rng(t)
        for g in buf.grads:
            g[...] = rng.standard_normal(g.shape)
        opt.apply_gradients(buf.grads_and_vars())

    whole, opt = make(), numbadam.Adam(0.1, amsgrad=True)
    for t in range(6):
        step(opt, whole, t)
    part, opt2 = make(), numbadam.Adam(0.1, amsgrad=True)
    for t in range(3):
        step(opt2, part, t)
    save_checkpoint(tmp_path / "c.npz", opt2, part.params)
    resumed = make()
    ckpt = load_checkpoint(tmp_path / "c.npz", resumed.params)
    for t in range(3, 6):
        step(ckpt.optimizer, resumed, t)
    for a, b in zip(whole.params, resumed.params):
        assert _bits(a) == _bits(b)
    for a, b in zip(opt.get_weights(), ckpt.optimizer.get_weights()):
        assert _bits(a) == _bits(b)


def test_files_without_the_module_field_still_load(good, tmp_path):
    # Checkpoints written before the optimizer's module was recorded.
    src, variables = good

    def edit(h):
        del h["optimizer"]["module"]

    path = _variant(src, tmp_path / "old.npz", edit)
    ckpt = load_checkpoint(path)
    assert type(ckpt.optimizer) is numbadam.Adam and ckpt.step == 3
    for name, v in variables.items():
        assert _bits(ckpt.variables[name]) == _bits(v)


def test_unknown_optimizer_class_names_its_module(good, tmp_path):
    src, _ = good
    edit = _set("optimizer", "module", "mypackage.optimizers")

    def edit2(h):
        edit(h)
        h["optimizer"]["class_name"] = "MyAdam"

    path = _variant(src, tmp_path / "mine.npz", edit2)
    _expect(
        path,
        "unknown optimizer class 'MyAdam', saved from module "
        "'mypackage.optimizers'; .* your own, pass custom_objects",
    )

    class MyAdam(numbadam.Adam):
        pass

    ckpt = load_checkpoint(path, custom_objects={"MyAdam": MyAdam})
    assert type(ckpt.optimizer) is MyAdam
    # Only numbadam's own modules are ever imported by name.
    path = _variant(src, tmp_path / "other.npz", _set("optimizer", "module", "os"))
    assert type(load_checkpoint(path).optimizer) is numbadam.Adam


def test_set_weights_refuses_iterations_that_would_wrap(tmp_path):
    w = np.ones(2, np.float32)
    opt = numbadam.Adam(0.1)
    opt.apply_gradients([(np.ones(2, np.float32), w)])
    before = [np.array(x, copy=True) for x in opt.get_weights()]
    rest = before[1:]
    for it in (np.uint64(2**63), np.uint64(2**64 - 1), 1e19, 2.0**63, 2**63):
        with pytest.raises(ValueError, match="below 2\\*\\*63"):
            opt.set_weights([it] + rest)
    for it in (3 + 0j, np.complex64(3), True):
        with pytest.raises(TypeError, match="dtype"):
            opt.set_weights([it] + rest)
    for got, want in zip(opt.get_weights(), before):
        assert _bits(got) == _bits(want)
    opt.set_weights([np.uint64(2**63 - 1)] + rest)  # the largest int64 step
    assert int(opt.iterations) == 2**63 - 1
