"""The one timer of ``numbadam bench`` and ``asv_bench``: medians of timed runs.

:func:`interleaved` times several implementations of one case side by side,
in alternating blocks, so that drift in the machine's state (turbo, memory
bandwidth, other load) falls on all of them alike; :func:`median_time` times
one function alone, on the host clock or, for CUDA work, between two CUDA
events. ``numbadam bench``, ``asv_bench/bandwidth.py``,
``asv_bench/gpu_report.py`` and the goal ratios of
``asv_bench/benchmarks/speed_goals.py`` all time with these.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

__all__ = ["SETTLE_S", "Timed", "interleaved", "interleaved_samples", "median_time"]

#: Untimed runs open each block for at least this long (see :func:`interleaved`).
SETTLE_S = 2e-3


def median_time(
    fn: Callable[[], Any], repeat: int, warmup: int = 2, cuda: Any = None
) -> float:
    """Median seconds of ``fn()`` over ``repeat`` runs, after ``warmup`` runs.

    Parameters
    ----------
    fn : callable
        Called with no arguments.
    repeat : int
        Timed runs.
    warmup : int, optional
        Untimed runs first (compilation, caches, slots).
    cuda : module, optional
        ``numba.cuda``: time each run between two CUDA events on the default
        stream, since launches return before the work is done (under the
        simulator, which has no events worth the name, the host clock around
        ``fn()`` and a ``cuda.synchronize()``).

    Returns
    -------
    float

    Examples
    --------
    >>> from numbadam.cli.timer import median_time
    >>> median_time(lambda: sum(range(100)), repeat=5) > 0
    True
    """
    for _ in range(warmup):
        fn()
    if cuda is not None:
        from numba import config

        cuda.synchronize()
        if not config.ENABLE_CUDASIM:
            return _median_cuda_events(fn, repeat, cuda)

    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        if cuda is not None:
            cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def _median_cuda_events(fn: Callable[[], Any], repeat: int, cuda: Any) -> float:
    times = []
    for _ in range(repeat):
        start, end = cuda.event(), cuda.event()
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(cuda.event_elapsed_time(start, end) * 1e-3)
    return float(np.median(times))


#: What :func:`interleaved` times: a function, or ``(before, fn)``.
Timed = Union[Callable[[], Any], Tuple[Callable[[], Any], Callable[[], Any]]]


def interleaved_samples(
    fns: Mapping[str, Timed],
    repeat: int,
    warmup: int = 2,
    block: Optional[int] = None,
    settle_s: float = SETTLE_S,
) -> Dict[str, List[float]]:
    """Seconds of every timed run of each function, timed in alternating blocks.

    Each function runs ``warmup`` times untimed, then the functions take turns:
    a block of ``block`` timed runs of one, then of the next, until each has at
    least ``repeat`` timed runs.

    A run that starts right after another library's pays for it: numbadam
    (Numba's OpenMP pool) and PyTorch (its own OpenMP runtime) each keep their
    worker threads spinning for about a millisecond after a parallel region,
    holding the cores the next run wants. Measured on 2 cores, a lazy step on
    one batch right after torch SparseAdam's takes 315 us, then 122, 106, 99,
    ... and 89 us from the tenth run on, which is its time alone. So each block
    opens with untimed runs for ``settle_s`` seconds (at least one run; none
    when ``settle_s <= 0``) and then times its runs: every implementation is
    measured as a training loop runs it, alone.

    Parameters
    ----------
    fns : mapping of str to callable or (callable, callable)
        The implementations, by name; called with no arguments. A pair
        ``(before, fn)`` times ``fn`` with ``before()`` run, untimed, right
        before each run of ``fn`` (the calls that put an optimizer into the
        state ``fn`` measures, say).
    repeat : int
        Timed runs of each, at least.
    warmup : int, optional
        Untimed runs of each before any timing.
    block : int, optional
        Timed runs per turn; default ``repeat // 10`` within 1..20. ``1`` with
        ``settle_s=0`` alternates run by run.
    settle_s : float, optional
        Untimed running at the start of each turn.

    Returns
    -------
    dict of str to list of float
        The timed runs' seconds, by name, in the order they ran.

    Examples
    --------
    >>> from numbadam.cli.timer import interleaved_samples
    >>> runs = interleaved_samples({"a": lambda: None, "b": lambda: None}, 3,
    ...                            block=1, settle_s=0)
    >>> {name: len(t) for name, t in runs.items()}
    {'a': 3, 'b': 3}
    """
    pairs = {
        name: fn if isinstance(fn, tuple) else (None, fn) for name, fn in fns.items()
    }
    for before, fn in pairs.values():
        for _ in range(warmup):
            if before is not None:
                before()
            fn()
    if block is None:
        block = max(1, min(20, repeat // 10))
    times: Dict[str, List[float]] = {name: [] for name in fns}
    while min(len(t) for t in times.values()) < repeat:
        for name, (before, fn) in pairs.items():
            if settle_s > 0:
                settle = time.perf_counter() + settle_s
                while True:
                    if before is not None:
                        before()
                    fn()
                    if time.perf_counter() >= settle:
                        break
            for _ in range(block):
                if before is not None:
                    before()
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
    return times


def interleaved(
    fns: Mapping[str, Timed],
    repeat: int,
    warmup: int = 2,
    block: Optional[int] = None,
    settle_s: float = SETTLE_S,
) -> Dict[str, float]:
    """Median seconds of each function, timed by :func:`interleaved_samples`.

    Parameters
    ----------
    fns, repeat, warmup, block, settle_s
        As :func:`interleaved_samples`.

    Returns
    -------
    dict of str to float

    Examples
    --------
    >>> from numbadam.cli.timer import interleaved
    >>> medians = interleaved({"a": lambda: None, "b": lambda: None}, repeat=20)
    >>> sorted(medians), all(t >= 0 for t in medians.values())
    (['a', 'b'], True)
    """
    samples = interleaved_samples(fns, repeat, warmup, block, settle_s)
    return {name: float(np.median(t)) for name, t in samples.items()}
