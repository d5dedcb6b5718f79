"""Tests of ``numbadam demo`` in its tiny (--quick) configuration."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from numbadam import cli
from numbadam.cli.demo import MLPSettings, RecommenderSettings, run_demo
from numbadam.cli.demo.mlp import MLP, load_digits_split
from numbadam.cli.demo.recommender import MatrixFactorization, make_ratings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def quick_json():
    """``python -m numbadam demo --quick --json`` in a fresh process, as CI runs it."""
    env = dict(
        os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "numbadam", "demo", "--quick", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)  # stdout holds the JSON and nothing else


def test_quick_recommender_learns(quick_json):
    rec = quick_json["recommender"]
    settings = RecommenderSettings.quick()
    assert rec["settings"]["users"] == settings.users
    history = rec["history"]
    assert [r["epoch"] for r in history] == list(range(1, settings.epochs + 1))
    # Held-out RMSE clearly below always predicting the global mean.
    assert rec["final"]["test_rmse"] < 0.85 * rec["baseline_rmse"]
    losses = [r["train_loss"] for r in history]
    assert all(b < a for a, b in zip(losses, losses[1:]))
    for row in history:
        assert row["steps_per_s"] > 0
        assert row["updates_per_s"] == pytest.approx(
            row["steps_per_s"] * rec["n_parameters"]
        )
    assert rec["n_parameters"] == (2000 + 500) * (16 + 1) + 1


def test_quick_mlp_learns(quick_json):
    pytest.importorskip("sklearn")
    mlp = quick_json["mlp"]
    assert "skipped" not in mlp
    # Chance is 10%; a quick run is well above 80%.
    assert mlp["final"]["test_accuracy"] > 0.8
    assert len(mlp["history"]) == MLPSettings.quick().epochs


def test_json_is_serialisable_and_has_summary_fields(quick_json):
    assert quick_json["threads"] >= 1
    assert set(quick_json) >= {
        "recommender",
        "mlp",
        "plot",
        "total_seconds",
        "numbadam_version",
    }
    assert quick_json["plot"] is None


def test_default_sizes_have_millions_of_parameters():
    s = RecommenderSettings()
    assert (s.users + s.items) * s.dim >= 2_000_000


def test_mlp_reaches_95_percent_on_digits():
    pytest.importorskip("sklearn")
    out = run_demo(mlp=MLPSettings(epochs=12))
    assert out["mlp"]["final"]["test_accuracy"] >= 0.95
    assert "skipped" in out["recommender"]


def test_text_output_and_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    plot = tmp_path / "demo-output" / "demo.png"
    code = cli.main(
        [
            "demo",
            "--quick",
            "--rec-epochs",
            "2",
            "--mlp-epochs",
            "2",
            "--plot",
            str(plot),
        ]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for text in (
        "held-out RMSE",
        "baseline",
        "steps/s",
        "param updates/s",
        "Summary",
        "recommender",
        str(plot),
    ):
        assert text in out
    assert "\r" not in err  # no progress bars when stderr is not a terminal


def test_missing_optional_packages_are_skipped_with_a_hint(
    capsys, tmp_path, monkeypatch
):
    for name in (
        "sklearn",
        "sklearn.datasets",
        "matplotlib",
        "matplotlib.backends.backend_agg",
        "matplotlib.figure",
        "tqdm",
        "tqdm.auto",
    ):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import name` fail
    code = cli.main(
        ["demo", "--quick", "--rec-epochs", "1", "--plot", str(tmp_path / "p.png")]
    )
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "pip install 'numbadam[examples]'" in out
    assert "scikit-learn is not installed" in out
    assert "matplotlib is not installed" in out
    assert not (tmp_path / "p.png").exists()
    code = cli.main(["demo", "--quick", "--json", "--only", "mlp"])
    out, err = capsys.readouterr()
    assert code == 0
    assert json.loads(out)["mlp"] == {"skipped": "scikit-learn is not installed"}
    assert "scikit-learn is not installed" in err


@pytest.mark.parametrize("only", ["recommender", "mlp"])
def test_stop_and_resume_matches_an_uninterrupted_run(capsys, tmp_path, only):
    if only == "mlp":
        pytest.importorskip("sklearn")
    common = ["demo", "--quick", "--json", "--only", only, "--seed", "3"]
    common += ["--ratings", "20000"]  # small and fast: the point is equality
    epochs = "--rec-epochs" if only == "recommender" else "--mlp-epochs"

    def run(*extra):
        code = cli.main(common + list(extra))
        out, err = capsys.readouterr()
        assert code == 0, err
        return json.loads(out)[only]

    whole = run(epochs, "4")
    ckpt = str(tmp_path / "ckpt")
    first = run(epochs, "2", "--checkpoint-dir", ckpt)
    assert os.listdir(ckpt) == [f"{only}.npz"]
    resumed = run(epochs, "4", "--checkpoint-dir", ckpt, "--resume")
    assert first["resumed_from_epoch"] == 0 and resumed["resumed_from_epoch"] == 2
    metric = "test_rmse" if only == "recommender" else "test_accuracy"
    for key in ("train_loss", metric):
        assert [r[key] for r in resumed["history"]] == [
            r[key] for r in whole["history"]
        ]


def test_model_gradients_match_finite_differences():
    data = make_ratings(users=20, items=10, ratings=200, seed=2)
    model = MatrixFactorization(20, 10, 4, data.global_mean, l2=0.3, seed=1)
    for v in model.variables.values():
        v[...] = v.astype(np.float64)  # keep float32 storage, exercise the math
    u, i, r = data.train_users[:16], data.train_items[:16], data.train_ratings[:16]

    def objective():
        loss, _ = model.loss_and_gradients(u, i, r)
        v = model.variables
        reg = np.sum(v["user_embedding"][u] ** 2) + np.sum(v["item_embedding"][i] ** 2)
        return 0.5 * loss + 0.5 * model.l2 * reg / len(r)

    _, grads = model.loss_and_gradients(u, i, r)
    table = model.variables["item_embedding"]
    dense = np.zeros(table.shape)
    np.add.at(dense, grads[1].indices, grads[1].values)
    row, col = int(i[0]), 2
    old = float(table[row, col])
    eps = 1e-2
    table[row, col] = old + eps
    up = objective()
    table[row, col] = old - eps
    down = objective()
    table[row, col] = old
    assert dense[row, col] == pytest.approx((up - down) / (2 * eps), rel=0.05, abs=1e-4)


def test_settings_know_their_models_variable_shapes():
    # prepare_demo checks a checkpoint's variables against these before the
    # model exists; they must be the shapes the models make.
    s = RecommenderSettings.quick(users=30, items=7, dim=5)
    model = MatrixFactorization(s.users, s.items, s.dim, 3.0)
    got = {k: v.shape for k, v in model.variables.items()}
    assert got == s.variable_shapes()
    assert {v.dtype for v in model.variables.values()} == {np.dtype(np.float32)}
    m = MLPSettings(hidden=(9, 4))
    net = MLP(m.sizes())
    assert {k: v.shape for k, v in net.variables.items()} == m.variable_shapes()
    pytest.importorskip("sklearn")
    x_train, *_ = load_digits_split()
    assert m.sizes()[0] == x_train.shape[1]
