"""Median step times (us) of a few step kinds, through the public API only.

For comparing two commits (a refactor must keep the speed): run it from each
checkout in turn, a few times alternating, so that each run imports that
checkout's numbadam, and compare the medians (docs/performance.md)::

    for i in 1 2 3 4; do
        (cd OLD && PYTHONPATH=$PWD python asv_bench/public_steps.py)
        (cd NEW && PYTHONPATH=$PWD python asv_bench/public_steps.py)
    done

(``PYTHONPATH`` matters: run as a script, this file's folder comes first on
``sys.path``, so without it an editable install is imported whatever the
current directory.)

Prints one JSON object per run. Not an asv benchmark: asv times one commit's
package at a time.
"""

from __future__ import annotations

import json
import time
from typing import Callable, Dict

import numpy as np

import numbadam
from numbadam import IndexedSlices


def median_us(step: Callable[[], object], runs: int, warm: int = 3) -> float:
    """The median time of ``step()`` in microseconds, after ``warm`` calls."""
    for _ in range(warm):
        step()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1e6


def main() -> Dict[str, float]:
    rng = np.random.default_rng(0)
    out: Dict[str, float] = {}

    w, g = np.zeros(10, np.float32), np.ones(10, np.float32)
    opt = numbadam.Adam(1e-3)
    pair = [(g, w)]
    out["fixed10"] = median_us(lambda: opt.apply_gradients(pair), 20000, 200)

    # a model with many layers: one 1e4 variable per call, 200 in rotation
    ws = [np.zeros(10000, np.float32) for _ in range(200)]
    gs = [np.ones(10000, np.float32) for _ in range(200)]
    rot = numbadam.Adam(1e-3)
    turn = [0]

    def rotate() -> None:
        i = turn[0] = (turn[0] + 1) % 200
        rot.apply_gradients([(gs[i], ws[i])])

    out["rot1e4"] = median_us(rotate, 4000, 400)

    for ams in (False, True):
        w = np.zeros(10**7, np.float32)
        g = rng.standard_normal(10**7).astype(np.float32)
        dense = numbadam.Adam(1e-3, amsgrad=ams)
        key = "dense1e7_ams" if ams else "dense1e7"
        out[key] = median_us(lambda: dense.apply_gradients([(g, w)]), 30)

    pairs = [
        (np.ones(1000, np.float32), np.zeros(1000, np.float32)) for _ in range(2000)
    ]
    many = numbadam.Adam(1e-3)
    out["list2000"] = median_us(lambda: many.apply_gradients(pairs), 30)

    table = np.zeros((10**6, 64), np.float32)
    ids = np.minimum(rng.zipf(1.2, 4096) - 1, 10**6 - 1).astype(np.int64)
    vals = rng.standard_normal((4096, 64)).astype(np.float32)
    grad = IndexedSlices(vals, ids, table.shape)
    for mode in ("lazy", "dense"):
        for ams in (False, True):
            sparse = numbadam.Adam(1e-3, sparse_mode=mode, amsgrad=ams)
            runs = 30 if mode == "dense" else 300
            key = mode + ("_ams" if ams else "")
            out[key] = median_us(lambda: sparse.apply_gradients([(grad, table)]), runs)
    return out


if __name__ == "__main__":
    print(json.dumps(main()))
