"""``python -m numbadam.distributed``: the distributed embedding demo.

Launch on several ranks with ``mpiexec -n 2 python -m mpi4py -m
numbadam.distributed --mode sharded``; without mpiexec it runs on one process.
"""

from __future__ import annotations

import argparse

from ._train import train_embedding_distributed


def main(argv=None) -> None:
    p = argparse.ArgumentParser(
        prog="python -m numbadam.distributed",
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
