"""DistributedAdam's gradient accumulation with and without
``local_accumulation`` (a plain script, not an asv benchmark).

One float32 variable of ``--size`` elements, ``gradient_accumulation_steps =
--steps``: the time of a whole cycle (``--steps`` calls, the last one
applying) and its communication time (``last_comm_seconds`` added over the
calls), medians over ``--cycles`` cycles, two rounds alternating the default
(every call all-reduces) and ``local_accumulation=True`` (the applying call
only). Rank 0 prints the table.

Run under MPI from the repository root (needs ``pip install numbadam[mpi]``)::

    NUMBA_NUM_THREADS=1 .venv/bin/mpiexec -n 2 .venv/bin/python -m mpi4py \\
        asv_bench/local_accumulation_bench.py --size 4000000 --steps 4
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from numbadam.distributed import DistributedAdam, get_communicator


def _cycles(comm, local: bool, size: int, steps: int, cycles: int):
    g = np.full(size, 0.5, np.float32)
    w = np.zeros(size, np.float32)
    opt = DistributedAdam(
        1e-3, comm=comm, gradient_accumulation_steps=steps,
        local_accumulation=local,
    )  # fmt: skip
    for _ in range(steps):  # one cycle untimed (slots, compilation)
        opt.apply_gradients([(g, w)])
    times, comm_s = [], []
    for _ in range(cycles):
        comm.barrier()
        t0 = time.perf_counter()
        spent = 0.0
        for _ in range(steps):
            opt.apply_gradients([(g, w)])
            spent += opt.last_comm_seconds
        times.append(time.perf_counter() - t0)
        comm_s.append(spent)
    return float(np.median(times)), float(np.median(comm_s))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4_000_000)
    p.add_argument("--steps", type=int, default=4, help="gradient_accumulation_steps")
    p.add_argument("--cycles", type=int, default=15)
    args = p.parse_args()
    comm = get_communicator("mpi")
    res: dict = {False: [], True: []}
    for _round in range(2):
        for local in (False, True):
            res[local].append(_cycles(comm, local, args.size, args.steps, args.cycles))
    if comm.rank == 0:
        print(f"{comm.size} ranks, {args.size} float32 elements, "
              f"gradient_accumulation_steps={args.steps}, medians of "
              f"{args.cycles} cycles")  # fmt: skip
        for local, runs in res.items():
            cells = ", ".join(
                f"{t * 1e3:.1f} ms (comm {c * 1e3:.1f} ms)" for t, c in runs
            )
            print(f"  local_accumulation={local!s:5}: a cycle {cells}")


if __name__ == "__main__":
    main()
