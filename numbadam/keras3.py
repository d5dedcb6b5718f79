"""Keras 3 interchange: the optimizer state of a ``.weights.h5`` file.

Keras 3's ``model.save_weights("model.weights.h5")`` writes an HDF5 file with
one group per layer (``layers/dense/vars/0``, ...) and, once the optimizer is
built, the group ``optimizer/vars``: one dataset per optimizer variable, named
``"0"``, ``"1"``, ... in the order Keras created them. For ``keras.optimizers.Adam``
over the trainable variables ``x_0 ... x_{n-1}`` that order is

- ``iteration``: numbadam's :attr:`~numbadam.OptimizerV2.iterations` (int32
  under Keras' JAX and torch backends, int64 under TensorFlow);
- ``learning_rate`` (float32), only for a constant learning rate (none for a
  schedule or a callable);
- with ``use_ema=True``, the ``average`` of every variable: slot
  ``average``; with ``gradient_accumulation_steps``, its
  ``gradient_accumulator``: slot ``accumulator`` (``iteration`` is then the
  counter of calls, ``weights[0]``, and ``iterations`` that divided by the
  steps); with both, per variable ``average_0, gradient_accumulator_0,
  average_1, ...``;
- ``momentum`` and ``velocity`` of ``x_0``, of ``x_1``, ...: slots ``m`` and
  ``v``;
- with ``amsgrad=True``, the ``velocity_hat`` of every variable: slot
  ``vhat``.

Note the interleaving: Keras 3 writes ``m_0, v_0, m_1, v_1, ...`` while
numbadam's (and tf-keras') :meth:`~numbadam.OptimizerV2.get_weights` is
``[iterations, m_0, m_1, ..., v_0, v_1, ...]``. The datasets carry no variable
names, so ``var_list`` must be the model's trainable variables in Keras' order
(``model.trainable_variables``). The mapping is one table, ``ROWS`` in
``numbadam/_keras3_layout.py``: the EMA averages and the gradient
accumulators are one row each, of one group (interleaved per variable).

h5py is the optional extra ``numbadam[keras]`` (``pip install "numbadam[keras]"``
or ``pip install h5py``), imported only when a file is read or written.
Keras itself is never imported.

Examples
--------
>>> import numpy as np
>>> import numbadam
>>> from numbadam import keras3
>>> kernel, bias = np.ones((3, 2), np.float32), np.zeros(2, np.float32)
>>> opt = numbadam.Adam(learning_rate=0.01)
>>> keras3.keras_layout(opt, [kernel, bias])
['iteration', 'learning_rate', 'momentum (m) of variable 0', 'velocity (v) of \
variable 0', 'momentum (m) of variable 1', 'velocity (v) of variable 1']
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ._h5 import (
    H5PY_MISSING_MESSAGE,
    child,
    datasets,
    import_h5py,
    open_h5,
    replace,
)
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
from .checkpoint._files import _fs_path
from .optimizer import OptimizerV2

__all__ = [
    "H5PY_MISSING_MESSAGE",
    "keras_layout",
    "load_keras_optimizer",
    "load_keras_variables",
    "save_keras_optimizer",
]


def keras_layout(optimizer: OptimizerV2, var_list: Sequence[Any]) -> List[str]:
    """What each dataset of ``optimizer/vars`` holds, for this optimizer.

    The list :func:`save_keras_optimizer` writes (and
    :func:`load_keras_optimizer` expects with this optimizer's learning rate):
    entry ``j`` describes the dataset named ``str(j)``.

    Parameters
    ----------
    optimizer : OptimizerV2
        A numbadam Adam, built or not (its ``amsgrad`` and learning rate
        decide the layout).
    var_list : sequence of arrays
        The model's trainable variables, in Keras' order.

    Returns
    -------
    list of str
        ``"iteration"``, ``"learning_rate"`` (only for a constant learning
        rate), then ``"<keras name> (<slot>) of variable <i>"``.

    Examples
    --------
    >>> import numpy as np
    >>> import numbadam
    >>> from numbadam import keras3
    >>> sched = numbadam.schedules.ExponentialDecay(0.01, 100, 0.9)
    >>> keras3.keras_layout(numbadam.Adam(sched, amsgrad=True), [np.zeros(2)])
    ['iteration', 'momentum (m) of variable 0', 'velocity (v) of variable 0', \
'velocity_hat (vhat) of variable 0']
    """
    _check_optimizer(optimizer)
    n = len(list(var_list))
    return [e.describe() for e in layout(optimizer, n, constant_lr(optimizer))]


# ---------------------------------------------------------------------------
# argument checks
# ---------------------------------------------------------------------------


def _check_optimizer(optimizer: Any, var_list: Any = ()) -> None:
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
                    f"of variable {i} ({_describe(v)}); Keras 3's Adam has no such "
                    "state, so it cannot be read from or written to a .weights.h5 "
                    "file (use numbadam.checkpoint)"
                )


def _var_list(var_list: Any) -> List[Any]:
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


def _describe(v: Any) -> str:
    return f"shape {tuple(v.shape)}, {np.dtype(v.dtype)}"


def _slot_ids(optimizer: OptimizerV2, var_list: List[Any], rows: List[Row]):
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


def _unknown_state(optimizer: OptimizerV2, roles: Dict, rows: List[Row]) -> str:
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
                f"weight {k} ({_describe(w)}) belongs to a variable not in "
                "var_list; Keras' file holds the state of var_list only"
            )
    return ""


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


def _optimizer_group(h5py: Any, f: Any, path: str) -> Any:
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


def _check_names(names: List[str], path: str) -> int:
    count = len(names)
    odd = sorted(set(names) - {str(j) for j in range(count)})
    if odd:
        raise CheckpointError(
            path, f"'{GROUP}' holds entries {odd[:5]} that are not named 0..{count - 1}"
        )
    return count


def _dtype_of(v: Any) -> np.dtype:
    return np.dtype(v.dtype)


def _read_entry(
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
    vshape, vdtype = tuple(var.shape), _dtype_of(var)
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


def _read_state(
    h5py: Any, path: str, optimizer: OptimizerV2, var_list: List[Any]
) -> Tuple[List[Entry], List[np.ndarray]]:
    with open_h5(h5py, path) as f:
        group = _optimizer_group(h5py, f, path)
        count = _check_names(list(group.keys()), path)
        n = len(var_list)
        for with_lr in (True, False):
            entries = layout(optimizer, n, with_lr)
            if len(entries) == count:
                break
        else:
            raise CheckpointError(path, count_problem(count, n, optimizer))
        values = [
            _read_entry(h5py, group, j, e, var_list, path)
            for j, e in enumerate(entries)
        ]
    return entries, values


def load_keras_optimizer(
    path: Any,
    optimizer: OptimizerV2,
    var_list: Sequence[Any],
    *,
    restore_learning_rate: bool = True,
) -> int:
    """Set an optimizer's state from a Keras 3 ``.weights.h5`` file.

    The file's ``optimizer/vars`` group is read and checked against
    ``var_list`` and the optimizer (count, shapes, dtypes) before anything
    changes; then the optimizer is built for ``var_list``
    (:meth:`~numbadam.OptimizerV2.build`) and its weights set, so the next
    :meth:`~numbadam.OptimizerV2.apply_gradients` continues Keras' training.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by Keras 3's ``model.save_weights`` (or by
        :func:`save_keras_optimizer`).
    optimizer : OptimizerV2
        A numbadam Adam configured as the Keras one was (``amsgrad``,
        ``beta_1``, ``beta_2``, ``epsilon``, a schedule: the file does not
        hold the configuration). Fresh, or already holding state for exactly
        ``var_list``, which is overwritten.
    var_list : sequence of arrays
        The model's trainable variables in Keras' order
        (``model.trainable_variables``), e.g. from
        :func:`load_keras_variables`.
    restore_learning_rate : bool, default True
        Set a constant learning rate to the file's ``learning_rate`` (as
        Keras' ``load_weights`` does). With ``False`` the optimizer's own rate
        is kept. A file without one (a Keras schedule) never changes it.

    Returns
    -------
    int
        The step count read, ``int(optimizer.iterations)``.

    Raises
    ------
    ImportError
        Without h5py (:data:`H5PY_MISSING_MESSAGE`).
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If the file is not a regular HDF5 file, has no ``optimizer/vars``
        group, holds a number of entries or a shape or dtype that does not fit
        ``var_list`` and the optimizer, state numbadam cannot hold (Keras'
        gradient accumulation), or a constant learning rate for an
        optimizer with a schedule (pass ``restore_learning_rate=False``). The
        message names the file and the dataset.
    ValueError
        If the optimizer already holds state for other variables.
    TypeError
        For a non-numbadam optimizer or a ``var_list`` item that is not an
        array.

    Notes
    -----
    Keras 3 computes ``1 - beta`` in float64 and rounds it to float32 once,
    while tf-keras and numbadam round ``beta`` first: continuing with numbadam
    is Keras 3 to float32 tolerance, not bit for bit (``docs/keras3.md``).
    The file does not say which optimizer wrote it: an ``AdamW`` file loads
    (the same variables), and numbadam continues without weight decay.

    Examples
    --------
    >>> import importlib.util, os, tempfile
    >>> import numpy as np
    >>> import numbadam
    >>> from numbadam import keras3
    >>> w = np.ones(3, np.float32)
    >>> opt = numbadam.Adam(0.1)
    >>> _ = opt.apply_gradients([(np.ones(3, np.float32), w)])
    >>> path = os.path.join(tempfile.mkdtemp(), "model.weights.h5")
    >>> if importlib.util.find_spec("h5py"):  # the optional numbadam[keras]
    ...     keras3.save_keras_optimizer(path, opt, [w])
    ...     twin = numbadam.Adam(0.5)
    ...     assert keras3.load_keras_optimizer(path, twin, [w]) == 1
    ...     assert float(twin.learning_rate) == np.float32(0.1)
    """
    h5py = import_h5py()
    _check_optimizer(optimizer)
    path = _fs_path(path)
    var_list = _var_list(var_list)
    _check_optimizer(optimizer, var_list)
    rows = rows_of(optimizer)
    entries, values = _read_state(h5py, path, optimizer, var_list)
    has_lr = entries[1].keras == "learning_rate"
    if has_lr and restore_learning_rate and not constant_lr(optimizer):
        raise CheckpointError(
            path, f"'{GROUP}/1' is a constant learning rate, the optimizer's is a "
            "schedule or a callable: pass restore_learning_rate=False to keep it"
        )  # fmt: skip
    roles, _ = _slot_ids(optimizer, var_list, rows)
    problem = _unknown_state(optimizer, roles, rows) if optimizer.weights else ""
    if problem:
        raise ValueError(f"cannot load {path!r} into this optimizer: {problem}")
    # --- from here on nothing fails on the file or the arguments ---
    optimizer.build(var_list)
    roles, missing = _slot_ids(optimizer, var_list, rows)
    if missing:  # (the table and the optimizer disagree: a bug, not the file)
        raise RuntimeError(f"build() did not create the slots {missing}")
    by_role = {role_of(e): v for e, v in zip(entries, values)}
    weights = []
    for w in optimizer.weights:
        role = ITERATION if w is optimizer._counter() else roles.get(id(w))
        if role not in by_role:
            raise RuntimeError(f"optimizer weight ({_describe(w)}) not mapped")
        weights.append(by_role[role])
    optimizer.set_weights(weights)
    if has_lr and restore_learning_rate:
        optimizer.learning_rate = float(values[1])
    return int(optimizer.iterations)


def load_keras_variables(path: Any) -> Dict[str, np.ndarray]:
    """The model's arrays of a Keras 3 ``.weights.h5`` file, by their paths.

    Every dataset outside the ``optimizer`` group, keyed by its path in the
    file (``"layers/dense/vars/0"`` is the kernel of the model's first Dense
    layer, ``"layers/dense/vars/1"`` its bias; a model's own variables are
    ``"vars/0"``, ...), in natural order (``dense_2`` before ``dense_10``,
    ``vars/2`` before ``vars/10``).

    Parameters
    ----------
    path : str or os.PathLike
        The ``.weights.h5`` file.

    Returns
    -------
    dict of str to numpy.ndarray
        New, writable arrays.

    Raises
    ------
    ImportError
        Without h5py.
    FileNotFoundError
        If ``path`` does not exist.
    CheckpointError
        If it is not a regular HDF5 file, or holds links or external data.

    Notes
    -----
    The file's order is not necessarily ``model.trainable_variables`` order
    (layers are stored by attribute name, and non-trainable variables such as
    a BatchNormalization's moving statistics are there too): pick the arrays
    by path for :func:`load_keras_optimizer`'s ``var_list``.

    Examples
    --------
    >>> import importlib.util, os, tempfile
    >>> import numpy as np
    >>> import numbadam
    >>> from numbadam import keras3
    >>> kernel = np.ones((2, 3), np.float32)
    >>> opt = numbadam.Adam()
    >>> opt.build([kernel])
    >>> path = os.path.join(tempfile.mkdtemp(), "model.weights.h5")
    >>> if importlib.util.find_spec("h5py"):
    ...     keras3.save_keras_optimizer(
    ...         path, opt, [kernel], variables={"layers/dense/vars/0": kernel}
    ...     )
    ...     arrays = keras3.load_keras_variables(path)
    ...     assert list(arrays) == ["layers/dense/vars/0"]
    ...     assert np.array_equal(arrays["layers/dense/vars/0"], kernel)
    """
    h5py = import_h5py()
    path = _fs_path(path)
    with open_h5(h5py, path) as f:
        return datasets(h5py, f, path, skip="optimizer")


# ---------------------------------------------------------------------------
# saving
# ---------------------------------------------------------------------------


def _state(
    optimizer: OptimizerV2, var_list: List[Any]
) -> Tuple[List[Entry], List[np.ndarray]]:
    """The optimizer's state in Keras 3's order, as host arrays (no change)."""
    rows = rows_of(optimizer)
    if not optimizer.weights:
        raise ValueError(
            "the optimizer has no state yet: take a step or call "
            "optimizer.build(var_list) first"
        )
    roles, missing = _slot_ids(optimizer, var_list, rows)
    if missing:
        i, slot = missing[0]
        raise ValueError(
            f"var_list[{i}] ({_describe(var_list[i])}) has no slot {slot!r}: "
            "the optimizer has not stepped it (optimizer.build(var_list) "
            "creates its slots)"
        )
    problem = _unknown_state(optimizer, roles, rows)
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


def _host(x: Any, what: str) -> np.ndarray:
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


def _model_arrays(variables: Any) -> Dict[str, np.ndarray]:
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
        out[k] = _host(arr, f"variables[{key!r}]")
    return out


def _iteration_dtype(old: Any, value: np.ndarray, path: str) -> np.dtype:
    if old is None or old.dtype.kind not in "iu" or old.shape not in ((), None):
        return np.dtype(np.int64)
    if int(value) > np.iinfo(old.dtype).max:
        raise CheckpointError(
            path, f"iterations {int(value)} does not fit the file's {old.dtype} "
            f"'{GROUP}/0' (Keras' JAX and torch backends count steps in int32)"
        )  # fmt: skip
    return old.dtype


def _write_state(
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
    values[0] = values[0].astype(_iteration_dtype(old_it, values[0], path))
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


def save_keras_optimizer(
    path: Any,
    optimizer: OptimizerV2,
    var_list: Sequence[Any],
    *,
    variables: Optional[Mapping[str, Any]] = None,
) -> None:
    """Write an optimizer's state into a Keras 3 ``.weights.h5`` file.

    The file's ``optimizer/vars`` group is (re)written in Keras 3's order for
    ``var_list``; everything else in an existing file (the model's layers) is
    kept as it is, except the datasets named in ``variables``. A new file
    holds only what is written. The file is replaced atomically: a copy in
    the same folder is modified, ``fsync``-ed and renamed over it (keeping its
    permission bits), so an error or a crash leaves the old file.

    Parameters
    ----------
    path : str or os.PathLike
        A new file, or an existing ``.weights.h5`` (e.g. Keras'
        ``model.save_weights`` output) to update.
    optimizer : OptimizerV2
        A numbadam Adam holding state for exactly ``var_list`` (after a step,
        or :meth:`~numbadam.OptimizerV2.build`). It is not changed.
    var_list : sequence of arrays
        The variables, in the order of the Keras model's
        ``trainable_variables``.
    variables : mapping of str to array, optional
        Model arrays to write too, by path in the file (the keys of
        :func:`load_keras_variables`, e.g. ``"layers/dense/vars/0"``), so
        that Keras continues from numbadam's variables. An existing dataset
        must have the array's shape and dtype; a missing one is created.

    Raises
    ------
    ImportError
        Without h5py (:data:`H5PY_MISSING_MESSAGE`).
    ValueError
        If the optimizer has no state for a variable of ``var_list``, or holds
        state for other variables or without a Keras 3 counterpart.
    CheckpointError
        If the existing file is not HDF5 (it is left alone), or a dataset of
        ``variables`` does not fit; or ``iterations`` does not fit the file's
        int32 step counter.
    IsADirectoryError
        If ``path`` is a folder.
    TypeError
        For a non-numbadam optimizer, a ``var_list`` item that is not an
        array or a ``variables`` value that is not numeric.

    Notes
    -----
    ``iteration`` keeps the integer dtype of an existing file (int32 as
    Keras' JAX backend writes it, int64 from TensorFlow); a new file gets
    int64. ``learning_rate`` (float32) is written only for a constant learning
    rate: a Keras optimizer with a schedule has no such variable, so build the
    Keras optimizer as the numbadam one (constant or schedule) before its
    ``model.load_weights``, and build it (``model.optimizer.build(
    model.trainable_variables)``) first, or Keras skips the optimizer's state.

    Examples
    --------
    >>> import importlib.util, os, tempfile
    >>> import numpy as np
    >>> import numbadam
    >>> from numbadam import keras3
    >>> kernel, bias = np.ones((3, 2), np.float32), np.zeros(2, np.float32)
    >>> opt = numbadam.Adam(0.01)
    >>> _ = opt.apply_gradients(
    ...     [(np.ones((3, 2), np.float32), kernel), (np.ones(2, np.float32), bias)]
    ... )
    >>> path = os.path.join(tempfile.mkdtemp(), "model.weights.h5")
    >>> if importlib.util.find_spec("h5py"):
    ...     keras3.save_keras_optimizer(path, opt, [kernel, bias])
    ...     import h5py
    ...     with h5py.File(path) as f:
    ...         shapes = [f["optimizer/vars"][str(j)].shape for j in range(6)]
    ...     assert shapes == [(), (), (3, 2), (3, 2), (2,), (2,)]
    """
    h5py = import_h5py()
    _check_optimizer(optimizer)
    path = _fs_path(path)
    var_list = _var_list(var_list)
    _check_optimizer(optimizer, var_list)
    entries, values = _state(optimizer, var_list)
    arrays = _model_arrays(variables)
    replace(
        h5py,
        path,
        lambda f: _write_state(h5py, f, path, entries, values, optimizer.name, arrays),
    )
