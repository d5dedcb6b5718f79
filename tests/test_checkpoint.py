"""Tests of numbadam.checkpoint: round trips, bit-identical resume, bad files."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
import zipfile

import numpy as np
import pytest

import numbadam
from numbadam import CheckpointError, load_checkpoint, save_checkpoint
from numbadam.checkpoint import HEADER_KEY

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


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


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


def _trained(amsgrad=False):
    table = np.arange(20, dtype=np.float32).reshape(10, 2)
    bias = np.zeros(2, np.float32)
    opt = numbadam.Adam(learning_rate=0.01, amsgrad=amsgrad, beta_1=0.8)
    for _ in range(3):
        g = numbadam.IndexedSlices(np.ones((3, 2), np.float32), [1, 1, 4], (10, 2))
        opt.apply_gradients([(g, table), (np.ones(2, np.float32), bias)])
    return opt, {"table": table, "bias": bias}


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


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    opt, variables = _trained()
    path = tmp_path / "c.npz"
    save_checkpoint(path, opt, variables, metadata={"v": 1})
    before = path.read_bytes()

    def boom(*args, **kwargs):
        raise KeyboardInterrupt  # e.g. Ctrl-C in the middle of a write

    monkeypatch.setattr(np, "savez", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, opt, variables, metadata={"v": 2})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]
    save_checkpoint(path, opt, variables, metadata={"v": 3})
    assert load_checkpoint(path).metadata == {"v": 3}
    assert os.listdir(tmp_path) == ["c.npz"]


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


# ---------------------------------------------------------------------------
# bad files: one clear CheckpointError naming the file, nothing modified
# ---------------------------------------------------------------------------


@pytest.fixture
def good(tmp_path):
    opt, variables = _trained(amsgrad=True)
    path = tmp_path / "good.npz"
    save_checkpoint(path, opt, variables)
    return path, variables


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _rewrite(src, dst, allow_pickle=False, **changes):
    arrays = _arrays(src)
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    np.savez(dst, **arrays)
    return dst


def _header(path):
    return json.loads(_arrays(path)[HEADER_KEY].tobytes())


def _encode(header):
    return np.frombuffer(json.dumps(header).encode(), np.uint8)


def _expect(path, match, variables=None):
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path, variables)
    assert str(info.value).startswith(str(path) + ": ")
    assert info.value.path == str(path)
    assert "\n" not in str(info.value)
    # No chained NumPy/zipfile traceback behind it.
    exc = info.value
    assert exc.__cause__ is None and (
        exc.__context__ is None or exc.__suppress_context__
    )
    return info.value


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope.npz")
    _expect(tmp_path, "is a folder")


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty"),
        (b"hello world, not a checkpoint", "not an .npz archive"),
        (b"\x80\x04\x95\x00\x00", "not an .npz archive"),  # a raw pickle
    ],
)
def test_not_an_npz(tmp_path, content, match):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    _expect(path, match)


def test_npy_file(tmp_path):
    path = tmp_path / "x.npz"
    with open(path, "wb") as f:
        np.save(f, np.arange(3))
    _expect(path, "single .npy array")


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.6, 0.95, 0.999])
def test_truncated(good, tmp_path, fraction):
    src, _ = good
    data = src.read_bytes()
    path = tmp_path / "cut.npz"
    path.write_bytes(data[: max(3, int(len(data) * fraction))])
    _expect(path, "truncated or corrupt")


def test_corrupted_bytes(good, tmp_path):
    src, variables = good
    data = bytearray(src.read_bytes())
    # Flip bytes inside the first member's payload: its CRC no longer matches.
    with zipfile.ZipFile(src) as zf:
        info = zf.infolist()[-1]
    pos = info.header_offset + 30 + len(info.filename) + 60
    data[pos : pos + 4] = b"\xff\xfe\xfd\xfc"
    path = tmp_path / "flip.npz"
    path.write_bytes(bytes(data))
    table = np.zeros((10, 2), np.float32)
    _expect(path, "corrupt", {"table": table, "bias": np.zeros(2, np.float32)})
    assert not table.any()


def test_foreign_npz(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, weights=np.ones(3), bias=np.zeros(2))
    _expect(path, "not a numbadam checkpoint.*arrays: bias, weights")


def test_pickle_bearing_npz(good, tmp_path):
    src, _ = good
    arrays = _arrays(src)
    arrays["variable_0"] = np.array([{"evil": "payload"}, None], dtype=object)
    path = tmp_path / "pickled.npz"
    np.savez(path, **arrays)  # np.savez pickles object arrays
    _expect(path, "pickled Python objects")


def test_wrong_keys(good, tmp_path):
    src, _ = good
    _expect(_rewrite(src, tmp_path / "a.npz", weight_2=None), "missing array.*weight_2")
    _expect(
        _rewrite(src, tmp_path / "b.npz", extra=np.zeros(1)), "unexpected array.*extra"
    )


def test_wrong_shapes_in_file(good, tmp_path):
    src, _ = good
    bad = np.zeros((9, 2), np.float32)
    _expect(
        _rewrite(src, tmp_path / "a.npz", variable_0=bad), "variable 'table' has shape"
    )
    _expect(
        _rewrite(src, tmp_path / "b.npz", weight_1=bad), "optimizer weight 1 has shape"
    )
    wrong_dtype = _arrays(src)["variable_1"].astype(np.float64)
    _expect(_rewrite(src, tmp_path / "c.npz", variable_1=wrong_dtype), "dtype float64")


def test_float64_hyperparameters_resume_bit_identical(tmp_path):
    # JSON writes a np.float64 hyperparameter as a plain float, which
    # from_config would round to float32: the header marks it.
    def make():
        return numbadam.Adam(np.float64(0.01), beta_2=np.float64(0.999), decay=0.01)

    def run(opt, w, steps):
        for t in steps:
            opt.apply_gradients([(np.full(3, 0.5 - t, np.float64), w)])

    w1, w2 = np.ones(3), np.ones(3)
    o1, o2 = make(), make()
    run(o1, w1, range(6))
    run(o2, w2, range(3))
    path = tmp_path / "c.npz"
    save_checkpoint(path, o2, [w2])
    assert _header(path)["optimizer"]["float64"] == ["beta_2", "learning_rate"]
    ckpt = load_checkpoint(path)
    assert type(ckpt.optimizer.get_config()["beta_2"]) is np.float64
    run(ckpt.optimizer, ckpt.variables["0"], range(3, 6))
    assert _bits(ckpt.variables["0"]) == _bits(w1)
    # (a Python-float optimizer writes no marker)
    save_checkpoint(tmp_path / "d.npz", numbadam.Adam(0.01), [np.ones(3)])
    assert "float64" not in _header(tmp_path / "d.npz")["optimizer"]
    header = _header(path)
    for i, bad in enumerate((["amsgrad"], "beta_2", [["beta_2"]], ["nope"])):
        h = json.loads(json.dumps(header))
        h["optimizer"]["float64"] = bad
        bad_path = _rewrite(path, tmp_path / f"bad{i}.npz", **{HEADER_KEY: _encode(h)})
        _expect(bad_path, "malformed")


def test_bad_headers(good, tmp_path):
    src, _ = good
    header = _header(src)

    def variant(name, **changes):
        h = json.loads(json.dumps(header))
        h.update(changes)
        return _rewrite(src, tmp_path / name, **{HEADER_KEY: _encode(h)})

    raw = np.frombuffer(b"{not json", np.uint8)
    _expect(_rewrite(src, tmp_path / "a.npz", **{HEADER_KEY: raw}), "not valid JSON")
    _expect(
        _rewrite(src, tmp_path / "b.npz", **{HEADER_KEY: np.ones(3, np.float32)}),
        "not a uint8",
    )
    _expect(variant("c.npz", format="other"), "not a numbadam checkpoint header")
    _expect(variant("d.npz", version=99), "version 99")
    _expect(variant("e.npz", weights="x"), "malformed")
    _expect(variant("f.npz", step=17), "step count disagrees")
    opt = dict(header["optimizer"], class_name="SGD")
    _expect(variant("g.npz", optimizer=opt), "unknown optimizer class 'SGD'")
    cfg = dict(header["optimizer"]["config"], bogus=1)
    _expect(
        variant("h.npz", optimizer=dict(header["optimizer"], config=cfg)),
        "cannot rebuild the optimizer",
    )
    cfg = dict(header["optimizer"]["config"], amsgrad=False)  # file has vhat slots
    _expect(
        variant("i.npz", optimizer=dict(header["optimizer"], config=cfg)),
        "does not use",
    )


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


# ---------------------------------------------------------------------------
# saving: failures keep the previous file, only regular files are replaced,
# the umask is never touched, a file's mode is kept
# ---------------------------------------------------------------------------


class _DiskFull:
    """A file whose disk fills up after ``budget`` bytes (writes raise ENOSPC)."""

    def __init__(self, f, budget):
        self._f, self._left = f, budget

    def write(self, data):
        n = memoryview(data).nbytes
        if n > self._left:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._left -= n
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _fail_after(monkeypatch, budget):
    real = os.fdopen

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real(fd, mode, *args, **kwargs)
        return _DiskFull(f, budget) if "w" in mode else f

    monkeypatch.setattr(os, "fdopen", fdopen)


def _raise_oserror(code):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize(
    "fault", ["write0", "write1000", "write-end", "fsync", "replace"]
)
def test_failed_save_keeps_the_previous_file_and_leaves_no_other(
    tmp_path, monkeypatch, fault
):
    opt, variables = _trained(amsgrad=True)
    path = tmp_path / "c.npz"
    save_checkpoint(path, opt, variables, metadata={"v": 1})
    before = path.read_bytes()
    opt.apply_gradients([(np.ones(2, np.float32), variables["bias"])])
    if fault.startswith("write"):
        budget = {"write0": 0, "write1000": 1000, "write-end": len(before) - 8}[fault]
        _fail_after(monkeypatch, budget)
        code = errno.ENOSPC
    else:
        code = errno.EIO
        monkeypatch.setattr(os, fault, _raise_oserror(code))
    with pytest.raises(OSError) as info:
        save_checkpoint(path, opt, variables, metadata={"v": 2})
    monkeypatch.undo()
    assert info.value.errno == code and info.value.filename == str(path)
    assert "unchanged" in str(info.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]
    assert load_checkpoint(path).metadata == {"v": 1}


def _special_files(tmp_path):
    """(name, path, is-still-it) of non-regular files a save must not replace."""
    import socket
    import stat

    out = []
    fifo = tmp_path / "fifo.npz"
    os.mkfifo(fifo)
    out.append(("FIFO", fifo, lambda: stat.S_ISFIFO(os.lstat(fifo).st_mode)))
    sock_path = tmp_path / "sock.npz"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(sock_path))
    sock.close()
    out.append(
        ("socket", sock_path, lambda: stat.S_ISSOCK(os.lstat(sock_path).st_mode))
    )
    # A link to /dev/null: the link is followed, /dev/null refused. (Without the
    # check, os.replace would replace the link, not /dev/null: safe to test.)
    link = tmp_path / "null.npz"
    os.symlink(os.devnull, link)
    out.append(
        (
            "character device",
            link,
            lambda: os.readlink(link) == os.devnull
            and stat.S_ISCHR(os.stat(os.devnull).st_mode),
        )
    )
    dev = tmp_path / "dev.npz"
    try:  # only root may create device nodes; as root, this one is /dev/null's twin
        os.mknod(dev, stat.S_IFCHR | 0o600, os.makedev(1, 3))
    except (PermissionError, AttributeError):
        pass
    else:
        out.append(
            ("character device", dev, lambda: stat.S_ISCHR(os.lstat(dev).st_mode))
        )
    return out


def test_save_refuses_anything_but_a_regular_file(tmp_path):
    opt, variables = _trained()
    specials = _special_files(tmp_path)
    names = sorted(os.listdir(tmp_path))
    for kind, path, still in specials:
        with pytest.raises(CheckpointError, match=f"is a {kind}") as info:
            save_checkpoint(path, opt, variables)
        assert info.value.path == str(path)
        assert still(), f"{kind} {path} was replaced"
    assert sorted(os.listdir(tmp_path)) == names  # no temporary file left


def test_load_refuses_anything_but_a_regular_file(tmp_path):
    for kind, path, still in _special_files(tmp_path):
        _expect(path, f"is a {kind}.*, not a checkpoint file")  # and does not block
        assert still()


def test_save_follows_a_link_to_a_regular_file(tmp_path):
    opt, variables = _trained()
    real = tmp_path / "ckpt-3.npz"
    save_checkpoint(real, opt, variables, metadata={"v": 1})
    link = tmp_path / "latest.npz"
    os.symlink(real.name, link)
    save_checkpoint(link, opt, variables, metadata={"v": 2})
    assert os.path.islink(link) and os.readlink(link) == real.name
    assert load_checkpoint(real).metadata == {"v": 2}
    assert sorted(os.listdir(tmp_path)) == ["ckpt-3.npz", "latest.npz"]


def test_save_never_touches_the_umask(tmp_path, monkeypatch):
    # Setting it, even for a moment, changes the mode of files other threads
    # create meanwhile.
    def umask(*args):
        raise AssertionError("os.umask was called")

    opt, variables = _trained()
    monkeypatch.setattr(os, "umask", umask)
    save_checkpoint(tmp_path / "c.npz", opt, variables)  # a new file
    save_checkpoint(tmp_path / "c.npz", opt, variables)  # over an existing one


def test_save_keeps_the_mode_of_an_existing_file_and_honours_the_umask(tmp_path):
    import stat

    opt, variables = _trained()
    path = tmp_path / "c.npz"
    old = os.umask(0o027)
    try:
        save_checkpoint(path, opt, variables)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640  # 0o666 & ~0o027
        for mode in (0o600, 0o664, 0o400):
            os.chmod(path, mode)
            save_checkpoint(path, opt, variables)
            assert stat.S_IMODE(os.stat(path).st_mode) == mode
    finally:
        os.umask(old)


def test_long_file_names(tmp_path):
    opt, variables = _trained()
    # 250 bytes is a valid name; its temporary name must not overflow 255.
    long_name = "x" * 246 + ".npz"
    path = tmp_path / long_name
    save_checkpoint(path, opt, variables, metadata={"v": 1})
    save_checkpoint(path, opt, variables, metadata={"v": 2})
    assert load_checkpoint(path).metadata == {"v": 2}
    assert os.listdir(tmp_path) == [long_name]
    # A multi-byte name near the limit: cut on a character boundary.
    path = tmp_path / ("é" * 123 + ".npz")  # 250 bytes
    save_checkpoint(path, opt, variables)
    assert load_checkpoint(path).step == 3
    os.remove(path)
    too_long = tmp_path / ("y" * 300 + ".npz")
    with pytest.raises(CheckpointError, match="too long"):
        save_checkpoint(too_long, opt, variables)
    _expect(too_long, "too long")
    assert os.listdir(tmp_path) == [long_name]


def test_bytes_paths(tmp_path):
    opt, variables = _trained()
    path = os.fsencode(tmp_path / "c.npz")
    assert save_checkpoint(path, opt, variables) == str(tmp_path / "c.npz")
    ckpt = load_checkpoint(path)
    assert ckpt.path == str(tmp_path / "c.npz") and ckpt.step == 3
    with pytest.raises(CheckpointError, match="is a folder") as info:
        load_checkpoint(os.fsencode(tmp_path))
    assert info.value.path == str(tmp_path)  # a str, not bytes


def test_bad_paths(tmp_path):
    opt, variables = _trained()
    with pytest.raises(CheckpointError, match="empty"):
        save_checkpoint("", opt, variables)
    with pytest.raises(CheckpointError, match="empty"):
        load_checkpoint(b"")
    with pytest.raises(CheckpointError, match="NUL"):
        save_checkpoint(str(tmp_path / "a\0b.npz"), opt, variables)
    with pytest.raises(CheckpointError, match="NUL"):
        load_checkpoint(str(tmp_path / "a\0b.npz"))
    with pytest.raises(TypeError, match="path must be a str"):
        save_checkpoint(3, opt, variables)
    with pytest.raises(CheckpointError, match="not JSON-serialisable"):
        nested = []
        for _ in range(100_000):
            nested = [nested]
        save_checkpoint(tmp_path / "c.npz", opt, variables, metadata={"x": nested})
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------
# crafted archives: refused from the zip directory and the header, before any
# large read; every malformed file is one CheckpointError naming it
# ---------------------------------------------------------------------------


def _peak_bytes(fn):
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _add_bomb(src, dst, name, nbytes):
    """Copy src with one more member: a valid float64 .npy of nbytes zeros, deflated."""
    import shutil

    shutil.copyfile(src, dst)
    with zipfile.ZipFile(dst, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open(name, "w", force_zip64=True) as m:
            np.lib.format.write_array_header_1_0(
                m, {"descr": "<f8", "fortran_order": False, "shape": (nbytes // 8,)}
            )
            chunk = bytes(1 << 20)
            for _ in range(nbytes >> 20):
                m.write(chunk)
    return dst


BOMB = 32 << 20  # bytes once decompressed (the file grows by ~32 KB)


@pytest.mark.parametrize("member, match", [
    ("zzz.npy", "unexpected array.*zzz"),
    ("weight_99.npy", "'weight_99' is compressed"),
])  # fmt: skip
def test_compressed_extra_member_is_refused_without_decompressing(
    good, tmp_path, member, match
):
    src, _ = good
    path = _add_bomb(src, tmp_path / "bomb.npz", member, BOMB)
    assert os.path.getsize(path) < os.path.getsize(src) + BOMB // 100
    peak = _peak_bytes(lambda: _expect(path, match))
    assert peak < BOMB // 8, f"{peak} bytes allocated to refuse the file"


def test_compressed_member_is_refused(good, tmp_path):
    src, variables = good
    arrays = _arrays(src)
    path = tmp_path / "compressed.npz"
    np.savez_compressed(path, **arrays)
    peak = _peak_bytes(lambda: _expect(path, "is compressed"))
    assert peak < 1 << 20
    # A known member, with the shape the header gives it, but compressed: a
    # small file that would decompress to 32 MB.
    header = _header(src)
    header["variables"][0]["shape"] = [BOMB // 8]
    header["variables"][0]["dtype"] = "<f8"
    arrays.pop("variable_0")
    arrays[HEADER_KEY] = _encode(header)
    np.savez(tmp_path / "base.npz", **arrays)
    bomb = _add_bomb(tmp_path / "base.npz", tmp_path / "b.npz", "variable_0.npy", BOMB)
    table = np.zeros((10, 2), np.float32)
    peak = _peak_bytes(lambda: _expect(bomb, "'variable_0' is compressed"))
    assert peak < BOMB // 8 and not table.any()


def _central_entry(data, name):
    """Offset of the central-directory entry of member `name` in zip bytes."""
    pos = 0
    while True:
        pos = data.index(b"PK\x01\x02", pos + 1)
        n = int.from_bytes(data[pos + 28 : pos + 30], "little")
        if data[pos + 46 : pos + 46 + n] == name.encode():
            return pos


@pytest.mark.parametrize("field, value, match", [
    (6, b"\xff\x00", "truncated or corrupt .npz archive"),  # version needed: 25.5
    (10, b"\x63\x00", "compressed"),  # compression method 99
    (8, b"\x01\x00", "encrypted"),  # flag bits: encrypted
    (8, b"\x40\x00", "encrypted"),  # flag bits: strong encryption
    (20, b"\xfe\xff\xff\x7f", "beyond the file"),  # compressed size
    (24, b"\xfe\xff\xff\x7f", "beyond the file"),  # uncompressed size
    (42, b"\xfe\xff\xff\x7f", "beyond the file|corrupt"),  # local header offset
])  # fmt: skip
def test_damaged_zip_directory(good, tmp_path, field, value, match):
    src, variables = good
    data = bytearray(src.read_bytes())
    pos = _central_entry(data, "weight_1.npy") + field
    data[pos : pos + len(value)] = value
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(data))
    table, bias = np.zeros((10, 2), np.float32), np.zeros(2, np.float32)
    peak = _peak_bytes(lambda: _expect(path, match, {"table": table, "bias": bias}))
    assert peak < 1 << 20 and not table.any() and not bias.any()


def test_duplicate_member(good, tmp_path):
    src, _ = good
    import shutil
    import warnings

    path = tmp_path / "dup.npz"
    shutil.copyfile(src, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
        with zipfile.ZipFile(path, "a") as zf:
            with zf.open("weight_1.npy", "w") as m:
                np.lib.format.write_array(m, np.zeros(3))
    _expect(path, "'weight_1' appears twice")


def test_deeply_nested_header(good, tmp_path):
    src, _ = good
    for text in (b"[" * 100_000, b'{"a": ' * 100_000):
        raw = np.frombuffer(text, np.uint8)
        path = _rewrite(src, tmp_path / "deep.npz", **{HEADER_KEY: raw})
        _expect(path, "not valid JSON")


def _variant(src, dst, edit, **arrays):
    header = _header(src)
    edit(header)
    return _rewrite(src, dst, **{HEADER_KEY: _encode(header)}, **arrays)


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(h):
        for k in keys[:-1]:
            h = h[k]
        h[keys[-1]] = value

    return edit


@pytest.mark.parametrize("edit, match", [
    (_set("weights", 1, "variable", 0.0), r"malformed \(weight 1: variable 0.0\)"),
    (_set("weights", 1, "variable", True), "malformed"),
    (_set("weights", 1, "variable", 7), "malformed"),
    (_set("weights", 1, "role", "other"), "malformed"),
    (_set("weights", 1, "slot", 3), "malformed"),
    (_set("variables", 1, "name", "table"), "'table' appears twice"),
    (_set("variables", 1, "name", None), "malformed"),
    (_set("variables", 0, "dtype", [["a", "<f4"]]), "malformed.*dtype"),
    (_set("variables", 0, "dtype", "|O"), "malformed.*not numeric"),
    (_set("variables", 0, "dtype", "V8"), "malformed.*not numeric"),
    (_set("variables", 0, "dtype", "no such dtype"), "malformed.*not a NumPy dtype"),
    (_set("variables", 0, "shape", [10, True]), "malformed.*shape"),
    (_set("variables", 0, "shape", "10"), "malformed.*shape"),
    (_set("variables", 0, "shape", [1] * 40), "malformed.*shape"),
    (_set("variables", 0, 3), "malformed"),
    (_set("optimizer", "module", 3), "malformed"),
    (_set("version", True), "version True"),
    (_set("step", -1), "malformed"),
    (_set("step", 3.0), "malformed"),
])  # fmt: skip
def test_malformed_header_fields(good, tmp_path, edit, match):
    src, variables = good
    path = _variant(src, tmp_path / "bad.npz", edit)
    table, bias = np.zeros((10, 2), np.float32), np.zeros(2, np.float32)
    _expect(path, match, {"table": table, "bias": bias})
    assert not table.any() and not bias.any()


@pytest.mark.parametrize("value, step, match", [
    (np.array(2**63, np.uint64), 2**63, "step 9223372036854775808 is not"),
    (np.array(2**63, np.uint64), 3, "iterations is 9223372036854775808"),
    (np.array(2**64 - 1, np.uint64), 3, "iterations is 18446744073709551615"),
    (np.array(1e19), 10**19, "malformed"),
    (np.array(3.0), 3, "iterations, which must be a 0-d integer"),
    (np.array(float("nan")), 3, "iterations, which must be a 0-d integer"),
    (np.array(3 + 0j), 3, "iterations, which must be a 0-d integer"),
    (np.array([3, 3, 3]), 3, "iterations, which must be a 0-d integer"),
    (np.array([[3]], np.int64), 3, "iterations, which must be a 0-d integer"),
    (np.array(-1), -1, "malformed"),
    (np.array(-1), 3, "iterations is -1"),
])  # fmt: skip
def test_bad_iterations_in_file(good, tmp_path, value, step, match):
    src, _ = good

    def edit(h):
        h["step"] = step
        h["weights"][0].update(shape=list(value.shape), dtype=value.dtype.str)

    path = _variant(src, tmp_path / "it.npz", edit, weight_0=value)
    table, bias = np.zeros((10, 2), np.float32), np.zeros(2, np.float32)
    _expect(path, match, {"table": table, "bias": bias})
    assert not table.any() and not bias.any()


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
