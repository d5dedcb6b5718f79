"""numbadam on several processes: data-parallel and ZeRO-sharded Adam over MPI.

MPI (through mpi4py, the optional ``numbadam[mpi]`` extra) does all the
communication; :mod:`numbadam.distributed._comm` is the only module that
imports it, lazily. Without mpi4py, or outside an MPI launch, every class here
runs on the one-process :class:`SelfCommunicator`, so the same script runs with
``python train.py`` and with ``mpiexec -n 4 python -m mpi4py train.py``
(always launch rank programs with ``python -m mpi4py``: an exception on one rank
then aborts the whole job instead of leaving the others waiting).

Three modes (see ``docs/scaling.md``):

:class:`DistributedAdam`
    Data parallel (Horovod-style): every rank holds everything and applies the
    average of the ranks' gradients (one ``Allreduce`` per step for dense
    gradients, ``Allgatherv`` for IndexedSlices).
:class:`ShardedAdam`
    ZeRO stage 1: parameters replicated, ``m``/``v``/``vhat`` split over the
    ranks (``Reduce_scatter``, slice step, ``Allgatherv``).
:class:`ShardedEmbedding`
    With :class:`ShardedAdam`: a table whose rows *and* state are split over the
    ranks; gradient rows go to their owners with ``Alltoallv``.

Examples
--------
>>> import numpy as np
>>> from numbadam.distributed import DistributedAdam, broadcast_variables
>>> w = np.zeros(2, np.float32)
>>> opt = DistributedAdam(learning_rate=0.1)   # world of this launch
>>> broadcast_variables([w], root=0)
>>> _ = opt.apply_gradients([(np.ones(2, np.float32), w)])
>>> w.astype(float).round(3).tolist()
[-0.1, -0.1]
"""

from ._comm import (
    MPI_MISSING_MESSAGE,
    Communicator,
    MPICommunicator,
    SelfCommunicator,
    get_communicator,
    launched_under_mpi,
    partition,
)
from ._data_parallel import DistributedAdam, broadcast_variables
from ._embedding import ShardedEmbedding
from ._sharded import ShardedAdam

__all__ = [
    "Communicator",
    "MPICommunicator",
    "SelfCommunicator",
    "get_communicator",
    "launched_under_mpi",
    "partition",
    "MPI_MISSING_MESSAGE",
    "DistributedAdam",
    "ShardedAdam",
    "ShardedEmbedding",
    "broadcast_variables",
]
