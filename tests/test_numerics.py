"""Numerics of ``numbadam.Adam`` against the float64 oracle, driven by one table.

Every (case, layout, dtype) of ``tests/cases.py`` runs a few steps through the
public API; at each step the oracle (``reference.py``) starts from the
optimizer's own state and ``var``, ``m``, ``v`` (and ``vhat``) of every variable
must match it to ``helpers.TOLERANCE``, ``iterations`` must count the steps,
rows that a sparse step must not touch keep their bits, and memory around a
strided view is untouched. On the CPU every combination the table allows runs;
under CUDA (``-m cuda``, the simulator without a GPU) each row's ``cuda`` pairs.

To add a feature, add a row to ``cases.CASES`` (see the docstring of
``tests/cases.py``): its Adam arguments, the layouts and dtypes it applies to,
and the pairs to run on CUDA. Nothing in this file changes.
"""

from __future__ import annotations

import numpy as np
import pytest
from cases import CASES, Run, combinations, run_case, table_errors
from helpers import assert_bitwise, assert_state_arrays
from layouts import LAYOUTS
from reference import clip_ref


def _params():
    out = []
    for backend in ("cpu", "cuda"):
        marks = [pytest.mark.cuda] if backend == "cuda" else []
        for case, layout, dtype in combinations(backend):
            out.append(
                pytest.param(
                    backend,
                    case,
                    layout,
                    dtype,
                    id=f"{backend}-{case}-{layout}-{dtype}",
                    marks=marks,
                )
            )
    return out


@pytest.mark.filterwarnings("ignore:The `lr` argument is deprecated")
@pytest.mark.parametrize(
    "backend, case, layout, dtype", _params(), indirect=["backend"]
)
def test_case_matches_reference(backend, case, layout, dtype):
    run = run_case(CASES[case], LAYOUTS[layout], dtype, backend)
    for s, step in enumerate(run.steps, start=1):
        assert step.returned == step.iterations == s, f"step {s}: iterations"
        for vs in step.variables:
            what = f"step {s} {vs.what}"
            assert_state_arrays(vs.actual, vs.before, vs.expected, vs.dtype, what)
            for name, actual, expected in vs.bitwise:
                assert_bitwise(actual, expected, f"{what} {name}")
        for name, actual, expected in step.outside:
            assert_bitwise(actual, expected, f"step {s} {name}")
    _assert_row_exercised(run)


def test_table_is_consistent():
    assert table_errors() == []
    assert len(combinations("cuda")) < len(combinations("cpu")) // 4  # simulator


def _assert_row_exercised(run: Run) -> None:
    """The row's features acted: the run would pass without them otherwise."""
    kw = run.case.kwargs
    first = run.steps[0].variables
    nonempty = [i for i, vs in enumerate(first) if vs.before["var"].size]
    assert any(
        not np.array_equal(run.steps[-1].variables[i].actual["var"], vs.before["var"])
        for i, vs in enumerate(first)
        if i in nonempty
    ), "no variable moved"
    grads = [_values(g) for g in run.problem.grads[0]]
    cv, cn = kw.get("clipvalue"), kw.get("clipnorm")
    if cv is not None:
        assert any(np.max(np.abs(g), initial=0) > cv for g in grads), "clipvalue idle"
    if cn is not None:  # the norm of the value-clipped gradient
        norms = [np.sqrt(np.sum(clip_ref(g, cv) ** 2)) for g in grads]
        assert max(norms) > cn, "clipnorm idle"
    if run.case.ema:  # the average is neither zero nor the variable
        assert any(
            np.any(vs.actual["average"] != vs.actual["var"])
            and np.any(vs.actual["average"] != 0)
            for step in run.steps
            for vs in step.variables
        ), "the EMA average did not move on its own"
    if run.case.row:  # 2-D+ variables keep one v per row, others per element
        for vs in run.steps[-1].variables:
            x = vs.actual["var"]
            want = x.shape[:1] if x.ndim >= 2 else x.shape
            assert vs.actual["v"].shape == want, f"{vs.what}: v {vs.actual['v'].shape}"
    if run.case.amsgrad:
        last = run.steps[-1].variables
        assert any(np.any(vs.actual["vhat"] > vs.actual["v"]) for vs in last), (
            "vhat never kept an older, larger v"
        )


def _values(g):
    return np.asarray(getattr(g, "values", g))
