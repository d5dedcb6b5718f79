"""The ``@cuda.jit`` row-wise kernels of ``numbadam.kernels.rowwise_cuda``: the
CPU kernels' bits (``numbadam.kernels.rowwise_cpu``, themselves checked against
the oracle in ``test_kernels_rowwise.py``).

Launches are small (``conftest``: 32 threads x 4 blocks) and tables have more
rows than a grid has threads, so the grid-stride loops run. The sparse kernels
get the indices stable-sorted on the host (``np.argsort(kind="stable")``).

Run without a GPU with ``NUMBA_ENABLE_CUDASIM=1 pytest -m cuda``.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    FLOAT_DTYPES,
    rw_coef,
    rw_compute,
    rw_dense,
    rw_lazy,
    rw_sparse,
    rw_state,
    rw_transform,
)

from numbadam import _config

pytestmark = [
    pytest.mark.cuda,
    # the simulator computes on NumPy scalars, which warn on inf/nan arithmetic
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

KINDS = {"identity": (None, None), "clipvalue": (0.7, None), "both": (0.7, 1.5)}
NAMES = ("var", "m", "v", "vhat")


@pytest.fixture(scope="module")
def cuda():
    """``numba.cuda`` (real GPU or simulator), or skip."""
    try:
        from numba import cuda
    except Exception as exc:  # pragma: no cover - numba-cuda missing
        pytest.skip(f"numba.cuda cannot be imported: {exc}")
    if not cuda.is_available():
        pytest.skip("no CUDA GPU (NUMBA_ENABLE_CUDASIM=1 runs the simulator)")
    return cuda


@pytest.fixture(scope="module")
def rc(cuda):
    from numbadam.kernels import rowwise_cuda

    return rowwise_cuda


def launch(kernel, n, *args):
    tpb = _config.CUDA_THREADS_PER_BLOCK
    blocks = max(1, min(_config.CUDA_MAX_BLOCKS, -(-n // tpb)))
    kernel[blocks, tpb](*args)


def bits(a):
    a = np.ascontiguousarray(a).reshape(-1)
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.itemsize])


def assert_same_bits(actual, expected, what=""):
    """Bitwise equal, except that any NaN matches any NaN (payloads differ by
    target)."""
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.dtype == e.dtype and a.shape == e.shape, what
    nan_a = np.isnan(a).reshape(-1) if a.dtype.kind == "f" else np.zeros(a.size, bool)
    nan_e = np.isnan(e).reshape(-1) if e.dtype.kind == "f" else np.zeros(e.size, bool)
    assert np.array_equal(nan_a, nan_e), f"{what}: NaN positions differ"
    ok = bits(a)[~nan_a] == bits(e)[~nan_e]
    if not ok.all():
        i = np.flatnonzero(~ok)[:3]
        raise AssertionError(
            f"{what}: {np.count_nonzero(~ok)} entries differ, e.g. "
            f"{a.reshape(-1)[~nan_a][i]} vs {e.reshape(-1)[~nan_e][i]}"
        )


def device_state(cuda, state):
    """Flat device copies of ``[var, m, v, vhat]`` and the kernels' four state
    arguments (the AMSGrad slot as ``()`` or ``(vhat,)``)."""
    dev = [None if a is None else cuda.to_device(a.reshape(-1)) for a in state]
    return dev, (dev[0], dev[1], dev[2], () if dev[3] is None else (dev[3],))


def host_state(dev, state):
    return [
        None if d is None else d.copy_to_host().reshape(s.shape)
        for d, s in zip(dev, state)
    ]


def sorted_keys(cuda, idx):
    pos = np.argsort(idx, kind="stable").astype(np.int64)
    keys = idx[pos].astype(np.int64)
    return cuda.to_device(keys), cuda.to_device(pos)


def assert_state(got, want, what):
    for name, a, b in zip(NAMES, got, want):
        if b is not None:
            assert_same_bits(a, b, f"{what} {name}")


def _slices(rng, rows, width, k, dtype, hot):
    idx = rng.integers(0, hot, k).astype(np.int64)
    vals = np.array(rng.standard_normal((k, width)) * 2, dtype)
    vals[rng.random((k, width)) < 0.1] = -0.0
    return idx, vals


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("ams", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dense_kernel_is_the_cpu_kernel(cuda, rc, dtype, ams, kind):
    rng = np.random.default_rng([1, FLOAT_DTYPES.index(dtype), ams, len(kind)])
    rows, width = 150, 3  # > 32 x 4 threads
    state = rw_state(rng, rows, width, dtype, ams)
    g = np.array(rng.standard_normal((rows, width)) * 2, dtype)
    cf, tr = rw_coef(dtype), rw_transform(dtype, g, *KINDS[kind])
    dev, args = device_state(cuda, state)
    gd = cuda.to_device(g.reshape(-1))
    launch(rc.adam_rowwise_dense_cuda, rows, *args, gd, *_no_acc(dtype), *cf, *tr, (),
           ())  # fmt: skip
    assert_state(host_state(dev, state), rw_dense(dtype, state, g, cf, tr), "dense")


def _no_acc(dtype):
    # the dense kernel's (acc, steps) without an accumulator
    return (), rw_compute(dtype).type(1)


@pytest.mark.parametrize("ams", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dense_kernel_on_the_accumulated_mean_is_the_cpu_kernel(cuda, rc, dtype, ams):
    # the applying call of gradient accumulation: (g + acc) / steps, clipped
    rng = np.random.default_rng([11, FLOAT_DTYPES.index(dtype), ams])
    rows, width = 150, 3
    state = rw_state(rng, rows, width, dtype, ams)
    g = np.array(rng.standard_normal((rows, width)) * 2, dtype)
    acc = np.array(rng.standard_normal((rows, width)) * 3, dtype)
    cf, tr = rw_coef(dtype), rw_transform(dtype, g, *KINDS["both"])
    dev, args = device_state(cuda, state)
    steps = rw_compute(dtype).type(3)
    launch(rc.adam_rowwise_dense_cuda, rows, *args, cuda.to_device(g.reshape(-1)),
           (cuda.to_device(acc.reshape(-1)),), steps, *cf, *tr, (), ())  # fmt: skip
    want = rw_dense(dtype, state, g, cf, tr, acc=acc, steps=3)
    assert_state(host_state(dev, state), want, "dense mean")


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_dense_kernel_special_values(cuda, rc, dtype):
    info = np.finfo(dtype)
    sp = np.array(
        [
            0.0,
            -0.0,
            np.inf,
            -np.inf,
            np.nan,
            info.max,
            -info.max,
            info.tiny,
            info.tiny * info.eps,
            1.0,
            -1.0,
        ],
        dtype,
    )
    n = sp.size
    rows, width = n * n, 3
    g = np.repeat(sp, n * width).reshape(rows, width)
    g[:, 1] = np.tile(sp, n)
    x = np.tile(sp, n * width).reshape(rows, width)
    m = np.tile(sp[::-1], n * width).reshape(rows, width)
    v = np.abs(np.tile(sp, n))
    state = [x, m, v, v[::-1].copy()]
    cf, tr = rw_coef(dtype), rw_transform(dtype, g, None, None)
    dev, args = device_state(cuda, state)
    gd = cuda.to_device(g.reshape(-1))
    launch(rc.adam_rowwise_dense_cuda, rows, *args, gd, *_no_acc(dtype), *cf, *tr, (),
           ())  # fmt: skip
    with np.errstate(all="ignore"):
        want = rw_dense(dtype, state, g, cf, tr)
    assert_state(host_state(dev, state), want, "specials")


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("ams", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_sparse_kernel_is_the_cpu_kernel(cuda, rc, dtype, ams, kind):
    """TF's rule: the CPU sums duplicates first (sum_duplicate_rows_cpu), the
    GPU while it steps; untouched rows decay, or are skipped when all +0.0."""
    rng = np.random.default_rng([2, FLOAT_DTYPES.index(dtype), ams, len(kind)])
    rows, width, k = 150, 3, 90
    state = rw_state(rng, rows, width, dtype, ams, zero_rows=40)
    state[1][rows - 3, 0] = 0.5  # v (vhat) +0.0, m not: must still step
    idx, vals = _slices(rng, rows, width, k, dtype, hot=60)
    cf, tr = rw_coef(dtype), rw_transform(dtype, vals, *KINDS[kind])
    keys, pos = sorted_keys(cuda, idx)
    dev, args = device_state(cuda, state)
    launch(
        rc.adam_rowwise_sparse_cuda,
        rows,
        *args,
        keys,
        pos,
        k,
        cuda.to_device(vals),
        *cf,
        *tr,
        (),
        (),
    )
    want = rw_sparse(dtype, state, idx, vals, cf, tr)
    assert_state(host_state(dev, state), want, "sparse")


@pytest.mark.parametrize("marks", [False, True], ids=["", "dirty"])
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("ams", [False, True], ids=["adam", "amsgrad"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_lazy_kernel_is_the_cpu_kernel(cuda, rc, dtype, ams, kind, marks):
    rng = np.random.default_rng([3, FLOAT_DTYPES.index(dtype), ams, len(kind), marks])
    rows, width, k = 200, 3, 300  # unique rows > 32 x 4 threads; duplicates
    state = rw_state(rng, rows, width, dtype, ams)
    idx, vals = _slices(rng, rows, width, k, dtype, hot=rows - 20)
    idx[:40] = 7  # one long run of duplicates
    cf, tr = rw_coef(dtype), rw_transform(dtype, vals, *KINDS[kind])
    keys, pos = sorted_keys(cuda, idx)
    dev, args = device_state(cuda, state)
    dirty = np.zeros(rows, np.uint8)
    ddev = cuda.to_device(dirty)
    launch(
        rc.adam_rowwise_lazy_cuda,
        k,
        *args,
        keys,
        pos,
        k,
        cuda.to_device(vals),
        *cf,
        *tr,
        (),
        (),
        (ddev,) if marks else (),
    )
    cpu_dirty = np.zeros(rows, np.uint8) if marks else None
    want = rw_lazy(dtype, state, idx, vals, cf, tr, dirty=cpu_dirty)
    assert_state(host_state(dev, state), want, "lazy")
    got_dirty = ddev.copy_to_host()
    if marks:
        assert_same_bits(got_dirty, cpu_dirty, "dirty")
        assert np.array_equal(np.flatnonzero(got_dirty), np.unique(idx))
    else:
        assert not got_dirty.any()


def test_empty_inputs(cuda, rc):
    dtype = np.float32
    rng = np.random.default_rng(4)
    state = rw_state(rng, 6, 4, dtype, True)
    cf, tr = rw_coef(dtype), rw_transform(dtype, np.zeros(1), None, None)
    dev, args = device_state(cuda, state)
    empty = cuda.to_device(np.zeros(0, np.int64))
    launch(
        rc.adam_rowwise_lazy_cuda,
        1,
        *args,
        empty,
        empty,
        0,
        cuda.to_device(np.zeros((0, 4), dtype)),
        *cf,
        *tr,
        (),
        (),
        (),
    )
    assert_state(host_state(dev, state), state, "k=0")
    flat = rw_state(rng, 6, 0, dtype, True)
    dev, args = device_state(cuda, flat)
    launch(
        rc.adam_rowwise_dense_cuda,
        6,
        *args,
        cuda.to_device(np.zeros(0, dtype)),
        *_no_acc(dtype),
        *cf,
        *tr,
        (),
        (),
    )
    assert_state(host_state(dev, flat), flat, "D=0")


def test_signatures_do_not_grow(cuda, rc):
    from numba import config

    if config.ENABLE_CUDASIM:
        pytest.skip("the simulator compiles nothing")
    for dtype in FLOAT_DTYPES:
        for ams in (False, True):
            rc.ensure_compiled(
                rc.adam_rowwise_lazy_cuda, dtype, ams, True, False, ema=False
            )
    assert len(rc.adam_rowwise_lazy_cuda.signatures) == 2 * len(FLOAT_DTYPES)
    for name in rc.SIGNATURES:
        for dtype in FLOAT_DTYPES:
            rc.ensure_compiled(getattr(rc, name), dtype)
    for name in rc.SIGNATURES:
        declared = sum(len(s) for s in rc.SIGNATURES[name].values())
        assert len(getattr(rc, name).signatures) == declared, name


@pytest.mark.parametrize("mode", ["dense", "sparse", "lazy"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_weight_decay_is_the_cpu_kernel(cuda, rc, dtype, mode):
    """``wd = (weight_decay, lr_t)``: every row decayed first (TF's rule: none
    skipped, the +0.0 rows too), the lazy kernel only the listed rows."""
    rng = np.random.default_rng([5, FLOAT_DTYPES.index(dtype), len(mode)])
    rows, width, k = 150, 3, 90
    state = rw_state(rng, rows, width, dtype, True, zero_rows=40)
    c = np.dtype(np.float32 if dtype == np.float16 else dtype).type
    wd = (c(0.25), c(0.125))
    cf = rw_coef(dtype)
    dev, args = device_state(cuda, state)
    if mode == "dense":
        g = np.array(rng.standard_normal((rows, width)) * 2, dtype)
        tr = rw_transform(dtype, g, *KINDS["both"])
        launch(rc.adam_rowwise_dense_cuda, rows, *args, cuda.to_device(g.reshape(-1)),
               *_no_acc(dtype), *cf, *tr, wd, ())  # fmt: skip
        want = rw_dense(dtype, state, g, cf, tr, wd=wd)
    else:
        idx, vals = _slices(rng, rows, width, k, dtype, hot=60)
        tr = rw_transform(dtype, vals, *KINDS["both"])
        keys, pos = sorted_keys(cuda, idx)
        common = (*args, keys, pos, k, cuda.to_device(vals), *cf, *tr, wd, ())
        if mode == "sparse":
            launch(rc.adam_rowwise_sparse_cuda, rows, *common)
            want = rw_sparse(dtype, state, idx, vals, cf, tr, wd=wd)
        else:
            launch(rc.adam_rowwise_lazy_cuda, k, *common, ())
            want = rw_lazy(dtype, state, idx, vals, cf, tr, wd=wd)
            untouched = np.setdiff1d(np.arange(rows), idx)
            assert_same_bits(want[0][untouched], state[0][untouched], "unlisted")
    if mode == "sparse":  # the +0.0 rows were decayed, not skipped
        assert not np.array_equal(want[0][rows - 1], state[0][rows - 1])
    assert_state(host_state(dev, state), want, f"{mode} with weight decay")


@pytest.mark.parametrize("overwrite", [False, True], ids=["", "overwrite"])
@pytest.mark.parametrize("mode", ["dense", "sparse", "lazy"])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_ema_is_the_cpu_kernel(cuda, rc, dtype, mode, overwrite):
    """The EMA argument: the CPU kernels' averages (and, on an overwrite
    step, variables), with weight decay and AMSGrad; TF's rule moves every
    row's average (the +0.0 rows are not skipped), the lazy rule the listed
    rows'."""
    rng = np.random.default_rng([6, FLOAT_DTYPES.index(dtype), len(mode), overwrite])
    rows, width, k = 150, 3, 90
    state = rw_state(rng, rows, width, dtype, True, zero_rows=40)
    avg = np.array(rng.standard_normal((rows, width)), dtype)
    c = rw_compute(dtype).type
    wd = (c(0.25), c(0.125))
    cf = rw_coef(dtype)
    dev, args = device_state(cuda, state)
    adev = cuda.to_device(avg.reshape(-1))
    ema = (adev, c(0.75), c(1) - c(0.75), overwrite)
    want_avg = avg.copy()
    cpu_ema = (want_avg, 0.75, overwrite)
    if mode == "dense":
        g = np.array(rng.standard_normal((rows, width)) * 2, dtype)
        tr = rw_transform(dtype, g, *KINDS["both"])
        launch(rc.adam_rowwise_dense_cuda, rows, *args, cuda.to_device(g.reshape(-1)),
               *_no_acc(dtype), *cf, *tr, wd, ema)  # fmt: skip
        want = rw_dense(dtype, state, g, cf, tr, wd=wd, ema=cpu_ema)
    else:
        idx, vals = _slices(rng, rows, width, k, dtype, hot=60)
        tr = rw_transform(dtype, vals, *KINDS["both"])
        keys, pos = sorted_keys(cuda, idx)
        common = (*args, keys, pos, k, cuda.to_device(vals), *cf, *tr, wd, ema)
        if mode == "sparse":
            launch(rc.adam_rowwise_sparse_cuda, rows, *common)
            want = rw_sparse(dtype, state, idx, vals, cf, tr, wd=wd, ema=cpu_ema)
            assert not np.array_equal(want_avg[rows - 1], avg[rows - 1])
        else:
            launch(rc.adam_rowwise_lazy_cuda, k, *common, ())
            want = rw_lazy(dtype, state, idx, vals, cf, tr, wd=wd, ema=cpu_ema)
            untouched = np.setdiff1d(np.arange(rows), idx)
            assert_same_bits(want_avg[untouched], avg[untouched], "unlisted")
    assert_state(host_state(dev, state), want, f"{mode} with an EMA")
    assert_same_bits(adev.copy_to_host().reshape(rows, width), want_avg, "average")
