"""A NumPy multilayer perceptron on scikit-learn's handwritten digits.

``sklearn.datasets.load_digits`` ships inside scikit-learn (1,797 8x8 images,
no download). The forward and backward passes are plain NumPy; every weight
is updated by :class:`numbadam.Adam` with dense gradients.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

import numbadam

from ._common import Reporter, format_seconds, resume_or_start, save_epoch, warm_up

__all__ = ["MLP", "MLPSettings", "SKLEARN_HINT", "load_digits_split", "train_mlp"]

#: Pixels of scikit-learn's 8x8 digits (the MLP's inputs) and classes.
DIGITS_FEATURES, DIGITS_CLASSES = 64, 10

SKLEARN_HINT = (
    "scikit-learn is not installed, so the MLP on handwritten digits is skipped; "
    "get it with: pip install 'numbadam[examples]' (or pip install scikit-learn)"
)


@dataclass(frozen=True)
class MLPSettings:
    """Architecture and hyperparameters of the MLP run.

    Examples
    --------
    >>> from numbadam.cli.demo.mlp import MLPSettings
    >>> MLPSettings().hidden, MLPSettings.quick().epochs
    ((128, 64), 8)
    """

    hidden: Tuple[int, ...] = (128, 64)
    epochs: int = 20
    batch_size: int = 32
    learning_rate: float = 0.001
    test_fraction: float = 0.25
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> "MLPSettings":
        """A configuration that trains in about a second."""
        return replace(cls(epochs=8), **overrides)

    def identity(self) -> Dict[str, Any]:
        """Everything that shapes the trajectory (all but ``epochs``)."""
        d = asdict(self)
        d["hidden"] = list(d["hidden"])
        del d["epochs"]
        return d

    def sizes(self) -> Tuple[int, ...]:
        """The layer widths on the digits: inputs, ``hidden``, classes."""
        return (DIGITS_FEATURES, *self.hidden, DIGITS_CLASSES)

    def variable_shapes(self) -> Dict[str, Tuple[int, ...]]:
        """The shapes of the float32 variables of :class:`MLP` of :meth:`sizes`."""
        widths = self.sizes()
        out: Dict[str, Tuple[int, ...]] = {}
        for k, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            out[f"dense_{k}/kernel"] = (n_in, n_out)
            out[f"dense_{k}/bias"] = (n_out,)
        return out


def load_digits_split(
    test_fraction: float = 0.25, seed: int = 0
) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The digits data, scaled to [0, 1] (float32), in a seeded train/test split.

    Returns
    -------
    x_train, y_train, x_test, y_test : numpy.ndarray

    Raises
    ------
    ImportError
        If scikit-learn is not installed (message: how to install it).

    Examples
    --------
    >>> import pytest; _ = pytest.importorskip("sklearn")
    >>> from numbadam.cli.demo.mlp import load_digits_split
    >>> x_train, y_train, x_test, y_test = load_digits_split()
    >>> x_train.shape, x_test.shape, int(y_train.max())
    ((1348, 64), (449, 64), 9)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError(SKLEARN_HINT) from None
    digits = load_digits()
    x = (digits.data / 16.0).astype(np.float32)
    y = digits.target.astype(np.int64)
    order = np.random.default_rng([seed, 4]).permutation(len(y))
    n_test = int(round(len(y) * test_fraction))
    test, train = order[:n_test], order[n_test:]
    return x[train], y[train], x[test], y[test]


class MLP:
    """A ReLU multilayer perceptron with a softmax cross-entropy loss.

    Parameters
    ----------
    sizes : sequence of int
        Layer widths, input first and classes last, e.g. ``(64, 128, 64, 10)``.
    seed : int, optional
        Seeds the He-normal initial kernels; biases start at zero.

    Attributes
    ----------
    variables : dict of str to numpy.ndarray
        ``dense_<k>/kernel`` and ``dense_<k>/bias`` (float32) per layer.

    Examples
    --------
    >>> import numpy as np
    >>> import numbadam
    >>> from numbadam.cli.demo.mlp import MLP
    >>> net = MLP((4, 8, 3), seed=0)
    >>> x = np.random.default_rng(0).random((5, 4), dtype=np.float32)
    >>> y = np.array([0, 1, 2, 1, 0])
    >>> loss, grads = net.loss_and_gradients(x, y)
    >>> opt = numbadam.Adam(learning_rate=0.01)
    >>> for _ in range(20):
    ...     loss2, grads = net.loss_and_gradients(x, y)
    ...     _ = opt.apply_gradients(zip(grads, net.variables.values()))
    >>> bool(loss2 < loss), net.predict(x).shape
    (True, (5,))
    """

    def __init__(self, sizes: Sequence[int], seed: int = 0) -> None:
        rng = np.random.default_rng([seed, 5])
        self.variables: Dict[str, np.ndarray] = {}
        for k, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
            w = rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)
            self.variables[f"dense_{k}/kernel"] = w.astype(np.float32)
            self.variables[f"dense_{k}/bias"] = np.zeros(n_out, np.float32)
        self.n_layers = len(sizes) - 1

    @property
    def n_parameters(self) -> int:
        """Total number of trained scalars."""
        return int(sum(v.size for v in self.variables.values()))

    def _params(self, k: int) -> Tuple[np.ndarray, np.ndarray]:
        return self.variables[f"dense_{k}/kernel"], self.variables[f"dense_{k}/bias"]

    def logits(self, x: np.ndarray) -> np.ndarray:
        """The network's output before the softmax."""
        h = x
        for k in range(self.n_layers):
            w, b = self._params(k)
            h = h @ w + b
            if k < self.n_layers - 1:
                h = np.maximum(h, 0)
        return h

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Predicted class per row of ``x``."""
        return np.argmax(self.logits(x), axis=1)

    def accuracy(self, x: np.ndarray, y: np.ndarray) -> float:
        """Fraction of rows classified correctly."""
        return float(np.mean(self.predict(x) == y))

    def loss_and_gradients(self, x: np.ndarray, y: np.ndarray):
        """Mean cross-entropy of a batch and its gradients (backpropagation).

        Returns
        -------
        loss : float
        gradients : list of numpy.ndarray
            In :attr:`variables` order.
        """
        acts = [x]
        h = x
        for k in range(self.n_layers):
            w, b = self._params(k)
            h = h @ w + b
            if k < self.n_layers - 1:
                h = np.maximum(h, 0)
            acts.append(h)
        logits = acts[-1]
        shifted = logits - logits.max(axis=1, keepdims=True)
        log_z = np.log(np.exp(shifted).sum(axis=1, keepdims=True))
        log_p = shifted - log_z
        n = len(y)
        loss = -float(np.mean(log_p[np.arange(n), y], dtype=np.float64))
        delta = np.exp(log_p)
        delta[np.arange(n), y] -= 1
        delta /= np.float32(n)
        grads: List[np.ndarray] = [None] * (2 * self.n_layers)  # type: ignore
        for k in range(self.n_layers - 1, -1, -1):
            w, _ = self._params(k)
            grads[2 * k] = acts[k].T @ delta
            grads[2 * k + 1] = delta.sum(axis=0)
            if k:
                delta = (delta @ w.T) * (acts[k] > 0)
        return loss, grads


def train_mlp(
    settings: MLPSettings,
    reporter: Optional[Reporter] = None,
    checkpoint_path: Optional[str] = None,
    resume: bool = False,
    checkpoint: Optional[numbadam.Checkpoint] = None,
) -> Dict[str, Any]:
    """Train the MLP on the digits and report test accuracy every epoch.

    Parameters
    ----------
    settings : MLPSettings
    reporter : Reporter, optional
    checkpoint_path : str, optional
        Save a checkpoint there after every epoch.
    resume : bool, optional
        Continue from ``checkpoint_path`` if it exists.
    checkpoint : numbadam.Checkpoint, optional
        ``checkpoint_path`` already read and checked (by
        :func:`~numbadam.cli.demo.prepare_demo`), to resume from.

    Returns
    -------
    dict
        ``settings``, ``n_parameters``, ``history`` (``epoch``, ``train_loss``,
        ``test_accuracy``, ``seconds``, ``steps_per_s``, ``updates_per_s``) and
        ``final``.

    Raises
    ------
    ImportError
        Without scikit-learn.

    Examples
    --------
    >>> import pytest; _ = pytest.importorskip("sklearn")
    >>> from numbadam.cli.demo.mlp import MLPSettings, train_mlp
    >>> result = train_mlp(MLPSettings(epochs=3))
    >>> result["final"]["test_accuracy"] > 0.9
    True
    """
    reporter = reporter or Reporter(mode="silent")
    s = settings
    t0 = time.perf_counter()
    x_train, y_train, x_test, y_test = load_digits_split(s.test_fraction, s.seed)
    net = MLP(s.sizes(), seed=s.seed)
    n_params = net.n_parameters
    steps_per_epoch = -(-len(y_train) // s.batch_size)
    arch = "-".join(str(n) for n in s.sizes())
    reporter.line(
        f"MLP on scikit-learn's handwritten digits (8x8 images): {len(y_train):,} "
        f"training and {len(y_test):,} test images"
    )
    reporter.line(
        f"  {arch} ReLU network, {n_params:,} parameters; dense gradients, batch "
        f"{s.batch_size}, {steps_per_epoch} Adam steps per epoch; chance is 10%"
    )
    opt, start, history = resume_or_start(
        "mlp",
        checkpoint_path,
        resume,
        net.variables,
        s.identity(),
        reporter,
        s.epochs,
        "test_accuracy",
        checkpoint,
    )
    if opt is None:
        opt = numbadam.Adam(learning_rate=s.learning_rate)
    compile_seconds = warm_up(reporter)
    reporter.table_header(
        ["epoch", "train loss", "test accuracy", "steps/s", "param updates/s", "time"]
    )
    for row in history:
        reporter.table_row(_mlp_row(row), resumed=True)
    for epoch in range(start, s.epochs):
        order = np.random.default_rng([s.seed, 6, epoch]).permutation(len(y_train))
        losses = np.empty(steps_per_epoch)
        bar = reporter.bar(steps_per_epoch, f"mlp {epoch + 1}/{s.epochs}")
        variables = list(net.variables.values())
        t = time.perf_counter()
        for k in range(steps_per_epoch):
            idx = order[k * s.batch_size : (k + 1) * s.batch_size]
            loss, grads = net.loss_and_gradients(x_train[idx], y_train[idx])
            opt.apply_gradients(zip(grads, variables))
            losses[k] = loss
            if bar.due(k):
                rate = (k + 1) / (time.perf_counter() - t)
                bar.update(k + 1, f"loss {loss:.4f}, {rate:.0f} steps/s")
        seconds = time.perf_counter() - t
        bar.close()
        row = {
            "epoch": epoch + 1,
            "train_loss": float(losses.mean()),
            "test_accuracy": net.accuracy(x_test, y_test),
            "seconds": seconds,
            "steps_per_s": steps_per_epoch / seconds,
            "updates_per_s": steps_per_epoch / seconds * n_params,
        }
        history.append(row)
        reporter.table_row(_mlp_row(row))
        save_epoch(
            "mlp", checkpoint_path, opt, net.variables, s.identity(), history, reporter
        )
    return {
        "settings": {**asdict(s), "hidden": list(s.hidden)},
        "n_parameters": n_params,
        "n_train": len(y_train),
        "n_test": len(y_test),
        "compile_seconds": compile_seconds,
        "resumed_from_epoch": start,
        "history": history,
        "final": history[-1] if history else None,
        "total_seconds": time.perf_counter() - t0,
    }


def _mlp_row(row: Dict[str, Any]) -> List[str]:
    return [
        str(row["epoch"]),
        f"{row['train_loss']:.4f}",
        f"{100 * row['test_accuracy']:.1f}%",
        f"{row['steps_per_s']:.0f}",
        f"{row['updates_per_s']:.2e}",
        format_seconds(row["seconds"]),
    ]
