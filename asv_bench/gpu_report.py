"""The CUDA speed goals in one run, for a lent GPU.

numbadam's CUDA steps next to a device-to-device copy and PyTorch, in one
process, each timed with CUDA events on the default stream (median of many
runs, after warm-up). Prints a table and the goal ratios last; ``--json PATH``
writes every number. Meant for a short GPU lease: one command, a few minutes.

Usage, from the repository root on a machine with a GPU and numba-cuda
(PyTorch and CuPy optional)::

    python asv_bench/gpu_report.py --json gpu.json
    python asv_bench/gpu_report.py --smoke   # tiny sizes; runs under the
                                             # simulator too (checks, no timings)

Cases (float32 unless said; bytes per element as in docs/performance.md):

The goals are the ``cuda`` rows of numbadam's one table of speed goals,
:data:`numbadam.cli.goals.GOALS`; the timer is numbadam's,
:func:`numbadam.cli.timer.median_time`.

- ``copy``: device-to-device copy of N elements (8 bytes per element);
- ``dense``: ``Adam.apply_gradients`` on Numba device arrays, N elements (28);
  goal ``cuda-dense-copy``, against the copy's bandwidth;
- ``dense (torch tensors)``: the same step on PyTorch CUDA tensors;
- ``torch fused``: ``torch.optim.Adam(fused=True)``; goal ``cuda-dense-torch``;
- ``amsgrad``: numbadam (36 bytes) and PyTorch fused with ``amsgrad=True``
  (goal ``cuda-amsgrad-torch``);
- ``dense float16`` / ``float64``: for reference;
- ``sparse TF rule``: a (1e6, 64) table (every row's slots nonzero), 16384
  Zipf(1.2) indices with duplicates; goal ``cuda-sparse-dense``, against the
  dense step on the table's 64e6 elements;
- ``sparse lazy`` and ``torch SparseAdam`` on the same table and batch;
- ``launch``: one 10-element variable, host time per step over many steps
  (the Python path and the launches), next to PyTorch's fused Adam;
- ``check``: one dense and one sparse step on the GPU against the same steps
  on the CPU backend (the kernels are written to give the same bits).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Callable, Dict, List, Optional

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # the checkout's numbadam

import numbadam  # noqa: E402
from numbadam.cli.goals import as_measured, score  # noqa: E402
from numbadam.cli.timer import median_time  # noqa: E402

F32 = np.float32


def _cuda():
    from numba import cuda

    if not cuda.is_available():
        raise SystemExit("no CUDA device (or numba-cuda missing)")
    return cuda


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch if torch.cuda.is_available() else None


class Timer:
    """Median seconds of ``fn`` over ``repeat`` runs: numbadam's timer
    (:func:`numbadam.cli.timer.median_time`), each run between two CUDA events
    on the default stream."""

    def __init__(self, cuda, warmup: int = 3) -> None:
        self.cuda = cuda
        self.warmup = warmup

    def __call__(self, fn: Callable[[], Any], repeat: int) -> float:
        return median_time(fn, repeat, self.warmup, cuda=self.cuda)


def _random(cuda, shape, dtype, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    host = (rng.standard_normal(shape, dtype=np.float32) * scale).astype(dtype)
    return cuda.to_device(host)


def _zipf(rows: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return ((rng.zipf(1.2, k) - 1) % rows).astype(np.int64)


class Report:
    def __init__(self) -> None:
        self.rows: List[Dict[str, Any]] = []
        self.goals: List[Dict[str, Any]] = []
        self.errors: List[str] = []

    def add(self, case: str, impl: str, seconds: float, nbytes: float) -> None:
        self.rows.append(
            {"case": case, "impl": impl, "seconds": seconds, "bytes": nbytes,
             "GBps": nbytes / seconds / 1e9 if seconds > 0 and nbytes else None}
        )  # fmt: skip

    def get(self, case: str, impl: str) -> Optional[float]:
        for r in self.rows:
            if r["case"] == case and r["impl"] == impl:
                return r["seconds"]
        return None

    def goal(self, text: str, value: Optional[float], ok: Callable[[float], bool]):
        if value is not None:
            self.goals.append({"goal": text, "value": value, "met": bool(ok(value))})

    def guard(self, what: str, fn: Callable[[], Any]) -> None:
        # one failing case must not cost the rest of the lease
        try:
            fn()
        except Exception as exc:  # reported, not raised
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            print(f"  ! {what}: {type(exc).__name__}: {exc}", flush=True)


def dense_cases(rep: Report, cuda, torch, timer: Timer, n: int, repeat: int) -> None:
    src = _random(cuda, n, F32, 0)
    dst = cuda.device_array(n, F32)
    rep.add(
        "copy",
        "numba copy_to_device",
        timer(lambda: dst.copy_to_device(src), repeat),
        8 * n,
    )

    def numbadam_step(dtype, amsgrad=False, seed=1):
        var = _random(cuda, n, dtype, seed)
        grad = _random(cuda, n, dtype, seed + 1)
        opt = numbadam.Adam(1e-3, amsgrad=amsgrad)
        pairs = [(grad, var)]
        return lambda: opt.apply_gradients(pairs)

    rep.add("dense", "numbadam", timer(numbadam_step(F32), repeat), 28 * n)
    for dt, nb in ((np.float16, 14), (np.float64, 56)):
        name = f"dense {np.dtype(dt).name}"
        rep.guard(name, lambda dt=dt, nb=nb, name=name: rep.add(
            name, "numbadam", timer(numbadam_step(dt), repeat), nb * n))  # fmt: skip
    rep.add("amsgrad", "numbadam", timer(numbadam_step(F32, True), repeat), 36 * n)
    if torch is None:
        return

    def torch_step(amsgrad=False, as_numbadam=False):
        g = torch.Generator(device="cuda").manual_seed(0)
        w = torch.randn(n, device="cuda", generator=g)
        grad = torch.randn(n, device="cuda", generator=g)
        if as_numbadam:  # numbadam on PyTorch tensors (__cuda_array_interface__)
            opt = numbadam.Adam(1e-3, amsgrad=amsgrad)
            pairs = [(grad, w)]
            return lambda: opt.apply_gradients(pairs)
        p = torch.nn.Parameter(w)
        p.grad = grad
        opt = torch.optim.Adam([p], lr=1e-3, amsgrad=amsgrad, fused=True)
        return opt.step

    rep.add(
        "dense",
        "numbadam (torch tensors)",
        timer(torch_step(as_numbadam=True), repeat),
        28 * n,
    )
    rep.add("dense", "torch fused", timer(torch_step(), repeat), 28 * n)
    rep.add("amsgrad", "torch fused", timer(torch_step(amsgrad=True), repeat), 36 * n)


def feature_cases(rep: Report, cuda, torch, timer: Timer, n: int, repeat: int) -> None:
    """#13's features on one float32 variable: AdamW (28 bytes per element),
    the EMA (36), a cycle of gradient_accumulation_steps=2 (12 + 32), and
    torch's fused AdamW next to AdamW."""

    def step(kwargs, calls=1, seed=3):
        var = _random(cuda, n, F32, seed)
        grad = _random(cuda, n, F32, seed + 1)
        opt = numbadam.Adam(1e-3, **kwargs)
        pairs = [(grad, var)]

        def run():
            for _ in range(calls):
                opt.apply_gradients(pairs)

        return run

    rep.add("adamw", "numbadam", timer(step({"weight_decay": 0.004}), repeat), 28 * n)
    rep.add("ema", "numbadam", timer(step({"use_ema": True}), repeat), 36 * n)
    cycle = step({"gradient_accumulation_steps": 2}, calls=2)
    rep.add("accumulation cycle of 2", "numbadam", timer(cycle, repeat), 44 * n)
    if torch is None:
        return
    g = torch.Generator(device="cuda").manual_seed(0)
    p = torch.nn.Parameter(torch.randn(n, device="cuda", generator=g))
    p.grad = torch.randn(n, device="cuda", generator=g)
    opt = torch.optim.AdamW([p], lr=1e-3, weight_decay=0.004, fused=True)
    rep.add("adamw", "torch fused", timer(opt.step, repeat), 28 * n)


def sparse_cases(
    rep: Report, cuda, torch, timer: Timer, rows: int, k: int, repeat: int
) -> None:
    width = 64
    idx = _zipf(rows, k)
    vals_h = np.random.default_rng(5).standard_normal((k, width), dtype=F32)
    indices, values = cuda.to_device(idx), cuda.to_device(vals_h)
    n = rows * width
    for mode in ("dense", "lazy"):
        table = _random(cuda, (rows, width), F32, 6)
        opt = numbadam.Adam(1e-3, sparse_mode=mode)
        # one dense step first: every row's m and v nonzero (a warm table, which
        # the TF rule rewrites whole; a fresh one it mostly only reads)
        opt.apply_gradients([(_random(cuda, (rows, width), F32, 7), table)])
        pairs = [(numbadam.IndexedSlices(values, indices, (rows, width)), table)]
        case = "sparse TF rule" if mode == "dense" else "sparse lazy"
        nbytes = 28 * n if mode == "dense" else 28 * np.unique(idx).size * width
        rep.add(
            case,
            "numbadam",
            timer(lambda p=pairs, o=opt: o.apply_gradients(p), repeat),
            nbytes,
        )
    flat = _random(cuda, n, F32, 8)
    grad = _random(cuda, n, F32, 9)
    opt = numbadam.Adam(1e-3)
    pairs = [(grad, flat)]
    rep.add(
        "sparse TF rule",
        "numbadam dense step, same table",
        timer(lambda: opt.apply_gradients(pairs), repeat),
        28 * n,
    )
    if torch is None:
        return
    w = torch.nn.Parameter(torch.randn(rows, width, device="cuda"))
    sg = torch.sparse_coo_tensor(
        torch.from_numpy(idx)[None, :].cuda(),
        torch.from_numpy(vals_h).cuda(),
        (rows, width),
    )
    topt = torch.optim.SparseAdam([w], lr=1e-3)

    def step():
        w.grad = sg
        topt.step()

    rep.add(
        "sparse lazy",
        "torch SparseAdam",
        timer(step, repeat),
        28 * np.unique(idx).size * width,
    )


def launch_cases(rep: Report, cuda, torch, steps: int) -> None:
    var = _random(cuda, 10, F32, 10)
    grad = _random(cuda, 10, F32, 11)
    opt = numbadam.Adam(1e-3)
    pairs = [(grad, var)]

    def host_time(fn):
        for _ in range(min(steps, 20)):
            fn()
        cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):
            fn()
        cuda.synchronize()
        return (time.perf_counter() - t0) / steps

    rep.add(
        "launch, 10 elements",
        "numbadam",
        host_time(lambda: opt.apply_gradients(pairs)),
        0,
    )
    if torch is not None:
        p = torch.nn.Parameter(torch.randn(10, device="cuda"))
        p.grad = torch.randn(10, device="cuda")
        topt = torch.optim.Adam([p], lr=1e-3, fused=True)
        rep.add("launch, 10 elements", "torch fused", host_time(topt.step), 0)


def check_cases(rep: Report, cuda) -> None:
    """GPU == CPU backend, bit for bit, on one dense and one sparse step."""
    rng = np.random.default_rng(12)
    out = {}
    for what in ("dense", "sparse"):
        w = rng.standard_normal((1000, 32)).astype(F32)
        if what == "dense":
            g_host = rng.standard_normal((1000, 32)).astype(F32)
            g_dev = cuda.to_device(g_host)
        else:
            idx = _zipf(1000, 4096)
            v = rng.standard_normal((4096, 32)).astype(F32)
            g_host = numbadam.IndexedSlices(v, idx, w.shape)
            g_dev = numbadam.IndexedSlices(
                cuda.to_device(v), cuda.to_device(idx), w.shape
            )
        w_dev = cuda.to_device(w)
        numbadam.Adam(0.01).apply_gradients([(g_host, w)])
        numbadam.Adam(0.01).apply_gradients([(g_dev, w_dev)])
        got = w_dev.copy_to_host()
        same = int(np.sum(got.view(np.uint32) == w.view(np.uint32)))
        out[what] = same / w.size
        rep.add(
            f"check {what}: share of bitwise-equal elements", "GPU vs CPU", out[what], 0
        )
    rep.goal(
        "GPU == CPU, bit for bit (dense and sparse)",
        min(out.values()),
        lambda v: v == 1.0,
    )


def goals(rep: Report) -> None:
    """Score the rows against the ``cuda`` rows of numbadam's goal table."""
    for result in score(as_measured(rep.rows), "cuda"):
        rep.goal(result.goal.text, result.value, result.goal.met)


def format_report(rep: Report, info: Dict[str, Any]) -> str:
    lines = [" | ".join(f"{k} {v}" for k, v in info.items()), ""]
    for r in rep.rows:
        t = r["seconds"]
        if r["case"].startswith("check"):
            lines.append(f"{r['case']:52s} {r['impl']:28s} {t:.6f}")
            continue
        unit, val = ("us", t * 1e6) if t < 1e-3 else ("ms", t * 1e3)
        gb = f"{r['GBps']:8.1f} GB/s" if r["GBps"] else ""
        lines.append(f"{r['case']:52s} {r['impl']:28s} {val:9.2f} {unit} {gb}")
    lines.append("")
    for g in rep.goals:
        lines.append(
            f"[{'met' if g['met'] else 'NOT met':7s}] {g['goal']}: {g['value']:.3g}"
        )
    for e in rep.errors:
        lines.append(f"[error  ] {e}")
    return "\n".join(lines)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", metavar="PATH", help="write every number as JSON")
    p.add_argument("--n", type=float, default=1e8, help="dense elements (1e8)")
    p.add_argument("--repeat", type=int, default=50, help="timed runs per case")
    p.add_argument("--smoke", action="store_true", help="tiny sizes (simulator too)")
    args = p.parse_args(argv)
    cuda = _cuda()
    from numba import config

    simulator = bool(config.ENABLE_CUDASIM)
    torch = None if simulator else _torch()
    n, rows, k, repeat, steps = int(args.n), 10**6, 16384, args.repeat, 2000
    if args.smoke:
        n, rows, k, repeat, steps = 1024, 64, 64, 1, 2
    timer = Timer(cuda, warmup=1 if args.smoke else 3)
    info: Dict[str, Any] = {
        "device": "simulator" if simulator else cuda.get_current_device().name,
        "numbadam": numbadam.__version__,
        "torch": getattr(torch, "__version__", None),
        "n": n,
    }
    if isinstance(info["device"], bytes):
        info["device"] = info["device"].decode()
    rep = Report()
    rep.guard("check", lambda: check_cases(rep, cuda))
    rep.guard("dense", lambda: dense_cases(rep, cuda, torch, timer, n, repeat))
    rep.guard("features", lambda: feature_cases(rep, cuda, torch, timer, n, repeat))
    rep.guard("sparse", lambda: sparse_cases(rep, cuda, torch, timer, rows, k, repeat))
    rep.guard("launch", lambda: launch_cases(rep, cuda, torch, steps))
    goals(rep)
    text = format_report(rep, info)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"info": info, "rows": rep.rows, "goals": rep.goals,
                       "errors": rep.errors}, f, indent=1)  # fmt: skip
    return 1 if rep.errors else 0


if __name__ == "__main__":
    sys.exit(main())
