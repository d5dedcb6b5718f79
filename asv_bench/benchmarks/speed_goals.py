"""The CPU speed goals through ``Adam.apply_gradients``.

The goals are the ``cpu`` rows of numbadam's one table,
:data:`numbadam.cli.goals.GOALS` (named here by key). ``numbadam bench`` times
the same cases side by side with NumPy and PyTorch in one process and scores
them against the table; :class:`GoalRatios` tracks, across commits, the value
of every goal that needs nothing but numbadam and NumPy, measured by
``numbadam bench``'s own cases and timer. The other classes time numbadam
alone. Parameters: dtype,
size and Numba threads where the goal names them; sparse tables in the state
that matters for TF's rule (``fresh``: no row has had a gradient, so its ``m``
and ``v`` are zero and a step only reads them; ``warm``: every row has, so a
step rewrites the whole table). Every ``setup`` takes one step first.
"""

from __future__ import annotations

from typing import ClassVar

import numba
import numpy as np

import numbadam
from numbadam import _config
from numbadam.kernels import probe

from numbadam.cli import bench
from numbadam.cli.goals import GOALS

from .common import DTYPES, dense_problem, rng, warmed_adam, zipf_batches

THREADS = [1, 2]


def _use_threads(threads: int) -> None:
    if threads > numba.config.NUMBA_NUM_THREADS:
        raise NotImplementedError(f"only {numba.config.NUMBA_NUM_THREADS} threads")
    numbadam.set_num_threads(threads)


class DenseByThreads:
    """Goals ``cpu-dense-*``: dense steps by dtype, size and threads (28
    B/element in float32; 14 in float16, 56 in float64)."""

    params: ClassVar[list] = [DTYPES, [10_000, 10_000_000], THREADS]
    param_names: ClassVar[list] = ["dtype", "size", "threads"]

    def setup(self, dtype, size, threads):
        _use_threads(threads)
        var, grad = dense_problem(size, dtype)
        self.pairs = [(grad, var)]
        self.opt = warmed_adam(self.pairs, learning_rate=1e-3)

    def teardown(self, dtype, size, threads):
        numbadam.reset_num_threads()

    def time_step(self, dtype, size, threads):
        self.opt.apply_gradients(self.pairs)


class AMSGradByThreads(DenseByThreads):
    """Goals ``cpu-dense-*`` for AMSGrad: 36 bytes per float32 element."""

    def setup(self, dtype, size, threads):
        _use_threads(threads)
        var, grad = dense_problem(size, dtype)
        self.pairs = [(grad, var)]
        self.opt = warmed_adam(self.pairs, learning_rate=1e-3, amsgrad=True)


class Probe:
    """The floor of goal ``cpu-dense-probe``: a Numba kernel moving the step's
    bytes (4 reads and 3 writes, or 5 and 4 for AMSGrad) over 1e7 float32
    elements, no arithmetic."""

    params: ClassVar[list] = [["4r3w", "5r4w"], THREADS]
    param_names: ClassVar[list] = ["pattern", "threads"]

    def setup(self, pattern, threads):
        _use_threads(threads)
        n = 10_000_000
        self.arrays = [
            np.ones(n, np.float32) for _ in range(4 if pattern == "4r3w" else 5)
        ]
        self.kernel = probe.triad_4r3w if pattern == "4r3w" else probe.triad_5r4w
        self.kernel(*self.arrays, _config.CPU_BLOCK)

    def teardown(self, pattern, threads):
        numbadam.reset_num_threads()

    def time_pass(self, pattern, threads):
        self.kernel(*self.arrays, _config.CPU_BLOCK)


class ManyVariables:
    """Goals ``cpu-many-*``: 2000 float32 variables of 1000 elements in one
    call, allocated from a ParameterBuffer (one kernel pass) or as 2000
    separate arrays."""

    params: ClassVar[list] = [["buffer", "list"]]
    param_names: ClassVar[list] = ["layout"]

    def setup(self, layout):
        if layout == "buffer":
            buf = numbadam.ParameterBuffer([(1000,)] * 2000)
            buf.grad[:] = rng().standard_normal(buf.grad.size, dtype=np.float32)
            self.pairs = buf.grads_and_vars()
        else:
            self.pairs = [
                (g, v) for v, g in (dense_problem(1000, seed=i) for i in range(2000))
            ]
        self.opt = warmed_adam(self.pairs, learning_rate=1e-3)

    def time_step(self, layout):
        self.opt.apply_gradients(self.pairs)


class _TableStep:
    rows = 1_000_000
    width = 64
    k = 4096
    batches = 8

    def _setup(self, rows, sparse_mode, state, second_moment="element"):
        # every page written once: a fresh np.zeros table would page memory in
        # (and zero it) at a row's first step, which initialised tables never do
        table = np.full((rows, self.width), 0.5, np.float32)
        vals = rng().standard_normal((self.k, self.width), dtype=np.float32)
        self.steps = [
            [(numbadam.IndexedSlices(vals, idx, table.shape), table)]
            for idx in zipf_batches(rows, self.k, self.batches)
        ]
        self.opt = numbadam.Adam(
            1e-3, sparse_mode=sparse_mode, second_moment=second_moment
        )
        self.opt.build([table])
        warm = state == "warm"
        self.opt.get_slot(table, "m")[...] = 1e-3 if warm else 0.0
        self.opt.get_slot(table, "v")[...] = 1e-6 if warm else 0.0
        self.opt.apply_gradients(self.steps[0])
        self.i = 1

    def _step(self):
        self.opt.apply_gradients(self.steps[self.i % self.batches])
        self.i += 1


class SparseTable(_TableStep):
    """Goals ``cpu-sparse-tf-*`` and ``cpu-lazy-*``: a (1e6, 64) float32
    table, batches of 4096 Zipf rows (duplicates included) taken in turn; TF's
    rule (``"dense"``) or LazyAdam's (``"lazy"``), on a fresh or a warm table.
    ``peakmem`` shows that no step allocates anything the size of the table."""

    params: ClassVar[list] = [["dense", "lazy"], ["fresh", "warm"]]
    param_names: ClassVar[list] = ["sparse_mode", "state"]

    def setup(self, sparse_mode, state):
        self._setup(self.rows, sparse_mode, state)

    def time_step(self, sparse_mode, state):
        self._step()

    def peakmem_step(self, sparse_mode, state):
        self._step()


class LazyRows(_TableStep):
    """Goal ``cpu-lazy-rows``: a lazy step's cost does not depend on the row count
    (1e7 rows: three resident 2.56 GB arrays)."""

    params: ClassVar[list] = [[100_000, 1_000_000, 10_000_000]]
    param_names: ClassVar[list] = ["rows"]

    def setup(self, rows):
        self._setup(rows, "lazy", "fresh")

    def time_step(self, rows):
        self._step()

    def peakmem_step(self, rows):
        self._step()


class RowwiseLazy(_TableStep):
    """Goal ``cpu-row-lazy``: the lazy step on the (1e6, 64) float32 table
    with one second moment per row (``second_moment="row"``) or per element,
    batches of 4096 Zipf rows; ``peakmem`` shows the smaller state."""

    params: ClassVar[list] = [["element", "row"]]
    param_names: ClassVar[list] = ["second_moment"]

    def setup(self, second_moment):
        self._setup(self.rows, "lazy", "fresh", second_moment)

    def time_step(self, second_moment):
        self._step()

    def peakmem_step(self, second_moment):
        self._step()


#: The goals measurable without PyTorch or optax, by key.
TRACKED_GOALS = [
    g.key for g in GOALS if g.backend == "cpu" and not g.needs_comparison
]


class GoalRatios:
    """The value of each CPU goal that needs only numbadam and NumPy (the probe,
    a careful NumPy step, numbadam's own dense step), as ``numbadam bench
    --quick`` measures and scores it: every case of the goal's families, side
    by side in alternating blocks, in one ``setup_cache``. Where a goal applies
    to several cases, the least favourable value. Ratios of implementations
    timed side by side hold when the machine's speed drifts; raw times do
    not."""

    params: ClassVar[list] = [TRACKED_GOALS]
    param_names: ClassVar[list] = ["goal"]
    timeout = 900  # numbadam bench's quick cases, once

    def setup_cache(self):
        return bench.goal_values(TRACKED_GOALS, quick=True)

    def track_value(self, values, goal):
        return values[goal]

    track_value.unit = "ratio (cpu-fixed-cost: us)"
