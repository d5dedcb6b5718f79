"""Row-sharded embedding tables: each rank owns a contiguous block of rows."""

from __future__ import annotations

from typing import Any, Optional, Tuple

import numpy as np

from .. import _backend, _dispatch
from .._types import IndexedSlices
from . import _checkpoint
from ._comm import Communicator, get_communicator, partition

__all__ = ["ShardedEmbedding"]


class ShardedEmbedding:
    """A ``(num_rows, dim)`` table split by rows over the ranks of a communicator.

    Rank ``r`` stores only rows ``[row_bounds[r], row_bounds[r + 1])`` (contiguous
    blocks, the first ``num_rows % size`` ranks one row more) in :attr:`local`.
    Rows are looked up with :meth:`lookup` (an ``Alltoallv`` to the owners and
    back), and :class:`~numbadam.distributed.ShardedAdam` routes a batch's
    :class:`~numbadam.IndexedSlices` gradient rows to their owners (``Alltoallv``)
    where each owner applies the sparse Adam step to its block once per step, so
    that the table's rows and their ``m``, ``v`` (``vhat``) exist on one rank
    only.

    Parameters
    ----------
    num_rows, dim : int
        Global shape of the table.
    dtype : dtype, default float32
        float16, float32 or float64.
    comm : Communicator, mpi4py communicator, "mpi", "self" or None
        See :func:`~numbadam.distributed.get_communicator`.
    local : ndarray, optional
        This rank's block, ``(row_stop - row_start, dim)``, C-contiguous and
        writable; used as is (not copied). Zeros when omitted.

    Attributes
    ----------
    shape : tuple of int
        ``(num_rows, dim)``.
    row_bounds : ndarray of int64
        Row block bounds of every rank (``size + 1`` entries).
    row_start, row_stop : int
        This rank's block.
    local : ndarray
        This rank's rows, updated in place by the optimizer.

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam.distributed import ShardedEmbedding
    >>> full = np.arange(12, dtype=np.float32).reshape(6, 2)
    >>> emb = ShardedEmbedding.from_full(full, comm="self")
    >>> emb.lookup(np.array([5, 0])).tolist()
    [[10.0, 11.0], [0.0, 1.0]]
    """

    def __init__(
        self,
        num_rows: int,
        dim: int,
        dtype: Any = np.float32,
        comm: Any = None,
        local: Optional[np.ndarray] = None,
    ) -> None:
        self.comm: Communicator = get_communicator(comm)
        num_rows, dim = int(num_rows), int(dim)
        if num_rows < 0 or dim < 0:
            raise ValueError(f"bad table shape ({num_rows}, {dim})")
        dtype = np.dtype(dtype)
        _backend.check_float_dtype(dtype, "ShardedEmbedding")
        self.shape: Tuple[int, int] = (num_rows, dim)
        self.dtype = dtype
        self.row_bounds = partition(num_rows, self.comm.size)
        self.row_start = int(self.row_bounds[self.comm.rank])
        self.row_stop = int(self.row_bounds[self.comm.rank + 1])
        block = (self.row_stop - self.row_start, dim)
        if local is None:
            local = np.zeros(block, dtype)
        elif not (
            isinstance(local, np.ndarray)
            and local.shape == block
            and local.dtype == dtype
            and local.flags.c_contiguous
            and local.flags.writeable
        ):
            raise ValueError(
                f"local block must be a writable C-contiguous {dtype} array of shape "
                f"{block}, got {getattr(local, 'shape', None)}, "
                f"{getattr(local, 'dtype', None)}"
            )
        self.local = local

    # -- construction and whole-table access -----------------------------------

    @classmethod
    def from_full(
        cls, table: Optional[np.ndarray], comm: Any = None, root: Optional[int] = None
    ) -> "ShardedEmbedding":
        """Shard a full table: each rank keeps a copy of its block.

        Parameters
        ----------
        table : ndarray or None
            ``(num_rows, dim)``. With ``root=None`` every rank passes the same
            table (e.g. from the same seed); otherwise only ``root``'s is read
            (others may pass ``None``) and the shape and rows are broadcast.
        comm : optional
        root : int, optional
        """
        c = get_communicator(comm)
        if root is not None:
            spec = None
            if c.rank == root:
                table = np.asarray(table)
                spec = (table.shape, table.dtype.str)
            shape, dt = c.bcast_obj(spec, root=root)
            if c.rank != root:
                table = np.empty(shape, np.dtype(dt))
            table = np.ascontiguousarray(table)
            c.bcast_(table, root=root)
        table = np.asarray(table)
        if table.ndim != 2:
            raise ValueError(f"an embedding table is 2-D, got shape {table.shape}")
        emb = cls(table.shape[0], table.shape[1], table.dtype, comm=c)
        emb.local[...] = table[emb.row_start : emb.row_stop]
        return emb

    def gather(self) -> np.ndarray:
        """The full table on every rank (collective ``Allgatherv``)."""
        counts = np.diff(self.row_bounds) * self.shape[1]
        out = np.empty(self.shape, self.dtype)
        self.comm.allgatherv(self.local.reshape(-1), counts, out=out.reshape(-1))
        return out

    def assign_full(self, table: np.ndarray) -> None:
        """Set this rank's block from a full table (no communication)."""
        table = np.asarray(table)
        if table.shape != self.shape:
            raise ValueError(f"table has shape {table.shape}, expected {self.shape}")
        self.local[...] = table[self.row_start : self.row_stop]

    @property
    def num_rows(self) -> int:
        """Number of rows of the whole table (all ranks), ``shape[0]``.

        This rank holds ``row_stop - row_start`` of them in :attr:`local`.

        Examples
        --------
        >>> from numbadam.distributed import ShardedEmbedding
        >>> emb = ShardedEmbedding(10, 4, comm="self")
        >>> emb.num_rows, emb.local.shape[0]
        (10, 10)
        """
        return self.shape[0]

    @property
    def dim(self) -> int:
        """Width of a row (the embedding dimension), ``shape[1]``.

        Examples
        --------
        >>> from numbadam.distributed import ShardedEmbedding
        >>> ShardedEmbedding(10, 4, comm="self").dim
        4
        """
        return self.shape[1]

    @property
    def size(self) -> int:
        """Number of elements of the whole table."""
        return self.shape[0] * self.shape[1]

    def owners(self, ids: np.ndarray) -> np.ndarray:
        """Rank owning each row id."""
        return np.searchsorted(self.row_bounds, ids, side="right") - 1

    # -- lookups ----------------------------------------------------------------

    def _check_ids(self, ids: Any, what: str) -> np.ndarray:
        idx = np.asarray(ids)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"{what} have dtype {idx.dtype}; expected integers")
        idx = idx.astype(np.int64, copy=False)
        if idx.size:
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= self.shape[0]:
                raise IndexError(
                    f"{what}: row {lo if lo < 0 else hi} out of range for "
                    f"{self.shape[0]} rows"
                )
        return idx

    def _route(self, idx: np.ndarray):
        # Stable sort by owner keeps each sender's order: owners receive rows in
        # (rank, position) order, the order of the concatenated global batch.
        owner = self.owners(idx)
        order = np.argsort(owner, kind="stable")
        send_counts = np.bincount(owner, minlength=self.comm.size).astype(np.int64)
        recv_counts = self.comm.alltoall_counts(send_counts)
        return order, send_counts, recv_counts

    def lookup(self, ids: Any) -> np.ndarray:
        """Rows ``ids`` of the table (any shape of int ids), collective.

        Every rank asks for its own ids; each id goes to its owner with
        ``Alltoallv`` and the rows come back the same way.

        Returns
        -------
        ndarray
            ``ids.shape + (dim,)``, the table's dtype.
        """
        idx = self._check_ids(ids, "lookup ids")
        shape = idx.shape
        idx = idx.reshape(-1)
        order, sc, rc = self._route(idx)
        asked = self.comm.alltoallv(idx[order], sc, rc)
        rows = np.ascontiguousarray(self.local[asked - self.row_start])
        w = self.shape[1]
        back = self.comm.alltoallv(rows.reshape(-1), rc * w, sc * w).reshape(-1, w)
        out = np.empty((idx.size, w), self.dtype)
        out[order] = back
        return out.reshape(shape + (w,))

    def route_gradient(self, grad: IndexedSlices, label: str = "ShardedEmbedding"):
        """Send every gradient row to its owner (collective ``Alltoallv``).

        Returns ``(indices, values)`` received by this rank: global row ids
        (int64) of its block and their ``(k, dim)`` values in the table's dtype,
        in (sender rank, position) order. Not averaged.
        """
        idx, vals = self.prepare_gradient(grad, label)
        order, sc, rc = self._route(idx)
        w = self.shape[1]
        r_idx = self.comm.alltoallv(idx[order], sc, rc)
        r_vals = self.comm.alltoallv(
            np.ascontiguousarray(vals[order]).reshape(-1), sc * w, rc * w
        )
        return r_idx, r_vals.reshape(-1, w)

    def prepare_gradient(self, grad: Any, label: str):
        """Validate an IndexedSlices gradient of the whole table (no communication).

        Returns ``(indices int64, values (k, dim) in the table's dtype)``.
        """
        if not isinstance(grad, IndexedSlices):
            raise TypeError(
                f"the gradient of {label} must be an IndexedSlices of global row "
                f"ids, got {type(grad).__name__}"
            )
        if grad.dense_shape is not None and tuple(grad.dense_shape) != self.shape:
            raise ValueError(
                f"IndexedSlices for {label} has dense_shape {tuple(grad.dense_shape)}"
                f", the table {self.shape}"
            )
        if _dispatch.is_device_array(grad.values) or _dispatch.is_device_array(
            grad.indices
        ):
            raise TypeError(f"the gradient of {label} is a CUDA array; use NumPy")
        idx = np.asarray(grad.indices)
        if idx.ndim != 1:
            raise ValueError(f"IndexedSlices indices of {label} must be 1-D")
        idx = self._check_ids(idx, f"IndexedSlices for {label}")
        vals = np.asarray(grad.values)
        if vals.dtype.kind != "f":
            raise TypeError(f"IndexedSlices values of {label} have dtype {vals.dtype}")
        _backend.cast_gradient_dtype(vals.dtype, self.dtype, label)
        if vals.shape != (idx.shape[0], self.shape[1]):
            raise ValueError(
                f"IndexedSlices for {label}: {idx.shape[0]} indices but values of "
                f"shape {vals.shape}; expected ({idx.shape[0]}, {self.shape[1]})"
            )
        return idx, np.ascontiguousarray(vals, dtype=self.dtype)

    # -- checkpoints --------------------------------------------------------------

    def save(self, path: str) -> None:
        """Save the table, one ``.npz`` per rank plus a manifest (collective).

        Loadable by :meth:`load` at any number of ranks.
        """
        w = self.shape[1]
        _checkpoint.write(
            path,
            self.comm,
            {"kind": "ShardedEmbedding"},
            [{"shape": list(self.shape), "dtype": self.dtype.name, "layout": "rows"}],
            [{"name": "table", "variable": 0}],
            [(self.row_start * w, self.row_stop * w)],
            [self.local.reshape(-1)],
            0,
            list(range(self.comm.size)),
        )

    def load(self, path: str) -> None:
        """Read this rank's rows from a checkpoint saved by :meth:`save` at any size."""
        with _checkpoint.Reader(path) as r:
            r.check_variables([(self.shape, self.dtype)])
            w = self.shape[1]
            data = r.read(0, self.row_start * w, self.row_stop * w)
        self.local.reshape(-1)[...] = data

    def __repr__(self) -> str:
        return (
            f"<ShardedEmbedding shape={self.shape} {self.dtype.name} rows "
            f"[{self.row_start}, {self.row_stop}) on rank {self.comm.rank}/"
            f"{self.comm.size}>"
        )
