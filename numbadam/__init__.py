"""numbadam: a Numba-accelerated, numerically faithful Keras/TF2 Adam.

Variables are NumPy arrays (CPU kernels, ``@njit(parallel=True)``) or CUDA
arrays (``@cuda.jit`` kernels, with the optional ``numba-cuda``), updated in
place. Importing numbadam imports only NumPy and Numba.

Examples
--------
>>> import numpy as np
>>> import numbadam
>>> w = np.zeros(3, np.float32)
>>> opt = numbadam.Adam(learning_rate=0.01)
>>> _ = opt.apply_gradients([(np.ones(3, np.float32), w)])
>>> w.astype(float).round(3).tolist()
[-0.01, -0.01, -0.01]
"""

from . import schedules
from ._config import get_num_threads, reset_num_threads, set_num_threads
from ._flat import ParameterBuffer
from ._slotdir import release_slot_dir
from ._statedir_opt import load_state_dir, save_state_dir
from ._types import IndexedSlices
from .adam import Adam
from .adamw import AdamW
from .checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from .optimizer import OptimizerV2

__version__ = "0.1.0"

__all__ = [
    "Adam",
    "AdamW",
    "IndexedSlices",
    "OptimizerV2",
    "ParameterBuffer",
    "get_num_threads",
    "reset_num_threads",
    "set_num_threads",
    "schedules",
    "__version__",
]
__all__ += ["Checkpoint", "CheckpointError", "load_checkpoint", "save_checkpoint"]
__all__ += ["load_state_dir", "release_slot_dir", "save_state_dir"]
