"""A NumPy logistic regression trained with :class:`numbadam.Adam`.

Run with ``python -m numbadam.examples.logistic``; prints the loss per epoch.
"""

from __future__ import annotations

import numpy as np

import numbadam


def make_data(n: int = 4000, d: int = 20, seed: int = 0):
    """A seeded, linearly separable-ish binary classification problem."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)).astype(np.float32)
    w_true = rng.standard_normal(d).astype(np.float32)
    logits = x @ w_true + 0.5 * rng.standard_normal(n).astype(np.float32)
    y = (logits > 0).astype(np.float32)
    return x, y


def train(epochs: int = 10, batch: int = 128, seed: int = 0, verbose: bool = True):
    """Train and return the list of per-epoch mean losses."""
    x, y = make_data(seed=seed)
    rng = np.random.default_rng(seed + 1)
    w = np.zeros(x.shape[1], np.float32)
    b = np.zeros((), np.float32)
    opt = numbadam.Adam(learning_rate=0.05)
    history = []
    for epoch in range(epochs):
        order = rng.permutation(len(x))
        losses = []
        for s in range(0, len(x), batch):
            idx = order[s : s + batch]
            xb, yb = x[idx], y[idx]

            def loss():
                z = xb @ w + b
                p = 1.0 / (1.0 + np.exp(-z))
                eps = 1e-7
                value = -np.mean(yb * np.log(p + eps) + (1 - yb) * np.log(1 - p + eps))
                err = (p - yb) / len(yb)
                return float(value), [xb.T @ err, np.sum(err)]

            losses.append(opt.minimize(loss, [w, b]))
        history.append(float(np.mean(losses)))
        if verbose:
            acc = np.mean(((x @ w + b) > 0) == (y > 0.5))
            print(f"epoch {epoch + 1:2d}  loss {history[-1]:.4f}  accuracy {acc:.3f}")
    return history


if __name__ == "__main__":
    train()
