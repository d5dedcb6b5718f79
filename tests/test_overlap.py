"""Variables sharing memory in one call: refused, with nothing changed.

Two variables of one ``apply_gradients`` call that overlap (views of one
array), a variable whose elements alias each other, and a variable that is
(a view of) one of the optimizer's slots raise ``ValueError`` naming them;
every variable, slot and ``iterations`` stays bitwise unchanged and the
optimizer keeps working. Views that do not overlap (columns, disjoint slices,
nested ``as_strided`` views) step exactly as copies of them would.

The primitives of ``numbadam._overlap`` are checked against brute force: the
set of bytes each element of a strided view covers.
"""

from __future__ import annotations

import re

import numpy as np
import pytest
from helpers import assert_bitwise, assert_unchanged, snapshot, to_device, to_host
from hypothesis import given, settings
from hypothesis import strategies as st

import numbadam
from numbadam import IndexedSlices, _overlap

as_strided = np.lib.stride_tricks.as_strided


# ---------------------------------------------------------------------------
# the primitives, against brute force
# ---------------------------------------------------------------------------


def _bytes(a: np.ndarray) -> list:
    """The addresses of every byte of every element of ``a`` (repeats kept)."""
    offs = [a.__array_interface__["data"][0]]
    for n, s in zip(a.shape, a.strides):
        offs = [o + i * s for o in offs for i in range(n)]
    return [o + k for o in offs for k in range(a.itemsize)] if a.size else []


_BUF = np.zeros(64, np.float32)  # 256 bytes


@st.composite
def _views(draw, max_dim=3):
    """A writable strided view of ``_BUF`` (any strides, zero and negative too)."""
    ndim = draw(st.integers(0, max_dim))
    itemsize = _BUF.itemsize
    shape = tuple(draw(st.integers(1, 4)) for _ in range(ndim))
    strides = tuple(draw(st.integers(-6, 6)) * itemsize for _ in range(ndim))
    lo = sum(min(0, s * (n - 1)) for n, s in zip(shape, strides))
    hi = sum(max(0, s * (n - 1)) for n, s in zip(shape, strides)) + itemsize
    start = draw(st.integers(-lo // itemsize, (_BUF.nbytes - hi) // itemsize))
    return as_strided(_BUF[start:], shape, strides)


@settings(deadline=None, max_examples=300)
@given(a=_views(), b=_views())
def test_overlaps_matches_brute_force(a, b):
    assert _overlap.overlaps(a, b) == bool(set(_bytes(a)) & set(_bytes(b)))


@settings(deadline=None, max_examples=300)
@given(a=_views(max_dim=4))
def test_internal_overlap_matches_brute_force(a):
    offs = _bytes(a)
    assert _overlap.internal_overlap(a) == (len(set(offs)) != len(offs))


def test_memory_of_a_cuda_array_interface():
    """Device pointers: the interval, in the device space, never dereferenced."""

    class Fake:
        def __init__(self, ptr, shape, strides=None):
            self.__cuda_array_interface__ = {
                "data": (ptr, False), "shape": shape, "strides": strides,
                "typestr": "<f4", "version": 3,
            }  # fmt: skip

    # (an address no host array has: reading it would crash the process)
    ptr = 1 << 47
    whole = Fake(ptr, (3, 4))
    space, lo, hi, host = _overlap.memory(whole)
    assert (space, lo, hi) == (_overlap.DEVICE, ptr, ptr + 48)
    col0, col1 = Fake(ptr, (3,), (16,)), Fake(ptr + 4, (3,), (16,))
    assert not _overlap.overlaps(col0, col1)
    assert _overlap.overlaps(whole, col1)
    assert not _overlap.overlaps(whole, Fake(ptr + 48, (2,)))
    assert _overlap.memory(Fake(ptr, (0, 4))) is None
    # a host array at the same number is another address space
    assert not _overlap.overlaps(whole, np.zeros(3))


# ---------------------------------------------------------------------------
# the optimizer: overlapping variables
# ---------------------------------------------------------------------------


def _setup(backend, amsgrad=False):
    """An optimizer that took one step on ``a`` (5, 3) and ``b`` (6, 4); ``c`` new."""
    rng = np.random.default_rng(11)
    a = to_device(rng.standard_normal((5, 3)).astype(np.float32), backend)
    b = to_device(rng.standard_normal((6, 4)).astype(np.float32), backend)
    c = to_device(rng.standard_normal(7).astype(np.float64), backend)
    opt = numbadam.Adam(0.1, amsgrad=amsgrad)
    opt.apply_gradients(
        [(to_device(np.ones(x.shape, np.float32), backend), x) for x in (a, b)]
    )
    goods = [
        (to_device(np.full((5, 3), 0.5, np.float32), backend), a),
        (to_device(np.full(7, -0.5), backend), c),
    ]
    return opt, a, b, c, goods


def _grad_for(var, backend):
    return to_device(np.ones(tuple(var.shape), np.float32), backend)


def _refused(backend, make, patterns, *, amsgrad=False, extra=()):
    """``goods + make(...)`` raises ValueError matching ``patterns``; nothing
    changes, twice (the second time through the variables' cached intervals);
    ``goods`` alone then steps."""
    opt, a, b, c, goods = _setup(backend, amsgrad)
    bad = make(opt, b, backend)
    variables = [a, b, c, *extra]
    before = snapshot(opt, variables)
    for _ in range(2):
        with pytest.raises(ValueError) as info:
            opt.apply_gradients(goods + bad)
        msg = str(info.value)
        for p in patterns:
            assert re.search(p, msg), f"{p!r} not in {msg!r}"
        assert_unchanged(before, opt, variables)
        with pytest.raises(KeyError):
            opt.get_slot(c, "m")
    assert int(opt.apply_gradients(goods)) == 2
    assert not np.array_equal(to_host(a), before["vars"][0])


def _pair(view_a, view_b):
    """Pairs for two views of ``b``, at positions 2 and 3."""

    def make(opt, b, backend):
        va, vb = view_a(b), view_b(b)
        return [(_grad_for(va, backend), va), (_grad_for(vb, backend), vb)]

    return make


OVERLAPPING = {
    "w and w.reshape(-1)": _pair(lambda b: b, lambda b: b.reshape(24)),
    "w and w.T": _pair(lambda b: b, lambda b: b.T),
    "w.reshape(-1)[:-1] and [1:]": _pair(
        lambda b: b.reshape(24)[:-1], lambda b: b.reshape(24)[1:]
    ),
    "overlapping column blocks": _pair(lambda b: b[:, :3], lambda b: b[:, 2:]),
    "a row inside the table": _pair(lambda b: b[3], lambda b: b),
}


@pytest.mark.parametrize("case", list(OVERLAPPING))
def test_overlapping_variables_are_refused(backend, case):
    _refused(
        backend,
        OVERLAPPING[case],
        [r"variable 3 \(.*\) overlaps variable 2 \(", r"memory"],
    )


def test_overlapping_sparse_and_dense_variables_are_refused(backend):
    def make(opt, b, backend):
        g = IndexedSlices(
            to_device(np.ones((2, 4), np.float32), backend),
            to_device(np.array([0, 5]), backend),
        )
        flat = b.reshape(24)
        return [(g, b), (_grad_for(flat, backend), flat)]

    _refused(backend, make, [r"variable 3 .* overlaps variable 2 "])


def test_overlap_with_an_earlier_good_pair_is_found(backend):
    """The overlap is between position 0 (``a``, a good pair) and position 2."""
    opt, a, b, c, goods = _setup(backend)
    view = a.reshape(15)
    before = snapshot(opt, [a, b, c])
    with pytest.raises(ValueError, match=r"variable 2 .* overlaps variable 0 "):
        opt.apply_gradients(goods + [(_grad_for(view, backend), view)])
    assert_unchanged(before, opt, [a, b, c])


def test_none_gradient_for_an_overlapping_view_is_fine():
    """A variable with a None gradient is not written: it may overlap."""
    opt, a, b, c, goods = _setup("cpu")
    assert int(opt.apply_gradients(goods + [(None, a.reshape(15))])) == 2


# ---------------------------------------------------------------------------
# views that do not overlap step as copies would
# ---------------------------------------------------------------------------


DISJOINT = {
    "columns": lambda t: [t[:, 0], t[:, 1], t[:, 3]],
    "halves": lambda t: [t[:3], t[3:]],
    "flat halves": lambda t: [t.reshape(24)[:12], t.reshape(24)[12:]],
    "reversed rows, even and odd": lambda t: [t[::-2], t[-2::-2]],
    "interleaved non-nested strides": lambda t: [
        as_strided(t.reshape(24)[k:], (3, 2), (8, 12)) for k in (1,)
    ]
    + [t.reshape(24)[16:]],
}


@pytest.mark.parametrize("case", list(DISJOINT))
def test_disjoint_views_step_like_copies(case):
    rng = np.random.default_rng(5)
    table = rng.standard_normal((6, 4)).astype(np.float32)
    twin = table.copy()
    views, twins = DISJOINT[case](table), DISJOINT[case](twin)
    grads = [rng.standard_normal(v.shape).astype(np.float32) for v in views]
    copies = [t.copy() for t in twins]
    opt, ref = numbadam.Adam(0.1), numbadam.Adam(0.1)
    for _ in range(3):
        opt.apply_gradients(list(zip(grads, views)))
        ref.apply_gradients(list(zip(grads, copies)))
    for v, c in zip(views, copies):
        assert_bitwise(v, c, case)
    # (elements outside every view: unchanged)
    for c, t in zip(copies, twins):
        t[...] = c
    assert_bitwise(table, twin, "table")


@pytest.mark.cuda
def test_disjoint_device_columns_step(cuda_backend):
    rng = np.random.default_rng(6)
    host = rng.standard_normal((6, 4)).astype(np.float32)
    d = to_device(host, "cuda")
    opt = numbadam.Adam(0.1)
    cols = [d[:, 0], d[:, 2]]
    opt.apply_gradients([(_grad_for(c, "cuda"), c) for c in cols])
    out = to_host(d)
    assert np.all(out[:, [0, 2]] < host[:, [0, 2]])
    assert_bitwise(out[:, [1, 3]], host[:, [1, 3]])


def test_parameter_buffer_views_with_clipnorm():
    """clipnorm steps a ParameterBuffer pair by pair: views of one buffer."""
    buf = numbadam.ParameterBuffer([(3,), (2, 2), (5,)])
    rng = np.random.default_rng(2)
    buf.data[...] = rng.standard_normal(buf.data.size)
    buf.grad[...] = rng.standard_normal(buf.data.size)
    copies = [p.copy() for p in buf.params]
    opt = numbadam.Adam(0.1, clipnorm=0.5)
    ref = numbadam.Adam(0.1, clipnorm=0.5)
    for _ in range(2):
        opt.apply_gradients(buf.grads_and_vars())
        ref.apply_gradients(list(zip(buf.grads, copies)))
    for p, c in zip(buf.params, copies):
        assert_bitwise(p, c)


# ---------------------------------------------------------------------------
# a variable overlapping itself
# ---------------------------------------------------------------------------


def _writeable_broadcast():
    x = np.broadcast_to(np.zeros(4, np.float32), (3, 4))
    x.flags.writeable = True
    return x


SELF = {
    "broadcast_to made writeable": _writeable_broadcast,
    "as_strided zero stride": lambda: as_strided(
        np.zeros(3, np.float32), (4, 3), (0, 4)
    ),
    "as_strided diagonal alias": lambda: as_strided(
        np.zeros(9, np.float32), (3, 3), (4, 4)
    ),
    "as_strided half-element step": lambda: as_strided(
        np.zeros(8, np.float64), (4,), (4,)
    ),
}


@pytest.mark.parametrize("case", list(SELF))
def test_variable_overlapping_itself_is_refused(case):
    x = SELF[case]()
    holder = x
    while isinstance(holder.base, np.ndarray):
        holder = holder.base
    raw = holder.copy()

    def make(opt, b, backend):
        return [(np.ones(x.shape, x.dtype), x)]

    _refused("cpu", make, [r"variable 2 \(.*\) overlaps itself", r"strides"])
    assert_bitwise(holder, raw, "the aliased memory")


# ---------------------------------------------------------------------------
# one of the optimizer's slots as a variable
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "view",
    [lambda s: s, lambda s: s[2], lambda s: s.reshape(24)[5:9], lambda s: s.T],
    ids=["slot", "row", "flat slice", "transpose"],
)
@pytest.mark.parametrize("name", ["m", "v", "vhat"])
def test_slot_as_variable_is_refused(backend, name, view):
    def make(opt, b, be):
        s = view(opt.get_slot(b, name))
        return [(_grad_for(s, be), s)]

    _refused(
        backend,
        make,
        [rf"variable 2 \(.*\) shares memory with this optimizer's slot '{name}' "
         r"of the variable of shape \(6, 4\), float32"],  # fmt: skip
        amsgrad=True,
    )


def test_parameter_buffer_flat_slot_as_variable_is_refused():
    buf = numbadam.ParameterBuffer([(3,), (2, 2)])
    buf.grad[...] = 1.0
    opt = numbadam.Adam(0.1)
    opt.apply_gradients(buf.grads_and_vars())
    flat_v = opt.get_slot(buf.params[1], "v").base
    while flat_v.base is not None:
        flat_v = flat_v.base
    before = snapshot(opt, [buf.data])
    for var, pattern in [
        (flat_v, r"slot 'v' of a ParameterBuffer \(7 elements\)"),
        (flat_v[3:], r"slot 'v' of the variable of shape \(2, 2\)"),
    ]:
        with pytest.raises(ValueError, match=pattern):
            opt.apply_gradients([(np.ones(var.shape, np.float32), var)])
        assert_unchanged(before, opt, [buf.data])
    assert int(opt.apply_gradients(buf.grads_and_vars())) == 2


def test_another_optimizers_slot_is_a_variable():
    """Only this optimizer's slots are refused (another's are just arrays)."""
    w = np.zeros(3, np.float32)
    first = numbadam.Adam(0.1)
    first.apply_gradients([(np.ones(3, np.float32), w)])
    m = first.get_slot(w, "m")
    m0 = m.copy()
    numbadam.Adam(0.1).apply_gradients([(np.ones(3, np.float32), m)])
    assert np.all(m < m0)


# ---------------------------------------------------------------------------
# the distributed optimizers (one process)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["DistributedAdam", "ShardedAdam"])
def test_distributed_optimizers_refuse_overlaps(kind):
    from numbadam import distributed

    w = np.zeros((3, 4), np.float32)
    g = np.ones((3, 4), np.float32)
    opt = getattr(distributed, kind)(learning_rate=0.1, comm="self")
    opt.apply_gradients([(g, w)])
    before = snapshot(opt, [w])
    with pytest.raises(ValueError, match=r"variable 1 .* overlaps variable 0 "):
        opt.apply_gradients([(g, w), (g.reshape(12), w.reshape(12))])
    m = opt.get_slot(w, "m")
    with pytest.raises(ValueError, match=r"slot 'm' of the variable of shape \(3, 4\)"):
        opt.apply_gradients([(np.ones(m.shape, np.float32), m)])
    assert_unchanged(before, opt, [w])
    assert int(opt.apply_gradients([(g, w)])) == 2


# ---------------------------------------------------------------------------
# CUDA: a gradient overlapping its own variable acts as a copy (the CPU rule)
# ---------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("amsgrad", [False, True])
def test_cuda_gradient_overlapping_its_variable_acts_as_a_copy(cuda_backend, amsgrad):
    rng = np.random.default_rng(4)
    host = rng.standard_normal(301).astype(np.float32)  # beyond threads x blocks
    buf, twin = to_device(host, "cuda"), to_device(host, "cuda")
    opt = numbadam.Adam(0.1, amsgrad=amsgrad)
    ref = numbadam.Adam(0.1, amsgrad=amsgrad)
    # (one view object each: the simulator's arrays are keyed by identity)
    var, twin_var = buf[1:], twin[1:]
    for _ in range(2):
        opt.apply_gradients([(buf[:-1], var)])
        copy = to_device(to_host(twin)[:-1], "cuda")
        ref.apply_gradients([(copy, twin_var)])
    assert_bitwise(buf, twin, "variable")
    assert_bitwise(opt.get_slot(var, "m"), ref.get_slot(twin_var, "m"), "m")


@pytest.mark.cuda
@pytest.mark.parametrize("mode", ["dense", "lazy"])
def test_cuda_sparse_values_viewing_the_table_act_as_a_copy(cuda_backend, mode):
    rng = np.random.default_rng(3)
    host = rng.standard_normal((40, 8)).astype(np.float32)
    table, twin = to_device(host, "cuda"), to_device(host, "cuda")
    idx = to_device(np.array([3, 4, 5, 6, 4]), "cuda")
    opt = numbadam.Adam(0.1, sparse_mode=mode)
    ref = numbadam.Adam(0.1, sparse_mode=mode)
    for _ in range(2):
        opt.apply_gradients([(IndexedSlices(table[2:7], idx, host.shape), table)])
        vals = to_device(to_host(twin)[2:7], "cuda")
        ref.apply_gradients([(IndexedSlices(vals, idx, host.shape), twin)])
    assert_bitwise(table, twin, "table")


# ---------------------------------------------------------------------------
# a gradient viewing what the step writes (another variable of the call, a
# slot) acts as a copy of it, NumPy's rule for overlapping operands
# ---------------------------------------------------------------------------


def _viewing_step(backend, source, count, grad, copy):
    """The last variable's values after a call whose last gradient is rows 1..4
    of ``source`` (of the first variable, stepped earlier in the same call):
    the array itself or (``copy``) a copy taken before the call."""
    rng = np.random.default_rng(11)
    first = to_device(rng.standard_normal((8, 3)).astype(np.float32), backend)
    rest = [
        to_device(rng.standard_normal((4, 3)).astype(np.float32), backend)
        for _ in range(count - 1)
    ]
    variables = [first] + rest
    grads = [
        to_device(rng.standard_normal(tuple(v.shape)).astype(np.float32), backend)
        for v in variables
    ]
    opt = numbadam.Adam(0.1, sparse_mode="lazy" if grad == "lazy" else "dense")
    for _ in range(3):  # (slots exist; a list of ten: the multi-tensor launch)
        opt.apply_gradients(list(zip(grads, variables)))
    src = first if source == "variable" else opt.get_slot(first, source)
    view = src[1:5]
    if copy:
        view = to_device(to_host(view), backend)
    if grad != "dense":
        idx = to_device(np.arange(4), backend)
        view = IndexedSlices(view, idx, (4, 3))
    opt.apply_gradients(list(zip(grads[:-1] + [view], variables)))
    return to_host(variables[-1]), to_host(opt.get_slot(variables[-1], "v"))


@pytest.mark.parametrize("grad", ["dense", "tf", "lazy"])
@pytest.mark.parametrize("count", [2, 10])
@pytest.mark.parametrize("source", ["variable", "m", "v"])
def test_gradient_viewing_written_memory_acts_as_a_copy(backend, source, count, grad):
    got = _viewing_step(backend, source, count, grad, copy=False)
    want = _viewing_step(backend, source, count, grad, copy=True)
    assert_bitwise(got[0], want[0], "variable")
    assert_bitwise(got[1], want[1], "slot v")
