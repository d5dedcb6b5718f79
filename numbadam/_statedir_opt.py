"""An optimizer and its variables in a checkpoint folder, saved incrementally.

:func:`save_state_dir` writes the variables, every slot, ``iterations``, the
optimizer's class and config and the caller's ``metadata`` into a folder of
:mod:`numbadam._statedir` (one ``.npy`` per array and a JSON manifest; never
pickled; a crash at any point leaves the previous save loadable). After the
first save, the optimizer tracks which rows its steps change
(:mod:`numbadam._dirty`); later saves into the same folder write only those
rows (a *delta*), with a full save every ``full_every`` deltas or on request.
:func:`load_state_dir` replays base and deltas into an optimizer and its
variables (memory-mapping the base files: only what is copied is read).

Array names in the folder: ``iterations``, ``variable/<name>`` and
``slot/<name>/<slot>`` (``<name>``: the key of ``variables``, or its position
in a list). ``meta`` holds ``{"format": "numbadam.optimizer-dir",
"optimizer": {"class_name", "config"}, "step", "variables", "slots",
"metadata"}``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from . import _dispatch, _statedir
from ._dirty import ALL, DirtyRows
from ._statedir_io import fs_path, read_manifest
from .checkpoint import CheckpointError
from .optimizer import OptimizerV2

__all__ = ["save_state_dir", "load_state_dir"]

_META = "numbadam.optimizer-dir"


def _named(variables: Any) -> List[Tuple[str, Any]]:
    if isinstance(variables, Mapping):
        items = list(variables.items())
        for name, _ in items:
            if not isinstance(name, str) or not name or "/" in name:
                raise ValueError(
                    f"variable names must be strings without '/', got {name!r}"
                )
    elif isinstance(variables, (str, bytes)) or not hasattr(variables, "__iter__"):
        raise TypeError(
            "variables must be a dict of name -> array or a list of arrays, got "
            f"{type(variables).__name__}"
        )
    else:
        items = [(str(i), v) for i, v in enumerate(variables)]
    if len({id(v) for _, v in items}) != len(items):
        raise ValueError("a variable is given twice")
    return items


def _check_optimizer(optimizer: Any) -> None:
    if not isinstance(optimizer, OptimizerV2):
        raise TypeError(
            f"optimizer must be a numbadam optimizer, got {type(optimizer).__name__}"
        )


def _generation(folder: str) -> Optional[int]:
    try:
        doc = read_manifest(folder)
    except (FileNotFoundError, CheckpointError):
        return None
    gen = doc.get("generation") if isinstance(doc, dict) else None
    return gen if isinstance(gen, int) else None


def _rows(a: Any) -> Any:
    """``a`` as the writer reads it: an ndarray, or (a device array) a row
    source that copies to the host only the rows a save writes (the
    backend's ``host_rows``)."""
    return _dispatch.backend_for(a).host_rows(a)


def save_state_dir(
    path: Any,
    optimizer: OptimizerV2,
    variables: Any,
    *,
    metadata: Optional[Dict[str, Any]] = None,
    full: bool = False,
    full_every: int = 8,
) -> "_statedir.SaveInfo":
    """Save ``optimizer`` and ``variables`` into the folder ``path``.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        The checkpoint folder (created if missing; its parent must exist).
    optimizer : OptimizerV2
    variables : dict of str to array, or list of arrays
        The variables, NumPy or CUDA arrays (copied to the host).
    metadata : dict, optional
        JSON data of the caller's own, returned by :func:`load_state_dir`.
    full : bool, default False
        Write everything even if a delta is possible.
    full_every : int, default 8
        After this many deltas since the last full save, save in full.

    Returns
    -------
    numbadam._statedir.SaveInfo
        ``kind`` (``"full"`` or ``"delta"``), ``bytes_written``, ``files``...

    Raises
    ------
    TypeError, ValueError
        For a bad argument, or a ``DistributedAdam`` on several ranks saved
        from a rank other than 0 (nothing written).
    CheckpointError
        If ``path`` is not a folder or holds something else's manifest, or
        another save into it is in progress (nothing written).
    OSError
        If writing fails (the previous checkpoint stays loadable, and the next
        save still covers every row changed since it).

    Notes
    -----
    The first save is full; from then on the optimizer marks the rows its
    lazy sparse steps change (the kernel sets a ``uint8`` row mask, no extra
    pass), and whole variables for any other step. A save is a delta only
    into the folder of the previous save (or load) whose manifest is still the
    one written then; otherwise full. Changes not made by ``apply_gradients``
    (``set_weights``, writing a variable yourself) are not tracked: pass
    ``full=True`` after them.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import numbadam
    >>> table = np.zeros((1000, 8), np.float32)
    >>> opt = numbadam.Adam(sparse_mode="lazy")
    >>> def step(rows):
    ...     g = numbadam.IndexedSlices(np.ones((len(rows), 8), np.float32), rows,
    ...                                table.shape)
    ...     _ = opt.apply_gradients([(g, table)])
    >>> folder = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> step([1, 2])
    >>> numbadam.save_state_dir(folder, opt, {"table": table}).kind
    'full'
    >>> step([7])
    >>> info = numbadam.save_state_dir(folder, opt, {"table": table})
    >>> info.kind, info.bytes_written < 4000  # one row of table, m and v
    ('delta', True)
    """
    _check_optimizer(optimizer)
    named = _named(variables)
    if metadata is not None and not isinstance(metadata, dict):
        raise TypeError(f"metadata must be a dict, got {type(metadata).__name__}")
    folder = fs_path(path)
    optimizer._check_state_dir_save()  # (DistributedAdam: rank 0 only)
    with optimizer._lock:
        # the state as the checkpoints save it (numbadam.checkpoint's seam):
        # refused with pending IndexedSlices of an accumulation cycle or with
        # one rank's slices of a sharded state; accumulators that hold no
        # partial sum of the current cycle as zeros
        saved_w = optimizer._checkpoint_weights()
        at = {id(w): j for j, w in enumerate(optimizer.weights)}
        steps = optimizer._accum_steps
        slot_names = optimizer.get_slot_names()
        arrays: Dict[str, Any] = {}
        masks: Dict[str, Any] = {}
        tracker: Optional[DirtyRows] = optimizer._dirty
        real = os.path.realpath(folder)
        delta = (
            tracker is not None
            and not full
            and tracker.folder == real
            and _generation(folder) == tracker.generation
        )
        arrays["iterations"] = optimizer.iterations
        masks["iterations"] = np.ones((), bool)
        if steps is not None:  # the counter of calls: the cycle's phase
            arrays["calls"] = np.array(optimizer._counter(), np.int64)
            masks["calls"] = np.ones((), bool)
        saved_slots: Dict[str, List[str]] = {}
        for name, var in named:
            arrays[f"variable/{name}"] = _rows(var)
            got = []
            m = None
            for s in slot_names:
                try:
                    slot = optimizer.get_slot(var, s)
                except KeyError:
                    continue
                if s == "m":
                    m = slot
                got.append(s)
                j = at.get(id(slot))
                arrays[f"slot/{name}/{s}"] = _rows(slot if j is None else saved_w[j])
            saved_slots[name] = got
            if not delta:
                continue
            if m is None:
                rows = ALL if got else None
            else:
                rows = tracker.rows(m)
            for key in [f"variable/{name}"] + [f"slot/{name}/{s}" for s in got]:
                a = arrays[key]
                if rows is None:
                    masks[key] = None
                elif isinstance(rows, str) or a.ndim == 0 or a.shape[0] != len(rows):
                    masks[key] = np.ones(a.shape[:1], bool)
                else:
                    masks[key] = rows
        meta = {
            "format": _META,
            "optimizer": {
                "class_name": type(optimizer).__name__,
                "config": optimizer.get_config(),
            },
            "step": int(optimizer.iterations),
            "variables": [n for n, _ in named],
            "slots": saved_slots,
            "metadata": {} if metadata is None else metadata,
        }
        try:
            json.dumps(meta)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"optimizer config or metadata is not JSON-serialisable: {exc}"
            ) from None
        info = _statedir.save(
            folder, arrays, meta, dirty=masks if delta else None,
            full=full, full_every=full_every,
        )  # fmt: skip
        gen = _generation(folder)
        if tracker is None:
            optimizer._dirty = DirtyRows(real, gen)
        else:
            tracker.clear(real, gen)
    return info


def load_state_dir(
    path: Any, optimizer: OptimizerV2, variables: Any, *, verify: bool = False
) -> Dict[str, Any]:
    """Restore ``optimizer`` and ``variables`` from a :func:`save_state_dir` folder.

    The optimizer (of the saved class, e.g. created anew with the saved
    ``config`` and, for state on disk, a fresh or released ``slot_dir``) gets
    its slots built for ``variables`` and then every slot, the variables (in
    place) and ``iterations`` take the saved values; training continues bit
    for bit. The base files are memory-mapped and copied, never read whole
    into memory at once.

    Parameters
    ----------
    path : str, bytes or os.PathLike
    optimizer : OptimizerV2
    variables : dict of str to array, or list of arrays
        The same names (keys, or positions) as saved, same shapes and dtypes.
    verify : bool, default False
        Also checksum the base files (delta files always are).

    Returns
    -------
    dict
        ``{"metadata": ..., "config": ..., "step": ...}`` as saved.

    Raises
    ------
    CheckpointError
        If the folder, its manifest or a file is missing, truncated or
        inconsistent (the message names the file), or it was not written by
        :func:`save_state_dir`.
    ValueError
        If the optimizer's class, the variables' names, shapes or dtypes or
        the slot names differ from the saved ones. Nothing is changed then.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import numbadam
    >>> w = np.ones(4, np.float32)
    >>> opt = numbadam.Adam(0.1)
    >>> _ = opt.apply_gradients([(np.ones(4, np.float32), w)])
    >>> folder = os.path.join(tempfile.mkdtemp(), "ckpt")
    >>> _ = numbadam.save_state_dir(folder, opt, [w])
    >>> w2, twin = np.zeros(4, np.float32), numbadam.Adam(0.1)
    >>> numbadam.load_state_dir(folder, twin, [w2])["step"]
    1
    >>> bool(np.array_equal(w, w2)), int(twin.iterations)
    (True, 1)
    """
    _check_optimizer(optimizer)
    named = _named(variables)
    folder = fs_path(path)
    meta, arrays = _statedir.load(folder, "c", verify=verify)
    mpath = os.path.join(folder, _statedir.MANIFEST)
    if meta.get("format") != _META or not isinstance(meta.get("slots"), dict):
        raise CheckpointError(mpath, "was not written by numbadam.save_state_dir")
    cls = meta.get("optimizer", {}).get("class_name")
    if cls != type(optimizer).__name__:
        raise ValueError(
            f"the checkpoint holds a {cls} optimizer's state, not a "
            f"{type(optimizer).__name__}'s"
        )
    names = [n for n, _ in named]
    if names != meta.get("variables"):
        raise ValueError(
            f"variables {names} differ from the saved {meta.get('variables')}"
        )
    it = arrays.get("iterations")
    if it is None or it.shape != () or it.dtype.kind not in "iu" or int(it) < 0:
        raise CheckpointError(mpath, "has no valid iterations array")
    required = set(optimizer._required_slots())
    for name, var in named:
        a = arrays.get(f"variable/{name}")
        if a is None:
            raise CheckpointError(mpath, f"has no array variable/{name}")
        if tuple(var.shape) != a.shape or np.dtype(var.dtype) != a.dtype:
            raise ValueError(
                f"variable {name!r} has shape {tuple(var.shape)}, {var.dtype}; the "
                f"saved one {a.shape}, {a.dtype}"
            )
        saved = meta["slots"].get(name)
        if not isinstance(saved, list) or (saved and set(saved) != required):
            raise ValueError(
                f"variable {name!r}: saved slots {saved}, this optimizer's "
                f"{sorted(required)}"
            )
        for s in saved:
            if f"slot/{name}/{s}" not in arrays:
                raise CheckpointError(mpath, f"has no array slot/{name}/{s}")
    with optimizer._lock:
        stepped = [(n, v) for n, v in named if meta["slots"][n]]
        optimizer.build([v for _, v in stepped])
        for name, var in stepped:
            for s in meta["slots"][name]:
                slot, a = optimizer.get_slot(var, s), arrays[f"slot/{name}/{s}"]
                if tuple(slot.shape) != a.shape or np.dtype(slot.dtype) != a.dtype:
                    raise ValueError(
                        f"slot {s!r} of variable {name!r} has shape "
                        f"{tuple(slot.shape)}, {slot.dtype}; the saved one "
                        f"{a.shape}, {a.dtype}"
                    )
        steps = optimizer._accum_steps
        calls = arrays.get("calls") if steps is not None else None
        if calls is not None and (
            calls.shape != ()
            or calls.dtype.kind not in "iu"
            or int(calls) < 0
            or int(calls) // int(steps) != int(it)
        ):
            raise CheckpointError(
                mpath, f"has a counter of calls {calls!r} that does not fit "
                f"iterations {int(it)} and gradient_accumulation_steps {steps}"
            )  # fmt: skip
        for name, var in named:
            backend = _dispatch.backend_for(var)
            backend.assign(var, arrays[f"variable/{name}"])
            if calls is not None:
                continue  # (the slots go through set_weights below)
            for s in meta["slots"][name]:
                slot = optimizer.get_slot(var, s)
                _dispatch.backend_for(slot).assign(slot, arrays[f"slot/{name}/{s}"])
        if calls is None:
            optimizer.iterations = int(it)
        else:  # the cycle's phase and partial sums, as set_weights restores them
            live = optimizer.weights
            at = {id(w): j for j, w in enumerate(live)}
            values: List[Any] = [None] * len(live)
            values[at[id(optimizer._counter())]] = calls
            for name, var in stepped:
                for s in meta["slots"][name]:
                    values[at[id(optimizer.get_slot(var, s))]] = arrays[
                        f"slot/{name}/{s}"
                    ]
            optimizer.set_weights(
                [_dispatch.backend_for(w).to_host(w) if v is None else v
                 for w, v in zip(live, values)]
            )  # fmt: skip
        optimizer._dirty = DirtyRows(os.path.realpath(folder), _generation(folder))
    return {
        "metadata": meta.get("metadata", {}),
        "config": meta["optimizer"].get("config"),
        "step": meta.get("step"),
    }
