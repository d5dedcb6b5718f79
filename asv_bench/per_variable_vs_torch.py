"""#11's per-variable goals next to PyTorch's fused Adam, in one process.

1. A plain list of 2000 float32 variables of 1000 elements in one
   ``apply_gradients`` call (the multi-tensor path), next to the same optimizer
   with that path switched off and ``torch.optim.Adam(fused=True)`` over 2000
   tensors: alternating blocks of 5 timed steps, each after 2 ms of untimed
   ones, medians.
2. One 1e4-element variable per call, rotating through 1000 of them, next to one
   fused torch optimizer per tensor (best of 3 rounds, median of 4 blocks).

Needs PyTorch (``pip install 'numbadam[compare]'``). Prints one JSON line.
Usage: ``python asv_bench/per_variable_vs_torch.py``.
"""

from __future__ import annotations

import json
import time

import numpy as np
import torch

import numbadam


def _list_case(n: int = 2000, k: int = 1000) -> dict:
    ps = [torch.zeros(k, requires_grad=True) for _ in range(n)]
    for p in ps:
        p.grad = torch.ones(k)
    topt = torch.optim.Adam(ps, lr=1e-3, fused=True)
    gs = [np.ones(k, np.float32) for _ in range(n)]
    pairs = list(zip(gs, [np.zeros(k, np.float32) for _ in range(n)]))
    pairs2 = list(zip(gs, [np.zeros(k, np.float32) for _ in range(n)]))
    opt, opt2 = numbadam.Adam(), numbadam.Adam()
    opt2._cached_launches = False  # (the per-variable path, for comparison)
    fns = {
        "torch-fused": topt.step,
        "numbadam-list": lambda: opt.apply_gradients(pairs),
        "numbadam-per-variable": lambda: opt2.apply_gradients(pairs2),
    }
    res: dict = {name: [] for name in fns}
    for f in fns.values():
        for _ in range(3):
            f()
    for _ in range(8):
        for name, f in fns.items():
            end = time.perf_counter() + 0.002
            while time.perf_counter() < end:
                f()
            for _ in range(5):
                t0 = time.perf_counter()
                f()
                res[name].append(time.perf_counter() - t0)
    med = {name: float(np.median(v)) for name, v in res.items()}
    med["torch/list"] = med["torch-fused"] / med["numbadam-list"]
    return med


def _rotating_case(n: int = 1000, k: int = 10_000) -> dict:
    ps = [torch.zeros(k, requires_grad=True) for _ in range(n)]
    for p in ps:
        p.grad = torch.ones(k)
    topts = [torch.optim.Adam([p], lr=1e-3, fused=True) for p in ps]
    vs = [np.zeros(k, np.float32) for _ in range(n)]
    gs = [np.ones(k, np.float32) for _ in range(n)]
    opt = numbadam.Adam()
    for i in range(n):
        opt.apply_gradients([(gs[i], vs[i])])
        topts[i].step()

    def run(f) -> float:
        best = []
        for _ in range(3):
            t0 = time.perf_counter()
            for i in range(n):
                f(i)
            best.append((time.perf_counter() - t0) / n)
        return min(best)

    tn, tt = [], []
    for _ in range(4):
        tn.append(run(lambda i: opt.apply_gradients([(gs[i], vs[i])])))
        tt.append(run(lambda i: topts[i].step()))
    out = {"numbadam": float(np.median(tn)), "torch-fused": float(np.median(tt))}
    out["torch/numbadam"] = out["torch-fused"] / out["numbadam"]
    return out


if __name__ == "__main__":
    torch.set_num_threads(2)
    print(json.dumps({"list2000x1000": _list_case(), "rotating1e4": _rotating_case()}))
