"""numbadam's steps next to Keras 3's own optimizers, run side by side.

Skipped cleanly where Keras 3 (with one of its backends) is not installed:
``make test`` does not install it. To run these, use an environment with
``keras>=3`` and ``jax`` (or tensorflow or torch), e.g.::

    KERAS_BACKEND=jax python -m pytest tests/test_keras_live.py

Keras 3 writes the same update as the legacy TF Adam (``m += (g - m) *
(1 - beta_1)``, ``v += (g*g - v) * (1 - beta_2)``, ``var -= m * alpha /
(sqrt(v) + epsilon)``), but its backends may contract or reorder the float32
arithmetic (XLA fuses into FMAs), so the comparison allows a few ulps per step
rather than asking for equal bits (the legacy TF rule rounds ``1 - beta_1``
from float32 ``beta_1``, Keras 3 from the Python float). What must agree
exactly is the structure: which variables move, weight decay before the update, the clipping rule, the
AMSGrad maximum.
"""

from __future__ import annotations

import numpy as np
import pytest
from helpers import keras3_or_skip

import numbadam


@pytest.fixture(scope="module")
def keras():
    return keras3_or_skip()


def gradients(seed: int, shapes, steps: int):
    rng = np.random.default_rng(seed)
    return [
        [rng.standard_normal(s).astype(np.float32) for s in shapes]
        for _ in range(steps)
    ]


def run_keras(keras, make_opt, init, grads):
    kvars = [keras.Variable(x.copy()) for x in init]
    opt = make_opt()
    for gs in grads:
        opt.apply_gradients(
            [(keras.ops.convert_to_tensor(g), v) for g, v in zip(gs, kvars)]
        )
    return [np.asarray(keras.ops.convert_to_numpy(v)) for v in kvars], opt


def run_numbadam(make_opt, init, grads):
    nvars = [x.copy() for x in init]
    opt = make_opt()
    for gs in grads:
        opt.apply_gradients([(g.copy(), v) for g, v in zip(gs, nvars)])
    return nvars, opt


def assert_close_to_keras(actual, expected, steps, what):
    """Within a few float32 roundings per step, on the scale of the values.

    A relative (per-element ulp) test would be wrong near zero, where a value
    that moved through 0 has a tiny spacing but the same absolute rounding as
    its neighbours; each step's rounding is on the scale of the largest value.
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    scale = max(1.0, float(np.max(np.abs(expected)))) if expected.size else 1.0
    tol = 8 * steps * float(np.finfo(np.float32).eps) * scale
    worst = float(np.max(np.abs(actual - expected))) if expected.size else 0.0
    assert worst <= tol, f"{what}: {worst:.3g} from Keras (allowed {tol:.3g})"


SHAPES = [(7,), (3, 5), ()]
STEPS = 12

CASES = {
    "adam": (dict(learning_rate=0.01), {}),
    "amsgrad": (dict(learning_rate=0.01, amsgrad=True, beta_2=0.5), {}),
    "betas_eps": (
        dict(learning_rate=0.003, beta_1=0.8, beta_2=0.95, epsilon=1e-3),
        {},
    ),
    "clipnorm": (dict(learning_rate=0.01, clipnorm=0.5), {}),
    "clipvalue": (dict(learning_rate=0.01, clipvalue=0.3), {}),
    "global_clipnorm": (dict(learning_rate=0.01, global_clipnorm=0.7), {}),
    "weight_decay": (dict(learning_rate=0.01, weight_decay=0.05), {}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_adam_follows_keras(keras, case):
    kwargs, _ = CASES[case]
    rng = np.random.default_rng(1)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = gradients(2, SHAPES, STEPS)
    want, kopt = run_keras(keras, lambda: keras.optimizers.Adam(**kwargs), init, grads)
    got, nopt = run_numbadam(lambda: numbadam.Adam(**kwargs), init, grads)
    assert int(nopt.iterations) == int(keras.ops.convert_to_numpy(kopt.iterations))
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close_to_keras(a, b, STEPS, f"{case} variable {i}")
    # and the moments themselves, by Keras 3's own slot order
    for i, var in enumerate(got):
        m = nopt.get_slot(var, "m")
        assert_close_to_keras(
            m, keras.ops.convert_to_numpy(kopt._momentums[i]), STEPS, f"{case} m"
        )
        v = nopt.get_slot(var, "v")
        assert_close_to_keras(
            v, keras.ops.convert_to_numpy(kopt._velocities[i]), STEPS, f"{case} v"
        )


@pytest.mark.parametrize("weight_decay", [0.004, 0.1])
def test_adamw_follows_keras(keras, weight_decay):
    rng = np.random.default_rng(3)
    init = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = gradients(4, SHAPES, STEPS)
    kw = dict(learning_rate=0.02, weight_decay=weight_decay)
    want, _ = run_keras(keras, lambda: keras.optimizers.AdamW(**kw), init, grads)
    got, _ = run_numbadam(lambda: numbadam.AdamW(**kw), init, grads)
    for i, (a, b) in enumerate(zip(got, want)):
        assert_close_to_keras(a, b, STEPS, f"AdamW variable {i}")


def test_adamw_defaults_are_keras_defaults(keras):
    kcfg = keras.optimizers.AdamW().get_config()
    ncfg = numbadam.AdamW().get_config()
    for key in ("learning_rate", "weight_decay", "beta_1", "beta_2", "epsilon"):
        assert np.float32(ncfg[key]) == np.float32(kcfg[key]), key
    assert ncfg["amsgrad"] == kcfg["amsgrad"]


def test_excluded_variable_does_not_decay_as_in_keras(keras):
    rng = np.random.default_rng(5)
    init = [rng.standard_normal(s).astype(np.float32) for s in [(4,), (4,)]]
    grads = gradients(6, [(4,), (4,)], STEPS)

    def keras_opt():
        opt = keras.optimizers.AdamW(learning_rate=0.05, weight_decay=0.2)
        return opt

    kvars = [keras.Variable(x.copy()) for x in init]
    kopt = keras_opt()
    kopt.exclude_from_weight_decay(var_list=[kvars[1]])
    for gs in grads:
        kopt.apply_gradients(
            [(keras.ops.convert_to_tensor(g), v) for g, v in zip(gs, kvars)]
        )
    want = [np.asarray(keras.ops.convert_to_numpy(v)) for v in kvars]

    nvars = [x.copy() for x in init]
    nopt = numbadam.AdamW(learning_rate=0.05, weight_decay=0.2)
    nopt.exclude_from_weight_decay(var_list=[nvars[1]])
    for gs in grads:
        nopt.apply_gradients([(g.copy(), v) for g, v in zip(gs, nvars)])
    for i, (a, b) in enumerate(zip(nvars, want)):
        assert_close_to_keras(a, b, STEPS, f"excluded case, variable {i}")


def test_var_names_exclude_as_in_keras(keras):
    # Keras searches "|".join(var_names) in each variable's name; numbadam
    # in the names of variables= (here Keras' paths, which contain the names)
    rng = np.random.default_rng(9)
    shapes = [(3, 4), (4,), (4,)]
    names = ["kernel", "bias", "norm_gamma"]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    grads = gradients(10, shapes, STEPS)
    kvars = [keras.Variable(x.copy(), name=n) for x, n in zip(init, names)]
    kopt = keras.optimizers.AdamW(learning_rate=0.05, weight_decay=0.2)
    kopt.exclude_from_weight_decay(var_names=["bias", "gamma"])
    for gs in grads:
        kopt.apply_gradients(
            [(keras.ops.convert_to_tensor(g), v) for g, v in zip(gs, kvars)]
        )
    want = [np.asarray(keras.ops.convert_to_numpy(v)) for v in kvars]
    params = {f"dense/{n}": x.copy() for n, x in zip(names, init)}
    nopt = numbadam.AdamW(learning_rate=0.05, weight_decay=0.2)
    nopt.exclude_from_weight_decay(var_names=["bias", "gamma"], variables=params)
    for gs in grads:
        nopt.apply_gradients([(g.copy(), v) for g, v in zip(gs, params.values())])
    for i, (a, b) in enumerate(zip(params.values(), want)):
        assert_close_to_keras(a, b, STEPS, f"var_names case, variable {i}")
    # (and the exclusion mattered: the kernel decayed, the others did not)
    plain = numbadam.Adam(learning_rate=0.05)
    ref = [x.copy() for x in init]
    for gs in grads:
        plain.apply_gradients([(g.copy(), v) for g, v in zip(gs, ref)])
    assert not np.allclose(ref[0], want[0], rtol=0, atol=1e-6)
    for k in (1, 2):
        assert_close_to_keras(ref[k], want[k], STEPS, f"plain Adam, variable {k}")
