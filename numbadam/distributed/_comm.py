"""The communicator layer: the only module of numbadam that imports mpi4py.

Everything distributed in numbadam talks to a :class:`Communicator`, a thin
wrapper over the handful of MPI collectives the optimizers need, on NumPy
buffers. Two implementations:

:class:`MPICommunicator`
    mpi4py's buffer (upper-case) methods on an ``MPI.Comm``; MPI does all the
    communication.
:class:`SelfCommunicator`
    One process, no MPI: every collective is a copy. The same user code runs
    with ``python script.py`` and with ``mpiexec -n 4 python -m mpi4py script.py``.

mpi4py is imported lazily, only when a real communicator is requested or the
process was started by an MPI launcher, never by ``import numbadam``.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

__all__ = [
    "Communicator",
    "MPICommunicator",
    "SelfCommunicator",
    "get_communicator",
    "launched_under_mpi",
    "partition",
    "MPI_MISSING_MESSAGE",
]

MPI_MISSING_MESSAGE = (
    "numbadam.distributed needs mpi4py for a real MPI communicator: "
    "pip install numbadam[mpi]  (mpi4py and the mpich wheel; on a cluster, "
    "build mpi4py against the site MPI instead, see docs/scaling.md)"
)

# Set by the launchers of MPICH/Intel MPI (Hydra), Open MPI, PMIx and MVAPICH.
_LAUNCHER_SIZE_VARS = (
    "PMI_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "PMIX_SIZE",
    "MV2_COMM_WORLD_SIZE",
)
_LAUNCHER_RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def launched_under_mpi() -> bool:
    """True when this process was started by an MPI launcher (or mpi4py is live).

    Looks at ``sys.modules`` for an initialised ``mpi4py.MPI`` (``python -m
    mpi4py`` imports it) and at the environment variables that ``mpiexec`` /
    ``mpirun`` of MPICH, Intel MPI, Open MPI, MVAPICH and PMIx set. Does not
    import mpi4py.

    Returns
    -------
    bool
        Whether :func:`get_communicator` with no argument uses MPI
        (``MPI.COMM_WORLD``) rather than the one-process
        :class:`SelfCommunicator`.

    Examples
    --------
    ``python script.py`` gives ``False``; ``mpiexec -n 4 python -m mpi4py
    script.py`` gives ``True`` on every rank. Either way it decides what
    :func:`get_communicator` returns:

    >>> from numbadam.distributed import get_communicator, launched_under_mpi
    >>> under_mpi = launched_under_mpi()
    >>> get_communicator().is_mpi == under_mpi
    True
    """
    if "mpi4py.MPI" in sys.modules:
        return True
    return any(v in os.environ for v in _LAUNCHER_SIZE_VARS + _LAUNCHER_RANK_VARS)


def _launcher_size() -> Optional[int]:
    for var in _LAUNCHER_SIZE_VARS:
        raw = os.environ.get(var)
        if raw is not None:
            try:
                return int(raw)
            except ValueError:
                return None
    return None


def partition(total: int, parts: int) -> np.ndarray:
    """Bounds of ``parts`` contiguous, near-equal pieces of ``range(total)``.

    The first ``total % parts`` pieces get one element more (as
    ``numpy.array_split``); pieces may be empty when ``total < parts``.

    Parameters
    ----------
    total : int
        Number of elements (or rows) to split; non-negative.
    parts : int
        Number of pieces, e.g. the number of ranks; positive.

    Returns
    -------
    numpy.ndarray
        int64 bounds ``b`` of length ``parts + 1``: piece ``r`` is
        ``[b[r], b[r + 1])``.

    Raises
    ------
    ValueError
        If ``parts < 1`` or ``total < 0``.

    Examples
    --------
    >>> from numbadam.distributed import partition
    >>> partition(10, 4).tolist()
    [0, 3, 6, 8, 10]
    >>> partition(2, 4).tolist()
    [0, 1, 2, 2, 2]
    """
    total, parts = int(total), int(parts)
    if parts < 1 or total < 0:
        raise ValueError(f"cannot partition {total} into {parts} pieces")
    base, extra = divmod(total, parts)
    sizes = np.full(parts, base, np.int64)
    sizes[:extra] += 1
    return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)


def _movable(a: np.ndarray) -> np.ndarray:
    # Pure data movement never needs MPI to know a float16: move its bits.
    return a.view(np.uint16) if a.dtype == np.float16 else a


def _displs(counts: np.ndarray) -> np.ndarray:
    out = np.zeros(len(counts), np.int64)
    np.cumsum(counts[:-1], out=out[1:])
    return out


class Communicator:
    """Collectives on NumPy buffers among ``size`` processes (the interface).

    Every method is collective: all ranks call it, in the same order, with
    matching arguments. Buffers are C-contiguous NumPy arrays; reductions are
    sums. Implementations: :class:`MPICommunicator`, :class:`SelfCommunicator`.

    Attributes
    ----------
    rank : int
        This process's rank, ``0 <= rank < size``.
    size : int
        Number of processes.
    is_mpi : bool
        Whether MPI does the communication.

    Examples
    --------
    Code written against this interface runs on one process and under MPI
    alike; here a global mean, with the one-process communicator:

    >>> import numpy as np
    >>> from numbadam.distributed import Communicator, get_communicator
    >>> def global_mean(x, comm):
    ...     total = comm.allreduce_sum_(np.array([x.sum(), x.size], np.float64))
    ...     return total[0] / total[1]
    >>> comm = get_communicator("self")
    >>> isinstance(comm, Communicator), comm.rank, comm.size, comm.is_mpi
    (True, 0, 1, False)
    >>> float(global_mean(np.arange(4.0), comm))
    1.5
    >>> comm.allgatherv(np.array([1.0, 2.0]), counts=[2]).tolist()
    [1.0, 2.0]
    """

    rank: int = 0
    size: int = 1
    is_mpi: bool = False

    # -- reductions -------------------------------------------------------------

    def allreduce_sum_(self, buf: np.ndarray) -> np.ndarray:
        """Sum ``buf`` over ranks, in place (MPI ``Allreduce`` with ``IN_PLACE``)."""
        raise NotImplementedError

    def reduce_scatter_sum(
        self, send: np.ndarray, counts: Sequence[int], out: Optional[np.ndarray] = None
    ) -> np.ndarray:
        """Sum ``send`` over ranks and keep piece ``rank`` (``Reduce_scatter``).

        ``send`` is the concatenation of ``size`` pieces of ``counts[r]``
        elements; returns this rank's piece of the sum, in ``out`` when given
        (``counts[rank]`` elements of ``send``'s dtype) or in a new array.
        """
        raise NotImplementedError

    # -- data movement --------------------------------------------------------

    def bcast_(self, buf: np.ndarray, root: int = 0) -> np.ndarray:
        """Overwrite ``buf`` with root's, in place (``Bcast``)."""
        raise NotImplementedError

    def allgatherv(
        self, send: np.ndarray, counts: Sequence[int], out: Optional[np.ndarray] = None
    ) -> np.ndarray:
        """Concatenate every rank's ``send`` (``counts[r]`` elements) in rank order.

        ``out`` (1-D, ``sum(counts)`` elements, ``send``'s dtype) receives the
        result when given; ``send=None`` means this rank's piece is already in
        place in ``out`` (MPI ``IN_PLACE``).
        """
        raise NotImplementedError

    def alltoallv(
        self, send: np.ndarray, send_counts: Sequence[int], recv_counts: Sequence[int]
    ) -> np.ndarray:
        """Send piece ``r`` of ``send`` to rank ``r``; pieces received in rank order.

        ``send`` is 1-D, its pieces ``send_counts[r]`` elements long; this rank
        receives ``recv_counts[r]`` elements from rank ``r`` (``Alltoallv``).
        """
        raise NotImplementedError

    def alltoall_counts(self, counts: np.ndarray) -> np.ndarray:
        """One int64 to each rank (``Alltoall``): ``out[r]`` = r's ``counts[rank]``."""
        raise NotImplementedError

    def allgather_counts(self, counts: np.ndarray) -> np.ndarray:
        """A small int64 vector from every rank, shape ``(size, len(counts))``."""
        raise NotImplementedError

    # -- objects and control ------------------------------------------------------

    def bcast_obj(self, obj: Any, root: int = 0) -> Any:
        """Root's picklable ``obj`` on every rank."""
        raise NotImplementedError

    def allgather_obj(self, obj: Any) -> List[Any]:
        """Every rank's picklable ``obj``, in rank order."""
        raise NotImplementedError

    def barrier(self) -> None:
        """Wait until every rank has called it."""
        raise NotImplementedError

    def abort(self, code: int = 1) -> None:
        """End every process of the job (``MPI_Abort``); one process: ``os._exit``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} rank={self.rank} size={self.size}>"


class SelfCommunicator(Communicator):
    """The one-process communicator: every collective is a local copy.

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam.distributed import SelfCommunicator
    >>> comm = SelfCommunicator()
    >>> comm.rank, comm.size
    (0, 1)
    >>> comm.allreduce_sum_(np.ones(2)).tolist()
    [1.0, 1.0]
    """

    rank = 0
    size = 1
    is_mpi = False

    def allreduce_sum_(self, buf):
        return buf

    def reduce_scatter_sum(self, send, counts, out=None):
        if out is None:
            return np.array(send[: int(counts[0])], copy=True)
        out[...] = send[: int(counts[0])]
        return out

    def bcast_(self, buf, root=0):
        self._check_root(root)
        return buf

    def allgatherv(self, send, counts, out=None):
        n = int(counts[0])
        if out is None:
            return np.array(send[:n], copy=True)
        if send is not None:
            out[:n] = send[:n]
        return out

    def alltoallv(self, send, send_counts, recv_counts):
        return np.array(send[: int(send_counts[0])], copy=True)

    def alltoall_counts(self, counts):
        return np.array(counts, np.int64, copy=True)

    def allgather_counts(self, counts):
        return np.asarray(counts, np.int64).reshape(1, -1).copy()

    def bcast_obj(self, obj, root=0):
        self._check_root(root)
        return obj

    def allgather_obj(self, obj):
        return [obj]

    def barrier(self):
        pass

    def abort(self, code=1):
        sys.stderr.flush()
        os._exit(code)

    @staticmethod
    def _check_root(root):
        if root != 0:
            raise ValueError(f"root {root} out of range for 1 process")


class MPICommunicator(Communicator):
    """mpi4py's buffer collectives on an ``MPI.Comm`` (default ``COMM_WORLD``).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm, optional
        An intracommunicator; defaults to ``MPI.COMM_WORLD``.

    Raises
    ------
    ImportError
        If mpi4py is not installed (``pip install numbadam[mpi]``).
    RuntimeError
        If the launcher started a different number of processes than mpi4py's
        MPI sees (mpi4py built against another MPI than this ``mpiexec``).

    Examples
    --------
    Rarely built by hand: :func:`get_communicator` returns one for
    ``MPI.COMM_WORLD`` when the process was started by ``mpiexec``, and the
    one-process :class:`SelfCommunicator` otherwise (as in this example, run
    without ``mpiexec``):

    >>> from numbadam.distributed import (
    ...     Communicator, MPICommunicator, get_communicator, launched_under_mpi)
    >>> issubclass(MPICommunicator, Communicator), MPICommunicator.is_mpi
    (True, True)
    >>> comm = get_communicator()
    >>> isinstance(comm, MPICommunicator) == launched_under_mpi()
    True
    >>> isinstance(get_communicator("self"), MPICommunicator)
    False

    Under ``mpiexec -n 4 python -m mpi4py script.py``, ``get_communicator()``
    is ``MPICommunicator()`` with ``rank`` 0 to 3 and ``size`` 4, and a
    sub-communicator of mpi4py is wrapped the same way::

        from mpi4py import MPI
        half = MPI.COMM_WORLD.Split(color=MPI.COMM_WORLD.Get_rank() % 2)
        comm = get_communicator(half)          # an MPICommunicator of 2 ranks
    """

    is_mpi = True

    def __init__(self, comm: Any = None) -> None:
        MPI = _import_mpi()
        self._MPI = MPI
        self.comm = MPI.COMM_WORLD if comm is None else comm
        self.rank = int(self.comm.Get_rank())
        self.size = int(self.comm.Get_size())
        launched = _launcher_size()
        if comm is None and launched is not None and launched != self.size:
            raise RuntimeError(
                f"the MPI launcher started {launched} processes but MPI sees a world "
                f"of {self.size}: mpi4py uses another MPI than this mpiexec (e.g. "
                f"the mpich wheel's mpiexec with a site-built mpi4py, or the other "
                f"way round); see 'Using the cluster's MPI' in docs/scaling.md. "
                f"mpi4py's library: {MPI.Get_library_version().splitlines()[0]}"
            )
        if self.size > 1 and "mpi4py.run" not in sys.modules:
            warnings.warn(
                "run rank programs as 'mpiexec -n N python -m mpi4py script.py': "
                "without '-m mpi4py' an exception on one rank leaves the others "
                "waiting forever instead of aborting the job",
                RuntimeWarning,
                stacklevel=3,
            )
        # Predefined datatypes: MPI reductions are defined on those only.
        self._types = {
            np.dtype(np.float32): MPI.FLOAT,
            np.dtype(np.float64): MPI.DOUBLE,
            np.dtype(np.int64): MPI.INT64_T,
            np.dtype(np.int32): MPI.INT32_T,
            np.dtype(np.uint16): MPI.UINT16_T,
            np.dtype(np.uint8): MPI.BYTE,
        }

    def _type(self, a: np.ndarray):
        try:
            return self._types[a.dtype]
        except KeyError:
            raise TypeError(f"no MPI datatype for {a.dtype} buffers") from None

    def allreduce_sum_(self, buf):
        self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        return buf

    def reduce_scatter_sum(self, send, counts, out=None):
        counts = np.asarray(counts, np.int64)
        if out is None:
            out = np.empty(int(counts[self.rank]), send.dtype)
        t = self._type(send)
        if np.all(counts == counts[0]):
            self.comm.Reduce_scatter_block([send, t], [out, t], op=self._MPI.SUM)
        else:
            self.comm.Reduce_scatter([send, t], [out, t], counts, op=self._MPI.SUM)
        return out

    def bcast_(self, buf, root=0):
        self.comm.Bcast(_movable(buf), root=root)
        return buf

    def allgatherv(self, send, counts, out=None):
        counts = np.asarray(counts, np.int64)
        if out is None:
            out = np.empty(int(counts.sum()), send.dtype)
        o = _movable(out)
        t = self._type(o)
        spec = [o, counts, _displs(counts), t]
        if send is None:
            self.comm.Allgatherv(self._MPI.IN_PLACE, spec)
        else:
            s = _movable(np.ascontiguousarray(send))
            self.comm.Allgatherv([s, int(counts[self.rank]), t], spec)
        return out

    def alltoallv(self, send, send_counts, recv_counts):
        sc = np.asarray(send_counts, np.int64)
        rc = np.asarray(recv_counts, np.int64)
        out = np.empty(int(rc.sum()), send.dtype)
        s, o = _movable(np.ascontiguousarray(send)), _movable(out)
        t = self._type(o)
        self.comm.Alltoallv([s, sc, _displs(sc), t], [o, rc, _displs(rc), t])
        return out

    def alltoall_counts(self, counts):
        send = np.ascontiguousarray(counts, np.int64)
        out = np.empty(self.size, np.int64)
        self.comm.Alltoall(send, out)
        return out

    def allgather_counts(self, counts):
        send = np.ascontiguousarray(counts, np.int64).reshape(-1)
        out = np.empty((self.size, send.size), np.int64)
        self.comm.Allgather(send, out)
        return out

    def bcast_obj(self, obj, root=0):
        return self.comm.bcast(obj, root=root)

    def allgather_obj(self, obj):
        return self.comm.allgather(obj)

    def barrier(self):
        self.comm.Barrier()

    def abort(self, code=1):
        self.comm.Abort(code)


def _import_mpi():
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(MPI_MISSING_MESSAGE) from exc
    return MPI


_WORLD: Optional[Communicator] = None


def get_communicator(comm: Any = None) -> Communicator:
    """The communicator to use: explicit, or the world of this launch.

    Parameters
    ----------
    comm : Communicator, mpi4py.MPI.Comm, "mpi", "self" or None
        ``None`` (``"auto"``): ``MPI.COMM_WORLD`` when the process was started
        by an MPI launcher or mpi4py is already initialised (see
        :func:`launched_under_mpi`), else the one-process
        :class:`SelfCommunicator`. ``"mpi"`` requires MPI; ``"self"`` never uses
        it. An mpi4py communicator is wrapped; a :class:`Communicator` is
        returned as is.

    Returns
    -------
    Communicator
        The world communicator is created once and reused.

    Raises
    ------
    ImportError
        If MPI is requested (``"mpi"``, an MPI launcher) but mpi4py is missing;
        the message says ``pip install numbadam[mpi]``.

    Examples
    --------
    >>> from numbadam.distributed import get_communicator
    >>> get_communicator("self").size
    1
    """
    global _WORLD
    if isinstance(comm, Communicator):
        return comm
    if comm is None or (isinstance(comm, str) and comm == "auto"):
        if _WORLD is not None:
            return _WORLD
        comm = "mpi" if launched_under_mpi() else "self"
    if isinstance(comm, str):
        if comm == "self":
            return SelfCommunicator()
        if comm == "mpi":
            if _WORLD is None or not _WORLD.is_mpi:
                _WORLD = MPICommunicator()
            return _WORLD
        raise ValueError(f"unknown communicator {comm!r}; use 'auto', 'mpi' or 'self'")
    if hasattr(comm, "Allreduce") and hasattr(comm, "Get_rank"):
        return MPICommunicator(comm)
    raise TypeError(
        f"comm must be a numbadam Communicator, an mpi4py communicator, 'auto', "
        f"'mpi' or 'self', got {type(comm).__name__}"
    )


def rank_and_size(comm: Any = None) -> Tuple[int, int]:
    """``(rank, size)`` of :func:`get_communicator` ``(comm)``."""
    c = get_communicator(comm)
    return c.rank, c.size
