"""What every distributed optimizer's step shares: the agreement check and the deadline.

Collectives only match when every rank makes the same calls with the same
sizes. Ranks that disagree (a variable of another shape, a dense gradient on
one rank and IndexedSlices on another, a ``None`` gradient on one rank only)
would otherwise average unrelated data silently or wait forever. So before its
first collective a step compares a small signature of its pairs across ranks
(one ``Allgather`` of two integers) and raises the same ``ValueError`` on every
rank when they differ; and an optional deadline aborts the job when a step's
collectives do not finish in time (a rank that stopped stepping, or died).
"""

from __future__ import annotations

import sys
import threading
import time
import zlib
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from ._comm import Communicator

__all__ = ["Signature", "check_agreement", "Deadline", "check_timeout"]

#: One pair as the collectives see it: (position in grads_and_vars, kind, shape,
#: dtype). ``kind`` is "dense", "sparse" or "none".
Signature = Tuple[Tuple[int, str, Tuple[int, ...], str], ...]


def _describe(entry: Optional[Tuple[int, str, Tuple[int, ...], str]]) -> str:
    if entry is None:
        return "no such pair"
    pos, kind, shape, dtype = entry
    what = {"dense": "a dense gradient", "sparse": "IndexedSlices", "none": "None"}
    return f"variable {pos} (shape {shape}, {dtype}) with {what.get(kind, kind)}"


def check_agreement(comm: Communicator, signature: Signature, what: str) -> None:
    """Raise the same ``ValueError`` on every rank unless all ranks' signatures agree.

    Collective: one ``Allgather`` of a checksum and a length; only when they
    differ, a second gathers the signatures themselves to name the first pair
    that differs. No-op on one process.
    """
    if comm.size == 1:
        return
    digest = zlib.crc32(repr(signature).encode())
    mine = np.array([digest, len(signature)], np.int64)
    every = comm.allgather_counts(mine)
    if (every == every[0]).all():
        return
    sigs: List[Sequence[Any]] = comm.allgather_obj(list(signature))
    n = max(len(s) for s in sigs)
    for i in range(n):
        entries = [tuple(s[i]) if i < len(s) else None for s in sigs]
        if any(e != entries[0] for e in entries):
            detail = "; ".join(
                f"rank {r}: {_describe(e)}" for r, e in enumerate(entries)
            )
            break
    else:  # (a checksum collision with equal lists cannot differ above)
        return
    raise ValueError(
        f"{what}: the ranks' gradients disagree at pair {i} ({detail}). Every "
        "rank must pass the same variables in the same order with gradients of "
        "the same kinds (dense, IndexedSlices or None) and take the same steps"
    )


def check_timeout(timeout: Any) -> Optional[float]:
    """``timeout`` as a positive float or ``None``; ValueError otherwise."""
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float, np.number)):
        raise TypeError(f"timeout must be a number of seconds or None, got {timeout!r}")
    t = float(timeout)
    if not t > 0 or t == float("inf"):
        raise ValueError(f"timeout must be a finite number of seconds > 0, got {t!r}")
    return t


class Deadline:
    """Aborts the whole job (``comm.abort``) when armed for longer than ``timeout``.

    One watcher thread per optimizer, started on first use; ``arm`` and
    ``disarm`` only set a time under a lock, so a step pays about a
    microsecond. ``timeout=None`` makes both no-ops.
    """

    def __init__(self, comm: Communicator, timeout: Optional[float], name: str):
        self.comm = comm
        self.timeout = timeout
        self.name = name
        self._cond = threading.Condition()
        self._deadline: Optional[float] = None
        self._what = ""
        self._thread: Optional[threading.Thread] = None

    def arm(self, what: str) -> None:
        if self.timeout is None:
            return
        with self._cond:
            self._deadline = time.monotonic() + self.timeout
            self._what = what
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._watch, name=f"numbadam-deadline-{self.name}",
                    daemon=True,
                )  # fmt: skip
                self._thread.start()
            self._cond.notify()

    def disarm(self) -> None:
        if self.timeout is None:
            return
        with self._cond:
            self._deadline = None

    def _watch(self) -> None:
        with self._cond:
            while True:
                if self._deadline is None:
                    self._cond.wait()
                    continue
                left = self._deadline - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                break
            what = self._what
        sys.stderr.write(
            f"numbadam: rank {self.comm.rank} of {self.comm.size}: {what} did not "
            f"finish within timeout={self.timeout:g} s; another rank is not taking "
            "the same step (ranks must call apply_gradients the same number of "
            "times, with the same variables) or has died. Aborting the job.\n"
        )
        sys.stderr.flush()
        # Give the launcher a moment to forward the message: an abort kills
        # every process at once, and mpiexec may drop output still in transit.
        time.sleep(0.5)
        self.comm.abort(1)
