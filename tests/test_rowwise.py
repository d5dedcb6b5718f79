"""``Adam(second_moment="row")``: the optimizer side of the row-wise mode.

The numerics of every layout are rows of ``tests/cases.py``; here: width 1 is
the element-wise step bit for bit (a property), the state's size, weight decay
against the oracle, the paths row-wise variables must not take (the
multi-tensor launch, a ParameterBuffer's one pass), config, weights and
checkpoints, and bad input.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    assert_bitwise,
    assert_close,
    assert_unchanged,
    snapshot,
    to_device,
    to_host,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from reference import adam_rowwise_step

import numbadam
from numbadam import IndexedSlices

DTYPES = (np.float16, np.float32, np.float64)


def _slices(rng, rows, width, k, dtype):
    idx = rng.integers(0, rows, k)
    vals = np.array(rng.standard_normal((k, width)) * 2, dtype)
    return IndexedSlices(vals, idx, (rows, width))


# ---------------------------------------------------------------------------
# width 1: the row-wise step is the element-wise step, bit for bit
# ---------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    dtype=st.sampled_from(DTYPES),
    kind=st.sampled_from(["dense", "sparse", "lazy"]),
    amsgrad=st.booleans(),
    wd=st.sampled_from([None, 0.1]),
    clip=st.sampled_from([{}, {"clipvalue": 0.5}, {"clipnorm": 1.0}]),
    rows=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_width_one_is_element_wise_bitwise(dtype, kind, amsgrad, wd, clip, rows, seed):
    """With D = 1 the mean square is g * g and every operation is the element
    kernels' own: the results match to the bit."""
    rng = np.random.default_rng(seed)
    x0 = np.array(rng.standard_normal((rows, 1)), dtype)
    mode = "lazy" if kind == "lazy" else "dense"
    kw = dict(learning_rate=0.05, amsgrad=amsgrad, weight_decay=wd,
              sparse_mode=mode, beta_2=0.95, **clip)  # fmt: skip
    row, elem = numbadam.Adam(second_moment="row", **kw), numbadam.Adam(**kw)
    xr, xe = x0.copy(), x0.copy()
    for _ in range(3):
        if kind == "dense":
            g = np.array(rng.standard_normal((rows, 1)) * 3, dtype)
        else:
            g = _slices(rng, rows, 1, max(1, rows // 2), dtype)
        row.apply_gradients([(g, xr)])
        elem.apply_gradients([(g, xe)])
    assert row.get_slot(xr, "v").shape == (rows,)
    assert_bitwise(xr, xe, "var")
    for name in ("m", "v") + (("vhat",) if amsgrad else ()):
        got = row.get_slot(xr, name).reshape(-1)
        assert_bitwise(got, elem.get_slot(xe, name).reshape(-1), name)


# ---------------------------------------------------------------------------
# state memory
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("shape", [(50, 64), (7, 3, 4), (9, 1)])
def test_state_is_d_plus_one_of_two_d(shape, amsgrad):
    """Slots of a row-wise table: ``R (D + 1)`` values (``R (D + 2)`` with
    AMSGrad) against element-wise ``2 R D`` (``3 R D``)."""
    rows, width = shape[0], int(np.prod(shape[1:]))
    nbytes = {}
    for mode in ("element", "row"):
        x = np.zeros(shape, np.float32)
        opt = numbadam.Adam(second_moment=mode, amsgrad=amsgrad)
        opt.apply_gradients([(np.ones(shape, np.float32), x)])
        nbytes[mode] = sum(w.nbytes for w in opt.weights[1:])  # (not iterations)
    extra = 2 if amsgrad else 1
    assert nbytes["row"] * (extra + 1) * width == nbytes["element"] * (width + extra)
    assert nbytes["row"] == 4 * rows * (width + extra)


def test_one_d_and_scalar_variables_stay_element_wise():
    opt = numbadam.Adam(0.1, second_moment="row")
    ref = numbadam.Adam(0.1)
    a, s = np.arange(5.0), np.array(2.0)
    a2, s2 = a.copy(), s.copy()
    ga, gs = np.linspace(-1, 1, 5), np.array(0.3)
    opt.apply_gradients([(ga, a), (gs, s)])
    ref.apply_gradients([(ga, a2), (gs, s2)])
    assert opt.get_slot(a, "v").shape == (5,) and opt.get_slot(s, "v").shape == ()
    assert_bitwise(a, a2, "1-D")
    assert_bitwise(s, s2, "0-d")


# ---------------------------------------------------------------------------
# weight decay: Keras 3's rule on the rows that step
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["dense", "lazy", "dense_grad"])
def test_weight_decay_against_oracle(backend, mode):
    rng = np.random.default_rng(3)
    rows, width, lr, wd = 20, 6, 0.05, 0.2
    x = np.array(rng.standard_normal((rows, width)), np.float64)
    opt = numbadam.Adam(lr, weight_decay=wd, second_moment="row",
                        sparse_mode="lazy" if mode == "lazy" else "dense")  # fmt: skip
    var = to_device(x.copy(), backend)
    m, v = np.zeros_like(x), np.zeros(rows)
    for t in range(1, 4):
        if mode == "dense_grad":
            g = rng.standard_normal((rows, width))
            opt.apply_gradients([(to_device(g, backend), var)])
            want = adam_rowwise_step(x, g, m, v, t, lr, 0.9, 0.999, 1e-7,
                                     weight_decay=wd)  # fmt: skip
        else:
            sl = _slices(rng, rows // 2, width, 7, np.float64)
            sl = IndexedSlices(sl.values, sl.indices, (rows, width))
            dev = IndexedSlices(
                to_device(sl.values, backend), to_device(sl.indices, backend),
                (rows, width),
            )  # fmt: skip
            opt.apply_gradients([(dev, var)])
            want = adam_rowwise_step(
                x, (sl.indices, sl.values), m, v, t, lr, 0.9, 0.999, 1e-7,
                mode="lazy" if mode == "lazy" else "sparse", weight_decay=wd,
            )  # fmt: skip
        x, m, v, _ = want
        got = to_host(var)
        assert_close(got, x, np.float64, float(np.abs(x).max()), f"step {t} var")
        assert_close(to_host(opt.get_slot(var, "v")), v, np.float64, v.max(), "v")
    if mode == "lazy":  # rows never listed: neither stepped nor decayed
        assert_bitwise(to_host(var)[rows // 2 :], x[rows // 2 :], "unlisted rows")


# ---------------------------------------------------------------------------
# paths a row-wise variable must not take
# ---------------------------------------------------------------------------


def test_no_multi_tensor_launch_for_row_wise_lists():
    """A list of small 2-D variables, again and again: the per-variable
    row-wise steps (the multi-tensor kernel keeps element-wise slots)."""
    rng = np.random.default_rng(5)
    xs = [np.array(rng.standard_normal((3, 4)), np.float32) for _ in range(10)]
    ys = [x.copy() for x in xs]
    opt = numbadam.Adam(0.1, second_moment="row")
    alone = [numbadam.Adam(0.1, second_moment="row") for _ in ys]
    for _ in range(4):
        gs = [np.array(rng.standard_normal((3, 4)), np.float32) for _ in xs]
        opt.apply_gradients(list(zip(gs, xs)))
        for o, g, y in zip(alone, gs, ys):  # one pair per call: no list
            o.apply_gradients([(g, y)])
    assert opt._multi is None
    for x, y in zip(xs, ys):
        assert_bitwise(x, y, "list vs one by one")
        assert opt.get_slot(x, "v").shape == (3,)


def test_parameter_buffer_steps_its_pairs_row_wise():
    shapes = [(4, 3), (5,), (2, 2, 2)]
    buf = numbadam.ParameterBuffer(shapes, np.float32)
    rng = np.random.default_rng(6)
    buf.data[:] = rng.standard_normal(buf.data.shape)
    alone = [p.copy() for p in buf.params]
    opt, ref = numbadam.Adam(0.1, second_moment="row"), numbadam.Adam(
        0.1, second_moment="row"
    )
    for _ in range(3):
        gs = [np.array(rng.standard_normal(s), np.float32) for s in shapes]
        for view, g in zip(buf.grads, gs):
            view[...] = g
        opt.apply_gradients(buf.grads_and_vars())
        ref.apply_gradients(list(zip(gs, alone)))
    for p, a in zip(buf.params, alone):
        assert_bitwise(p, a, "buffer vs separate arrays")
    assert opt.get_slot(buf.params[2], "v").shape == (2,)


# ---------------------------------------------------------------------------
# config, weights, checkpoints
# ---------------------------------------------------------------------------


def test_config_round_trip():
    opt = numbadam.Adam(0.01, second_moment="row", sparse_mode="lazy")
    cfg = opt.get_config()
    assert cfg["second_moment"] == "row"
    assert "second_moment" not in numbadam.Adam().get_config()
    twin = numbadam.Adam.from_config(cfg)
    assert twin.second_moment == "row" and twin.get_config() == cfg


def test_weights_and_checkpoint_continue_bitwise(tmp_path):
    rng = np.random.default_rng(7)
    x = np.array(rng.standard_normal((6, 4)), np.float32)
    opt = numbadam.Adam(0.05, second_moment="row", amsgrad=True)
    g = np.array(rng.standard_normal((6, 4)), np.float32)
    opt.apply_gradients([(g, x)])
    assert [w.shape for w in opt.get_weights()] == [(), (6, 4), (6,), (6,)]
    path = str(tmp_path / "rows.npz")
    numbadam.save_checkpoint(path, opt, {"x": x})
    ckpt = numbadam.load_checkpoint(path)
    x2 = ckpt.variables["x"]
    twin = numbadam.Adam.from_config(opt.get_config())
    x3 = x.copy()
    twin.build([x3])
    twin.set_weights(opt.get_weights())
    for o, var in ((opt, x), (ckpt.optimizer, x2), (twin, x3)):
        o.apply_gradients([(g, var)])
    assert_bitwise(x2, x, "checkpoint")
    assert_bitwise(x3, x, "set_weights")


# ---------------------------------------------------------------------------
# bad input: clear errors, nothing changed
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["rows", "Row", None, 1])
def test_unknown_second_moment(bad):
    with pytest.raises(ValueError, match="second_moment must be one of"):
        numbadam.Adam(second_moment=bad)


def test_set_weights_of_element_wise_state_refused():
    x = np.ones((5, 3), np.float32)
    elem = numbadam.Adam()
    elem.apply_gradients([(np.ones((5, 3), np.float32), x)])
    row = numbadam.Adam(second_moment="row")
    y = x.copy()
    row.apply_gradients([(np.ones((5, 3), np.float32), y)])
    before = snapshot(row, [y])
    with pytest.raises(ValueError, match=r"weight 2 has shape \(5,\).*\(5, 3\)"):
        row.set_weights(elem.get_weights())
    assert_unchanged(before, row, [y])


def test_mutated_row_slot_shape_refused():
    x = np.ones((4, 2), np.float32)
    opt = numbadam.Adam(second_moment="row")
    opt.apply_gradients([(np.ones((4, 2), np.float32), x)])
    v = opt.get_slot(x, "v")
    v.shape = (2, 2)
    before = snapshot(opt, [x])
    with pytest.raises(ValueError, match=r"slot 'v' of variable 0 .* \(4,\)"):
        opt.apply_gradients([(np.ones((4, 2), np.float32), x)])
    assert_unchanged(before, opt, [x])


def test_keras3_file_refuses_row_state(tmp_path):
    pytest.importorskip("h5py")
    from numbadam import keras3

    x = np.ones((4, 2), np.float32)
    opt = numbadam.Adam(second_moment="row")
    opt.apply_gradients([(np.ones((4, 2), np.float32), x)])
    path = str(tmp_path / "m.weights.h5")
    with pytest.raises(ValueError, match="one second moment per row of variable 0"):
        keras3.save_keras_optimizer(path, opt, [x])
    assert not (tmp_path / "m.weights.h5").exists()


def test_row_lazy_steps_mark_dirty_rows(tmp_path):
    # incremental state-dir saves see the rows a row-wise lazy step touched
    w = np.zeros((50, 4), np.float32)
    opt = numbadam.Adam(0.1, sparse_mode="lazy", second_moment="row")
    g = IndexedSlices(np.ones((2, 4), np.float32), np.array([3, 7]), w.shape)
    opt.apply_gradients([(g, w)])
    numbadam.save_state_dir(tmp_path / "s", opt, [w])
    g = IndexedSlices(np.ones((1, 4), np.float32), np.array([11]), w.shape)
    opt.apply_gradients([(g, w)])
    info = numbadam.save_state_dir(tmp_path / "s", opt, [w])
    assert info.kind == "delta"
    fresh = numbadam.Adam(0.1, sparse_mode="lazy", second_moment="row")
    w2 = np.zeros_like(w)
    numbadam.load_state_dir(tmp_path / "s", fresh, [w2])
    assert np.array_equal(w2, w)
    assert np.array_equal(fresh.get_slot(w2, "v"), opt.get_slot(w, "v"))
