"""numbadam.distributed: the communicator layer, DistributedAdam, ShardedAdam,
ShardedEmbedding and sharded checkpoints.

Two kinds of tests:

* in-process, on the one-process fallback (``SelfCommunicator``), always run;
* MPI tests that spawn ``mpiexec -n 1``, ``-n 2`` and ``-n 4`` running
  ``python -m mpi4py tests/mpi_scripts/run_cases.py OUT``: every rank writes its
  own ``OUT/rank{r}.npz`` and the tests read those (mpiexec's exit status alone
  is not trusted). They are skipped, with the reason, when mpi4py or mpiexec is
  missing (``pip install numbadam[mpi]``).

The cases live in ``tests/mpi_scripts/distributed_cases.py``: gradients are made
of 4 seeded pieces split over the ranks, so every size has the same averaged
gradients and the single-process :class:`numbadam.Adam` on them is the reference.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

import numbadam
from numbadam import IndexedSlices
from numbadam.cli.demo.embedding import train_embedding_distributed
from numbadam.distributed import (
    DistributedAdam,
    SelfCommunicator,
    ShardedAdam,
    ShardedEmbedding,
    broadcast_variables,
    get_communicator,
    partition,
)

SCRIPTS = Path(__file__).resolve().parent / "mpi_scripts"
sys.path.insert(0, str(SCRIPTS))
import distributed_cases as cases  # noqa: E402

TIMEOUT = 120  # seconds per mpiexec run
SIZES = (1, 2, 4)
TOL = {  # dtype -> (rtol, atol) for results that go through a float sum over ranks
    np.dtype(np.float16): (1e-2, 2e-3),
    np.dtype(np.float32): (1e-5, 1e-6),
    np.dtype(np.float64): (1e-12, 1e-13),
}


def _find_mpiexec():
    # The mpiexec next to this Python first: the mpich wheel's, matching mpi4py.
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


def assert_close(actual, desired, what=""):
    desired = np.asarray(desired)
    if desired.dtype.kind in "iu":  # iterations
        np.testing.assert_array_equal(actual, desired, what)
        return
    rtol, atol = TOL[np.dtype(desired.dtype)]
    np.testing.assert_allclose(
        np.asarray(actual, np.float64),
        desired.astype(np.float64),
        rtol,
        atol,
        err_msg=what,
    )


# ---------------------------------------------------------------------------
# imports and the communicator layer
# ---------------------------------------------------------------------------


def _python(code: str, env=None) -> subprocess.CompletedProcess:
    full_env = dict(os.environ)
    for k in ("PMI_SIZE", "PMI_RANK", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK"):
        full_env.pop(k, None)
    full_env.update(env or {})
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=full_env,
    )


def test_import_numbadam_does_not_import_mpi4py():
    r = _python(
        """
        import sys, numbadam
        assert "mpi4py" not in sys.modules, "import numbadam imported mpi4py"
        import numbadam.distributed as d
        assert "mpi4py" not in sys.modules, "import numbadam.distributed did"
        assert isinstance(d.get_communicator(), d.SelfCommunicator)
        print("ok")
        """
    )
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr


def test_missing_mpi4py_gives_one_clear_error():
    r = _python(
        """
        import os, sys
        sys.modules["mpi4py"] = None  # as if not installed
        import numpy as np
        import numbadam.distributed as d
        # the one-process fallback still works
        w = np.zeros(2, np.float32)
        opt = d.DistributedAdam(learning_rate=0.1)
        opt.apply_gradients([(np.ones(2, np.float32), w)])
        assert np.allclose(w, -0.1), w
        try:
            d.get_communicator("mpi")
        except ImportError as e:
            print("ERR1", e)
        os.environ["PMI_SIZE"] = "2"  # started by mpiexec, without mpi4py
        try:
            d.DistributedAdam()
        except ImportError as e:
            print("ERR2", e)
        """
    )
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert len(lines) == 2 and all("pip install numbadam[mpi]" in x for x in lines)


@pytest.mark.parametrize(
    "total, parts, expected",
    [
        (10, 4, [0, 3, 6, 8, 10]),
        (2, 4, [0, 1, 2, 2, 2]),
        (0, 3, [0, 0, 0, 0]),
        (7, 1, [0, 7]),
    ],
)
def test_partition(total, parts, expected):
    assert partition(total, parts).tolist() == expected


def test_self_communicator_collectives():
    c = get_communicator("self")
    assert (c.rank, c.size, c.is_mpi) == (0, 1, False)
    a = np.arange(4.0)
    assert c.allreduce_sum_(a) is a and a.tolist() == [0, 1, 2, 3]
    assert c.reduce_scatter_sum(a, [4]).tolist() == [0, 1, 2, 3]
    assert c.allgatherv(a[:2], [2]).tolist() == [0, 1]
    assert c.alltoallv(a, [4], [4]).tolist() == [0, 1, 2, 3]
    assert c.allgather_counts(np.array([5, 6])).tolist() == [[5, 6]]
    assert c.bcast_obj({"x": 1}) == {"x": 1} and c.allgather_obj(3) == [3]
    with pytest.raises(ValueError):
        c.bcast_(a, root=1)
    with pytest.raises(ValueError, match="unknown communicator"):
        get_communicator("tcp")
    with pytest.raises(TypeError):
        get_communicator(42)


# ---------------------------------------------------------------------------
# in-process: the one-process fallback equals numbadam.Adam
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def references():
    # Also warms Numba's on-disk cache for every kernel the rank programs use,
    # so that ranks load compiled code instead of compiling it concurrently.
    return {name: cases.reference(name) for name in cases.CASES}


def _self_run(name):
    comm = SelfCommunicator()
    opt, variables = cases.run(name, comm)
    return cases.results(name, opt, variables)


@pytest.mark.parametrize("name", list(cases.CASES))
def test_fallback_equals_adam(name, references):
    got = _self_run(name)
    ref = references[name]
    for k, v in enumerate(ref["vars"]):
        if name.endswith("clip") and v.dtype == np.float16:
            # clipped float16 gradients are rounded once more (see ShardedAdam)
            assert_close(got[f"var{k}"], v, f"{name} var{k}")
        else:
            np.testing.assert_array_equal(got[f"var{k}"], v, f"{name} var{k}")
    for k, w in enumerate(ref["weights"]):
        assert_close(got[f"weight{k}"], w, f"{name} weight{k}")


def test_sharded_adam_api_in_process():
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    opt = ShardedAdam(learning_rate=0.1, amsgrad=True, comm="self")
    plain = numbadam.Adam(learning_rate=0.1, amsgrad=True)
    w2 = w.copy()
    g = np.ones((2, 3), np.float32)
    opt.apply_gradients([(g, w)])
    plain.apply_gradients([(g, w2)])
    np.testing.assert_array_equal(w, w2)
    assert opt.get_slot(w, "m").shape == (6,)
    assert opt.get_slot_names() == ["m", "v", "vhat"]
    np.testing.assert_array_equal(opt.gather_slot(w, "v"), plain.get_slot(w2, "v"))
    assert int(opt.iterations) == 1 and len(opt.weights) == 4
    assert opt.state_nbytes() == 3 * 6 * 4 + 8
    cfg = opt.get_config()
    assert cfg == plain.get_config()
    assert ShardedAdam.from_config(cfg).get_config() == cfg
    # set_weights takes a full Keras list (even an unsharded Adam's)
    fresh = ShardedAdam(learning_rate=0.1, amsgrad=True, comm="self")
    fresh.build([w])
    fresh.set_weights(plain.get_weights())
    for a, b in zip(fresh.get_weights(), plain.get_weights()):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="length"):
        fresh.set_weights(plain.get_weights()[:2])
    fresh.set_local_weights(fresh.get_local_weights())
    with pytest.raises(KeyError):
        opt.get_slot(np.zeros(3, np.float32), "m")


def test_sharded_adam_rejects_bad_input_before_any_change():
    w = np.zeros((4, 3), np.float32)
    opt = ShardedAdam(comm="self")
    with pytest.raises(ValueError, match="C-contiguous"):
        opt.apply_gradients([(np.ones((3, 4), np.float32).T, w.T)])
    with pytest.raises(ValueError, match="shape"):
        opt.apply_gradients([(np.ones(3, np.float32), w)])
    with pytest.raises(IndexError):
        opt.apply_gradients([(IndexedSlices(np.ones((1, 3), np.float32), [9]), w)])
    with pytest.raises(ValueError, match="twice"):
        opt.apply_gradients([(np.ones_like(w), w), (np.ones_like(w), w)])
    assert opt.weights == [opt.iterations] and int(opt.iterations) == 0
    assert not w.any()
    emb = ShardedEmbedding(5, 3, comm="self")
    with pytest.raises(TypeError, match="IndexedSlices"):
        opt.apply_gradients([(np.ones((5, 3), np.float32), emb)])
    with pytest.raises(TypeError, match="ShardedAdam"):
        DistributedAdam(comm="self").apply_gradients(
            [(IndexedSlices(np.ones((1, 3), np.float32), [0]), emb)]
        )


def test_sharded_adam_lazy_sparse_mode_matches_adam():
    rng = np.random.default_rng(5)
    t1 = rng.standard_normal((9, 4)).astype(np.float32)
    t2, t3 = t1.copy(), t1.copy()
    emb = ShardedEmbedding.from_full(t3, comm="self")
    a = numbadam.Adam(learning_rate=0.1, sparse_mode="lazy")
    b = ShardedAdam(learning_rate=0.1, sparse_mode="lazy", comm="self")
    c = ShardedAdam(learning_rate=0.1, sparse_mode="lazy", comm="self")
    for _ in range(3):
        g = IndexedSlices(
            rng.standard_normal((3, 4)).astype(np.float32),
            rng.integers(0, 9, 3),
            (9, 4),
        )
        a.apply_gradients([(g, t1)])
        b.apply_gradients([(g, t2)])
        c.apply_gradients([(g, emb)])
    np.testing.assert_array_equal(t2, t1)
    np.testing.assert_array_equal(emb.gather(), t1)


def test_distributed_adam_config_and_broadcast():
    opt = DistributedAdam(learning_rate=0.01, clipnorm=1.0, comm="self")
    cfg = opt.get_config()
    assert cfg == numbadam.Adam(learning_rate=0.01, clipnorm=1.0).get_config()
    assert DistributedAdam.from_config(cfg).get_config() == cfg
    w = np.ones((3, 2))
    broadcast_variables([w, w.T])  # non-contiguous views too
    assert w.sum() == 6


def test_sharded_embedding_in_process():
    full = np.arange(20, dtype=np.float32).reshape(10, 2)
    emb = ShardedEmbedding.from_full(full, comm="self")
    np.testing.assert_array_equal(emb.lookup([[1, 2], [9, 9]]), full[[[1, 2], [9, 9]]])
    np.testing.assert_array_equal(emb.gather(), full)
    with pytest.raises(IndexError):
        emb.lookup([10])
    with pytest.raises(ValueError):
        ShardedEmbedding(3, 2, comm="self", local=np.zeros((2, 2), np.float32))


def test_checkpoint_roundtrip_in_process(tmp_path, references):
    name = "zero_ckpt"
    comm = SelfCommunicator()
    opt, variables = cases.run(name, comm, range(cases.SAVE_AT))
    opt.save_sharded(str(tmp_path / "opt"))
    variables[-1].save(str(tmp_path / "table"))
    saved = [np.array(v, copy=True) for v in variables[:-1]]
    cases.run(name, comm, range(cases.SAVE_AT, cases.STEPS), opt, variables)
    fresh, fvars = cases.make_distributed(name, comm)
    for v, s in zip(fvars[:-1], saved):
        v[...] = s
    fvars[-1].load(str(tmp_path / "table"))
    fresh.load_sharded(str(tmp_path / "opt"), var_list=fvars)
    assert int(fresh.iterations) == cases.SAVE_AT
    cases.run(name, comm, range(cases.SAVE_AT, cases.STEPS), fresh, fvars)
    for a, b in zip(cases.gather_variables(fvars), references[name]["vars"]):
        np.testing.assert_array_equal(a, b)
    # an incomplete checkpoint (no manifest) is refused
    os.remove(tmp_path / "opt" / "manifest.json")
    with pytest.raises(FileNotFoundError, match="manifest"):
        fresh.load_sharded(str(tmp_path / "opt"))


def test_distributed_adam_checkpoint_in_process(tmp_path):
    rng = np.random.default_rng(1)
    w, t = np.ones((5, 2), np.float32), np.ones((6, 3), np.float64)
    opt = DistributedAdam(amsgrad=True, comm="self")
    for _ in range(2):
        g = IndexedSlices(rng.standard_normal((2, 3)), [1, 4], t.shape)
        opt.apply_gradients([(rng.standard_normal(w.shape), w), (g, t)])
    opt.save_sharded(str(tmp_path))
    again = DistributedAdam(amsgrad=True, comm="self")
    again.load_sharded(str(tmp_path), var_list=[w, t])
    zero = ShardedAdam(amsgrad=True, comm="self")
    zero.load_sharded(str(tmp_path), var_list=[w, t])
    for a, b, c in zip(opt.get_weights(), again.get_weights(), zero.get_weights()):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    with pytest.raises(ValueError, match="shape"):
        DistributedAdam(amsgrad=True, comm="self").load_sharded(
            str(tmp_path), var_list=[t, w]
        )


class _SecondOfTwo(SelfCommunicator):
    # what rank 1 of 2 sees of itself; no collective is called here
    rank = 1
    size = 2


def test_distributed_adam_state_dir_is_saved_from_rank_0_only(tmp_path):
    w = np.ones((3, 2), np.float32)
    g = np.full((3, 2), 0.5, np.float32)
    opt = DistributedAdam(0.1, comm="self")
    opt.apply_gradients([(g, w)])
    folder = tmp_path / "ckpt"
    assert numbadam.save_state_dir(folder, opt, [w]).kind == "full"  # one rank
    before = {n: (folder / n).read_bytes() for n in os.listdir(folder)}
    other = DistributedAdam(0.1, comm=_SecondOfTwo())
    other.build([w])
    other.set_weights(opt.get_weights())
    with pytest.raises(ValueError, match="rank 0 only .*this is rank 1"):
        numbadam.save_state_dir(folder, other, [w])
    with pytest.raises(ValueError, match="rank 0 only"):
        numbadam.save_state_dir(tmp_path / "new", other, [w])
    assert not (tmp_path / "new").exists()
    assert {n: (folder / n).read_bytes() for n in os.listdir(folder)} == before
    # every rank may load it
    w2 = np.zeros_like(w)
    numbadam.load_state_dir(folder, DistributedAdam(0.1, comm=_SecondOfTwo()), [w2])
    np.testing.assert_array_equal(w2, w)


class _NoCollectives(SelfCommunicator):
    # rank 0 of 2, whose collectives fail the test: what a call that must not
    # communicate sees
    rank = 0
    size = 2

    def _fail(self, *args, **kwargs):
        raise AssertionError("a collective was called")

    allreduce_sum_ = allgatherv = allgather_counts = allgather_obj = _fail
    reduce_scatter_sum = alltoallv = alltoall_counts = bcast_ = _fail
    bcast_obj = barrier = _fail


def test_local_accumulation_communicates_on_the_applying_call_only(tmp_path):
    # (its results at 1, 2 and 4 ranks: the dp_accum_local* cases)
    w = np.ones((3, 2), np.float32)
    t = np.ones((5, 2), np.float32)
    g = np.full((3, 2), 0.5, np.float32)
    s = IndexedSlices(np.ones((2, 2), np.float32), np.array([1, 4]), (5, 2))
    opt = DistributedAdam(
        0.1, comm=_NoCollectives(), gradient_accumulation_steps=3,
        local_accumulation=True,
    )  # fmt: skip
    for _ in range(2):  # the cycle's accumulating calls: no collective
        opt.apply_gradients([(g, w), (s, t)])
    assert (w == 1).all() and (t == 1).all() and int(opt.weights[0]) == 2
    np.testing.assert_array_equal(opt.get_slot(w, "accumulator"), 2 * g)
    # mid-cycle each rank holds its own sums: no state to read or save
    with pytest.raises(ValueError, match="local_accumulation.*finish the cycle"):
        opt.get_weights()
    with pytest.raises(ValueError, match="finish the cycle"):
        numbadam.save_state_dir(tmp_path / "ckpt", opt, [w, t])
    assert not (tmp_path / "ckpt").exists()
    with pytest.raises(AssertionError, match="a collective"):  # the applying call
        opt.apply_gradients([(g, w), (s, t)])
    assert (w == 1).all() and (t == 1).all()
    # without the option every call communicates
    plain = DistributedAdam(0.1, comm=_NoCollectives(), gradient_accumulation_steps=3)
    with pytest.raises(AssertionError, match="a collective"):
        plain.apply_gradients([(g, w)])


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"local_accumulation": True}, ValueError, "needs gradient_accumulation"),
        ({"local_accumulation": "yes", "gradient_accumulation_steps": 2},
         TypeError, "must be a bool"),
    ],
)  # fmt: skip
def test_local_accumulation_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        DistributedAdam(comm="self", **kwargs)
    opt = DistributedAdam(comm="self", gradient_accumulation_steps=2,
                          local_accumulation=True)  # fmt: skip
    assert "local_accumulation" not in opt.get_config()


def test_sharded_embedding_from_root_in_process():
    full = np.arange(12, dtype=np.float16).reshape(4, 3)
    emb = ShardedEmbedding.from_full(full, comm="self", root=0)
    assert emb.dtype == np.float16 and emb.shape == (4, 3)
    np.testing.assert_array_equal(emb.gather(), full)
    emb.assign_full(full + 1)
    np.testing.assert_array_equal(emb.local, full + 1)


def test_train_embedding_modes_agree_in_process():
    h_data = train_embedding_distributed(
        "data", comm="self", verbose=False, **cases.TRAIN
    )
    h_shard = train_embedding_distributed(
        "sharded", comm="self", verbose=False, **cases.TRAIN
    )
    assert h_data == h_shard and h_data[-1] < h_data[0]


# ---------------------------------------------------------------------------
# MPI: mpiexec -n 1, 2, 4
# ---------------------------------------------------------------------------


def _mpirun(n, script, *args, timeout=TIMEOUT):
    env = dict(os.environ)
    env["NUMBA_NUM_THREADS"] = "1"  # 4 ranks share 2 cores
    env.pop("NUMBA_ENABLE_CUDASIM", None)
    cmd = [MPIEXEC, "-n", str(n), sys.executable, "-m", "mpi4py", str(SCRIPTS / script)]
    t0 = time.monotonic()
    try:
        r = subprocess.run(
            cmd + [str(a) for a in args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} did not end within {timeout} s: {exc}")
    return r, time.monotonic() - t0


class _Run:
    def __init__(self, n, out, proc):
        self.n, self.out, self.proc = n, out, proc
        self.ranks = []
        for r in range(n):
            path = out / f"rank{r}.npz"
            if path.exists():
                with np.load(path) as f:
                    self.ranks.append({k: f[k] for k in f.files})

    def check(self):
        assert self.proc.returncode == 0 and len(self.ranks) == self.n, (
            f"mpiexec -n {self.n} failed (rc {self.proc.returncode}, "
            f"{len(self.ranks)} result files)\n{self.proc.stdout}\n{self.proc.stderr}"
        )
        return self


@pytest.fixture(scope="module")
def mpi_runs(tmp_path_factory, references):
    """Run the cases at 2, then 4 (resuming 2's checkpoints), then 1 (resuming 4's)."""
    if not (MPIEXEC and HAVE_MPI4PY):
        pytest.skip("needs mpi4py and mpiexec (pip install numbadam[mpi])")
    root = tmp_path_factory.mktemp("mpi")
    runs, previous = {}, None
    for n in (2, 4, 1):
        out = root / f"n{n}"
        out.mkdir()
        args = [out] + ([previous] if previous is not None else [])
        proc, _ = _mpirun(n, "run_cases.py", *args)
        runs[n] = _Run(n, out, proc)
        previous = out
    return runs


@needs_mpi
@pytest.mark.parametrize("n", SIZES)
def test_mpi_run_writes_one_result_per_rank(mpi_runs, n):
    run = mpi_runs[n].check()
    assert [int(f["meta__rank"]) for f in run.ranks] == list(range(n))
    assert all(int(f["meta__size"]) == n for f in run.ranks)


@needs_mpi
@pytest.mark.parametrize("n", SIZES)
def test_ranks_hold_identical_variables_and_state(mpi_runs, n):
    run = mpi_runs[n].check()
    first = run.ranks[0]
    for r, f in enumerate(run.ranks[1:], 1):
        for key, value in first.items():
            if key.startswith("meta__") or key.endswith(
                ("__local_nbytes", "__lookup", "__slot_folder", "__slot_file_nbytes")
            ):
                continue
            np.testing.assert_array_equal(f[key], value, f"rank {r} differs: {key}")
    # the replicated modes hold the same local state on every rank, too
    for name, (mode, *_rest) in cases.CASES.items():
        if mode == "dp":
            assert len({int(f[f"{name}__local_nbytes"]) for f in run.ranks}) == 1


@needs_mpi
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("name", list(cases.CASES))
def test_equals_single_process_adam(mpi_runs, references, n, name):
    got = mpi_runs[n].check().ranks[0]
    ref = references[name]
    for k, v in enumerate(ref["vars"]):
        assert_close(got[f"{name}__var{k}"], v, f"{name} var{k} at {n} ranks")
    for k, w in enumerate(ref["weights"]):
        assert_close(got[f"{name}__weight{k}"], w, f"{name} weight{k} at {n} ranks")
    if cases.CASES[name][4].get("use_ema"):
        # finalize_variable_values: every variable is its (gathered) average
        averages = ref["weights"][-len(ref["vars"]) :]
        for k, a in enumerate(averages):
            assert_close(got[f"{name}__final{k}"], a, f"{name} final{k} at {n} ranks")
    if name in cases.EXACT_TABLES:
        # IndexedSlices averaged by powers of two: bit-identical tables and slots
        np.testing.assert_array_equal(
            got[f"{name}__var{len(ref['vars']) - 1}"], ref["vars"][-1]
        )


@needs_mpi
@pytest.mark.parametrize("n", SIZES)
def test_uneven_shards_hold_one_nth_of_the_state(mpi_runs, references, n):
    run = mpi_runs[n].check()
    for name in ("zero_dense", "zero_amsgrad", "emb"):
        _, dense, table, emb, kw = cases.CASES[name]
        variables = cases.init_variables(name)
        nslots = 3 if kw.get("amsgrad") else 2
        per_rank = []
        for r in range(n):
            nbytes = 0
            for k, v in enumerate(variables):
                if emb and k == len(variables) - 1:  # rows of the table
                    b = partition(v.shape[0], n) * v.shape[1]
                else:
                    b = partition(v.size, n)
                nbytes += nslots * int(b[r + 1] - b[r]) * v.dtype.itemsize
            per_rank.append(nbytes)
        got = [int(f[f"{name}__local_nbytes"]) for f in run.ranks]
        assert got == per_rank, name
        full = sum(nslots * v.nbytes for v in variables)
        assert sum(got) == full and max(got) <= -(-full // n) + nslots * 8 * len(
            variables
        )


@needs_mpi
@pytest.mark.parametrize("n", SIZES)
def test_slot_dir_holds_each_ranks_slices_in_its_own_folder(mpi_runs, n):
    # (zero_disk's results equal Adam's: test_equals_single_process_adam)
    run = mpi_runs[n].check()
    for r, f in enumerate(run.ranks):
        assert str(f["zero_disk__slot_folder"]) == f"rank-{r:05d}-of-{n:05d}"
        assert bool(f["zero_disk__slots_mapped"])
        # the files hold this rank's slices, nothing more
        assert int(f["zero_disk__slot_file_nbytes"]) == int(
            f["zero_disk__local_nbytes"]
        )
    total = sum(int(f["zero_disk__local_nbytes"]) for f in run.ranks)
    variables = cases.init_variables("zero_disk")
    assert total == 3 * sum(v.nbytes for v in variables)  # m, v, vhat
    # DistributedAdam: a full copy of the replicated state in every rank folder
    full = 3 * sum(v.nbytes for v in cases.init_variables("dp_disk"))
    for r, f in enumerate(run.ranks):
        assert str(f["dp_disk__slot_folder"]) == f"rank-{r:05d}-of-{n:05d}"
        assert bool(f["dp_disk__slots_mapped"])
        assert int(f["dp_disk__slot_file_nbytes"]) == full


@needs_mpi
@pytest.mark.parametrize("n", SIZES)
def test_row_wise_table_state_is_one_v_per_row_split_by_rows(mpi_runs, n):
    # (the results equal Adam(second_moment="row")'s: test_equals_single_process_adam)
    run = mpi_runs[n].check()
    variables = cases.init_variables("emb_row")
    table = variables[-1]
    rows, width = table.shape
    item = table.dtype.itemsize
    per_rank = []
    for r in range(n):
        b = partition(rows, n)
        local = int(b[r + 1] - b[r])
        dense = sum(
            3 * int(partition(v.size, n)[r + 1] - partition(v.size, n)[r]) * item
            for v in variables[:-1]
        )
        per_rank.append(dense + local * width * item + 2 * local * item)  # m, v, vhat
    assert [int(f["emb_row__local_nbytes"]) for f in run.ranks] == per_rank


def test_sharded_row_mode_state_and_refused_sharded_files(tmp_path):
    # a replicated 2-D variable is cut at its rows: one v per row, as Adam's
    # (its steps at 1, 2 and 4 ranks: the zero_row* cases)
    w = np.ones((3, 2), np.float32)
    opt = ShardedAdam(comm="self", second_moment="row")
    ref, w_ref = numbadam.Adam(second_moment="row"), w.copy()
    g2 = np.arange(6, dtype=np.float32).reshape(3, 2)
    opt.apply_gradients([(g2, w)])
    ref.apply_gradients([(g2, w_ref)])
    assert opt.get_slot(w, "v").shape == (3,) and opt.get_slot(w, "m").shape == (6,)
    np.testing.assert_array_equal(w, w_ref)
    emb = ShardedEmbedding.from_full(np.ones((4, 2), np.float32), comm="self")
    g = IndexedSlices(np.ones((1, 2), np.float32), np.array([2]), (4, 2))
    opt.apply_gradients([(g, emb)])
    assert opt.get_slot(emb, "v").shape == (4,)
    with pytest.raises(ValueError, match="save_sharded.*second_moment='row'"):
        opt.save_sharded(str(tmp_path / "ck"))
    assert not (tmp_path / "ck").exists()
    with pytest.raises(ValueError, match="load_sharded.*second_moment='row'"):
        opt.load_sharded(str(tmp_path / "ck"))
    # get_weights / set_weights round trip, Adam's list
    twin = ShardedAdam(comm="self", second_moment="row")
    emb2 = ShardedEmbedding.from_full(emb.gather(), comm="self")
    twin.build([w.copy()])  # (the same slot order: w's first, as opt made them)
    twin.build([emb2])
    twin.set_weights(opt.get_weights())
    for a, b in zip(twin.get_weights(), opt.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_sharded_accumulation_weights_mid_cycle_and_refusals(tmp_path):
    rng = np.random.default_rng(21)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    w_ref = w.copy()
    kw = {"gradient_accumulation_steps": 3}
    opt, ref = ShardedAdam(0.1, comm="self", **kw), numbadam.Adam(0.1, **kw)
    grads = [rng.standard_normal((4, 3)).astype(np.float32) for _ in range(8)]
    for g in grads[:4]:  # one update, then call 1 of the next cycle
        opt.apply_gradients([(g, w)])
        ref.apply_gradients([(g.copy(), w_ref)])
    assert int(opt.weights[0]) == 4 and int(opt.iterations) == 1
    saved = opt.get_weights()
    for a, b in zip(saved, ref.get_weights()):
        np.testing.assert_array_equal(a, b)
    # a twin from the weights continues the cycle bit for bit
    twin, w2 = ShardedAdam(0.1, comm="self", **kw), w.copy()
    twin.build([w2])
    twin.set_weights(saved)
    for g in grads[4:]:
        twin.apply_gradients([(g, w2)])
        ref.apply_gradients([(g.copy(), w_ref)])
    np.testing.assert_array_equal(w2, w_ref)
    # non-zero accumulators with a counter at a cycle start disagree
    bad = [np.array(6)] + saved[1:]
    with pytest.raises(ValueError, match="accumulator"):
        twin.set_weights(bad)
    with pytest.raises(ValueError, match="gradient_accumulation_steps=3"):
        opt.save_sharded(str(tmp_path / "ck"))
    assert not (tmp_path / "ck").exists()
    # a variable the cycle's first call did not have is refused, unchanged
    table = np.ones((5, 2), np.float32)
    g = IndexedSlices(np.ones((1, 2), np.float32), np.array([3]), (5, 2))
    before = [np.copy(x) for x in opt.get_weights()]
    with pytest.raises(ValueError, match="same variables"):
        opt.apply_gradients([(np.ones((4, 3), np.float32), w), (g, table)])
    assert (table == 1).all()
    for a, b in zip(opt.get_weights(), before):
        np.testing.assert_array_equal(a, b)


def test_sharded_sparse_accumulation_mid_cycle():
    # IndexedSlices of a replicated table and of a ShardedEmbedding wait for
    # the applying call: nothing moves, the state cannot be read mid-cycle,
    # a dense gradient for them is refused; then Adam's bits
    # (the table-driven cases at 1, 2 and 4 ranks: test_equals_single_process_adam)
    rng = np.random.default_rng(5)
    table = rng.standard_normal((6, 4)).astype(np.float32)
    full = rng.standard_normal((5, 3)).astype(np.float32)
    emb = ShardedEmbedding.from_full(full, comm="self")
    kw = {"gradient_accumulation_steps": 3, "sparse_mode": "lazy"}
    opt, ref = ShardedAdam(0.1, comm="self", **kw), numbadam.Adam(0.1, **kw)
    t_ref, e_ref, table0 = table.copy(), full.copy(), table.copy()

    def grads(seed):
        r = np.random.default_rng(seed)
        i, j = r.integers(0, 6, 5), r.integers(0, 5, 4)
        return (
            IndexedSlices(r.standard_normal((5, 4)).astype(np.float32), i, (6, 4)),
            IndexedSlices(r.standard_normal((4, 3)).astype(np.float32), j, (5, 3)),
        )

    for c in range(2):
        a, b = grads(c)
        opt.apply_gradients([(a, table), (b, emb)])
        ref.apply_gradients([(a, t_ref), (b, e_ref)])
    np.testing.assert_array_equal(table, t_ref)
    with pytest.raises(ValueError, match="finish the cycle first"):
        opt.get_weights()
    with pytest.raises(ValueError, match="sparse gradients earlier"):
        opt.apply_gradients([(np.ones((6, 4), np.float32), table), (grads(9)[1], emb)])
    np.testing.assert_array_equal(table, t_ref)
    a, b = grads(2)
    opt.apply_gradients([(a, table), (b, emb)])
    ref.apply_gradients([(a, t_ref), (b, e_ref)])
    assert int(opt.iterations) == 1 and not np.array_equal(table, table0)
    np.testing.assert_array_equal(table, t_ref)
    np.testing.assert_array_equal(emb.gather(), e_ref)
    for x, y in zip(opt.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(x, y)


def test_rank_slot_dir_refusals(tmp_path):
    parent = tmp_path / "slots"
    with pytest.raises(FileNotFoundError):
        ShardedAdam(comm="self", slot_dir=parent)
    parent.mkdir()
    (parent / "rank-00000-of-00001").symlink_to(tmp_path)
    with pytest.raises(NotADirectoryError, match="not a folder"):
        ShardedAdam(comm="self", slot_dir=parent)
    assert (parent / "rank-00000-of-00001").is_symlink()  # left alone
    (parent / "rank-00000-of-00001").unlink()
    w = np.ones(5, np.float32)
    first = ShardedAdam(comm="self", slot_dir=parent)
    first.apply_gradients([(np.ones(5, np.float32), w)])
    assert isinstance(first.get_slot(w, "m").base, np.memmap)
    # a second optimizer on the same folder: refused by the rank folder's marker
    with pytest.raises(ValueError, match="another optimizer"):
        ShardedAdam(comm="self", slot_dir=parent)


@needs_mpi
@pytest.mark.parametrize("n", SIZES)
def test_sharded_embedding_lookup(mpi_runs, n):
    run = mpi_runs[n].check()
    for name in ("emb", "emb_amsgrad", "zero_clip"):
        table = run.ranks[0][f"{name}__var{len(cases.init_variables(name)) - 1}"]
        per = -(-len(cases.LOOKUP_IDS) // n)
        for r, f in enumerate(run.ranks):
            ids = cases.LOOKUP_IDS[r * per : (r + 1) * per]
            np.testing.assert_array_equal(f[f"{name}__lookup"], table[ids])


@needs_mpi
@pytest.mark.parametrize("n", [4, 1])
@pytest.mark.parametrize("name", cases.CKPT_CASES)
def test_checkpoint_saved_at_n_loads_at_m(mpi_runs, references, n, name):
    # 2 -> 4 and 4 -> 1 ranks, then continue training
    got = mpi_runs[n].check().ranks[0]
    assert int(got[f"{name}_resumed__iterations_at_load"]) == cases.SAVE_AT
    ref = references[name]
    for k, v in enumerate(ref["vars"]):
        assert_close(got[f"{name}_resumed__var{k}"], v, f"{name} var{k}")
    for k, w in enumerate(ref["weights"]):
        assert_close(got[f"{name}_resumed__weight{k}"], w, f"{name} weight{k}")
    np.testing.assert_array_equal(
        got[f"{name}_resumed__var{len(ref['vars']) - 1}"], ref["vars"][-1]
    )


@needs_mpi
@pytest.mark.parametrize("n", [2, 4])
def test_checkpoint_saved_under_mpi_loads_in_process(mpi_runs, references, n):
    mpi_runs[n].check()
    ck = mpi_runs[n].out / "zero_ckpt"
    comm = SelfCommunicator()
    opt, variables = cases.make_distributed("zero_ckpt", comm)
    with np.load(ck / "vars.npz") as f:
        for k, v in enumerate(variables[:-1]):
            v[...] = f[f"arr_{k}"]
    variables[-1].load(str(ck / "table"))
    opt.load_sharded(str(ck / "opt"), var_list=variables)
    cases.run("zero_ckpt", comm, range(cases.SAVE_AT, cases.STEPS), opt, variables)
    for k, (a, b) in enumerate(
        zip(cases.gather_variables(variables), references["zero_ckpt"]["vars"])
    ):
        assert_close(a, b, f"var{k}")
    # a DistributedAdam checkpoint loads into a ShardedAdam (same slots)
    dp = ShardedAdam(learning_rate=cases.LR, comm=comm)
    dvars = cases.init_variables("dp_ckpt")
    dp.load_sharded(str(mpi_runs[n].out / "dp_ckpt" / "opt"), var_list=dvars)
    assert int(dp.iterations) == cases.SAVE_AT


@needs_mpi
@pytest.mark.parametrize("n", SIZES)
def test_distributed_demo_same_learning_curve(mpi_runs, n):
    run = mpi_runs[n].check()
    ref = train_embedding_distributed("data", comm="self", verbose=False, **cases.TRAIN)
    for mode in ("data", "sharded"):
        np.testing.assert_allclose(
            run.ranks[0][f"train_{mode}__history"], ref, rtol=1e-5
        )


@needs_mpi
def test_a_rank_that_raises_aborts_the_job(tmp_path, references):
    proc, elapsed = _mpirun(2, "raise_on_rank.py", tmp_path, timeout=TIMEOUT)
    assert proc.returncode != 0
    assert elapsed < TIMEOUT / 2, f"the abort took {elapsed:.1f} s"
    assert "rank 1 fails on purpose" in proc.stdout + proc.stderr
    assert not list(tmp_path.glob("finished*"))


@needs_mpi
@pytest.mark.parametrize("kind", ["dp", "zero"])
@pytest.mark.parametrize("mode", ["shape", "kind", "none"])
def test_ranks_that_disagree_raise_on_every_rank(tmp_path, mode, kind):
    # Same sizes, other shapes or kinds: averaged silently (or a hang) before
    # the per-step agreement check. Now every rank raises the same error,
    # nothing changed, and the next agreeing step works.
    proc, _ = _mpirun(2, "disagree.py", mode, kind, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    texts = [(tmp_path / f"rank{r}.txt").read_text().splitlines() for r in range(2)]
    for unchanged, iterations, w, msg in texts:
        assert unchanged == "True"
        assert iterations == "1"
        assert float(w) == pytest.approx(-0.1, rel=1e-5)
        assert msg.startswith("ValueError: ") and "disagree at pair" in msg, msg
    assert texts[0][3] == texts[1][3]  # the same message on every rank
    assert "rank 0:" in texts[0][3] and "rank 1:" in texts[0][3]


@needs_mpi
@pytest.mark.parametrize("kind", ["dp", "zero"])
def test_timeout_aborts_when_a_rank_stops_stepping(tmp_path, kind):
    proc, elapsed = _mpirun(2, "disagree.py", "steps", kind, tmp_path, timeout=TIMEOUT)
    assert proc.returncode != 0
    assert elapsed < TIMEOUT / 2
    text = proc.stdout + proc.stderr
    assert "did not finish within timeout=3 s" in text, text
    assert "not reached" not in text


@pytest.mark.parametrize("cls", [DistributedAdam, ShardedAdam])
@pytest.mark.parametrize("bad", [0, -1.0, float("nan"), float("inf"), "5"])
def test_bad_timeout_is_refused(cls, bad):
    with pytest.raises((ValueError, TypeError), match="timeout"):
        cls(comm="self", timeout=bad)


def test_sharded_add_slot_is_a_slice_of_the_whole_slot():
    # ShardedAdam used to refuse add_slot; through the one slot table it now
    # creates this rank's slice (here the whole, on one process) in weights.
    w = np.zeros((2, 3), np.float32)
    opt = ShardedAdam(comm="self")
    init = np.arange(6, dtype=np.float32).reshape(2, 3)
    s = opt.add_slot(w, "extra", init)
    assert s.shape == (6,) and s.dtype == np.float32
    np.testing.assert_array_equal(s, init.reshape(-1))
    assert opt.add_slot(w, "extra") is s
    assert opt.get_slot(w, "extra") is s
    assert "extra" in opt.get_slot_names()
    assert any(x is s for x in opt.weights)
    with pytest.raises(TypeError, match="slot_name"):
        opt.add_slot(w, 3)


def test_distributed_adam_accumulates_with_adams_bits():
    # DistributedAdam accumulates: on one process, Adam's bits
    rng = np.random.default_rng(8)
    w1 = rng.standard_normal((4, 3)).astype(np.float32)
    w2 = w1.copy()
    opt = DistributedAdam(0.1, comm="self", gradient_accumulation_steps=3, use_ema=True)
    ref = numbadam.Adam(0.1, gradient_accumulation_steps=3, use_ema=True)
    for _ in range(7):
        g = rng.standard_normal((4, 3)).astype(np.float32)
        assert int(opt.apply_gradients([(g, w1)])) == int(
            ref.apply_gradients([(g.copy(), w2)])
        )
    assert int(opt.iterations) == 2
    np.testing.assert_array_equal(w1, w2)
    for a, b in zip(opt.get_weights(), ref.get_weights()):
        np.testing.assert_array_equal(a, b)
