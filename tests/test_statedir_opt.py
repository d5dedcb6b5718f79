"""An optimizer in a checkpoint folder (numbadam.save_state_dir / load_state_dir).

Resumes are compared byte for byte with an uninterrupted run of the same
steps; a delta save must hold exactly the rows the steps touched (counted
independently from the batches); a save that fails at any file-system step
leaves the previous save loadable and the next save still complete.
"""

from __future__ import annotations

import errno
import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import numbadam
from numbadam import _statedir_io
from numbadam.checkpoint import CheckpointError

from helpers import assert_bitwise, to_device, to_host

ROOT = Path(__file__).resolve().parent.parent
ROWS, WIDTH = 200, 4


def _model(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "table": np.array(rng.standard_normal((ROWS, WIDTH)), np.float32),
        "w": np.array(rng.standard_normal((3, 5)), np.float32),
        "b": np.zeros(5, np.float64),
    }


def _batch(step):
    rng = np.random.default_rng(1000 + step)
    idx = rng.integers(0, ROWS, 8)
    return idx, np.array(rng.standard_normal((8, WIDTH)), np.float32)


def _train(opt, model, steps, start=0, touched=None, backend="cpu"):
    for s in range(start, start + steps):
        idx, vals = _batch(s)
        if touched is not None:
            touched.update(idx.tolist())
        idx, vals = to_device(idx, backend), to_device(vals, backend)
        g = numbadam.IndexedSlices(vals, idx, (ROWS, WIDTH))
        rng = np.random.default_rng(s)
        gw = to_device(np.array(rng.standard_normal((3, 5)), np.float32), backend)
        gb = to_device(rng.standard_normal(5), backend)
        opt.apply_gradients([(g, model["table"]), (gw, model["w"]), (gb, model["b"])])


def _state(opt, model):
    out = {f"var/{k}": v.copy() for k, v in model.items()}
    for k, v in model.items():
        for s in opt.get_slot_names():
            out[f"{k}/{s}"] = np.array(opt.get_slot(v, s))
    out["iterations"] = np.array(opt.iterations)
    return out


def _same(got, want):
    assert list(got) == list(want)
    for k in want:
        assert_bitwise(got[k], want[k], k)


def _manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


KWARGS = [
    {"sparse_mode": "lazy"},
    {"sparse_mode": "lazy", "amsgrad": True, "weight_decay": 0.004},
    {"sparse_mode": "dense"},
]


@pytest.mark.parametrize("kwargs", KWARGS)
@pytest.mark.parametrize("on_disk", [False, True])
def test_resume_after_full_and_deltas_is_bitwise(tmp_path, kwargs, on_disk):
    def make(name):
        if not on_disk:
            return numbadam.Adam(0.01, **kwargs)
        (tmp_path / name).mkdir()
        return numbadam.Adam(0.01, slot_dir=tmp_path / name, **kwargs)

    ref, ref_model = numbadam.Adam(0.01, **kwargs), _model()
    _train(ref, ref_model, 12)

    opt, model = make("a"), _model()
    folder = tmp_path / "ckpt"
    _train(opt, model, 4)
    kinds = [numbadam.save_state_dir(folder, opt, model).kind]
    _train(opt, model, 3, start=4)
    kinds.append(numbadam.save_state_dir(folder, opt, model, metadata={"e": 1}).kind)
    _train(opt, model, 2, start=7)
    kinds.append(numbadam.save_state_dir(folder, opt, model, metadata={"e": 2}).kind)
    # (TF's rule changes every row: a delta would be no smaller than full)
    lazy = kwargs["sparse_mode"] == "lazy"
    assert kinds == ["full"] + ["delta" if lazy else "full"] * 2
    _train(opt, model, 1, start=9)  # (after the last save: not in it)

    twin, back = make("b"), {k: np.zeros_like(v) for k, v in _model(7).items()}
    got = numbadam.load_state_dir(folder, twin, back)
    assert got["metadata"] == {"e": 2} and got["step"] == 9
    _train(twin, back, 3, start=9)
    _same(_state(twin, back), _state(ref, ref_model))


@pytest.mark.parametrize("second_moment", ["element", "row"])
def test_delta_holds_exactly_the_touched_rows(tmp_path, backend, second_moment):
    # the lazy kernels mark the rows they step, in a NumPy mask on the CPU
    # and in a device mask (copied at the save) on CUDA
    opt = numbadam.Adam(0.01, sparse_mode="lazy", second_moment=second_moment)
    model = {k: to_device(v, backend) for k, v in _model().items()}
    folder = tmp_path / "ckpt"
    _train(opt, model, 2, backend=backend)
    numbadam.save_state_dir(folder, opt, model)
    touched = set()
    _train(opt, model, 5, start=2, touched=touched, backend=backend)
    info = numbadam.save_state_dir(folder, opt, model)
    assert info.kind == "delta"
    doc = _manifest(folder)
    by_name = {a["name"]: a for a in doc["arrays"]}
    for name in ("variable/table", "slot/table/m", "slot/table/v"):
        (d,) = by_name[name]["deltas"]
        rows = np.load(folder / d["rows"]["name"])
        assert rows.tolist() == sorted(touched), name
    # the dense variables changed everywhere; iterations always
    for name in ("variable/w", "slot/w/m", "variable/b", "iterations"):
        (d,) = by_name[name]["deltas"]
        assert d["count"] == (by_name[name]["shape"] or [1])[0], name
    row = WIDTH * 4 + 8  # float32 row and its int64 index
    assert info.bytes_written < 3 * len(touched) * row + 4 * 1024 + 2 * doc_size(folder)


@pytest.mark.cuda
@pytest.mark.parametrize("accumulate", [None, 2])
def test_cuda_saves_copy_only_the_rows_they_write(
    tmp_path, cuda_backend, monkeypatch, accumulate
):
    # a CUDA table is read by rows (DeviceRows): a full save a bounded piece
    # at a time, a delta only its touched rows; never a whole-array copy
    from numbadam import _statedir_io
    from numbadam._backend_cuda_rows import DeviceRows

    opt = numbadam.Adam(
        0.01, sparse_mode="lazy", gradient_accumulation_steps=accumulate
    )
    model = {k: to_device(v, "cuda") for k, v in _model().items()}
    folder = tmp_path / "ckpt"
    _train(opt, model, 2, backend="cuda")
    monkeypatch.setattr(_statedir_io, "_CHUNK", 8 * WIDTH * 4)  # 8 table rows
    reads = []
    real = DeviceRows.__getitem__

    def spy(self, key):
        out = real(self, key)
        reads.append((self.shape, isinstance(key, slice), out.shape[0]))
        return out

    def whole(self, *args, **kwargs):
        raise AssertionError("a whole device array was copied to the host")

    monkeypatch.setattr(DeviceRows, "__getitem__", spy)
    monkeypatch.setattr(DeviceRows, "__array__", whole)
    assert numbadam.save_state_dir(folder, opt, model).kind == "full"
    table = [r for r in reads if r[0] == (ROWS, WIDTH)]
    assert all(sliced and n <= 8 for _, sliced, n in table)
    # the table, m and v (and the zero accumulator comes from the host)
    assert sum(n for *_, n in table) == 3 * ROWS
    reads.clear()
    touched = set()
    _train(opt, model, 4, start=2, touched=touched, backend="cuda")
    assert numbadam.save_state_dir(folder, opt, model).kind == "delta"
    table = [r for r in reads if r[0] == (ROWS, WIDTH)]
    assert all(not sliced for _, sliced, _ in table)
    assert sum(n for *_, n in table) == 3 * len(touched)
    monkeypatch.undo()
    host = {k: np.zeros(np.shape(v), v.dtype) for k, v in _model().items()}
    twin = numbadam.Adam(
        0.01, sparse_mode="lazy", gradient_accumulation_steps=accumulate
    )
    numbadam.load_state_dir(folder, twin, host)
    for k, v in model.items():
        assert_bitwise(host[k], v.copy_to_host(), k)
    for j, (a, b) in enumerate(zip(twin.get_weights(), opt.get_weights())):
        assert_bitwise(a, b, f"weights[{j}]")


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("shape", [(7,), (9, 3), (6, 2, 2)])
def test_device_rows_read_like_numpy(cuda_backend, dtype, shape):
    from numba import cuda

    from numbadam._backend_cuda import CUDABackend

    host = np.arange(np.prod(shape), dtype=np.float64).reshape(shape).astype(dtype)
    rows = CUDABackend().host_rows(cuda.to_device(host))
    assert type(rows).__name__ == "DeviceRows"
    assert (rows.shape, rows.dtype, rows.ndim, rows.nbytes) == (
        host.shape, host.dtype, host.ndim, host.nbytes
    )
    for key in (slice(1, 4), slice(0, 0), slice(None), np.array([4, 0, 4, 2]),
                np.array([], np.int64), np.array([1], np.uint8)):  # fmt: skip
        assert_bitwise(rows[key], host[key], str(key))
    assert_bitwise(np.asarray(rows), host, "whole")
    for bad in (slice(0, 4, 2), np.array([0, len(host)]), np.array([-1]),
                np.array([[0]]), np.array([0.0])):  # fmt: skip
        with pytest.raises(IndexError):
            rows[bad]


@pytest.mark.cuda
def test_device_rows_only_for_contiguous_float_arrays(cuda_backend):
    from numba import cuda

    from numbadam._backend_cuda import CUDABackend

    b = CUDABackend()
    t = cuda.to_device(np.arange(12, dtype=np.float32).reshape(4, 3))
    view = b.host_rows(t[:, 1:])  # strided: a host copy, as before
    assert isinstance(view, np.ndarray) and view.tolist() == [
        [1, 2], [4, 5], [7, 8], [10, 11]
    ]
    mask = b.host_rows(cuda.to_device(np.ones(5, np.uint8)))
    assert isinstance(mask, np.ndarray) and mask.dtype == np.uint8


def doc_size(folder):
    return (folder / "manifest.json").stat().st_size


def test_unstepped_variables_are_not_rewritten(tmp_path):
    opt, model = numbadam.Adam(0.01, sparse_mode="lazy"), _model()
    folder = tmp_path / "ckpt"
    _train(opt, model, 1)
    numbadam.save_state_dir(folder, opt, model)
    g = numbadam.IndexedSlices(np.ones((1, WIDTH), np.float32), [5], (ROWS, WIDTH))
    opt.apply_gradients([(g, model["table"])])
    numbadam.save_state_dir(folder, opt, model)
    by_name = {a["name"]: a for a in _manifest(folder)["arrays"]}
    assert by_name["variable/w"]["deltas"] == []
    assert [d["count"] for d in by_name["variable/table"]["deltas"]] == [1]


def test_full_every_and_other_folders(tmp_path):
    opt, model = numbadam.Adam(0.01, sparse_mode="lazy"), _model()
    a, b = tmp_path / "a", tmp_path / "b"
    kinds = []
    for s in range(5):
        _train(opt, model, 1, start=s)
        kinds.append(numbadam.save_state_dir(a, opt, model, full_every=2).kind)
    assert kinds == ["full", "delta", "delta", "full", "delta"]
    _train(opt, model, 1, start=5)
    assert numbadam.save_state_dir(b, opt, model).kind == "full"
    _train(opt, model, 1, start=6)
    # a's marks were cleared by the save into b: a must be saved in full
    assert numbadam.save_state_dir(a, opt, model).kind == "full"
    assert numbadam.save_state_dir(a, opt, model, full=True).kind == "full"
    twin, back = numbadam.Adam(0.01, sparse_mode="lazy"), _model(3)
    numbadam.load_state_dir(a, twin, back)
    _same(_state(twin, back), _state(opt, model))


def test_a_failed_save_at_any_step_loses_nothing(tmp_path, monkeypatch):
    opt, model = numbadam.Adam(0.01, sparse_mode="lazy"), _model()
    folder = tmp_path / "ckpt"
    _train(opt, model, 2)
    numbadam.save_state_dir(folder, opt, model)
    saved = _state(opt, model)
    _train(opt, model, 2, start=2)
    monkeypatch.setattr(_statedir_io, "_CHUNK", 64)
    now = _state(opt, model)
    pristine = tmp_path / "pristine"
    shutil.copytree(folder, pristine)
    replace, late = None, 0
    for k in itertools.count():
        shutil.rmtree(folder)
        shutil.copytree(pristine, folder)
        calls = itertools.count()

        def fault(what, name, calls=calls, k=k):
            if next(calls) == k:
                raise OSError(errno.EIO, "injected")

        monkeypatch.setattr(_statedir_io, "_fault", fault)
        try:
            info = numbadam.save_state_dir(folder, opt, model)
        except OSError:
            monkeypatch.setattr(_statedir_io, "_fault", None)
            twin, back = numbadam.Adam(0.01, sparse_mode="lazy"), _model(5)
            numbadam.load_state_dir(folder, twin, back)
            got = _state(twin, back)
            # the old save, or (a failure after the manifest's replacement,
            # the folder's fsync) the new one
            if _manifest(folder)["generation"] == 0:
                _same(got, saved)
            else:
                _same(got, now)
                late += 1
            continue
        replace = k
        break
    monkeypatch.setattr(_statedir_io, "_fault", None)
    assert replace and replace > 5 and late <= 2
    assert info.kind == "delta"
    twin, back = numbadam.Adam(0.01, sparse_mode="lazy"), _model(5)
    numbadam.load_state_dir(folder, twin, back)
    _same(_state(twin, back), now)


def _loaded_nothing(opt, model, before):
    assert opt._iterations is None and opt.get_slot_names() == []
    for k, v in model.items():
        assert_bitwise(v, before[k], k)


def test_bad_loads_change_nothing(tmp_path):
    opt, model = numbadam.Adam(0.01, sparse_mode="lazy"), _model()
    folder = tmp_path / "ckpt"
    _train(opt, model, 2)
    numbadam.save_state_dir(folder, opt, model)
    fresh = _model(4)
    before = {k: v.copy() for k, v in fresh.items()}
    cases = [
        (numbadam.AdamW(0.01), fresh, ValueError, "Adam optimizer's state"),
        (numbadam.Adam(0.01), dict(fresh, extra=np.zeros(2)), ValueError, "differ"),
        (numbadam.Adam(0.01, amsgrad=True), fresh, ValueError, "saved slots"),
        (numbadam.Adam(0.01), dict(fresh, w=np.zeros((5, 3), np.float32)),
         ValueError, "has shape"),
    ]  # fmt: skip
    for twin, variables, exc, match in cases:
        with pytest.raises(exc, match=match):
            numbadam.load_state_dir(folder, twin, variables)
        _loaded_nothing(twin, fresh, before)
    doc = _manifest(folder)
    victim = doc["arrays"][2]["file"]["name"]
    os.truncate(folder / victim, 100)
    twin = numbadam.Adam(0.01)
    with pytest.raises(CheckpointError, match=victim):
        numbadam.load_state_dir(folder, twin, fresh)
    _loaded_nothing(twin, fresh, before)
    (folder / victim).unlink()
    with pytest.raises(CheckpointError, match=victim):
        numbadam.load_state_dir(folder, twin, fresh)
    (folder / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest.json"):
        numbadam.load_state_dir(folder, twin, fresh)
    _loaded_nothing(twin, fresh, before)


def test_bad_saves_write_nothing(tmp_path):
    opt, model = numbadam.Adam(0.01), _model()
    _train(opt, model, 1)
    folder = tmp_path / "ckpt"
    with pytest.raises(TypeError, match="numbadam optimizer"):
        numbadam.save_state_dir(folder, object(), model)
    with pytest.raises(ValueError, match="given twice"):
        numbadam.save_state_dir(folder, opt, [model["w"], model["w"]])
    with pytest.raises(ValueError, match="JSON"):
        numbadam.save_state_dir(folder, opt, model, metadata={"x": object()})
    with pytest.raises(TypeError, match="metadata must be a dict"):
        numbadam.save_state_dir(folder, opt, model, metadata=[1])
    assert not folder.exists()
    assert opt._dirty is None


def test_lazy_kernel_marks_exactly_the_stepped_rows():
    from numbadam.kernels import cpu

    rng = np.random.default_rng(0)
    x, m, v = (np.array(rng.standard_normal(40), np.float32) for _ in range(3))
    idx = np.array([7, 1, 7, 3], np.int64)
    vals = np.array(rng.standard_normal((4, 4)), np.float32)
    cpu.ensure_compiled(
        cpu.adam_sparse_lazy_cpu, np.float32, False, False, ema=False, dirty=None
    )
    c = np.float32
    args = (idx, vals, c(0.01), c(0.1), c(0.001), c(1e-7), c(-np.inf), c(np.inf),
            c(1), c(1), None, None, 7, 2)  # fmt: skip
    want = [a.copy() for a in (x, m, v)]
    cpu.adam_sparse_lazy_cpu(*want, None, *args, None)
    dirty = np.zeros(10, np.uint8)
    cpu.adam_sparse_lazy_cpu(x, m, v, None, *args, dirty)
    assert np.flatnonzero(dirty).tolist() == [1, 3, 7]
    for g, w in zip((x, m, v), want):
        assert_bitwise(g, w, "with a mask")


def test_resume_on_either_backend_is_bitwise(tmp_path, backend):
    # CUDA variables: host copies are saved, the rows the lazy kernel marked
    # in its device mask
    def fresh(seed):
        return {k: to_device(v, backend) for k, v in _model(seed).items()}

    ref, ref_model = numbadam.Adam(0.01, sparse_mode="lazy"), fresh(0)
    _train(ref, ref_model, 6, backend=backend)
    opt, model = numbadam.Adam(0.01, sparse_mode="lazy"), fresh(0)
    folder = tmp_path / "ckpt"
    _train(opt, model, 2, backend=backend)
    numbadam.save_state_dir(folder, opt, model)
    _train(opt, model, 2, start=2, backend=backend)
    kind = numbadam.save_state_dir(folder, opt, model).kind
    assert kind == "delta"
    twin, back = numbadam.Adam(0.01, sparse_mode="lazy"), fresh(8)
    numbadam.load_state_dir(folder, twin, back)
    _train(twin, back, 2, start=4, backend=backend)
    for k in ref_model:
        assert_bitwise(to_host(back[k]), to_host(ref_model[k]), k)
        for s in ("m", "v"):
            got = to_host(twin.get_slot(back[k], s))
            assert_bitwise(got, to_host(ref.get_slot(ref_model[k], s)), s)


def test_multi_tensor_and_buffer_steps_are_saved(tmp_path):
    # a list of >= 8 small dense variables, call after call, is one
    # multi-tensor launch; a ParameterBuffer one flat pass: both mark their
    # variables as changed
    rng = np.random.default_rng(2)
    small = {f"p{i}": np.array(rng.standard_normal(6), np.float32) for i in range(9)}
    buf = numbadam.ParameterBuffer([(4,), (3,)])
    opt = numbadam.Adam(0.01)

    def train(n):
        for _ in range(n):
            opt.apply_gradients([(np.ones(6, np.float32), v) for v in small.values()])
            for g in buf.grads:
                g[...] = 0.5
            opt.apply_gradients(buf.grads_and_vars())

    train(3)
    big = np.zeros((1000, 8), np.float32)  # (stepped before the full save only)
    opt.apply_gradients([(np.ones_like(big), big)])
    variables = dict(small, q0=buf.params[0], q1=buf.params[1], big=big)
    folder = tmp_path / "ckpt"
    numbadam.save_state_dir(folder, opt, variables)
    train(3)
    assert opt._multi is not None  # (the launch did run)
    info = numbadam.save_state_dir(folder, opt, variables, metadata={})
    twin = numbadam.Adam(0.01)
    back = {k: np.zeros_like(v) for k, v in variables.items()}
    numbadam.load_state_dir(folder, twin, back)
    for k, v in variables.items():
        assert_bitwise(back[k], v, k)
        for s in ("m", "v"):
            assert_bitwise(twin.get_slot(back[k], s), opt.get_slot(v, s), f"{k}/{s}")
    assert info.kind == "delta", info.kind


KILL_DRIVER = textwrap.dedent(
    """
    import os, shutil, signal, sys
    import numpy as np
    import numbadam
    from numbadam import _statedir_io

    root = sys.argv[1]
    rng = np.random.default_rng(0)
    table = np.array(rng.standard_normal((300, 4)), np.float32)
    w = np.array(rng.standard_normal(5), np.float32)
    opt = numbadam.Adam(0.01, sparse_mode="lazy")
    model = {"table": table, "w": w}

    def train(start, n):
        for s in range(start, start + n):
            r = np.random.default_rng(s)
            g = numbadam.IndexedSlices(
                np.array(r.standard_normal((6, 4)), np.float32),
                r.integers(0, 300, 6), table.shape)
            opt.apply_gradients([(g, table), (np.ones(5, np.float32), w)])

    def state(name):
        out = {k: v.copy() for k, v in model.items()}
        for k, v in model.items():
            for s in ("m", "v"):
                out[k + "." + s] = np.array(opt.get_slot(v, s))
        out["iterations"] = np.array(opt.iterations)
        np.savez(os.path.join(root, name), **out)

    template = os.path.join(root, "template")
    train(0, 2)
    numbadam.save_state_dir(template, opt, model)
    state("old.npz")
    train(2, 3)
    state("new.npz")
    _statedir_io._CHUNK = 64  # many writes per file: kills inside files too
    n = 0
    while True:
        target = os.path.join(root, f"kill-{n:04d}")
        shutil.copytree(template, target)
        # (the optimizer's marks are relative to the folder it saved into)
        opt._dirty.folder = os.path.realpath(target)
        pid = os.fork()
        if pid == 0:
            seen = [0]

            def fault(what, name):
                if seen[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)
                seen[0] += 1

            _statedir_io._fault = fault
            try:
                info = numbadam.save_state_dir(target, opt, model)
                assert info.kind == "delta", info.kind
            except BaseException:
                os._exit(3)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            break
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            sys.exit(f"point {n}: the child ended with status {status}")
        n += 1
    print(n)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_sigkill_at_every_step_of_a_delta_save(tmp_path):
    (tmp_path / "driver.py").write_text(KILL_DRIVER)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, str(tmp_path / "driver.py"), str(tmp_path)],
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    points = int(run.stdout.split()[-1])
    assert points > 20
    want = {}
    for name in ("old", "new"):
        with np.load(tmp_path / f"{name}.npz") as z:
            want[name] = {k: z[k] for k in z.files}
    outcomes = []
    for n in range(points + 1):
        folder = tmp_path / f"kill-{n:04d}"
        opt = numbadam.Adam(0.01, sparse_mode="lazy")
        model = {"table": np.zeros((300, 4), np.float32)}
        model["w"] = np.zeros(5, np.float32)
        meta = numbadam.load_state_dir(folder, opt, model)
        got = {k: v for k, v in model.items()}
        for k, v in model.items():
            for s in ("m", "v"):
                got[f"{k}.{s}"] = opt.get_slot(v, s)
        got["iterations"] = np.array(opt.iterations)
        outcome = "old" if meta["step"] == 2 else "new"
        outcomes.append(outcome)
        for k, v in want[outcome].items():
            assert_bitwise(got[k], v, f"point {n}: {k}")
        # the next save leaves the folder holding only what its manifest lists
        numbadam.save_state_dir(folder, opt, model)
        doc = _manifest(folder)
        assert set(os.listdir(folder)) == {"manifest.json"} | {
            f["name"] for f in _statedir_io.files_of(doc)
        }
    switch = outcomes.index("new")
    assert outcomes == ["old"] * switch + ["new"] * (points + 1 - switch)
    assert 0 < switch < points


def _train_dense(opt, model, steps, start=0):
    for s in range(start, start + steps):
        rng = np.random.default_rng(500 + s)
        gs = [np.array(rng.standard_normal(v.shape), v.dtype) for v in model.values()]
        opt.apply_gradients(list(zip(gs, model.values())))


@pytest.mark.parametrize("stop", [4, 5, 6])  # mid-cycle (calls 1, 2 of 3), at a start
def test_accumulation_resumes_mid_cycle_bitwise(tmp_path, stop):
    kw = {"gradient_accumulation_steps": 3, "use_ema": True}
    ref, ref_model = numbadam.Adam(0.01, **kw), _model()
    _train_dense(ref, ref_model, 11)
    opt, model = numbadam.Adam(0.01, **kw), _model()
    folder = tmp_path / "ckpt"
    _train_dense(opt, model, 2)
    numbadam.save_state_dir(folder, opt, model)  # (full, mid-cycle)
    _train_dense(opt, model, stop - 2, start=2)
    numbadam.save_state_dir(folder, opt, model)  # (delta or full)
    twin = numbadam.Adam(0.01, **kw)
    back = {k: np.zeros_like(v) for k, v in model.items()}
    numbadam.load_state_dir(folder, twin, back)
    assert int(twin.weights[0]) == stop and int(twin.iterations) == stop // 3
    _train_dense(twin, back, 11 - stop, start=stop)
    _same(_state(twin, back), _state(ref, ref_model))
    assert int(twin.weights[0]) == int(ref.weights[0]) == 11


def test_accumulation_with_pending_slices_refuses_to_save(tmp_path):
    opt, model = numbadam.Adam(0.01, gradient_accumulation_steps=2), _model()
    _train(opt, model, 1)  # (IndexedSlices of the table wait for the cycle's end)
    folder = tmp_path / "ckpt"
    with pytest.raises(ValueError, match="pending"):
        numbadam.save_state_dir(folder, opt, model)
    assert not folder.exists()
    _train(opt, model, 1, start=1)  # the cycle ends: now it saves
    assert numbadam.save_state_dir(folder, opt, model).kind == "full"
