"""The package's layering (CONTRIBUTING.md): imports flow one way, no cycles.

The import graph is read from the sources (every ``import`` statement, lazy ones
inside functions included), so a test fails on a new upward import before it
can become a circular-import error at run time.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Dict, Set

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "numbadam"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    base = PACKAGE.parent / rel
    return base.with_suffix(".py").exists() or (base / "__init__.py").exists()


def _imports(path: Path) -> Set[str]:
    """numbadam modules imported by ``path`` (absolute or relative)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "numbadam":
                    out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "numbadam":
                continue
            for alias in node.names:
                sub = f"{mod}.{alias.name}"
                out.add(sub if _is_module(sub) else mod)
    out.discard(name)
    return out


def _graph() -> Dict[str, Set[str]]:
    return {_module_name(p): _imports(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_graph_is_read():
    g = _graph()
    # (a broken reader would make every check below pass vacuously)
    assert "numbadam._backend" in g["numbadam._backend_cpu"]
    assert "numbadam._backend_cpu" in g["numbadam._dispatch"]
    assert "numbadam.kernels.cpu" in g["numbadam._backend_cpu"]


def test_no_import_cycle():
    g = _graph()
    # imports of the package itself (``import numbadam``) come from the
    # applications on top; __init__ only re-exports
    done: Set[str] = set()

    def visit(node: str, path: list) -> None:
        if node in path:
            cycle = path[path.index(node) :] + [node]
            pytest.fail("import cycle: " + " -> ".join(cycle))
        if node in done or node not in g:
            return
        for nxt in sorted(g[node]):
            if nxt != "numbadam":
                visit(nxt, path + [node])
        done.add(node)

    for mod in g:
        visit(mod, [])


@pytest.mark.parametrize(
    "module, forbidden",
    [
        # kernels know nothing of optimizers, backends or slots
        ("numbadam.kernels.cpu", "numbadam.(?!kernels)"),
        ("numbadam.kernels.cuda", "numbadam.(?!kernels)"),
        ("numbadam.kernels.rowwise_cpu", "numbadam.(?!kernels)"),
        ("numbadam.kernels.rowwise_cuda", "numbadam.(?!kernels)"),
        # the interface knows no kernel and no implementation
        ("numbadam._backend", "numbadam.(kernels|_backend_|_dispatch|optimizer)"),
        # sibling backends: neither imports the other, nor the chooser
        ("numbadam._backend_cpu", "numbadam.(_backend_cuda|_dispatch|optimizer)"),
        ("numbadam._backend_cuda", "numbadam.(_backend_cpu|_dispatch|optimizer)"),
        # the optimizer knows the interface, not the kernels or implementations
        ("numbadam.optimizer", "numbadam.(kernels|_backend_c)"),
        ("numbadam.adam", "numbadam.(kernels|_backend_c)"),
    ],
)
def test_dependency_direction(module, forbidden):
    import re

    bad = sorted(m for m in _graph()[module] if re.match(forbidden, m))
    assert not bad, f"{module} imports {bad}"


def test_kernels_import_only_kernels():
    """Every module of numbadam.kernels (cpu.py, cuda.py and their private
    siblings) imports nothing of numbadam outside it, and the CPU ones nothing of
    the CUDA ones (importing numbadam must not import numba.cuda)."""
    g = _graph()
    kernels = sorted(m for m in g if m.startswith("numbadam.kernels"))
    # (the siblings are found, and their imports read)
    assert "numbadam.kernels._cpu_common" in g["numbadam.kernels._cpu_dense"]
    assert "numbadam.kernels._cuda_sparse" in g["numbadam.kernels.cuda"]
    for mod in kernels:
        bad = sorted(d for d in g[mod] if not d.startswith("numbadam.kernels"))
        assert not bad, f"{mod} imports {bad}"
        if "cpu" in mod.rpartition(".")[2]:
            bad = sorted(d for d in g[mod] if "cuda" in d.rpartition(".")[2])
            assert not bad, f"{mod} imports the CUDA kernels {bad}"


def test_core_does_not_import_applications():
    g = _graph()
    apps = (
        "numbadam.cli",
        "numbadam.demo",
        "numbadam.benchmark",
        "numbadam.__main__",
    )
    for mod, deps in g.items():
        if mod.startswith(apps):
            continue
        bad = sorted(d for d in deps if d.startswith(apps))
        assert not bad, f"{mod} imports the application modules {bad}"
