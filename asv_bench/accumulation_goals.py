"""The speed goals of gradient accumulation (#13), through the public API.

``gradient_accumulation_steps`` moves, per element of a float32 variable: an
accumulating call 12 bytes (read ``g`` and ``acc``, write ``acc``), the
applying call a plain step's 28 plus 4 (it reads ``acc``). Goals: the
accumulating call at least 0.9 of the speed of a probe of its pattern
(``kernels.probe.triad_2r1w``), the applying call no slower than a plain step
times 32 / 28. Run (two threads, 1e7 elements)::

    NUMBA_NUM_THREADS=2 PYTHONPATH=$PWD python asv_bench/accumulation_goals.py

Prints one JSON object: median seconds and the two ratios (>= 1 meets a goal).
"""

from __future__ import annotations

import json
import sys

import numpy as np

import numbadam
from numbadam import _config
from numbadam.cli.timer import interleaved
from numbadam.kernels import probe


def main(n: int = 10_000_000, repeat: int = 30) -> dict:
    rng = np.random.default_rng(0)
    g = rng.standard_normal(n).astype(np.float32)
    w_plain, w_acc, w_app = (np.zeros(n, np.float32) for _ in range(3))
    plain = numbadam.Adam(1e-3)
    acc = numbadam.Adam(1e-3, gradient_accumulation_steps=4)
    app = numbadam.Adam(1e-3, gradient_accumulation_steps=4)
    a = np.zeros(n, np.float32)
    block = _config.CPU_BLOCK

    def accumulating():
        acc._counter()[...] = 1  # (phase 1 of 4: acc = acc + g)
        acc.apply_gradients([(g, w_acc)])

    def applying():
        app._counter()[...] = 3  # (phase 3 of 4: the update)
        app.apply_gradients([(g, w_app)])

    fns = {
        "probe_12B": lambda: probe.triad_2r1w(a, g, block),
        "accumulating": accumulating,
        "plain_step": lambda: plain.apply_gradients([(g, w_plain)]),
        "applying": applying,
    }
    t = interleaved(fns, repeat=repeat)
    out = {k: round(v, 6) for k, v in t.items()}
    out["accumulating_vs_probe"] = round(t["probe_12B"] / t["accumulating"], 3)
    out["applying_vs_plain_32_28"] = round(
        t["plain_step"] * 32 / 28 / t["applying"], 3
    )
    out["threads"] = _config.get_num_threads()
    out["n"] = n
    return out


if __name__ == "__main__":
    print(json.dumps(main(*map(int, sys.argv[1:]))))
