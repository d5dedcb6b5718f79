"""The dense step with ``use_ema`` against a probe of its access pattern.

An EMA step reads ``var, g, m, v, average`` and writes ``var, m, v, average``:
36 bytes per float32 element, the pattern of
``numbadam.kernels.probe.triad_5r4w`` (and of AMSGrad's step). This prints the
median seconds of the EMA step, the probe, a plain step (28 bytes) and an
AMSGrad step (36 bytes), timed in alternating blocks, and the ratios::

    .venv/bin/python asv_bench/ema_bandwidth.py --n 10000000 --threads 2
"""

from __future__ import annotations

import argparse

import numpy as np

import numbadam
from numbadam import _config
from numbadam.cli.timer import interleaved_samples
from numbadam.kernels import probe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=31)
    args = ap.parse_args()
    numbadam.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    n = args.n

    def step(**kw):
        x = rng.standard_normal(n).astype(np.float32)
        g = (rng.standard_normal(n) * 0.01).astype(np.float32)
        opt = numbadam.Adam(1e-4, **kw)
        pairs = [(g, x)]
        return lambda: opt.apply_gradients(pairs)

    arrays = [rng.standard_normal(n).astype(np.float32) for _ in range(5)]
    block = _config.CPU_BLOCK
    fns = {
        "ema": step(use_ema=True, ema_overwrite_frequency=1000),
        "probe_5r4w": lambda: probe.triad_5r4w(*arrays, block),
        "plain": step(),
        "amsgrad": step(amsgrad=True),
    }
    runs = interleaved_samples(fns, args.repeat)
    med = {k: float(np.median(t)) for k, t in runs.items()}
    for k, t in med.items():
        nbytes = 28 if k == "plain" else 36
        lo, hi = np.percentile(runs[k], [25, 75])
        print(f"{k:11s} {t * 1e3:8.3f} ms  ({lo * 1e3:.3f}-{hi * 1e3:.3f})  "
              f"{nbytes * n / t / 1e9:6.1f} GB/s")  # fmt: skip
    print(f"ema / probe (speed): {med['probe_5r4w'] / med['ema']:.3f}")
    print(f"ema / amsgrad (speed): {med['amsgrad'] / med['ema']:.3f}")
    print(f"ema / plain (time): {med['ema'] / med['plain']:.3f} (bytes: 36/28 = 1.286)")


if __name__ == "__main__":
    main()
