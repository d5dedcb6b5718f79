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

from collections.abc import Mapping
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from ._h5 import (
    H5PY_MISSING_MESSAGE,
    datasets,
    import_h5py,
    open_h5,
    replace,
)
from ._keras3_io import (
    check_optimizer,
    describe_var,
    model_arrays,
    read_state,
    slot_ids,
    state_entries,
    unknown_state,
    var_list_of,
    write_state,
)
from ._keras3_layout import (
    GROUP,
    ITERATION,
    constant_lr,
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
    check_optimizer(optimizer)
    n = len(list(var_list))
    return [e.describe() for e in layout(optimizer, n, constant_lr(optimizer))]


# ---------------------------------------------------------------------------
# reading
# ---------------------------------------------------------------------------


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
    check_optimizer(optimizer)
    path = _fs_path(path)
    var_list = var_list_of(var_list)
    check_optimizer(optimizer, var_list)
    rows = rows_of(optimizer)
    entries, values = read_state(h5py, path, optimizer, var_list)
    has_lr = entries[1].keras == "learning_rate"
    if has_lr and restore_learning_rate and not constant_lr(optimizer):
        raise CheckpointError(
            path, f"'{GROUP}/1' is a constant learning rate, the optimizer's is a "
            "schedule or a callable: pass restore_learning_rate=False to keep it"
        )  # fmt: skip
    roles, _ = slot_ids(optimizer, var_list, rows)
    problem = unknown_state(optimizer, roles, rows) if optimizer.weights else ""
    if problem:
        raise ValueError(f"cannot load {path!r} into this optimizer: {problem}")
    # --- from here on nothing fails on the file or the arguments ---
    optimizer.build(var_list)
    roles, missing = slot_ids(optimizer, var_list, rows)
    if missing:  # (the table and the optimizer disagree: a bug, not the file)
        raise RuntimeError(f"build() did not create the slots {missing}")
    by_role = {role_of(e): v for e, v in zip(entries, values)}
    weights = []
    for w in optimizer.weights:
        role = ITERATION if w is optimizer._counter() else roles.get(id(w))
        if role not in by_role:
            raise RuntimeError(f"optimizer weight ({describe_var(w)}) not mapped")
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
    check_optimizer(optimizer)
    path = _fs_path(path)
    var_list = var_list_of(var_list)
    check_optimizer(optimizer, var_list)
    entries, values = state_entries(optimizer, var_list)
    arrays = model_arrays(variables)
    replace(
        h5py,
        path,
        lambda f: write_state(h5py, f, path, entries, values, optimizer.name, arrays),
    )
