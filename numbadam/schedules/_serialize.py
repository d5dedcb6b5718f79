"""The Keras ``serialize``/``deserialize`` of schedules, by class name.

Private: the public names are re-exported by :mod:`numbadam.schedules`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ._base import LearningRateSchedule
from ._cosine import CosineDecay, CosineDecayRestarts
from ._decay import (
    ExponentialDecay,
    InverseTimeDecay,
    PiecewiseConstantDecay,
    PolynomialDecay,
)
from ._linear_cosine import LinearCosineDecay, NoisyLinearCosineDecay

_BUILTIN: dict[str, type[LearningRateSchedule]] = {
    cls.__name__: cls
    for cls in (
        ExponentialDecay,
        PiecewiseConstantDecay,
        InverseTimeDecay,
        PolynomialDecay,
        CosineDecay,
        CosineDecayRestarts,
        LinearCosineDecay,
        NoisyLinearCosineDecay,
    )
}


def serialize(schedule: LearningRateSchedule) -> dict[str, Any]:
    """Serialize a schedule to a JSON-compatible dict.

    Parameters
    ----------
    schedule : LearningRateSchedule
        The schedule; it must implement ``get_config``.

    Returns
    -------
    dict
        ``{"class_name": type(schedule).__name__, "config":
        schedule.get_config()}``, the legacy Keras format.

    Raises
    ------
    TypeError
        If ``schedule`` is not a :class:`LearningRateSchedule`.

    Examples
    --------
    >>> from numbadam.schedules import InverseTimeDecay, serialize
    >>> serialize(InverseTimeDecay(0.1, 10, 0.5))["config"]["decay_rate"]
    0.5
    """
    if not isinstance(schedule, LearningRateSchedule):
        raise TypeError(
            "`schedule` must be a LearningRateSchedule, got "
            f"{schedule!r} of type {type(schedule).__name__}."
        )
    return {"class_name": type(schedule).__name__, "config": schedule.get_config()}


def deserialize(
    config: Mapping[str, Any],
    custom_objects: Mapping[str, type[LearningRateSchedule]] | None = None,
) -> LearningRateSchedule:
    """Build a schedule from the output of :func:`serialize`.

    Parameters
    ----------
    config : mapping
        ``{"class_name": str, "config": dict}``. Other keys, such as the
        ``module`` and ``registered_name`` of the newer Keras format, are
        ignored.
    custom_objects : mapping of str to class, optional
        Extra schedule classes by name; they take precedence over the built-in
        ones, as in Keras.

    Returns
    -------
    LearningRateSchedule
        ``cls.from_config(config["config"])`` for the named class.

    Raises
    ------
    ValueError
        If ``class_name`` names no known schedule.
    TypeError
        If ``config`` is not a mapping with ``class_name`` and ``config`` keys.

    Examples
    --------
    >>> from numbadam.schedules import deserialize
    >>> s = deserialize(
    ...     {
    ...         "class_name": "PolynomialDecay",
    ...         "config": {"initial_learning_rate": 0.1, "decay_steps": 100},
    ...     }
    ... )
    >>> round(float(s(100)), 6)
    0.0001
    """
    if (
        not isinstance(config, Mapping)
        or "class_name" not in config
        or "config" not in config
    ):
        raise TypeError(
            "`config` must be a dict with keys 'class_name' and 'config', "
            f"got {config!r}."
        )
    class_name = config["class_name"]
    custom = dict(custom_objects or {})
    cls = custom.get(class_name, _BUILTIN.get(class_name))
    if cls is None:
        known = sorted(set(_BUILTIN) | set(custom))
        raise ValueError(
            f"Unknown learning rate schedule {class_name!r}; known schedules are "
            f"{known}. Pass custom classes in `custom_objects`."
        )
    return cls.from_config(config["config"])
