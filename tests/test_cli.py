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
    assert code == 1 and out == ""
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
    assert code == 1 and out == ""
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
    assert code == 1
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
    assert code == 1 and out == ""
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
