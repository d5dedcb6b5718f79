"""Shared fixtures: backends, CPU kernel paths, small CUDA launches.

Helpers (device transfers, tolerances, the step checker) live in
``helpers.py``.

The ``backend`` fixture runs a test on ``"cpu"`` (NumPy arrays) and ``"cuda"``
(``numba.cuda`` device arrays; marked ``cuda``: run them with
``NUMBA_ENABLE_CUDASIM=1 pytest -m cuda`` without a GPU). ``numba.cuda`` is only
imported when a cuda test runs.
"""

from __future__ import annotations

import os
import sys
import pytest

from numbadam import _config

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    # The simulator runs each CUDA thread as a Python thread that hands over at
    # barriers; a short switch interval makes those hand-overs ~4x faster.
    sys.setswitchinterval(5e-5)


# ---------------------------------------------------------------------------
# backends
# ---------------------------------------------------------------------------


def _require_cuda() -> None:
    try:
        from numba import cuda
    except ImportError as exc:  # numba-cuda not installed
        pytest.skip(f"numba.cuda cannot be imported: {exc}")
    if not cuda.is_available():
        pytest.skip("no CUDA device (NUMBA_ENABLE_CUDASIM=1 runs the simulator)")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def backend(request) -> str:
    """``"cpu"`` or ``"cuda"``: where the test's variables live."""
    if request.param == "cuda":
        _require_cuda()
    return request.param


@pytest.fixture
def cuda_backend() -> str:
    """The cuda backend only (for tests that need both kinds of array)."""
    _require_cuda()
    return "cuda"


@pytest.fixture(autouse=True)
def _small_launches():
    """Small CUDA launches, so that a few hundred elements need grid-stride loops.

    Also restores every knob a test changed (CPU_BLOCK and friends).
    """
    _config.CUDA_THREADS_PER_BLOCK = 32
    _config.CUDA_MAX_BLOCKS = 4
    yield
    _config.reset()


def _set_cpu_path(path: str) -> None:
    if path == "blocked":
        _config.CPU_SERIAL_MAX = 1
        _config.CPU_BLOCK = 64
    elif path == "serial":
        _config.CPU_SERIAL_MAX = 1 << 40


@pytest.fixture(
    params=[
        pytest.param(("cpu", "serial"), id="cpu-serial"),
        pytest.param(("cpu", "blocked"), id="cpu-blocked"),
        pytest.param(("cuda", None), id="cuda", marks=pytest.mark.cuda),
    ]
)
def backend_path(request) -> str:
    """The ``backend`` fixture with the CPU run twice: through the serial dense
    kernel (small variables, below ``CPU_SERIAL_MAX``) and through the blocked
    parallel one with 64-element blocks, so test sizes span several blocks."""
    backend, path = request.param
    if backend == "cuda":
        _require_cuda()
    else:
        _set_cpu_path(path)
    return backend


@pytest.fixture(params=["serial", "blocked"])
def cpu_path(request) -> str:
    """CPU-only tests: the serial or the blocked dense kernel (see backend_path)."""
    _set_cpu_path(request.param)
    return request.param
