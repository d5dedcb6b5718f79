"""Write ``keras3_accum.weights.h5`` and ``keras3_accum.npz`` (not run by the suite).

The Keras 3 fixture of gradient accumulation (``tests/test_accumulation_keras3.py``):
the ``adam`` model of ``make_keras3_fixture.py`` trained with
``keras.optimizers.Adam(0.01, gradient_accumulation_steps=3)`` for 4 calls, so
the file is saved in the middle of the second cycle (its accumulators hold one
gradient); then two more Keras calls with fixed gradients finish that cycle.
Run it as ``make_keras3_fixture.py`` says, e.g.::

    KERAS_BACKEND=jax /tmp/k3/bin/python tests/data/make_keras3_accum_fixture.py

The npz holds ``paths``, ``grad_<k>_<i>`` (call ``k``'s gradient of variable
``i``), ``next_var_<i>`` and ``next_opt_<j>`` (Keras' variables and optimizer
variables after both calls), ``config``, ``keras_version`` and ``backend``.
"""

from __future__ import annotations

import importlib.util
import json
import os

HERE = os.path.dirname(os.path.abspath(__file__))


def main() -> None:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import keras
    import numpy as np

    spec = importlib.util.spec_from_file_location(
        "make_keras3_fixture", os.path.join(HERE, "make_keras3_fixture.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    make_model, _, paths = module.cases(keras)["adam"]
    rng = np.random.default_rng(20261202)
    x = rng.standard_normal((16, 3)).astype(np.float32)
    y = rng.standard_normal((16, 2)).astype(np.float32)
    keras.utils.set_random_seed(0)
    model = make_model()
    opt = keras.optimizers.Adam(0.01, gradient_accumulation_steps=3)
    model.compile(optimizer=opt, loss="mse")
    model.fit(x, y, batch_size=4, epochs=1, shuffle=False, verbose=0)  # 4 calls
    assert int(opt._iterations) == 4 and int(opt.iterations) == 1
    h5 = os.path.join(HERE, "keras3_accum.weights.h5")
    model.save_weights(h5)
    out = {
        "paths": np.array(paths),
        "config": np.array(json.dumps(opt.get_config(), default=str)),
        "keras_version": np.array(keras.__version__),
        "backend": np.array(keras.backend.backend()),
    }
    vars_ = model.trainable_variables
    for k in range(2):
        grads = []
        for i, v in enumerate(vars_):
            g = rng.standard_normal(tuple(v.shape)).astype(np.float32)
            out[f"grad_{k}_{i}"] = g
            grads.append(g)
        opt.apply_gradients(zip(grads, vars_))
    for i, v in enumerate(vars_):
        out[f"next_var_{i}"] = np.asarray(v)
    for j, v in enumerate(opt.variables):
        out[f"next_opt_{j}"] = np.asarray(v)
    np.savez(os.path.join(HERE, "keras3_accum.npz"), **out)


if __name__ == "__main__":
    main()
