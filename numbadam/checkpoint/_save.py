"""Saving: :func:`save_checkpoint` and the checks it makes first.

Private: the public names are re-exported by :mod:`numbadam.checkpoint`.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Mapping
from typing import Any, Dict, List, Optional

import numpy as np

from .. import _dispatch
from ..optimizer import OptimizerV2
from ._base import FORMAT, HEADER_KEY, VERSION, CheckpointError, PathLike, Variables
from ._files import _atomic_write, _fs_path, _regular_stat


def _named(variables: Any, path: Any) -> List[tuple]:
    if isinstance(variables, Mapping):
        items = list(variables.items())
        for name, _ in items:
            if not isinstance(name, str):
                raise CheckpointError(
                    path, f"variable names must be strings, got {name!r}"
                )
    elif isinstance(variables, (str, bytes)) or not hasattr(variables, "__iter__"):
        raise TypeError(
            "variables must be a dict of name -> array or a list of arrays, got "
            f"{type(variables).__name__}"
        )
    else:
        items = [(str(i), v) for i, v in enumerate(variables)]
    return items


def _host(arr: Any, what: str, path: Any) -> np.ndarray:
    if _dispatch.is_device_array(arr):
        host = _dispatch.backend_for(arr).to_host(arr)
    elif isinstance(arr, np.ndarray):
        host = arr
    else:
        raise TypeError(f"{what} is a {type(arr).__name__}, not an array")
    if host.dtype.kind not in "biufc" or host.dtype.fields is not None:
        raise CheckpointError(
            path, f"{what} has dtype {host.dtype}; only numeric arrays can be saved"
        )
    return host


def _weight_roles(optimizer: OptimizerV2, named: List[tuple], path: Any) -> List[Any]:
    """For each optimizer weight: "iterations" or (variable index, slot name)."""
    owner: Dict[int, tuple] = {}
    for i, (_, var) in enumerate(named):
        for slot_name in optimizer.get_slot_names():
            try:
                slot = optimizer.get_slot(var, slot_name)
            except (KeyError, ValueError):
                continue
            owner[id(slot)] = (i, slot_name)
    iterations = optimizer._counter()  # (weights[0]: calls, with accumulation)
    roles: List[Any] = []
    for j, w in enumerate(optimizer.weights):
        if w is iterations:
            roles.append("iterations")
        elif id(w) in owner:
            roles.append(owner[id(w)])
        else:
            raise CheckpointError(
                path,
                f"optimizer weight {j} (shape {tuple(w.shape)}) belongs to a variable "
                "that is not in `variables`; pass every variable the optimizer "
                "trains, or resuming would lose its state",
            )
    return roles


def save_checkpoint(
    path: PathLike,
    optimizer: OptimizerV2,
    variables: Variables,
    metadata: Optional[Dict[str, Any]] = None,
) -> str:
    """Write ``optimizer`` and ``variables`` to one ``.npz`` file, atomically.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        Target file (conventionally ``*.npz``; no suffix is added). Its folder
        must exist. An existing file must be a regular file (a symbolic link
        to one is followed); it is replaced only once the new one is complete
        on disk, and keeps its permission bits.
    optimizer : OptimizerV2
        E.g. a :class:`~numbadam.Adam`. Its class name, config, weights and step
        count are saved. A :class:`~numbadam.distributed.DistributedAdam`
        (replicated state) can be saved from one rank; a
        :class:`~numbadam.distributed.ShardedAdam` only on one process (on
        several ranks, use its ``save_sharded``).
    variables : dict of str to array, or list of arrays
        Every variable the optimizer has state for (and any other numeric
        arrays to keep alongside). A list is saved with names ``"0"``, ``"1"``...
    metadata : dict, optional
        JSON-serialisable data of your own, returned by :func:`load_checkpoint`
        as :attr:`Checkpoint.metadata`.

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    CheckpointError
        If the optimizer has state for a variable not in ``variables`` or holds
        only part of its state (a ShardedAdam on several ranks), a variable is
        not numeric, the config or metadata is not JSON, or ``path`` is empty,
        too long, or exists and is not a regular file (a FIFO, a device...).
        Nothing is written then.
    FileNotFoundError
        If the folder of ``path`` does not exist.
    IsADirectoryError
        If ``path`` is a folder.
    OSError
        If writing fails (a full disk...): the message names ``path``, whose
        previous file, if any, is unchanged, and no temporary file is left.
    TypeError
        If ``optimizer`` is not an :class:`~numbadam.OptimizerV2`.

    Notes
    -----
    The write is atomic: a temporary file in the same folder is written,
    flushed and ``fsync``-ed, renamed over ``path`` with :func:`os.replace`,
    and the folder is ``fsync``-ed. An error or an interruption leaves the
    previous checkpoint (if any) intact. The process umask is never changed:
    a new file gets the default mode (``0o666`` less the umask).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import numbadam
    >>> table = np.zeros((100, 8), np.float32)
    >>> opt = numbadam.Adam(learning_rate=0.01)
    >>> grad = numbadam.IndexedSlices(np.ones((2, 8), np.float32), [3, 3], (100, 8))
    >>> _ = opt.apply_gradients([(grad, table)])
    >>> path = os.path.join(tempfile.mkdtemp(), "model.npz")
    >>> numbadam.save_checkpoint(path, opt, {"table": table}) == path
    True
    """
    if not isinstance(optimizer, OptimizerV2):
        raise TypeError(
            f"optimizer must be a numbadam optimizer, got {type(optimizer).__name__}"
        )
    path = _fs_path(path)
    directory = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            errno.ENOENT, f"cannot save checkpoint: no such folder {directory!r}", path
        )
    _regular_stat(os.path.realpath(path), path)
    named = _named(variables, path)
    names = [n for n, _ in named]
    if len(set(names)) != len(names):
        raise CheckpointError(path, "duplicate variable names")
    arrays: Dict[str, np.ndarray] = {}
    var_info = []
    for i, (name, var) in enumerate(named):
        host = _host(var, f"variable {name!r}", path)
        arrays[f"variable_{i}"] = host
        var_info.append(
            {"name": name, "shape": list(host.shape), "dtype": host.dtype.str}
        )
    roles = _weight_roles(optimizer, named, path)
    values = _state(optimizer, path)
    weight_info = []
    for j, (w, role) in enumerate(zip(values, roles)):
        host = _host(w, f"optimizer weight {j}", path)
        arrays[f"weight_{j}"] = host
        entry: Dict[str, Any] = {"shape": list(host.shape), "dtype": host.dtype.str}
        if role == "iterations":
            entry["role"] = "iterations"
        else:
            entry.update(role="slot", variable=role[0], slot=role[1])
        weight_info.append(entry)
    header = {
        "format": FORMAT,
        "version": VERSION,
        "optimizer": {
            "class_name": type(optimizer).__name__,
            "module": type(optimizer).__module__,
            "config": optimizer.get_config(),
        },
        "step": int(optimizer._counter()),
        "variables": var_info,
        "weights": weight_info,
        "metadata": {} if metadata is None else metadata,
    }
    if not isinstance(header["metadata"], dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    config = header["optimizer"]["config"]
    float64 = sorted(k for k, v in config.items() if type(v) is np.float64)
    if float64:  # (JSON writes them as plain floats: from_config would round)
        header["optimizer"]["float64"] = float64
    try:
        text = json.dumps(header)
    except (TypeError, ValueError, RecursionError) as exc:
        raise CheckpointError(
            path, f"optimizer config or metadata is not JSON-serialisable: {exc}"
        ) from None
    arrays[HEADER_KEY] = np.frombuffer(text.encode("utf-8"), np.uint8)
    _atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def _state(optimizer: OptimizerV2, path: str) -> List[Any]:
    """The optimizer's complete state, in :attr:`~OptimizerV2.weights` order.

    An optimizer whose ``weights`` are only part of its state (a ShardedAdam's
    slices of one rank) provides ``_checkpoint_weights()``: the whole state, or
    a ``ValueError`` saying why it cannot be put in one file.
    """
    full = getattr(optimizer, "_checkpoint_weights", None)
    if full is None:
        return list(optimizer.weights)
    try:
        values = list(full())
    except ValueError as exc:
        raise CheckpointError(path, str(exc)) from None
    if len(values) != len(optimizer.weights):  # pragma: no cover - a broken hook
        raise CheckpointError(path, "the optimizer's state does not match its weights")
    return values
