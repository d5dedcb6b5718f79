r"""Learning-rate schedules with the semantics of ``tf.keras.optimizers.schedules``.

Each schedule is a callable ``schedule(step) -> numpy.float32`` with the class
name, constructor arguments, defaults and ``get_config`` keys of its tf-keras
namesake, so a Keras schedule config can be deserialized here and vice versa.

Notes
-----
TensorFlow evaluates a schedule in the dtype of ``initial_learning_rate``
converted to a tensor, which is ``float32`` for a Python float; ``step`` and the
other constants are cast to that dtype before any arithmetic. This module always
computes in ``float32``, with NumPy ``float32`` scalars and in the operation
order of the tf-keras source, and returns a ``numpy.float32``; the optimizer
then casts the value to each variable's dtype, as OptimizerV2 does. Two
deviations follow from always using ``float32``: a ``float64``
``initial_learning_rate`` (which would make TensorFlow compute in ``float64``)
is computed in ``float32`` here, and an integer ``initial_learning_rate`` (on
which most tf-keras schedules fail with a dtype error) is treated as a float.

Overflow and invalid operations give ``inf`` or ``nan`` silently, as in
TensorFlow, instead of NumPy warnings. Results agree with TensorFlow 2 on CPU to
within a few float32 ulps, not bit for bit: ``pow`` and ``cos`` come from
different math libraries, and TensorFlow flushes subnormal results to zero.

Examples
--------
>>> from numbadam import schedules
>>> s = schedules.ExponentialDecay(0.1, decay_steps=10, decay_rate=0.5)
>>> round(float(s(10)), 6)
0.05
>>> config = schedules.serialize(s)
>>> config["class_name"]
'ExponentialDecay'
>>> round(float(schedules.deserialize(config)(20)), 6)
0.025
"""

from __future__ import annotations

from ._base import LearningRateSchedule
from ._base import StepLike as StepLike
from ._cosine import CosineDecay, CosineDecayRestarts
from ._decay import (
    ExponentialDecay,
    InverseTimeDecay,
    PiecewiseConstantDecay,
    PolynomialDecay,
)
from ._linear_cosine import LinearCosineDecay, NoisyLinearCosineDecay
from ._serialize import deserialize, serialize

__all__ = [
    "CosineDecay",
    "CosineDecayRestarts",
    "ExponentialDecay",
    "InverseTimeDecay",
    "LearningRateSchedule",
    "LinearCosineDecay",
    "NoisyLinearCosineDecay",
    "PiecewiseConstantDecay",
    "PolynomialDecay",
    "deserialize",
    "serialize",
]
