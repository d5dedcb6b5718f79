"""Pieces shared by the subcommands' argument parsers."""

from __future__ import annotations

import argparse
from typing import Callable

#: The command's name, in messages and ``--help``.
PROG = "numbadam"


def int_at_least(low: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer of at least ``low`` (one-line errors).

    Examples
    --------
    >>> from numbadam.cli._args import int_at_least
    >>> int_at_least(1)("3")
    3
    >>> int_at_least(1)("0")
    Traceback (most recent call last):
    argparse.ArgumentTypeError: 0 is below the minimum, 1
    """

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum, {low}")
        return value

    parse.__name__ = "integer"
    return parse
