"""Checkpoints: an optimizer and its variables in one ``.npz`` file, no pickle.

A checkpoint holds everything needed to continue training bit for bit: the
optimizer's class name and :meth:`~numbadam.OptimizerV2.get_config` (as JSON),
its weights (``iterations`` and every slot), the step count, the named
variables and an optional JSON ``metadata`` dict of the caller's own (an epoch
number, a history of losses...).

File format (version 1)
-----------------------
An uncompressed NumPy ``.npz`` archive (a zip of ``.npy`` files) with

``__numbadam_checkpoint__``
    uint8 array: the UTF-8 JSON header (format tag, version, optimizer class
    and config, step, the name, shape and dtype of every variable, which
    variable and slot each optimizer weight belongs to, user metadata);
``variable_<i>``
    the ``i``-th variable, in the order given to :func:`save_checkpoint`;
``weight_<j>``
    the optimizer's ``j``-th weight, in :meth:`~numbadam.OptimizerV2.get_weights`
    order (``weight_0`` is ``iterations``).

Nothing in it is pickled, nothing in it is compressed, and :func:`load_checkpoint`
checks the archive's directory and header before it reads any array. Files are
written atomically: to a temporary file in the target's folder, flushed and
``fsync``-ed, then renamed over the target, and the folder is ``fsync``-ed; a
crash or an error (a full disk) leaves either the old checkpoint or the new one.
Only regular files are ever replaced.
"""

from __future__ import annotations

# Besides the public names: the format's constants, and the helpers with which
# numbadam.distributed writes and reads its sharded checkpoints (the same path
# and regular-file checks, atomic replacement and archive reader).
from ._base import FORMAT as FORMAT
from ._base import HEADER_KEY as HEADER_KEY
from ._base import VERSION as VERSION
from ._base import Checkpoint, CheckpointError
from ._base import PathLike as PathLike
from ._base import Variables as Variables
from ._files import _atomic_write as _atomic_write
from ._files import _fs_path as _fs_path
from ._files import _open_regular as _open_regular
from ._files import _regular_stat as _regular_stat
from ._files import _unlink_quietly as _unlink_quietly
from ._load import load_checkpoint
from ._read import _Archive as _Archive
from ._read import _is_int as _is_int
from ._read import _short as _short
from ._read import _spec_problem as _spec_problem
from ._save import save_checkpoint

__all__ = ["Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint"]
