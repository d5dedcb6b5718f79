"""The CUDA backend through the public API: dispatch, CPU == CUDA, state, policies.

Run without a GPU with ``NUMBA_ENABLE_CUDASIM=1 pytest -m cuda`` (``conftest``
sets 32 threads x 4 blocks, so a few hundred elements exercise the grid-stride
loops). On a real GPU the same tests run on the hardware; the CuPy and PyTorch
tests run only there (and only when those packages are installed).
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import numbadam
from numbadam import IndexedSlices, _config, _dispatch

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

DTYPES = (np.float16, np.float32, np.float64)
TOL = {np.float64: 1e-12, np.float32: 1e-5, np.float16: 2e-3}


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


@pytest.fixture(autouse=True, scope="module")
def _fast_simulator():
    # Simulated threads are Python threads polled at syncthreads: a short GIL
    # switch interval makes the reductions and the sort ~4x faster.
    from numba import config

    if not config.ENABLE_CUDASIM:
        yield
        return
    old = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)
    yield
    sys.setswitchinterval(old)


def simulator() -> bool:
    from numba import config

    return bool(config.ENABLE_CUDASIM)


def host(x):
    if x is None:
        return None
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    return np.array(x, copy=True)


def assert_same_bits(actual, expected, what=""):
    """Same dtype, shape and bits (NaNs match NaNs: payloads differ by target)."""
    a, e = np.asarray(host(actual)), np.asarray(host(expected))
    assert a.dtype == e.dtype, f"{what}: {a.dtype} != {e.dtype}"
    assert a.shape == e.shape, f"{what}: {a.shape} != {e.shape}"
    na, ne = np.isnan(a), np.isnan(e)
    assert np.array_equal(na, ne), f"{what}: NaN positions differ"
    ia = np.ascontiguousarray(a[~na]).view(f"u{a.itemsize}")
    ie = np.ascontiguousarray(e[~ne]).view(f"u{e.itemsize}")
    diff = np.flatnonzero(ia != ie)
    assert diff.size == 0, (
        f"{what}: {diff.size} entries differ, e.g. {a[~na][diff[:3]]} vs "
        f"{e[~ne][diff[:3]]}"
    )


def assert_near(actual, expected, dtype, what=""):
    a = np.asarray(host(actual), np.float64)
    e = np.asarray(host(expected), np.float64)
    scale = max(1.0, float(np.max(np.abs(e)))) if e.size else 1.0
    err = float(np.max(np.abs(a - e))) / scale if e.size else 0.0
    assert err <= TOL[dtype], f"{what}: relative error {err:.3g}"


def pair_run(cuda, var0, grads, to_dev_grad, **opt_kwargs):
    """The same steps on a NumPy and a device copy of ``var0``: both optimizers."""
    oc, og = numbadam.Adam(**opt_kwargs), numbadam.Adam(**opt_kwargs)
    wc, wg = var0.copy(), cuda.to_device(var0.copy())
    for g in grads:
        oc.apply_gradients([(g, wc)])
        og.apply_gradients([(to_dev_grad(g), wg)])
    return (oc, wc), (og, wg)


def dev_slices(cuda):
    def convert(g):
        return IndexedSlices(
            cuda.to_device(g.values), cuda.to_device(g.indices), g.dense_shape
        )

    return convert


def assert_runs_equal(cpu, gpu, bitwise=True, dtype=None):
    (oc, wc), (og, wg) = cpu, gpu
    assert og.get_slot_names() == oc.get_slot_names()
    pairs = [("var", wg, wc)] + [
        (n, og.get_slot(wg, n), oc.get_slot(wc, n)) for n in oc.get_slot_names()
    ]
    for name, a, e in pairs:
        if bitwise:
            assert_same_bits(a, e, name)
        else:
            assert_near(a, e, dtype, name)
    assert int(og.iterations) == int(oc.iterations)


def random_sparse(rng, rows, width, k, dtype, index_dtype=np.int64):
    idx = rng.integers(0, max(rows // 2, 1), k).astype(index_dtype)
    vals = np.array(rng.standard_normal((k, width)) * 2, dtype)
    return IndexedSlices(vals, idx, (rows, width))


# ---------------------------------------------------------------------------
# dispatch
# ---------------------------------------------------------------------------


def test_dispatch_picks_the_backend_by_array_type(cuda):
    d = cuda.to_device(np.zeros(3, np.float32))
    assert _dispatch.is_device_array(d)
    assert _dispatch.backend_for(d).name == "cuda"
    assert _dispatch.backend_for(np.zeros(3, np.float32)).name == "cpu"
    if simulator():  # simulator arrays expose only __cuda_ndarray__
        assert not hasattr(d, "__cuda_array_interface__")


def test_import_numbadam_does_not_import_numba_cuda():
    code = (
        "import sys, numpy as np, numbadam\n"
        "w = np.zeros(3, np.float32)\n"
        "numbadam.Adam().apply_gradients([(np.ones(3, np.float32), w)])\n"
        "bad = [m for m in ('numba.cuda', 'numbadam.kernels.cuda', "
        "'numbadam._backend_cuda', 'numbadam._backend_cuda_arrays') "
        "if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


def _fresh_cuda_import(monkeypatch):
    monkeypatch.setattr(_dispatch, "_CUDA", None)
    for mod in ("numbadam._backend_cuda", "numbadam._backend_cuda_arrays"):
        monkeypatch.delitem(sys.modules, mod, raising=False)


def test_missing_numba_cuda_says_what_to_install(cuda, monkeypatch):
    d = cuda.to_device(np.zeros(3, np.float32))
    _fresh_cuda_import(monkeypatch)
    monkeypatch.setitem(sys.modules, "numba_cuda", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install numbadam\[cuda\]"):
        _dispatch.backend_for(d)
    with pytest.raises(ImportError, match="NUMBA_ENABLE_CUDASIM"):
        numbadam.Adam().apply_gradients([(d, d)])


def test_no_gpu_says_what_is_needed(cuda, monkeypatch):
    d = cuda.to_device(np.zeros(3, np.float32))
    _fresh_cuda_import(monkeypatch)
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="NUMBA_ENABLE_CUDASIM=1"):
        _dispatch.backend_for(d)


# ---------------------------------------------------------------------------
# CPU == CUDA through the optimizer
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize(
    "clip",
    [{}, {"clipvalue": 0.5}, {"clipnorm": 2.0}, {"clipvalue": 0.5, "clipnorm": 1.0}],
)
def test_dense_cpu_equals_cuda(cuda, dtype, amsgrad, clip):
    rng = np.random.default_rng([1, DTYPES.index(dtype), amsgrad, len(clip)])
    shape = (15, 20)  # 300 elements > 32 threads x 4 blocks
    var0 = np.array(rng.standard_normal(shape), dtype)
    grads = [np.array(rng.standard_normal(shape) * 3, dtype) for _ in range(3)]
    cpu, gpu = pair_run(
        cuda, var0, grads, cuda.to_device, learning_rate=0.01, amsgrad=amsgrad, **clip
    )
    # The norm of clipnorm is summed in float64 in another (fixed) order on the
    # device: float64 variables then differ in the last bits only.
    bitwise = not ("clipnorm" in clip and dtype == np.float64)
    assert_runs_equal(cpu, gpu, bitwise=bitwise, dtype=dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "amsgrad,mode", [(False, "dense"), (True, "dense"), (False, "lazy"), (True, "lazy")]
)
def test_sparse_cpu_equals_cuda(cuda, dtype, amsgrad, mode):
    rng = np.random.default_rng([2, DTYPES.index(dtype), amsgrad, len(mode)])
    rows, width = 40, 4
    var0 = np.array(rng.standard_normal((rows, width)), dtype)
    grads = [random_sparse(rng, rows, width, 50, dtype) for _ in range(2)]
    cpu, gpu = pair_run(
        cuda,
        var0,
        grads,
        dev_slices(cuda),
        learning_rate=0.01,
        amsgrad=amsgrad,
        sparse_mode=mode,
        clipvalue=1.5,
    )
    assert_runs_equal(cpu, gpu)


@pytest.mark.parametrize("dtype", DTYPES)
def test_sparse_clipnorm_cpu_equals_cuda(cuda, dtype):
    rng = np.random.default_rng([3, DTYPES.index(dtype)])
    var0 = np.array(rng.standard_normal((30, 3)), dtype)
    grads = [random_sparse(rng, 30, 3, 40, dtype) for _ in range(2)]
    cpu, gpu = pair_run(cuda, var0, grads, dev_slices(cuda), clipnorm=1.0)
    assert_runs_equal(cpu, gpu, bitwise=dtype != np.float64, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_duplicates_equal_presummed(cuda, dtype):
    rng = np.random.default_rng(5)
    rows, width = 24, 5
    idx = rng.integers(0, 12, 40)
    vals = np.array(rng.standard_normal((40, width)), dtype)
    uniq = np.unique(idx)
    summed = np.zeros((uniq.size, width), dtype)
    for p, r in enumerate(idx):  # appearance order, in the compute dtype
        q = np.searchsorted(uniq, r)
        summed[q] = summed[q] + vals[p]
    var0 = np.array(rng.standard_normal((rows, width)), dtype)
    outs = []
    for ind, val in ((idx, vals), (uniq, summed)):
        w = cuda.to_device(var0)
        numbadam.Adam(0.1).apply_gradients(
            [(IndexedSlices(cuda.to_device(val), cuda.to_device(ind)), w)]
        )
        outs.append(host(w))
    assert_same_bits(outs[0], outs[1])


def test_sparse_equals_dense_with_zero_rows(cuda):
    rng = np.random.default_rng(6)
    rows, width = 30, 6
    idx = rng.permutation(rows)[:11]
    vals = rng.standard_normal((11, width)).astype(np.float32)
    dense = np.zeros((rows, width), np.float32)
    dense[idx] = vals
    var0 = rng.standard_normal((rows, width)).astype(np.float32)
    ws, wd = cuda.to_device(var0), cuda.to_device(var0)
    os_, od = numbadam.Adam(0.1, amsgrad=True), numbadam.Adam(0.1, amsgrad=True)
    for _ in range(2):
        os_.apply_gradients([(IndexedSlices(cuda.to_device(vals), idx), ws)])
        od.apply_gradients([(cuda.to_device(dense), wd)])
    assert_same_bits(ws, wd, "var")
    for name in ("m", "v", "vhat"):
        assert_same_bits(os_.get_slot(ws, name), od.get_slot(wd, name), name)


def test_empty_sparse_gradient(cuda):
    var0 = np.random.default_rng(7).standard_normal((20, 3)).astype(np.float32)
    empty = IndexedSlices(np.zeros((0, 3), np.float32), np.zeros(0, np.int64), (20, 3))
    for mode in ("dense", "lazy"):
        dev_empty = IndexedSlices(
            cuda.to_device(empty.values), cuda.to_device(empty.indices), (20, 3)
        )
        warm = random_sparse(np.random.default_rng(8), 20, 3, 6, np.float32)
        cpu, gpu = pair_run(
            cuda, var0, [warm, empty], dev_slices(cuda), sparse_mode=mode
        )
        assert_runs_equal(cpu, gpu)
        (og, wg) = gpu
        og.apply_gradients([(dev_empty, wg)])


@pytest.mark.parametrize(
    "make_indices",
    [
        pytest.param(
            lambda cuda, i: cuda.to_device(i.astype(np.int64)), id="device-int64"
        ),
        pytest.param(
            lambda cuda, i: cuda.to_device(i.astype(np.int32)), id="device-int32"
        ),
        pytest.param(lambda cuda, i: i.astype(np.int64), id="host-int64"),
        pytest.param(lambda cuda, i: i.astype(np.uint16), id="host-uint16"),
        pytest.param(lambda cuda, i: i.tolist(), id="host-list"),
        pytest.param(
            lambda cuda, i: cuda.to_device(i.astype(np.uint16)), id="device-uint16"
        ),
        pytest.param(
            lambda cuda, i: cuda.to_device(i.astype(np.int8)), id="device-int8"
        ),
    ],
)
def test_indices_on_host_or_device(cuda, make_indices):
    rng = np.random.default_rng(9)
    idx = rng.integers(0, 10, 25)
    vals = rng.standard_normal((25, 2)).astype(np.float32)
    var0 = rng.standard_normal((20, 2)).astype(np.float32)
    wc = var0.copy()
    numbadam.Adam(0.1).apply_gradients([(IndexedSlices(vals, idx), wc)])
    wg = cuda.to_device(var0)
    numbadam.Adam(0.1).apply_gradients(
        [(IndexedSlices(cuda.to_device(vals), make_indices(cuda, idx)), wg)]
    )
    assert_same_bits(wg, wc)


@pytest.mark.parametrize(
    "vdtype,gdtype",
    [
        (np.float32, np.float64),
        (np.float16, np.float64),
        (np.float64, np.float16),
        (np.float16, np.float32),
    ],
)
def test_gradient_cast_on_device_like_cpu(cuda, vdtype, gdtype):
    rng = np.random.default_rng(10)
    var0 = np.array(rng.standard_normal(200), vdtype)
    grads = [np.array(rng.standard_normal(200) * 5, gdtype) for _ in range(2)]
    cpu, gpu = pair_run(cuda, var0, grads, cuda.to_device, learning_rate=0.01)
    assert_runs_equal(cpu, gpu)
    sp = random_sparse(rng, 20, 10, 15, gdtype)
    cpu, gpu = pair_run(cuda, var0.reshape(20, 10), [sp], dev_slices(cuda))
    assert_runs_equal(cpu, gpu)


@pytest.mark.parametrize("shape", [(), (0,), (4, 0), (1,), (3, 1, 2)])
def test_odd_shapes(cuda, shape):
    rng = np.random.default_rng(11)
    var0 = np.array(rng.standard_normal(shape), np.float32)
    grads = [np.array(rng.standard_normal(shape), np.float32) for _ in range(2)]
    cpu, gpu = pair_run(cuda, var0, grads, cuda.to_device, clipnorm=0.3)
    assert_runs_equal(cpu, gpu)


def test_deterministic_runs(cuda):
    # many duplicates, clipnorm, AMSGrad: two runs give the same bits
    rng = np.random.default_rng(12)
    var0 = rng.standard_normal((25, 7)).astype(np.float32)
    grads = [random_sparse(rng, 25, 7, 120, np.float32) for _ in range(2)]
    outs = []
    for _ in range(2):
        opt = numbadam.Adam(0.01, amsgrad=True, clipnorm=0.5)
        w = cuda.to_device(var0)
        for g in grads:
            opt.apply_gradients([(dev_slices(cuda)(g), w)])
        outs.append([host(w)] + [host(x) for x in opt.get_weights()])
    for a, b in zip(*outs):
        assert_same_bits(np.atleast_1d(a), np.atleast_1d(b))


def test_multi_block_launch_shapes(cuda):
    # grid-stride loops at several launch shapes give the same bits
    rng = np.random.default_rng(13)
    var0 = rng.standard_normal((37, 9)).astype(np.float64)
    grads = [
        random_sparse(rng, 37, 9, 70, np.float64),
        random_sparse(rng, 37, 9, 20, np.float64),
    ]
    outs = []
    for tpb, blocks in ((32, 4), (1, 3), (64, 1), (48, 7)):
        _config.CUDA_THREADS_PER_BLOCK, _config.CUDA_MAX_BLOCKS = tpb, blocks
        opt = numbadam.Adam(0.01, amsgrad=True, clipvalue=1.0)
        w = cuda.to_device(var0)
        for g in grads:
            opt.apply_gradients([(dev_slices(cuda)(g), w)])
        outs.append(host(w))
    for o in outs[1:]:
        assert_same_bits(o, outs[0])


def test_threads_per_block_is_checked(cuda):
    _config.CUDA_THREADS_PER_BLOCK = 2048
    w = cuda.to_device(np.zeros(4, np.float32))
    with pytest.raises(ValueError, match="CUDA_THREADS_PER_BLOCK"):
        numbadam.Adam().apply_gradients([(cuda.to_device(np.ones(4, np.float32)), w)])


# ---------------------------------------------------------------------------
# state: slots, weights, mixed backends
# ---------------------------------------------------------------------------


def test_slots_live_on_the_device(cuda):
    w = cuda.to_device(np.ones((5, 4), np.float32))
    opt = numbadam.Adam(amsgrad=True)
    opt.apply_gradients([(cuda.to_device(np.ones((5, 4), np.float32)), w)])
    for name in ("m", "v", "vhat"):
        s = opt.get_slot(w, name)
        assert _dispatch.is_device_array(s) and not isinstance(s, np.ndarray)
        assert tuple(s.shape) == (5, 4) and s.dtype == np.float32
    assert isinstance(opt.iterations, np.ndarray)  # the step counter is on the host


def test_get_and_set_weights_round_trip(cuda):
    rng = np.random.default_rng(14)
    var0 = rng.standard_normal(150).astype(np.float32)
    grads = [rng.standard_normal(150).astype(np.float32) for _ in range(4)]
    og, wg = numbadam.Adam(0.01, amsgrad=True), cuda.to_device(var0)
    oc, wc = numbadam.Adam(0.01, amsgrad=True), var0.copy()
    for g in grads[:2]:
        og.apply_gradients([(cuda.to_device(g), wg)])
        oc.apply_gradients([(g, wc)])
    weights = og.get_weights()
    assert all(type(x) is np.ndarray for x in weights)
    for a, b in zip(weights, oc.get_weights()):
        assert_same_bits(np.atleast_1d(a), np.atleast_1d(b))
    weights[1][...] = 123  # a copy: the device slot does not change
    assert host(og.get_slot(wg, "m"))[0] != 123
    # set_weights copies back to the device, in place
    new = [np.asarray(x).copy() for x in oc.get_weights()]
    new[2] = new[2] * 0.5
    m_dev = og.get_slot(wg, "m")
    og.set_weights(new)
    oc.set_weights(new)
    assert og.get_slot(wg, "m") is m_dev
    assert_same_bits(og.get_slot(wg, "v"), oc.get_slot(wc, "v"))
    for g in grads[2:]:
        og.apply_gradients([(cuda.to_device(g), wg)])
        oc.apply_gradients([(g, wc)])
    assert_runs_equal((oc, wc), (og, wg))


def test_set_weights_into_a_fresh_optimizer(cuda):
    var0 = np.linspace(-1, 1, 140).astype(np.float16)
    g = np.linspace(1, -2, 140).astype(np.float16)
    a, wa = numbadam.Adam(0.1), cuda.to_device(var0)
    a.apply_gradients([(cuda.to_device(g), wa)])
    b, wb = numbadam.Adam(0.1), cuda.to_device(host(wa))
    b.build([wb])
    b.set_weights(a.get_weights())
    a.apply_gradients([(cuda.to_device(g), wa)])
    b.apply_gradients([(cuda.to_device(g), wb)])
    assert_same_bits(wa, wb)


def test_cpu_and_cuda_variables_in_one_call(cuda):
    rng = np.random.default_rng(15)
    a0 = rng.standard_normal((10, 13)).astype(np.float32)
    b0 = rng.standard_normal((12, 3)).astype(np.float64)
    ga = [rng.standard_normal((10, 13)).astype(np.float32) for _ in range(2)]
    gb = [random_sparse(rng, 12, 3, 9, np.float64) for _ in range(2)]
    ref = numbadam.Adam(0.01, clipvalue=1.0)
    ra, rb = a0.copy(), b0.copy()
    mixed = numbadam.Adam(0.01, clipvalue=1.0)
    da, hb = cuda.to_device(a0), b0.copy()  # a on the device, b on the host
    for g1, g2 in zip(ga, gb):
        ref.apply_gradients([(g1, ra), (g2, rb)])
        mixed.apply_gradients([(cuda.to_device(g1), da), (g2, hb)])
    assert_same_bits(da, ra)
    assert_same_bits(hb, rb)
    assert _dispatch.is_device_array(mixed.get_slot(da, "m"))
    assert isinstance(mixed.get_slot(hb, "m"), np.ndarray)
    for x, y in zip(mixed.get_weights(), ref.get_weights()):
        assert_same_bits(np.atleast_1d(x), np.atleast_1d(y))


# ---------------------------------------------------------------------------
# host/device policy and validation before any write
# ---------------------------------------------------------------------------


def snapshot(opt, variables):
    return [host(v) for v in variables] + [np.atleast_1d(w) for w in opt.get_weights()]


def assert_untouched(before, opt, variables):
    after = snapshot(opt, variables)
    assert len(after) == len(before)
    for a, b in zip(after, before):
        assert_same_bits(a, b)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda cuda: np.ones((6, 4), np.float32), id="numpy"),
        pytest.param(lambda cuda: np.ones((6, 4)).tolist(), id="list"),
        pytest.param(
            lambda cuda: IndexedSlices(np.ones((1, 4), np.float32), [0]),
            id="host-values",
        ),
    ],
)
def test_host_gradient_for_device_variable_is_a_type_error(cuda, make):
    w = cuda.to_device(np.zeros((6, 4), np.float32))
    ok = cuda.to_device(np.zeros(3, np.float32))
    opt = numbadam.Adam()
    opt.apply_gradients([(cuda.to_device(np.ones(3, np.float32)), ok)])
    before = snapshot(opt, [ok, w])
    with pytest.raises(TypeError, match=r"variable 1 .*host .*CUDA array"):
        opt.apply_gradients(
            [(cuda.to_device(np.ones(3, np.float32)), ok), (make(cuda), w)]
        )
    assert_untouched(before, opt, [ok, w])


def test_device_gradient_for_host_variable_is_a_type_error(cuda):
    w = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="CUDA"):
        numbadam.Adam().apply_gradients([(cuda.to_device(np.ones(4, np.float32)), w)])
    with pytest.raises(TypeError, match="CUDA"):
        numbadam.Adam().apply_gradients(
            [
                (
                    IndexedSlices(
                        np.ones((1, 4), np.float32), cuda.to_device(np.array([0]))
                    ),
                    np.zeros((2, 4), np.float32),
                )
            ]
        )


@pytest.mark.parametrize(
    "indices,error",
    [([0, -1], "negative index -1"), ([3, 10], "index 10 out of range for 10 rows")],
)
@pytest.mark.parametrize("where", ["device", "host"])
def test_index_range_checked_before_any_write(cuda, indices, error, where):
    w = cuda.to_device(np.ones((10, 2), np.float32))
    other = cuda.to_device(np.ones(5, np.float32))
    opt = numbadam.Adam()
    opt.apply_gradients([(cuda.to_device(np.ones(5, np.float32)), other)])
    before = snapshot(opt, [other, w])
    idx = np.array(indices)
    idx = cuda.to_device(idx) if where == "device" else idx
    bad = IndexedSlices(cuda.to_device(np.ones((2, 2), np.float32)), idx)
    with pytest.raises(IndexError, match=error):
        opt.apply_gradients([(cuda.to_device(np.ones(5, np.float32)), other), (bad, w)])
    assert_untouched(before, opt, [other, w])


@pytest.mark.parametrize(
    "make,error,match",
    [
        pytest.param(
            lambda c: c.to_device(np.ones(5, np.float32)),
            ValueError,
            "shape",
            id="shape",
        ),
        pytest.param(
            lambda c: c.to_device(np.ones((6, 4), np.int32)),
            TypeError,
            "floating",
            id="int-gradient",
        ),
        pytest.param(
            lambda c: IndexedSlices(
                c.to_device(np.ones((2, 3), np.float32)), c.to_device(np.array([0, 1]))
            ),
            ValueError,
            "rows of shape",
            id="sparse-width",
        ),
        pytest.param(
            lambda c: IndexedSlices(
                c.to_device(np.ones((2, 4), np.float32)),
                c.to_device(np.array([0, 1, 2])),
            ),
            ValueError,
            "3 indices",
            id="sparse-count",
        ),
        pytest.param(
            lambda c: IndexedSlices(
                c.to_device(np.ones((2, 4), np.float32)),
                c.to_device(np.array([0.0, 1.0])),
            ),
            TypeError,
            "integers",
            id="float-indices",
        ),
        pytest.param(
            lambda c: IndexedSlices(
                c.to_device(np.ones((2, 4), np.float32)), [0, 1], (7, 4)
            ),
            ValueError,
            "dense_shape",
            id="dense-shape",
        ),
    ],
)
def test_bad_gradients(cuda, make, error, match):
    w = cuda.to_device(np.ones((6, 4), np.float32))
    opt = numbadam.Adam()
    with pytest.raises(error, match=match):
        opt.apply_gradients([(make(cuda), w)])
    assert opt.weights in ([], [opt.iterations])
    assert_same_bits(w, np.ones((6, 4), np.float32))


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(
    "view",
    [
        pytest.param(lambda a: a[:, ::2], id="column-slice"),
        pytest.param(lambda a: a[1:, 3:], id="block"),
        pytest.param(lambda a: a.T, id="transpose"),
        pytest.param(lambda a: a[::2], id="row-slice"),
    ],
)
def test_strided_device_views_are_staged(cuda, view, sparse):
    rng = np.random.default_rng(16)
    base0 = rng.standard_normal((12, 10)).astype(np.float32)
    host_base, dev_base = base0.copy(), cuda.to_device(base0)
    hv, dv = view(host_base), view(dev_base)
    shape = hv.shape
    oc, og = numbadam.Adam(0.1, amsgrad=True), numbadam.Adam(0.1, amsgrad=True)
    for _ in range(2):
        if sparse:
            g = random_sparse(rng, shape[0], shape[1], 7, np.float32)
            gd = dev_slices(cuda)(g)
        else:  # a strided device gradient too
            g = rng.standard_normal(shape).astype(np.float32)
            gbase = np.zeros((12, 10), np.float32)
            view(gbase)[...] = g
            gd = view(cuda.to_device(gbase))
        oc.apply_gradients([(g, hv)])
        og.apply_gradients([(gd, dv)])
    # the view was updated in place, the rest of the base array untouched
    assert_same_bits(dev_base, host_base)
    assert_same_bits(og.get_slot(dv, "vhat"), oc.get_slot(hv, "vhat"))


def test_unstageable_device_views_are_refused(cuda):
    base = cuda.to_device(np.ones((4, 6), np.float32))
    try:
        rev = base[::-1]
    except Exception:  # pragma: no cover - no negative steps on this target
        pytest.skip("negative strides not supported here")
    opt = numbadam.Adam()
    with pytest.raises(ValueError, match="non-contiguous"):
        opt.apply_gradients([(cuda.to_device(np.ones((4, 6), np.float32)), rev)])
    assert opt.weights in ([], [opt.iterations])


def test_bad_device_variable_dtype(cuda):
    w = cuda.to_device(np.zeros(3, np.int32))
    with pytest.raises(TypeError, match="float16, float32 or float64"):
        numbadam.Adam().apply_gradients([(cuda.to_device(np.ones(3, np.float32)), w)])


# ---------------------------------------------------------------------------
# arrays of other libraries (real GPUs only)
# ---------------------------------------------------------------------------


def test_cupy_arrays(cuda):
    if simulator():
        pytest.skip("CuPy arrays need a real GPU")
    cp = pytest.importorskip("cupy")
    var0 = np.linspace(-1, 1, 300).astype(np.float32)
    g = np.linspace(2, -1, 300).astype(np.float32)
    w = cp.asarray(var0)
    opt = numbadam.Adam(0.1)
    opt.apply_gradients([(cp.asarray(g), w)])
    ref = var0.copy()
    numbadam.Adam(0.1).apply_gradients([(g, ref)])
    assert_same_bits(cp.asnumpy(w), ref)
    assert _dispatch.is_device_array(opt.get_slot(w, "m"))


def test_torch_cuda_tensors(cuda):
    if simulator():
        pytest.skip("PyTorch CUDA tensors need a real GPU")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("PyTorch without CUDA")
    var0 = np.linspace(-1, 1, 300).astype(np.float32)
    g = np.linspace(2, -1, 300).astype(np.float32)
    w = torch.from_numpy(var0.copy()).cuda()
    numbadam.Adam(0.1).apply_gradients([(torch.from_numpy(g).cuda(), w)])
    ref = var0.copy()
    numbadam.Adam(0.1).apply_gradients([(g, ref)])
    assert_same_bits(w.cpu().numpy(), ref)


def test_gpu_report_smoke(cuda, tmp_path):
    """``asv_bench/gpu_report.py``, the one command for a lent GPU, runs every
    case end to end (tiny sizes; the timings mean nothing here) and its check
    finds the GPU's steps bitwise equal to the CPU's."""
    import importlib.util
    import json
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "asv_bench" / "gpu_report.py"
    spec = importlib.util.spec_from_file_location("gpu_report", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = tmp_path / "gpu.json"
    assert mod.main(["--smoke", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    assert data["errors"] == []
    cases = {(r["case"], r["impl"]) for r in data["rows"]}
    for case in [
        ("copy", "numba copy_to_device"),
        ("dense", "numbadam"),
        ("amsgrad", "numbadam"),
        ("sparse TF rule", "numbadam"),
        ("sparse TF rule", "numbadam dense step, same table"),
        ("sparse lazy", "numbadam"),
        ("launch, 10 elements", "numbadam"),
        ("adamw", "numbadam"),
        ("ema", "numbadam"),
        ("accumulation cycle of 2", "numbadam"),
    ]:
        assert case in cases, case
    check = [g for g in data["goals"] if g["goal"].startswith("GPU == CPU")]
    assert check and check[0]["met"], data["goals"]
