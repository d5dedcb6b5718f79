"""Tests of the ``numbadam`` command line: help, bad arguments, exit statuses."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

from numbadam import cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_main(capsys, *argv):
    """``cli.main(argv)`` in-process: (exit status, stdout, stderr)."""
    try:
        code = cli.main(list(argv))
    except SystemExit as exc:  # argparse's --help / errors
        code = exc.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *fragments: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "error" in lines[0] and "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_python_dash_m_help_and_exit_status():
    env = dict(
        os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")
    )
    ok = subprocess.run(
        [sys.executable, "-m", "numbadam", "--help"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "demo" in ok.stdout and "COMMAND --help" in ok.stdout
    bad = subprocess.run(
        [sys.executable, "-m", "numbadam", "demo", "--bogus"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert bad.returncode == 2
    assert bad.stdout == ""
    assert_one_line_error(bad.stderr, "unrecognized arguments: --bogus")


def test_console_script_is_declared():
    scripts = {
        ep.name: ep.value for ep in metadata.entry_points(group="console_scripts")
    }
    assert scripts.get("numbadam") == "numbadam.cli:main"


def _imported_modules(path: Path, package: str):
    """Absolute names of the modules an ``import`` in ``path`` names."""
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)


def test_imported_modules_resolves_relative_imports(tmp_path):
    src = tmp_path / "m.py"
    src.write_text("from . import cli\nfrom ..x import y\nimport numbadam.cli.bench\n")
    names = set(_imported_modules(src, "numbadam.distributed"))
    assert {"numbadam.distributed.cli", "numbadam.x.y", "numbadam.cli.bench"} <= names


def test_nothing_below_the_applications_imports_them():
    # STYLE.md: numbadam/cli is on top; the library (numbadam/*.py, kernels,
    # distributed) never imports it. numbadam/__main__.py is the one entry point
    # above both (``python -m numbadam``), and nothing imports it.
    pkg = Path(ROOT) / "numbadam"
    offenders, checked = [], 0
    for path in sorted(pkg.rglob("*.py")):
        rel = path.relative_to(pkg)
        if rel.parts[0] == "cli" or rel == Path("__main__.py"):
            continue
        checked += 1
        package = ".".join(("numbadam",) + rel.parts[:-1])
        for name in _imported_modules(path, package):
            if name == "numbadam.cli" or name.startswith("numbadam.cli."):
                offenders.append(f"{rel}: {name}")
    assert not offenders
    assert checked >= 10  # the library: its modules, kernels and distributed
    import numbadam.distributed

    assert "train_embedding_distributed" not in numbadam.distributed.__all__


def test_top_level_help_and_version(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    assert "demo" in out and "usage: numbadam" in out
    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.startswith("numbadam ")


def test_no_subcommand_prints_help(capsys):
    code, out, err = run_main(capsys)
    assert code == 2 and out == ""
    assert "usage: numbadam" in err


@pytest.mark.parametrize("name", sorted(cli.SUBCOMMANDS))
def test_help_on_each_subcommand(capsys, name):
    code, out, err = run_main(capsys, name, "--help")
    assert code == 0 and err == ""
    assert out.startswith(f"usage: numbadam {name}")


def test_demo_help_lists_the_options(capsys):
    _, out, _ = run_main(capsys, "demo", "--help")
    for flag in (
        "--quick",
        "--json",
        "--plot",
        "--seed",
        "--checkpoint-dir",
        "--resume",
        "--users",
        "--items",
        "--ratings",
        "--dim",
        "--rec-epochs",
        "--mlp-epochs",
        "--only",
        "--no-progress",
        "--threads",
    ):
        assert flag in out


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["demo", "--bogus"], "unrecognized arguments: --bogus"),
        (["nosuchcommand"], "invalid choice: 'nosuchcommand'"),
        (["demo", "--users", "0"], "argument --users: 0 is below the minimum, 1"),
        (["demo", "--users", "many"], "argument --users: 'many' is not an integer"),
        (["demo", "--only", "both"], "argument --only: invalid choice"),
        (["demo", "--seed"], "argument --seed: expected one argument"),
        (["demo", "--threads", "0"], "argument --threads: 0 is below the minimum, 1"),
        (["demo", "--threads", "100000"], "--threads: 100000 threads requested"),
    ],
)
def test_bad_arguments_give_one_line_and_status_2(capsys, argv, fragment):
    code, out, err = run_main(capsys, *argv)
    assert code == 2 and out == ""
    assert_one_line_error(err, fragment)


def test_resume_without_checkpoint_dir(capsys):
    code, out, err = run_main(capsys, "demo", "--quick", "--resume")
    assert code == 2 and out == ""
    assert_one_line_error(err, "--resume needs --checkpoint-dir")


def test_resume_from_missing_checkpoint_dir(capsys, tmp_path):
    missing = tmp_path / "no-such-dir"
    code, out, err = run_main(
        capsys,
        "demo",
        "--quick",
        "--json",
        "--checkpoint-dir",
        str(missing),
        "--resume",
    )
    assert code == 2 and out == ""
    assert_one_line_error(err, str(missing), "does not exist", "nothing to resume")
    assert not missing.exists()


def test_corrupt_checkpoint_is_a_one_line_error(capsys, tmp_path):
    (tmp_path / "recommender.npz").write_bytes(b"PK\x03\x04 truncated")
    code, out, err = run_main(
        capsys,
        "demo",
        "--quick",
        "--json",
        "--only",
        "recommender",
        "--checkpoint-dir",
        str(tmp_path),
        "--resume",
    )
    assert code == 2 and out == ""
    assert_one_line_error(
        err, str(tmp_path / "recommender.npz"), "truncated or corrupt"
    )


def test_foreign_npz_in_checkpoint_dir(capsys, tmp_path):
    np.savez(tmp_path / "recommender.npz", a=np.ones(2))
    code, _, err = run_main(
        capsys,
        "demo",
        "--quick",
        "--only",
        "recommender",
        "--checkpoint-dir",
        str(tmp_path),
        "--resume",
    )
    assert code == 2
    assert_one_line_error(err, "not a numbadam checkpoint")


def test_checkpoint_written_with_other_settings(capsys, tmp_path):
    args = [
        "demo",
        "--quick",
        "--json",
        "--only",
        "recommender",
        "--rec-epochs",
        "1",
        "--ratings",
        "5000",
        "--checkpoint-dir",
        str(tmp_path),
    ]
    code, _, err = run_main(capsys, *args, "--users", "300")
    assert code == 0, err
    code, out, err = run_main(capsys, *args, "--users", "400", "--resume")
    assert code == 2 and out == ""
    assert_one_line_error(err, "other settings", "users=300 (now 400)")


def test_threads_flag_is_restored_after_the_run(capsys):
    import numbadam

    before = numbadam.get_num_threads()
    code, out, err = run_main(
        capsys,
        "demo",
        "--quick",
        "--json",
        "--only",
        "recommender",
        "--rec-epochs",
        "1",
        "--ratings",
        "2000",
        "--threads",
        "1",
    )
    assert code == 0, err
    assert json.loads(out)["threads"] == 1
    assert numbadam.get_num_threads() == before


# ---------------------------------------------------------------------------
# Paths and checkpoints are checked before anything trains (issue #12)
# ---------------------------------------------------------------------------

SMALL = ["--rec-epochs", "1", "--ratings", "4000", "--users", "300", "--items", "80"]


def _demo(capsys, *argv):
    return run_main(capsys, "demo", "--quick", "--only", "recommender", *SMALL, *argv)


@pytest.mark.parametrize("where", ["folder", "folder/", "file-is-a-folder.png"])
def test_plot_to_a_folder_is_refused_before_training(capsys, tmp_path, where):
    (tmp_path / "folder").mkdir()
    (tmp_path / "file-is-a-folder.png").mkdir()
    target = str(tmp_path / where) + (os.sep if where.endswith("/") else "")
    code, out, err = _demo(capsys, "--plot", target)
    assert code == 2 and out == ""  # not even the banner: nothing ran
    assert_one_line_error(err, "plot file", "folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "file-is-a-folder.png",
        "folder",
    ]
    assert list((tmp_path / "folder").iterdir()) == []


def test_plot_with_an_unknown_extension_is_refused_before_training(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = _demo(capsys, "--plot", str(tmp_path / "curves.xyz"))
    assert code == 2 and out == ""
    assert_one_line_error(err, "unknown image extension '.xyz'", ".png", ".svg")
    assert list(tmp_path.iterdir()) == []


def test_plot_over_a_symlink_is_refused(capsys, tmp_path):
    (tmp_path / "real.png").write_bytes(b"keep")
    (tmp_path / "link.png").symlink_to(tmp_path / "real.png")
    code, out, err = _demo(capsys, "--plot", str(tmp_path / "link.png"))
    assert code == 2 and out == ""
    assert_one_line_error(err, "not a regular file")
    assert (tmp_path / "real.png").read_bytes() == b"keep"


def test_plot_without_extension_reports_the_file_written(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    code, out, err = _demo(capsys, "--json", "--plot", str(tmp_path / "curves"))
    assert code == 0, err
    written = tmp_path / "curves.png"
    assert json.loads(out)["plot"] == str(written)
    assert written.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.png"]
    code, out, err = _demo(capsys, "--plot", str(tmp_path / "curves"))
    assert code == 0, err
    assert f"curves: {written}\n" in out


def test_plot_in_another_format_and_over_an_old_plot(capsys, tmp_path):
    pytest.importorskip("matplotlib")
    old = tmp_path / "curves.svg"
    old.write_text("old plot")
    code, out, err = _demo(capsys, "--json", "--plot", str(old))
    assert code == 0, err
    assert json.loads(out)["plot"] == str(old)
    assert "<svg" in old.read_text()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["curves.svg"]


def test_checkpoint_dir_that_is_a_file(capsys, tmp_path):
    (tmp_path / "ckpt").write_text("not a folder")
    code, out, err = _demo(capsys, "--checkpoint-dir", str(tmp_path / "ckpt"))
    assert code == 2 and out == ""
    assert_one_line_error(err, "is not a folder")


def test_checkpoint_file_that_is_a_folder(capsys, tmp_path):
    (tmp_path / "recommender.npz").mkdir()
    code, out, err = _demo(capsys, "--checkpoint-dir", str(tmp_path))
    assert code == 2 and out == ""
    assert_one_line_error(err, "recommender.npz", "not a regular file")


def _rewrite(path, change):
    """Save ``path`` again with ``change(metadata, variables)`` applied."""
    import numbadam

    ckpt = numbadam.load_checkpoint(path)
    meta, variables = ckpt.metadata, dict(ckpt.variables)
    change(meta, variables)
    numbadam.save_checkpoint(path, ckpt.optimizer, variables, metadata=meta)


def _drop_seconds(meta, _):
    del meta["history"][0]["seconds"]


def _text_loss(meta, _):
    meta["history"][0]["train_loss"] = "low"


def _renumber(meta, _):
    meta["history"][0]["epoch"] = 7


def _history_not_a_list(meta, _):
    meta["history"] = {"1": meta["history"][0]}


def _row_not_a_record(meta, _):
    meta["history"][0] = [1, 2]


def _epoch_count(meta, _):
    meta["epoch"] = 3


def _settings_not_a_record(meta, _):
    meta["settings"] = "users=300"


def _metadata_not_a_record(meta, _):
    meta.clear()
    meta["demo"] = ["recommender"]


@pytest.mark.parametrize(
    "change, fragment",
    [
        (_drop_seconds, "epoch 1 of the history lacks seconds"),
        (_text_loss, "train_loss not a number"),
        (_renumber, "is numbered 7"),
        (_history_not_a_list, "the history is not a list"),
        (_row_not_a_record, "epoch 1 of the history is not a record"),
        (_epoch_count, "epoch count and history disagree"),
        (_settings_not_a_record, "the settings are not a record"),
        (_metadata_not_a_record, "not a checkpoint of the recommender demo"),
    ],
)
def test_resume_from_damaged_metadata(capsys, tmp_path, change, fragment):
    code, _, err = _demo(capsys, "--json", "--checkpoint-dir", str(tmp_path))
    assert code == 0, err
    path = tmp_path / "recommender.npz"
    _rewrite(path, change)
    before = path.read_bytes()
    code, out, err = _demo(capsys, "--checkpoint-dir", str(tmp_path), "--resume")
    assert code == 2 and out == ""  # refused before training
    assert_one_line_error(err, str(path), fragment)
    assert path.read_bytes() == before


def test_resume_with_variables_unlike_the_settings(capsys, tmp_path):
    code, _, err = _demo(capsys, "--json", "--checkpoint-dir", str(tmp_path))
    assert code == 0, err

    def say_400_users(meta, _):
        meta["settings"]["users"] = 400

    _rewrite(tmp_path / "recommender.npz", say_400_users)
    code, out, err = _demo(
        capsys, "--checkpoint-dir", str(tmp_path), "--resume", "--users", "400"
    )
    assert code == 2 and out == ""
    assert_one_line_error(err, "user_embedding is float32 (300, 16)", "(400, 16)")


def test_a_damaged_second_checkpoint_stops_the_demo_before_the_first_run(
    capsys, tmp_path
):
    pytest.importorskip("sklearn")
    both = ["demo", "--quick", *SMALL, "--mlp-epochs", "1"]
    code, _, err = run_main(capsys, *both, "--json", "--checkpoint-dir", str(tmp_path))
    assert code == 0, err
    rec = (tmp_path / "recommender.npz").read_bytes()
    (tmp_path / "mlp.npz").write_bytes(b"PK\x03\x04 truncated")
    code, out, err = run_main(
        capsys, *both, "--rec-epochs", "2", "--checkpoint-dir", str(tmp_path),
        "--resume",
    )  # fmt: skip
    assert code == 2 and out == ""  # the recommender did not train its 2nd epoch
    assert_one_line_error(err, str(tmp_path / "mlp.npz"), "truncated or corrupt")
    assert (tmp_path / "recommender.npz").read_bytes() == rec


# ---------------------------------------------------------------------------
# numbadam bench: the same checks, before the benchmark runs
# ---------------------------------------------------------------------------


@pytest.fixture
def fake_bench(monkeypatch):
    """``numbadam bench`` with a two-case run instead of the benchmark."""
    from numbadam.cli import bench

    calls = []

    def run(quick=False, progress=None, **_):
        calls.append(quick)
        case = {"case": "dense float32 n=1e+01", "bytes": 280.0, "note": "",
                "median_s": {"numbadam": 1e-6}, "GBps": {"numbadam": 0.28}}  # fmt: skip
        return {"machine": {}, "cases": [case], "goals": []}

    monkeypatch.setattr(bench, "run", run)
    monkeypatch.setattr(bench, "format_report", lambda result: "report")
    return calls


def test_bench_plot_to_a_folder_is_refused_before_the_run(capsys, tmp_path, fake_bench):
    code, out, err = run_main(capsys, "bench", "--quick", "--plot", str(tmp_path))
    assert code == 2 and out == "" and fake_bench == []
    assert_one_line_error(err, "plot file", "is a folder")


def test_bench_plot_reports_the_file_written(capsys, tmp_path, fake_bench):
    pytest.importorskip("matplotlib")
    code, out, err = run_main(capsys, "bench", "--plot", str(tmp_path / "bars"))
    assert code == 0, err
    assert fake_bench == [False] and out == "report\n"
    assert f"wrote {tmp_path / 'bars.png'}" in err
    assert (tmp_path / "bars.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize(
    "threads, fragment",
    [("0", "0 is below the minimum, 1"), ("100000", "100000 threads requested")],
)
def test_bench_bad_threads(capsys, fake_bench, threads, fragment):
    import numbadam

    before = numbadam.get_num_threads()
    code, out, err = run_main(capsys, "bench", "--threads", threads)
    assert code == 2 and out == "" and fake_bench == []
    assert_one_line_error(err, "--threads", fragment)
    assert numbadam.get_num_threads() == before
