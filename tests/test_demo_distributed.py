"""``numbadam demo --distributed``: the same learning curve at 1 and 2 ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from numbadam.cli import main

MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which(
    "mpiexec"
)


def test_one_process(capsys):
    assert main(["demo", "--distributed", "--quick", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ranks"] == 1 and out["mode"] == "sharded"
    losses = out["epoch_losses"]
    assert len(losses) == 2 and losses[1] < losses[0]


@pytest.mark.parametrize("mode", ["data", "sharded"])
def test_two_ranks_same_curve(mode, capsys):
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install numbadam[mpi])")
    if MPIEXEC is None:
        pytest.skip("mpiexec not found")
    assert main(["demo", "--distributed", mode, "--quick", "--json"]) == 0
    single = json.loads(capsys.readouterr().out)["epoch_losses"]
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py", "-m", "numbadam",
           "demo", "--distributed", mode, "--quick", "--json"]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=240, env=dict(os.environ)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout  # rank 0 alone prints
    out = json.loads(lines[0])
    assert out["ranks"] == 2
    assert out["epoch_losses"] == pytest.approx(single, rel=1e-6)
