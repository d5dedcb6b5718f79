"""Which rows of the optimizer's state changed since the last state-dir save.

The incremental saves of :func:`numbadam.save_state_dir` write only the rows
that changed. After the first successful save an optimizer holds a
:class:`DirtyRows` (its ``_dirty`` attribute: the seam between the
optimizer's step hooks, which mark, and :mod:`numbadam._statedir_opt`, which
reads and clears):

- a lazy sparse step passes a ``uint8`` mask of the variable's rows to the
  kernel (a NumPy array, or a device array for a CUDA variable, made by the
  backend's ``row_mask``), which sets ``mask[row] = 1`` for each row it steps
  (no extra pass); a device mask is copied to the host when a save reads it;
- every other step of a variable (dense, TensorFlow's sparse rule, a
  ParameterBuffer or multi-tensor launch) changes every row: one flag.

Variables are keyed by their ``m`` slot (every Adam variable has one; a
ParameterBuffer's variables by the flat ``m`` their own slots view).
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Set, Tuple, Union

import numpy as np

__all__ = ["DirtyRows", "ALL"]

#: :meth:`DirtyRows.rows` of a variable whose every row may have changed.
ALL = "all"


class DirtyRows:
    """Row masks and whole-variable flags since the last save.

    ``folder`` and ``generation`` name the checkpoint the marks are relative
    to (a save into another folder, or a folder another writer changed, must
    be full).

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam._dirty import DirtyRows
    >>> d = DirtyRows("ckpt", 0)
    >>> m = np.zeros((5, 2))
    >>> d.mask(m, 5)[3] = 1  # (what the lazy kernel does)
    >>> d.rows(m).tolist()
    [0, 0, 0, 1, 0]
    >>> d.touch(m)
    >>> d.rows(m)
    'all'
    >>> d.clear("ckpt", 1)
    >>> d.rows(m) is None
    True
    """

    def __init__(self, folder: str, generation: int) -> None:
        self.folder = folder
        self.generation = generation
        # id(m) -> (m, mask, backend): the mask a NumPy array or a device one
        self._masks: Dict[int, Tuple[Any, Any, Any]] = {}
        self._whole: Set[int] = set()
        self._any_mask = False

    def mask(self, m: Any, nrows: int, backend: Any = None) -> Any:
        """The row mask of the variable whose ``m`` slot is ``m`` (created
        zero, by ``backend.row_mask`` when given: on the variable's device)."""
        hit = self._masks.get(id(m))
        if hit is None or hit[0] is not m or int(hit[1].shape[0]) != nrows:
            if backend is None:
                mask = np.zeros(nrows, np.uint8)
            else:
                mask = backend.row_mask(nrows)
            hit = self._masks[id(m)] = (m, mask, backend)
        self._any_mask = True
        return hit[1]

    def step_mask(self, m: Any, work: Any, backend: Any, lazy: bool) -> Any:
        """What a sparse step of the variable of ``m`` marks: its row mask
        (on the variable's device) when the step is lazy (the kernel sets the
        rows it changes), else None after marking every row changed (the TF
        rule visits every row)."""
        if lazy and len(work.var.shape):
            return self.mask(m, int(work.var.shape[0]), backend)
        self.touch(m)
        return None

    def touch(self, m: Any) -> None:
        """Every row of the variable of ``m`` changed."""
        self._whole.add(id(m))

    def rows(self, m: Any) -> Union[None, str, np.ndarray]:
        """``None`` (unchanged), :data:`ALL`, or the variable's row mask."""
        whole = self._whole
        if id(m) in whole:
            return ALL
        base = getattr(m, "base", None)
        if base is not None and id(base) in whole:
            return ALL  # (a ParameterBuffer variable: its view of the flat m)
        hit = self._masks.get(id(m))
        if hit is not None and hit[0] is m and self._any_mask:
            mask = hit[1]
            return mask if isinstance(mask, np.ndarray) else hit[2].to_host(mask)
        return None

    def clear(self, folder: Optional[str], generation: Optional[int]) -> None:
        """After a successful save: nothing is dirty relative to it."""
        for key, (_, mask, _) in list(self._masks.items()):
            if isinstance(mask, np.ndarray):
                mask[:] = 0
            else:  # a device mask: a zero one is made at the next step
                del self._masks[key]
        self._whole.clear()
        self._any_mask = False
        self.folder, self.generation = folder, generation
