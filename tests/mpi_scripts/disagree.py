"""Rank program: the ranks disagree on a step's pairs (#12: no silent mix, no hang).

Usage: ``mpiexec -n 2 python -m mpi4py tests/mpi_scripts/disagree.py MODE OPT OUT``

MODE ``shape`` (same size, other shape), ``kind`` (dense on rank 0,
IndexedSlices on rank 1) or ``none`` (a None gradient on one rank only): every
rank must raise the same ValueError before anything changes, then the
optimizer must still work; each rank writes ``OUT/rank{r}.txt`` with the
message. MODE ``steps``: rank 1 stops after one step and the other ranks'
``timeout`` must abort the job. OPT is ``dp`` (DistributedAdam) or ``zero``
(ShardedAdam).
"""

import os
import sys

import numpy as np

from numbadam import IndexedSlices
from numbadam.distributed import DistributedAdam, ShardedAdam, get_communicator

mode, kind, out = sys.argv[1], sys.argv[2], sys.argv[3]
comm = get_communicator("mpi")
cls = DistributedAdam if kind == "dp" else ShardedAdam
opt = cls(learning_rate=0.1, comm=comm, timeout=3.0 if mode == "steps" else None)
r = comm.rank
a = np.zeros((2, 3) if mode != "shape" or r == 0 else (3, 2), np.float32)
b = np.zeros((4, 3), np.float32)
ga, gb = np.ones_like(a), np.ones_like(b)
if mode == "kind" and r == 1:
    gb = IndexedSlices(np.ones((1, 3), np.float32), np.array([2]), b.shape)
if mode == "none":
    ga, gb = (None, gb) if r == 0 else (ga, None)
if mode == "steps":
    opt.apply_gradients([(ga, a), (gb, b)])
    if r == 1:
        sys.exit(0)  # (a clean exit: the others wait in their next step)
    opt.apply_gradients([(ga, a), (gb, b)])
    raise SystemExit("not reached: the deadline aborts the job")
try:
    opt.apply_gradients([(ga, a), (gb, b)])
    msg = "no error"
except ValueError as exc:
    msg = f"ValueError: {exc}"
unchanged = not a.any() and not b.any() and int(opt.iterations) == 0
# the optimizer still works once the ranks agree
a2, b2 = np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32)
opt.apply_gradients([(np.ones_like(a2), a2), (np.ones_like(b2), b2)])
with open(os.path.join(out, f"rank{r}.txt"), "w") as f:
    f.write(f"{unchanged}\n{int(opt.iterations)}\n{float(a2[0, 0])!r}\n{msg}\n")
