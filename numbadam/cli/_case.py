"""One measured case of ``numbadam bench``: times by implementation, bytes moved."""

from __future__ import annotations

from typing import Any, Dict

from .goals import Measured
from .timer import Timed, interleaved

__all__ = ["Case", "repeat_for"]


def repeat_for(nbytes: float, quick: bool) -> int:
    """Timed runs for a case moving ``nbytes``: enough for a stable median
    without dragging big cases out."""
    base = 7 if quick else 21
    if nbytes < 1e6:
        return base * 20
    if nbytes < 1e8:
        return base * 3
    return base


class Case(Measured):
    """A :class:`~numbadam.cli.goals.Measured` that the bench fills in and prints.

    ``family`` says which goals of :mod:`numbadam.cli.goals` apply; ``note``
    is what the report prints next to the name (the bytes per element, say).
    """

    def __init__(self, name: str, family: str, nbytes: float, note: str) -> None:
        super().__init__(name, family, nbytes, {}, {})
        self.note = note

    def add(self, impl: str, seconds: float) -> None:
        """Record ``impl``'s median ``seconds``."""
        self.times[impl] = seconds

    def add_interleaved(self, fns: Dict[str, Timed], repeat: int) -> None:
        """Time ``fns`` side by side (:func:`~numbadam.cli.timer.interleaved`)."""
        self.times.update(interleaved(fns, repeat))

    def moves(self, impl: str, nbytes: float) -> None:
        """Say that a run of ``impl`` moves ``nbytes``, not the case's bytes."""
        self.impl_bytes[impl] = nbytes  # type: ignore[index]

    def as_dict(self) -> Dict[str, Any]:
        """The case as the report and ``--json`` show it."""
        return {
            "case": self.name,
            "bytes": self.nbytes,
            "note": self.note,
            "median_s": dict(self.times),
            "GBps": {
                k: self.bytes_of(k) / t / 1e9 for k, t in self.times.items() if t > 0
            },
        }
