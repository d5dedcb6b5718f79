"""``numbadam bench`` cases of the step's features: AdamW, EMA, accumulation.

Each case is a float32 variable of ``n`` elements, timed through
``apply_gradients`` side by side with a Numba probe moving the same bytes
(:mod:`numbadam.kernels.probe`) and, when installed, what a PyTorch user
writes for the same thing:

- ``adamw``: ``numbadam.AdamW`` (28 bytes per element, as a plain step: the
  decay reads the variable the step reads anyway) against the 4-read, 3-write
  probe, numbadam's plain ``Adam`` and ``torch.optim.AdamW(fused=True)``;
- ``ema``: ``Adam(use_ema=True)`` (36 bytes: the average is read and written)
  against the 5-read, 4-write probe and a fused torch ``Adam`` step followed
  by ``average.lerp_(param, 1 - momentum)`` (an EMA as torch users keep one);
- ``accumulate``: an accumulating call of ``gradient_accumulation_steps``
  (12 bytes: read ``g`` and the accumulator, write the accumulator) against
  the 2-read, 1-write probe and ``param.grad.add_(g)`` (what ``backward()``
  does when gradients are accumulated in torch); and the applying call of a
  cycle of two (a plain step that also reads the accumulator: 32 bytes)
  against a plain step (28), the cycle's accumulating call run untimed
  before each timed one.
"""

from __future__ import annotations

from typing import Any, Callable, Dict

import numpy as np

import numbadam
from numbadam import _config
from numbadam.kernels import probe

from ._case import Case, repeat_for
from .timer import Timed

__all__ = ["accumulate_case", "adamw_case", "ema_case"]

F32 = np.float32
#: AdamW's decay and the EMA's momentum in the cases (Keras 3's defaults).
WEIGHT_DECAY = 0.004
EMA_MOMENTUM = 0.99
#: A cycle long enough that every timed call accumulates.
NEVER = 1 << 40


def _problem(n: int):
    rng = np.random.default_rng(0)
    return rng.standard_normal(n, dtype=F32), rng.standard_normal(n, dtype=F32)


def _step(opt: Any, n: int) -> Callable[[], Any]:
    x, g = _problem(n)
    pairs = [(g, x)]
    return lambda: opt.apply_gradients(pairs)


def _torch_params(torch, n: int):
    p = torch.zeros(n, dtype=torch.float32, requires_grad=True)
    p.grad = torch.randn(n, dtype=torch.float32)
    return p


def adamw_case(n: int, quick: bool, torch) -> Case:
    """AdamW's dense step: 28 bytes per element, as a plain step."""
    case = Case(f"adamw float32 n={n:.0e}", "adamw", 28 * n, "28 bytes/element")
    arrs = [np.ones(n, F32) for _ in range(4)]
    block = _config.CPU_BLOCK
    fns: Dict[str, Callable[[], Any]] = {
        "numbadam": _step(numbadam.AdamW(1e-3, weight_decay=WEIGHT_DECAY), n),
        "probe": lambda: probe.triad_4r3w(*arrs, block),
        "numbadam-adam": _step(numbadam.Adam(1e-3), n),
    }
    if torch is not None:
        p = _torch_params(torch, n)
        topt = torch.optim.AdamW([p], lr=1e-3, weight_decay=WEIGHT_DECAY, fused=True)
        fns["torch-fused"] = topt.step
    case.add_interleaved(fns, repeat_for(case.nbytes, quick))
    return case


def ema_case(n: int, quick: bool, torch) -> Case:
    """A dense step with ``use_ema``: 36 bytes per element."""
    case = Case(f"ema float32 n={n:.0e}", "ema", 36 * n, "36 bytes/element")
    arrs = [np.ones(n, F32) for _ in range(5)]
    block = _config.CPU_BLOCK
    opt = numbadam.Adam(1e-3, use_ema=True, ema_momentum=EMA_MOMENTUM)
    fns: Dict[str, Callable[[], Any]] = {
        "numbadam": _step(opt, n),
        "probe": lambda: probe.triad_5r4w(*arrs, block),
    }
    if torch is not None:
        p = _torch_params(torch, n)
        avg = p.detach().clone()
        topt = torch.optim.Adam([p], lr=1e-3, fused=True)

        def torch_step():
            topt.step()
            with torch.no_grad():
                avg.lerp_(p, 1 - EMA_MOMENTUM)

        fns["torch-fused+lerp_"] = torch_step
    case.add_interleaved(fns, repeat_for(case.nbytes, quick))
    return case


def accumulate_case(n: int, quick: bool, torch) -> Case:
    """Gradient accumulation: an accumulating call (12 bytes per element) and
    an applying call (a plain step's 28 bytes and the accumulator's 4)."""
    case = Case(
        f"accumulate float32 n={n:.0e}", "accumulate", 12 * n,
        "12 bytes/element (applying call 32, plain step 28)",
    )  # fmt: skip
    a, b = (np.ones(n, F32) for _ in range(2))
    block = _config.CPU_BLOCK
    cycle = _step(numbadam.Adam(1e-3, gradient_accumulation_steps=2), n)
    fns: Dict[str, Timed] = {
        "numbadam-accumulating": _step(
            numbadam.Adam(1e-3, gradient_accumulation_steps=NEVER), n
        ),
        "probe": lambda: probe.triad_2r1w(a, b, block),
        # N = 2: the first call of each cycle accumulates (untimed), the
        # second applies the mean
        "numbadam-applying": (cycle, cycle),
        "numbadam-adam": _step(numbadam.Adam(1e-3), n),
    }
    if torch is not None:
        p = _torch_params(torch, n)
        g = torch.randn(n, dtype=torch.float32)
        fns["torch-grad-add_"] = lambda: p.grad.add_(g)
    case.add_interleaved(fns, repeat_for(case.nbytes, quick))
    case.moves("numbadam-applying", 32 * n)
    case.moves("numbadam-adam", 28 * n)
    return case
