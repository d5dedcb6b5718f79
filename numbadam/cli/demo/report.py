"""The demo's summary table and plot."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from .._paths import plot_path, save_figure
from ._common import format_seconds

__all__ = ["MATPLOTLIB_HINT", "plot_results", "summary_rows", "summary_table"]

MATPLOTLIB_HINT = (
    "matplotlib is not installed, so no plot was written; get it with: "
    "pip install 'numbadam[examples]' (or pip install matplotlib)"
)


def _totals(result: Dict[str, Any]) -> Dict[str, float]:
    history = result.get("history") or []
    seconds = sum(r["seconds"] for r in history)
    steps = sum(r["steps_per_s"] * r["seconds"] for r in history)
    rate = steps / seconds if seconds > 0 else 0.0
    return {
        "seconds": seconds,
        "steps_per_s": rate,
        "updates_per_s": rate * result.get("n_parameters", 0),
    }


def summary_rows(results: Dict[str, Any]) -> List[List[str]]:
    """The summary table as rows of strings (the first row is the header).

    Examples
    --------
    >>> from numbadam.cli.demo.report import summary_rows
    >>> rows = summary_rows({"mlp": {"skipped": "no scikit-learn"}})
    >>> rows[1]
    ['mlp digits', '-', '-', '-', '-', '-', 'skipped: no scikit-learn']
    """
    rows = [
        [
            "run",
            "parameters",
            "epochs",
            "train time",
            "steps/s",
            "param updates/s",
            "result",
        ]
    ]
    labels = {"recommender": "recommender", "mlp": "mlp digits"}
    for key, label in labels.items():
        result = results.get(key)
        if result is None:
            continue
        if "skipped" in result:
            rows.append(
                [label, "-", "-", "-", "-", "-", f"skipped: {result['skipped']}"]
            )
            continue
        final = result.get("final")
        t = _totals(result)
        if final is None:
            outcome = "no epochs run"
        elif key == "recommender":
            base = result["baseline_rmse"]
            gain = 100 * (1 - final["test_rmse"] / base)
            outcome = (
                f"held-out RMSE {final['test_rmse']:.4f} vs {base:.4f} for the "
                f"global mean ({gain:.0f}% lower)"
            )
        else:
            outcome = f"test accuracy {100 * final['test_accuracy']:.1f}% (chance: 10%)"
        rows.append(
            [
                label,
                f"{result['n_parameters']:,}",
                str(len(result["history"])),
                format_seconds(t["seconds"]),
                f"{t['steps_per_s']:.0f}",
                f"{t['updates_per_s']:.2e}",
                outcome,
            ]
        )
    return rows


def summary_table(results: Dict[str, Any]) -> str:
    """The summary table as text, columns aligned (the result column left).

    Examples
    --------
    >>> from numbadam.cli.demo.report import summary_table
    >>> print(summary_table({"mlp": {"skipped": "none"}}))
    run         parameters  epochs  train time  steps/s  param updates/s  result
    mlp digits           -       -           -        -                -  skipped: none
    """
    rows = summary_rows(results)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0])]
        cells += [c.rjust(w) for c, w in zip(row[1:-1], widths[1:-1])]
        cells.append(row[-1])
        lines.append("  ".join(cells))
    return "\n".join(lines)


def plot_results(results: Dict[str, Any], path: str) -> Optional[str]:
    """Write the loss, RMSE and accuracy curves per epoch as a PNG.

    One row of panels per run that trained: the recommender's training loss
    and held-out RMSE (with the global-mean baseline), the MLP's training loss
    and test accuracy. matplotlib is imported here, with its non-interactive
    Agg canvas (no display needed, no global pyplot state).

    Parameters
    ----------
    results : dict
        :func:`numbadam.cli.demo.run_demo`'s output.
    path : str
        Target file; missing folders are created. Without an extension it
        gets ``.png``; with one, it is the format (any that matplotlib
        writes). The file is replaced atomically.

    Returns
    -------
    str or None
        The file written (``path``, plus ``.png`` if it had no extension), or
        ``None`` when nothing was trained.

    Raises
    ------
    ImportError
        Without matplotlib (message: how to install it).
    ValueError
        If ``path`` cannot take the plot (a folder, an unknown extension; see
        ``numbadam.cli._paths.plot_path``), before anything is drawn.

    Examples
    --------
    >>> import os, tempfile
    >>> import pytest; _ = pytest.importorskip("matplotlib")
    >>> from numbadam.cli.demo.report import plot_results
    >>> results = {"mlp": {"history": [
    ...     {"epoch": 1, "train_loss": 0.9, "test_accuracy": 0.8},
    ...     {"epoch": 2, "train_loss": 0.4, "test_accuracy": 0.9}]}}
    >>> path = os.path.join(tempfile.mkdtemp(), "out", "demo.png")
    >>> plot_results(results, path) == path and os.path.getsize(path) > 0
    True
    >>> plot_results(results, path[:-4]) == path  # matplotlib's default: a PNG
    True
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ImportError(MATPLOTLIB_HINT) from None
    path = plot_path(path)
    runs = [
        k
        for k in ("recommender", "mlp")
        if results.get(k) and results[k].get("history")
    ]
    if not runs:
        return None
    fig = Figure(figsize=(11, 4 * len(runs)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(runs), 2, squeeze=False)
    for row, key in zip(axes, runs):
        result = results[key]
        history = result["history"]
        epochs = [r["epoch"] for r in history]
        loss_ax, metric_ax = row
        loss_ax.plot(epochs, [r["train_loss"] for r in history], "o-", color="C0")
        loss_ax.set_xlabel("epoch")
        loss_ax.grid(alpha=0.3)
        metric_ax.set_xlabel("epoch")
        metric_ax.grid(alpha=0.3)
        for ax in row:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if key == "recommender":
            loss_ax.set_title("Recommender: training loss (MSE)")
            loss_ax.set_ylabel("mean squared error")
            metric_ax.plot(
                epochs,
                [r["test_rmse"] for r in history],
                "o-",
                color="C1",
                label="matrix factorization (numbadam.Adam)",
            )
            if "baseline_rmse" in result:
                metric_ax.axhline(
                    result["baseline_rmse"],
                    color="gray",
                    ls="--",
                    label="global-mean baseline",
                )
            noise = result.get("settings", {}).get("noise")
            if noise:
                metric_ax.axhline(noise, color="gray", ls=":", label="noise floor")
            metric_ax.set_title("Recommender: held-out RMSE")
            metric_ax.set_ylabel("RMSE")
            metric_ax.legend()
        else:
            loss_ax.set_title("MLP on digits: training loss (cross-entropy)")
            loss_ax.set_ylabel("cross-entropy")
            metric_ax.plot(
                epochs,
                [100 * r["test_accuracy"] for r in history],
                "o-",
                color="C2",
                label="MLP (numbadam.Adam)",
            )
            metric_ax.axhline(95, color="gray", ls="--", label="95%")
            metric_ax.set_title("MLP on digits: test accuracy")
            metric_ax.set_ylabel("accuracy (%)")
            metric_ax.legend(loc="lower right")
    save_figure(fig, path, dpi=100)
    return path
