"""The multi-tensor dense Adam kernel for the CPU: many variables, one launch.

A list of small variables costs one kernel launch (and its Python overhead) per
variable; :func:`adam_dense_multi_cpu` takes the *addresses* and sizes of every
variable, slot and gradient instead, and runs each variable's dense pass
(the dense kernel's own element arithmetic, so the bits are the same) in
parallel over the variables. Each variable is handled whole by one thread:
results do not depend on the thread count.

The caller guarantees what the addresses stand for: C-contiguous arrays of
the storage dtype of ``proto`` (``uint16`` bits for float16, as in
:mod:`numbadam.kernels.cpu`), of ``sizes[i]`` elements, alive and writable for
the duration of the call, no gradient overlapping a variable or slot.
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, prange, types
from numba.extending import intrinsic, overload

from . import cpu
from .cpu import _PARALLEL, _SERIAL, _dense_run

__all__ = ["adam_dense_multi_cpu", "address_of"]


@intrinsic
def _pointer(typingctx, addr, proto):
    """A typed pointer to ``proto``'s element type at integer address ``addr``."""
    ptrty = types.CPointer(proto.dtype)
    sig = ptrty(addr, proto)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(ptrty))

    return sig, codegen


def _slot_at(ptrs, i, proto, n):
    """``carray`` of the slot at ``ptrs[i]``, or None when ``ptrs`` is None."""


@overload(_slot_at)
def _slot_at_impl(ptrs, i, proto, n):
    if isinstance(ptrs, types.NoneType):
        return lambda ptrs, i, proto, n: None
    return lambda ptrs, i, proto, n: carray(_pointer(ptrs[i], proto), (n,))


def _ema_at(ema, i, proto, n):
    """The EMA argument of variable ``i`` (its average as a ``carray``), or None."""


@overload(_ema_at)
def _ema_at_impl(ema, i, proto, n):
    if isinstance(ema, types.NoneType):
        return lambda ema, i, proto, n: None
    return lambda ema, i, proto, n: (
        carray(_pointer(ema[0][i], proto), (n,)),
        ema[1],
        ema[2],
        ema[3],
    )


@njit(**_SERIAL)
def address_of(a):
    """The address of ``a``'s first element (an int)."""
    return a.ctypes.data


@njit(**_PARALLEL)
def adam_dense_multi_cpu(
    xp, mp, vp, hp, gp, sizes, proto, alpha, omb1, omb2, eps, lo, hi, mul, div, wd,
    ema,
):  # fmt: skip
    """Dense Adam (``hp=None``) or AMSGrad steps of many variables, in place.

    ``xp``, ``mp``, ``vp``, ``hp`` and ``gp`` hold the addresses of each
    variable, its ``m``, ``v`` (``vhat``) and its gradient; ``sizes`` their
    element counts; ``proto`` is an empty array of the storage dtype. Each
    variable takes :func:`numbadam.kernels.cpu.adam_dense_cpu`'s arithmetic
    (written: every variable and its slots), with ``wd`` (None, or
    ``(weight_decay, lr_t)`` for all of them) its weight decay, ``ema`` (None,
    or ``(addresses of the averages, momentum, 1 - momentum, overwrite)``) its
    EMA.
    """
    for i in prange(xp.shape[0]):
        n = sizes[i]
        x = carray(_pointer(xp[i], proto), (n,))
        m = carray(_pointer(mp[i], proto), (n,))
        v = carray(_pointer(vp[i], proto), (n,))
        g = carray(_pointer(gp[i], proto), (n,))
        h = _slot_at(hp, i, proto, n)
        a = _ema_at(ema, i, proto, n)
        _dense_run(x, m, v, h, g, alpha, omb1, omb2, eps, lo, hi, mul, div, wd, a)


def _signatures():
    out = {}
    ptrs = types.Array(types.int64, 1, "C")
    for dt, (s, c) in cpu.STORAGE_DTYPES.items():
        proto = types.Array(s, 1, "C")
        out[dt] = [
            (ptrs, ptrs, ptrs, h, ptrs, ptrs, proto) + (c,) * 8 + (d, a)
            for h in (types.none, ptrs)
            for d in (types.none, types.UniTuple(c, 2))
            for a in (types.none, types.Tuple((ptrs, c, c, types.boolean)))
        ]
    return out


cpu.SIGNATURES["adam_dense_multi_cpu"] = _signatures()
cpu.SIGNATURES["address_of"] = {
    dt: [(types.Array(s, 1, "C", readonly=True),)]
    for dt, (s, _) in cpu.STORAGE_DTYPES.items()
}
cpu.VHAT_ARG["adam_dense_multi_cpu"] = 3
cpu.DECAY_ARG["adam_dense_multi_cpu"] = 15
cpu.EMA_ARG["adam_dense_multi_cpu"] = 16
_ = np  # (numpy is what the callers pass; kept for the type checker)
