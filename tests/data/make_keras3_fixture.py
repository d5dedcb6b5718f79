"""Write the Keras 3 fixtures of ``tests/test_keras3.py`` (not run by the suite).

Run it in an environment with Keras 3, a backend and h5py, from the repository
root, e.g.::

    python3 -m venv /tmp/k3 && /tmp/k3/bin/pip install keras "jax[cpu]" h5py numpy
    KERAS_BACKEND=jax /tmp/k3/bin/python tests/data/make_keras3_fixture.py

For each case it trains a tiny model with Keras 3 ``Adam`` for a few steps on
fixed data, writes ``model.save_weights(...)`` to ``keras3_<case>.weights.h5``,
then takes one more Keras step with a fixed gradient and records in
``keras3_<case>.npz`` what Keras computed:

``paths``
    the file paths (``layers/dense/vars/0``...) of the model's trainable
    variables, in ``model.trainable_variables`` order (checked against the
    file here);
``grad_<i>``
    the fixed gradient of variable ``i`` for the next step;
``next_var_<i>``
    variable ``i`` after Keras' next step;
``next_opt_<j>``
    Keras' optimizer variable ``j`` (the file's ``optimizer/vars/<j>``) after
    that step;
``config``, ``keras_version``, ``backend``
    the Keras optimizer's ``get_config()`` as JSON, and where it ran.

Cases: ``adam`` (two Dense layers, constant learning rate) and ``amsgrad``
(a model holding three raw variables, a scalar among them, with
``amsgrad=True``, other betas and epsilon, and an ``ExponentialDecay``
schedule, so the file has no ``learning_rate`` entry), and ``ema`` (the
``adam`` model with ``use_ema=True``, ``ema_momentum=0.9`` and
``ema_overwrite_frequency=3``: the file holds an ``average`` of every
variable, and the fourth step overwrote nothing but the third did).

Case names on the command line write only those cases (``ema`` draws its
gradient from its own seed, so writing it alone gives the same file).

The imports are inside ``main`` so that collecting this file (pytest's
``--doctest-modules``) does not need Keras.
"""

from __future__ import annotations

import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def cases(keras):
    """case -> (make_model, make_optimizer, paths of the trainable variables).

    Also used by ``tests/test_keras3.py`` to rebuild the models with Keras.
    """

    class Tiny(keras.Model):
        """Three raw variables of different shapes, stored in the root ``vars``."""

        def __init__(self):
            super().__init__()
            self.w = self.add_weight(shape=(3, 2), initializer="glorot_uniform")
            self.b = self.add_weight(shape=(2,), initializer="zeros")
            self.s = self.add_weight(shape=(), initializer="ones")

        def call(self, x):
            return keras.ops.tanh(keras.ops.matmul(x, self.w) + self.b) * self.s

    def dense_model():
        return keras.Sequential(
            [
                keras.Input((3,)),
                keras.layers.Dense(4, activation="tanh"),
                keras.layers.Dense(2),
            ]
        )

    return {
        "adam": (
            dense_model,
            lambda: keras.optimizers.Adam(learning_rate=0.01),
            ["layers/dense/vars/0", "layers/dense/vars/1"]
            + ["layers/dense_1/vars/0", "layers/dense_1/vars/1"],
        ),
        "amsgrad": (
            Tiny,
            lambda: keras.optimizers.Adam(
                learning_rate=keras.optimizers.schedules.ExponentialDecay(
                    0.02, decay_steps=3, decay_rate=0.5
                ),
                beta_1=0.8,
                beta_2=0.99,
                epsilon=1e-6,
                amsgrad=True,
            ),
            ["vars/0", "vars/1", "vars/2"],
        ),
        "ema": (
            dense_model,
            lambda: keras.optimizers.Adam(
                learning_rate=0.01,
                use_ema=True,
                ema_momentum=0.9,
                ema_overwrite_frequency=3,
            ),
            ["layers/dense/vars/0", "layers/dense/vars/1"]
            + ["layers/dense_1/vars/0", "layers/dense_1/vars/1"],
        ),
    }


def main() -> None:
    os.environ.setdefault("KERAS_BACKEND", "jax")
    import h5py
    import keras
    import numpy as np

    rng = np.random.default_rng(20240613)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    y = rng.standard_normal((8, 2)).astype(np.float32)
    wanted = sys.argv[1:]
    for case, (make_model, make_opt, paths) in cases(keras).items():
        if case in ("adam", "amsgrad"):
            grng = rng  # (the first two cases share one generator)
        else:
            grng = np.random.default_rng([20240613, len(case), ord(case[0])])
        if wanted and case not in wanted:
            continue
        keras.utils.set_random_seed(0)
        model = make_model()
        model.compile(optimizer=make_opt(), loss="mse")
        model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)  # 4 steps
        h5 = os.path.join(HERE, f"keras3_{case}.weights.h5")
        model.save_weights(h5)
        vars_ = model.trainable_variables
        with h5py.File(h5, "r") as f:
            for p, v in zip(paths, vars_):
                assert np.array_equal(f[p][()], np.asarray(v)), (case, p)
        out = {
            "paths": np.array(paths),
            "config": np.array(json.dumps(model.optimizer.get_config(), default=str)),
            "keras_version": np.array(keras.__version__),
            "backend": np.array(keras.backend.backend()),
        }
        grads = []
        for i, v in enumerate(vars_):
            g = grng.standard_normal(tuple(v.shape)).astype(np.float32)
            out[f"grad_{i}"] = g
            grads.append(g)
        model.optimizer.apply_gradients(zip(grads, vars_))
        for i, v in enumerate(vars_):
            out[f"next_var_{i}"] = np.asarray(v)
        for j, v in enumerate(model.optimizer.variables):
            out[f"next_opt_{j}"] = np.asarray(v)
        np.savez(os.path.join(HERE, f"keras3_{case}.npz"), **out)
        print(case, os.path.getsize(h5), "bytes,", len(model.optimizer.variables),
              "optimizer variables", file=sys.stderr)  # fmt: skip


if __name__ == "__main__":
    main()
