"""The ``numbadam`` command line (also ``python -m numbadam``): the applications.

Nothing in the rest of numbadam imports this package. Its subcommands:

- ``numbadam demo`` (:mod:`numbadam.cli.demo`): an embedding recommender and an
  MLP trained with :class:`numbadam.Adam`, also over MPI ranks; the smaller
  distributed demo is :mod:`numbadam.cli.demo.embedding`;
- ``numbadam bench`` (:mod:`numbadam.cli.bench`): numbadam side by side with a
  bandwidth probe, NumPy, PyTorch and optax, scored against the speed goals of
  :mod:`numbadam.cli.goals`, timed by :mod:`numbadam.cli.timer` (which
  ``asv_bench`` uses too).

Subcommands live in :data:`SUBCOMMANDS`; a new one is added with
:func:`register` (a name, a one-line help, a function that adds its arguments
to an :class:`argparse.ArgumentParser`, and a function that runs it and
returns the exit status). Optional packages (scikit-learn, matplotlib, tqdm,
PyTorch, optax) are imported only when a run needs them, so that ``numbadam
--help`` stays instant.

Exit statuses: 0 success; 1 a problem during the run, reported in one line
(e.g. a checkpoint that cannot be written); 2 bad command-line arguments,
including paths and checkpoints found unusable before the run starts (one
line, no traceback); 130 interrupted with Ctrl-C.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

from ._args import PROG

__all__ = ["SUBCOMMANDS", "Subcommand", "build_parser", "main", "register"]


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error message (no usage dump) and exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


@dataclass
class Subcommand:
    """A ``numbadam`` subcommand.

    Attributes
    ----------
    name : str
    help : str
        One line for ``numbadam --help``.
    configure : callable
        ``configure(parser)`` adds the subcommand's arguments.
    run : callable
        ``run(args) -> int``: the exit status.
    description : str
        The text of ``numbadam NAME --help`` (defaults to ``help``).
    """

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: Optional[str] = None


#: The registered subcommands, by name, in ``--help`` order.
SUBCOMMANDS: Dict[str, Subcommand] = {}


def register(
    name: str,
    help: str,
    configure: Callable[[argparse.ArgumentParser], None],
    run: Callable[[argparse.Namespace], int],
    description: Optional[str] = None,
) -> Subcommand:
    """Add a subcommand to ``numbadam``.

    Examples
    --------
    >>> from numbadam import cli
    >>> def run(args):
    ...     print("hello", args.who)
    ...     return 0
    >>> _ = cli.register("hello", "Say hello.",
    ...                  lambda p: p.add_argument("--who", default="world"), run)
    >>> cli.main(["hello", "--who", "you"])
    hello you
    0
    >>> del cli.SUBCOMMANDS["hello"]
    """
    sub = Subcommand(name, help, configure, run, description)
    SUBCOMMANDS[name] = sub
    return sub


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every registered subcommand."""
    from .. import __version__

    parser = _Parser(
        prog=PROG,
        description="numbadam: a Numba-accelerated, numerically faithful "
        "Keras/TF2 Adam for NumPy arrays.",
        epilog=f"Run '{PROG} COMMAND --help' for a command's options.",
    )
    parser.add_argument(
        "--version", action="version", version=f"%(prog)s {__version__}"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for sub in SUBCOMMANDS.values():
        p = subparsers.add_parser(
            sub.name,
            help=sub.help,
            description=sub.description or sub.help,
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        sub.configure(p)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Run ``numbadam`` with ``argv`` (default: ``sys.argv[1:]``); the exit status.

    Examples
    --------
    >>> from numbadam.cli import main
    >>> main(["--version"])
    Traceback (most recent call last):
    SystemExit: 0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(SUBCOMMANDS[args.command].run(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{PROG} {args.command}: interrupted", file=sys.stderr)
        return 130




def _register_applications() -> None:
    from . import bench
    from .demo import _command as demo

    register("demo", demo.HELP, demo.configure, demo.run, demo.DESCRIPTION)
    register("bench", bench.HELP, bench.add_arguments, bench.main, bench.DESCRIPTION)


_register_applications()
