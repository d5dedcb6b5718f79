"""A small embedding model trained data-parallel or sharded: the distributed demo.

Run ``mpiexec -n 2 python -m mpi4py -m numbadam.cli.demo.embedding --mode
sharded`` (or call :func:`train_embedding_distributed`); with any number of
ranks, and without MPI, the per-epoch losses are the same up to float
rounding. The table is a :class:`~numbadam.distributed.ShardedEmbedding` in
sharded mode; ``numbadam demo --distributed`` trains the larger recommender.
"""

from __future__ import annotations

import argparse
from typing import Any, Callable, Dict, List, Optional

import numpy as np

from numbadam import IndexedSlices
from numbadam.distributed import (
    DistributedAdam,
    ShardedAdam,
    ShardedEmbedding,
    broadcast_variables,
    get_communicator,
    partition,
)

__all__ = ["main", "make_embedding_data", "train_embedding_distributed"]


def make_embedding_data(
    n: int = 4096, vocab: int = 1000, bag: int = 8, seed: int = 0
) -> Dict[str, np.ndarray]:
    """A seeded bag-of-ids binary classification set.

    Each example is ``bag`` ids drawn uniformly from ``range(vocab)``; its label
    is 1 where the mean of the ids' hidden scores (standard normal, one per
    id), times 3, plus noise of standard deviation 0.3, is positive.

    Parameters
    ----------
    n, vocab, bag : int, optional
        Examples, distinct ids, ids per example.
    seed : int, optional
        Seeds the ids, the scores and the noise.

    Returns
    -------
    dict
        ``ids`` (n, bag) int64 and ``y`` (n,) float32 of 0 and 1.

    Examples
    --------
    >>> from numbadam.cli.demo.embedding import make_embedding_data
    >>> data = make_embedding_data(n=8, vocab=5, bag=3)
    >>> data["ids"].shape, data["y"].dtype.name
    ((8, 3), 'float32')
    """
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, size=(n, bag), dtype=np.int64)
    token_score = rng.standard_normal(vocab)
    score = token_score[ids].mean(axis=1) * 3.0 + 0.3 * rng.standard_normal(n)
    return {"ids": ids, "y": (score > 0).astype(np.float32)}


def _init_params(vocab: int, dim: int, seed: int):
    rng = np.random.default_rng(seed + 1)
    table = (0.1 * rng.standard_normal((vocab, dim))).astype(np.float32)
    w = (0.1 * rng.standard_normal(dim)).astype(np.float32)
    b = np.zeros((), np.float32)
    return table, w, b


def train_embedding_distributed(
    mode: str = "data",
    epochs: int = 5,
    batch: int = 256,
    learning_rate: float = 0.01,
    n: int = 4096,
    vocab: int = 1000,
    dim: int = 16,
    bag: int = 8,
    seed: int = 0,
    comm: Any = None,
    verbose: bool = True,
    log: Optional[Callable[[str], None]] = None,
) -> List[float]:
    """Train a mean-of-embeddings logistic model on several ranks (collective).

    The model is ``p = sigmoid(mean(E[ids]) @ w + b)`` with binary
    cross-entropy; ``E`` gets :class:`~numbadam.IndexedSlices` gradients. Each
    global batch of ``batch`` examples is split over the ranks; every rank's
    gradient is scaled so that the optimizers' average over ranks is the
    gradient of the global batch's mean loss, which makes the learning curve
    independent of the number of ranks.

    Parameters
    ----------
    mode : {"data", "sharded"}
        ``"data"``: :class:`~numbadam.distributed.DistributedAdam`, the table
        replicated on every rank (rank 0's initial values broadcast).
        ``"sharded"``: :class:`~numbadam.distributed.ShardedAdam` for ``w``,
        ``b`` and a :class:`~numbadam.distributed.ShardedEmbedding` table
        (rows, ``m``, ``v`` split over the ranks; lookups and gradient rows
        travel with ``Alltoallv``).
    epochs, batch, learning_rate, n, vocab, dim, bag, seed
        Training length, global batch size, Adam's step size and the seeded
        synthetic data (:func:`make_embedding_data`).
    comm : optional
        See :func:`~numbadam.distributed.get_communicator`.
    verbose : bool, default True
        Rank 0 reports the loss of every epoch through ``log``.
    log : callable, optional
        Defaults to ``print`` with flush.

    Returns
    -------
    list of float
        Mean training loss of every epoch (the same on every rank).

    Examples
    --------
    >>> from numbadam.cli.demo.embedding import train_embedding_distributed
    >>> h = train_embedding_distributed("sharded", epochs=2, n=512, comm="self",
    ...                                 verbose=False)
    >>> len(h), h[1] < h[0]
    (2, True)
    """
    if mode not in ("data", "sharded"):
        raise ValueError(f"mode must be 'data' or 'sharded', got {mode!r}")
    c = get_communicator(comm)
    if log is None:

        def log(msg: str) -> None:
            print(msg, flush=True)

    data = make_embedding_data(n, vocab, bag, seed)
    ids_all, y_all = data["ids"], data["y"]
    table0, w, b = _init_params(vocab, dim, seed)
    if mode == "data":
        table = table0
        broadcast_variables([table, w, b], root=0, comm=c)
        opt: Any = DistributedAdam(learning_rate=learning_rate, comm=c)

        def lookup(ids):
            return table[ids]

        emb_var: Any = table
    else:
        emb = ShardedEmbedding.from_full(table0, comm=c)
        broadcast_variables([w, b], root=0, comm=c)
        opt = ShardedAdam(learning_rate=learning_rate, comm=c)
        lookup = emb.lookup
        emb_var = emb
    rng = np.random.default_rng(seed + 2)
    history = []
    for epoch in range(epochs):
        order = rng.permutation(n)
        totals = np.zeros(2)
        for s in range(0, n, batch):
            gidx = order[s : s + batch]
            part = partition(len(gidx), c.size)
            mine = gidx[part[c.rank] : part[c.rank + 1]]
            ids, y = ids_all[mine], y_all[mine]
            rows = lookup(ids)  # (k, bag, dim)
            h = rows.mean(axis=1, dtype=np.float32)
            z = h @ w + b
            p = 1.0 / (1.0 + np.exp(-z))
            eps = np.float32(1e-7)
            losses = -(y * np.log(p + eps) + (1 - y) * np.log(1 - p + eps))
            totals += (float(losses.sum(dtype=np.float64)), len(mine))
            # Averaged over ranks by the optimizer: scale to the global mean.
            dz = ((p - y) * np.float32(c.size / len(gidx))).astype(np.float32)
            gw = h.T @ dz
            gb = np.asarray(dz.sum(), np.float32)
            gh = (dz[:, None] * w[None, :]) / np.float32(bag)
            g_rows = np.repeat(gh, bag, axis=0).astype(np.float32)
            g_table = IndexedSlices(g_rows, ids.reshape(-1), (vocab, dim))
            opt.apply_gradients([(g_table, emb_var), (gw, w), (gb, b)])
        c.allreduce_sum_(totals)
        history.append(float(totals[0] / totals[1]))
        if verbose and c.rank == 0:
            log(
                f"epoch {epoch + 1:2d}  loss {history[-1]:.5f}  "
                f"({mode}, {c.size} rank{'s' if c.size > 1 else ''})"
            )
    return history


def main(argv: Optional[List[str]] = None) -> None:
    """``python -m numbadam.cli.demo.embedding``: train, printing each epoch's loss.

    Parameters
    ----------
    argv : list of str, optional
        The options (default: ``sys.argv[1:]``); ``--help`` lists them.

    Examples
    --------
    >>> from numbadam.cli.demo.embedding import main
    >>> main(["--mode", "sharded", "--epochs", "1"])  # doctest: +ELLIPSIS
    epoch  1  loss 0.6...  (sharded, 1 rank)
    """
    p = argparse.ArgumentParser(
        prog="python -m numbadam.cli.demo.embedding",
        description="Train a small embedding model data-parallel or sharded.",
    )
    p.add_argument("--mode", choices=["data", "sharded"], default="data")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--learning-rate", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    train_embedding_distributed(
        a.mode,
        epochs=a.epochs,
        batch=a.batch,
        learning_rate=a.learning_rate,
        seed=a.seed,
    )


if __name__ == "__main__":
    main()
