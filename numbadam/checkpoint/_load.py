"""Loading: :func:`load_checkpoint`, the optimizer class and the targets.

Private: the public names are re-exported by :mod:`numbadam.checkpoint`.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Dict, List, Optional

import numpy as np

from ..optimizer import OptimizerV2
from ._base import Checkpoint, CheckpointError, PathLike, Variables
from ._files import _fs_path
from ._read import _read_checkpoint


def _is_optimizer_class(cls: Any) -> bool:
    return isinstance(cls, type) and issubclass(cls, OptimizerV2)


def _numbadam_class(name: str, module: Any) -> Optional[type]:
    """numbadam's own optimizer class ``name`` (e.g. numbadam.distributed's)."""
    if isinstance(module, str):
        parts = module.split(".")
        if (
            parts[0] == "numbadam"
            and all(p.isidentifier() for p in parts)
            and "__main__" not in parts
        ):
            try:
                cls = getattr(importlib.import_module(module), name, None)
            except ImportError:
                cls = None
            if _is_optimizer_class(cls):
                return cls
    # Files that do not name the module: the numbadam classes imported so far.
    stack = [OptimizerV2]
    while stack:
        cls = stack.pop()
        if cls.__name__ == name and cls.__module__.split(".")[0] == "numbadam":
            return cls
        stack.extend(cls.__subclasses__())
    return None


def _optimizer_class(path: str, info: Dict[str, Any], custom_objects: Any) -> type:
    import numbadam

    name, module = info["class_name"], info.get("module")
    custom = custom_objects or {}
    if name in custom:
        cls = custom[name]
    else:
        cls = getattr(numbadam, name, None)
        if not _is_optimizer_class(cls):
            cls = _numbadam_class(name, module)
    if not _is_optimizer_class(cls):
        where = f", saved from module {module!r}" if module else ""
        raise CheckpointError(
            path,
            f"unknown optimizer class {name!r}{where}; if it is numbadam's, import "
            "the module that defines it first (e.g. numbadam.distributed); if it "
            f"is your own, pass custom_objects={{{name!r}: cls}}",
        )
    return cls


def _targets(path: str, header: Dict[str, Any], saved: List[np.ndarray], variables):
    """The arrays to restore into, checked against the file; nothing is written."""
    infos = header["variables"]
    if variables is None:
        return saved
    if isinstance(variables, Mapping):
        names = [v["name"] for v in infos]
        missing = [n for n in names if n not in variables]
        extra = [n for n in variables if n not in names]
        if missing or extra:
            parts = []
            if missing:
                parts.append(f"variables {missing} are in the file but not given")
            if extra:
                parts.append(f"variables {extra} are given but not in the file")
            raise CheckpointError(path, "; ".join(parts))
        targets = [variables[n] for n in names]
    else:
        targets = list(variables)
        if len(targets) != len(infos):
            raise CheckpointError(
                path,
                f"the file holds {len(infos)} variables, {len(targets)} were given",
            )
    for info, target, value in zip(infos, targets, saved):
        what = f"variable {info['name']!r}"
        if not isinstance(target, np.ndarray):
            raise TypeError(f"{what} to restore into is a {type(target).__name__}")
        if target.shape != value.shape:
            raise CheckpointError(
                path,
                f"{what} has shape {value.shape} in the file, {target.shape} given",
            )
        if target.dtype != value.dtype:
            raise CheckpointError(
                path,
                f"{what} has dtype {value.dtype} in the file, {target.dtype} given",
            )
        if not target.flags.writeable:
            raise CheckpointError(path, f"{what} given is read-only")
    return targets


def load_checkpoint(
    path: PathLike,
    variables: Optional[Variables] = None,
    custom_objects: Optional[Dict[str, Any]] = None,
) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Parameters
    ----------
    path : str, bytes or os.PathLike
        The ``.npz`` file.
    variables : dict of str to numpy.ndarray, or list, optional
        Arrays to restore into, in place: a dict with exactly the saved names, or
        a list in saved order. Shapes and dtypes must match the file. Without it,
        new arrays are returned.
    custom_objects : dict, optional
        Your own optimizer or learning-rate-schedule classes, by class name.

    Returns
    -------
    Checkpoint
        ``optimizer`` (a new instance from the saved config, built for the
        variables, with the saved weights), ``variables`` (name -> array),
        ``step`` and ``metadata``.

    Raises
    ------
    CheckpointError
        If the file is not a regular file, not an ``.npz`` archive, is
        truncated or corrupt, is not a numbadam checkpoint, holds pickled
        objects or compressed or unknown members, is internally inconsistent
        (a malformed header, an impossible step count...), or does not match
        ``variables``. Nothing given is modified then.
    FileNotFoundError
        If ``path`` does not exist.

    Notes
    -----
    Nothing is unpickled and nothing is decompressed: the zip directory and
    the JSON header are checked first (known members only, each stored and
    lying inside the file, so reading costs at most the file's size), then
    every array's ``.npy`` header, then its data, all before any variable is
    written. The optimizer class is looked up in ``custom_objects``, then in
    numbadam (including :mod:`numbadam.distributed`, whose optimizers load on
    any number of ranks). Training continues bit-identically: ``N`` steps equal
    ``k`` steps, a save, a load (in any process) and ``N - k`` steps.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import numbadam
    >>> w = np.array([1.0, 2.0], np.float32)
    >>> opt = numbadam.Adam(learning_rate=0.1, amsgrad=True)
    >>> _ = opt.apply_gradients([(np.array([0.5, -0.5], np.float32), w)])
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.npz")
    >>> _ = numbadam.save_checkpoint(path, opt, {"w": w})

    Restore into an existing array (in place) and continue training:

    >>> w2 = np.zeros(2, np.float32)
    >>> ckpt = numbadam.load_checkpoint(path, {"w": w2})
    >>> print(w2.round(4), ckpt.step, ckpt.optimizer.amsgrad)
    [0.9 2.1] 1 True
    >>> _ = ckpt.optimizer.apply_gradients([(np.ones(2, np.float32), w2)])
    >>> int(ckpt.optimizer.iterations)
    2
    """
    path = _fs_path(path)
    header, arrays = _read_checkpoint(path)
    saved = [arrays[f"variable_{i}"] for i in range(len(header["variables"]))]
    targets = _targets(path, header, saved, variables)

    opt_info = header["optimizer"]
    cls = _optimizer_class(path, opt_info, custom_objects)
    try:
        config = dict(opt_info["config"])
        for k in opt_info.get("float64", []):  # NumPy float64 hyperparameters
            config[k] = np.float64(config[k])
        optimizer = cls.from_config(config, custom_objects=custom_objects)
    except Exception as exc:
        raise CheckpointError(
            path, f"cannot rebuild the optimizer from its config ({exc})"
        ) from None

    # Build the slots of the variables that had state, then map each new weight
    # to the saved one with the same role (creation order may differ).
    weights = header["weights"]
    saved_by_role: Dict[Any, np.ndarray] = {}
    trained: List[int] = []
    for j, w in enumerate(weights):
        role = "iterations" if w["role"] == "iterations" else (w["variable"], w["slot"])
        if role in saved_by_role:
            raise CheckpointError(path, f"optimizer weight {j} is duplicated")
        saved_by_role[role] = arrays[f"weight_{j}"]
        if role != "iterations" and role[0] not in trained:
            trained.append(role[0])
    if "iterations" not in saved_by_role:
        raise CheckpointError(path, "the optimizer's iterations are missing")
    step = int(saved_by_role["iterations"])  # a 0-d integer array (header checked)
    if not 0 <= step < 2**63:
        raise CheckpointError(
            path, f"iterations is {step}, not a step count in [0, 2**63)"
        )
    if step != header["step"]:
        raise CheckpointError(path, "the step count disagrees with iterations")
    try:
        optimizer.build([targets[i] for i in trained])
    except (TypeError, ValueError, KeyError, IndexError) as exc:
        raise CheckpointError(path, f"cannot build the optimizer: {exc}") from None
    owner = {}
    for i in trained:
        for slot_name in optimizer.get_slot_names():
            try:
                owner[id(optimizer.get_slot(targets[i], slot_name))] = (i, slot_name)
            except (KeyError, ValueError):
                pass
    new_weights = []
    for w in optimizer.weights:
        role = "iterations" if w is optimizer._counter() else owner.get(id(w))
        if role not in saved_by_role:
            raise CheckpointError(
                path, f"the optimizer needs a weight the file lacks ({role})"
            )
        new_weights.append(saved_by_role.pop(role))
    if saved_by_role:
        raise CheckpointError(
            path,
            f"the file has optimizer weights this {cls.__name__} does not use: "
            f"{sorted(map(str, saved_by_role))}",
        )
    try:
        optimizer.set_weights(new_weights)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            path, f"cannot set the optimizer's weights: {exc}"
        ) from None

    if variables is not None:
        for target, value in zip(targets, saved):
            target[...] = value
    names = [v["name"] for v in header["variables"]]
    return Checkpoint(
        path=path,
        optimizer=optimizer,
        variables=dict(zip(names, targets)),
        step=int(optimizer.iterations),
        metadata=header["metadata"],
    )
