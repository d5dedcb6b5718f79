"""``numbadam demo``: what numbadam is for, in two training runs.

1. A matrix-factorization recommender (user and item embedding tables and
   biases, millions of parameters) trained with :class:`numbadam.Adam` on
   :class:`numbadam.IndexedSlices` gradients, on synthetic ratings generated
   in memory (:mod:`numbadam.cli.demo.recommender`).
2. A NumPy MLP on scikit-learn's bundled handwritten digits
   (:mod:`numbadam.cli.demo.mlp`), when scikit-learn is installed.

Both can checkpoint after every epoch and resume bit-identically
(:func:`numbadam.save_checkpoint`). Run it with ``numbadam demo`` (see
``numbadam demo --help``) or call :func:`run_demo`.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

import numbadam

from ._common import DemoError, Reporter
from .mlp import SKLEARN_HINT, MLPSettings, train_mlp
from .recommender import RecommenderSettings, train_recommender
from .report import MATPLOTLIB_HINT, plot_results, summary_table

__all__ = [
    "DemoError",
    "MLPSettings",
    "RecommenderSettings",
    "Reporter",
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


def run_demo(
    recommender: Optional[RecommenderSettings] = None,
    mlp: Optional[MLPSettings] = None,
    reporter: Optional[Reporter] = None,
    checkpoint_dir: Optional[str] = None,
    resume: bool = False,
    plot: Optional[str] = None,
) -> Dict[str, Any]:
    """Run the demo's training runs and return their metrics.

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
        Write the curves there as a PNG (needs matplotlib; without it, a note
        says how to get it and the demo carries on).

    Returns
    -------
    dict
        ``recommender`` and ``mlp`` (each a result dict, or ``{"skipped":
        reason}``), ``plot`` (the PNG's path or ``None``), ``total_seconds``,
        ``numbadam_version``, ``threads`` (of the CPU kernels).

    Raises
    ------
    DemoError
        ``resume`` without an existing ``checkpoint_dir``; a checkpoint written
        with other settings.
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
    reporter = reporter or Reporter(mode="silent")
    t0 = time.perf_counter()
    if resume:
        if checkpoint_dir is None:
            raise DemoError("resume needs a checkpoint folder (--checkpoint-dir DIR)")
        if not os.path.isdir(checkpoint_dir):
            raise DemoError(
                f"checkpoint folder {checkpoint_dir!r} does not exist, so there is "
                "nothing to resume; drop --resume to start afresh (the folder is "
                "then created)"
            )
    elif checkpoint_dir is not None:
        os.makedirs(checkpoint_dir, exist_ok=True)

    def ckpt(name: str) -> Optional[str]:
        if checkpoint_dir is None:
            return None
        return os.path.join(checkpoint_dir, CHECKPOINT_FILES[name])

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
            recommender, reporter, ckpt("recommender"), resume
        )
    else:
        results["recommender"] = {"skipped": "not requested"}
    if mlp is not None:
        n += 1
        reporter.line()
        reporter.line(f"[{n}/{total}] Dense layers")
        if _sklearn_available():
            results["mlp"] = train_mlp(mlp, reporter, ckpt("mlp"), resume)
        else:
            reporter.note("  " + SKLEARN_HINT)
            results["mlp"] = {"skipped": "scikit-learn is not installed"}
    else:
        results["mlp"] = {"skipped": "not requested"}

    results["plot"] = None
    if plot is not None:
        try:
            results["plot"] = plot_results(results, plot)
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
