"""Cached launches of the CPU backend: what comes back call after call.

A mixin of :class:`numbadam._backend_cpu.CPUBackend` (it uses the backend's
``_kernel``, ``_k`` and ``_k_multi``), for the optimizer's cached launches
(:mod:`numbadam._cached`):

- :class:`MultiWork`: the same list of small dense variables, stepped by one
  multi-tensor launch;
- :class:`DensePlan`: one variable's plain dense step (no clipping, decay,
  average or accumulation) with its kernel arguments kept.

Each is built once from a validated step and checks every pair of a call
again (:meth:`CachedLaunches.prepare_multi`, :meth:`CachedLaunches.plan_gradient`):
the gradient's type, dtype, shape and layout, the variable's and the slots'
shapes and flags, and that the gradient views nothing the launch writes. A
call that does not pass takes the general path, which validates and
explains. The kernels and their arguments are the general path's, so the
results are the same bits.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import numpy as np

from . import _config
from ._backend import Decay, Transform, compute_dtype, identity_transform
from ._types import AdamCoefficients

__all__ = ["CachedLaunches", "DensePlan", "MultiWork", "MULTI_MIN", "kernel_view"]

#: Lists of at least this many dense variables (each at most
#: ``_config.CPU_SERIAL_MAX`` elements) that come back call after call are
#: stepped by one multi-tensor launch.
MULTI_MIN = 8

# the slots a launch writes, without and with AMSGrad
_SLOTS = {False: ("m", "v"), True: ("m", "v", "vhat")}


def kernel_view(a: np.ndarray) -> np.ndarray:
    """``a`` as the kernels take it: Numba's CPU target has no float16, so a
    float16 array goes as its raw bits (uint16)."""
    return a.view(np.uint16) if a.dtype.char == "e" else a


class MultiWork:
    """The same list of small dense variables, stepped by one launch.

    Built once from a validated step (:meth:`CachedLaunches.multi_work`); holds the
    variables (so their addresses stay taken), their slots' and their
    addresses. Per call, :meth:`CachedLaunches.prepare_multi` checks every pair
    again and gathers the gradients' addresses into ``gp``. ``flat`` is an
    empty array of the variables' dtype (what the pipeline reads the dtype
    from); ``vars`` and ``shapes`` are what each call must pass again.
    """

    __slots__ = (
        "vars", "shapes", "slots", "flat", "proto", "xp", "mp", "vp", "hp", "gp",
        "sizes", "starts", "ends", "amsgrad", "label", "ep",
    )  # fmt: skip


class DensePlan:
    """One variable's plain dense step, its kernel arguments kept.

    Built from a validated step of a C-contiguous NumPy variable with
    element-wise slots (:meth:`CachedLaunches.dense_plan`). ``var``,
    ``shape`` and ``dtype`` are what each call must pass again, ``dtypes``
    the set of them the coefficients hook takes; ``names`` and ``slots`` the
    slot arrays it writes, ``views`` their flat kernel views; ``written``
    the byte intervals of the variable and slots (a gradient viewing them
    takes the general path, which copies it).
    """

    __slots__ = (
        "var", "shape", "dtype", "dtypes", "cdt", "named", "amsgrad", "kernel",
        "head", "tail", "address", "written", "own", "half",
    )  # fmt: skip


class CachedLaunches:
    """The cached launches of the CPU backend (a mixin of CPUBackend)."""

    _kernel: Any
    _k: Any
    _k_multi: Any

    # -- one variable's plain dense step ------------------------------------

    def dense_plan(
        self, var: Any, work: Any, slots: Dict[str, Any], amsgrad: bool
    ) -> Optional[DensePlan]:
        """A :class:`DensePlan` for variable ``var`` (as the call passed it),
        its validated dense work and its slots, or None when they do not
        qualify (a staged or empty variable, a subclass of ndarray, slots
        other than ``m``, ``v`` (and ``vhat``), or not of the variable's
        shape)."""
        if (type(var) is not np.ndarray or work.var is not var or work.staged
                or var.size == 0):
            return None  # fmt: skip
        names = _SLOTS[bool(amsgrad)]
        if len(slots) != len(names):
            return None
        arrays = []
        for name in names:
            s = slots.get(name)
            if (type(s) is not np.ndarray or s.shape != var.shape
                    or s.dtype is not var.dtype or not s.flags.carray):
                return None  # fmt: skip
            arrays.append(s)
        p = DensePlan()
        p.var, p.shape, p.dtype, p.dtypes = var, var.shape, var.dtype, {var.dtype}
        p.cdt = compute_dtype(var.dtype)
        p.named = tuple(zip(names, arrays))
        p.amsgrad = amsgrad
        dense = self._k.adam_dense_cpu
        p.kernel = self._kernel(dense, var.dtype, amsgrad, False, False)
        views = [kernel_view(s.reshape(-1)) for s in arrays]
        # the kernel's arguments before the gradient and after the coefficients
        p.head = (kernel_view(work.flat), views[0], views[1],
                  views[2] if amsgrad else None)  # fmt: skip
        p.tail = identity_transform(var.dtype) + (None, None)
        p.address = self._kernel(self._k_multi.address_of, var.dtype)
        nbytes = var.nbytes
        written = p.head[:3] + tuple(views[2:])
        p.written = [(a, a + nbytes) for a in map(p.address, written)]
        p.own = var.base is None
        p.half = var.dtype.char == "e"
        return p

    def plan_gradient(self, p: DensePlan, g: Any, slots: Dict[str, Any]) -> Any:
        """The kernel view of gradient ``g`` when this call may take plan
        ``p`` (``slots``: the variable's slots now), else None (nothing
        done)."""
        shape = p.shape
        if type(g) is not np.ndarray or g.dtype is not p.dtype or g.shape != shape:
            return None
        var = p.var
        if var.shape != shape or not var.flags.carray or not g.flags.c_contiguous:
            return None
        if len(slots) != len(p.named):
            return None
        dtype = p.dtype
        for name, s in p.named:
            if (slots.get(name) is not s or s.shape != shape or s.dtype is not dtype
                    or not s.flags.carray):
                return None  # fmt: skip
        gk = g if g.ndim == 1 else g.reshape(-1)
        if p.half:
            gk = gk.view(np.uint16)
        if g.base is not None or not p.own:  # (a view: of what is written?)
            a = p.address(gk)
            b = a + g.nbytes
            for lo, hi in p.written:
                if a < hi and lo < b:
                    return None
        return gk

    def plan_step(self, p: DensePlan, gk: Any, coef: AdamCoefficients) -> None:
        """The step of plan ``p`` with the gradient of :meth:`plan_gradient`:
        :meth:`CPUBackend.dense_step`'s launch, the same kernel and
        arguments."""
        p.kernel(*p.head, gk, *coef, *p.tail, _config.CPU_BLOCK,
                 _config.CPU_SERIAL_MAX)  # fmt: skip

    # -- many small variables, one launch -------------------------------------

    def multi_work(self, variables, slot_lists, amsgrad: bool) -> Optional[MultiWork]:
        """A :class:`MultiWork` for these validated variables, or None when they
        do not qualify (fewer than :data:`MULTI_MIN`, mixed dtypes, not
        C-contiguous, larger than ``CPU_SERIAL_MAX``, sharing memory)."""
        n = len(variables)
        if n < MULTI_MIN:
            return None
        dtype = variables[0].dtype
        names = _SLOTS[bool(amsgrad)]
        limit = _config.CPU_SERIAL_MAX
        for var, slots in zip(variables, slot_lists):
            if (type(var) is not np.ndarray or var.dtype is not dtype
                    or not var.flags.c_contiguous or var.size > limit
                    or var.size == 0 or any(k not in slots for k in names)):
                return None  # fmt: skip
        addr = self._kernel(self._k_multi.address_of, dtype)
        kv = kernel_view
        w = MultiWork()
        w.vars = list(variables)
        w.shapes = [v.shape for v in variables]
        w.slots = [[slots[k] for k in names] for slots in slot_lists]
        w.flat = np.empty(0, dtype)
        w.proto = kv(w.flat)
        w.xp = np.array([addr(kv(v.reshape(-1))) for v in variables], np.int64)
        w.mp = np.array([addr(kv(s[0].reshape(-1))) for s in w.slots], np.int64)
        w.vp = np.array([addr(kv(s[1].reshape(-1))) for s in w.slots], np.int64)
        w.hp = (
            np.array([addr(kv(s[2].reshape(-1))) for s in w.slots], np.int64)
            if amsgrad else None
        )  # fmt: skip
        w.gp = np.zeros(n, np.int64)
        w.sizes = np.array([v.size for v in variables], np.int64)
        w.amsgrad = amsgrad
        w.ep = None  # (the averages' addresses: set_multi_averages)
        if not self._written(w):
            return None  # variables sharing memory take the general path
        w.label = f"{n} variables of {dtype}"
        return w

    def prepare_multi(self, w: MultiWork, pairs: Any) -> bool:
        """Check every pair of this call against ``w`` and gather the gradients'
        addresses; False (nothing written but ``w.gp``) sends the call down
        the general path, which validates and explains."""
        variables, shapes = w.vars, w.shapes
        if len(pairs) != len(variables):
            return False
        dtype = w.flat.dtype
        put = self._kernel(self._k_multi.address_of, dtype)
        gp = w.gp
        for slots in w.slots:
            for s in slots:
                if not s.flags.writeable:
                    return False
        i = 0
        for item in pairs:
            if type(item) is not tuple or len(item) != 2:
                return False
            g, var = item
            if (var is not variables[i] or type(g) is not np.ndarray
                    or g.dtype is not dtype or g.shape != shapes[i]
                    or var.shape != shapes[i] or not g.flags.c_contiguous
                    or not var.flags.writeable):
                return False  # fmt: skip
            a = put(kernel_view(g if g.ndim == 1 else g.reshape(-1)))
            if g.base is not None and self._hits(w, a, g.nbytes):
                return False  # a view of what is written: as a copy, there
            gp[i] = a
            i += 1
        return True

    @staticmethod
    def _written(w: MultiWork) -> bool:
        # The sorted byte intervals of everything the launch writes (the
        # variables, their slots and averages) into w.starts / w.ends; False
        # if two of them meet (then variables share memory).
        starts = np.concatenate(
            [p for p in (w.xp, w.mp, w.vp, w.hp, w.ep) if p is not None]
        )
        sizes = np.tile(w.sizes, starts.shape[0] // w.sizes.shape[0])
        order = np.argsort(starts, kind="stable")
        w.starts = starts[order]
        w.ends = w.starts + sizes[order] * w.flat.dtype.itemsize
        return not (w.ends[:-1] > w.starts[1:]).any()

    @staticmethod
    def _hits(w: MultiWork, a: int, nbytes: int) -> bool:
        # Does [a, a + nbytes) meet any written bytes? (bounds, sorted)
        k = int(np.searchsorted(w.starts, a + nbytes, side="left"))
        return k > 0 and w.ends[k - 1] > a

    def set_multi_averages(self, w: MultiWork, averages: Any) -> None:
        """Give ``w`` the EMA averages of its variables (in order), or None."""
        if averages is None:
            w.ep = None
        else:
            addr = self._kernel(self._k_multi.address_of, w.flat.dtype)
            kv = kernel_view
            w.slots = [s[:3] + [a] for s, a in zip(w.slots, averages)]
            w.ep = np.array([addr(kv(a.reshape(-1))) for a in averages], np.int64)
        self._written(w)  # (what a gradient must not view)

    def dense_multi_step(
        self,
        w: MultiWork,
        coef: AdamCoefficients,
        tr: Transform,
        wd: Decay = None,
        ema: Any = None,
    ):
        """One launch over every variable of ``w`` (after :meth:`prepare_multi`);
        ``ema`` is None or ``(momentum, one_minus_momentum, overwrite)`` for
        the averages of :meth:`set_multi_averages`."""
        dtype = w.flat.dtype
        ea = None if ema is None else (w.ep,) + tuple(ema)
        k = self._kernel(
            self._k_multi.adam_dense_multi_cpu, dtype, w.amsgrad, wd is not None,
            ea is not None,
        )  # fmt: skip
        k(w.xp, w.mp, w.vp, w.hp, w.gp, w.sizes, w.proto, *coef, *tr, wd, ea)

