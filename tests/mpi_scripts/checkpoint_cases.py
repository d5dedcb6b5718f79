"""Checkpoints at 2 ranks, for tests/test_checkpoint_distributed.py.

Usage: ``mpiexec -n 2 python -m mpi4py tests/mpi_scripts/checkpoint_cases.py OUT IN``

``IN`` holds single-file checkpoints the test saved in one process after ``K``
steps (``dp.npz`` of a DistributedAdam, ``zero.npz`` of a ShardedAdam). Every
rank writes ``OUT/rank{r}.npz`` with what it saw:

``a_*``
    ``save_checkpoint`` of a ShardedAdam over 2 ranks: the error on this rank,
    and whether the file exists afterwards;
``b_*``
    ``save_sharded`` failing on one rank (a full disk on rank 1 while writing
    its shard; rank 0's manifest rename failing): the error on this rank, the
    folder's listing afterwards, and the state loaded back from the folder;
``d_*``
    ``save_state_dir`` of a DistributedAdam called on both ranks into one
    folder: the kind written or the error on this rank, and whether what
    every rank loads back equals its state;
``dp_*``, ``zero_*``
    ``load_checkpoint`` of ``IN``'s files at 2 ranks, then steps ``K..N``.

Gradients are the same on every rank, so the averages are exact and the
results equal one process's.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any, Dict, List

import numpy as np

LR = 0.05
K, N = 2, 5  # saved after K steps, trained to N


def init_variables() -> List[np.ndarray]:
    rng = np.random.default_rng(7)
    return [
        rng.standard_normal((5, 3)).astype(np.float32),
        rng.standard_normal(7),
    ]


def train(opt, variables, steps) -> None:
    for t in steps:
        rng = np.random.default_rng(100 + t)
        opt.apply_gradients(
            [(rng.standard_normal(v.shape).astype(v.dtype), v) for v in variables]
        )


def _disk_full(real_fdopen):
    def fdopen(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        if "w" not in mode:
            return f

        class Full:
            def write(self, data):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

            def __getattr__(self, name):
                return getattr(f, name)

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                f.close()

        return Full()

    return fdopen


def _replace_fails_at(n, real_replace):
    calls = [0]

    def replace(src, dst, *args, **kwargs):
        calls[0] += 1
        if calls[0] == n:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        return real_replace(src, dst, *args, **kwargs)

    return replace


def main(out: str, inp: str) -> None:
    from numbadam import CheckpointError, load_checkpoint, save_checkpoint
    from numbadam.distributed import ShardedAdam, get_communicator

    comm = get_communicator("mpi")
    rank = comm.rank
    rec: Dict[str, Any] = {}

    # a. one file of a ShardedAdam over 2 ranks: refused on every rank
    variables = init_variables()
    opt = ShardedAdam(learning_rate=LR, comm=comm)
    train(opt, variables, range(K))
    target = os.path.join(out, "zero2.npz")
    try:
        save_checkpoint(target, opt, variables)
        rec["a_error"] = ""
    except CheckpointError as exc:
        rec["a_error"] = str(exc)
    comm.barrier()
    rec["a_exists"] = os.path.exists(target)

    # b. a save_sharded that fails on one rank keeps the previous checkpoint
    folder = os.path.join(out, "sharded")
    opt.save_sharded(folder)
    for k, w in enumerate(opt.get_weights()):
        rec[f"b_saved{k}"] = w
    rec["b_listing"] = "\n".join(sorted(os.listdir(folder)))
    train(opt, variables, range(K, K + 1))
    faults = [
        ("write", 1, "fdopen", _disk_full(os.fdopen)),
        ("manifest", 0, "replace", _replace_fails_at(2, os.replace)),
    ]
    for what, fault_rank, name, fake in faults:
        real = getattr(os, name)
        if rank == fault_rank:
            setattr(os, name, fake)
        try:
            opt.save_sharded(folder)
            rec[f"b_{what}_error"] = ""
        except Exception as exc:
            rec[f"b_{what}_error"] = f"{type(exc).__name__}: {exc}"
        finally:
            setattr(os, name, real)
        comm.barrier()
        rec[f"b_{what}_listing"] = "\n".join(sorted(os.listdir(folder)))
    fresh = ShardedAdam(learning_rate=LR, comm=comm)
    fresh.load_sharded(folder, var_list=init_variables())
    for k, w in enumerate(fresh.get_weights()):
        rec[f"b_loaded{k}"] = w

    # d. save_state_dir of a DistributedAdam from both ranks into one folder:
    # rank 1 is refused, rank 0 writes; both load it back
    from numbadam import load_state_dir, save_state_dir
    from numbadam.distributed import DistributedAdam

    dvars = init_variables()
    dp = DistributedAdam(learning_rate=LR, comm=comm)
    train(dp, dvars, range(K))
    folder = os.path.join(out, "statedir")
    try:
        rec["d_kind"] = save_state_dir(folder, dp, dvars).kind
        rec["d_error"] = ""
    except ValueError as exc:
        rec["d_kind"] = ""
        rec["d_error"] = str(exc)
    comm.barrier()
    back = [np.zeros_like(v) for v in dvars]
    again = DistributedAdam(learning_rate=LR, comm=comm)
    load_state_dir(folder, again, back)
    for k, (a, b) in enumerate(zip(back, dvars)):
        rec[f"d_same{k}"] = a.tobytes() == b.tobytes()
    rec["d_weights_same"] = all(
        x.tobytes() == y.tobytes()
        for x, y in zip(again.get_weights(), dp.get_weights())
    )

    # c. single-file checkpoints saved in one process, loaded at 2 ranks
    for name in ("dp", "zero"):
        ckpt = load_checkpoint(os.path.join(inp, f"{name}.npz"))
        rec[f"{name}_class"] = type(ckpt.optimizer).__name__
        rec[f"{name}_size"] = ckpt.optimizer.comm.size
        resumed = list(ckpt.variables.values())
        train(ckpt.optimizer, resumed, range(K, N))
        for k, v in enumerate(resumed):
            rec[f"{name}_var{k}"] = v
        for k, w in enumerate(ckpt.optimizer.get_weights()):
            rec[f"{name}_weight{k}"] = w

    rec = {k: np.asarray(v) for k, v in rec.items()}
    tmp = os.path.join(out, f"rank{rank}.tmp.npz")
    np.savez(tmp, **rec)
    os.replace(tmp, os.path.join(out, f"rank{rank}.npz"))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
