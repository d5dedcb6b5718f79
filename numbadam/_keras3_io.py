"""The checks, reading and writing behind :mod:`numbadam.keras3`.

``numbadam.keras3`` is the public face (its functions' docstrings say what
is read, written and refused); this module holds the pieces: the argument
checks, the read of ``optimizer/vars`` entry by entry against the layout of
:mod:`numbadam._keras3_layout`, and the write of the state into the group.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from ._h5 import child, open_h5
from ._keras3_layout import (
    GROUP,
    ITERATION,
    NON_NEGATIVE,
    Entry,
    Row,
    constant_lr,
    count_problem,
    layout,
    role_of,
    rows_of,
)
from .checkpoint import CheckpointError
from .optimizer import OptimizerV2

__all__ = [
    "check_names",
    "check_optimizer",
    "describe_var",
    "dtype_of",
    "host_array",
    "iteration_dtype",
    "model_arrays",
    "optimizer_group",
    "read_entry",
    "read_state",
    "slot_ids",
    "state_entries",
    "unknown_state",
    "var_list_of",
    "write_state",
]


# -- argument checks ------------------------------------------------------------


def check_optimizer(optimizer: Any, var_list: Any = ()) -> None:
    if not isinstance(optimizer, OptimizerV2):
        raise TypeError(
            f"optimizer must be a numbadam optimizer, got {type(optimizer).__name__}"
        )
    if getattr(optimizer, "second_moment", "element") != "element":
        for i, v in enumerate(var_list):
            if len(getattr(v, "shape", ())) >= 2:
                raise ValueError(
                    f"{type(optimizer).__name__}(second_moment="
                    f"{optimizer.second_moment!r}) keeps one second moment per row "
                    f"of variable {i} ({describe_var(v)}); Keras 3's Adam has no such "
                    "state, so it cannot be read from or written to a .weights.h5 "
                    "file (use numbadam.checkpoint)"
                )


def var_list_of(var_list: Any) -> List[Any]:
    if isinstance(var_list, Mapping) or not hasattr(var_list, "__iter__"):
        raise TypeError(
            "var_list must be a sequence of arrays (the model's trainable "
            f"variables in Keras' order), got {type(var_list).__name__}"
        )
    out = list(var_list)
    if not out:
        raise ValueError("var_list is empty")
    seen: Dict[int, int] = {}
    for i, v in enumerate(out):
        if not (hasattr(v, "shape") and hasattr(v, "dtype")):
            raise TypeError(f"var_list[{i}] is not an array: {type(v).__name__}")
        if id(v) in seen:
            raise ValueError(f"var_list[{i}] is var_list[{seen[id(v)]}] again")
        seen[id(v)] = i
    return out


def describe_var(v: Any) -> str:
    return f"shape {tuple(v.shape)}, {np.dtype(v.dtype)}"


def slot_ids(optimizer: OptimizerV2, var_list: List[Any], rows: List[Row]):
    """id(weight) -> Entry key for the weights that exist; missing slots."""
    roles: Dict[int, Tuple[Optional[int], Optional[str]]] = {}
    missing = []
    for i, var in enumerate(var_list):
        for row in rows:
            for slot in row.slots:
                try:
                    s = optimizer.get_slot(var, slot)
                except KeyError:
                    missing.append((i, slot))
                    continue
                if id(s) in roles:  # (two views of one memory share slots)
                    raise ValueError(
                        f"var_list[{i}] shares its slots with var_list"
                        f"[{roles[id(s)][0]}]: give every variable once"
                    )
                roles[id(s)] = (i, slot)
    return roles, missing


def unknown_state(optimizer: OptimizerV2, roles: Dict, rows: List[Row]) -> str:
    """A description of optimizer state outside var_list's slots, or ''."""
    mapped = {s for row in rows for s in row.slots}
    extra = [s for s in optimizer.get_slot_names() if s not in mapped]
    if extra:
        return (
            f"slots {extra} have no Keras 3 counterpart numbadam.keras3 can "
            "write or read"
        )
    weights = optimizer.weights
    for k, w in enumerate(weights):
        if w is optimizer._counter():
            continue
        if id(w) not in roles:
            return (
                f"weight {k} ({describe_var(w)}) belongs to a variable not in "
                "var_list; Keras' file holds the state of var_list only"
            )
    return ""


def optimizer_group(h5py: Any, f: Any, path: str) -> Any:
    group = f
    for i, part in enumerate(GROUP.split("/")):
        where = "/".join(GROUP.split("/")[: i + 1])
        group = child(h5py, group, part, "group", path, where)
        if group is None:
            raise CheckpointError(
                path, f"has no '{GROUP}' group: Keras writes the optimizer's state "
                "only once the optimizer is built (after a step, or "
                "optimizer.build(model.trainable_variables))"
            )  # fmt: skip
    return group


def check_names(names: List[str], path: str) -> int:
    count = len(names)
    odd = sorted(set(names) - {str(j) for j in range(count)})
    if odd:
        raise CheckpointError(
            path, f"'{GROUP}' holds entries {odd[:5]} that are not named 0..{count - 1}"
        )
    return count


def dtype_of(v: Any) -> np.dtype:
    return np.dtype(v.dtype)


def read_entry(
    h5py: Any, group: Any, j: int, entry: Entry, var_list: List[Any], path: str
) -> np.ndarray:
    where = f"{GROUP}/{j}"
    ds = child(h5py, group, str(j), "dataset", path, where)
    what = entry.describe()
    shape, dtype = tuple(ds.shape or ()), ds.dtype
    if ds.attrs.get("dtype") == "bfloat16":  # (how Keras marks bfloat16 arrays)
        raise CheckpointError(
            path, f"'{where}' ({what}) is bfloat16, which numbadam does not support"
        )
    if entry.var is None:
        kind = "iu" if entry.keras == "iteration" else "f"
        if shape != () or dtype.kind not in kind:
            want = "an integer" if kind == "iu" else "a float"
            raise CheckpointError(
                path, f"'{where}' should be {entry.keras}, {want} scalar, but has "
                f"shape {shape} and dtype {dtype}"
            )  # fmt: skip
        value = np.asarray(ds[()])
        if entry.keras == "iteration":
            if not 0 <= int(value) < 2**63:
                raise CheckpointError(
                    path, f"'{where}' (iteration) is {int(value)}, not a step count"
                )
        elif not math.isfinite(float(value)):
            raise CheckpointError(
                path, f"'{where}' (learning_rate) is {float(value)}, not finite"
            )
        return value
    var = var_list[entry.var]
    vshape, vdtype = tuple(var.shape), dtype_of(var)
    if shape != vshape or dtype != vdtype:
        raise CheckpointError(
            path, f"'{where}' should be {what} ({vshape}, {vdtype}) but has shape "
            f"{shape} and dtype {dtype}: the file does not match var_list (the "
            "model's trainable variables in Keras' order) and this optimizer "
            "(check amsgrad, use_ema and gradient_accumulation_steps)"
        )  # fmt: skip
    value = np.asarray(ds[()])
    if entry.slot in NON_NEGATIVE and bool((value < 0).any()):
        raise CheckpointError(
            path, f"'{where}' should be {what}, a second moment, but has negative "
            "values: the file's layout is not this optimizer's (use_ema or "
            "gradient accumulation?)"
        )  # fmt: skip
    return value


def read_state(
    h5py: Any, path: str, optimizer: OptimizerV2, var_list: List[Any]
) -> Tuple[List[Entry], List[np.ndarray]]:
    with open_h5(h5py, path) as f:
        group = optimizer_group(h5py, f, path)
        count = check_names(list(group.keys()), path)
        n = len(var_list)
        for with_lr in (True, False):
            entries = layout(optimizer, n, with_lr)
            if len(entries) == count:
                break
        else:
            raise CheckpointError(path, count_problem(count, n, optimizer))
        values = [
            read_entry(h5py, group, j, e, var_list, path) for j, e in enumerate(entries)
        ]
    return entries, values


def state_entries(
    optimizer: OptimizerV2, var_list: List[Any]
) -> Tuple[List[Entry], List[np.ndarray]]:
    """The optimizer's state in Keras 3's order, as host arrays (no change)."""
    rows = rows_of(optimizer)
    if not optimizer.weights:
        raise ValueError(
            "the optimizer has no state yet: take a step or call "
            "optimizer.build(var_list) first"
        )
    roles, missing = slot_ids(optimizer, var_list, rows)
    if missing:
        i, slot = missing[0]
        raise ValueError(
            f"var_list[{i}] ({describe_var(var_list[i])}) has no slot {slot!r}: "
            "the optimizer has not stepped it (optimizer.build(var_list) "
            "creates its slots)"
        )
    problem = unknown_state(optimizer, roles, rows)
    if problem:
        raise ValueError(f"cannot save this optimizer's state: {problem}")
    by_role = {}
    for w, h in zip(optimizer.weights, optimizer.get_weights()):
        by_role[ITERATION if w is optimizer._counter() else roles[id(w)]] = h
    by_role[ITERATION] = np.asarray(by_role[ITERATION], np.int64)
    with_lr = constant_lr(optimizer)
    if with_lr:  # (Keras 3's learning_rate variable is float32)
        by_role[("learning_rate", None)] = np.asarray(
            np.float32(optimizer.learning_rate)
        )
    entries = layout(optimizer, len(var_list), with_lr)
    return entries, [by_role[role_of(e)] for e in entries]


def host_array(x: Any, what: str) -> np.ndarray:
    if hasattr(x, "copy_to_host"):  # a Numba device array
        return x.copy_to_host()
    try:
        arr = np.asarray(x)
    except Exception as exc:
        raise TypeError(
            f"{what} cannot be converted to a NumPy array ({exc})"
        ) from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{what} has dtype {arr.dtype}, not a number")
    return arr


def model_arrays(variables: Any) -> Dict[str, np.ndarray]:
    if variables is None:
        return {}
    if not isinstance(variables, Mapping):
        raise TypeError(
            "variables must map file paths ('layers/dense/vars/0') to arrays, got "
            f"{type(variables).__name__}"
        )
    out = {}
    for key, arr in variables.items():
        if not isinstance(key, str) or not key.strip("/"):
            raise TypeError(f"variables key {key!r} is not a path in the file")
        k = key.strip("/")
        if k == "optimizer" or k.startswith("optimizer/") or "//" in k:
            raise ValueError(
                f"variables key {key!r}: the optimizer group is written from the "
                "optimizer; give the model's paths (load_keras_variables' keys)"
            )
        out[k] = host_array(arr, f"variables[{key!r}]")
    return out


def iteration_dtype(old: Any, value: np.ndarray, path: str) -> np.dtype:
    if old is None or old.dtype.kind not in "iu" or old.shape not in ((), None):
        return np.dtype(np.int64)
    if int(value) > np.iinfo(old.dtype).max:
        raise CheckpointError(
            path, f"iterations {int(value)} does not fit the file's {old.dtype} "
            f"'{GROUP}/0' (Keras' JAX and torch backends count steps in int32)"
        )  # fmt: skip
    return old.dtype


def write_state(
    h5py: Any,
    f: Any,
    path: str,
    entries: List[Entry],
    values: List[np.ndarray],
    name: str,
    arrays: Dict[str, np.ndarray],
) -> None:
    # every check first: an error leaves the copy unmodified (and it is removed)
    writes = []
    for key, arr in arrays.items():
        ds = None
        obj = f.get(key, getlink=True)
        if obj is not None:
            ds = child(h5py, f, key, "dataset", path, key)
            if tuple(ds.shape or ()) != arr.shape or ds.dtype != arr.dtype:
                raise CheckpointError(
                    path, f"'{key}' has shape {tuple(ds.shape or ())} and dtype "
                    f"{ds.dtype}; the array given is {arr.shape}, {arr.dtype}"
                )  # fmt: skip
        writes.append((key, ds, arr))
    opt = f.get("optimizer")
    if opt is not None and not isinstance(opt, h5py.Group):
        raise CheckpointError(path, "'optimizer' is not an HDF5 group")
    group = None if opt is None else opt.get("vars")
    if group is not None and not isinstance(group, h5py.Group):
        raise CheckpointError(path, f"'{GROUP}' is not an HDF5 group")
    old = {} if group is None else {k: group[k] for k in group.keys()}
    old_it = old.get("0")
    if old_it is not None and not isinstance(old_it, h5py.Dataset):
        old_it = None
    values = list(values)
    values[0] = values[0].astype(iteration_dtype(old_it, values[0], path))
    # the same layout is written in place (the file does not grow); another
    # is written afresh
    same = len(old) == len(values) and all(
        isinstance(old.get(str(j)), h5py.Dataset)
        and tuple(old[str(j)].shape or ()) == v.shape
        and old[str(j)].dtype == v.dtype
        for j, v in enumerate(values)
    )
    # --- writing ---
    for key, ds, arr in writes:
        if ds is None:
            f.create_dataset(key, data=arr)
        else:
            ds[...] = arr
    if same:
        for j, v in enumerate(values):
            old[str(j)][...] = v
        return
    attrs = {} if group is None else dict(group.attrs)
    if group is not None:
        del f[GROUP]
    group = f.require_group(GROUP)
    for k, v in attrs.items():
        group.attrs[k] = v
    if "name" not in group.attrs:
        group.attrs["name"] = name
    for j, v in enumerate(values):
        group.create_dataset(str(j), data=v)
