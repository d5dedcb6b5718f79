"""One Adam step on a GPU, per CUDA kernel family, with bandwidth references.

Every ``setup`` raises ``NotImplementedError`` (asv's "skip") without a real GPU:
numba-cuda missing, no device, or the simulator (``NUMBA_ENABLE_CUDASIM=1``).
``setup`` takes one step first, so compilation (or loading from Numba's disk
cache) and slot creation are not timed. Every timing ends with
``cuda.synchronize()``: kernel launches are asynchronous.

Goals: the ``cuda`` rows of numbadam's one table,
:data:`numbadam.cli.goals.GOALS` (``asv_bench/gpu_report.py`` scores them in
one run): ``cuda-dense-copy`` (the dense step next to :class:`DeviceCopy`),
``cuda-dense-torch`` and ``cuda-amsgrad-torch`` (next to
:class:`TorchFusedAdam`), ``cuda-sparse-dense`` (:class:`SparseStep` next to
the dense step of the same size).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

DTYPES = ["float16", "float32", "float64"]
SIZES = [10**5, 10**6, 10**7, 10**8]
WIDTH = 64  # embedding width of the sparse tables
NNZ = 10_000  # looked-up rows per sparse step (with duplicates)


def _cuda():
    """``numba.cuda`` on a real GPU, or ``NotImplementedError`` (asv skips)."""
    try:
        from numba import config, cuda
    except ImportError as exc:
        raise NotImplementedError(f"numba-cuda is not installed: {exc}") from None
    if config.ENABLE_CUDASIM:
        raise NotImplementedError("the CUDA simulator is no place for timings")
    if not cuda.is_available():
        raise NotImplementedError("no CUDA GPU")
    return cuda


def _device_random(cuda, shape, dtype, seed, scale=1.0):
    rng = np.random.default_rng(seed)
    host = (rng.standard_normal(shape, dtype=np.float32) * scale).astype(dtype)
    return cuda.to_device(host)


def _fits(cuda, nbytes):
    free, _ = cuda.current_context().get_memory_info()
    if nbytes > 0.8 * free:
        raise NotImplementedError(f"needs {nbytes / 2**30:.1f} GiB of GPU memory")


class _Step:
    """A warmed-up optimizer and its ``(gradient, variable)`` pairs."""

    def _warm(self, cuda, pairs, **kwargs):
        import numbadam

        self.cuda = cuda
        self.pairs = pairs
        self.opt = numbadam.Adam(learning_rate=1e-3, **kwargs)
        self.opt.apply_gradients(self.pairs)
        cuda.synchronize()

    def _step(self):
        self.opt.apply_gradients(self.pairs)
        self.cuda.synchronize()


class DenseStep(_Step):
    """``adam_dense_cuda``: 7 accesses per element (var, g, m, v read; var, m, v
    written)."""

    params: ClassVar[list] = [DTYPES, SIZES]
    param_names: ClassVar[list] = ["dtype", "size"]

    def setup(self, dtype, size):
        cuda = _cuda()
        _fits(cuda, 4 * size * np.dtype(dtype).itemsize)
        var = _device_random(cuda, size, dtype, 0)
        grad = _device_random(cuda, size, dtype, 1)
        self._warm(cuda, [(grad, var)])

    def time_step(self, dtype, size):
        self._step()


class AMSGradStep(_Step):
    """``adam_dense_cuda`` with AMSGrad: 9 accesses per element."""

    params: ClassVar[list] = [DTYPES, SIZES]
    param_names: ClassVar[list] = ["dtype", "size"]

    def setup(self, dtype, size):
        cuda = _cuda()
        _fits(cuda, 5 * size * np.dtype(dtype).itemsize)
        var = _device_random(cuda, size, dtype, 0)
        grad = _device_random(cuda, size, dtype, 1)
        self._warm(cuda, [(grad, var)], amsgrad=True)

    def time_step(self, dtype, size):
        self._step()


class ClipNormStep(_Step):
    """Dense step with ``clipnorm``: the device norm reduction (one more read of
    the gradient and one 8-byte copy back) plus ``adam_dense_cuda``."""

    params: ClassVar[list] = [DTYPES, SIZES]
    param_names: ClassVar[list] = ["dtype", "size"]

    def setup(self, dtype, size):
        cuda = _cuda()
        _fits(cuda, 4 * size * np.dtype(dtype).itemsize)
        var = _device_random(cuda, size, dtype, 0)
        grad = _device_random(cuda, size, dtype, 1)
        self._warm(cuda, [(grad, var)], clipnorm=1.0)

    def time_step(self, dtype, size):
        self._step()


class _FeatureStep(_Step):
    """A float32 dense step with one of #13's features (``kwargs``)."""

    params: ClassVar[list] = [SIZES]
    param_names: ClassVar[list] = ["size"]
    kwargs: ClassVar[dict] = {}
    arrays = 5  # of the variable's size: var, g, m, v and the feature's

    def setup(self, size):
        cuda = _cuda()
        _fits(cuda, self.arrays * size * 4)
        var = _device_random(cuda, size, np.float32, 0)
        grad = _device_random(cuda, size, np.float32, 1)
        self._warm(cuda, [(grad, var)], **self.kwargs)

    def time_step(self, size):
        self._step()


class WeightDecayStep(_FeatureStep):
    """``weight_decay`` (AdamW): 7 accesses per element, as the plain step."""

    kwargs: ClassVar[dict] = {"weight_decay": 0.004}
    arrays = 4


class EmaStep(_FeatureStep):
    """``use_ema``: 9 accesses per element (the average read and written)."""

    kwargs: ClassVar[dict] = {"use_ema": True}


class AccumulationCycle(_FeatureStep):
    """``gradient_accumulation_steps=2``: an accumulating call (3 accesses per
    element) and an applying call (8), timed together."""

    kwargs: ClassVar[dict] = {"gradient_accumulation_steps": 2}

    def setup(self, size):
        super().setup(size)
        self._step()  # (the end of the first cycle)

    def time_step(self, size):
        self.opt.apply_gradients(self.pairs)
        self._step()


class _SparseBase(_Step):
    amsgrad = False

    def setup(self, dtype, size, sparse_mode):
        cuda = _cuda()
        from numbadam import IndexedSlices

        rows = max(size // WIDTH, NNZ)
        _fits(
            cuda,
            (4 if not self.amsgrad else 5) * rows * WIDTH * np.dtype(dtype).itemsize,
        )
        rng = np.random.default_rng(2)
        table = _device_random(cuda, (rows, WIDTH), dtype, 3)
        indices = cuda.to_device(rng.integers(0, rows, NNZ).astype(np.int64))
        values = _device_random(cuda, (NNZ, WIDTH), dtype, 4)
        grad = IndexedSlices(values, indices, (rows, WIDTH))
        self._warm(cuda, [(grad, table)], amsgrad=self.amsgrad, sparse_mode=sparse_mode)


class SparseStep(_SparseBase):
    """``adam_sparse_cuda`` (``"dense"``: the whole table, TensorFlow's rule) and
    ``adam_sparse_lazy_cuda`` (``"lazy"``: the looked-up rows only), with the
    device sort of 1e4 indices; ``size`` is the table's element count."""

    params: ClassVar[list] = [DTYPES, SIZES, ["dense", "lazy"]]
    param_names: ClassVar[list] = ["dtype", "size", "sparse_mode"]

    def time_step(self, dtype, size, sparse_mode):
        self._step()


class SparseAMSGradStep(_SparseBase):
    """``adam_sparse_cuda`` and ``adam_sparse_lazy_cuda`` with AMSGrad."""

    amsgrad = True
    params: ClassVar[list] = [DTYPES, SIZES, ["dense", "lazy"]]
    param_names: ClassVar[list] = ["dtype", "size", "sparse_mode"]

    def time_step(self, dtype, size, sparse_mode):
        self._step()


class DeviceCopy:
    """Reference bandwidth: a device-to-device copy of ``size`` elements (one
    read and one write per element)."""

    params: ClassVar[list] = [DTYPES, SIZES]
    param_names: ClassVar[list] = ["dtype", "size"]

    def setup(self, dtype, size):
        self.cuda = cuda = _cuda()
        _fits(cuda, 2 * size * np.dtype(dtype).itemsize)
        self.src = _device_random(cuda, size, dtype, 0)
        self.dst = cuda.device_array(size, dtype)
        self.dst.copy_to_device(self.src)
        cuda.synchronize()

    def time_copy(self, dtype, size):
        self.dst.copy_to_device(self.src)
        self.cuda.synchronize()


class TorchFusedAdam:
    """Reference: ``torch.optim.Adam(fused=True)`` on one CUDA tensor."""

    params: ClassVar[list] = [["float32"], SIZES]
    param_names: ClassVar[list] = ["dtype", "size"]

    def setup(self, dtype, size):
        _cuda()
        try:
            import torch
        except ImportError:
            raise NotImplementedError("PyTorch is not installed") from None
        if not torch.cuda.is_available():
            raise NotImplementedError("PyTorch has no CUDA")
        self.torch = torch
        gen = torch.Generator(device="cuda").manual_seed(0)
        self.param = torch.nn.Parameter(
            torch.randn(size, device="cuda", generator=gen, dtype=getattr(torch, dtype))
        )
        self.param.grad = torch.randn(
            size, device="cuda", generator=gen, dtype=getattr(torch, dtype)
        )
        self.opt = torch.optim.Adam([self.param], lr=1e-3, eps=1e-7, fused=True)
        self.opt.step()
        torch.cuda.synchronize()

    def time_step(self, dtype, size):
        self.opt.step()
        self.torch.cuda.synchronize()
