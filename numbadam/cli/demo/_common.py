"""Shared pieces of the demo: output, progress bars, checkpoints, warm-up."""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

import numbadam

__all__ = [
    "DemoError",
    "Reporter",
    "format_seconds",
    "read_checkpoint",
    "resume_or_start",
    "save_epoch",
    "warm_up",
]


def format_seconds(seconds: float) -> str:
    """``"12 ms"`` below a second, ``"3.4 s"`` above."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    return f"{seconds:.1f} s"


class DemoError(ValueError):
    """A problem the user can fix (bad checkpoint folder, mismatched flags...)."""


class _NoBar:
    def due(self, k: int) -> bool:
        return False

    def update(self, n: int, text: str) -> None:
        pass

    def close(self) -> None:
        pass


class _TqdmBar(_NoBar):
    def __init__(self, tqdm: Any, total: int, desc: str) -> None:
        self._bar = tqdm(
            total=total,
            desc=desc,
            unit="step",
            leave=False,
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.1,
        )
        self._total = total
        self._stride = max(1, total // 100)

    def due(self, k: int) -> bool:
        return (k + 1) % self._stride == 0 or k + 1 == self._total

    def update(self, n: int, text: str) -> None:
        self._bar.set_postfix_str(text, refresh=False)
        self._bar.update(n - self._bar.n)

    def close(self) -> None:
        self._bar.close()


class Reporter:
    """Where the demo's output goes.

    Parameters
    ----------
    mode : {"text", "json", "silent"}
        ``"text"``: epoch tables and notes on stdout; ``"json"``: nothing on
        stdout (the caller prints the JSON), warnings on stderr; ``"silent"``:
        nothing at all.
    progress : bool, optional
        Show tqdm progress bars on stderr (only in ``"text"`` mode, when tqdm
        is installed).

    Examples
    --------
    >>> from numbadam.cli.demo import Reporter
    >>> r = Reporter(mode="text", progress=False)
    >>> r.table_header(["epoch", "loss"])
    epoch        loss
    >>> r.table_row(["1", "0.5000"])
        1      0.5000
    """

    def __init__(self, mode: str = "text", progress: bool = False) -> None:
        if mode not in ("text", "json", "silent"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode = mode
        self._tqdm = None
        if progress and mode == "text":
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            self._tqdm = tqdm
        self._widths: List[int] = []

    @property
    def has_bars(self) -> bool:
        """Whether progress bars are shown."""
        return self._tqdm is not None

    def line(self, text: str = "") -> None:
        """A line of the human-readable report (stdout, text mode only)."""
        if self.mode == "text":
            print(text, flush=True)

    def note(self, text: str) -> None:
        """A remark about the run (stdout in text mode, stderr in JSON mode)."""
        if self.mode == "text":
            print(text, flush=True)
        elif self.mode == "json":
            print(f"numbadam demo: {text.strip()}", file=sys.stderr, flush=True)

    def bar(self, total: int, desc: str):
        """A progress bar with ``due(k)``, ``update(n, text)`` and ``close()``."""
        if self._tqdm is None:
            return _NoBar()
        return _TqdmBar(self._tqdm, total, desc)

    def table_header(self, names: List[str]) -> None:
        """Start a right-aligned table with these column names."""
        self._widths = [max(len(n), 10) if i else len(n) for i, n in enumerate(names)]
        self.line("  ".join(n.rjust(w) for n, w in zip(names, self._widths)))

    def table_row(self, cells: List[str], resumed: bool = False) -> None:
        """One table row; ``resumed`` marks rows read back from a checkpoint."""
        text = "  ".join(c.rjust(w) for c, w in zip(cells, self._widths))
        self.line(text + ("  (from checkpoint)" if resumed else ""))


_WARM = False


def warm_up(reporter: Reporter) -> float:
    """Compile (or load from Numba's cache) the kernels the demo uses; seconds."""
    global _WARM
    if _WARM:
        return 0.0
    t = time.perf_counter()
    table = np.zeros((4, 2), np.float32)
    bias = np.zeros(4, np.float32)
    scalar = np.zeros((), np.float32)
    opt = numbadam.Adam()
    opt.apply_gradients(
        [
            (
                numbadam.IndexedSlices(np.ones((2, 2), np.float32), [1, 1], (4, 2)),
                table,
            ),
            (numbadam.IndexedSlices(np.ones(2, np.float32), [0, 3], (4,)), bias),
            (np.ones((), np.float32), scalar),
        ]
    )
    _WARM = True
    seconds = time.perf_counter() - t
    if seconds > 0.5:
        reporter.line(
            f"  compiled numbadam's Numba kernels in {seconds:.1f} s "
            "(cached on disk: later runs start at once)"
        )
    return seconds


def _metadata(name: str, identity: Dict[str, Any], history: List[Dict]) -> Dict:
    return {
        "demo": name,
        "settings": identity,
        "epoch": len(history),
        "history": history,
        "numbadam_version": numbadam.__version__,
    }


#: The fields of every epoch of a history, besides the run's metric.
_ROW_FIELDS = ("epoch", "train_loss", "seconds", "steps_per_s", "updates_per_s")


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def _check_history(path: str, history: Any, metric: str) -> List[Dict[str, Any]]:
    if not isinstance(history, list):
        raise DemoError(f"{path}: damaged metadata: the history is not a list")
    fields = _ROW_FIELDS + (metric,)
    for k, row in enumerate(history):
        where = f"{path}: damaged metadata: epoch {k + 1} of the history"
        if not isinstance(row, dict):
            raise DemoError(f"{where} is not a record")
        missing = [f for f in fields if f not in row]
        if missing:
            raise DemoError(f"{where} lacks {', '.join(missing)}")
        bad = [f for f in fields if not _is_number(row[f])]
        if bad:
            raise DemoError(f"{where}: {', '.join(bad)} not a number")
        if row["epoch"] != k + 1:
            raise DemoError(f"{where} is numbered {row['epoch']!r}")
    return history


def read_checkpoint(
    name: str,
    path: str,
    identity: Dict[str, Any],
    shapes: Dict[str, Tuple[int, ...]],
    metric: str,
) -> Any:
    """Load a demo checkpoint and check everything a resumed run will read.

    Parameters
    ----------
    name : {"recommender", "mlp"}
    path : str
    identity : dict
        The settings the run is resumed with (``settings.identity()``).
    shapes : dict of str to tuple
        The model's float32 variables and their shapes, for these settings.
    metric : str
        The history's per-epoch test metric (``"test_rmse"``,
        ``"test_accuracy"``).

    Returns
    -------
    numbadam.Checkpoint

    Raises
    ------
    DemoError
        If the checkpoint belongs to another model, was written with other
        settings, or its metadata or variables are not what the demo writes.
    numbadam.CheckpointError
        If the file is damaged (or not a checkpoint).
    """
    ckpt = numbadam.load_checkpoint(path)
    meta = ckpt.metadata
    if not isinstance(meta, dict) or meta.get("demo") != name:
        raise DemoError(f"{path} is not a checkpoint of the {name} demo")
    saved = meta.get("settings", {})
    if not isinstance(saved, dict):
        raise DemoError(f"{path}: damaged metadata: the settings are not a record")
    if saved != identity:
        diff = ", ".join(
            f"{k}={saved.get(k)!r} (now {identity.get(k)!r})"
            for k in sorted(set(saved) | set(identity))
            if saved.get(k) != identity.get(k)
        )
        raise DemoError(
            f"{path} was written with other settings: {diff}. Rerun with the same "
            "flags (and --quick or not), or use another --checkpoint-dir"
        )
    if set(ckpt.variables) != set(shapes):
        raise DemoError(f"{path} holds variables {sorted(ckpt.variables)}")
    for key, shape in shapes.items():
        v = ckpt.variables[key]
        if v.shape != tuple(shape) or v.dtype != np.float32:
            raise DemoError(
                f"{path}: variable {key} is {v.dtype} {v.shape}; these settings "
                f"make it float32 {tuple(shape)}"
            )
    history = _check_history(path, meta.get("history", []), metric)
    if meta.get("epoch") != len(history):
        raise DemoError(f"{path}: its epoch count and history disagree")
    return ckpt


def resume_or_start(
    name: str,
    path: Optional[str],
    resume: bool,
    variables: Dict[str, np.ndarray],
    identity: Dict[str, Any],
    reporter: Reporter,
    target_epochs: int,
    metric: str,
    checkpoint: Any = None,
) -> Tuple[Optional[Any], int, List[Dict[str, Any]]]:
    """Load ``path`` into ``variables`` when resuming.

    Returns ``(optimizer or None, epochs done, history)``. The checkpoint's
    variables replace the entries of ``variables`` (the optimizer's slots are
    tied to them). ``checkpoint``, when given, is ``path`` already read by
    :func:`read_checkpoint`.

    Raises
    ------
    DemoError
        See :func:`read_checkpoint`.
    numbadam.CheckpointError
        If the file is damaged.
    """
    if path is None:
        return None, 0, []
    if not resume or not os.path.exists(path):
        if resume:
            reporter.line(f"  no checkpoint {path} yet: starting {name} from scratch")
        elif os.path.exists(path):
            reporter.note(
                f"  {path} exists and will be replaced after the first epoch "
                "(pass --resume to continue from it instead)"
            )
        return None, 0, []
    ckpt = checkpoint
    if ckpt is None:
        shapes = {k: v.shape for k, v in variables.items()}
        ckpt = read_checkpoint(name, path, identity, shapes, metric)
    variables.update(ckpt.variables)
    history = list(ckpt.metadata.get("history", []))
    reporter.line(
        f"  resumed {name} from {path}: {len(history)} epochs done, "
        f"{ckpt.step} Adam steps"
    )
    if len(history) >= target_epochs:
        reporter.line(
            f"  all {target_epochs} epochs are done already (ask for more epochs to "
            "train further)"
        )
    return ckpt.optimizer, len(history), history


def save_epoch(
    name: str,
    path: Optional[str],
    optimizer: Any,
    variables: Dict[str, np.ndarray],
    identity: Dict[str, Any],
    history: List[Dict[str, Any]],
    reporter: Reporter,
) -> None:
    """Write the end-of-epoch checkpoint (atomically) when ``path`` is set."""
    if path is None:
        return
    numbadam.save_checkpoint(
        path, optimizer, variables, metadata=_metadata(name, identity, history)
    )
