"""The EMA of the weights (``use_ema``, numbadam/_ema.py), beyond the numerics
table (rows ``ema*`` of ``tests/cases.py``).

The bitwise tests run an EMA optimizer next to a plain one: the Adam step is
the same (the EMA changes the variables only on an overwrite), so the plain
optimizer's variables are the ones the averages follow, and the average is
checked against an independent NumPy twin in the compute dtype, ``(momentum *
average) + ((1 - momentum) * var)`` with Keras 3's scalars (``ema_momentum``
cast to the variable's dtype, ``1 - momentum`` computed there, 0 at
``iterations == 0``), rounded once to float16.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from helpers import assert_bitwise, assert_close, to_device, to_host
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import SparseGrad, run_accumulation_reference

import numbadam
from numbadam import IndexedSlices, ParameterBuffer

DTYPES = [np.float16, np.float32, np.float64]


def compute(dtype):
    return np.dtype(np.float32) if np.dtype(dtype) == np.float16 else np.dtype(dtype)


def twin_average(avg, var, dtype, momentum, iteration):
    """The NumPy twin of one EMA update (Keras 3's scalars, compute dtype)."""
    t, c = np.dtype(dtype).type, compute(dtype).type
    mom = t(0) if iteration == 0 else t(momentum)
    omm = t(1) - mom
    a = np.asarray(avg).astype(compute(dtype))
    x = np.asarray(var).astype(compute(dtype))
    return ((c(mom) * a) + (c(omm) * x)).astype(dtype)


def _grads(rng, shape, dtype, steps):
    return [np.array(rng.standard_normal(shape), dtype) for _ in range(steps)]


# ---------------------------------------------------------------------------
# arguments, config
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, pattern",
    [
        ({"ema_momentum": 1.5}, ValueError, r"ema_momentum.*\[0, 1\]"),
        ({"ema_momentum": -0.1}, ValueError, r"ema_momentum.*\[0, 1\]"),
        ({"ema_momentum": math.nan}, ValueError, r"ema_momentum"),
        ({"ema_momentum": "0.9"}, TypeError, r"ema_momentum"),
        ({"ema_overwrite_frequency": 0}, ValueError, r"ema_overwrite_frequency"),
        ({"ema_overwrite_frequency": -2}, ValueError, r"ema_overwrite_frequency"),
        ({"ema_overwrite_frequency": 2.0}, ValueError, r"ema_overwrite_frequency"),
        ({"ema_overwrite_frequency": True}, ValueError, r"ema_overwrite_frequency"),
        ({"use_ema": "yes"}, TypeError, r"use_ema"),
    ],
)
@pytest.mark.parametrize("cls", [numbadam.Adam, numbadam.AdamW])
def test_bad_arguments(cls, kwargs, exc, pattern):
    kwargs = {"use_ema": True, **kwargs}
    with pytest.raises(exc, match=pattern):
        cls(**kwargs)


@pytest.mark.parametrize(
    "attr, value", [("ema_momentum", 2.0), ("ema_momentum", math.nan),
                    ("ema_overwrite_frequency", 0)]
)  # fmt: skip
def test_setters_refuse_and_change_nothing(attr, value):
    opt = numbadam.Adam(use_ema=True, ema_momentum=0.5, ema_overwrite_frequency=3)
    with pytest.raises(ValueError, match=attr):
        setattr(opt, attr, value)
    assert (opt.ema_momentum, opt.ema_overwrite_frequency) == (0.5, 3)


def test_config_keras_keys_and_round_trip():
    assert "use_ema" not in numbadam.Adam().get_config()  # (tf-keras' config)
    opt = numbadam.AdamW(use_ema=True, ema_momentum=0.75, ema_overwrite_frequency=5)
    cfg = opt.get_config()
    assert cfg["use_ema"] is True
    assert (cfg["ema_momentum"], cfg["ema_overwrite_frequency"]) == (0.75, 5)
    twin = numbadam.AdamW.from_config(cfg)
    assert (twin.use_ema, twin.ema_momentum, twin.ema_overwrite_frequency) == (
        True, 0.75, 5,
    )  # fmt: skip
    assert twin.get_config() == cfg


# ---------------------------------------------------------------------------
# the average, bit for bit, on every path
# ---------------------------------------------------------------------------


def _side_by_side(momentum, freq, **kw):
    """An EMA optimizer and its plain twin."""
    ema = numbadam.Adam(
        0.05, use_ema=True, ema_momentum=momentum, ema_overwrite_frequency=freq, **kw
    )
    plain = numbadam.Adam(0.05, **kw)
    return ema, plain


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("freq", [None, 3])
def test_dense_average_bitwise(dtype, freq):
    rng = np.random.default_rng([1, DTYPES.index(dtype), freq or 0])
    x0 = np.array(rng.standard_normal((7, 5)), dtype)
    x, y = x0.copy(), x0.copy()
    ema, plain = _side_by_side(0.9, freq)
    avg = np.zeros_like(x0)
    for it, g in enumerate(_grads(rng, x0.shape, dtype, 6)):
        ema.apply_gradients([(g, x)])
        plain.apply_gradients([(g, y)])
        avg = twin_average(avg, y, dtype, 0.9, it)
        assert_bitwise(ema.get_slot(x, "average"), avg, f"average, step {it + 1}")
        if freq and (it + 1) % freq == 0:
            assert_bitwise(x, avg, f"overwritten, step {it + 1}")
            y[...] = x  # (the plain one continues from the overwritten values)
        else:
            assert_bitwise(x, y, f"var, step {it + 1}")
    for name in ("m", "v"):
        assert_bitwise(ema.get_slot(x, name), plain.get_slot(y, name), name)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lazy", [False, True], ids=["tf_rule", "lazy"])
def test_sparse_average_bitwise(dtype, lazy):
    rng = np.random.default_rng([2, DTYPES.index(dtype), lazy])
    rows, width = 40, 3
    x0 = np.array(rng.standard_normal((rows, width)), dtype)
    x, y = x0.copy(), x0.copy()
    mode = {"sparse_mode": "lazy"} if lazy else {}
    ema, plain = _side_by_side(0.8, 4, **mode)
    avg = x0.copy() if lazy else np.zeros_like(x0)  # (lazy: the variable's copy)
    for it in range(5):
        idx = rng.integers(0, rows // 2, 6)  # duplicates; the upper half unlisted
        vals = np.array(rng.standard_normal((6, width)), dtype)
        ema.apply_gradients([(IndexedSlices(vals, idx, x0.shape), x)])
        plain.apply_gradients([(IndexedSlices(vals, idx, x0.shape), y)])
        new = twin_average(avg, y, dtype, 0.8, it)
        if lazy:
            moved = np.zeros(rows, bool)
            moved[idx] = True
            new = np.where(moved[:, None], new, avg)
        avg = new
        assert_bitwise(ema.get_slot(x, "average"), avg, f"average, step {it + 1}")
        if (it + 1) % 4 == 0:
            want = np.where(moved[:, None], avg, y) if lazy else avg
            assert_bitwise(x, want, f"overwritten, step {it + 1}")
            y[...] = x
        else:
            assert_bitwise(x, y, f"var, step {it + 1}")
    if lazy:  # rows never listed: the average is the variable, bit for bit
        assert_bitwise(ema.get_slot(x, "average")[rows // 2 :], x0[rows // 2 :])


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_multi_tensor_and_buffer_paths_bitwise(dtype):
    # A list of 9 small variables, the same call after call: the multi-tensor
    # launch from the third step on; a ParameterBuffer: one flat pass. Both
    # give what the general path (one kernel per variable) gives.
    rng = np.random.default_rng(3)
    shapes = [(4,), (3, 2), (5,), (2, 2), (1,), (6,), (3,), (2, 3), (4,)]
    x0 = [np.array(rng.standard_normal(s), dtype) for s in shapes]
    grads = [
        [np.array(rng.standard_normal(s), dtype) for s in shapes] for _ in range(5)
    ]
    kw = dict(use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=4)
    runs = {}
    for path in ("single", "multi", "buffer"):
        opt = numbadam.Adam(0.05, **kw)
        if path == "buffer":
            buf = ParameterBuffer.from_arrays(x0, dtype)
            xs = list(buf.params)
        else:
            xs = [a.copy() for a in x0]
        for gs in grads:
            if path == "single":  # (not a list: never the multi-tensor launch)
                opt.apply_gradients(zip(gs, xs))
            elif path == "multi":
                opt.apply_gradients(list(zip(gs, xs)))
            else:
                for g, dst in zip(gs, buf.grads):
                    dst[...] = g
                opt.apply_gradients(buf.grads_and_vars())
        if path == "multi":
            assert opt._multi is not None, "the multi-tensor path was not taken"
        runs[path] = (xs, [opt.get_slot(x, "average") for x in xs])
    for path in ("multi", "buffer"):
        for i in range(len(shapes)):
            assert_bitwise(runs[path][0][i], runs["single"][0][i], f"{path} var {i}")
            assert_bitwise(runs[path][1][i], runs["single"][1][i], f"{path} avg {i}")


@settings(max_examples=25, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    momentum=st.floats(0.0, 1.0),
    freq=st.one_of(st.none(), st.integers(1, 4)),
    steps=st.integers(1, 5),
    seed=st.integers(0, 2**16),
)
def test_average_is_the_twin_for_any_momentum(dtype, momentum, freq, steps, seed):
    rng = np.random.default_rng(seed)
    x0 = np.array(rng.standard_normal(11), dtype)
    x, y = x0.copy(), x0.copy()
    ema, plain = _side_by_side(momentum, freq)
    avg = np.zeros_like(x0)
    for it in range(steps):
        g = np.array(rng.standard_normal(11), dtype)
        ema.apply_gradients([(g, x)])
        plain.apply_gradients([(g, y)])
        avg = twin_average(avg, y, dtype, momentum, it)
        assert_bitwise(ema.get_slot(x, "average"), avg, f"average, step {it + 1}")
        if freq and (it + 1) % freq == 0:
            y[...] = avg
        assert_bitwise(x, y, f"var, step {it + 1}")


@settings(max_examples=30, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    momentum=st.sampled_from([0.0, 0.5, 1.0]),
    steps=st.integers(1, 5),
    seed=st.integers(0, 2**16),
    lazy=st.booleans(),
)
def test_average_of_a_constant_is_that_constant(dtype, momentum, steps, seed, lazy):
    # Zero gradients leave the variable as it is (m = v = 0: the step is
    # (0 * alpha) / (0 + eps) = 0). The first step makes the average the
    # variable (momentum 0: 0 * 0 + 1 * x); afterwards, for a momentum of 0,
    # 1/2 or 1, (m * x) + ((1 - m) * x) is x exactly (halving a normal number
    # is exact), so the average stays the variable bit for bit. (For other
    # momenta it need not: 0.99 * x + 0.01 * x can be an ulp off x.)
    rng = np.random.default_rng(seed)
    x = np.array(rng.uniform(0.5, 4.0, (6, 2)) * rng.choice([-1, 1], (6, 2)), dtype)
    x0 = x.copy()
    opt = numbadam.Adam(
        0.1, use_ema=True, ema_momentum=momentum,
        sparse_mode="lazy" if lazy else "dense",
    )  # fmt: skip
    for _ in range(steps):
        opt.apply_gradients([(np.zeros_like(x), x)])
        assert_bitwise(x, x0, "variable")
        assert_bitwise(opt.get_slot(x, "average"), x0, "average")


# ---------------------------------------------------------------------------
# state: weights, checkpoints, finalize, the accumulation hook
# ---------------------------------------------------------------------------


def _trained(amsgrad=False, steps=3):
    rng = np.random.default_rng(4)
    xs = [np.array(rng.standard_normal(s), np.float32) for s in [(3, 2), (4,)]]
    opt = numbadam.Adam(0.05, amsgrad=amsgrad, use_ema=True, ema_momentum=0.9)
    for _ in range(steps):
        opt.apply_gradients([(np.array(rng.standard_normal(x.shape), np.float32), x)
                             for x in xs])  # fmt: skip
    return opt, xs, rng


@pytest.mark.parametrize("amsgrad", [False, True])
def test_weights_order_and_round_trip(amsgrad):
    opt, xs, rng = _trained(amsgrad)
    names = ["m", "v"] + (["vhat"] if amsgrad else []) + ["average"]
    expected = [opt.iterations] + [opt.get_slot(x, n) for n in names for x in xs]
    assert [id(w) for w in opt.weights] == [id(w) for w in expected]
    twin_vars = [x.copy() for x in xs]
    twin = numbadam.Adam.from_config(opt.get_config())
    twin.build(twin_vars)
    twin.set_weights(opt.get_weights())
    gs = [np.array(rng.standard_normal(x.shape), np.float32) for x in xs]
    opt.apply_gradients(list(zip(gs, xs)))
    twin.apply_gradients(list(zip(gs, twin_vars)))
    for a, b in zip(opt.get_weights(), twin.get_weights()):
        assert_bitwise(a, b)


def test_checkpoint_round_trip(tmp_path):
    opt, xs, rng = _trained()
    path = tmp_path / "ema.npz"
    numbadam.save_checkpoint(path, opt, xs)
    ck = numbadam.load_checkpoint(path)
    twin, twin_vars = ck.optimizer, [ck.variables[str(i)] for i in range(len(xs))]
    assert twin.use_ema and twin.ema_momentum == 0.9
    gs = [np.array(rng.standard_normal(x.shape), np.float32) for x in xs]
    opt.apply_gradients(list(zip(gs, xs)))
    twin.apply_gradients(list(zip(gs, twin_vars)))
    for x, y in zip(xs, twin_vars):
        assert_bitwise(y, x)
        assert_bitwise(twin.get_slot(y, "average"), opt.get_slot(x, "average"))


def test_finalize_variable_values():
    opt, xs, _ = _trained()
    avgs = [opt.get_slot(x, "average").copy() for x in xs]
    assert not any(np.array_equal(x, a) for x, a in zip(xs, avgs))
    stranger = np.zeros(2, np.float32)
    before = [x.copy() for x in xs]
    with pytest.raises(ValueError, match="variable 1 has no EMA average"):
        opt.finalize_variable_values([xs[0], stranger])
    for x, b in zip(xs, before):  # nothing written
        assert_bitwise(x, b)
    opt.finalize_variable_values(xs)
    for x, a in zip(xs, avgs):
        assert_bitwise(x, a)
    plain = numbadam.Adam()
    w = np.ones(2, np.float32)
    plain.apply_gradients([(np.ones(2, np.float32), w)])
    w_before = w.copy()
    plain.finalize_variable_values([w])  # no EMA: nothing to do
    assert_bitwise(w, w_before)


# ---------------------------------------------------------------------------
# CUDA (the simulator without a GPU): the CPU's bits
# ---------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", ["dense", "sparse", "lazy"])
@pytest.mark.parametrize("accumulate", [None, 2])
def test_cuda_equals_cpu(cuda_backend, dtype, kind, accumulate):
    rng = np.random.default_rng([6, DTYPES.index(dtype), len(kind)])
    rows, width = 37, 3
    x0 = np.array(rng.standard_normal((rows, width)), dtype)
    mode = {"sparse_mode": "lazy"} if kind == "lazy" else {}
    kw = dict(use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=3, **mode)
    kw["gradient_accumulation_steps"] = accumulate
    cpu_opt, dev_opt = numbadam.Adam(0.05, **kw), numbadam.Adam(0.05, **kw)
    xc, xd = x0.copy(), to_device(x0.copy(), cuda_backend)
    for _ in range(7 if accumulate else 4):
        if kind == "dense":
            g = np.array(rng.standard_normal(x0.shape), dtype)
            gc, gd = g, to_device(g, cuda_backend)
        else:
            idx = rng.integers(0, rows, 8)
            vals = np.array(rng.standard_normal((8, width)), dtype)
            gc = IndexedSlices(vals, idx, x0.shape)
            gd = IndexedSlices(
                to_device(vals, cuda_backend), to_device(idx, cuda_backend), x0.shape
            )
        cpu_opt.apply_gradients([(gc, xc)])
        dev_opt.apply_gradients([(gd, xd)])
        assert_bitwise(to_host(xd), xc, "var")
        assert_bitwise(
            to_host(dev_opt.get_slot(xd, "average")), cpu_opt.get_slot(xc, "average")
        )


def test_distributed_replicated_and_sharded_ema():
    from numbadam.distributed import DistributedAdam, ShardedAdam

    rng = np.random.default_rng(13)
    x0 = np.array(rng.standard_normal(6), np.float32)
    x, y = x0.copy(), x0.copy()
    kw = dict(use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=2)
    dist, local = DistributedAdam(0.05, comm="self", **kw), numbadam.Adam(0.05, **kw)
    for _ in range(3):
        g = np.array(rng.standard_normal(6), np.float32)
        dist.apply_gradients([(g, x)])
        local.apply_gradients([(g, y)])
    assert_bitwise(x, y)
    assert_bitwise(dist.get_slot(x, "average"), local.get_slot(y, "average"))
    # ShardedAdam: its slices of the averages (tests/test_distributed.py runs
    # it at 1, 2 and 4 ranks); finalize_variable_values as Adam's
    z = x0.copy()
    sharded = ShardedAdam(0.05, comm="self", **kw)
    rng = np.random.default_rng(13)
    rng.standard_normal(6)
    for _ in range(3):
        sharded.apply_gradients([(np.array(rng.standard_normal(6), np.float32), z)])
    assert_bitwise(z, y)
    assert_bitwise(sharded.get_slot(z, "average"), local.get_slot(y, "average"))
    sharded.finalize_variable_values([z])
    local.finalize_variable_values([y])
    assert_bitwise(z, y)
    with pytest.raises(ValueError, match="no EMA average"):
        sharded.finalize_variable_values([np.zeros(2, np.float32)])


# ---------------------------------------------------------------------------
# with gradient accumulation: Keras 3 moves the averages on every call
# ---------------------------------------------------------------------------


def _sparse_grads(rng, rows, width, dtype, calls, k=5):
    out = []
    for _ in range(calls):
        idx = rng.integers(0, rows, k)
        out.append((idx, np.array(rng.standard_normal((k, width)), dtype)))
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["dense", "sparse", "lazy"])
@pytest.mark.parametrize("n, freq", [(2, None), (3, 2), (2, 1)])
def test_with_accumulation_to_reference(dtype, kind, n, freq):
    # (float16: bitwise against the twin below, and CUDA == CPU)
    rng = np.random.default_rng([21, DTYPES.index(dtype), len(kind), n])
    rows, width, calls = 11, 3, 4 * n + 1  # (ends mid-cycle)
    x0 = np.array(rng.standard_normal((rows, width)), dtype)
    mode = {"sparse_mode": "lazy"} if kind == "lazy" else {}
    opt = numbadam.Adam(
        0.05, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=freq,
        gradient_accumulation_steps=n, **mode,
    )  # fmt: skip
    x = x0.copy()
    if kind == "dense":
        grads = _grads(rng, x0.shape, dtype, calls)
        feed = grads
    else:
        pairs = _sparse_grads(rng, rows, width, dtype, calls)
        grads = [SparseGrad(i, v) for i, v in pairs]
        feed = [IndexedSlices(v, i, x0.shape) for i, v in pairs]
    mom = float(np.dtype(dtype).type(0.8))
    ref = run_accumulation_reference(
        x0, grads, n, lr=0.05, sparse_mode=mode.get("sparse_mode", "dense"),
        ema_momentum=mom, ema_overwrite_frequency=freq,
    )  # fmt: skip
    for call, g in enumerate(feed):
        opt.apply_gradients([(g, x)])
        var_ref, avg_ref = ref[call][0], ref[call][-1]
        assert_close(x, var_ref, dtype, what=f"var after call {call}")
        avg = opt.get_slot(x, "average")
        assert_close(avg, avg_ref, dtype, what=f"average {call}")


@pytest.mark.parametrize("kind", ["dense", "sparse", "lazy"])
def test_row_wise_with_accumulation_to_reference(kind):
    # second_moment="row": the average fused into the row-wise kernels, the
    # accumulating calls' EMA-only pass, an overwrite every 2 updates
    rng = np.random.default_rng([24, len(kind)])
    rows, width, n, calls = 11, 3, 2, 9
    x0 = rng.standard_normal((rows, width)).astype(np.float32)
    mode = "lazy" if kind == "lazy" else "dense"
    opt = numbadam.Adam(
        0.05, use_ema=True, ema_momentum=0.8, ema_overwrite_frequency=2,
        gradient_accumulation_steps=n, sparse_mode=mode, second_moment="row",
    )  # fmt: skip
    x = x0.copy()
    if kind == "dense":
        grads = feed = _grads(rng, x0.shape, np.float32, calls)
    else:
        pairs = _sparse_grads(rng, rows, width, np.float32, calls)
        grads = [SparseGrad(i, v) for i, v in pairs]
        feed = [IndexedSlices(v, i, x0.shape) for i, v in pairs]
    ref = run_accumulation_reference(
        x0, grads, n, lr=0.05, sparse_mode=mode, second_moment="row",
        ema_momentum=float(np.float32(0.8)), ema_overwrite_frequency=2,
    )  # fmt: skip
    for call, g in enumerate(feed):
        opt.apply_gradients([(g, x)])
        assert opt.get_slot(x, "v").shape == (rows,)
        assert_close(x, ref[call][0], np.float32, what=f"var after call {call}")
        avg = opt.get_slot(x, "average")
        assert_close(avg, ref[call][-1], np.float32, what=f"average {call}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_accumulating_calls_move_the_average_bitwise(dtype):
    # An accumulating call does not step: its average moves by the twin from
    # the unchanged variable, at iterations = updates so far; an overwrite
    # call (freq 2: when (updates + 1) % 2 == 0) sets the variable to it.
    rng = np.random.default_rng([22, DTYPES.index(dtype)])
    x = np.array(rng.standard_normal(40), dtype)
    opt = numbadam.Adam(
        0.05, use_ema=True, ema_momentum=0.9, ema_overwrite_frequency=2,
        gradient_accumulation_steps=3,
    )  # fmt: skip
    for call in range(9):
        before_x = x.copy()
        before_avg = opt.get_slot(x, "average").copy() if call else np.zeros_like(x)
        opt.apply_gradients([(np.array(rng.standard_normal(40), dtype), x)])
        if call % 3 == 2:
            continue  # (the applying call: the fused pass, tested elsewhere)
        updates = call // 3
        expected = twin_average(before_avg, before_x, dtype, 0.9, updates)
        assert_bitwise(opt.get_slot(x, "average"), expected, f"average {call}")
        overwrite = (updates + 1) % 2 == 0
        assert_bitwise(x, expected if overwrite else before_x, f"var {call}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_with_accumulation_equals_the_mean_step_and_an_ema_of_the_variable(dtype):
    # The applying call's average is fused: it equals the plain optimizer's
    # step on the mean with the EMA of the stepped variable (exact mean:
    # multiples of 2**-6).
    rng = np.random.default_rng(23)
    x0 = np.array(rng.standard_normal(30), dtype)
    g = (rng.integers(-64, 64, 30) / 64).astype(dtype)
    acc = numbadam.Adam(
        0.1, use_ema=True, ema_momentum=0.7, gradient_accumulation_steps=2
    )
    one = numbadam.Adam(0.1)
    x, y = x0.copy(), x0.copy()
    avg = np.zeros_like(x0)
    for update in range(3):
        for _ in range(2):
            acc.apply_gradients([(g.copy(), x)])
        avg = twin_average(avg, y, dtype, 0.7, update)  # (the accumulating call)
        one.apply_gradients([(g.copy(), y)])
        avg = twin_average(avg, y, dtype, 0.7, update)  # (the applying call)
        assert_bitwise(x, y, f"var {update}")
        assert_bitwise(acc.get_slot(x, "average"), avg, f"average {update}")


def test_with_accumulation_weights_order_and_round_trip_mid_cycle():
    rng = np.random.default_rng(24)
    x0 = np.array(rng.standard_normal(6), np.float32)
    kw = dict(use_ema=True, ema_momentum=0.9, gradient_accumulation_steps=3)
    a, b = numbadam.Adam(0.05, **kw), numbadam.Adam(0.05, **kw)
    xa, xb = x0.copy(), x0.copy()
    grads = _grads(rng, 6, np.float32, 8)
    for g in grads[:4]:
        a.apply_gradients([(g, xa)])
    # iterations, accumulator (where Keras 3 creates it), m, v, average
    assert len(a.get_weights()) == 5
    assert_bitwise(a.get_weights()[1], a.get_slot(xa, "accumulator"))
    assert_bitwise(a.get_weights()[4], a.get_slot(xa, "average"))
    b.build([xb])
    xb[...] = xa
    b.set_weights(a.get_weights())
    for g in grads[4:]:
        a.apply_gradients([(g, xa)])
        b.apply_gradients([(g, xb)])
    assert_bitwise(xa, xb)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        assert_bitwise(wa, wb)


def test_with_accumulation_and_a_parameter_buffer():
    # The buffer's one-pass path: the same bits as its variables one by one.
    rng = np.random.default_rng(25)
    shapes = [(4, 3), (5,)]
    init = [np.array(rng.standard_normal(s), np.float32) for s in shapes]
    kw = dict(use_ema=True, ema_momentum=0.6, ema_overwrite_frequency=3,
              gradient_accumulation_steps=2)  # fmt: skip
    buf = ParameterBuffer.from_arrays(init, np.float32)
    sep = [p.copy() for p in init]
    ob, os_ = numbadam.Adam(0.05, **kw), numbadam.Adam(0.05, **kw)
    for _ in range(7):
        gs = [np.array(rng.standard_normal(s), np.float32) for s in shapes]
        for bg, g in zip(buf.grads, gs):
            bg[...] = g
        ob.apply_gradients(buf.grads_and_vars())
        os_.apply_gradients(zip(gs, sep))
        for p, q in zip(buf.params, sep):
            assert_bitwise(p, q)
            assert_bitwise(ob.get_slot(p, "average"), os_.get_slot(q, "average"))
