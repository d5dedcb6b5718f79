"""The ``@cuda.jit`` kernels of ``numbadam.kernels.cuda``, launched directly.

Each kernel is checked against a NumPy twin computing the same operations in the
compute dtype (so the comparison is bitwise: IEEE +, -, *, / and sqrt are
correctly rounded everywhere) and against the float64 oracle of
``tests/reference.py`` (to the dtype's tolerance). Launches are small
(``conftest`` sets 32 threads x 4 blocks) and arrays larger than a grid, so the
grid-stride loops, the tile sort's block loop and the merge passes all run.

Run without a GPU with ``NUMBA_ENABLE_CUDASIM=1 pytest -m cuda``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from reference import adam_dense_ref, sparse_to_dense

from numbadam import _config
from numbadam._backend import compute_dtype, transform_scalars

pytestmark = [
    pytest.mark.cuda,
    # the simulator computes on NumPy scalars, which warn on inf/nan arithmetic
    pytest.mark.filterwarnings("ignore::RuntimeWarning"),
]

DTYPES = (np.float16, np.float32, np.float64)
N = 300  # > 32 threads x 4 blocks: every thread loops


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
def kc(cuda):
    from numbadam.kernels import cuda as kernels

    return kernels


@pytest.fixture(scope="module")
def be(cuda):
    from numbadam._dispatch import backend_for

    return backend_for(cuda.to_device(np.zeros(1, np.float32)))


@pytest.fixture(autouse=True, scope="module")
def _fast_simulator():
    # The simulator runs each CUDA thread as a Python thread and polls them at
    # syncthreads; a short GIL switch interval makes barriers ~4x faster.
    from numba import config

    if not config.ENABLE_CUDASIM:
        yield
        return
    old = sys.getswitchinterval()
    sys.setswitchinterval(5e-5)
    yield
    sys.setswitchinterval(old)


def launch(kernel, n, *args):
    tpb = _config.CUDA_THREADS_PER_BLOCK
    blocks = max(1, min(_config.CUDA_MAX_BLOCKS, -(-n // tpb)))
    kernel[blocks, tpb](*args)


def state_args(dev):
    """``var, m, v, vhat`` kernel arguments from ``[var, m, v, vhat or None]``:
    the step kernels take the AMSGrad slot as ``()`` or ``(vhat,)``."""
    h = dev[3] if len(dev) > 3 else None
    return (dev[0], dev[1], dev[2], () if h is None else (h,))


def bits(a):
    a = np.ascontiguousarray(np.atleast_1d(a)).reshape(-1)
    return a.view({2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def assert_same_bits(actual, expected, what=""):
    """Bitwise equal, except that any NaN matches any NaN (payloads differ by
    target)."""
    a, e = np.asarray(actual), np.asarray(expected)
    assert a.dtype == e.dtype and a.shape == e.shape, what
    nan_a, nan_e = np.isnan(a), np.isnan(e)
    assert np.array_equal(nan_a, nan_e), f"{what}: NaN positions differ"
    ok = bits(a)[~nan_a.reshape(-1)] == bits(e)[~nan_e.reshape(-1)]
    if not ok.all():
        i = np.flatnonzero(~ok)[:3]
        raise AssertionError(
            f"{what}: {np.count_nonzero(~ok)} entries differ, e.g. "
            f"{a.reshape(-1)[~nan_a.reshape(-1)][i]} vs "
            f"{e.reshape(-1)[~nan_e.reshape(-1)][i]}"
        )


TOL = {np.float64: 1e-13, np.float32: 2e-5, np.float16: 2e-3}


def assert_near(actual, expected64, dtype, what=""):
    a = np.asarray(actual, np.float64)
    scale = max(1.0, float(np.max(np.abs(expected64))))
    err = np.max(np.abs(a - expected64)) / scale
    assert err <= TOL[dtype] + float(np.finfo(dtype).eps), f"{what}: rel err {err:.3g}"


# ---------------------------------------------------------------------------
# NumPy twins of the kernels, in the compute dtype
# ---------------------------------------------------------------------------


def coefficients(dtype, t=3, lr=0.01, b1=0.9, b2=0.999, eps=1e-7):
    c = compute_dtype(dtype).type
    one = c(1)
    b1c, b2c = c(np.float32(b1)), c(np.float32(b2))
    tt = c(t)
    alpha = (c(np.float32(lr)) * np.sqrt(one - b2c**tt)) / (one - b1c**tt)
    return alpha, one - b1c, one - b2c, c(eps)


def transforms(dtype, kind, grad):
    """``(lo, hi, mul, div)`` for ``kind``; clipnorm uses ``grad``'s float64 norm."""
    if kind == "identity":
        return transform_scalars(dtype, None, None, None)
    if kind == "clipvalue":
        return transform_scalars(dtype, 0.7, None, None)
    lo, hi, _, _ = transform_scalars(dtype, 0.7, None, None)
    g = np.clip(grad.astype(compute_dtype(dtype)), lo, hi).astype(np.float64)
    return transform_scalars(dtype, 0.7, 1.5, float(np.sum(g * g)))


def twin_transform(g, lo, hi, mul, div):
    c = np.where(g < lo, lo, np.where(g > hi, hi, g))
    return (c * mul) / div


def twin_update(x, g, m, v, vhat, alpha, omb1, omb2, eps):
    """The kernels' element arithmetic on compute-dtype arrays."""
    m = m + (g - m) * omb1
    v = v + (g * g - v) * omb2
    if vhat is not None:
        vhat = np.where(v > vhat, v, vhat)
        d = vhat
    else:
        d = v
    x = x - (m * alpha) / (np.sqrt(d) + eps)
    return x, m, v, vhat


def twin_dense(state, g, coef, tr):
    dtype = state[0].dtype
    c = compute_dtype(dtype)
    up = [None if a is None else a.astype(c) for a in state]
    gt = twin_transform(g.astype(c), *tr)
    with np.errstate(all="ignore"):
        out = twin_update(up[0], gt, up[1], up[2], up[3], *coef)
    return [None if a is None else a.astype(dtype) for a in out]


def twin_sparse_gradient(shape, indices, values, tr, lazy=False):
    """Zero-filled gradient, duplicates' transformed rows added in appearance order."""
    c = compute_dtype(values.dtype)
    g = np.zeros(shape, c)
    rows = np.zeros(shape[0], bool)
    vt = twin_transform(values.astype(c), *tr)
    for p, r in enumerate(indices):
        g[r] = g[r] + vt[p]
        rows[r] = True
    return g, rows


def random_state(rng, shape, dtype, amsgrad):
    x = np.array(rng.standard_normal(shape), dtype)
    m = np.array(rng.standard_normal(shape) * 0.1, dtype)
    v = np.array(np.abs(rng.standard_normal(shape)) * 0.01, dtype)
    vhat = (
        np.array(np.abs(rng.standard_normal(shape)) * 0.01, dtype) if amsgrad else None
    )
    return [x, m, v, vhat]


def to_dev(cuda, arrays):
    return [None if a is None else cuda.to_device(a) for a in arrays]


def to_hst(arrays):
    return [None if a is None else a.copy_to_host() for a in arrays]


# ---------------------------------------------------------------------------
# dense kernels
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("kind", ["identity", "clipvalue", "clipnorm"])
def test_dense_kernel_matches_twin_and_oracle(cuda, kc, dtype, amsgrad, kind):
    rng = np.random.default_rng([7, DTYPES.index(dtype), amsgrad, len(kind)])
    state = random_state(rng, N, dtype, amsgrad)
    g = np.array(rng.standard_normal(N) * 2, dtype)
    coef = coefficients(dtype)
    tr = transforms(dtype, kind, g)
    dev = to_dev(cuda, state)
    launch(
        kc.adam_dense_cuda, N, *state_args(dev), cuda.to_device(g), *coef, *tr, (), ()
    )
    got = to_hst(dev)
    want = twin_dense(state, g, coef, tr)
    for name, a, e in zip(("var", "m", "v", "vhat"), got, want):
        if e is not None:
            assert_same_bits(a, e, name)
    # and the float64 oracle of the formulas (clipping done in float64)
    g64 = twin_transform(g.astype(np.float64), *(np.float64(s) for s in tr))
    x64, m64, v64, h64 = twin_update(
        *(
            None if a is None else a.astype(np.float64)
            for a in (state[0], g64) + tuple(state[1:])
        ),
        *(np.float64(s) for s in coef),
    )
    assert_near(got[0], x64, dtype, "var vs float64")
    assert_near(got[1], m64, dtype, "m vs float64")


def test_dense_kernel_matches_reference_module(cuda, kc):
    # The kernel with TF's coefficients is Keras' Adam (tests/reference.py).
    rng = np.random.default_rng(11)
    x, g = rng.standard_normal(N), rng.standard_normal(N)
    m, v = np.zeros(N), np.zeros(N)
    c = np.float64
    alpha = (c(np.float32(0.01)) * np.sqrt(1 - c(np.float32(0.999)))) / (
        1 - c(np.float32(0.9))
    )
    coef = (alpha, 1 - c(np.float32(0.9)), 1 - c(np.float32(0.999)), c(1e-7))
    dev = to_dev(cuda, [x, m, v])
    launch(
        kc.adam_dense_cuda,
        N,
        *state_args(dev),
        cuda.to_device(g),
        *coef,
        *transform_scalars(np.float64, None, None, None),
        (),
        (),
    )
    xr, mr, vr, _ = adam_dense_ref(
        x, g, m, v, 1, lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-7
    )
    np.testing.assert_allclose(dev[0].copy_to_host(), xr, rtol=1e-15, atol=0)
    np.testing.assert_allclose(dev[1].copy_to_host(), mr, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", DTYPES)
def test_dense_kernel_special_values(cuda, kc, dtype):
    info = np.finfo(dtype)
    specials = [
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
    ]
    n = len(specials) ** 2
    g = np.repeat(np.array(specials, dtype), len(specials))
    x = np.tile(np.array(specials, dtype), len(specials))
    m = np.tile(np.array(specials[::-1], dtype), len(specials))
    v = np.abs(np.tile(np.array(specials, dtype), len(specials)))
    vhat = v[::-1].copy()
    coef = coefficients(dtype)
    tr = transform_scalars(dtype, None, None, None)
    dev = to_dev(cuda, [x, m, v, vhat])
    launch(
        kc.adam_dense_cuda, n, *state_args(dev), cuda.to_device(g), *coef, *tr, (), ()
    )
    with np.errstate(all="ignore"):
        want = twin_dense([x, m, v, vhat], g, coef, tr)
    for name, a, e in zip(("var", "m", "v", "vhat"), to_hst(dev), want):
        assert_same_bits(a, e, name)


def test_dense_kernel_odd_launch_shapes(cuda, kc):
    # one thread in one block, and a block size that is not a power of two
    rng = np.random.default_rng(3)
    for tpb, blocks in ((1, 1), (48, 3)):
        state = random_state(rng, 200, np.float32, False)
        g = rng.standard_normal(200).astype(np.float32)
        coef = coefficients(np.float32)
        tr = transforms(np.float32, "clipvalue", g)
        dev = to_dev(cuda, state[:3])
        kc.adam_dense_cuda[blocks, tpb](
            *state_args(dev), cuda.to_device(g), *coef, *tr, (), ()
        )
        want = twin_dense(state, g, coef, tr)
        for a, e in zip(to_hst(dev), want):
            assert_same_bits(a, e)


# ---------------------------------------------------------------------------
# sparse kernels (device sort + fused pass)
# ---------------------------------------------------------------------------


def sorted_keys(cuda, be, indices):
    return be._sorted(cuda.to_device(indices))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "amsgrad,lazy", [(False, False), (True, False), (False, True), (True, True)]
)
def test_sparse_kernel_matches_twin(cuda, kc, be, dtype, amsgrad, lazy):
    rng = np.random.default_rng([5, DTYPES.index(dtype), amsgrad, lazy])
    rows, width, k = 60, 3, 90  # table > grid; k > one tile: merges run
    idx = rng.integers(0, rows // 2, k)  # duplicates; the upper half untouched
    vals = np.array(rng.standard_normal((k, width)) * 3, dtype)
    state = random_state(rng, (rows, width), dtype, amsgrad)
    coef = coefficients(dtype)
    tr = transforms(dtype, "clipnorm", vals)
    keys, pos = sorted_keys(cuda, be, idx)
    dev = to_dev(cuda, [a.reshape(-1) if a is not None else None for a in state])
    kernel = kc.adam_sparse_lazy_cuda if lazy else kc.adam_sparse_cuda
    items = k * width if lazy else rows * width
    mask = cuda.to_device(np.zeros(rows, np.uint8))  # (the lazy kernel's)
    launch(
        kernel,
        items,
        *state_args(dev),
        keys,
        pos,
        k,
        cuda.to_device(vals),
        *coef,
        *tr,
        (),
        (),
        *(((mask,),) if lazy else ()),
    )
    got = [None if a is None else a.reshape(rows, width) for a in to_hst(dev)]
    g, touched = twin_sparse_gradient((rows, width), idx, vals, tr)
    if lazy:  # exactly the stepped rows are marked
        assert mask.copy_to_host().tolist() == touched.astype(np.uint8).tolist()
    want = twin_dense(state, g, coef, transform_scalars(dtype, None, None, None))
    if lazy:  # untouched rows keep their state
        want = [
            None if w is None else np.where(touched[:, None], w, s)
            for w, s in zip(want, state)
        ]
    for nm, a, e in zip(("var", "m", "v", "vhat"), got, want):
        if e is not None:
            assert_same_bits(a, e, nm)
    # float64 oracle: duplicates summed into a zero-filled gradient
    if not lazy:
        g64 = sparse_to_dense(
            (rows, width),
            idx,
            twin_transform(vals.astype(np.float64), *(np.float64(s) for s in tr)),
        )
        x64 = twin_update(
            state[0].astype(np.float64),
            g64,
            state[1].astype(np.float64),
            state[2].astype(np.float64),
            None if state[3] is None else state[3].astype(np.float64),
            *(np.float64(s) for s in coef),
        )[0]
        assert_near(got[0], x64, dtype, "var vs float64")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_unique_equals_dense_with_zero_rows(cuda, kc, be, dtype):
    rng = np.random.default_rng(8)
    rows, width = 50, 4
    idx = rng.permutation(rows)[:17]
    vals = np.array(rng.standard_normal((17, width)), dtype)
    state = random_state(rng, (rows, width), dtype, True)
    coef = coefficients(dtype)
    tr = transform_scalars(dtype, None, None, None)
    keys, pos = sorted_keys(cuda, be, idx)
    sp = to_dev(cuda, [a.reshape(-1) for a in state])
    launch(
        kc.adam_sparse_cuda,
        rows * width,
        *state_args(sp),
        keys,
        pos,
        17,
        cuda.to_device(vals),
        *coef,
        *tr,
        (),
        (),
    )
    dense_g = np.zeros((rows, width), dtype)
    dense_g[idx] = vals
    de = to_dev(cuda, [a.reshape(-1) for a in state])
    launch(
        kc.adam_dense_cuda,
        rows * width,
        *state_args(de),
        cuda.to_device(dense_g.reshape(-1)),
        *coef,
        *tr,
        (),
        (),
    )
    for a, b in zip(to_hst(sp), to_hst(de)):
        assert_same_bits(a, b)


@pytest.mark.parametrize(
    "case",
    ["random", "all_equal", "sorted", "reversed", "one", "tile_plus_one", "int32"],
)
def test_device_sort_is_stable_argsort(cuda, be, case):
    rng = np.random.default_rng(len(case))
    idx = {
        "random": rng.integers(0, 40, 300),
        "all_equal": np.full(150, 7),
        "sorted": np.sort(rng.integers(0, 1000, 200)),
        "reversed": np.arange(200)[::-1].copy(),
        "one": np.array([5]),
        "tile_plus_one": rng.integers(0, 3, 33),
        "int32": rng.integers(0, 2**31 - 1, 260).astype(np.int32),
    }[case]
    keys, pos = sorted_keys(cuda, be, idx)
    order = np.argsort(idx, kind="stable")
    np.testing.assert_array_equal(pos.copy_to_host(), order)
    np.testing.assert_array_equal(keys.copy_to_host(), idx[order].astype(np.int64))


def test_device_sort_with_one_thread_per_block(cuda, be):
    # tiles of one element: the merge passes do all the work
    _config.CUDA_THREADS_PER_BLOCK = 1
    _config.CUDA_MAX_BLOCKS = 2
    idx = np.random.default_rng(2).integers(0, 9, 45)
    keys, pos = sorted_keys(cuda, be, idx)
    np.testing.assert_array_equal(pos.copy_to_host(), np.argsort(idx, kind="stable"))


@pytest.mark.parametrize("itype", [np.int32, np.int64])
def test_index_bounds(cuda, kc, itype):
    rng = np.random.default_rng(4)
    idx = rng.integers(-50, 10**6, 333).astype(itype)
    out = cuda.to_device(np.array([np.iinfo(np.int64).max, np.iinfo(np.int64).min]))
    launch(kc.index_bounds_cuda, idx.size, cuda.to_device(idx), out)
    np.testing.assert_array_equal(out.copy_to_host(), [idx.min(), idx.max()])


# ---------------------------------------------------------------------------
# reductions and helpers
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_sum_squares_float64_and_deterministic(cuda, kc, be, dtype):
    rng = np.random.default_rng(9)
    g = np.array(rng.standard_normal(1000) * 10, dtype)
    lo, hi, _, _ = transform_scalars(dtype, 4.0, None, None)
    d = cuda.to_device(g)
    first = be._sumsq(d, np.dtype(dtype), lo, hi)
    clipped = np.clip(g.astype(compute_dtype(dtype)), lo, hi).astype(np.float64)
    np.testing.assert_allclose(first, np.sum(clipped * clipped), rtol=1e-14)
    assert be._sumsq(d, np.dtype(dtype), lo, hi) == first  # same bits again


def test_sum_squares_odd_block_sizes(cuda, be):
    g = np.arange(1, 258, dtype=np.float64)
    lo, hi, _, _ = transform_scalars(np.float64, None, None, None)
    want = float(np.sum(g * g))  # integers: exact in any order
    for tpb, blocks in ((1, 1), (3, 2), (48, 3), (32, 20)):
        _config.CUDA_THREADS_PER_BLOCK, _config.CUDA_MAX_BLOCKS = tpb, blocks
        assert be._sumsq(cuda.to_device(g), np.dtype(np.float64), lo, hi) == want


@pytest.mark.parametrize(
    ("src", "dst"), [(s, d) for s in DTYPES for d in DTYPES if s != d]
)
def test_cast_kernel_rounds_like_numpy(cuda, kc, src, dst):
    rng = np.random.default_rng(1)
    a = np.array(
        np.concatenate(
            [
                rng.standard_normal(150) * 1e3,
                [np.inf, -np.inf, 7e4, 65519.0, 65520.0, 1e-8, -0.0],
            ]
        ),
        src,
    )
    out = cuda.device_array(a.size, dst)
    launch(kc.cast_cuda, a.size, cuda.to_device(a), out)
    with np.errstate(over="ignore"):
        assert_same_bits(out.copy_to_host(), a.astype(dst))


@pytest.mark.parametrize("dtype", DTYPES)
def test_fill_kernel(cuda, kc, dtype):
    out = cuda.to_device(np.full(200, 3, dtype))
    launch(kc.fill_cuda, 200, out, 0.0)
    assert_same_bits(out.copy_to_host(), np.zeros(200, dtype))


# ---------------------------------------------------------------------------
# compilation
# ---------------------------------------------------------------------------


def test_signatures_do_not_grow(cuda, kc, be):
    from numba import config

    if config.ENABLE_CUDASIM:
        pytest.skip("the simulator compiles nothing")
    import numbadam

    for dtype in DTYPES:
        w = cuda.to_device(np.zeros(64, dtype))
        opt = numbadam.Adam()
        opt.apply_gradients([(cuda.to_device(np.ones(64, dtype)), w)])
    before = len(kc.adam_dense_cuda.signatures)
    assert before == len(DTYPES)
    for dtype in DTYPES:
        w = cuda.to_device(np.zeros(64, dtype))
        opt = numbadam.Adam()
        for _ in range(2):
            opt.apply_gradients([(cuda.to_device(np.ones(64, dtype)), w)])
    assert len(kc.adam_dense_cuda.signatures) == before


_PTX_CHECK = textwrap.dedent(
    r"""
    # Compile every declared signature to PTX with NVVM, without a GPU: the
    # simulator does not type-check kernels, this does.
    import re, sys
    from types import SimpleNamespace
    try:
        import numba.cuda.cuda_paths as cp
        import numba.cuda.cudadrv.nvrtc as nvrtc
        import numba.cuda.dispatcher as disp
        from numba.cuda import compiler
        # device functions ask the driver for the compute capability; the
        # architecture list comes from NVRTC; neither is needed to make PTX
        disp.get_current_device = lambda: SimpleNamespace(compute_capability=(8, 0))
        nvrtc.get_supported_ccs = lambda: [(8, 0)]
        cp._get_nvrtc_path = lambda: cp._env_path_tuple("unused", None)
        cp.get_cuda_paths()["nvvm"]
        from numba.cuda.cudadrv import nvvm
        nvvm.NVVM()
    except Exception as exc:
        print("SETUP", type(exc).__name__, exc)
        sys.exit(0)
    from numbadam.kernels import cuda as kc
    from numbadam.kernels import rowwise_cuda as rc

    sigs = [
        (mod, n, s)
        for mod in (kc, rc)
        for n, per in mod.SIGNATURES.items()
        for ss in per.values()
        for s in ss
    ]
    sigs += [(kc, n, s) for n, ss in kc.SHARED_SIGNATURES.items() for s in ss]
    for mod, name, sig in sigs:
        ptx, _ = compiler.compile_ptx(getattr(mod, name).py_func, sig, cc=(8, 0))
        bad = re.findall(r"\bfma\.|\bmul\.f|\b(?:div|sqrt)\.(?:approx|full)", ptx)
        print("KERNEL", name, sig[0].dtype, "BAD" if bad else "OK", sorted(set(bad)))
    """
)


def test_kernels_compile_to_ptx_without_fma(cuda):
    """Every signature (the row-wise kernels' too) type-checks for the GPU;
    products are mul.rn, never FMA."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["NUMBA_FORCE_CUDA_CC"] = "8.0"
    proc = subprocess.run(
        [sys.executable, "-c", _PTX_CHECK],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.stdout.startswith("SETUP"):
        pytest.skip(f"no NVVM to compile with: {proc.stdout.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("KERNEL")]
    assert len(lines) > 30
    assert sum(" adam_rowwise_" in ln for ln in lines) == 120  # 40 per dtype
    assert not [ln for ln in lines if " BAD " in ln], proc.stdout
