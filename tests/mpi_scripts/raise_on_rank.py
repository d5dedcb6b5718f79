"""Rank program: rank 1 raises in its second step while the others go on.

With ``python -m mpi4py`` the exception aborts the whole job (MPI_Abort), so
the ranks blocked in the step's Allreduce do not hang.
Usage: ``mpiexec -n 2 python -m mpi4py tests/mpi_scripts/raise_on_rank.py OUT``
"""

import os
import sys

import numpy as np

from numbadam.distributed import DistributedAdam, get_communicator

comm = get_communicator("mpi")
w = np.zeros(1000, np.float32)
opt = DistributedAdam(comm=comm)
for step in range(1000):
    if step == 1 and comm.rank == 1:
        raise RuntimeError("rank 1 fails on purpose")
    opt.apply_gradients([(np.ones_like(w), w)])
# Never reached by any rank when the abort works.
np.savez(os.path.join(sys.argv[1], f"finished{comm.rank}.npz"), w=w)
