"""Distributed Adam benchmark (a plain script, not an asv benchmark).

Measures, on a 1e7-element float32 model (four variables):

* time per step of :class:`numbadam.Adam` (1 process) and of
  :class:`~numbadam.distributed.DistributedAdam` and
  :class:`~numbadam.distributed.ShardedAdam` at 1 and 2 ranks;
* their communication time per step next to the bare collectives on a buffer of
  the same size, measured in the same run (``Allreduce`` for DistributedAdam;
  ``Reduce_scatter`` + ``Allgatherv`` for ShardedAdam);
* ShardedAdam's optimizer state per rank at 1, 2 and 4 ranks.

Run from the repository root (needs ``pip install numbadam[mpi]``)::

    .venv/bin/python asv_bench/distributed_bench.py            # driver: all runs
    .venv/bin/python asv_bench/distributed_bench.py --steps 20 --size 10000000

The driver launches ``mpiexec -n N python -m mpi4py asv_bench/distributed_bench.py
--worker ...`` for each N and prints one table. A worker can also be launched by
hand, e.g. on a cluster: ``mpiexec -n 8 python -m mpi4py
asv_bench/distributed_bench.py --worker --json out.json``.

Every rank process gets ``cores // ranks`` Numba threads (``NUMBA_NUM_THREADS``),
so 1 rank and 2 ranks use the same cores; timings are medians over steps of the
slowest rank's time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np


def _shapes(size):
    # A small "model": two matrices and two bias vectors, `size` elements in all.
    a = int(size * 0.5) // 2000
    b = 2000
    rest = size - a * b
    c = rest // 2001
    return [(a, b), (b,), (c, 2000), (size - a * b - b - c * 2000,)]


def _median_max(per_rank):
    # per_rank: list over ranks of lists over steps -> median over steps of the max
    return float(np.median(np.max(np.array(per_rank), axis=0)))


def worker(args):
    import numbadam
    from numbadam.distributed import DistributedAdam, ShardedAdam, get_communicator

    comm = get_communicator("mpi")
    rng = np.random.default_rng(0)
    shapes = _shapes(args.size)
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = [rng.standard_normal(s).astype(np.float32) * 1e-3 for s in shapes]
    total = sum(p.size for p in params)
    out = {
        "ranks": comm.size,
        "elements": total,
        "shapes": shapes,
        "threads": int(os.environ.get("NUMBA_NUM_THREADS", "0") or 0),
    }

    def timed(opt, steps):
        pairs = list(zip(grads, params))
        for _ in range(2):  # warm-up: compile/load kernels, create slots
            opt.apply_gradients(pairs)
        step_t, comm_t = [], []
        for _ in range(steps):
            comm.barrier()
            t0 = time.perf_counter()
            opt.apply_gradients(pairs)
            step_t.append(time.perf_counter() - t0)
            comm_t.append(getattr(opt, "last_comm_seconds", 0.0))
        return comm.allgather_obj(step_t), comm.allgather_obj(comm_t)

    def bare(fn, steps):
        fn()
        ts = []
        for _ in range(steps):
            comm.barrier()
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return _median_max(comm.allgather_obj(ts))

    if not args.memory_only:
        if comm.size == 1:
            s, _ = timed(numbadam.Adam(), args.steps)
            out["adam_step_s"] = _median_max(s)
        s, c = timed(DistributedAdam(comm=comm), args.steps)
        out["dp_step_s"], out["dp_comm_s"] = _median_max(s), _median_max(c)
        buf = np.ones(total, np.float32)
        out["bare_allreduce_s"] = bare(lambda: comm.allreduce_sum_(buf), args.steps)
        s, c = timed(ShardedAdam(comm=comm), args.steps)
        out["zero_step_s"], out["zero_comm_s"] = _median_max(s), _median_max(c)
        counts = np.diff(np.linspace(0, total, comm.size + 1).astype(np.int64))
        piece = np.empty(int(counts[comm.rank]), np.float32)

        def rs_ag():
            # what ShardedAdam does for a large variable: reduce-scatter into a
            # reused buffer, then all-gather in place
            comm.reduce_scatter_sum(buf, counts, out=piece)
            comm.allgatherv(None, counts, out=buf)

        out["bare_rs_ag_s"] = bare(rs_ag, args.steps)
    # state memory of ShardedAdam (m and v slices) on every rank
    opt = ShardedAdam(comm=comm)
    opt.build(params)
    out["zero_state_bytes_per_rank"] = comm.allgather_obj(opt.state_nbytes())
    unsharded = numbadam.Adam()
    unsharded.build(params)
    out["adam_state_bytes"] = int(sum(w.nbytes for w in unsharded.weights))
    if comm.rank == 0 and args.json:
        with open(args.json, "w") as f:
            json.dump(out, f)


def driver(args):
    here = os.path.dirname(sys.executable)
    mpiexec = shutil.which("mpiexec", path=here + os.pathsep + os.environ["PATH"])
    if mpiexec is None:
        sys.exit("mpiexec not found: pip install numbadam[mpi]")
    cores = os.cpu_count() or 1
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n, memory_only in ((1, False), (2, False), (4, True)):
            path = os.path.join(tmp, f"n{n}.json")
            env = dict(os.environ, NUMBA_NUM_THREADS=str(max(1, cores // n)))
            cmd = [
                mpiexec,
                "-n",
                str(n),
                sys.executable,
                "-m",
                "mpi4py",
                os.path.abspath(__file__),
                "--worker",
                "--json",
                path,
                "--steps",
                str(args.steps),
                "--size",
                str(args.size),
            ]
            if memory_only:
                cmd.append("--memory-only")
            print(
                f"$ NUMBA_NUM_THREADS={env['NUMBA_NUM_THREADS']}",
                " ".join(cmd),
                flush=True,
            )
            subprocess.run(cmd, check=True, env=env, timeout=args.timeout)
            with open(path) as f:
                results[n] = json.load(f)
    if args.save:
        with open(args.save, "w") as f:
            json.dump(results, f, indent=1)
    ms = lambda s: f"{1e3 * s:8.1f} ms"  # noqa: E731
    r1, r2 = results[1], results[2]
    print(
        f"\nmodel: {r1['elements']:,} float32 elements in {len(r1['shapes'])} "
        f"variables; {cores} cores; medians of {args.steps} steps\n"
    )
    print("| | 1 rank | 2 ranks |")
    print("|---|---|---|")
    print(f"| numbadam.Adam step | {ms(r1['adam_step_s'])} | |")
    print(f"| DistributedAdam step | {ms(r1['dp_step_s'])} | {ms(r2['dp_step_s'])} |")
    print(
        f"| - its communication (pack + Allreduce) | {ms(r1['dp_comm_s'])} | "
        f"{ms(r2['dp_comm_s'])} |"
    )
    print(
        f"| - bare Allreduce, same buffer | {ms(r1['bare_allreduce_s'])} | "
        f"{ms(r2['bare_allreduce_s'])} |"
    )
    print(f"| ShardedAdam step | {ms(r1['zero_step_s'])} | {ms(r2['zero_step_s'])} |")
    print(
        f"| - its communication (Reduce_scatter + Allgatherv) | "
        f"{ms(r1['zero_comm_s'])} | {ms(r2['zero_comm_s'])} |"
    )
    print(
        f"| - bare Reduce_scatter + Allgatherv, same buffer | "
        f"{ms(r1['bare_rs_ag_s'])} | {ms(r2['bare_rs_ag_s'])} |"
    )
    full = r1["adam_state_bytes"]
    print(f"\nShardedAdam state per rank (unsharded Adam: {full / 2**20:.2f} MiB):\n")
    print("| ranks | per rank (MiB) | fraction of unsharded |")
    print("|---|---|---|")
    for n in (1, 2, 4):
        per = results[n]["zero_state_bytes_per_rank"]
        print(
            f"| {n} | {', '.join(f'{b / 2**20:.2f}' for b in per)} | "
            f"{max(per) / full:.4f} (1/{n} = {1 / n:.4f}) |"
        )


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help="run as an MPI rank")
    p.add_argument("--memory-only", action="store_true")
    p.add_argument("--json", help="worker: where rank 0 writes its results")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--size", type=int, default=10_000_000)
    p.add_argument("--timeout", type=int, default=600)
    p.add_argument("--save", help="driver: also write all results to this JSON file")
    args = p.parse_args()
    if args.worker:
        worker(args)
    else:
        driver(args)


if __name__ == "__main__":
    main()
