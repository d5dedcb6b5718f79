"""The table of optimizer cases that drives ``test_numerics.py``.

A **case** (:data:`CASES`) is a row of ``numbadam.Adam`` constructor arguments
with the layouts and dtypes it applies to. A **layout** (``layouts.LAYOUTS``)
builds the variables of one run and their seeded gradients: dense 1-D and N-D
arrays, strided views, a 0-d array, an ``IndexedSlices`` table with duplicate
indices, a ``ParameterBuffer``, and a list of variables of mixed dtypes.
:func:`run_case` runs a (case, layout, dtype) on a backend through the public
API and, at every step, the float64 oracle of ``reference.py`` from the
optimizer's own state before the step (so that float16 rounding does not
accumulate); it returns both for ``test_numerics.py`` to compare with
``helpers.TOLERANCE``.

Adding a feature
----------------
A new hyperparameter or rule is a new :class:`Case` in :data:`CASES`: its
constructor arguments, and, when it is only meaningful somewhere, the
``layouts`` and ``dtypes`` it applies to; ``cuda`` names the (layout, dtype)
pairs that also run under the CUDA simulator (keep them few: it is slow). A
value that changes per step is a :class:`PerStep` (a zero-argument callable)
or a :class:`Schedule` (a schedule and its value written from its definition).
If the oracle needs a new formula, it goes in ``reference.py`` and
:func:`oracle_step` calls it. A new variable layout is a builder in
``layouts.LAYOUTS``; every case then runs on it.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from helpers import to_host
from layouts import DTYPES, LAYOUTS, MIXED, Layout, Problem
from reference import (
    adam_dense_ref,
    adam_rowwise_step,
    adam_sparse_lazy_ref,
    adam_sparse_ref,
    clip_ref,
    ema_ref,
)

import numbadam
from numbadam import IndexedSlices, _config, schedules

# ---------------------------------------------------------------------------
# hyperparameters that change per step
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class PerStep:
    """A callable hyperparameter: ``values[iterations]`` at each step.

    :func:`run_case` passes Adam a zero-argument callable that reads the current
    step from a clock it sets before each ``apply_gradients``.
    """

    values: tuple[float, ...]

    def at(self, iterations: int) -> float:
        return self.values[iterations % len(self.values)]


@dataclass(frozen=True)
class Schedule:
    """A learning-rate schedule: ``make()`` builds it, ``at(iterations)`` is its
    value written from the schedule's definition (the oracle's learning rate)."""

    make: Callable[[], Any]
    at: Callable[[int], float]


# ---------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One row: Adam's keyword arguments and where the row applies.

    ``layouts`` / ``dtypes``: ``None`` means all (names of :data:`LAYOUTS`,
    :data:`DTYPES`). ``cuda``: the (layout, dtype) pairs also run on CUDA.
    """

    name: str
    kwargs: Mapping[str, Any]
    layouts: tuple[str, ...] | None = None
    dtypes: tuple[str, ...] | None = None
    cuda: tuple[tuple[str, str], ...] = ()

    @property
    def amsgrad(self) -> bool:
        return bool(self.kwargs.get("amsgrad", False))

    @property
    def lazy(self) -> bool:
        return self.kwargs.get("sparse_mode", "dense") == "lazy"

    @property
    def ema(self) -> bool:
        return bool(self.kwargs.get("use_ema", False))

    @property
    def row(self) -> bool:
        """One second moment per row of 2-D+ variables (``second_moment="row"``)."""
        return self.kwargs.get("second_moment", "element") == "row"


SPARSE_LAYOUTS = ("sparse", "mixed")  # layouts with IndexedSlices gradients
# dense and sparse in every dtype (on CUDA for Adam and AMSGrad)
_EACH_DTYPE = tuple((lay, dt) for lay in ("dense_1d", "sparse") for dt in DTYPES)

CASES: dict[str, Case] = {
    c.name: c
    for c in [
        Case("defaults", {}, cuda=_EACH_DTYPE + (("mixed", MIXED),)),
        Case(
            "hypers",
            {"learning_rate": 0.05, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-3},
            cuda=(("sparse", "float64"),),
        ),
        Case("lr_alias", {"lr": 0.02}),
        Case("no_momentum", {"learning_rate": 0.01, "beta_1": 0.0, "beta_2": 0.5}),
        Case("epsilon_none", {"learning_rate": 0.05, "epsilon": None}),
        Case("epsilon_zero", {"learning_rate": 0.05, "epsilon": 0}),
        Case(
            "amsgrad",
            # beta_2 = 0.95: v falls fast once the gradients shrink, so v in
            # place of vhat is far outside every dtype's tolerance (and a
            # beta_2 equal to beta_1 would hide a swap of the two)
            {"learning_rate": 0.05, "amsgrad": True, "beta_2": 0.95},
            cuda=_EACH_DTYPE + (("dense_nd", "float16"),),
        ),
        Case(
            "clipvalue",
            {"learning_rate": 0.05, "clipvalue": 0.5},
            cuda=(("strided", "float32"),),
        ),
        Case(
            "clipnorm",
            {"learning_rate": 0.05, "clipnorm": 1.5},
            cuda=(("dense_1d", "float64"),),
        ),
        Case(
            "clip_both_amsgrad",
            {
                "learning_rate": 0.05,
                "clipvalue": 0.7,
                "clipnorm": 2.0,
                "amsgrad": True,
                "beta_2": 0.95,
            },
            # one element clipped to 0.7 is below the norm 2.0: nothing to test
            layouts=tuple(name for name in LAYOUTS if name != "scalar"),
            cuda=(("sparse", "float16"),),
        ),
        Case(
            "decay",
            {"learning_rate": 0.1, "decay": 0.3},
            cuda=(("strided", "float64"),),
        ),
        Case(
            "schedule_piecewise",
            {
                # intervals closed on the right: step <= 1, <= 2, then the last
                "learning_rate": Schedule(
                    lambda: schedules.PiecewiseConstantDecay([1, 2], [0.1, 0.05, 0.01]),
                    lambda it: 0.1 if it <= 1 else 0.05 if it <= 2 else 0.01,
                )
            },
            cuda=(("scalar", "float32"),),
        ),
        Case(
            "schedule_exponential_decay",
            {
                "learning_rate": Schedule(
                    lambda: schedules.ExponentialDecay(0.1, 2, 0.5),
                    lambda it: 0.1 * 0.5 ** (it / 2),
                ),
                "decay": 0.2,
            },
            # the schedule computes in float32 (TF), the oracle's value in
            # float64: one float32 ulp of lr is far beyond float64's tolerance
            dtypes=("float16", "float32"),
        ),
        Case(
            "callables",
            {
                "learning_rate": PerStep((0.1, 0.03, 0.2, 0.01)),
                "beta_1": PerStep((0.9, 0.5, 0.8, 0.95)),
                "beta_2": PerStep((0.999, 0.9, 0.99, 0.95)),
                "epsilon": PerStep((1e-7, 1e-3, 1e-2, 1e-5)),
            },
            cuda=(("dense_1d", "float16"),),
        ),
        Case(
            "lazy",
            {"learning_rate": 0.05, "sparse_mode": "lazy"},
            layouts=SPARSE_LAYOUTS,
            cuda=(("sparse", "float32"),),
        ),
        Case(
            "lazy_amsgrad_clipnorm",
            {
                "learning_rate": 0.05,
                "sparse_mode": "lazy",
                "amsgrad": True,
                "clipnorm": 1.0,
                "beta_2": 0.95,  # v falls fast enough for vhat > v in float16
            },
            layouts=SPARSE_LAYOUTS,
            cuda=(("mixed", MIXED),),
        ),
        Case(
            # 4 steps: the first (momentum 0), two more, the overwrite at the
            # third, one after it
            "ema",
            {
                "learning_rate": 0.05,
                "use_ema": True,
                "ema_momentum": 0.9,
                "ema_overwrite_frequency": 3,
            },
            cuda=_EACH_DTYPE + (("strided", "float32"),),
        ),
        Case(
            "ema_amsgrad_clipnorm",
            {
                "learning_rate": 0.05,
                "amsgrad": True,
                "beta_2": 0.95,
                "clipnorm": 1.5,
                "use_ema": True,
                "ema_momentum": 0.7,
            },
            cuda=(("dense_nd", "float16"),),
        ),
        Case(
            "ema_lazy",
            {
                "learning_rate": 0.05,
                "sparse_mode": "lazy",
                "use_ema": True,
                "ema_momentum": 0.8,
                # (step 3 of the sparse layouts lists no row: overwrite at 4)
                "ema_overwrite_frequency": 4,
            },
            layouts=SPARSE_LAYOUTS,
            cuda=(("sparse", "float32"), ("mixed", MIXED)),
        ),
        Case(
            # decoupled weight decay (AdamW); TF rule: every row decays
            "weight_decay",
            {"learning_rate": 0.05, "weight_decay": 0.3},
            cuda=_EACH_DTYPE + (("mixed", MIXED),),
        ),
        Case(
            "weight_decay_amsgrad_clip_decay",
            {
                "learning_rate": 0.05,
                "weight_decay": 0.2,
                "amsgrad": True,
                "beta_2": 0.95,
                "clipvalue": 0.5,
                "clipnorm": 1.5,
                "decay": 0.3,  # (the decay uses the decayed learning rate)
            },
            # one element clipped to 0.5 is below the norm 1.5: nothing to test
            layouts=tuple(name for name in LAYOUTS if name != "scalar"),
            cuda=(("dense_nd", "float16"),),
        ),
        Case(
            # lazy: only the listed rows decay
            "weight_decay_lazy_ema",
            {
                "learning_rate": 0.05,
                "weight_decay": 0.3,
                "sparse_mode": "lazy",
                "use_ema": True,
                "ema_momentum": 0.8,
            },
            layouts=SPARSE_LAYOUTS,
            cuda=(("sparse", "float32"),),
        ),
        Case(
            # every layout: 2-D+ variables row-wise (dense and sparse, staged
            # views, a ParameterBuffer's pairs), 0-d and 1-D ones element-wise
            "row",
            {"learning_rate": 0.05, "second_moment": "row"},
            cuda=(("sparse", "float32"), ("dense_nd", "float16")),
        ),
        Case(
            "row_lazy_amsgrad_clipnorm",
            {
                "learning_rate": 0.05,
                "second_moment": "row",
                "sparse_mode": "lazy",
                "amsgrad": True,
                "clipnorm": 1.0,
                "beta_2": 0.95,
            },
            layouts=SPARSE_LAYOUTS,
            cuda=(("mixed", MIXED),),
        ),
        Case(
            "row_amsgrad_clipvalue",
            {
                "learning_rate": 0.05,
                "second_moment": "row",
                "amsgrad": True,
                "clipvalue": 0.5,
                "beta_2": 0.95,
            },
            layouts=("dense_nd", "strided", "sparse"),
            cuda=(("sparse", "float64"),),
        ),
        Case(
            # the EMA fused into the row-wise kernels (TF rule: every row's
            # average moves; overwritten at the third step)
            "row_ema",
            {
                "learning_rate": 0.05,
                "second_moment": "row",
                "use_ema": True,
                "ema_momentum": 0.9,
                "ema_overwrite_frequency": 3,
            },
            cuda=(("sparse", "float32"), ("dense_nd", "float16")),
        ),
        Case(
            "row_lazy_ema_amsgrad_wd",
            {
                "learning_rate": 0.05,
                "second_moment": "row",
                "sparse_mode": "lazy",
                "use_ema": True,
                "ema_momentum": 0.8,
                "weight_decay": 0.3,
                "amsgrad": True,
                "beta_2": 0.95,
            },
            layouts=SPARSE_LAYOUTS,
            cuda=(("mixed", MIXED),),
        ),
    ]
}


def adam_kwargs(case: Case, clock: list[int]) -> dict[str, Any]:
    """Adam's constructor arguments: ``PerStep`` values become callables that
    read ``clock[0]`` (the step), ``Schedule`` values fresh schedules."""
    out = {}
    for key, value in case.kwargs.items():
        if isinstance(value, PerStep):
            out[key] = lambda value=value: value.at(clock[0])
        elif isinstance(value, Schedule):
            out[key] = value.make()
        else:
            out[key] = value
    return out


def oracle_hypers(case: Case, iterations: int) -> dict[str, Any]:
    """The oracle's hyperparameters at ``iterations`` (before the increment)."""

    def value(key: str, default: Any) -> Any:
        h = case.kwargs.get(key, default)
        return h.at(iterations) if isinstance(h, (PerStep, Schedule)) else h

    eps = value("epsilon", 1e-7)
    if not isinstance(case.kwargs.get("epsilon"), PerStep) and not eps:
        eps = 1e-7  # a constant epsilon of 0 or None means 1e-7 (Keras)
    return {
        "lr": value("learning_rate", case.kwargs.get("lr", 0.001)),
        "beta_1": value("beta_1", 0.9),
        "beta_2": value("beta_2", 0.999),
        "epsilon": eps,
        "decay": value("decay", 0.0),
        # Keras 3's decoupled decay (AdamW), with the step's learning rate
        "weight_decay": value("weight_decay", None) or 0.0,
    }


def combinations(backend: str) -> list[tuple[str, str, str]]:
    """The (case, layout, dtype) names to run on ``backend``: on the CPU every
    combination the rows allow, on CUDA each row's ``cuda`` pairs."""
    out = []
    for case in CASES.values():
        for layout in LAYOUTS.values():
            if backend not in layout.backends:
                continue
            if case.layouts is not None and layout.name not in case.layouts:
                continue
            for dtype in layout.dtypes:
                if dtype != MIXED and case.dtypes and dtype not in case.dtypes:
                    continue
                if backend == "cuda" and (layout.name, dtype) not in case.cuda:
                    continue
                out.append((case.name, layout.name, dtype))
    return out


def table_errors() -> list[str]:
    """Rows naming a layout or dtype that does not exist or does not apply (a
    typo would otherwise drop a combination without a word)."""
    errors = []
    cpu = set(combinations("cpu"))
    for case in CASES.values():
        for name in case.layouts or ():
            if name not in LAYOUTS:
                errors.append(f"{case.name}: no layout {name!r}")
        for dtype in case.dtypes or ():
            if dtype not in DTYPES:
                errors.append(f"{case.name}: no dtype {dtype!r}")
        for layout, dtype in case.cuda:
            lay = LAYOUTS.get(layout)
            if lay is None or "cuda" not in lay.backends:
                errors.append(f"{case.name}: no CUDA layout {layout!r}")
            elif (case.name, layout, dtype) not in cpu:
                errors.append(f"{case.name}: ({layout!r}, {dtype!r}) does not apply")
    return errors


# ---------------------------------------------------------------------------
# one run
# ---------------------------------------------------------------------------


@dataclass
class VarStep:
    """One variable at one step.

    ``actual``: host copies (storage dtype) of ``var``, ``m``, ``v`` (``vhat``)
    after the step; ``before``: float64 state before it (the oracle's start);
    ``expected``: the oracle's state after it (and the clipped gradient ``g``
    of a dense step); ``bitwise``: ``(what, actual, expected)`` entries that
    must not have changed at all (rows that no gradient has listed yet; under
    the lazy rule, every row not listed in this step).
    """

    what: str
    dtype: np.dtype
    before: dict[str, Any]
    expected: dict[str, Any]
    actual: dict[str, Any]
    bitwise: list[tuple[str, np.ndarray, np.ndarray]]


@dataclass
class StepResult:
    returned: int  # apply_gradients' return value
    iterations: int  # opt.iterations after the step
    variables: list[VarStep]
    outside: list[tuple[str, np.ndarray, np.ndarray]]


@dataclass
class Run:
    case: Case
    layout: Layout
    problem: Problem
    opt: Any
    steps: list[StepResult]


def _state(opt, problem: Problem, i: int, case: Case) -> dict[str, np.ndarray]:
    """Host copies of variable ``i`` and its slots (zeros before they exist;
    the EMA average under the lazy rule: the variable, as numbadam starts it;
    ``case.row``: ``v`` and ``vhat`` of a 2-D+ variable have one value per row)."""
    x = problem.read(i)
    out = {"var": x}
    names = ("m", "v") + (("vhat",) if case.amsgrad else ())
    for name in names + (("average",) if case.ema else ()):
        try:
            out[name] = to_host(opt.get_slot(problem.variables[i], name))
        except KeyError:
            lazy_avg = name == "average" and case.lazy
            per_row = case.row and name in ("v", "vhat") and x.ndim >= 2
            if lazy_avg:
                out[name] = x.copy()
            else:
                out[name] = np.zeros(x.shape[:1] if per_row else x.shape, x.dtype)
    return out


def _rowwise_oracle(hp, state, vhat, grad, iterations, lazy):
    """:func:`reference.adam_rowwise_step` of an N-D variable seen as ``(R, D)``
    (``grad``: the clipped dense gradient or ``(indices, clipped values)``)."""
    shape = state[0].shape
    as2d = (shape[0], math.prod(shape[1:]))
    if isinstance(grad, tuple):
        idx, vals = grad
        g = (idx, np.asarray(vals).reshape(len(idx), math.prod(shape[1:])))
        mode = "lazy" if lazy else "sparse"
    else:
        g, mode = np.asarray(grad).reshape(as2d), "dense"
    x, m, v, h = adam_rowwise_step(
        state[0].reshape(as2d), g, state[1].reshape(as2d), state[2], iterations + 1,
        vhat=vhat, mode=mode, **hp,
    )  # fmt: skip
    return x.reshape(shape), m.reshape(shape), v, h


def oracle_step(
    case: Case,
    before: dict[str, np.ndarray],
    grad: Any,
    iterations: int,
    dtype: Any = np.float64,
) -> dict[str, Any]:
    """The oracle's state after one step from the float64 ``before`` (``dtype``:
    the variable's, which holds ``ema_momentum``)."""
    hp = oracle_hypers(case, iterations)
    cv, cn = case.kwargs.get("clipvalue"), case.kwargs.get("clipnorm")
    state = (before["var"], before["m"], before["v"])
    vhat = before.get("vhat")
    if case.row and state[0].ndim >= 2:
        if isinstance(grad, IndexedSlices):
            g = None
            sl = (np.asarray(grad.indices), clip_ref(grad.values, cv, cn))
            x, m, v, h = _rowwise_oracle(hp, state, vhat, sl, iterations, case.lazy)
        else:
            g = clip_ref(grad, cv, cn)
            x, m, v, h = _rowwise_oracle(hp, state, vhat, g, iterations, False)
    elif isinstance(grad, IndexedSlices):
        values = clip_ref(grad.values, cv, cn)
        rule = adam_sparse_lazy_ref if case.lazy else adam_sparse_ref
        x, m, v, h = rule(
            state[0], grad.indices, values, *state[1:], iterations + 1, vhat=vhat, **hp
        )
        g = None
    else:
        g = clip_ref(grad, cv, cn)
        x, m, v, h = adam_dense_ref(
            state[0], g, *state[1:], iterations + 1, vhat=vhat, **hp
        )
    out = {"var": x, "m": m, "v": v, "vhat": h, "g": g}
    if case.ema:
        mom = float(np.dtype(dtype).type(case.kwargs.get("ema_momentum", 0.99)))
        rows = grad.indices if isinstance(grad, IndexedSlices) and case.lazy else None
        out["average"], out["var"] = ema_ref(
            before["average"], x, iterations, mom,
            case.kwargs.get("ema_overwrite_frequency"), rows,
        )  # fmt: skip
    return out


def _frozen_rows(var0, raw_before, actual, grad, listed, lazy, ema=False, wd=False):
    """Bitwise checks of the rows a sparse step must leave alone."""
    checks = []
    never = np.ones(var0.shape[0], bool)
    never[listed] = False
    for key, arr in actual.items():
        if ema and not lazy and key in ("var", "average"):
            continue  # (TF's rule moves every row's average, and overwrites)
        if wd and not lazy and key in ("var", "average"):
            continue  # (TF's rule decays every row)
        start = var0 if key in ("var", "average") else np.zeros(arr.shape, var0.dtype)
        checks.append((f"{key} of never-listed rows", arr[never], start[never]))
    if lazy:
        now = np.ones(var0.shape[0], bool)
        now[np.asarray(grad.indices).astype(np.int64)] = False
        for key, arr in actual.items():
            checks.append(
                (f"lazy: {key} of unlisted rows", arr[now], raw_before[key][now])
            )
    return checks


def run_case(case: Case, layout: Layout, dtype: str, backend: str) -> Run:
    """Run ``case`` on ``layout`` in ``dtype`` on ``backend``, and the oracle.

    Every step reads the optimizer's state, steps it through
    ``apply_gradients`` and steps the oracle from the same state. Nothing is
    asserted here.
    """
    seed = zlib.crc32(repr((case.name, layout.name, dtype)).encode())
    rng = np.random.default_rng(seed)
    if backend == "cpu":
        for knob, value in layout.knobs.items():
            setattr(_config, knob, value)  # conftest's fixture resets them
    problem = layout.build(rng, None if dtype == MIXED else np.dtype(dtype), backend)
    clock = [0]
    opt = numbadam.Adam(**adam_kwargs(case, clock))
    n = len(problem.variables)
    var0 = [problem.read(i) for i in range(n)]
    listed = [np.zeros(0, np.int64) for _ in range(n)]
    steps = []
    for it, grads in enumerate(problem.grads):
        raw = [_state(opt, problem, i, case) for i in range(n)]
        before = [{k: a.astype(np.float64) for k, a in r.items()} for r in raw]
        expected = [
            oracle_step(case, before[i], grads[i], it, problem.dtypes[i])
            for i in range(n)
        ]
        clock[0] = it
        returned = opt.apply_gradients(problem.pairs(grads))
        results = []
        for i in range(n):
            actual = _state(opt, problem, i, case)
            bitwise = []
            if isinstance(grads[i], IndexedSlices):
                idx = np.asarray(grads[i].indices).astype(np.int64)
                listed[i] = np.union1d(listed[i], idx)
                bitwise = _frozen_rows(
                    var0[i], raw[i], actual, grads[i], listed[i], case.lazy, case.ema,
                    bool(case.kwargs.get("weight_decay")),
                )  # fmt: skip
            results.append(
                VarStep(
                    f"variable {i} ({problem.dtypes[i].name})",
                    problem.dtypes[i],
                    before[i],
                    expected[i],
                    actual,
                    bitwise,
                )
            )
        outside = [(what, read(), orig) for what, read, orig in problem.outside]
        steps.append(StepResult(int(returned), int(opt.iterations), results, outside))
    return Run(case, layout, problem, opt, steps)
