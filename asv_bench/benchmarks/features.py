"""The features of #13 through ``apply_gradients``, float32, on the CPU.

AdamW's decoupled weight decay (28 bytes per element, as a plain step),
the EMA of the weights (36 bytes), gradient accumulation (an accumulating
call: 12 bytes; a cycle of two calls: 12 + 32; a sparse cycle of four
calls), and the PyTorch anchors
(``torch.optim.AdamW(fused=True)``, a fused step plus ``lerp_`` for the
EMA), skipped where PyTorch is not installed. ``numbadam bench --family
adamw --family ema --family accumulate`` times the same cases side by side
with the probes; :class:`speed_goals.GoalRatios` tracks their goals.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

import numbadam

from .common import SIZES, dense_problem, rng, zipf_batches

#: Keras 3's defaults.
WEIGHT_DECAY = 0.004
EMA_MOMENTUM = 0.99


class _Step:
    params: ClassVar[list] = [SIZES]
    param_names: ClassVar[list] = ["size"]
    kwargs: ClassVar[dict] = {}

    def setup(self, size):
        var, grad = dense_problem(size, "float32")
        self.pairs = [(grad, var)]
        self.opt = self.make()
        self.opt.apply_gradients(self.pairs)

    def make(self):
        return numbadam.Adam(1e-3, **self.kwargs)

    def time_step(self, size):
        self.opt.apply_gradients(self.pairs)


class AdamWStep(_Step):
    """``numbadam.AdamW(weight_decay=0.004)``: 28 bytes per element."""

    def make(self):
        return numbadam.AdamW(1e-3, weight_decay=WEIGHT_DECAY)


class EmaStep(_Step):
    """``Adam(use_ema=True)``: 36 bytes per element."""

    kwargs: ClassVar[dict] = {"use_ema": True, "ema_momentum": EMA_MOMENTUM}


class AccumulatingCall(_Step):
    """An accumulating call (``acc = acc + g``, every call): 12 bytes."""

    kwargs: ClassVar[dict] = {"gradient_accumulation_steps": 1 << 40}


class AccumulationCycle(_Step):
    """A cycle of ``gradient_accumulation_steps=2``: one accumulating call and
    one applying call (12 + 32 bytes per element)."""

    kwargs: ClassVar[dict] = {"gradient_accumulation_steps": 2}

    def setup(self, size):
        super().setup(size)
        self.opt.apply_gradients(self.pairs)  # (the cycle's end)

    def time_step(self, size):
        self.opt.apply_gradients(self.pairs)
        self.opt.apply_gradients(self.pairs)


class SparseAccumulationCycle:
    """A cycle of ``gradient_accumulation_steps=4`` with IndexedSlices: three
    calls keep their slices, the fourth sums the cycle's rows (the CPU
    kernel) and takes one lazy step, on a (1e5, 64) float32 table and 4096
    Zipf ids per call."""

    ROWS, WIDTH, IDS, STEPS = 100_000, 64, 4096, 4

    def setup(self):
        rows, width = self.ROWS, self.WIDTH
        self.table = np.zeros((rows, width), np.float32)
        r = rng()
        self.grads = [
            numbadam.IndexedSlices(
                r.standard_normal((self.IDS, width), dtype=np.float32), ids,
                (rows, width),
            )
            for ids in zipf_batches(rows, self.IDS, self.STEPS)
        ]  # fmt: skip
        self.opt = numbadam.Adam(
            1e-3, sparse_mode="lazy", gradient_accumulation_steps=self.STEPS
        )
        self.time_cycle()  # (compiled, the table's rows warm)

    def time_cycle(self):
        for g in self.grads:
            self.opt.apply_gradients([(g, self.table)])


def _torch():
    try:
        import torch
    except ImportError:
        raise NotImplementedError("PyTorch is not installed") from None
    torch.set_num_threads(numbadam.get_num_threads())
    return torch


class TorchAdamWFused:
    """Anchor: ``torch.optim.AdamW(fused=True)`` on one CPU tensor."""

    params: ClassVar[list] = [SIZES]
    param_names: ClassVar[list] = ["size"]

    def setup(self, size):
        torch = _torch()
        var, grad = dense_problem(size, "float32")
        self.param = torch.nn.Parameter(torch.from_numpy(var))
        self.param.grad = torch.from_numpy(grad)
        self.opt = torch.optim.AdamW(
            [self.param], lr=1e-3, weight_decay=WEIGHT_DECAY, fused=True
        )
        self.opt.step()

    def time_step(self, size):
        self.opt.step()


class TorchFusedAdamLerpEma(TorchAdamWFused):
    """Anchor of the EMA: a fused ``torch.optim.Adam`` step, then
    ``average.lerp_(param, 1 - momentum)``."""

    def setup(self, size):
        torch = _torch()
        var, grad = dense_problem(size, "float32")
        self.torch = torch
        self.param = torch.nn.Parameter(torch.from_numpy(var))
        self.param.grad = torch.from_numpy(grad)
        self.avg = self.param.detach().clone()
        self.opt = torch.optim.Adam([self.param], lr=1e-3, fused=True)
        self.time_step(size)

    def time_step(self, size):
        self.opt.step()
        with self.torch.no_grad():
            self.avg.lerp_(self.param, 1 - EMA_MOMENTUM)
