"""A float64 NumPy oracle of Keras/TF2 legacy Adam, written from the formulas.

This module never imports numbadam. Every function returns new float64 arrays;
nothing is updated in place.

TensorFlow's conventions reproduced here:

* ``learning_rate``, ``beta_1``, ``beta_2`` and ``decay`` live in float32
  variables, so their values are rounded to float32 (:func:`hyper32`) and then
  cast to the variable's dtype; ``epsilon`` is cast directly (not rounded).
* ``t = iterations + 1``; ``alpha = lr_t * sqrt(1 - beta_2**t) / (1 - beta_1**t)``.
* ApplyAdam: ``m += (g - m) * (1 - beta_1)``; ``v += (g*g - v) * (1 - beta_2)``;
  ``var -= m * alpha / (sqrt(v) + epsilon)``. AMSGrad keeps ``vhat = max(vhat, v)``
  and divides by ``sqrt(vhat)``.
* ``decay``: ``lr_t = lr / (1 + decay * iterations)``.
* Gradient clipping, in this order: ``clip_by_value(g, -clipvalue, clipvalue)``,
  then ``clip_by_norm``: ``g * c / max(||g||, c)``. A sparse gradient is clipped
  on its (not yet de-duplicated) values.
* A sparse gradient (indices, values) is the zero-filled dense gradient with the
  duplicate rows summed; then the dense rule applies to every row.
* Row-wise Adam (:func:`adam_rowwise_step`, FBGEMM's partial row-wise Adam) keeps
  ``m`` per element of an ``(R, D)`` table and ``v`` (``vhat``) per row, moved by
  the row's mean squared gradient ``s = mean_j(g_j**2)``.
* Gradient accumulation (Keras 3's ``gradient_accumulation_steps = N``,
  :func:`run_accumulation_reference`): calls ``1 .. N-1`` of a cycle change no
  variable; call ``N`` takes one step with the mean of the cycle's gradients
  (sparse ones zero-filled; the lazy rule steps the rows listed in any call),
  clipped as one gradient, with ``t = updates + 1`` and learning-rate
  callables read at the call count ``updates * N + N - 1``.
* The lazy sparse rule (TF Addons' LazyAdam, ``sparse_mode="lazy"``): the same
  summed gradient, but only the rows listed in ``indices`` change; the others
  keep their values and slots. The bias correction is that of the global ``t``.
* The EMA of the weights (Keras 3's ``use_ema``, :func:`ema_ref`): after the
  step ``average = momentum * average + (1 - momentum) * var``, with
  ``momentum = 0`` when ``iterations == 0`` (before the increment) and else
  ``ema_momentum`` cast to the variable's dtype; when ``ema_overwrite_frequency``
  divides ``iterations + 1`` the variable then takes the average. The average
  starts at zero.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Callable, Union

import numpy as np

__all__ = [
    "SparseGrad",
    "adam_dense_ref",
    "adam_rowwise_step",
    "adam_sparse_lazy_ref",
    "adam_sparse_ref",
    "clip_ref",
    "clip_global_ref",
    "decayed_lr",
    "ema_ref",
    "hyper32",
    "run_accumulation_reference",
    "run_reference",
    "sparse_to_dense",
]

Hyper = Union[float, Callable[[int], float]]


def hyper32(x: Any) -> float:
    """``x`` rounded to float32, returned as a Python float (TF's hyper variables)."""
    return float(np.float32(x))


def _f64(a: Any) -> np.ndarray:
    return np.array(a, dtype=np.float64, copy=True)


def clip_ref(
    g: Any, clipvalue: float | None = None, clipnorm: float | None = None
) -> np.ndarray:
    """TF's ``clip_by_value`` then ``clip_by_norm`` of ``g``, in float64."""
    g = _f64(g)
    if clipvalue is not None:
        g = np.minimum(np.maximum(g, -float(clipvalue)), float(clipvalue))
    if clipnorm is not None:
        c = float(clipnorm)
        norm = math.sqrt(float(np.sum(g * g)))
        g = (g * c) / max(norm, c)
    return g


def clip_global_ref(
    grads: Sequence[Any], clipvalue: float | None, global_clipnorm: float
) -> list[np.ndarray]:
    """``clip_by_value`` on each gradient, then TF's ``clip_by_global_norm``.

    Every gradient (dense array, or a sparse gradient's values) is scaled by
    ``c / max(norm, c)``, ``norm`` the L2 norm of all of them together.
    """
    out = [_f64(g) for g in grads]
    if clipvalue is not None:
        out = [np.clip(g, -float(clipvalue), float(clipvalue)) for g in out]
    norm = math.sqrt(sum(float(np.sum(g * g)) for g in out))
    c = float(global_clipnorm)
    scale = c / max(norm, c) if c > 0 else 0.0
    return [g * scale for g in out]


def decayed_lr(lr: Any, decay: Any, iterations: int) -> float:
    """``lr / (1 + decay * iterations)`` with ``lr`` and ``decay`` float32-rounded."""
    lr_t = hyper32(lr)
    d = hyper32(decay)
    if d > 0:
        lr_t = lr_t / (1.0 + d * float(iterations))
    return lr_t


def adam_dense_ref(
    var: Any,
    g: Any,
    m: Any,
    v: Any,
    t: int,
    lr: Any,
    beta_1: Any,
    beta_2: Any,
    epsilon: Any,
    vhat: Any = None,
    decay: Any = 0.0,
    weight_decay: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One dense Adam (or AMSGrad, when ``vhat`` is given) step, in float64.

    With ``weight_decay`` (Keras 3's decoupled decay, used as given), first
    ``var = var - var * weight_decay * lr_t`` with the step's learning rate.

    Parameters
    ----------
    var, g, m, v, vhat : array_like
        Current state and the (already clipped) gradient.
    t : int
        The 1-based step, ``iterations + 1``.
    lr, beta_1, beta_2, decay : float
        Hyperparameters; rounded to float32 as TensorFlow stores them.
    epsilon : float
        Used as given (TF casts it directly to the variable's dtype).

    Returns
    -------
    (var, m, v, vhat)
        New float64 arrays; ``vhat`` is ``None`` without AMSGrad.
    """
    var, g, m, v = _f64(var), _f64(g), _f64(m), _f64(v)
    lr_t = decayed_lr(lr, decay, t - 1)
    b1 = hyper32(beta_1)
    b2 = hyper32(beta_2)
    eps = float(epsilon)
    tt = float(t)
    alpha = (lr_t * math.sqrt(1.0 - b2**tt)) / (1.0 - b1**tt)
    if weight_decay:
        var = var - var * float(weight_decay) * lr_t
    m = m + (g - m) * (1.0 - b1)
    v = v + (g * g - v) * (1.0 - b2)
    if vhat is not None:
        vhat = np.maximum(_f64(vhat), v)
        denom = vhat
    else:
        denom = v
    var = var - (m * alpha) / (np.sqrt(denom) + eps)
    return var, m, v, vhat


def sparse_to_dense(shape: Sequence[int], indices: Any, values: Any) -> np.ndarray:
    """The zero-filled dense gradient of ``(indices, values)``, duplicates summed.

    Rows are added in their order of appearance, in float64.
    """
    dense = np.zeros(tuple(shape), np.float64)
    idx = np.asarray(indices).astype(np.int64).reshape(-1)
    np.add.at(dense, idx, _f64(values))
    return dense


def adam_sparse_ref(
    var: Any,
    indices: Any,
    values: Any,
    m: Any,
    v: Any,
    t: int,
    lr: Any,
    beta_1: Any,
    beta_2: Any,
    epsilon: Any,
    vhat: Any = None,
    decay: Any = 0.0,
    weight_decay: float = 0.0,
):
    """One sparse step: sum duplicates into a zero-filled gradient, then dense
    (TensorFlow's rule: every row steps, and is decayed by ``weight_decay``)."""
    g = sparse_to_dense(np.shape(var), indices, values)
    return adam_dense_ref(
        var, g, m, v, t, lr, beta_1, beta_2, epsilon, vhat, decay, weight_decay
    )


def adam_rowwise_step(
    var: Any,
    grad: Any,
    m: Any,
    v: Any,
    t: int,
    lr: Any,
    beta_1: Any,
    beta_2: Any,
    epsilon: Any,
    vhat: Any = None,
    decay: Any = 0.0,
    mode: str = "dense",
    weight_decay: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """One row-wise Adam (or AMSGrad) step of an ``(R, D)`` table, in float64.

    ``m`` has the table's shape, ``v`` (and ``vhat``) one value per row. For a
    row with gradient ``g`` (``D`` values, already clipped): ``s = mean(g**2)``,
    ``m += (g - m) * (1 - beta_1)``, ``v += (s - v) * (1 - beta_2)``, with
    AMSGrad ``vhat = max(vhat, v)``, and ``var -= m * alpha / (sqrt(vhat or v)
    + epsilon)``, ``alpha`` as in :func:`adam_dense_ref`. With
    ``weight_decay`` (Keras 3's decoupled decay) each stepped row is first
    ``var = var - var * weight_decay * lr_t``.

    Parameters
    ----------
    grad : array_like or (indices, values)
        ``mode="dense"``: the ``(R, D)`` gradient. ``"sparse"`` (TF's rule) and
        ``"lazy"``: the slices, duplicate rows summed into a zero-filled
        gradient; ``"sparse"`` steps every row, ``"lazy"`` only the rows in
        ``indices`` (the others are returned unchanged).

    Returns
    -------
    (var, m, v, vhat)
        New float64 arrays; ``vhat`` is ``None`` without AMSGrad. A table of
        width 0 is returned unchanged.
    """
    var, m, v = _f64(var), _f64(m), _f64(v)
    nrows, width = var.shape
    steps = np.ones(nrows, bool)
    if mode == "dense":
        g = _f64(grad)
    elif mode in ("sparse", "lazy"):
        indices, values = grad
        g = sparse_to_dense(var.shape, indices, values)
        if mode == "lazy":
            steps[:] = False
            steps[np.asarray(indices).astype(np.int64).reshape(-1)] = True
    else:
        raise ValueError(f"mode must be dense, sparse or lazy, not {mode!r}")
    vhat = None if vhat is None else _f64(vhat)
    if width == 0:
        return var, m, v, vhat
    lr_t = decayed_lr(lr, decay, t - 1)
    b1 = hyper32(beta_1)
    b2 = hyper32(beta_2)
    eps = float(epsilon)
    tt = float(t)
    alpha = (lr_t * math.sqrt(1.0 - b2**tt)) / (1.0 - b1**tt)
    s = np.mean(g * g, axis=1)
    x = var
    if weight_decay:
        x = var - var * float(weight_decay) * lr_t
    m_new = m + (g - m) * (1.0 - b1)
    v_new = v + (s - v) * (1.0 - b2)
    denom = v_new
    if vhat is not None:
        vhat_new = np.maximum(vhat, v_new)
        denom = vhat_new
        vhat = np.where(steps, vhat_new, vhat)
    var_new = x - (m_new * alpha) / (np.sqrt(denom) + eps)[:, None]
    rows = steps[:, None]
    return (
        np.where(rows, var_new, var),
        np.where(rows, m_new, m),
        np.where(steps, v_new, v),
        vhat,
    )


def adam_sparse_lazy_ref(
    var: Any,
    indices: Any,
    values: Any,
    m: Any,
    v: Any,
    t: int,
    lr: Any,
    beta_1: Any,
    beta_2: Any,
    epsilon: Any,
    vhat: Any = None,
    decay: Any = 0.0,
    weight_decay: float = 0.0,
):
    """One lazy sparse step: the dense rule on the listed rows only.

    Duplicates are summed as in :func:`adam_sparse_ref`; rows not in
    ``indices`` are returned unchanged (``var``, ``m``, ``v`` and ``vhat``),
    and only the listed rows are decayed by ``weight_decay``.
    """
    var, m, v = _f64(var), _f64(m), _f64(v)
    vhat = None if vhat is None else _f64(vhat)
    g = sparse_to_dense(var.shape, indices, values)
    rows = np.unique(np.asarray(indices).astype(np.int64).reshape(-1))
    new = adam_dense_ref(
        var[rows],
        g[rows],
        m[rows],
        v[rows],
        t,
        lr,
        beta_1,
        beta_2,
        epsilon,
        None if vhat is None else vhat[rows],
        decay,
        weight_decay,
    )
    for old, upd in zip((var, m, v, vhat), new):
        if old is not None:
            old[rows] = upd
    return var, m, v, vhat


def ema_ref(
    average: Any,
    var: Any,
    iterations: int,
    momentum: float,
    overwrite_frequency: int | None = None,
    rows: Any = None,
):
    """Keras 3's EMA after a step: ``(average, var)`` in float64.

    ``var`` is the variable after the step, ``iterations`` the count before
    its increment, ``momentum`` the ``ema_momentum`` as the variable's dtype
    holds it. ``rows`` (lazy rule): only these rows of the leading axis move
    their average (and are overwritten); ``None``: every element.
    """
    average, var = _f64(average), _f64(var)
    mom = 0.0 if iterations == 0 else float(momentum)
    new = mom * average + (1.0 - mom) * var
    freq = overwrite_frequency
    overwrite = bool(freq) and (iterations + 1) % freq == 0
    if rows is None:
        return new, (new.copy() if overwrite else var)
    rows = np.unique(np.asarray(rows).astype(np.int64).reshape(-1))
    average[rows] = new[rows]
    if overwrite:
        var[rows] = new[rows]
    return average, var


class SparseGrad:
    """A sparse gradient for :func:`run_reference` (duck-typed IndexedSlices)."""

    def __init__(self, indices: Any, values: Any) -> None:
        self.indices = np.asarray(indices)
        self.values = np.asarray(values)


def _value(h: Hyper, iterations: int) -> float:
    return float(h(iterations)) if callable(h) else float(h)


def run_reference(
    var0: Any,
    grads: Sequence[Any],
    steps: int | None = None,
    *,
    lr: Hyper = 0.001,
    beta_1: Hyper = 0.9,
    beta_2: Hyper = 0.999,
    epsilon: Hyper = 1e-7,
    amsgrad: bool = False,
    clipvalue: float | None = None,
    clipnorm: float | None = None,
    decay: float = 0.0,
    start_iteration: int = 0,
    weight_decay: float = 0.0,
    sparse_mode: str = "dense",
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]]:
    """Several Adam steps from zero slots; the state after every step.

    Parameters
    ----------
    var0 : array_like
        Initial variable.
    grads : sequence
        Gradient of each step: an array of ``var0``'s shape, or an object with
        ``indices`` and ``values`` (sparse; values clipped before summing).
        With ``steps`` larger than ``len(grads)``, gradients are reused cyclically.
    lr, beta_1, beta_2, epsilon : float or callable(iterations) -> float
        A callable is evaluated at ``iterations`` before the step's increment.
    start_iteration : int
        ``iterations`` before the first step (slots still start at zero).
    sparse_mode : {"dense", "lazy"}
        The rule of sparse steps: TensorFlow's (every row) or the lazy one.

    Returns
    -------
    list of (var, m, v, vhat)
        float64 state after each step; ``vhat`` is ``None`` without AMSGrad.
    """
    steps = len(grads) if steps is None else int(steps)
    var = _f64(var0)
    m = np.zeros_like(var)
    v = np.zeros_like(var)
    vhat = np.zeros_like(var) if amsgrad else None
    out = []
    for s in range(steps):
        it = start_iteration + s
        g = grads[s % len(grads)]
        hp = {
            "lr": _value(lr, it),
            "beta_1": _value(beta_1, it),
            "beta_2": _value(beta_2, it),
            "epsilon": _value(epsilon, it),
            "decay": decay,
            "weight_decay": weight_decay,
        }
        if hasattr(g, "indices"):
            vals = clip_ref(g.values, clipvalue, clipnorm)
            rule = adam_sparse_lazy_ref if sparse_mode == "lazy" else adam_sparse_ref
            var, m, v, vhat = rule(var, g.indices, vals, m, v, it + 1, vhat=vhat, **hp)
        else:
            gd = clip_ref(g, clipvalue, clipnorm)
            var, m, v, vhat = adam_dense_ref(var, gd, m, v, it + 1, vhat=vhat, **hp)
        out.append((var, m, v, None if vhat is None else vhat.copy()))
    return out


def run_accumulation_reference(
    var0: Any,
    grads: Sequence[Any],
    n: int,
    *,
    lr: Hyper = 0.001,
    beta_1: Hyper = 0.9,
    beta_2: Hyper = 0.999,
    epsilon: Hyper = 1e-7,
    amsgrad: bool = False,
    clipvalue: float | None = None,
    clipnorm: float | None = None,
    decay: float = 0.0,
    weight_decay: float = 0.0,
    sparse_mode: str = "dense",
    ema_momentum: float | None = None,
    ema_overwrite_frequency: int | None = None,
    second_moment: str = "element",
) -> list[tuple[np.ndarray, ...]]:
    """Adam with gradient accumulation over ``n`` calls; the state after every call.

    ``grads`` holds one gradient per call (dense arrays or sparse objects with
    ``indices`` and ``values``; one kind per cycle). Callables are evaluated at
    the call count of the applying call (``updates * n + n - 1``); ``decay``
    and the bias correction use the update count.

    With ``ema_momentum`` (``use_ema``; the momentum as the variable's dtype
    holds it) every call, accumulating or applying, then moves the average by
    :func:`ema_ref` at Keras 3's ``iterations`` (the updates before the call,
    ``call // n``), and the tuples end with the average. Under
    ``sparse_mode="lazy"`` the average starts as the variable and a sparse
    call moves the rows it lists (the applying call: the rows of the whole
    cycle); otherwise it starts at zero and every element moves.

    ``second_moment="row"`` (a 2-D ``var0``): the applying calls take
    :func:`adam_rowwise_step` with the cycle's mean gradient (``v`` and
    ``vhat`` one value per row).
    """
    var = _f64(var0)
    row = second_moment == "row"
    m = np.zeros_like(var)
    v = np.zeros(var.shape[:1]) if row else np.zeros_like(var)
    vhat = np.zeros_like(v) if amsgrad else None
    ema = ema_momentum is not None
    lazy = sparse_mode == "lazy"
    average = (var.copy() if lazy else np.zeros_like(var)) if ema else None
    out: list = []

    def record():
        state = (var, m, v, None if vhat is None else vhat.copy())
        out.append(state + ((average.copy(),) if ema else ()))

    cycle: list = []
    for call, g in enumerate(grads):
        cycle.append(g)
        if len(cycle) < n:
            if ema:
                rows = g.indices if lazy and hasattr(g, "indices") else None
                average, var = ema_ref(
                    average, var, call // n, ema_momentum, ema_overwrite_frequency,
                    rows=rows,
                )  # fmt: skip
            record()
            continue
        update = call // n
        hp = {
            "lr": _value(lr, call),
            "beta_1": _value(beta_1, call),
            "beta_2": _value(beta_2, call),
            "epsilon": _value(epsilon, call),
            "decay": decay,
            "weight_decay": weight_decay,
        }
        t = update + 1
        moved = None
        if hasattr(g, "indices"):
            dense = sum(sparse_to_dense(var.shape, c.indices, c.values) for c in cycle)
            rows = np.unique(
                np.concatenate([np.asarray(c.indices).reshape(-1) for c in cycle])
            ).astype(np.int64)
            vals = clip_ref(dense[rows] / n, clipvalue, clipnorm)
            if row:
                mode = "lazy" if lazy else "sparse"
                var, m, v, vhat = adam_rowwise_step(
                    var, (rows, vals), m, v, t, vhat=vhat, mode=mode, **hp
                )
            else:
                rule = adam_sparse_lazy_ref if lazy else adam_sparse_ref
                var, m, v, vhat = rule(var, rows, vals, m, v, t, vhat=vhat, **hp)
            moved = rows if lazy else None
        else:
            mean = sum(_f64(c) for c in cycle) / n
            gd = clip_ref(mean, clipvalue, clipnorm)
            step = adam_rowwise_step if row else adam_dense_ref
            var, m, v, vhat = step(var, gd, m, v, t, vhat=vhat, **hp)
        if ema:
            average, var = ema_ref(
                average, var, update, ema_momentum, ema_overwrite_frequency, rows=moved
            )
        cycle = []
        record()
    return out
