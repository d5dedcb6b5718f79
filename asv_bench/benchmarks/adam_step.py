"""One Adam step on the CPU, per kernel family, and the fixed per-call cost.

Every ``setup`` takes one step first, so compilation (or loading the kernels
from Numba's on-disk cache) and slot creation are excluded from the timings;
:class:`Compile` measures them on their own, in a fresh process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from typing import ClassVar

from .common import DTYPES, SIZES, dense_problem, sparse_problem, warmed_adam


class DenseStep:
    """Dense Adam, float32: 28 bytes of memory traffic per element."""

    params: ClassVar[list] = [SIZES]
    param_names: ClassVar[list] = ["size"]

    def setup(self, size):
        var, grad = dense_problem(size, "float32")
        self.pairs = [(grad, var)]
        self.opt = warmed_adam(self.pairs, learning_rate=1e-3)

    def time_step(self, size):
        self.opt.apply_gradients(self.pairs)


class DenseDtype:
    """Dense Adam at 1e5 elements per storage dtype (float16 computes in float32)."""

    params: ClassVar[list] = [DTYPES]
    param_names: ClassVar[list] = ["dtype"]

    def setup(self, dtype):
        var, grad = dense_problem(100_000, dtype)
        self.pairs = [(grad, var)]
        self.opt = warmed_adam(self.pairs, learning_rate=1e-3)

    def time_step(self, dtype):
        self.opt.apply_gradients(self.pairs)


class AMSGradStep:
    """Dense AMSGrad, float32: 36 bytes of memory traffic per element."""

    params: ClassVar[list] = [SIZES]
    param_names: ClassVar[list] = ["size"]

    def setup(self, size):
        var, grad = dense_problem(size, "float32")
        self.pairs = [(grad, var)]
        self.opt = warmed_adam(self.pairs, learning_rate=1e-3, amsgrad=True)

    def time_step(self, size):
        self.opt.apply_gradients(self.pairs)


class SparseStep:
    """IndexedSlices on a 1e5 x 64 float32 table (duplicates included).

    ``"dense"`` (TensorFlow's rule) sweeps the whole table, so its time hardly
    depends on ``nnz``; ``"lazy"`` touches the looked-up rows only.
    """

    params: ClassVar[list] = [[100, 10_000], ["dense", "lazy"]]
    param_names: ClassVar[list] = ["nnz", "sparse_mode"]

    def setup(self, nnz, sparse_mode):
        table, grad = sparse_problem(100_000, 64, nnz, "float32")
        self.pairs = [(grad, table)]
        self.opt = warmed_adam(self.pairs, learning_rate=1e-3, sparse_mode=sparse_mode)

    def time_step(self, nnz, sparse_mode):
        self.opt.apply_gradients(self.pairs)


class PerVariableOverhead:
    """``Adam.apply_gradients`` on 10-element variables: the fixed Python cost.

    With one variable this is the per-call overhead; the difference between 100
    variables and one, divided by 99, is the per-variable overhead.
    """

    params: ClassVar[list] = [[1, 100]]
    param_names: ClassVar[list] = ["n_variables"]

    def setup(self, n_variables):
        pairs = []
        for i in range(n_variables):
            var, grad = dense_problem(10, "float32", seed=i)
            pairs.append((grad, var))
        self.pairs = pairs
        self.opt = warmed_adam(self.pairs, learning_rate=1e-3)

    def time_apply_gradients(self, n_variables):
        self.opt.apply_gradients(self.pairs)


_FIRST_STEP = """
import time
t0 = time.perf_counter()
import numpy as np
import numbadam
w = np.zeros(100_000, np.float32)
g = np.ones(100_000, np.float32)
numbadam.Adam().apply_gradients([(g, w)])
print(time.perf_counter() - t0)
"""


class Compile:
    """Seconds from a fresh interpreter to the end of the first dense step.

    ``"cold"``: an empty Numba cache, so the float32 dense kernel is compiled;
    ``"warm"``: the kernel is loaded from the on-disk cache. Includes importing
    numbadam (which imports NumPy and Numba).
    """

    params: ClassVar[list] = [["cold", "warm"]]
    param_names: ClassVar[list] = ["cache"]
    unit = "seconds"
    number = 1
    repeat = 1
    timeout = 600

    def setup(self, cache):
        self.cache_dir = tempfile.mkdtemp(prefix="numbadam-asv-cache-")
        if cache == "warm":
            self._first_step()

    def teardown(self, cache):
        shutil.rmtree(self.cache_dir, ignore_errors=True)

    def _first_step(self) -> float:
        env = dict(os.environ, NUMBA_CACHE_DIR=self.cache_dir)
        out = subprocess.run(
            [sys.executable, "-c", _FIRST_STEP],
            env=env,
            check=True,
            capture_output=True,
            text=True,
        )
        return float(out.stdout.strip().splitlines()[-1])

    def track_first_step_seconds(self, cache):
        return self._first_step()
