"""``numbadam demo``: what numbadam is for, in two training runs.

1. A matrix-factorization recommender (user and item embedding tables and
   biases, millions of parameters) trained with :class:`numbadam.Adam` on
   :class:`numbadam.IndexedSlices` gradients, on synthetic ratings generated
   in memory (:mod:`numbadam.cli.demo.recommender`).
2. A NumPy MLP on scikit-learn's bundled handwritten digits
   (:mod:`numbadam.cli.demo.mlp`), when scikit-learn is installed.

Both can checkpoint after every epoch and resume bit-identically
(:func:`numbadam.save_checkpoint`). Run it with ``numbadam demo`` (see
``numbadam demo --help``) or call :func:`run_demo`, which checks every path
and checkpoint (:func:`prepare_demo`) before it trains anything.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numbadam

from .._paths import plot_path
from ._common import DemoError, Reporter, read_checkpoint
from .mlp import SKLEARN_HINT, MLPSettings, train_mlp
from .recommender import RecommenderSettings, train_recommender
from .report import MATPLOTLIB_HINT, plot_results, summary_table

__all__ = [
    "DemoError",
    "DemoPlan",
    "MLPSettings",
    "RecommenderSettings",
    "Reporter",
    "prepare_demo",
    "run_demo",
    "summary_table",
]

CHECKPOINT_FILES = {"recommender": "recommender.npz", "mlp": "mlp.npz"}


def _sklearn_available() -> bool:
    try:
        import sklearn.datasets  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass
class DemoPlan:
    """A demo run whose paths and checkpoints :func:`prepare_demo` has checked.

    Attributes
    ----------
    recommender : RecommenderSettings or None
    mlp : MLPSettings or None
        ``None`` for a run not requested.
    checkpoint_dir : str or None
    resume : bool
    plot : str or None
        The file the plot goes to (``.png`` added to a name without an
        extension).
    checkpoints : dict of str to numbadam.Checkpoint
        The checkpoints to resume from, read and checked, by run.
    """

    recommender: Optional[RecommenderSettings]
    mlp: Optional[MLPSettings]
    checkpoint_dir: Optional[str] = None
    resume: bool = False
    plot: Optional[str] = None
    checkpoints: Dict[str, Any] = field(default_factory=dict)

    def checkpoint_path(self, name: str) -> Optional[str]:
        """Where run ``name``'s checkpoint is written, if anywhere."""
        if self.checkpoint_dir is None:
            return None
        return os.path.join(self.checkpoint_dir, CHECKPOINT_FILES[name])

    def run(self, reporter: Optional[Reporter] = None) -> Dict[str, Any]:
        """Train and report; :func:`run_demo`'s result."""
        return _run(self, reporter or Reporter(mode="silent"))


def prepare_demo(
    recommender: Optional[RecommenderSettings] = None,
    mlp: Optional[MLPSettings] = None,
    checkpoint_dir: Optional[str] = None,
    resume: bool = False,
    plot: Optional[str] = None,
) -> DemoPlan:
    """Check every path and checkpoint of a demo run, before any training.

    The checkpoint folder is created (unless ``resume``); the checkpoints to
    resume from are read and checked whole: the file, its metadata (the
    demo's name, the settings, every epoch of the history) and its
    variables' shapes. Nothing else is written.

    Parameters
    ----------
    recommender, mlp, checkpoint_dir, resume, plot
        As :func:`run_demo`.

    Returns
    -------
    DemoPlan

    Raises
    ------
    DemoError
        ``resume`` without an existing ``checkpoint_dir``; a checkpoint folder
        or file that is not one; a checkpoint of another run, written with
        other settings, or with damaged metadata; a plot path that cannot take
        the plot (a folder, an extension matplotlib does not write).
    numbadam.CheckpointError
        A damaged checkpoint file.

    Examples
    --------
    >>> import os, tempfile
    >>> from numbadam.cli.demo import RecommenderSettings, prepare_demo
    >>> folder = tempfile.mkdtemp()
    >>> plan = prepare_demo(RecommenderSettings.quick(), plot=os.path.join(folder, "c"))
    >>> os.path.basename(plan.plot)
    'c.png'
    >>> prepare_demo(plot=folder)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    numbadam.cli.demo._common.DemoError: plot file ... is a folder; ...
    """
    if plot is not None:
        try:
            plot = plot_path(plot)
        except ValueError as exc:
            raise DemoError(str(exc)) from None
    plan = DemoPlan(recommender, mlp, checkpoint_dir, resume, plot)
    if checkpoint_dir is not None and os.path.exists(checkpoint_dir):
        if not os.path.isdir(checkpoint_dir):
            raise DemoError(f"checkpoint folder {checkpoint_dir!r} is not a folder")
    if resume:
        if checkpoint_dir is None:
            raise DemoError("resume needs a checkpoint folder (--checkpoint-dir DIR)")
        if not os.path.isdir(checkpoint_dir):
            raise DemoError(
                f"checkpoint folder {checkpoint_dir!r} does not exist, so there is "
                "nothing to resume; drop --resume to start afresh (the folder is "
                "then created)"
            )
    runs = {"recommender": recommender, "mlp": mlp}
    if mlp is not None and not _sklearn_available():
        del runs["mlp"]  # skipped with a note: its checkpoint stays unread
    metrics = {"recommender": "test_rmse", "mlp": "test_accuracy"}
    for name, settings in runs.items():
        path = plan.checkpoint_path(name)
        if settings is None or path is None or not os.path.lexists(path):
            continue
        if not os.path.isfile(path) or os.path.islink(path):
            raise DemoError(
                f"{path} exists and is not a regular file: it is neither read "
                "nor replaced"
            )
        if resume:
            plan.checkpoints[name] = read_checkpoint(
                name, path, settings.identity(), settings.variable_shapes(),
                metrics[name],
            )  # fmt: skip
    if checkpoint_dir is not None and not resume:
        os.makedirs(checkpoint_dir, exist_ok=True)
    return plan


def run_demo(
    recommender: Optional[RecommenderSettings] = None,
    mlp: Optional[MLPSettings] = None,
    reporter: Optional[Reporter] = None,
    checkpoint_dir: Optional[str] = None,
    resume: bool = False,
    plot: Optional[str] = None,
) -> Dict[str, Any]:
    """Run the demo's training runs and return their metrics.

    Every path and checkpoint is checked first (:func:`prepare_demo`): a
    problem with any of them stops the demo before it trains anything.

    Parameters
    ----------
    recommender : RecommenderSettings, optional
        Settings of the recommender run; ``None`` skips it.
    mlp : MLPSettings, optional
        Settings of the MLP run; ``None`` skips it. Skipped with a note, too,
        when scikit-learn is not installed.
    reporter : Reporter, optional
        Output; silent when omitted.
    checkpoint_dir : str, optional
        Folder for ``recommender.npz`` and ``mlp.npz``, written after every
        epoch (created if missing, unless ``resume``).
    resume : bool, optional
        Continue each run from its checkpoint in ``checkpoint_dir`` (a run
        without one starts afresh). The folder must exist.
    plot : str, optional
        Write the curves there (needs matplotlib; without it, a note says how
        to get it and the demo carries on). A name without an extension gets
        ``.png``; with one, it chooses the format (any matplotlib writes).

    Returns
    -------
    dict
        ``recommender`` and ``mlp`` (each a result dict, or ``{"skipped":
        reason}``), ``plot`` (the file written, or ``None``),
        ``total_seconds``, ``numbadam_version``, ``threads`` (of the CPU
        kernels).

    Raises
    ------
    DemoError
        See :func:`prepare_demo`.
    numbadam.CheckpointError
        A damaged checkpoint.

    Examples
    --------
    >>> from numbadam.cli.demo import RecommenderSettings, run_demo
    >>> rec = RecommenderSettings.quick(users=300, items=100, ratings=6000, epochs=2)
    >>> out = run_demo(recommender=rec)
    >>> out["recommender"]["final"]["epoch"], "skipped" in out["mlp"]
    (2, True)
    """
    plan = prepare_demo(recommender, mlp, checkpoint_dir, resume, plot)
    return plan.run(reporter)


def _run(plan: DemoPlan, reporter: Reporter) -> Dict[str, Any]:
    t0 = time.perf_counter()
    recommender, mlp, resume = plan.recommender, plan.mlp, plan.resume
    reporter.line(
        "numbadam demo: Keras-faithful Adam (tf.keras.optimizers.legacy.Adam) "
        "updating NumPy arrays in place with fused Numba kernels"
    )
    results: Dict[str, Any] = {
        "numbadam_version": numbadam.__version__,
        "threads": numbadam.get_num_threads(),
    }
    total = (recommender is not None) + (mlp is not None)
    n = 0
    if recommender is not None:
        n += 1
        reporter.line()
        reporter.line(f"[{n}/{total}] Embedding tables")
        results["recommender"] = train_recommender(
            recommender,
            reporter,
            plan.checkpoint_path("recommender"),
            resume,
            plan.checkpoints.get("recommender"),
        )
    else:
        results["recommender"] = {"skipped": "not requested"}
    if mlp is not None:
        n += 1
        reporter.line()
        reporter.line(f"[{n}/{total}] Dense layers")
        if _sklearn_available():
            results["mlp"] = train_mlp(
                mlp,
                reporter,
                plan.checkpoint_path("mlp"),
                resume,
                plan.checkpoints.get("mlp"),
            )
        else:
            reporter.note("  " + SKLEARN_HINT)
            results["mlp"] = {"skipped": "scikit-learn is not installed"}
    else:
        results["mlp"] = {"skipped": "not requested"}

    results["plot"] = None
    if plan.plot is not None:
        try:
            results["plot"] = plot_results(results, plan.plot)
        except ImportError:
            reporter.note(MATPLOTLIB_HINT)
    results["total_seconds"] = time.perf_counter() - t0

    reporter.line()
    reporter.line("Summary")
    reporter.line(summary_table(results))
    if results["plot"]:
        reporter.line(f"Plot of the loss, RMSE and accuracy curves: {results['plot']}")
    reporter.line(f"Total time: {results['total_seconds']:.1f} s")
    return results
