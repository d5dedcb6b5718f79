"""Cases shared by the MPI rank programs and tests/test_distributed.py.

Every step's global gradient is made of ``PIECES`` seeded pieces (as if there
were 4 workers); at N ranks (N divides 4), rank ``r`` holds pieces
``[r*4/N, (r+1)*4/N)`` and its local gradient is their sum scaled by ``N/4``, so
the ranks' average is the mean of the 4 pieces whatever N is. IndexedSlices
pieces are concatenated with values scaled by ``N/4`` (exact: powers of two),
so the averaged IndexedSlices are bit-identical to the single-process
reference's (concatenation of all pieces, values divided by 4).
"""

from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, List

import numpy as np

import numbadam
from numbadam import IndexedSlices

PIECES = 4
STEPS = 4
LR = 0.05

# Sizes not divisible by 2 or 4, one smaller than 4 ranks, a 0-d and a float16.
# (257, 257) is above ShardedAdam's BUCKET_MIN_ELEMENTS: its own collectives.
DENSE = [
    ((7, 5), "float32"),
    ((13,), "float32"),
    ((), "float32"),
    ((3,), "float64"),
    ((2, 3), "float16"),
    ((257, 257), "float32"),
]
TABLE = (11, 3)  # replicated table with IndexedSlices gradients
EMB = (10, 3)  # ShardedEmbedding: 10 rows over 4 ranks -> 3, 3, 2, 2

# name -> (mode, dense variable indices, replicated table?, sharded table?, Adam kwargs)
CASES: Dict[str, Any] = {
    "dp_dense": ("dp", [0, 1, 2, 3, 4, 5], False, False, {}),
    "dp_sparse": ("dp", [1], True, False, {}),
    "dp_amsgrad": ("dp", [0, 2, 3], True, False, {"amsgrad": True}),
    "dp_clip": ("dp", [0, 1, 3], True, False, {"clipnorm": 1.0, "clipvalue": 0.6}),
    "zero_dense": ("zero", [0, 5, 1, 2, 3, 4], False, False, {}),
    "zero_sparse": ("zero", [0], True, False, {}),
    "zero_amsgrad": ("zero", [0, 1, 2, 3], True, False, {"amsgrad": True}),
    "zero_clip": (
        "zero",
        [0, 1, 5, 3, 4],
        True,
        True,
        {"clipnorm": 1.0, "clipvalue": 0.6},
    ),
    # lazy rule on a replicated table whose slices start inside rows, and on
    # a ShardedEmbedding, with clipping
    "zero_lazy": ("zero", [0], True, True, {"sparse_mode": "lazy"}),
    "zero_lazy_clip": (
        "zero",
        [1],
        True,
        True,
        {"sparse_mode": "lazy", "clipnorm": 0.5, "clipvalue": 0.4},
    ),
    # gradient accumulation (every call averaged, then accumulated) and the
    # EMA of the weights, on the replicated state
    "dp_accum": (
        "dp",
        [0, 1, 3, 4],
        True,
        False,
        {"gradient_accumulation_steps": 2, "clipnorm": 1.0},
    ),
    # row-wise state accumulated: dense variables and a replicated table
    # local accumulation: communication on the applying calls only
    "dp_accum_local": (
        "dp",
        [0, 1, 3, 4],
        True,
        False,
        {
            "gradient_accumulation_steps": 2,
            "local_accumulation": True,
            "clipnorm": 1.0,
            "sparse_mode": "lazy",
        },
    ),
    "dp_accum_local4_ema": (
        "dp",
        [2, 5],
        True,
        False,
        {
            "gradient_accumulation_steps": 4,
            "local_accumulation": True,
            "use_ema": True,
            "amsgrad": True,
            "second_moment": "row",
        },
    ),
    "dp_row_accum_lazy": (
        "dp",
        [0, 1, 5],
        True,
        False,
        {
            "second_moment": "row",
            "gradient_accumulation_steps": 2,
            "sparse_mode": "lazy",
            "amsgrad": True,
        },
    ),
    "dp_ema": ("dp", [0, 1, 4], True, False, {"use_ema": True, "ema_momentum": 0.5}),
    "dp_ema_accum_lazy": (
        "dp",
        [0, 2, 3],
        True,
        False,
        {
            "use_ema": True,
            "ema_momentum": 0.5,
            "ema_overwrite_frequency": 2,
            "gradient_accumulation_steps": 2,
            "weight_decay": 0.01,
            "sparse_mode": "lazy",
        },
    ),
    # weight decay with variables excluded ("exclude": positions in the
    # case's variables, passed to exclude_from_weight_decay), on slices
    # packed into one bucket and on one of their own
    "zero_wd_exclude": (
        "zero",
        [0, 1, 5],
        True,
        False,
        {"weight_decay": 0.3, "exclude": (1, 2)},
    ),
    # a ShardedEmbedding excluded (its steps run on its local rows)
    "zero_wd_exclude_emb": (
        "zero",
        [0, 1],
        True,
        True,
        {"weight_decay": 0.3, "sparse_mode": "lazy", "exclude": (0, 3)},
    ),
    # an excluded replicated table with IndexedSlices: each rank steps
    # pieces of its rows (works on views), still without decay
    "zero_wd_exclude_table": (
        "zero",
        [0],
        True,
        False,
        {"weight_decay": 0.3, "exclude": (1,)},
    ),
    "dp_wd_exclude": (
        "dp",
        [0, 1],
        True,
        False,
        {"weight_decay": 0.3, "exclude": (0, 2)},
    ),
    # slots on disk ("slot_dir": a folder made for the run; each rank keeps
    # its slices in its own rank-RRRRR-of-NNNNN folder inside), lazy, with a
    # sharded table
    "zero_disk": (
        "zero",
        [0, 5, 1],
        True,
        True,
        {"slot_dir": True, "sparse_mode": "lazy", "amsgrad": True},
    ),
    "dp_disk": ("dp", [0, 3], True, False, {"slot_dir": True, "amsgrad": True}),
    # row-wise state (one v per row) of a sharded table; the replicated
    # variables (0-d and 1-D) keep theirs per element, as in Adam
    "emb_row": (
        "zero",
        [1, 2],
        False,
        True,
        {"second_moment": "row", "sparse_mode": "lazy", "amsgrad": True},
    ),
    # row-wise state of replicated 2-D variables: each rank keeps whole rows
    # (0-d and 1-D variables element-wise); a float16 one, the big one, a
    # table smaller than 4 ranks' rows
    "zero_row": ("zero", [0, 4, 5, 1, 2], True, False, {"second_moment": "row"}),
    "zero_row_lazy_accum_clip": (
        "zero",
        [0, 3],
        True,
        True,
        {
            "second_moment": "row",
            "sparse_mode": "lazy",
            "gradient_accumulation_steps": 2,
            "clipnorm": 0.9,
            "amsgrad": True,
        },
    ),
    "emb_row_ema_lazy": (
        "zero",
        [1],
        False,
        True,
        {
            "second_moment": "row",
            "sparse_mode": "lazy",
            "use_ema": True,
            "ema_momentum": 0.6,
            "weight_decay": 0.02,
        },
    ),
    "emb_row_tf_clip_disk": (
        "zero",
        [3],
        False,
        True,
        {"second_moment": "row", "clipnorm": 0.5, "slot_dir": True},
    ),
    # the EMA of the weights: each rank keeps its slices of the averages
    "zero_ema": (
        "zero",
        [0, 5, 1, 4],
        True,
        True,
        {"use_ema": True, "ema_momentum": 0.6, "ema_overwrite_frequency": 3},
    ),
    "zero_ema_lazy_clip": (
        "zero",
        [1, 2],
        True,
        True,
        {"use_ema": True, "ema_momentum": 0.5, "sparse_mode": "lazy", "clipnorm": 0.8},
    ),
    # gradient accumulation of dense gradients: each rank accumulates its
    # slices of the averaged gradients
    "zero_accum": (
        "zero",
        [0, 5, 1, 4],
        False,
        False,
        {"gradient_accumulation_steps": 2, "clipnorm": 1.0},
    ),
    "zero_accum_ema_wd": (
        "zero",
        [0, 2, 3],
        False,
        False,
        {
            "gradient_accumulation_steps": 2,
            "use_ema": True,
            "weight_decay": 0.01,
            "amsgrad": True,
        },
    ),
    # IndexedSlices accumulated too: the parts of each rank's slice of a
    # replicated table and the rows routed to its block of a ShardedEmbedding
    "zero_accum_sparse": (
        "zero",
        [0, 1],
        True,
        True,
        {"gradient_accumulation_steps": 2, "sparse_mode": "lazy", "amsgrad": True},
    ),
    "zero_accum_sparse_clip": (
        "zero",
        [1, 5],
        True,
        True,
        {
            "gradient_accumulation_steps": 2,
            "clipnorm": 0.8,
            "use_ema": True,
            "ema_momentum": 0.5,
        },
    ),
    "zero_accum_sparse_ema_lazy": (
        "zero",
        [1],
        True,
        True,
        {
            "gradient_accumulation_steps": 2,
            "sparse_mode": "lazy",
            "use_ema": True,
            "ema_momentum": 0.7,
            "ema_overwrite_frequency": 2,
        },
    ),
    "emb": ("zero", [1], False, True, {}),
    "emb_amsgrad": ("zero", [], False, True, {"amsgrad": True}),
}
# The checkpoint case: saved after SAVE_AT steps, resumed at another size.
CKPT_CASES = ("zero_ckpt", "dp_ckpt")
CASES["zero_ckpt"] = ("zero", [0, 2, 4], True, True, {"amsgrad": True})
CASES["dp_ckpt"] = ("dp", [0, 3], True, False, {})
SAVE_AT = 2
# Cases whose table results must be bit-identical to the reference's.
EXACT_TABLES = (
    "dp_sparse",
    "dp_amsgrad",
    "dp_accum",
    "dp_ema",
    "dp_ema_accum_lazy",
    "zero_sparse",
    "zero_lazy",
    "zero_disk",
    "emb_row",
    "zero_row",
    "zero_accum_sparse",
    "zero_accum_sparse_ema_lazy",
    "emb",
    "emb_amsgrad",
    "zero_ckpt",
    "dp_ckpt",
)
# A short run of the distributed demo (train_embedding_distributed).
TRAIN = dict(epochs=2, batch=64, n=384, vocab=50, dim=4, bag=3, learning_rate=0.05)
LOOKUP_IDS = np.array([9, 0, 3, 3, 7, 2, 9, 5], np.int64)


def _rng(*seed: int) -> np.random.Generator:
    return np.random.default_rng(list(seed))


def init_variables(name: str) -> List[np.ndarray]:
    """Initial variables of a case, in order: dense..., table, emb (full)."""
    _, dense, table, emb, _ = CASES[name]
    out = []
    for i in dense:
        shape, dt = DENSE[i]
        out.append(np.asarray(_rng(1, i).standard_normal(shape), dt))
    if table:
        out.append(_rng(2).standard_normal(TABLE).astype(np.float32))
    if emb:
        out.append(_rng(3).standard_normal(EMB).astype(np.float32))
    return out


def _dense_piece(step, piece, i):
    shape, _ = DENSE[i]
    return _rng(10, step, piece, i).standard_normal(shape)


def _sparse_piece(step, piece, rows, salt):
    k = (piece + step) % 4  # piece 0 at step 0 is empty
    rng = _rng(20 + salt, step, piece)
    idx = rng.integers(0, rows, k).astype(np.int64)
    vals = rng.standard_normal((k, 3)).astype(np.float32)
    return idx, vals


def _my_pieces(rank, size):
    per = PIECES // size
    return range(rank * per, (rank + 1) * per)


def local_gradients(name: str, step: int, rank: int, size: int) -> List[Any]:
    """Rank ``rank``'s gradients (of ``size`` ranks) at ``step``, in variable order."""
    _, dense, table, emb, _ = CASES[name]
    pieces = _my_pieces(rank, size)
    scale = size / PIECES
    out: List[Any] = []
    for i in dense:
        shape, dt = DENSE[i]
        g = sum(_dense_piece(step, p, i) for p in pieces) * scale
        out.append(np.asarray(g, dt))
    for salt, present, rows in ((0, table, TABLE[0]), (1, emb, EMB[0])):
        if present:
            parts = [_sparse_piece(step, p, rows, salt) for p in pieces]
            idx = np.concatenate([a for a, _ in parts])
            vals = np.concatenate([b for _, b in parts]) * np.float32(scale)
            out.append(IndexedSlices(vals, idx, (rows, 3)))
    return out


def reference_gradients(name: str, step: int) -> List[Any]:
    """The averaged gradients, as a single process would get them."""
    _, dense, table, emb, _ = CASES[name]
    out: List[Any] = []
    for i in dense:
        shape, dt = DENSE[i]
        g = sum(_dense_piece(step, p, i) for p in range(PIECES)) / PIECES
        out.append(np.asarray(g, dt))
    for salt, present, rows in ((0, table, TABLE[0]), (1, emb, EMB[0])):
        if present:
            parts = [_sparse_piece(step, p, rows, salt) for p in range(PIECES)]
            idx = np.concatenate([a for a, _ in parts])
            vals = np.concatenate([b for _, b in parts]) / np.float32(PIECES)
            out.append(IndexedSlices(vals, idx, (rows, 3)))
    return out


def reference(name: str, steps: int = STEPS) -> Dict[str, Any]:
    """Single-process numbadam.Adam on the averaged gradients."""
    kwargs, exclude, _ = _split(CASES[name][4])
    kwargs.pop("local_accumulation", None)  # (how DistributedAdam communicates)
    variables = init_variables(name)
    opt = numbadam.Adam(learning_rate=LR, **kwargs)
    opt.exclude_from_weight_decay([variables[k] for k in exclude])
    for step in range(steps):
        opt.apply_gradients(zip(reference_gradients(name, step), variables))
    return {"vars": variables, "weights": opt.get_weights()}


def make_distributed(name: str, comm, workdir=None):
    """(optimizer, variables to pass) of a case at ``comm``; a case with slots
    on disk gets the folder ``workdir/<name>-slots`` (a new temporary folder
    without ``workdir``), the same path on every rank."""
    from numbadam.distributed import DistributedAdam, ShardedAdam, ShardedEmbedding

    mode, _, _, emb, kwargs = CASES[name]
    kwargs, exclude, on_disk = _split(kwargs)
    if on_disk:
        folder = os.path.join(workdir or tempfile.mkdtemp(), f"{name}-slots")
        os.makedirs(folder, exist_ok=True)
        kwargs["slot_dir"] = folder
    full = init_variables(name)
    if mode == "dp":
        opt = DistributedAdam(learning_rate=LR, comm=comm, **kwargs)
        opt.exclude_from_weight_decay([full[k] for k in exclude])
        return opt, full
    variables = list(full)
    if emb:
        variables[-1] = ShardedEmbedding.from_full(full[-1], comm=comm)
    opt = ShardedAdam(learning_rate=LR, comm=comm, **kwargs)
    opt.exclude_from_weight_decay([variables[k] for k in exclude])
    return opt, variables


def _split(kwargs):
    """(Adam's keyword arguments, positions of the variables to exclude from
    the weight decay, whether the slots go to a slot_dir) of a case's kwargs."""
    kwargs = dict(kwargs)
    on_disk = bool(kwargs.pop("slot_dir", False))
    return kwargs, tuple(kwargs.pop("exclude", ())), on_disk


def gather_variables(variables) -> List[np.ndarray]:
    out = []
    for v in variables:
        out.append(v.gather() if hasattr(v, "gather") else np.array(v, copy=True))
    return out


def run(name: str, comm, steps=range(STEPS), opt=None, variables=None, workdir=None):
    """Run ``steps`` of a case on ``comm``; returns (opt, variables)."""
    if opt is None:
        opt, variables = make_distributed(name, comm, workdir)
    for step in steps:
        grads = local_gradients(name, step, comm.rank, comm.size)
        opt.apply_gradients(zip(grads, variables))
    return opt, variables


def results(name: str, opt, variables) -> Dict[str, np.ndarray]:
    """Arrays a rank records for a case (collective: gathers sharded state)."""
    out = {}
    for k, v in enumerate(gather_variables(variables)):
        out[f"var{k}"] = v
    for k, w in enumerate(opt.get_weights()):
        out[f"weight{k}"] = np.asarray(w)
    local = opt.weights
    out["local_nbytes"] = np.array(sum(np.asarray(w).nbytes for w in local[1:]))
    folder = getattr(opt, "_slot_dir", None)
    if folder is not None:  # the slot files of this rank: folder, data bytes
        folder = os.fspath(folder)
        files = sorted(f for f in os.listdir(folder) if f.endswith(".npy"))
        out["slot_folder"] = np.array(os.path.basename(folder))
        out["slot_file_nbytes"] = np.array(
            sum(np.load(os.path.join(folder, f), mmap_mode="r").nbytes for f in files)
        )
        out["slots_mapped"] = np.array(
            all(isinstance(w.base, np.memmap) for w in local[1:])
        )
    if hasattr(variables[-1], "lookup"):
        out["lookup"] = variables[-1].lookup(LOOKUP_IDS[comm_rank_slice(opt)])
    if opt.use_ema:  # (collective) the variables take their averages
        opt.finalize_variable_values(variables)
        for k, v in enumerate(gather_variables(variables)):
            out[f"final{k}"] = v
    return out


def comm_rank_slice(opt):
    # Each rank looks up a different (possibly empty) slice of LOOKUP_IDS.
    c = opt.comm
    per = -(-len(LOOKUP_IDS) // c.size)
    return slice(c.rank * per, (c.rank + 1) * per)
