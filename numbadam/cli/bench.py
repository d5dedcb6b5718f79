"""Side-by-side benchmarks: ``numbadam bench``.

Every case times numbadam through its public API (``Adam.apply_gradients``)
next to, in the same process and run: a Numba memory-bandwidth probe with the
same bytes moved, a careful NumPy implementation, and PyTorch (fused, foreach,
SparseAdam) and optax when they are installed (``pip install
'numbadam[compare]'``). It prints medians and the ratios the project's speed
goals are stated in.

Run ``numbadam bench`` (full), ``numbadam bench --quick`` (under 90 s),
``--json`` for machines and ``--plot PATH`` for a bar chart.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import subprocess
import sys
import tempfile
from typing import Any, Callable, Collection, Dict, List, Optional, Tuple

import numpy as np

import numbadam
from numbadam import _config
from numbadam.kernels import probe

from . import _features
from ._args import PROG, int_at_least
from ._case import Case as _Case
from ._case import repeat_for as _repeat_for
from ._paths import plot_path, save_figure
from .goals import GOALS, score, worst
from .timer import median_time

__all__ = ["FAMILIES", "add_arguments", "format_report", "goal_values", "main", "run"]

HELP = "Benchmark numbadam against a bandwidth probe, NumPy, PyTorch and optax."
DESCRIPTION = (
    "Time numbadam's steps side by side, in one process, with a Numba "
    "memory-bandwidth probe moving the same bytes, a careful NumPy "
    "implementation, and PyTorch (fused, foreach, SparseAdam) and optax when "
    "installed; print medians and the ratios of the speed goals. --quick "
    "finishes in about a minute."
)

F32 = np.float32


def _torch():
    try:
        import torch
    except Exception:  # not installed, or broken install
        return None
    torch.set_num_threads(numbadam.get_num_threads())
    return torch


def _optax():
    try:
        import jax
        import optax
    except Exception:
        return None
    return jax, optax


# ---------------------------------------------------------------------------
# implementations under test
# ---------------------------------------------------------------------------


def _numpy_dense(n: int, amsgrad: bool = False):
    """A careful NumPy Adam: ``out=`` buffers, no temporaries per step; the
    bias-corrected step size of each step in Python floats (the cheapest way)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n, dtype=F32)
    g = rng.standard_normal(n, dtype=F32)
    m, v, h = np.zeros(n, F32), np.zeros(n, F32), np.zeros(n, F32)
    t1, t2 = np.empty(n, F32), np.empty(n, F32)
    lr, b1, b2 = 1e-3, 0.9, 0.999
    omb1, omb2, eps = F32(1 - b1), F32(1 - b2), F32(1e-7)
    count = [0]

    def step():
        count[0] += 1
        t = count[0]
        a = lr * math.sqrt(1 - b2**t) / (1 - b1**t)  # (a weak scalar: float32 ops)
        # augmented assignment would rebind the closure's names: use out=
        np.subtract(g, m, out=t1)
        np.multiply(t1, omb1, out=t1)
        np.add(m, t1, out=m)
        np.multiply(g, g, out=t1)
        np.subtract(t1, v, out=t1)
        np.multiply(t1, omb2, out=t1)
        np.add(v, t1, out=v)
        if amsgrad:
            np.maximum(h, v, out=h)
            np.sqrt(h, out=t1)
        else:
            np.sqrt(v, out=t1)
        np.add(t1, eps, out=t1)
        np.multiply(m, a, out=t2)
        np.divide(t2, t1, out=t2)
        np.subtract(x, t2, out=x)

    return step


def _numbadam_dense(n: int, amsgrad: bool = False, dtype=F32):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(n).astype(dtype)
    g = rng.standard_normal(n).astype(dtype)
    opt = numbadam.Adam(1e-3, amsgrad=amsgrad)
    pairs = [(g, x)]
    return lambda: opt.apply_gradients(pairs)


def _probe(n: int, amsgrad: bool = False):
    arrs = [np.ones(n, F32) for _ in range(5 if amsgrad else 4)]
    block = _config.CPU_BLOCK
    if amsgrad:
        return lambda: probe.triad_5r4w(*arrs, block)
    return lambda: probe.triad_4r3w(*arrs, block)


def _torch_dense(torch, sizes: List[int], mode: str, amsgrad: bool = False):
    params = []
    for s in sizes:
        p = torch.zeros(s, dtype=torch.float32, requires_grad=True)
        p.grad = torch.randn(s, dtype=torch.float32)
        params.append(p)
    kw = {"fused": True} if mode == "fused" else {"foreach": True}
    opt = torch.optim.Adam(params, lr=1e-3, amsgrad=amsgrad, **kw)
    return opt.step


def _optax_dense(jo, n: int):
    jax, optax = jo
    import jax.numpy as jnp

    tx = optax.adam(1e-3)
    params = jnp.zeros(n, jnp.float32)
    grads = jnp.asarray(np.random.default_rng(0).standard_normal(n, dtype=F32))
    state = tx.init(params)

    # the gradient is an argument (a constant could be folded into the step)
    # and the old parameters and state are donated, so XLA may update in place
    @functools.partial(jax.jit, donate_argnums=(0, 1))
    def update(params, state, grads):
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), state

    box = [params, state]

    def step():
        p, s = update(box[0], box[1], grads)
        p.block_until_ready()
        box[0], box[1] = p, s

    return step


def _zipf_indices(rows: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ((rng.zipf(1.2, k) - 1) % rows).astype(np.int64)


def _zipf_batches(rows: int, k: int, count: int) -> List[np.ndarray]:
    """``count`` batches of ``k`` Zipf row indices (seeds 0, 1, ...): a step
    takes the next one, as training does."""
    return [_zipf_indices(rows, k, seed) for seed in range(count)]


def _rotating(make_step: Callable[[np.ndarray], Callable[[], Any]], batches):
    # one step function per batch, called in turn
    steps = [make_step(idx) for idx in batches]
    box = [0]

    def step():
        steps[box[0] % len(steps)]()
        box[0] += 1

    return step


def _numpy_sparse_tf(rows: int, width: int, batches, vals, warm: bool = False):
    """TF's sparse Adam in NumPy written carefully: ``out=`` buffers, no
    temporaries per step (a stronger baseline than TF's own ops)."""
    x = _table(rows, width)
    m, v = _sparse_state(x, warm)
    t1 = np.empty_like(x)
    b1, b2, lr, eps = F32(0.9), F32(0.999), F32(1e-3), F32(1e-7)
    mv, vv = vals * (1 - b1), (vals * vals) * (1 - b2)

    def make(idx):
        def step():
            np.multiply(m, b1, out=m)
            np.add.at(m, idx, mv)
            np.multiply(v, b2, out=v)
            np.add.at(v, idx, vv)
            np.sqrt(v, out=t1)
            np.add(t1, eps, out=t1)
            np.divide(m, t1, out=t1)
            np.multiply(t1, lr, out=t1)
            np.subtract(x, t1, out=x)

        return step

    return _rotating(make, batches)


def _numpy_sparse_tf_literal(rows: int, width: int, batches, vals, warm: bool = False):
    """TF's sparse Adam transcribed line for line (its temporaries included)."""
    x = _table(rows, width)
    m, v = _sparse_state(x, warm)
    b1, b2, lr, eps = F32(0.9), F32(0.999), F32(1e-3), F32(1e-7)

    def make(idx):
        def step():
            np.multiply(m, b1, out=m)  # m_t = assign(m, m * beta_1_t)
            np.add.at(m, idx, vals * (1 - b1))  # scatter_add(m, indices, g * (1 - b1))
            np.multiply(v, b2, out=v)
            np.add.at(v, idx, (vals * vals) * (1 - b2))
            np.subtract(x, lr * m / (np.sqrt(v) + eps), out=x)  # assign_sub(var, ...)

        return step

    return _rotating(make, batches)


def _table(rows: int, width: int) -> np.ndarray:
    # Written once, so every page is resident: a fresh np.zeros table would
    # page in (and zero) memory at a row's first step, a cost of the
    # benchmark's setup that real, initialised tables do not pay.
    return np.full((rows, width), 0.5, F32)


def _state_values(warm: bool):
    """The ``m, v`` everywhere in a table: zeros (fresh), or nonzero (warm:
    every row has had a gradient, so a TF-rule step rewrites them all)."""
    return (1e-3, 1e-6) if warm else (0.0, 0.0)


def _sparse_state(x: np.ndarray, warm: bool):
    """``m, v`` arrays for a table, resident (written once)."""
    m0, v0 = _state_values(warm)
    return np.full_like(x, m0), np.full_like(x, v0)


def _numbadam_sparse(
    rows: int, width: int, batches, vals, mode: str, warm: bool = False,
    second_moment: str = "element",
):  # fmt: skip
    x = _table(rows, width)
    opt = numbadam.Adam(1e-3, sparse_mode=mode, second_moment=second_moment)
    opt.build([x])
    m0, v0 = _state_values(warm)
    opt.get_slot(x, "m").fill(m0)  # in place, which also pages the slots in
    opt.get_slot(x, "v").fill(v0)

    def make(idx):
        pairs = [(numbadam.IndexedSlices(vals, idx, x.shape), x)]
        return lambda: opt.apply_gradients(pairs)

    return _rotating(make, batches)


def _torch_sparse_adam(torch, rows: int, width: int, batches, vals):
    w = torch.full((rows, width), 0.5, requires_grad=True)
    opt = torch.optim.SparseAdam([w], lr=1e-3)

    def make(idx):
        grad = torch.sparse_coo_tensor(
            torch.from_numpy(idx)[None, :], torch.from_numpy(vals), (rows, width)
        )

        def step():
            w.grad = grad
            opt.step()

        return step

    return _rotating(make, batches)


# ---------------------------------------------------------------------------
# the cases
# ---------------------------------------------------------------------------


def _dense_case(n: int, quick: bool, torch, jo, amsgrad: bool = False) -> _Case:
    bpe = 36 if amsgrad else 28
    name = f"{'amsgrad' if amsgrad else 'dense'} float32 n={n:.0e}"
    case = _Case(name, "dense", bpe * n, f"{bpe} bytes/element")
    r = _repeat_for(case.nbytes, quick)
    fns = {"numbadam": _numbadam_dense(n, amsgrad), "probe": _probe(n, amsgrad)}
    if torch is not None:
        fns["torch-fused"] = _torch_dense(torch, [n], "fused", amsgrad)
    case.add_interleaved(fns, r)
    case.add("numpy", median_time(_numpy_dense(n, amsgrad), max(3, r // 3)))
    if torch is not None:
        case.add(
            "torch-foreach",
            median_time(_torch_dense(torch, [n], "foreach", amsgrad), r),
        )
    if jo is not None and not amsgrad:
        case.add("optax", median_time(_optax_dense(jo, n), r))
    return case


def _overhead_case(quick: bool) -> _Case:
    case = _Case(
        "fixed cost, one 10-element variable", "fixed", 28 * 10, "Python + launch"
    )
    fns = {"numbadam": _numbadam_dense(10), "numpy": _numpy_dense(10)}
    case.add_interleaved(fns, 2000 if quick else 20000)
    return case


def _many_case(count: int, size: int, quick: bool, torch) -> _Case:
    n = count * size
    case = _Case(
        f"{count} variables x {size}", "many", 28 * n, "one apply_gradients call"
    )
    r = _repeat_for(case.nbytes, quick)
    buf = numbadam.ParameterBuffer([(size,)] * count)
    buf.grad[:] = 1.0
    opt = numbadam.Adam(1e-3)
    gv = buf.grads_and_vars()
    case.add_interleaved(
        {"numbadam-buffer": lambda: opt.apply_gradients(gv), "probe": _probe(n)}, r
    )
    arrays = [np.zeros(size, F32) for _ in range(count)]
    pairs = [(np.ones(size, F32), a) for a in arrays]
    opt2 = numbadam.Adam(1e-3)
    case.add(
        "numbadam-list",
        median_time(lambda: opt2.apply_gradients(pairs), max(3, r // 4)),
    )
    if torch is not None:
        sizes = [size] * count
        case.add(
            "torch-fused",
            median_time(_torch_dense(torch, sizes, "fused"), max(3, r // 4)),
        )
        case.add(
            "torch-foreach",
            median_time(_torch_dense(torch, sizes, "foreach"), max(3, r // 4)),
        )
    return case


#: Batches a sparse case rotates through (a new set of rows each step).
SPARSE_BATCHES = 16


def _sparse_case(
    rows: int, width: int, k: int, quick: bool, torch, warm: bool = False
) -> _Case:
    batches = _zipf_batches(rows, k, SPARSE_BATCHES)
    rng = np.random.default_rng(1)
    vals = rng.standard_normal((k, width), dtype=F32)
    state = "warm table (every row's m, v nonzero)" if warm else "fresh table"
    case = _Case(
        f"sparse TF rule table ({rows:.0e}, {width}), {k} Zipf rows, {state}",
        "sparse-tf",
        28 * rows * width,
        f"{SPARSE_BATCHES} rotating batches of ~{np.unique(batches[0]).size} unique "
        "rows; the whole table is stepped",
    )
    r = _repeat_for(case.nbytes, quick)
    case.add_interleaved(
        {
            "numbadam": _numbadam_sparse(rows, width, batches, vals, "dense", warm),
            "numbadam-dense-step": _numbadam_dense(rows * width),
        },
        r,
    )
    case.add(
        "numpy-tf-style",
        median_time(
            _numpy_sparse_tf(rows, width, batches, vals, warm), max(3, r // 3)
        ),
    )
    case.add(
        "numpy-tf-literal",
        median_time(
            _numpy_sparse_tf_literal(rows, width, batches, vals, warm), max(3, r // 3)
        ),
    )
    return case


def _lazy_case(
    rows_list: List[int], width: int, k: int, quick: bool, torch, rotate: bool
) -> List[_Case]:
    out = []
    rng = np.random.default_rng(1)
    vals = rng.standard_normal((k, width), dtype=F32)
    for rows in rows_list:
        batches = _zipf_batches(rows, k, SPARSE_BATCHES if rotate else 1)
        nuniq = np.unique(batches[0]).size
        how = f", {SPARSE_BATCHES} rotating batches" if rotate else ", one batch"
        case = _Case(
            f"sparse lazy table ({rows:.0e}, {width}), {k} Zipf rows{how}",
            "lazy-rotating" if rotate else "lazy",
            28 * nuniq * width,
            f"~{nuniq} unique rows move",
        )
        r = _repeat_for(1e6, quick)
        fns = {"numbadam-lazy": _numbadam_sparse(rows, width, batches, vals, "lazy")}
        if torch is not None and rows <= 2_000_000:
            fns["torch-SparseAdam"] = _torch_sparse_adam(
                torch, rows, width, batches, vals
            )
        case.add_interleaved(fns, r)
        out.append(case)
    return out


def _row_lazy_case(
    rows: int, width: int, k: int, quick: bool, torch, rotate: bool = False
) -> _Case:
    """The lazy step with one second moment per row (``second_moment="row"``)
    against the element-wise lazy step and torch's SparseAdam, on the same
    batch (one, or ``SPARSE_BATCHES`` in turn with ``rotate``)."""
    rng = np.random.default_rng(1)
    vals = rng.standard_normal((k, width), dtype=F32)
    batches = _zipf_batches(rows, k, SPARSE_BATCHES if rotate else 1)
    nuniq = np.unique(batches[0]).size
    how = f"{SPARSE_BATCHES} rotating batches" if rotate else "one batch"
    case = _Case(
        f"row-wise lazy table ({rows:.0e}, {width}), {k} Zipf rows, {how}",
        "lazy-row-rotating" if rotate else "lazy-row",
        (20 * width + 8) * nuniq,
        f"~{nuniq} unique rows move; v one float32 per row",
    )
    fns = {
        "numbadam-row-lazy": _numbadam_sparse(
            rows, width, batches, vals, "lazy", second_moment="row"
        ),
        "numbadam-lazy": _numbadam_sparse(rows, width, batches, vals, "lazy"),
    }
    if torch is not None:
        fns["torch-SparseAdam"] = _torch_sparse_adam(torch, rows, width, batches, vals)
    case.add_interleaved(fns, _repeat_for(1e6, quick))
    return case


def _threads_case(n: int, quick: bool) -> _Case:
    case = _Case(f"dense float32 n={n:.0e} by threads", "threads", 28 * n, "numbadam")
    r = _repeat_for(case.nbytes, quick)
    before = numbadam.get_num_threads()
    try:
        for t in sorted({1, before}):
            numbadam.set_num_threads(t)
            case.add_interleaved(
                {
                    f"numbadam-{t}-thread": _numbadam_dense(n),
                    f"probe-{t}-thread": _probe(n),
                },
                r,
            )
    finally:
        numbadam.set_num_threads(before)
    return case


_FIRST_STEP = (
    "import time; t0 = time.perf_counter(); import numpy as np, numbadam; "
    "w = np.zeros(1000, np.float32); opt = numbadam.Adam(); "
    "opt.apply_gradients([(np.ones(1000, np.float32), w)]); "
    "print(time.perf_counter() - t0)"
)


def _compile_case() -> _Case:
    case = _Case(
        "first step in a fresh process (import + compile)", "compile", 0, "seconds"
    )
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        for label in ("cold-cache", "warm-cache"):
            out = subprocess.run(
                [sys.executable, "-c", _FIRST_STEP], env=env, capture_output=True,
                text=True, check=True,
            )  # fmt: skip
            case.add(label, float(out.stdout.strip().splitlines()[-1]))
    return case


#: Families of cases, in the order ``run`` measures them.
FAMILIES = (
    "dense", "adamw", "ema", "accumulate", "fixed", "many", "sparse-tf", "lazy",
    "lazy-rotating", "lazy-row", "lazy-row-rotating", "threads", "compile",
)  # fmt: skip


def _plan(quick: bool, torch, jo) -> List[Tuple[str, Callable[[], Any]]]:
    """The cases to run, in order, as ``(family, build and time)``."""
    plan: List[Tuple[str, Callable[[], Any]]] = []
    dense_sizes = [10**7] if quick else [10**7, 4 * 10**7]
    for n in dense_sizes:
        plan.append(("dense", lambda n=n: _dense_case(n, quick, torch, jo)))
    plan.append(
        ("dense", lambda: _dense_case(dense_sizes[0], quick, torch, jo, amsgrad=True))
    )
    plan.append(("dense", lambda: _dense_case(10**4, quick, torch, jo)))
    if not quick:  # in the caches
        plan.append(("dense", lambda: _dense_case(10**5, quick, torch, jo)))
    n = dense_sizes[0]
    plan.append(("adamw", lambda: _features.adamw_case(n, quick, torch)))
    plan.append(("ema", lambda: _features.ema_case(n, quick, torch)))
    plan.append(("accumulate", lambda: _features.accumulate_case(n, quick, torch)))
    plan.append(("fixed", lambda: _overhead_case(quick)))
    plan.append(("many", lambda: _many_case(2000, 1000, quick, torch)))
    rows = 10**5 if quick else 10**6
    plan.append(("sparse-tf", lambda: _sparse_case(rows, 64, 4096, quick, torch)))
    plan.append(
        ("sparse-tf", lambda: _sparse_case(rows, 64, 4096, quick, torch, warm=True))
    )
    lazy_rows = [10**4, 10**6] if quick else [10**5, 10**6, 10**7]
    plan.append(
        ("lazy", lambda: _lazy_case(lazy_rows, 64, 4096, quick, torch, rotate=False))
    )
    plan.append(
        (
            "lazy-rotating",
            lambda: _lazy_case([lazy_rows[-2]], 64, 4096, quick, torch, rotate=True),
        )
    )
    plan.append(("lazy-row", lambda: _row_lazy_case(10**6, 64, 4096, quick, torch)))
    plan.append(
        (
            "lazy-row-rotating",
            lambda: _row_lazy_case(10**6, 64, 4096, quick, torch, rotate=True),
        )
    )
    plan.append(("threads", lambda: _threads_case(10**7, quick)))
    plan.append(("compile", _compile_case))
    return plan


def run(
    quick: bool = False,
    progress: Optional[Callable[[str], None]] = None,
    compare: bool = True,
    families: Optional[Collection[str]] = None,
) -> Dict[str, Any]:
    """Run every case and return the results and the goal ratios as a dict.

    Parameters
    ----------
    quick : bool
        Smaller sizes and fewer repeats (under 90 s on 2 cores).
    progress : callable, optional
        Called with each case's name once it has run.
    compare : bool, optional
        Time PyTorch and optax too, when installed; without, the goals that
        compare with them are left out.
    families : collection of str, optional
        Run only the cases of these families (of :data:`FAMILIES`).

    Returns
    -------
    dict
        ``machine`` (versions, threads), ``cases`` (each with its median
        seconds and GB/s by implementation) and ``goals`` (each goal of
        :data:`numbadam.cli.goals.GOALS` that applies, with its value).
    """
    cases, torch, jo = _run_cases(quick, progress, compare, families)
    return {
        "machine": {
            "threads": numbadam.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "numbadam": numbadam.__version__,
            "numpy": np.__version__,
            "torch": getattr(torch, "__version__", None),
            "optax": None if jo is None else jo[1].__version__,
            "quick": quick,
        },
        "cases": [c.as_dict() for c in cases],
        "goals": _goals(cases),
    }


def _run_cases(
    quick: bool,
    progress: Optional[Callable[[str], None]],
    compare: bool,
    families: Optional[Collection[str]],
):
    if families is not None:
        unknown = sorted(set(families) - set(FAMILIES))
        if unknown:
            raise ValueError(f"unknown case families {unknown}; known: {FAMILIES}")
    torch = _torch() if compare else None
    jo = _optax() if compare else None
    say = progress or (lambda s: None)
    cases: List[_Case] = []
    for family, item in _plan(quick, torch, jo):
        if families is not None and family not in families:
            continue
        result = item()
        for c in result if isinstance(result, list) else [result]:
            say(c.name)
            cases.append(c)
    return cases, torch, jo


def goal_values(
    keys: Collection[str], quick: bool = True, compare: bool = False
) -> Dict[str, float]:
    """Measure the cases of some CPU goals and return each goal's value.

    Where a goal applies to several cases, its least favourable value (see
    :func:`numbadam.cli.goals.worst`). asv tracks these
    (``asv_bench/benchmarks/speed_goals.py``).

    Parameters
    ----------
    keys : collection of str
        Goals of :data:`numbadam.cli.goals.GOALS`, by key; only the cases of
        their families run.
    quick : bool, optional
        ``numbadam bench --quick``'s sizes and repeats.
    compare : bool, optional
        Time PyTorch and optax too, when installed.

    Returns
    -------
    dict of str to float
        By key; a goal whose implementations did not run is missing.
    """
    by_key = {g.key: g for g in GOALS if g.backend == "cpu"}
    unknown = sorted(set(keys) - set(by_key))
    if unknown:
        raise ValueError(f"unknown CPU goals {unknown}")
    wanted = {f for k in keys for f in by_key[k].families}
    families = [f for f in FAMILIES if f in wanted]
    cases, _, _ = _run_cases(quick, None, compare, families)
    values = worst(score(cases, "cpu"))
    return {k: v for k, v in values.items() if k in keys}


def _goals(cases: List[_Case]) -> List[Dict[str, Any]]:
    return [
        {
            "case": s.case,
            "goal": s.goal.text,
            "ratio": s.value,
            "target": s.goal.target,
            "met": s.met,
        }
        for s in score(cases, "cpu")
    ]


def format_report(result: Dict[str, Any]) -> str:
    """The human-readable table of :func:`run`'s result."""
    lines = []
    mach = result["machine"]
    lines.append(
        f"numbadam {mach['numbadam']} | numpy {mach['numpy']} | "
        f"torch {mach['torch']} | optax {mach['optax']} | "
        f"{mach['threads']} threads | quick={mach['quick']}"
    )
    for c in result["cases"]:
        lines.append("")
        lines.append(f"== {c['case']}  ({c['note']})")
        ref = (
            c["median_s"].get("numbadam")
            or c["median_s"].get("numbadam-buffer")
            or c["median_s"].get("numbadam-lazy")
            or c["median_s"].get("numbadam-row-lazy")
        )
        for impl, t in c["median_s"].items():
            if c["bytes"] == 0:
                lines.append(f"  {impl:22s} {t:10.3f} s")
                continue
            unit, val = ("us", t * 1e6) if t < 1e-3 else ("ms", t * 1e3)
            gbps = c["GBps"].get(impl, 0.0)
            rel = f"{t / ref:6.2f}x numbadam's time" if ref else ""
            lines.append(f"  {impl:22s} {val:10.2f} {unit}  {gbps:7.1f} GB/s  {rel}")
    lines.append("")
    lines.append("Goals")
    for g in result["goals"]:
        mark = "met" if g["met"] else "NOT met"
        lines.append(f"  [{mark:7s}] {g['case']}: {g['goal']}: {g['ratio']:.3g}")
    return "\n".join(lines)


def _plot(result: Dict[str, Any], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("--plot needs matplotlib: pip install matplotlib", file=sys.stderr)
        return
    cases = [c for c in result["cases"] if c["bytes"] > 0]
    fig, axes = plt.subplots(len(cases), 1, figsize=(8, 1.6 * len(cases) + 1))
    for ax, c in zip(np.atleast_1d(axes), cases):
        names = list(c["GBps"])
        ax.barh(names, [c["GBps"][k] for k in names])
        ax.set_title(c["case"], fontsize=8)
        ax.tick_params(labelsize=7)
    np.atleast_1d(axes)[-1].set_xlabel("effective GB/s (higher is better)")
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    print(f"wrote {path}", file=sys.stderr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``numbadam bench``'s options to ``parser``."""
    parser.add_argument("--quick", action="store_true", help="small sizes, under 90 s")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--plot", metavar="PATH", help="write a bar chart (matplotlib)")
    parser.add_argument(
        "--threads", type=int_at_least(1), metavar="N", help="Numba threads to use"
    )
    parser.add_argument(
        "--family", action="append", choices=FAMILIES, metavar="FAMILY",
        help=f"run only this family of cases (repeatable): {', '.join(FAMILIES)}",
    )  # fmt: skip


def _say_ran(case: str) -> None:
    print(f"ran: {case}", file=sys.stderr)


def main(args: argparse.Namespace) -> int:
    """Run ``numbadam bench`` with parsed ``args``; return the exit status.

    ``--plot`` and ``--threads`` are checked before the benchmark starts: a
    bad one is a one-line error and exit status 2.
    """
    prog = f"{PROG} bench"
    plot = None
    if args.plot:
        try:
            plot = plot_path(args.plot)
        except ValueError as exc:
            print(f"{prog}: error: {exc}", file=sys.stderr)
            return 2
    threads = numbadam.get_num_threads()
    try:
        if args.threads is not None:
            try:
                numbadam.set_num_threads(args.threads)
            except ValueError as exc:
                print(f"{prog}: error: --threads: {exc}", file=sys.stderr)
                return 2
        result = run(
            quick=args.quick,
            progress=None if args.json else _say_ran,
            families=getattr(args, "family", None),
        )
    finally:
        numbadam.set_num_threads(threads)  # main() may run inside a larger program
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(format_report(result))
    if plot:
        _plot(result, plot)
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(prog="numbadam bench", description=__doc__)
    add_arguments(p)
    sys.exit(main(p.parse_args()))
