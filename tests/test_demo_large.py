"""``numbadam demo --large``: sizing and refusals, the data, a quick run."""

from __future__ import annotations

import json
import os
from collections import namedtuple

import numpy as np
import pytest

from numbadam.cli import main
from numbadam.cli.demo import DemoError
from numbadam.cli.demo import large as L

Usage = namedtuple("Usage", "total used free")


def test_quick_settings_are_small():
    s = L.LargeSettings.quick()
    assert s.rows * (s.table_bytes_per_row + s.state_bytes_per_row) < 64 << 20


def test_state_bytes_per_row():
    row = L.LargeSettings(dim=64)
    elem = L.LargeSettings(dim=64, second_moment="element")
    # (D + 1) / 2D of the element-wise state
    assert row.state_bytes_per_row * 128 == elem.state_bytes_per_row * 65


def test_default_size_exceeds_memory(tmp_path, monkeypatch):
    monkeypatch.setattr(L, "physical_memory", lambda: 24 << 30)
    monkeypatch.setattr(L.shutil, "disk_usage", lambda p: Usage(0, 0, 1 << 50))
    plan = L.plan_large(str(tmp_path / "big"), L.LargeSettings())
    assert plan.live_bytes > 1.1 * (24 << 30) - 1e6 * 600
    assert plan.live_bytes > 24 << 30
    assert not os.path.exists(tmp_path / "big")  # planning writes nothing


def test_refuses_too_little_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(L.shutil, "disk_usage", lambda p: Usage(0, 0, 10 << 30))
    with pytest.raises(DemoError, match="GiB free.*smaller"):
        L.plan_large(str(tmp_path / "x"), L.LargeSettings(rows=40_000_000))
    assert not os.path.exists(tmp_path / "x")


def test_refuses_a_non_empty_folder_or_a_file(tmp_path):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    with pytest.raises(DemoError, match="not empty"):
        L.plan_large(str(tmp_path / "full"), L.LargeSettings.quick())
    (tmp_path / "f").write_text("a file")
    with pytest.raises(DemoError, match="not a folder"):
        L.plan_large(str(tmp_path / "f"), L.LargeSettings.quick())
    with pytest.raises(DemoError, match="parent"):
        L.plan_large(str(tmp_path / "no" / "such"), L.LargeSettings.quick())
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_zipf_ids_in_range_and_skewed():
    rng = np.random.default_rng(0)
    ids = L.zipf_ids(rng, 200_000, 5000, 1.1)
    assert ids.dtype == np.int64 and ids.min() >= 0 and ids.max() < 5000
    counts = np.sort(np.bincount(ids, minlength=5000))[::-1]
    # rank-frequency of a Zipf law: rank 1 about 2**1.1 times rank 2
    assert 1.6 < counts[0] / counts[1] < 2.8
    assert counts[:50].sum() > 0.4 * ids.size  # heavy head


def test_zipf_permutation_is_a_bijection():
    rows = 9973 * 2
    rank = np.arange(rows, dtype=np.int64)
    assert np.unique((rank * L._SPREAD) % rows).size == rows


def test_planted_factors_are_deterministic_and_bounded():
    ids = np.array([0, 1, 5, 1 << 40])
    a, b = L.planted(ids, 3), L.planted(ids, 3)
    assert np.array_equal(a, b) and a.shape == (4, L._LATENT)
    assert np.all((a >= -1) & (a < 1))
    assert not np.array_equal(L.planted(ids, 4), a)


def test_cli_refuses_large_with_other_jobs(tmp_path, capsys):
    assert main(["demo", "--large", str(tmp_path / "d"), "--only", "mlp"]) == 2
    assert "--large runs on its own" in capsys.readouterr().err
    assert main(["demo", "--rows", "10"]) == 2
    assert "need --large" in capsys.readouterr().err


def test_quick_run_learns_and_checkpoints(tmp_path, capsys):
    folder = tmp_path / "large"
    rc = main(["demo", "--large", str(folder), "--quick", "--json"])
    assert rc == 0
    out = json.loads(capsys.readouterr().out)
    assert out["last_loss"] < out["first_loss"]
    kinds = [s["kind"] for s in out["saves"]]
    assert kinds[0] == "full" and "delta" in kinds[1:]
    full = out["saves"][0]["bytes"]
    assert all(s["bytes"] < full for s in out["saves"][1:])
    assert (folder / "table.npy").is_file()
    assert (folder / "checkpoint" / "manifest.json").is_file()
