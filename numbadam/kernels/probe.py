"""Memory-bandwidth probes with the access pattern of an Adam step.

They move exactly the bytes a fused step moves and do no other work, so their
bandwidth is the practical floor a step can reach on the machine: the
benchmark reports the optimizer's speed as a fraction of it.
"""

from __future__ import annotations

from numba import njit, prange

_JIT = dict(parallel=True, cache=True, error_model="numpy", nogil=True)


@njit(**_JIT)
def triad_4r3w(x, g, m, v, block):
    """Read ``x, g, m, v``; write ``x, m, v`` (28 bytes/element in float32)."""
    n = x.shape[0]
    nblocks = (n + block - 1) // block
    for b in prange(nblocks):
        s = b * block
        e = min(s + block, n)
        xb, gb, mb, vb = x[s:e], g[s:e], m[s:e], v[s:e]
        for j in range(e - s):
            gj = gb[j]
            mb[j] = mb[j] + gj
            vb[j] = vb[j] + gj
            xb[j] = xb[j] + gj


@njit(**_JIT)
def triad_5r4w(x, g, m, v, h, block):
    """Read ``x, g, m, v, h``; write ``x, m, v, h`` (AMSGrad's 36 bytes/element)."""
    n = x.shape[0]
    nblocks = (n + block - 1) // block
    for b in prange(nblocks):
        s = b * block
        e = min(s + block, n)
        xb, gb, mb, vb, hb = x[s:e], g[s:e], m[s:e], v[s:e], h[s:e]
        for j in range(e - s):
            gj = gb[j]
            mb[j] = mb[j] + gj
            vb[j] = vb[j] + gj
            hb[j] = hb[j] + gj
            xb[j] = xb[j] + gj


@njit(**_JIT)
def copy(src, dst, block):
    """``dst[:] = src`` (8 bytes/element in float32)."""
    n = src.shape[0]
    nblocks = (n + block - 1) // block
    for b in prange(nblocks):
        s = b * block
        e = min(s + block, n)
        sb, db = src[s:e], dst[s:e]
        for j in range(e - s):
            db[j] = sb[j]


@njit(**_JIT)
def triad_2r1w(a, g, block):
    """Read ``a, g``; write ``a`` (12 bytes/element in float32: the pattern of
    an accumulating call of gradient accumulation)."""
    n = a.shape[0]
    nblocks = (n + block - 1) // block
    for b in prange(nblocks):
        s = b * block
        e = min(s + block, n)
        ab, gb = a[s:e], g[s:e]
        for j in range(e - s):
            ab[j] = ab[j] + gb[j]
