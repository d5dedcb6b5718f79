"""Bad input: a clear exception, and nothing at all changed.

Each case calls ``apply_gradients([good, new_good, bad])``: ``good`` updates a
variable whose slots already exist, ``new_good`` a variable seen for the first
time, and ``bad`` (at position 2) is the broken pair. The exception must have the
expected type and name the problem and the position, every variable, slot and
``iterations`` must be bitwise unchanged (and no slot created), and the optimizer
must still take a good step afterwards.
"""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
from helpers import assert_bitwise, assert_unchanged, snapshot, to_device, to_host

import numbadam
from numbadam import IndexedSlices

BAD_POS = 2


def _setup(backend: str, amsgrad: bool = False):
    """An optimizer that took one step on ``a`` and ``b``; ``c`` is new."""
    rng = np.random.default_rng(7)
    a = to_device(rng.standard_normal((5, 3)).astype(np.float32), backend)
    b = to_device(rng.standard_normal((6, 4)).astype(np.float32), backend)
    c = to_device(rng.standard_normal(7).astype(np.float64), backend)
    opt = numbadam.Adam(0.1, amsgrad=amsgrad)
    opt.apply_gradients(
        [
            (to_device(np.ones((5, 3), np.float32), backend), a),
            (to_device(np.ones((6, 4), np.float32), backend), b),
        ]
    )
    goods = [
        (to_device(np.full((5, 3), 0.5, np.float32), backend), a),
        (to_device(np.full(7, -0.5), backend), c),
    ]
    return opt, a, b, c, goods


def _check(
    backend,
    bad_pair_fn,
    exc,
    patterns,
    *,
    variables_extra=(),
    amsgrad=False,
    position_pattern=None,
):
    opt, a, b, c, goods = _setup(backend, amsgrad)
    bad = bad_pair_fn(backend, b)
    variables = [a, b, c, *variables_extra]
    before = snapshot(opt, variables)
    with pytest.raises(exc) as info:
        opt.apply_gradients(goods + [bad])
    msg = str(info.value)
    pos = position_pattern or rf"(variable|item) {BAD_POS}\b"
    assert re.search(pos, msg), f"message does not name the position: {msg!r}"
    for p in patterns:
        assert re.search(p, msg, re.IGNORECASE), f"{p!r} not in {msg!r}"
    assert_unchanged(before, opt, variables)
    with pytest.raises(KeyError):
        opt.get_slot(c, "m")  # c's slots were not created
    # still usable
    out = opt.apply_gradients(goods)
    assert int(out) == 2
    assert not np.array_equal(to_host(a), before["vars"][0])
    assert opt.get_slot(c, "m") is not None
    return info.value


def _dev(arr, backend):
    return to_device(arr, backend)


# ---------------------------------------------------------------------------
# cases on both backends
# ---------------------------------------------------------------------------

BOTH: dict[str, Any] = {
    "shape mismatch": (
        lambda be, b: (_dev(np.ones((6, 3), np.float32), be), b),
        ValueError,
        [r"shape", r"\(6, 3\)", r"\(6, 4\)"],
    ),
    "transposed gradient": (
        lambda be, b: (_dev(np.ones((4, 6), np.float32), be), b),
        ValueError,
        [r"shape"],
    ),
    "int gradient": (
        lambda be, b: (_dev(np.ones((6, 4), np.int32), be), b),
        TypeError,
        [r"int32"],
    ),
    "complex gradient": (
        lambda be, b: (_dev(np.ones((6, 4), np.complex64), be), b),
        TypeError,
        [r"complex64"],
    ),
    "int variable": (
        lambda be, b: (
            _dev(np.ones(3, np.float32), be),
            _dev(np.zeros(3, np.int64), be),
        ),
        TypeError,
        [r"int64"],
    ),
    "complex variable": (
        lambda be, b: (
            _dev(np.ones(3, np.complex128), be),
            _dev(np.zeros(3, np.complex128), be),
        ),
        TypeError,
        [r"complex128"],
    ),
    "sparse index out of range": (
        lambda be, b: (
            IndexedSlices(
                _dev(np.ones((2, 4), np.float32), be),
                _dev(np.array([1, 6]), be),
                (6, 4),
            ),
            b,
        ),
        IndexError,
        [r"\b6\b", r"range|rows"],
    ),
    "sparse negative index": (
        lambda be, b: (
            IndexedSlices(
                _dev(np.ones((2, 4), np.float32), be), _dev(np.array([0, -1]), be)
            ),
            b,
        ),
        IndexError,
        [r"negative|-1"],
    ),
    "sparse float indices": (
        lambda be, b: (
            IndexedSlices(
                _dev(np.ones((2, 4), np.float32), be), _dev(np.array([0.0, 1.0]), be)
            ),
            b,
        ),
        TypeError,
        [r"indices", r"float64"],
    ),
    "sparse 2-D indices": (
        lambda be, b: (
            IndexedSlices(
                _dev(np.ones((2, 4), np.float32), be), _dev(np.array([[0], [1]]), be)
            ),
            b,
        ),
        ValueError,
        [r"indices", r"1-D|shape"],
    ),
    "sparse length mismatch": (
        lambda be, b: (
            IndexedSlices(
                _dev(np.ones((3, 4), np.float32), be), _dev(np.array([0, 1]), be)
            ),
            b,
        ),
        ValueError,
        [r"\b2\b", r"\(3, 4\)"],
    ),
    "sparse row width mismatch": (
        lambda be, b: (
            IndexedSlices(
                _dev(np.ones((2, 5), np.float32), be), _dev(np.array([0, 1]), be)
            ),
            b,
        ),
        ValueError,
        [r"rows|width|shape", r"5"],
    ),
    "sparse dense_shape mismatch": (
        lambda be, b: (
            IndexedSlices(
                _dev(np.ones((2, 4), np.float32), be),
                _dev(np.array([0, 1]), be),
                (7, 4),
            ),
            b,
        ),
        ValueError,
        [r"dense_shape", r"\(7, 4\)"],
    ),
    "sparse int values": (
        lambda be, b: (
            IndexedSlices(
                _dev(np.ones((2, 4), np.int32), be), _dev(np.array([0, 1]), be)
            ),
            b,
        ),
        TypeError,
        [r"int32"],
    ),
    "sparse gradient for a 0-d variable": (
        lambda be, b: (
            IndexedSlices(_dev(np.ones(1, np.float32), be), _dev(np.array([0]), be)),
            _dev(np.zeros((), np.float32), be),
        ),
        ValueError,
        [r"0-d|rows"],
    ),
}


@pytest.mark.parametrize("case", list(BOTH))
def test_bad_pair(backend, case):
    fn, exc, patterns = BOTH[case]
    _check(backend, fn, exc, patterns)


@pytest.mark.parametrize("case", ["shape mismatch", "sparse index out of range"])
def test_bad_pair_amsgrad(backend, case):
    fn, exc, patterns = BOTH[case]
    _check(backend, fn, exc, patterns, amsgrad=True)


def test_same_variable_twice(backend):
    opt, a, b, c, goods = _setup(backend)
    before = snapshot(opt, [a, b, c])
    bad = (to_device(np.ones((5, 3), np.float32), backend), a)
    with pytest.raises(ValueError, match=r"variable 2.*twice.*position 0"):
        opt.apply_gradients(goods + [bad])
    assert_unchanged(before, opt, [a, b, c])
    assert int(opt.apply_gradients(goods)) == 2


@pytest.mark.parametrize("bad_value", ["oops", None, True])
@pytest.mark.parametrize("which", ["learning_rate", "beta_1", "beta_2", "epsilon"])
def test_callable_hyperparameter_returning_string(backend, which, bad_value):
    """A callable hyperparameter that returns a string, None (which np.float32
    would turn into NaN) or a bool: TypeError, nothing changed."""
    opt, a, b, c, goods = _setup(backend)
    value = {"learning_rate": 0.1, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
    state = {"bad": True}

    def fn():
        return bad_value if state["bad"] else value[which]

    if which == "epsilon":
        opt.epsilon = fn
    else:
        setattr(opt, which, fn)
    before = snapshot(opt, [a, b, c])
    with pytest.raises(TypeError) as info:
        opt.apply_gradients(goods)
    assert which in str(info.value) and repr(bad_value) in str(info.value)
    assert_unchanged(before, opt, [a, b, c])
    state["bad"] = False
    assert int(opt.apply_gradients(goods)) == 2


# ---------------------------------------------------------------------------
# host-only cases (no device equivalent)
# ---------------------------------------------------------------------------

HOST: dict[str, Any] = {
    "string variable": (
        lambda be, b: (np.ones(2, np.float32), np.array(["a", "b"])),
        TypeError,
        [r"<U1|str"],
    ),
    "object variable": (
        lambda be, b: (np.ones(2, np.float32), np.array([1.0, None], dtype=object)),
        TypeError,
        [r"object"],
    ),
    "list variable": (
        lambda be, b: (np.ones(2, np.float32), [0.0, 1.0]),
        TypeError,
        [r"list", r"ndarray"],
    ),
    "read-only variable": (
        lambda be, b: (np.ones(3, np.float32), _readonly(np.zeros(3, np.float32))),
        ValueError,
        [r"read-only"],
    ),
    "big-endian variable": (
        lambda be, b: (np.ones(3, np.float32), np.zeros(3, ">f4")),
        TypeError,
        [r"byte order", r">f4"],
    ),
    "big-endian sparse variable": (
        lambda be, b: (
            IndexedSlices(np.ones((1, 2), np.float32), np.array([0]), (3, 2)),
            np.zeros((3, 2), ">f8"),
        ),
        TypeError,
        [r"byte order"],
    ),
    "string gradient": (
        lambda be, b: (np.full((6, 4), "x"), b),
        TypeError,
        [r"<U1|str|dtype"],
    ),
    "object gradient": (
        lambda be, b: (np.full((6, 4), None, dtype=object), b),
        TypeError,
        [r"object"],
    ),
    "ragged list gradient": (
        lambda be, b: ([[1.0, 2.0], [3.0]], b),
        TypeError,
        [r"gradient"],
    ),
    "masked gradient": (
        lambda be, b: (np.ma.masked_greater(np.ones((6, 4), np.float32), 0.5), b),
        TypeError,
        [r"MaskedArray", r"mask"],
    ),
    "masked gradient, nothing masked": (
        lambda be, b: (np.ma.MaskedArray(np.ones((6, 4), np.float32)), b),
        TypeError,
        [r"MaskedArray"],
    ),
    "masked sparse values": (
        lambda be, b: (
            IndexedSlices(
                np.ma.masked_equal(np.ones((2, 4), np.float32), 1.0), np.array([0, 1])
            ),
            b,
        ),
        TypeError,
        [r"IndexedSlices values", r"MaskedArray"],
    ),
    "masked sparse indices": (
        lambda be, b: (
            IndexedSlices(
                np.ones((2, 4), np.float32), np.ma.masked_equal(np.array([0, 1]), 1)
            ),
            b,
        ),
        TypeError,
        [r"indices", r"MaskedArray"],
    ),
    "sparse string indices": (
        lambda be, b: (
            IndexedSlices(np.ones((2, 4), np.float32), np.array(["0", "1"])),
            b,
        ),
        TypeError,
        [r"indices"],
    ),
}


def _readonly(a):
    a.flags.writeable = False
    return a


@pytest.mark.parametrize("case", list(HOST))
def test_bad_host_pair(case):
    fn, exc, patterns = HOST[case]
    _check("cpu", fn, exc, patterns)


@pytest.mark.parametrize(
    "item",
    [
        pytest.param(lambda: (np.ones(3), np.zeros(3), np.zeros(3)), id="3-tuple"),
        pytest.param(lambda: (np.ones(3),), id="1-tuple"),
        pytest.param(lambda: np.zeros(3), id="bare array"),
        pytest.param(lambda: np.eye(2, 3)[::-1].copy(), id="bare 2-row array"),
        pytest.param(lambda: "gw", id="string"),
        pytest.param(lambda: 3.0, id="number"),
    ],
)
def test_malformed_pair(item):
    made = item()
    original = np.array(made, copy=True) if isinstance(made, np.ndarray) else None

    def fn(be, b):
        return made

    _check("cpu", fn, TypeError, [r"pair"], position_pattern=rf"item {BAD_POS}\b")
    if isinstance(made, np.ndarray):
        # a bare array was not taken for a (gradient, variable) pair of its rows
        assert_bitwise(made, original)


def test_variable_none():
    _check(
        "cpu",
        lambda be, b: (np.ones(3), None),
        TypeError,
        [r"None"],
        position_pattern=rf"item {BAD_POS}\b",
    )


def test_not_iterable():
    opt = numbadam.Adam()
    with pytest.raises(TypeError, match="iterable"):
        opt.apply_gradients(42)
    assert opt.weights == []


def test_read_only_gradient_is_fine():
    """Read-only *gradients* are valid input (only variables are written)."""
    g = _readonly(np.ones(3, np.float32))
    w = np.zeros(3, np.float32)
    numbadam.Adam(0.1).apply_gradients([(g, w)])
    assert np.all(w < 0)


def test_build_rejects_bad_variable():
    opt = numbadam.Adam()
    with pytest.raises(TypeError, match="variable 1"):
        opt.build([np.zeros(2, np.float32), np.zeros(2, np.int32)])
    assert opt.weights == []


# ---------------------------------------------------------------------------
# host and device arrays mixed (needs the cuda backend)
# ---------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize(
    "make",
    [
        pytest.param(
            lambda b, host_b: (to_device(np.ones((6, 4), np.float32), "cuda"), host_b),
            id="device gradient, host variable",
        ),
        pytest.param(
            lambda b, host_b: (np.ones((6, 4), np.float32), b),
            id="host gradient, device variable",
        ),
        pytest.param(
            lambda b, host_b: (
                IndexedSlices(np.ones((1, 4), np.float32), np.array([0])),
                b,
            ),
            id="host IndexedSlices, device variable",
        ),
        pytest.param(
            lambda b, host_b: (
                IndexedSlices(
                    to_device(np.ones((1, 4), np.float32), "cuda"),
                    to_device(np.array([0]), "cuda"),
                ),
                host_b,
            ),
            id="device IndexedSlices, host variable",
        ),
    ],
)
def test_mixed_host_and_device(cuda_backend, make):
    host_b = np.zeros((6, 4), np.float32)

    def fn(be, b):
        return make(b, host_b)

    _check("cuda", fn, TypeError, [r"CUDA|device|host"], variables_extra=(host_b,))


@pytest.mark.parametrize(
    "dense_shape, exc, pattern",
    [
        ("abc", TypeError, r"sequence of integers"),
        ((4, 3.5), TypeError, r"sequence of integers"),
        ((4, -1), ValueError, r"negative"),
        (5, TypeError, r"sequence of integers"),
    ],
)
def test_indexed_slices_bad_dense_shape(dense_shape, exc, pattern):
    with pytest.raises(exc, match=pattern):
        IndexedSlices(np.ones((1, 3), np.float32), np.array([0]), dense_shape)


def test_indexed_slices_dense_shape_forms():
    for shape in ([4, 3], np.array([4, 3]), (np.int64(4), np.int32(3))):
        got = IndexedSlices(np.ones((1, 3)), np.array([0]), shape).dense_shape
        assert got == (4, 3) and all(type(d) is int for d in got)


# ---------------------------------------------------------------------------
# hyperparameter ranges (deviation: TF accepts them and steps to NaN weights)
# ---------------------------------------------------------------------------

BAD_CONSTANTS = [
    ("learning_rate", np.nan),
    ("learning_rate", np.inf),
    ("learning_rate", -np.inf),
    ("learning_rate", 1e39),  # finite in float64, inf in float32
    ("beta_1", 1.0),
    ("beta_1", -0.1),
    ("beta_1", np.nan),
    ("beta_1", 1 - 1e-9),  # rounds to 1.0 in float32
    ("beta_2", 1.0),
    ("beta_2", 1.5),
    ("beta_2", -1e-3),
    ("beta_2", np.inf),
    ("epsilon", -1e-7),
    ("epsilon", np.nan),
    ("clipnorm", np.nan),
    ("clipnorm", np.inf),
    ("clipvalue", np.nan),
    ("clipvalue", np.inf),
    ("decay", np.nan),
    ("decay", np.inf),
]


@pytest.mark.parametrize("which, value", BAD_CONSTANTS)
def test_bad_constant_hyperparameter_at_construction(which, value):
    with pytest.raises(ValueError, match=which):
        numbadam.Adam(**{which: value})


@pytest.mark.parametrize("which, value", BAD_CONSTANTS)
def test_bad_constant_hyperparameter_assigned(backend, which, value):
    """Assigning a bad constant to a stepped optimizer raises; nothing changes."""
    opt, a, b, c, goods = _setup(backend)
    before = snapshot(opt, [a, b, c])
    old = getattr(opt, which)
    with pytest.raises(ValueError, match=which):
        setattr(opt, which, value)
    assert getattr(opt, which) == old
    assert_unchanged(before, opt, [a, b, c])
    assert int(opt.apply_gradients(goods)) == 2
    assert np.all(np.isfinite(to_host(a)))


@pytest.mark.parametrize(
    "which, value",
    [
        (w, v)
        for w, v in BAD_CONSTANTS
        if w in ("learning_rate", "beta_1", "beta_2", "epsilon")
    ],
)
def test_bad_callable_hyperparameter_at_step(backend, which, value):
    """A callable returning a bad value raises at the step; nothing changes."""
    opt, a, b, c, goods = _setup(backend)
    good = {"learning_rate": 0.1, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-7}
    state = {"bad": True}
    setattr(opt, which, lambda: value if state["bad"] else good[which])
    before = snapshot(opt, [a, b, c])
    with pytest.raises(ValueError, match=which):
        opt.apply_gradients(goods)
    assert_unchanged(before, opt, [a, b, c])
    with pytest.raises(KeyError):
        opt.get_slot(c, "m")
    state["bad"] = False
    assert int(opt.apply_gradients(goods)) == 2


class _NaNAfter(numbadam.schedules.LearningRateSchedule):
    """NaN from step 1 on (a schedule gone wrong)."""

    def __call__(self, step):
        return np.float32(0.1) if int(step) < 1 else np.float32(np.nan)

    def get_config(self):
        return {}


def test_schedule_returning_nan_at_step():
    opt, a, b, c, goods = _setup("cpu")
    opt.learning_rate = _NaNAfter()
    before = snapshot(opt, [a, b, c])
    with pytest.raises(ValueError, match="learning_rate.*finite"):
        opt.apply_gradients(goods)
    assert_unchanged(before, opt, [a, b, c])


def test_bad_callable_hyperparameter_parameter_buffer():
    buf = numbadam.ParameterBuffer([(3,), (2, 2)])
    buf.grad[...] = 1.0
    opt = numbadam.Adam(lambda: np.nan)
    with pytest.raises(ValueError, match="learning_rate"):
        opt.apply_gradients(buf.grads_and_vars())
    assert opt.weights == [] and not np.any(buf.data)


@pytest.mark.parametrize(
    "kwargs", [{"beta_1": 0.0}, {"beta_2": 0.0}, {"epsilon": 0.0}, {"decay": 0.0}]
)
def test_edge_hyperparameters_are_valid(kwargs):
    w = np.ones(3, np.float32)
    numbadam.Adam(0.1, **kwargs).apply_gradients([(np.ones(3, np.float32), w)])
    assert np.all(np.isfinite(w)) and np.all(w < 1)


# ---------------------------------------------------------------------------
# slots the user made unusable
# ---------------------------------------------------------------------------


def _freeze(slot):
    slot.flags.writeable = False


def _reshape(slot):
    slot.shape = (slot.size,)


@pytest.mark.parametrize(
    "spoil, pattern",
    [(_freeze, r"read-only"), (_reshape, r"shape \(24,\)")],
    ids=["read-only", "reshaped"],
)
@pytest.mark.parametrize("slot_name", ["m", "v", "vhat"])
@pytest.mark.parametrize("sparse", [False, True], ids=["dense", "sparse"])
def test_spoilt_slot(slot_name, spoil, pattern, sparse):
    """A read-only or reshaped slot: ValueError naming it, nothing changed."""
    opt, a, b, c, goods = _setup("cpu", amsgrad=True)
    slot = opt.get_slot(b, slot_name)
    spoil(slot)
    if sparse:
        g = IndexedSlices(np.ones((2, 4), np.float32), np.array([0, 3]), (6, 4))
    else:
        g = np.ones((6, 4), np.float32)
    before = snapshot(opt, [a, b, c])
    with pytest.raises(ValueError) as info:
        opt.apply_gradients(goods + [(g, b)])
    msg = str(info.value)
    assert f"slot {slot_name!r}" in msg and "variable 2" in msg, msg
    assert re.search(pattern, msg), msg
    assert_unchanged(before, opt, [a, b, c])
    with pytest.raises(KeyError):
        opt.get_slot(c, "m")
    assert int(opt.apply_gradients(goods)) == 2  # b not in it: fine


def test_read_only_slot_with_none_gradient_is_skipped():
    opt, a, b, c, goods = _setup("cpu")
    _freeze(opt.get_slot(b, "m"))
    assert int(opt.apply_gradients(goods + [(None, b)])) == 2


def test_read_only_flat_slot_parameter_buffer():
    buf = numbadam.ParameterBuffer([(3,), (2, 2)])
    buf.grad[...] = 1.0
    opt = numbadam.Adam(0.1)
    opt.apply_gradients(buf.grads_and_vars())
    flat_m = opt.get_slot(buf.params[0], "m").base
    while flat_m.base is not None:
        flat_m = flat_m.base
    assert flat_m.size == buf.data.size
    flat_m.flags.writeable = False
    before = snapshot(opt, [buf.data])
    with pytest.raises(ValueError, match=r"slot 'm' of ParameterBuffer.*read-only"):
        opt.apply_gradients(buf.grads_and_vars())
    assert_unchanged(before, opt, [buf.data])
    flat_m.flags.writeable = True
    assert int(opt.apply_gradients(buf.grads_and_vars())) == 2


# ---------------------------------------------------------------------------
# run-time knobs of numbadam._config
# ---------------------------------------------------------------------------

KNOBS = [
    "CPU_BLOCK",
    "CPU_SERIAL_MAX",
    "CPU_SPARSE_BLOCK_ROWS",
    "NORM_CHUNKS",
    "CUDA_THREADS_PER_BLOCK",
    "CUDA_MAX_BLOCKS",
]


@pytest.mark.parametrize("bad", [0, -1, 64.0, "64", True])
@pytest.mark.parametrize("knob", KNOBS)
def test_bad_knob(backend, knob, bad):
    """A knob set to 0, a negative or a non-int: ValueError naming it before
    anything changes (CPU_BLOCK = 0 made each step a counted no-op)."""
    from numbadam import _config

    if knob == "CPU_SERIAL_MAX" and bad == 0:
        bad = -5  # 0 is valid there: never take the serial kernel
    opt, a, b, c, goods = _setup(backend)
    sparse = (
        IndexedSlices(
            _dev(np.ones((2, 4), np.float32), backend),
            _dev(np.array([0, 3]), backend),
        ),
        b,
    )
    setattr(_config, knob, bad)
    before = snapshot(opt, [a, b, c])
    with pytest.raises(ValueError, match=rf"_config\.{knob}\b"):
        opt.apply_gradients(goods + [sparse])
    assert_unchanged(before, opt, [a, b, c])
    with pytest.raises(KeyError):
        opt.get_slot(c, "m")
    _config.reset()
    assert int(opt.apply_gradients(goods + [sparse])) == 2


def test_bad_knob_parameter_buffer():
    from numbadam import _config

    buf = numbadam.ParameterBuffer([(3,), (2, 2)])
    buf.grad[...] = 1.0
    opt = numbadam.Adam(0.1)
    _config.CPU_BLOCK = 0
    with pytest.raises(ValueError, match="CPU_BLOCK"):
        opt.apply_gradients(buf.grads_and_vars())
    assert opt.weights == [] and not np.any(buf.data)


def test_serial_max_zero_is_valid():
    from numbadam import _config

    _config.CPU_SERIAL_MAX = 0
    w = np.ones(5, np.float32)
    numbadam.Adam(0.1).apply_gradients([(np.ones(5, np.float32), w)])
    assert np.all(w < 1)


# ---------------------------------------------------------------------------
# gradients whose memory overlaps their variable (NumPy's ufunc rule: as if
# the gradient had been copied first)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("n", [50, 40000])  # the serial and the parallel path
@pytest.mark.parametrize("amsgrad", [False, True])
def test_gradient_overlapping_its_variable_acts_as_a_copy(n, amsgrad):
    rng = np.random.default_rng(n)
    buf = rng.standard_normal(n + 1).astype(np.float32)
    twin = buf.copy()
    opt = numbadam.Adam(0.1, amsgrad=amsgrad)
    ref = numbadam.Adam(0.1, amsgrad=amsgrad)
    for _ in range(2):
        opt.apply_gradients([(buf[:-1], buf[1:])])
        ref.apply_gradients([(twin[:-1].copy(), twin[1:])])
    assert_bitwise(buf, twin, "variable")
    assert_bitwise(opt.get_slot(buf[1:], "m"), ref.get_slot(twin[1:], "m"), "m")


@pytest.mark.parametrize("mode", ["dense", "lazy"])
def test_sparse_values_viewing_the_table_act_as_a_copy(mode):
    rng = np.random.default_rng(3)
    table = rng.standard_normal((40, 8)).astype(np.float32)
    twin = table.copy()
    idx = np.array([3, 4, 5, 6, 4])
    opt = numbadam.Adam(0.1, sparse_mode=mode)
    ref = numbadam.Adam(0.1, sparse_mode=mode)
    for _ in range(2):
        # values are rows 2..6 of the table itself, updated by the step
        opt.apply_gradients([(IndexedSlices(table[2:7], idx, table.shape), table)])
        vals = twin[2:7].copy()
        ref.apply_gradients([(IndexedSlices(vals, idx, twin.shape), twin)])
    assert_bitwise(table, twin, "table")


@pytest.mark.parametrize("bad", [1e19, 2**63, float("nan"), float("inf"), -1, 1.5, True])
def test_iterations_setter_refuses_what_int64_cannot_hold(bad):
    # 1e19 raised OverflowError (not ValueError) when stored; NaN raised from int()
    opt = numbadam.Adam()
    opt.iterations = 5
    with pytest.raises(ValueError, match="iterations"):
        opt.iterations = bad
    assert int(opt.iterations) == 5
