"""Checkpoints of numbadam.distributed's optimizers: the sharded format's
failure guarantees and malformed folders, and single-file checkpoints of
DistributedAdam and ShardedAdam.

In-process tests run on the one-process communicator; the 2-rank tests run
``mpiexec -n 2 python -m mpi4py tests/mpi_scripts/checkpoint_cases.py`` once
and read what every rank recorded (skipped, with the reason, without mpi4py or
mpiexec, as in tests/test_distributed.py).
"""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import numbadam
from numbadam import CheckpointError, load_checkpoint, save_checkpoint
from numbadam.distributed import DistributedAdam, ShardedAdam

SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"
sys.path.insert(0, str(SCRIPTS))
import checkpoint_cases as cases  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def _bits(a) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def _same(xs, ys):
    xs, ys = list(xs), list(ys)
    assert len(xs) == len(ys)
    for x, y in zip(xs, ys):
        x, y = np.asarray(x), np.asarray(y)
        assert x.dtype == y.dtype and x.shape == y.shape and _bits(x) == _bits(y)


def _reference(steps):
    """numbadam.Adam on the same gradients: what every mode must reproduce."""
    variables = cases.init_variables()
    opt = numbadam.Adam(learning_rate=cases.LR)
    cases.train(opt, variables, steps)
    return opt, variables


def _snapshot(folder):
    return {name: (folder / name).read_bytes() for name in sorted(os.listdir(folder))}


# ---------------------------------------------------------------------------
# save_sharded: a failure at any point keeps the previous checkpoint
# ---------------------------------------------------------------------------


def _sharded(kind=ShardedAdam, steps=range(cases.K)):
    variables = cases.init_variables()
    opt = kind(learning_rate=cases.LR, comm="self")
    cases.train(opt, variables, steps)
    return opt, variables


class _Full:
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


def _inject(monkeypatch, fault, shard_bytes):
    if fault.startswith("full"):  # the disk fills up after so many bytes
        budget = {
            "full-at-start": 0,
            "full-in-shard": shard_bytes // 2,
            "full-in-manifest": shard_bytes + 40,
        }[fault]
        real = os.fdopen
        left = [budget]

        def fdopen(fd, mode="r", *args, **kwargs):
            f = real(fd, mode, *args, **kwargs)
            if "w" not in mode:
                return f
            wrapped = _Full(f, left[0])
            left[0] = max(0, left[0] - shard_bytes)  # this file takes its share
            return wrapped

        monkeypatch.setattr(os, "fdopen", fdopen)
        return
    name, n = {
        "fsync-shard": ("fsync", 1),
        "rename-shard": ("replace", 1),
        "fsync-manifest": ("fsync", 3),  # after the shard's file and folder
        "rename-manifest": ("replace", 2),
    }[fault]
    real = getattr(os, name)
    calls = [0]

    def fail(*args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real(*args, **kwargs)

    monkeypatch.setattr(os, name, fail)


FAULTS = [
    "full-at-start",
    "full-in-shard",
    "full-in-manifest",
    "fsync-shard",
    "rename-shard",
    "fsync-manifest",
    "rename-manifest",
]


@pytest.mark.parametrize("kind", [ShardedAdam, DistributedAdam])
@pytest.mark.parametrize("fault", FAULTS)
def test_failed_save_sharded_keeps_the_previous_checkpoint(
    tmp_path, monkeypatch, kind, fault
):
    opt, variables = _sharded(kind)
    folder = tmp_path / "ck"
    opt.save_sharded(str(folder))
    saved = opt.get_weights()
    before = _snapshot(folder)
    shard_bytes = max(len(b) for n, b in before.items() if n.endswith(".npz"))
    cases.train(opt, variables, range(cases.K, cases.K + 1))
    _inject(monkeypatch, fault, shard_bytes)
    with pytest.raises(OSError) as info:
        opt.save_sharded(str(folder))
    monkeypatch.undo()
    assert info.value.errno in (errno.ENOSPC, errno.EIO)
    assert str(folder) in str(info.value)
    assert _snapshot(folder) == before  # same files, same bytes, nothing else
    fresh = kind(learning_rate=cases.LR, comm="self")
    fresh.load_sharded(str(folder), var_list=cases.init_variables())
    _same(fresh.get_weights(), saved)
    # and the next save works, leaving only the new checkpoint's files
    opt.save_sharded(str(folder))
    names = sorted(os.listdir(folder))
    assert len(names) == 2 and "manifest.json" in names
    assert not set(names) & set(before) - {"manifest.json"}


def test_save_sharded_removes_old_shards_and_leftovers_only(tmp_path):
    opt, _ = _sharded()
    folder = tmp_path / "ck"
    folder.mkdir()
    leftovers = [
        ".shard-00000-of-00001-0123abcd.npz.89abcdef.tmp",  # this version's
        ".manifest.json.0123abcd.tmp",
        "shard-00000-of-00002.npz.tmp4242.npz",  # the previous version's
        "manifest.json.tmp4242",
        "shard-00001-of-00002.npz",  # an old shard no manifest lists
    ]
    kept = ["notes.txt", "shard-0.npz", "vars.npz"]  # not ours
    for name in leftovers + kept:
        (folder / name).write_bytes(b"x")
    opt.save_sharded(str(folder))
    first = set(os.listdir(folder))
    assert not first & set(leftovers)
    opt.save_sharded(str(folder))
    second = set(os.listdir(folder))
    assert set(kept) <= second and len(second) == len(kept) + 2
    assert not (first - set(kept) - {"manifest.json"}) & second  # new names


def test_sharded_checkpoint_of_the_previous_layout_still_loads(tmp_path):
    # Before this version shards were named shard-00000-of-00001.npz.
    opt, _ = _sharded()
    folder = tmp_path / "ck"
    opt.save_sharded(str(folder))
    manifest = json.loads((folder / "manifest.json").read_text())
    for shard in manifest["shards"]:
        old = shard["file"].rsplit("-", 1)[0] + ".npz"
        os.rename(folder / shard["file"], folder / old)
        shard["file"] = old
    (folder / "manifest.json").write_text(json.dumps(manifest))
    fresh = ShardedAdam(learning_rate=cases.LR, comm="self")
    fresh.load_sharded(str(folder), var_list=cases.init_variables())
    _same(fresh.get_weights(), opt.get_weights())
    opt.save_sharded(str(folder))  # replaces it; the old shard goes
    assert "shard-00000-of-00001.npz" not in os.listdir(folder)
    assert len(os.listdir(folder)) == 2


def test_save_sharded_keeps_the_manifest_mode(tmp_path):
    opt, _ = _sharded()
    folder = tmp_path / "ck"
    opt.save_sharded(str(folder))
    os.chmod(folder / "manifest.json", 0o600)
    opt.save_sharded(str(folder))
    for name in os.listdir(folder):
        assert stat.S_IMODE(os.stat(folder / name).st_mode) == 0o600, name


def test_save_sharded_refuses_a_file_or_a_special_manifest(tmp_path):
    opt, _ = _sharded()
    afile = tmp_path / "afile"
    afile.write_bytes(b"keep me")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        opt.save_sharded(str(afile))
    assert afile.read_bytes() == b"keep me"
    folder = tmp_path / "ck"
    folder.mkdir()
    os.mkfifo(folder / "manifest.json")
    with pytest.raises(CheckpointError, match="is a FIFO"):
        opt.save_sharded(str(folder))
    assert os.listdir(folder) == ["manifest.json"]
    assert stat.S_ISFIFO(os.lstat(folder / "manifest.json").st_mode)
    with pytest.raises(CheckpointError, match="is a FIFO"):
        opt.load_sharded(str(folder))  # and does not block


# ---------------------------------------------------------------------------
# load_sharded: a malformed folder is one clear error, the state unchanged
# ---------------------------------------------------------------------------


def _edit_manifest(folder, edit):
    path = folder / "manifest.json"
    m = json.loads(path.read_text())
    edit(m)
    path.write_text(json.dumps(m))


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(m):
        for k in keys[:-1]:
            m = m[k]
        m[keys[-1]] = value

    return edit


@pytest.mark.parametrize("edit, match", [
    (_set("iterations", 1e19), "iterations 1e\\+19 is not an integer"),
    (_set("iterations", 2**63), "iterations 9223372036854775808 is not"),
    (_set("iterations", -1), "iterations -1 is not"),
    (_set("shards", 0, "file", "../../etc/passwd"), "file name '../../etc/passwd'"),
    (_set("shards", 0, "file", "/tmp/x.npz"), "file name"),
    (_set("shards", 0, "ranges", 0, [0, 10**6]), "range"),
    (_set("shards", 0, "ranges", 0, [0, 1.5]), "range"),
    (_set("shards", 0, "ranges", []), "ranges"),
    (_set("weights", 0, "variable", 9), "weight 0: variable 9"),
    (_set("weights", 0, "variable", 0.0), "weight 0: variable 0.0"),
    (_set("variables", 0, "dtype", "|O"), "not numeric"),
    (_set("variables", 0, "shape", [5, True]), "shape"),
    (_set("variables", 0, "layout", "diagonal"), "layout"),
    (_set("format", "other/1"), "has format 'other/1'"),
])  # fmt: skip
@pytest.mark.parametrize("kind", [ShardedAdam, DistributedAdam])
def test_malformed_manifest(tmp_path, kind, edit, match):
    opt, variables = _sharded(kind)
    folder = tmp_path / "ck"
    opt.save_sharded(str(folder))
    _edit_manifest(folder, edit)
    before = opt.get_weights()
    with pytest.raises(CheckpointError, match=match) as info:
        opt.load_sharded(str(folder))
    assert info.value.path == str(folder / "manifest.json")
    _same(opt.get_weights(), before)


@pytest.mark.parametrize("text, match", [
    (b"{not json", "not valid JSON"),
    (b"[" * 100_000, "nested too deeply"),
    (b"\xff\xfe", "not valid JSON"),
    (b"[1, 2]", "has format None"),
])  # fmt: skip
def test_manifest_not_json(tmp_path, text, match):
    opt, _ = _sharded()
    folder = tmp_path / "ck"
    opt.save_sharded(str(folder))
    (folder / "manifest.json").write_bytes(text)
    with pytest.raises(CheckpointError, match=match):
        opt.load_sharded(str(folder))


def _shard(folder):
    (name,) = [n for n in os.listdir(folder) if n.startswith("shard-")]
    return folder / name


def test_bad_shard_files(tmp_path):
    opt, variables = _sharded()
    folder = tmp_path / "ck"
    opt.save_sharded(str(folder))
    before = opt.get_weights()
    shard = _shard(folder)
    with np.load(shard, allow_pickle=False) as z:
        payload = {k: z[k] for k in z.files}

    def expect(match):
        with pytest.raises(CheckpointError, match=match) as info:
            opt.load_sharded(str(folder))
        assert info.value.path == str(shard)
        _same(opt.get_weights(), before)

    np.savez_compressed(shard, **payload)
    expect("compressed")
    np.savez(shard, **dict(payload, w0=payload["w0"][:-1]))
    expect("'w0' has shape")
    np.savez(shard, **dict(payload, w1=payload["w1"].astype(np.float16)))
    expect("'w1' has shape .* dtype float16")
    np.savez(shard, **{k: v for k, v in payload.items() if k != "w2"})
    expect("missing array 'w2'")
    shard.write_bytes(b"PK\x03\x04 not really")
    expect("truncated or corrupt")
    shard.unlink()
    os.mkfifo(shard)
    expect("is a FIFO")


# ---------------------------------------------------------------------------
# single-file checkpoints of DistributedAdam and ShardedAdam
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [DistributedAdam, ShardedAdam])
def test_single_file_checkpoint_resumes_bit_identically(tmp_path, kind):
    ref_opt, ref_vars = _reference(range(cases.N))
    opt, variables = _sharded(kind)
    path = tmp_path / "c.npz"
    save_checkpoint(path, opt, variables)
    ckpt = load_checkpoint(path)
    assert type(ckpt.optimizer) is kind and ckpt.step == cases.K
    assert ckpt.optimizer.comm.size == 1
    resumed = list(ckpt.variables.values())
    cases.train(ckpt.optimizer, resumed, range(cases.K, cases.N))
    _same(resumed, ref_vars)
    _same(ckpt.optimizer.get_weights(), ref_opt.get_weights())


def _fresh_python(code):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    for k in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        env.pop(k, None)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )


def test_distributed_adam_checkpoint_loads_in_a_fresh_process(tmp_path):
    # Without numbadam.distributed imported: the file names the module.
    opt, variables = _sharded(DistributedAdam)
    path = tmp_path / "dp.npz"
    save_checkpoint(path, opt, variables)
    r = _fresh_python(
        f"""
        import sys, numbadam
        ckpt = numbadam.load_checkpoint({str(path)!r})
        print(type(ckpt.optimizer).__module__, type(ckpt.optimizer).__name__,
              ckpt.step, "mpi4py" in sys.modules)
        """
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [
        "numbadam.distributed._data_parallel",
        "DistributedAdam",
        str(cases.K),
        "False",
    ]


def test_distributed_adam_checkpoint_without_module_field(tmp_path):
    # Files written before the module was recorded: found once imported,
    # otherwise a precise error (it used to say "your own" class).
    opt, variables = _sharded(DistributedAdam)
    path = tmp_path / "dp.npz"
    save_checkpoint(path, opt, variables)
    with np.load(path, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    header = json.loads(arrays["__numbadam_checkpoint__"].tobytes())
    del header["optimizer"]["module"]
    arrays["__numbadam_checkpoint__"] = np.frombuffer(
        json.dumps(header).encode(), np.uint8
    )
    np.savez(path, **arrays)
    assert type(load_checkpoint(path).optimizer) is DistributedAdam
    r = _fresh_python(
        f"""
        import numbadam
        try:
            numbadam.load_checkpoint({str(path)!r})
        except numbadam.CheckpointError as exc:
            print(exc)
        """
    )
    assert r.returncode == 0, r.stderr
    assert "unknown optimizer class 'DistributedAdam'" in r.stdout
    assert "import the module that defines it" in r.stdout


def test_sharded_adam_set_weights_refuses_bad_iterations():
    opt, _ = _sharded()
    before = opt.get_weights()
    rest = before[1:]
    for it in (np.uint64(2**63), 1e19, -1, 2.5, float("nan")):
        with pytest.raises(ValueError, match="below 2\\*\\*63"):
            opt.set_weights([it] + rest)
    for it in (3 + 0j, True):
        with pytest.raises(TypeError, match="dtype"):
            opt.set_weights([it] + rest)
    _same(opt.get_weights(), before)


# ---------------------------------------------------------------------------
# 2 ranks
# ---------------------------------------------------------------------------


def _find_mpiexec():
    here = os.path.dirname(sys.executable)
    return shutil.which("mpiexec", path=here + os.pathsep + os.environ.get("PATH", ""))


MPIEXEC = _find_mpiexec()
HAVE_MPI4PY = importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(
    not (MPIEXEC and HAVE_MPI4PY),
    reason="needs mpi4py and mpiexec (pip install numbadam[mpi]): "
    f"mpi4py {'found' if HAVE_MPI4PY else 'missing'}, "
    f"mpiexec {'found' if MPIEXEC else 'missing'}",
)


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every rank's record of tests/mpi_scripts/checkpoint_cases.py at 2 ranks."""
    inp = tmp_path_factory.mktemp("in")
    for name, kind in (("dp", DistributedAdam), ("zero", ShardedAdam)):
        opt, variables = _sharded(kind)
        save_checkpoint(inp / f"{name}.npz", opt, variables)
    out = tmp_path_factory.mktemp("out")
    env = dict(os.environ, NUMBA_NUM_THREADS="1")  # 2 ranks share the cores
    # This checkout's numbadam, not whichever one is installed.
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py"]
    cmd += [str(SCRIPTS / "checkpoint_cases.py"), str(out), str(inp)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} did not end within 180 s: {exc}")
    ranks = []
    for r in range(2):
        path = out / f"rank{r}.npz"
        if path.exists():
            with np.load(path, allow_pickle=False) as f:
                ranks.append({k: f[k] for k in f.files})
    assert proc.returncode == 0 and len(ranks) == 2, (
        f"mpiexec -n 2 failed (rc {proc.returncode})\n{proc.stdout}\n{proc.stderr}"
    )
    return ranks, out


@needs_mpi
def test_sharded_adam_single_file_on_two_ranks_is_refused(two_ranks):
    ranks, out = two_ranks
    for r, rec in enumerate(ranks):
        msg = str(rec["a_error"])
        assert msg.startswith(str(out / "zero2.npz") + ": "), msg
        assert f"only rank {r}'s part" in msg and "save_sharded" in msg
        assert not rec["a_exists"]


@needs_mpi
def test_distributed_adam_state_dir_from_every_rank_is_written_once(two_ranks):
    # Both ranks call save_state_dir into one folder: overlapping saves would
    # remove each other's files, so rank 1 is refused and rank 0 writes.
    ranks, _ = two_ranks
    assert str(ranks[0]["d_kind"]) == "full" and str(ranks[0]["d_error"]) == ""
    assert str(ranks[1]["d_kind"]) == ""
    assert "rank 0 only" in str(ranks[1]["d_error"])
    for rec in ranks:
        assert all(bool(rec[k]) for k in rec if k.startswith("d_same"))
        assert bool(rec["d_weights_same"])


@needs_mpi
@pytest.mark.parametrize("what, fault_rank, error", [
    ("write", 1, "OSError: [Errno 28]"),
    ("manifest", 0, "OSError: [Errno 5]"),
])  # fmt: skip
def test_save_sharded_failing_on_one_rank_keeps_the_previous(
    two_ranks, what, fault_rank, error
):
    ranks, out = two_ranks
    for r, rec in enumerate(ranks):
        msg = str(rec[f"b_{what}_error"])
        if r == fault_rank:
            assert msg.startswith(error), msg
        else:
            assert msg.startswith("CheckpointError: ") and f"rank {fault_rank}" in msg
            assert "the previous checkpoint is kept" in msg
        assert str(rec[f"b_{what}_listing"]) == str(rec["b_listing"])
    # what was loaded back is the state at the first save
    saved = sorted(k for k in ranks[0] if k.startswith("b_saved"))
    assert saved
    for rec in ranks:
        _same(
            [rec[k.replace("saved", "loaded")] for k in saved],
            [ranks[0][k] for k in saved],
        )
    ref_opt, _ = _reference(range(cases.K))
    _same([ranks[0][k] for k in saved], ref_opt.get_weights())


@needs_mpi
@pytest.mark.parametrize(
    "name, kind", [("dp", "DistributedAdam"), ("zero", "ShardedAdam")]
)
def test_single_file_checkpoint_loads_on_two_ranks(two_ranks, name, kind):
    ranks, _ = two_ranks
    ref_opt, ref_vars = _reference(range(cases.N))
    for rec in ranks:
        assert str(rec[f"{name}_class"]) == kind and int(rec[f"{name}_size"]) == 2
        _same([rec[f"{name}_var{k}"] for k in range(len(ref_vars))], ref_vars)
        weights = ref_opt.get_weights()
        _same([rec[f"{name}_weight{k}"] for k in range(len(weights))], weights)


def test_row_wise_distributed_adam_refuses_the_sharded_format(tmp_path):
    # The sharded format holds slots shaped like their variables; a row-wise
    # v (one value per row) would be written with the wrong extent.
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 4)).astype(np.float32)
    opt = DistributedAdam(learning_rate=0.01, comm="self", second_moment="row")
    opt.apply_gradients([(rng.standard_normal((6, 4)).astype(np.float32), w)])
    before = [np.copy(x) for x in opt.get_weights()]
    path = tmp_path / "sharded"
    with pytest.raises(ValueError, match=r"save_sharded.*second_moment='row'"):
        opt.save_sharded(str(path))
    assert not path.exists()
    with pytest.raises(ValueError, match=r"load_sharded.*second_moment='row'"):
        opt.load_sharded(str(path), [w])
    for a, b in zip(opt.get_weights(), before):
        assert _bits(a) == _bits(b)
    # The single-file checkpoint holds the row-wise state and resumes it.
    save_checkpoint(tmp_path / "c.npz", opt, [w])
    ckpt = load_checkpoint(tmp_path / "c.npz")
    assert ckpt.optimizer.second_moment == "row"
    for a, b in zip(ckpt.optimizer.get_weights(), before):
        assert _bits(a) == _bits(b)


def test_accumulating_distributed_adam_refuses_the_sharded_format(tmp_path):
    # The sharded format has no accumulators and one counter of updates; a
    # mid-cycle state written there would lose the cycle's partial sums.
    rng = np.random.default_rng(4)
    w = rng.standard_normal((5, 3)).astype(np.float32)
    opt = DistributedAdam(
        learning_rate=0.01, comm="self", gradient_accumulation_steps=3
    )
    for _ in range(4):  # one update, then one call of the next cycle
        opt.apply_gradients([(rng.standard_normal((5, 3)).astype(np.float32), w)])
    before = [np.copy(x) for x in opt.get_weights()]
    w_before = w.copy()
    path = tmp_path / "sharded"
    with pytest.raises(
        ValueError, match=r"save_sharded.*gradient_accumulation_steps=3"
    ):
        opt.save_sharded(str(path))
    assert not path.exists()
    with pytest.raises(
        ValueError, match=r"load_sharded.*gradient_accumulation_steps=3"
    ):
        opt.load_sharded(str(path), [w])
    assert _bits(w) == _bits(w_before)
    for a, b in zip(opt.get_weights(), before):
        assert _bits(a) == _bits(b)
    # The single-file checkpoint holds the cycle and resumes it bit for bit.
    save_checkpoint(tmp_path / "c.npz", opt, [w])
    ckpt = load_checkpoint(tmp_path / "c.npz")
    assert int(ckpt.optimizer.iterations) == 1 and int(ckpt.optimizer.weights[0]) == 4
    for a, b in zip(ckpt.optimizer.get_weights(), before):
        assert _bits(a) == _bits(b)
