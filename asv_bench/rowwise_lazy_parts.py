"""Where the row-wise lazy step's time goes (a plain script, not an asv
benchmark): ``second_moment="row"`` against the element-wise lazy step on
the same (1e6, 64) float32 table, in one process.

Three batches, each timed through ``apply_gradients`` (medians of
``--calls`` calls, the two optimizers alternating in ``--rounds`` rounds):
the 4096 Zipf ids of ``numbadam bench --family lazy-row`` (duplicates
summed), their unique ids alone, and 8 ids (the fixed cost of a call). Run
from the repository root::

    NUMBA_NUM_THREADS=2 PYTHONPATH=$PWD .venv/bin/python \\
        asv_bench/rowwise_lazy_parts.py

Prints one line per batch: the two times and element-wise / row-wise.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import numbadam

ROWS, WIDTH, K = 1_000_000, 64, 4096


def _step(mode: str, idx: np.ndarray, vals: np.ndarray):
    x = np.full((ROWS, WIDTH), 0.5, np.float32)
    opt = numbadam.Adam(1e-3, sparse_mode="lazy", second_moment=mode)
    opt.build([x])
    opt.get_slot(x, "m").fill(0.0)  # in place: pages the slots in
    opt.get_slot(x, "v").fill(0.0)
    pairs = [(numbadam.IndexedSlices(vals, idx, x.shape), x)]
    return lambda: opt.apply_gradients(pairs)


def _median_us(fn, calls: int) -> float:
    for _ in range(max(10, calls // 10)):
        fn()
    ts = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--calls", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    zipf = ((np.random.default_rng(0).zipf(1.2, K) - 1) % ROWS).astype(np.int64)
    uniq = np.unique(zipf)
    batches = {
        f"{K} Zipf ids ({uniq.size} unique)": zipf,
        f"{uniq.size} unique ids": uniq,
        "8 ids": np.arange(8, dtype=np.int64) * 1000,
    }
    for name, idx in batches.items():
        vals = rng.standard_normal((idx.size, WIDTH), dtype=np.float32)
        fns = {m: _step(m, idx, vals) for m in ("row", "element")}
        got = {m: [] for m in fns}
        for _ in range(args.rounds):
            for m, fn in fns.items():
                got[m].append(_median_us(fn, args.calls))
        row, elem = (float(np.median(got[m])) for m in ("row", "element"))
        print(f"{name:28s} row-wise {row:8.1f} us  element-wise {elem:8.1f} us  "
              f"ratio {elem / row:.3f}")  # fmt: skip
        del fns


if __name__ == "__main__":
    main()
