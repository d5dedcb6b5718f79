"""Tunable knobs of numbadam, read at call time (never baked into compiled code).

Every knob has a default here and may be overridden by an environment variable
of the same name prefixed with ``NUMBADAM_`` (read at import and by :func:`reset`),
or by assigning the module attribute at run time.

Attributes
----------
CPU_BLOCK : int
    Elements per parallel work item of the dense CPU kernels. Work is split into
    fixed blocks, never by thread count, so results do not depend on threads.
CPU_SERIAL_MAX : int
    Dense variables of at most this many elements take the serial kernel: a
    parallel launch costs more than it saves below it (same arithmetic). ``0``
    means never.
CPU_SPARSE_BLOCK_ROWS : int
    Table rows per parallel work item of the sparse CPU kernels.
NORM_CHUNKS : int
    Fixed number of partial sums of a gradient-norm reduction (deterministic
    whatever the thread count).
CUDA_THREADS_PER_BLOCK : int
    Threads per block of every CUDA launch.
CUDA_MAX_BLOCKS : int
    Upper bound on blocks per CUDA launch; kernels use grid-stride loops.

Every knob is an integer, positive except ``CPU_SERIAL_MAX`` (``>= 0``);
:func:`check` (run by every ``apply_gradients`` before anything changes)
raises ``ValueError`` naming a knob assigned anything else.
"""

from __future__ import annotations

import operator
import os

_DEFAULTS = {
    # 4096: in-cache variables of 1e5-3e5 elements split evenly over the
    # threads (20-25% faster than 16384); no difference from 1e6 elements up
    "CPU_BLOCK": 4096,
    "CPU_SERIAL_MAX": 16384,
    "CPU_SPARSE_BLOCK_ROWS": 256,
    "NORM_CHUNKS": 64,
    "CUDA_THREADS_PER_BLOCK": 256,
    "CUDA_MAX_BLOCKS": 4096,
}

# the smallest valid value of each knob (1 unless listed)
_MINIMUM = {"CPU_SERIAL_MAX": 0}

CPU_BLOCK: int
CPU_SERIAL_MAX: int
CPU_SPARSE_BLOCK_ROWS: int
NORM_CHUNKS: int
CUDA_THREADS_PER_BLOCK: int
CUDA_MAX_BLOCKS: int


def _read(name: str, default: int) -> int:
    raw = os.environ.get("NUMBADAM_" + name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ValueError(f"NUMBADAM_{name}={raw!r} is not an integer") from None
    if value < _MINIMUM.get(name, 1):
        raise ValueError(f"NUMBADAM_{name}={raw!r} must be >= {_MINIMUM.get(name, 1)}")
    return value


def check() -> None:
    """Raise ValueError if a knob was assigned a non-integer or too small a value.

    A zero block size would make every step a counted no-op. Cheap when every
    knob is a valid int (a dozen comparisons), so each step calls it.

    Raises
    ------
    ValueError
        Naming the first invalid knob.

    Examples
    --------
    >>> from numbadam import _config
    >>> _config.check()
    >>> _config.CPU_BLOCK = 0
    >>> _config.check()
    Traceback (most recent call last):
    ...
    ValueError: numbadam._config.CPU_BLOCK must be an integer >= 1, got 0
    >>> _config.reset()
    """
    if (
        type(CPU_BLOCK) is int
        and CPU_BLOCK > 0
        and type(CPU_SERIAL_MAX) is int
        and CPU_SERIAL_MAX >= 0
        and type(CPU_SPARSE_BLOCK_ROWS) is int
        and CPU_SPARSE_BLOCK_ROWS > 0
        and type(NORM_CHUNKS) is int
        and NORM_CHUNKS > 0
        and type(CUDA_THREADS_PER_BLOCK) is int
        and CUDA_THREADS_PER_BLOCK > 0
        and type(CUDA_MAX_BLOCKS) is int
        and CUDA_MAX_BLOCKS > 0
    ):
        return
    g = globals()
    for name in _DEFAULTS:
        value = g[name]
        low = _MINIMUM.get(name, 1)
        try:
            ok = not isinstance(value, bool) and operator.index(value) >= low
        except TypeError:
            ok = False
        if not ok:
            raise ValueError(
                f"numbadam._config.{name} must be an integer >= {low}, got {value!r}"
            )


def reset() -> None:
    """Restore every knob to its default (or its ``NUMBADAM_*`` environment value)."""
    g = globals()
    for name, default in _DEFAULTS.items():
        g[name] = _read(name, default)


reset()


def set_num_threads(n: int) -> None:
    """Use ``n`` threads in the CPU kernels (Numba's ``set_num_threads``).

    Results are bitwise identical whatever the thread count. The setting is
    per calling thread; the ceiling is ``NUMBA_NUM_THREADS`` (default: the
    number of cores), fixed when Numba starts.

    Parameters
    ----------
    n : int
        Number of threads, ``1 <= n <= NUMBA_NUM_THREADS``.

    Raises
    ------
    ValueError
        If ``n`` is not a positive integer or exceeds ``NUMBA_NUM_THREADS``.

    Examples
    --------
    >>> import numbadam
    >>> numbadam.set_num_threads(1)
    >>> numbadam.get_num_threads()
    1
    >>> numbadam.reset_num_threads()
    """
    import numba

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"number of threads must be a positive integer, got {n!r}")
    if n > numba.config.NUMBA_NUM_THREADS:
        raise ValueError(
            f"{n} threads requested but Numba was started with at most "
            f"{numba.config.NUMBA_NUM_THREADS} (set NUMBA_NUM_THREADS before import)"
        )
    numba.set_num_threads(n)


def get_num_threads() -> int:
    """The number of threads the CPU kernels use.

    Returns
    -------
    int
        The calling thread's setting (Numba's ``get_num_threads``), by default
        ``NUMBA_NUM_THREADS``.

    Examples
    --------
    >>> import numba
    >>> import numbadam
    >>> numbadam.set_num_threads(1)
    >>> numbadam.get_num_threads()
    1
    >>> numbadam.reset_num_threads()
    >>> numbadam.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    True
    """
    import numba

    return numba.get_num_threads()


def reset_num_threads() -> None:
    """Use all of Numba's threads again (``NUMBA_NUM_THREADS``).

    Undoes :func:`set_num_threads` for the calling thread.

    Examples
    --------
    >>> import numba
    >>> import numbadam
    >>> numbadam.set_num_threads(1)     # e.g. while other processes are busy
    >>> numbadam.reset_num_threads()
    >>> numbadam.get_num_threads() == numba.config.NUMBA_NUM_THREADS
    True
    """
    import numba

    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
