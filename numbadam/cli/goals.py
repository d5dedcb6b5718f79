"""numbadam's speed goals: one table, scored by ``numbadam bench`` and ``asv_bench``.

Each row of :data:`GOALS` names the measured cases it applies to (a *family*:
every dense case, the sparse TF-rule cases, ...), numbadam's implementation
and what it is compared with, how the two times make the goal's value, and
the target. ``numbadam bench`` scores its CPU cases against the ``cpu`` rows,
``asv_bench/gpu_report.py`` its CUDA cases against the ``cuda`` rows, and
``asv_bench/benchmarks/speed_goals.py`` tracks the value of every CPU goal
that needs nothing but numbadam and NumPy.

Kinds of goals (``t`` is a median time, ``B`` the bytes a run moves):

``speedup``
    ``t(ref) / t(impl) >= target``: numbadam is ``target`` times faster.
``slowdown``
    ``t(impl) / t(ref) <= target``: numbadam within ``target`` times of ``ref``.
``bandwidth``
    ``(B(impl) / t(impl)) / (B(ref) / t(ref)) >= target``.
``time_us``
    ``t(impl)`` in microseconds ``< target``.
``growth``
    ``t(impl)`` on the family's last case over its first ``<= target``: a cost
    that does not grow with the size the cases vary.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

__all__ = ["GOALS", "Goal", "Measured", "Score", "as_measured", "score", "worst"]

#: Implementations from other libraries (``numbadam[compare]``), by prefix.
COMPARED = ("torch", "optax")

_KINDS = ("speedup", "slowdown", "bandwidth", "time_us", "growth")


@dataclass(frozen=True)
class Goal:
    """One speed goal.

    Attributes
    ----------
    key : str
        A short unique name, e.g. ``"cpu-dense-probe"``.
    backend : {"cpu", "cuda"}
    families : tuple of str
        The families of the cases it is measured on.
    text : str
        What reports print.
    impl : str
        numbadam's implementation, as the cases name it.
    ref : str
        The implementation compared with (``""`` for ``time_us`` and
        ``growth``).
    target : float
    kind : str
        How the value is computed and compared (see the module's docstring).
    min_bytes, max_bytes : float
        The goal applies to cases moving ``min_bytes <= bytes < max_bytes``.
    ref_family : str, optional
        Where ``ref`` is measured, when not in the same case.

    Examples
    --------
    >>> from numbadam.cli.goals import GOALS
    >>> goal = next(g for g in GOALS if g.key == "cpu-dense-probe")
    >>> goal.text, goal.met(0.97), goal.met(0.9)
    ('bandwidth vs probe >= 0.95', True, False)
    """

    key: str
    backend: str
    families: Tuple[str, ...]
    text: str
    impl: str
    ref: str
    target: float
    kind: str = "speedup"
    min_bytes: float = 0.0
    max_bytes: float = math.inf
    ref_family: Optional[str] = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise ValueError(f"goal {self.key!r}: unknown kind {self.kind!r}")
        if self.backend not in ("cpu", "cuda"):
            raise ValueError(f"goal {self.key!r}: unknown backend {self.backend!r}")

    @property
    def higher_is_better(self) -> bool:
        """Whether a larger value is further from failing."""
        return self.kind in ("speedup", "bandwidth")

    @property
    def needs_comparison(self) -> bool:
        """Whether it compares with PyTorch or optax (``numbadam[compare]``)."""
        return any(name.startswith(COMPARED) for name in (self.impl, self.ref))

    def met(self, value: float) -> bool:
        """Whether ``value`` meets the goal."""
        if self.higher_is_better:
            return bool(value >= self.target)
        if self.kind == "time_us":
            return bool(value < self.target)
        return bool(value <= self.target)

    def applies_to(self, case: "Measured") -> bool:
        """Whether ``case`` is one the goal is measured on."""
        return (
            case.family in self.families
            and self.min_bytes <= case.nbytes < self.max_bytes
        )


@dataclass
class Measured:
    """One case's median times, as :func:`score` reads them.

    Attributes
    ----------
    name : str
    family : str
    nbytes : float
        Bytes a run of the case moves.
    times : dict of str to float
        Median seconds by implementation.
    impl_bytes : dict of str to float, optional
        Bytes of the implementations that move other than ``nbytes``.

    Examples
    --------
    >>> from numbadam.cli.goals import Measured
    >>> Measured("copy", "copy", 8e8, {"copy": 0.01}).bytes_of("copy")
    800000000.0
    """

    name: str
    family: str
    nbytes: float
    times: Dict[str, float]
    impl_bytes: Optional[Dict[str, float]] = None

    def bytes_of(self, impl: str) -> float:
        """Bytes a run of ``impl`` moves."""
        return (self.impl_bytes or {}).get(impl, self.nbytes)


@dataclass
class Score:
    """A goal's value on one case (or, for ``growth``, between two).

    Attributes
    ----------
    goal : Goal
    case : str
    value : float
    met : bool
    """

    goal: Goal
    case: str
    value: float
    met: bool


#: The speed goals (docs/performance.md and docs/cuda.md explain them).
GOALS: Tuple[Goal, ...] = (
    # Dense and AMSGrad steps: at the memory's limit from 1e7 elements up,
    # faster than PyTorch's fused Adam and NumPy at every size.
    Goal("cpu-dense-probe", "cpu", ("dense",), "bandwidth vs probe >= 0.95",
         "numbadam", "probe", 0.95, min_bytes=1e8),
    Goal("cpu-dense-cache-torch", "cpu", ("dense",), "speed-up vs torch fused >= 3",
         "numbadam", "torch-fused", 3.0, max_bytes=1e6),
    Goal("cpu-dense-torch", "cpu", ("dense",), "speed-up vs torch fused >= 1",
         "numbadam", "torch-fused", 1.0, min_bytes=1e6),
    Goal("cpu-dense-numpy", "cpu", ("dense",), "speed-up vs numpy",
         "numbadam", "numpy", 1.0),
    # The features of #13 at 1e7 float32 elements: AdamW (28 bytes per
    # element), the EMA (36), an accumulating call (12) and the applying call
    # (32) against a plain step (28).
    Goal("cpu-adamw-probe", "cpu", ("adamw",), "AdamW: bandwidth vs probe >= 0.95",
         "numbadam", "probe", 0.95),
    Goal("cpu-adamw-torch", "cpu", ("adamw",),
         "AdamW: speed-up vs torch AdamW fused >= 1",
         "numbadam", "torch-fused", 1.0),
    Goal("cpu-ema-probe", "cpu", ("ema",), "EMA: bandwidth vs probe >= 0.95",
         "numbadam", "probe", 0.95),
    Goal("cpu-ema-torch", "cpu", ("ema",),
         "EMA: speed-up vs torch fused + lerp_ >= 1",
         "numbadam", "torch-fused+lerp_", 1.0),
    Goal("cpu-accumulate-probe", "cpu", ("accumulate",),
         "accumulating call: bandwidth vs probe >= 0.9",
         "numbadam-accumulating", "probe", 0.9),
    Goal("cpu-accumulate-applying", "cpu", ("accumulate",),
         "applying call: bandwidth vs plain step >= 1 (time <= 32/28 of it)",
         "numbadam-applying", "numbadam-adam", 1.0, kind="bandwidth"),
    Goal("cpu-accumulate-torch", "cpu", ("accumulate",),
         "accumulating call: speed-up vs torch grad.add_ >= 1",
         "numbadam-accumulating", "torch-grad-add_", 1.0),
    # The fixed cost of apply_gradients: one 10-element variable.
    Goal("cpu-fixed-cost", "cpu", ("fixed",), "fixed cost < 10 us",
         "numbadam", "", 10.0, kind="time_us"),
    Goal("cpu-fixed-numpy", "cpu", ("fixed",), "speed-up vs numpy",
         "numbadam", "numpy", 1.0),
    # 2000 variables of 1000 elements from a ParameterBuffer: one pass.
    Goal("cpu-many-torch", "cpu", ("many",), "speed-up vs torch fused >= 10",
         "numbadam-buffer", "torch-fused", 10.0),
    # The same variables as a plain list (no ParameterBuffer), call after call:
    # the multi-tensor launch.
    Goal("cpu-many-list-torch", "cpu", ("many",),
         "list: speed-up vs torch fused >= 4",
         "numbadam-list", "torch-fused", 4.0),
    Goal("cpu-many-probe", "cpu", ("many",),
         "probe/numbadam >= 1/1.5 (within 1.5x of one pass)",
         "numbadam-buffer", "probe", 1 / 1.5),
    # Sparse, TF's rule: the whole table in one pass.
    Goal("cpu-sparse-tf-numpy", "cpu", ("sparse-tf",),
         "speed-up vs NumPy TF-style (TF's ops) >= 6",
         "numbadam", "numpy-tf-literal", 6.0),
    Goal("cpu-sparse-tf-numpy-out", "cpu", ("sparse-tf",),
         "speed-up vs NumPy TF-style with out= buffers >= 6",
         "numbadam", "numpy-tf-style", 6.0),
    Goal("cpu-sparse-tf-dense", "cpu", ("sparse-tf",),
         "within 1.1x of the dense step",
         "numbadam", "numbadam-dense-step", 1 / 1.1),
    # Sparse, lazy: the rows with a gradient only.
    Goal("cpu-lazy-torch", "cpu", ("lazy", "lazy-rotating"),
         "speed-up vs torch SparseAdam >= 4",
         "numbadam-lazy", "torch-SparseAdam", 4.0),
    Goal("cpu-lazy-rows", "cpu", ("lazy",),
         "lazy cost independent of rows (<= 1.3x)",
         "numbadam-lazy", "", 1.3, kind="growth"),
    # Lazy with one second moment per row (second_moment="row"), (1e6, 64).
    Goal("cpu-row-lazy", "cpu", ("lazy-row", "lazy-row-rotating"),
         "row-wise vs element-wise lazy step >= 1.3",
         "numbadam-row-lazy", "numbadam-lazy", 1.3),
    Goal("cpu-row-lazy-torch", "cpu", ("lazy-row", "lazy-row-rotating"),
         "row-wise lazy: speed-up vs torch SparseAdam >= 4",
         "numbadam-row-lazy", "torch-SparseAdam", 4.0),
    # CUDA (asv_bench/gpu_report.py), at 1e8 float32 elements.
    Goal("cuda-dense-copy", "cuda", ("dense",),
         "dense 28 B/elem bandwidth / copy bandwidth >= 0.85",
         "numbadam", "numba copy_to_device", 0.85, kind="bandwidth",
         ref_family="copy"),
    Goal("cuda-dense-torch", "cuda", ("dense",),
         "torch fused time / numbadam time >= 1", "numbadam", "torch fused", 1.0),
    Goal("cuda-amsgrad-torch", "cuda", ("amsgrad",),
         "AMSGrad: torch fused time / numbadam time >= 1",
         "numbadam", "torch fused", 1.0),
    Goal("cuda-adamw-torch", "cuda", ("adamw",),
         "AdamW: torch fused AdamW time / numbadam time >= 1",
         "numbadam", "torch fused", 1.0),
    Goal("cuda-sparse-dense", "cuda", ("sparse TF rule",),
         "sparse TF rule time / dense step time <= 1.2",
         "numbadam", "numbadam dense step, same table", 1.2, kind="slowdown"),
)  # fmt: skip


def _value(goal: Goal, case: Measured, ref_case: Measured) -> Optional[float]:
    t = case.times.get(goal.impl)
    if t is None:
        return None
    if goal.kind == "time_us":
        return t * 1e6
    r = ref_case.times.get(goal.ref)
    if r is None:
        return None
    if goal.kind == "speedup":
        return r / t
    if goal.kind == "slowdown":
        return t / r
    # bandwidth
    return (case.bytes_of(goal.impl) / t) / (ref_case.bytes_of(goal.ref) / r)


def score(
    cases: Sequence[Measured], backend: str, goals: Sequence[Goal] = GOALS
) -> List[Score]:
    """Every goal of ``backend`` on every case it applies to.

    Per-case goals come case by case, in the order of ``cases`` and, for one
    case, of ``goals``; ``growth`` goals come last. A goal whose
    implementations were not measured (PyTorch not installed, say) is left
    out.

    Parameters
    ----------
    cases : sequence of Measured
    backend : {"cpu", "cuda"}
    goals : sequence of Goal, optional
        Default :data:`GOALS`.

    Returns
    -------
    list of Score

    Examples
    --------
    >>> from numbadam.cli.goals import Measured, score
    >>> case = Measured("dense float32 n=1e+07", "dense", 28e7,
    ...                 {"numbadam": 4.0e-3, "probe": 3.9e-3, "numpy": 20e-3})
    >>> [(s.goal.key, round(s.value, 3), s.met) for s in score([case], "cpu")]
    [('cpu-dense-probe', 0.975, True), ('cpu-dense-numpy', 5.0, True)]
    """
    mine = [g for g in goals if g.backend == backend]
    by_family: Dict[str, List[Measured]] = {}
    for case in cases:
        by_family.setdefault(case.family, []).append(case)
    out: List[Score] = []
    for case in cases:
        for goal in mine:
            if goal.kind == "growth" or not goal.applies_to(case):
                continue
            ref_case = case
            if goal.ref_family is not None:
                if goal.ref_family not in by_family:
                    continue
                ref_case = by_family[goal.ref_family][0]
            value = _value(goal, case, ref_case)
            if value is not None:
                out.append(Score(goal, case.name, value, goal.met(value)))
    for goal in mine:
        if goal.kind != "growth":
            continue
        family = [
            c for f in goal.families for c in by_family.get(f, []) if goal.applies_to(c)
        ]
        if len(family) >= 2 and all(goal.impl in c.times for c in family):
            first, last = family[0], family[-1]
            value = last.times[goal.impl] / first.times[goal.impl]
            out.append(
                Score(goal, f"{first.name} vs {last.name}", value, goal.met(value))
            )
    return out


def worst(scores: Sequence[Score]) -> Dict[str, float]:
    """Each goal's least favourable value over its cases, by key.

    Examples
    --------
    >>> from numbadam.cli.goals import GOALS, Score, worst
    >>> g = next(g for g in GOALS if g.key == "cpu-dense-numpy")
    >>> worst([Score(g, "a", 5.0, True), Score(g, "b", 2.5, True)])
    {'cpu-dense-numpy': 2.5}
    """
    out: Dict[str, float] = {}
    for s in scores:
        key = s.goal.key
        if key not in out:
            out[key] = s.value
        elif s.goal.higher_is_better:
            out[key] = min(out[key], s.value)
        else:
            out[key] = max(out[key], s.value)
    return out


def as_measured(rows: Sequence[Mapping[str, Any]]) -> List[Measured]:
    """Cases from report rows ``{"case", "impl", "seconds", "bytes"}`` (in order).

    Examples
    --------
    >>> from numbadam.cli.goals import as_measured
    >>> rows = [{"case": "copy", "impl": "copy", "seconds": 1.0, "bytes": 8.0},
    ...         {"case": "dense", "impl": "numbadam", "seconds": 2.0, "bytes": 28.0}]
    >>> [(c.family, c.times) for c in as_measured(rows)]
    [('copy', {'copy': 1.0}), ('dense', {'numbadam': 2.0})]
    """
    cases: Dict[str, Measured] = {}
    for r in rows:
        case = cases.get(r["case"])
        if case is None:
            case = cases[r["case"]] = Measured(r["case"], r["case"], r["bytes"], {}, {})
        case.times[r["impl"]] = r["seconds"]
        case.impl_bytes[r["impl"]] = r["bytes"]  # type: ignore[index]
    return list(cases.values())
