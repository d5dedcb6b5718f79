"""Rank program: run every distributed case, write this rank's results.

Usage: ``mpiexec -n N python -m mpi4py tests/mpi_scripts/run_cases.py OUT [LOAD]``

Writes ``OUT/rank{r}.npz`` (keys ``case__name``) and, for the checkpoint cases,
checkpoints under ``OUT/<case>/`` saved after ``SAVE_AT`` steps. With ``LOAD``
(another run's OUT, at another size) it also resumes those checkpoints here and
records the resumed results under ``<case>_resumed__*``.
"""

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import distributed_cases as cases  # noqa: E402

from numbadam.cli.demo.embedding import train_embedding_distributed  # noqa: E402
from numbadam.distributed import get_communicator  # noqa: E402

out_dir = sys.argv[1]
load_dir = sys.argv[2] if len(sys.argv) > 2 else None
comm = get_communicator("mpi")
rec = {"meta__size": np.array(comm.size), "meta__rank": np.array(comm.rank)}

for name in cases.CASES:
    if name in cases.CKPT_CASES:
        opt, variables = cases.run(name, comm, range(cases.SAVE_AT))
        ck = os.path.join(out_dir, name)
        opt.save_sharded(os.path.join(ck, "opt"))
        if hasattr(variables[-1], "save"):
            variables[-1].save(os.path.join(ck, "table"))
        full = cases.gather_variables(variables)
        if comm.rank == 0:
            np.savez(os.path.join(ck, "vars.npz"), *full)
        cases.run(name, comm, range(cases.SAVE_AT, cases.STEPS), opt, variables)
    else:
        opt, variables = cases.run(name, comm, workdir=out_dir)
    for k, v in cases.results(name, opt, variables).items():
        rec[f"{name}__{k}"] = v

for mode in ("data", "sharded"):
    rec[f"train_{mode}__history"] = np.array(
        train_embedding_distributed(mode, comm=comm, verbose=False, **cases.TRAIN)
    )

if load_dir is not None:
    for name in cases.CKPT_CASES:
        ck = os.path.join(load_dir, name)
        opt, variables = cases.make_distributed(name, comm)
        with np.load(os.path.join(ck, "vars.npz")) as f:
            saved = [f[f"arr_{k}"] for k in range(len(f.files))]
        for v, s in zip(variables, saved):
            if hasattr(v, "load"):
                v.load(os.path.join(ck, "table"))
            else:
                v[...] = s
        opt.load_sharded(os.path.join(ck, "opt"), var_list=variables)
        rec[f"{name}_resumed__iterations_at_load"] = np.array(int(opt.iterations))
        cases.run(name, comm, range(cases.SAVE_AT, cases.STEPS), opt, variables)
        for k, v in cases.results(name, opt, variables).items():
            rec[f"{name}_resumed__{k}"] = v

tmp = os.path.join(out_dir, f"rank{comm.rank}.tmp.npz")
np.savez(tmp, **rec)
os.replace(tmp, os.path.join(out_dir, f"rank{comm.rank}.npz"))
