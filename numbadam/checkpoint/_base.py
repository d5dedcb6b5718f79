"""The file format's constants, the error and what a load returns.

Private: the public names are re-exported by :mod:`numbadam.checkpoint`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Dict, Sequence, Union

import numpy as np

from ..optimizer import OptimizerV2

FORMAT = "numbadam.checkpoint"
VERSION = 1
HEADER_KEY = "__numbadam_checkpoint__"

PathLike = Union[str, bytes, "os.PathLike[str]"]
Variables = Union[Mapping, Sequence]


class CheckpointError(ValueError):
    """A checkpoint file cannot be written or read back.

    Raised for a file that is corrupt, truncated, not a numbadam checkpoint,
    bears pickled objects, or does not match the variables it is loaded into.
    The message starts with the file's path and says what is wrong.

    Parameters
    ----------
    path : str or os.PathLike or None
        The checkpoint file concerned (kept as ``exc.path``).
    problem : str
        What is wrong with it (kept as ``exc.problem``).

    Examples
    --------
    >>> import os, tempfile
    >>> import numbadam
    >>> path = os.path.join(tempfile.mkdtemp(), "junk.npz")
    >>> with open(path, "wb") as f:
    ...     _ = f.write(b"not a checkpoint")
    >>> try:
    ...     numbadam.load_checkpoint(path)
    ... except numbadam.CheckpointError as exc:
    ...     print(str(exc).split(": ", 1)[1])
    not an .npz archive (the file starts with b'not a ch')
    """

    def __init__(self, path: Any, problem: str) -> None:
        self.path = None if path is None else os.fsdecode(os.fspath(path))
        self.problem = problem
        super().__init__(problem if path is None else f"{self.path}: {problem}")


@dataclass
class Checkpoint:
    """What :func:`load_checkpoint` returns.

    Attributes
    ----------
    path : str
        The file read.
    optimizer : OptimizerV2
        A new optimizer of the saved class and config, built for
        :attr:`variables` and holding the saved weights.
    variables : dict of str to numpy.ndarray
        The variables by name, in saved order: the arrays passed to
        :func:`load_checkpoint` (restored in place) or new ones.
    step : int
        ``int(optimizer.iterations)``.
    metadata : dict
        The ``metadata`` given to :func:`save_checkpoint` (``{}`` if none).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import numbadam
    >>> w = np.ones(2, np.float32)
    >>> opt = numbadam.Adam(0.1)
    >>> _ = opt.apply_gradients([(np.ones(2, np.float32), w)])
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
    >>> _ = numbadam.save_checkpoint(path, opt, {"w": w}, metadata={"epoch": 1})
    >>> ckpt = numbadam.load_checkpoint(path)
    >>> ckpt.step, ckpt.metadata, list(ckpt.variables)
    (1, {'epoch': 1}, ['w'])
    """

    path: str
    optimizer: OptimizerV2
    variables: Dict[str, np.ndarray]
    step: int
    metadata: Dict[str, Any] = field(default_factory=dict)
