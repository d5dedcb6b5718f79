"""``numbadam demo --distributed``: the recommender, the same curve at 1 and 2 ranks."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from numbadam.cli import main
from numbadam.cli.demo.recommender import RecommenderSettings, train_recommender

MPIEXEC = shutil.which(
    "mpiexec", path=str(Path(sys.executable).parent)
) or shutil.which("mpiexec")
KEYS = {"mode", "ranks", "epoch_train_loss", "epoch_rmse", "baseline_rmse"}


def _one_process(mode, capsys):
    assert main(["demo", "--distributed", mode, "--quick", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == KEYS and out["ranks"] == 1 and out["mode"] == mode
    return out


def test_one_process_learns(capsys):
    assert main(["demo", "--distributed", "--quick", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert set(out) == KEYS and out["ranks"] == 1 and out["mode"] == "sharded"
    epochs = RecommenderSettings.quick().epochs
    loss, rmse = out["epoch_train_loss"], out["epoch_rmse"]
    assert len(loss) == len(rmse) == epochs
    assert loss[-1] < loss[0] and rmse[-1] < rmse[0]
    assert rmse[-1] < 0.8 * out["baseline_rmse"]


def test_one_process_data_mode_is_the_single_process_demo(capsys):
    # At one rank nothing is rescaled or exchanged: train_recommender's curve.
    out = _one_process("data", capsys)
    ref = train_recommender(RecommenderSettings.quick())["history"]
    assert out["epoch_train_loss"] == [row["train_loss"] for row in ref]
    assert out["epoch_rmse"] == [row["test_rmse"] for row in ref]


def test_distributed_rejects_single_process_options(capsys):
    assert main(["demo", "--distributed", "--quick", "--only", "mlp"]) == 2
    assert "--only mlp" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["data", "sharded"])
def test_two_ranks_same_curve(mode, capsys):
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install numbadam[mpi])")
    if MPIEXEC is None:
        pytest.skip("mpiexec not found")
    single = _one_process(mode, capsys)
    cmd = [MPIEXEC, "-n", "2", sys.executable, "-m", "mpi4py", "-m", "numbadam",
           "demo", "--distributed", mode, "--quick", "--json"]  # fmt: skip
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=120, env=dict(os.environ)
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert len(lines) == 1, proc.stdout  # rank 0 alone prints
    out = json.loads(lines[0])
    assert set(out) == KEYS and out["ranks"] == 2 and out["mode"] == mode
    # float32 sums in another order: equal up to rounding
    for key in ("epoch_train_loss", "epoch_rmse"):
        assert out[key] == pytest.approx(single[key], rel=1e-5)
    assert out["baseline_rmse"] == single["baseline_rmse"]
