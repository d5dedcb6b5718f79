"""Effective bandwidth of the dense Adam step next to a plain NumPy copy.

Both are measured in this one process, on the same machine state:

* the step: ``Adam.apply_gradients`` on one float32 variable of ``n`` elements
  (default 1e7), counted as 28 bytes per element (reads of the gradient, the
  variable, ``m`` and ``v``; writes of the variable, ``m`` and ``v``);
* the copy: ``numpy.copyto`` between two float32 arrays moving the same number
  of bytes (``3.5 n`` elements: one read and one write of 4 bytes each);
* for reference, when ``numbadam.kernels.probe`` is there, its ``triad_4r3w``:
  the step's exact access pattern (4 reads, 3 writes) with no arithmetic, on
  the same threads as the step, i.e. the practical ceiling of a fused step.

Both are warmed up, then timed ``--repeat`` times each (default 21, at least
15), alternating step and copy run by run (numbadam's timer,
:func:`numbadam.cli.timer.interleaved_samples`, in blocks of one run without
settling runs), each rotating over ``--sets`` independent buffer sets so that
no timed run finds its data in cache from the run before; the medians are
reported. Run it from the
repository root:

    .venv/bin/python asv_bench/bandwidth.py [--n 10000000] [--repeat 21]

Bytes are counted the STREAM way (a write counts once, although without
streaming stores the CPU also reads the destination line first).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys

import numpy as np

from numbadam.cli.timer import interleaved_samples

STEP_BYTES_PER_ELEMENT = 28  # float32: 4 reads + 3 writes of 4 bytes
COPY_BYTES_PER_ELEMENT = 8  # float32: 1 read + 1 write of 4 bytes


def measure(n: int = 10_000_000, repeat: int = 21, sets: int = 3, warmup: int = 3):
    """Median seconds and GB/s of the dense step and of the copy; a dict."""
    import numbadam

    rng = np.random.default_rng(0)
    # The step: one optimizer per buffer set, each warmed (compiled, slots made).
    steps = []
    for _ in range(sets):
        var = rng.standard_normal(n, dtype=np.float32)
        grad = rng.standard_normal(n, dtype=np.float32)
        opt = numbadam.Adam(learning_rate=1e-3)
        pairs = [(grad, var)]
        opt.apply_gradients(pairs)
        steps.append((opt, pairs))

    def step(i):
        opt, pairs = steps[i]
        opt.apply_gradients(pairs)

    # The copy: the same bytes per run as the step.
    m = (n * STEP_BYTES_PER_ELEMENT) // COPY_BYTES_PER_ELEMENT
    copies = [
        (rng.standard_normal(m, dtype=np.float32), np.empty(m, np.float32))
        for _ in range(sets)
    ]
    for _, dst in copies:
        dst.fill(0)  # fault the pages in before timing

    def copy(i):
        src, dst = copies[i]
        np.copyto(dst, src)

    runs = {"step": _rotating(step, sets), "copy": _rotating(copy, sets)}
    probe = _probe(n, sets)
    if probe is not None:
        runs["probe"] = _rotating(probe, sets)
    times = interleaved_samples(runs, repeat, warmup, block=1, settle_s=0)
    step_all, copy_all = times["step"], times["copy"]
    step_s, copy_s = statistics.median(step_all), statistics.median(copy_all)
    step_bytes = n * STEP_BYTES_PER_ELEMENT
    copy_bytes = m * COPY_BYTES_PER_ELEMENT
    out = {}
    if probe is not None:
        probe_s = statistics.median(times["probe"])
        out = {
            "probe_seconds": probe_s,
            "probe_gbps": step_bytes / probe_s / 1e9,
            "probe_all": times["probe"],
        }
    return {
        "n": n,
        "repeat": repeat,
        "sets": sets,
        "step_seconds": step_s,
        "step_gbps": step_bytes / step_s / 1e9,
        "copy_elements": m,
        "copy_seconds": copy_s,
        "copy_gbps": copy_bytes / copy_s / 1e9,
        "ratio": (step_bytes / step_s) / (copy_bytes / copy_s),
        "step_all": step_all,
        "copy_all": copy_all,
        **out,
    }


def _rotating(run, sets: int):
    """``run(i)`` as a function of no arguments, taking the sets in turn."""
    calls = [0]

    def next_set():
        run(calls[0] % sets)
        calls[0] += 1

    return next_set


def _probe(n: int, sets: int):
    """The same-pattern Numba probe as a run(i) callable, or None."""
    try:
        from numbadam import _config
        from numbadam.kernels import probe
    except ImportError:
        return None
    bufs = [tuple(np.full(n, 0.0, np.float32) for _ in range(4)) for _ in range(sets)]

    def run(i):
        x, g, m, v = bufs[i]
        probe.triad_4r3w(x, g, m, v, _config.CPU_BLOCK)

    return run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000, help="elements")
    parser.add_argument("--repeat", type=int, default=21, help="timed runs (>= 15)")
    parser.add_argument("--sets", type=int, default=3, help="rotated buffer sets")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs first")
    parser.add_argument("--threads", type=int, default=None, help="Numba threads")
    args = parser.parse_args(argv)
    if args.repeat < 15:
        parser.error("--repeat must be at least 15")

    import numba

    import numbadam

    if args.threads is not None:
        numbadam.set_num_threads(args.threads)
    r = measure(args.n, args.repeat, args.sets, args.warmup)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(
        f"machine: {platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} CPUs, numba threads {numbadam.get_num_threads()}, "
        f"load average {load:.2f}"
    )
    print(
        f"python {platform.python_version()}, numpy {np.__version__}, "
        f"numba {numba.__version__}"
    )
    print(
        f"median of {r['repeat']} runs over {r['sets']} rotated buffer sets "
        f"(min..max in brackets)"
    )
    print(
        f"adam dense step  n={r['n']:.3g} float32: {r['step_seconds'] * 1e3:8.2f} ms"
        f"  [{min(r['step_all']) * 1e3:.2f}..{max(r['step_all']) * 1e3:.2f}]"
        f"  {r['step_gbps']:6.2f} GB/s ({STEP_BYTES_PER_ELEMENT} B/element)"
    )
    print(
        f"numpy copyto     n={r['copy_elements']:.3g} float32: "
        f"{r['copy_seconds'] * 1e3:8.2f} ms"
        f"  [{min(r['copy_all']) * 1e3:.2f}..{max(r['copy_all']) * 1e3:.2f}]"
        f"  {r['copy_gbps']:6.2f} GB/s ({COPY_BYTES_PER_ELEMENT} B/element)"
    )
    if "probe_seconds" in r:
        print(
            f"numba probe      n={r['n']:.3g} float32: "
            f"{r['probe_seconds'] * 1e3:8.2f} ms"
            f"  [{min(r['probe_all']) * 1e3:.2f}..{max(r['probe_all']) * 1e3:.2f}]"
            f"  {r['probe_gbps']:6.2f} GB/s (same 4-read 3-write pattern, no math)"
        )
    print(f"ratio step/copy: {r['ratio']:.2f}")
    if "probe_seconds" in r:
        print(f"ratio step/probe: {r['step_gbps'] / r['probe_gbps']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
