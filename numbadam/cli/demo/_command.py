"""``numbadam demo``: its options and its run (the exit status)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from .._args import PROG, int_at_least

HELP = "Train an embedding recommender and an MLP with numbadam.Adam."

DESCRIPTION = """\
Train two models with numbadam.Adam and report what happens:

  1. a matrix-factorization recommender: user and item embedding tables
     (2.4 million parameters by default) trained on sparse IndexedSlices
     gradients, on seeded synthetic ratings generated in memory; per epoch:
     training loss, held-out RMSE next to the global-mean baseline, steps/s
     and parameter updates/s;
  2. a NumPy MLP on scikit-learn's bundled handwritten digits (needs
     scikit-learn: pip install 'numbadam[examples]'); per epoch: test accuracy.

Progress bars need tqdm, --plot needs matplotlib (both in the examples extra).
With --checkpoint-dir DIR a checkpoint is written after every epoch; stop at
any time (Ctrl-C) and continue bit-identically with --resume.

examples:
  numbadam demo
  numbadam demo --quick --json
  numbadam demo --plot demo-output/demo.png --checkpoint-dir demo-output/ckpt
  numbadam demo --checkpoint-dir demo-output/ckpt --resume
  numbadam demo --large /mnt/big/numbadam-large     # table + state > RAM
  numbadam demo --large /tmp/large --quick          # the same in seconds

With --large DIR it trains instead one embedding table larger than this
machine's memory (table and Adam state in memory-mapped files in DIR, lazy
row-wise steps, a folder checkpoint with delta saves every few hundred steps);
see docs/large.md. It first checks that DIR has room for the files and one full
checkpoint, and refuses otherwise.
"""


def configure(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run")
    g.add_argument(
        "--quick",
        action="store_true",
        help="tiny configuration (a few seconds; used in CI)",
    )
    g.add_argument(
        "--only", choices=("recommender", "mlp"), help="run only one of the two models"
    )
    g.add_argument(
        "--seed",
        type=int_at_least(0),
        default=0,
        help="seed of the data, initialisation and shuffling (default 0)",
    )
    g.add_argument(
        "--threads",
        type=int_at_least(1),
        help="CPU threads of numbadam's kernels (default: all cores; 1 is often "
        "as fast, and far better on a busy machine)",
    )
    g.add_argument(
        "--distributed",
        nargs="?",
        const="sharded",
        choices=("data", "sharded"),
        help="train the recommender alone over MPI ranks, data-parallel or "
        "ZeRO-sharded (default sharded), with the same learning curve at any "
        "number of ranks; launch as 'mpiexec -n 2 python -m mpi4py -m numbadam "
        "demo --distributed' (one process without mpiexec)",
    )
    g = p.add_argument_group("large (out-of-core) embedding table")
    g.add_argument(
        "--large",
        metavar="DIR",
        help="train one table larger than RAM, its files in DIR (new or empty)",
    )
    g.add_argument(
        "--rows",
        type=int_at_least(2),
        help="rows of the large table (default: 10%% more than fits in RAM; "
        "200000 with --quick)",
    )
    g.add_argument(
        "--steps", type=int_at_least(1), help="steps of the large demo (2000 / 120)"
    )
    g.add_argument(
        "--second-moment",
        choices=("row", "element"),
        help="the large table's Adam second moment: per row (default) or per "
        "element",
    )
    g = p.add_argument_group("output")
    g.add_argument(
        "--json",
        action="store_true",
        help="print only the final metrics, as JSON, on stdout",
    )
    g.add_argument(
        "--plot",
        metavar="PATH",
        help="write the loss/RMSE/accuracy curves there as a PNG (needs matplotlib)",
    )
    g.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bars (they are off anyway when stderr is not "
        "a terminal, or with --json)",
    )
    g = p.add_argument_group("checkpoints")
    g.add_argument(
        "--checkpoint-dir",
        metavar="DIR",
        help="save recommender.npz and mlp.npz there after every epoch",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue from the checkpoints in --checkpoint-dir",
    )
    g = p.add_argument_group("recommender sizes (defaults: full / --quick)")
    g.add_argument("--users", type=int_at_least(1), help="users (40000 / 2000)")
    g.add_argument("--items", type=int_at_least(1), help="items (10000 / 500)")
    g.add_argument(
        "--ratings",
        type=int_at_least(10),
        help="ratings, 10%% held out (1600000 / 60000)",
    )
    g.add_argument("--dim", type=int_at_least(1), help="embedding size (48 / 16)")
    g.add_argument(
        "--batch-size",
        type=int_at_least(1),
        help="ratings per Adam step (4096 / 2048)",
    )
    g.add_argument("--rec-epochs", type=int_at_least(0), help="epochs (8 / 5)")
    g = p.add_argument_group("MLP")
    g.add_argument("--mlp-epochs", type=int_at_least(0), help="epochs (20 / 8)")


def _run_distributed(
    args: argparse.Namespace, rec: Any, reporter: Any, prog: str
) -> int:
    # The demo's recommender over MPI ranks: the same learning curve at any
    # number of ranks (docs/scaling.md).
    import numbadam

    from numbadam.distributed import get_communicator

    from .recommender import train_recommender_distributed

    comm = get_communicator()
    threads = numbadam.get_num_threads()
    try:
        if args.threads is not None:
            try:
                numbadam.set_num_threads(args.threads)
            except ValueError as exc:
                print(f"{prog}: error: --threads: {exc}", file=sys.stderr)
                return 2
        out = train_recommender_distributed(rec, args.distributed, comm, reporter)
    finally:
        numbadam.set_num_threads(threads)
    if args.json and comm.rank == 0:
        keys = ("mode", "ranks", "epoch_train_loss", "epoch_rmse", "baseline_rmse")
        print(json.dumps({k: out[k] for k in keys}))
    return 0


def _run_large(args: argparse.Namespace, reporter: Any, prog: str) -> int:
    import numbadam

    from . import DemoError
    from .large import LargeSettings, plan_large, train_large

    other = [
        flag
        for flag, used in (
            ("--only", args.only),
            ("--distributed", args.distributed),
            ("--checkpoint-dir", args.checkpoint_dir),
            ("--resume", args.resume),
            ("--plot", args.plot),
        )
        if used
    ]
    if other:
        print(
            f"{prog}: error: --large runs on its own: drop {', '.join(other)}",
            file=sys.stderr,
        )
        return 2
    overrides = {
        k: v
        for k, v in {"rows": args.rows, "steps": args.steps, "seed": args.seed,
                     "second_moment": args.second_moment}.items()
        if v is not None
    }  # fmt: skip
    settings = (LargeSettings.quick if args.quick else LargeSettings)(**overrides)
    try:
        plan = plan_large(args.large, settings)
    except (DemoError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    threads = numbadam.get_num_threads()
    try:
        if args.threads is not None:
            numbadam.set_num_threads(args.threads)
        out = train_large(plan, reporter)
    except (DemoError, numbadam.CheckpointError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    finally:
        numbadam.set_num_threads(threads)
    if args.json:
        print(json.dumps(out, indent=2))
    return 0


def run(args: argparse.Namespace) -> int:
    # Numba's OpenMP threads spin while waiting for work by default; on a busy
    # machine each parallel step then waits for descheduled spinners. Measured on
    # a loaded 2-core machine: 10-17 s per recommender epoch spinning, 1.0-1.4 s
    # passive (the same ~1 s either way when idle). Read when OpenMP starts, i.e.
    # at the first kernel call; a value set by the user wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numbadam

    from . import DemoError, MLPSettings, RecommenderSettings, Reporter, prepare_demo

    prog = f"{PROG} demo"
    if args.resume and not args.checkpoint_dir:
        print(f"{prog}: error: --resume needs --checkpoint-dir DIR", file=sys.stderr)
        return 2
    rec_overrides = {
        k: v
        for k, v in {
            "users": args.users,
            "items": args.items,
            "ratings": args.ratings,
            "dim": args.dim,
            "batch_size": args.batch_size,
            "epochs": args.rec_epochs,
        }.items()
        if v is not None
    }
    mlp_overrides = {} if args.mlp_epochs is None else {"epochs": args.mlp_epochs}
    if args.quick:
        rec = RecommenderSettings.quick(seed=args.seed, **rec_overrides)
        mlp = MLPSettings.quick(seed=args.seed, **mlp_overrides)
    else:
        rec = RecommenderSettings(seed=args.seed, **rec_overrides)
        mlp = MLPSettings(seed=args.seed, **mlp_overrides)
    if args.only == "mlp":
        rec = None
    elif args.only == "recommender":
        mlp = None
    progress = not (args.json or args.no_progress) and sys.stderr.isatty()
    reporter = Reporter(mode="json" if args.json else "text", progress=progress)
    if args.large:
        return _run_large(args, reporter, prog)
    stray = [f for f, v in (("--rows", args.rows), ("--steps", args.steps),
                            ("--second-moment", args.second_moment)) if v is not None]
    if stray:  # fmt: skip
        print(f"{prog}: error: {', '.join(stray)} need --large DIR", file=sys.stderr)
        return 2
    if args.distributed:
        unsupported = [
            flag
            for flag, used in (
                ("--only mlp", args.only == "mlp"),
                ("--checkpoint-dir", args.checkpoint_dir),
                ("--resume", args.resume),
                ("--plot", args.plot),
                ("--mlp-epochs", args.mlp_epochs is not None),
            )
            if used
        ]
        if unsupported:
            print(
                f"{prog}: error: --distributed trains the recommender only, without "
                f"checkpoints or plots: drop {', '.join(unsupported)}",
                file=sys.stderr,
            )
            return 2
        return _run_distributed(args, rec, reporter, prog)
    # Every path and checkpoint is checked before anything trains: a problem
    # is a bad argument (status 2), not a traceback after minutes of training.
    try:
        plan = prepare_demo(rec, mlp, args.checkpoint_dir, args.resume, args.plot)
    except (DemoError, numbadam.CheckpointError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    threads = numbadam.get_num_threads()
    try:
        if args.threads is not None:
            try:
                numbadam.set_num_threads(args.threads)
            except ValueError as exc:
                print(f"{prog}: error: --threads: {exc}", file=sys.stderr)
                return 2
        results = plan.run(reporter)
    except (DemoError, numbadam.CheckpointError, OSError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        hint = ""
        if args.checkpoint_dir:
            hint = (
                f"; the last finished epoch is saved in {args.checkpoint_dir}: "
                "rerun with --resume to continue"
            )
        print(f"\n{prog}: interrupted{hint}", file=sys.stderr)
        return 130
    finally:
        numbadam.set_num_threads(threads)  # main() may run inside a larger program
    if args.json:
        print(json.dumps(results, indent=2))
    elif args.checkpoint_dir:
        print(f"Checkpoints: {args.checkpoint_dir} (continue later with --resume)")
    return 0
