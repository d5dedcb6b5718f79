"""``numbadam demo --large DIR``: an embedding table larger than memory.

One embedding table ``T`` of ``rows x dim`` float32 (users in its first half,
items in its second) is trained as a dot-product recommender, ``pred =
T[u] . T[i]``, with a squared loss on ratings drawn on the fly: Zipf-distributed
ids (the popular rows scattered over the table by a fixed permutation) and a
planted rating made from a hash of each id, so nothing but the table and its
Adam state is stored. The table is a memory-mapped ``.npy`` file in ``DIR``;
the optimizer's slots live in memory-mapped files too (``slot_dir``), with the
row-wise second moment by default (``second_moment="row"``: ``dim + 1`` state
values per row instead of ``2 dim``); each step is a lazy sparse step that
touches only the batch's rows. A folder checkpoint is saved every few hundred
steps: one full save, then deltas of the rows changed since.

By default the table plus its state is sized to exceed this machine's memory
by 10%, and the run is refused (before anything is written) unless ``DIR``'s
file system has room for the live files and one full checkpoint. ``--quick``
runs a small version in seconds (CI runs it).
"""

from __future__ import annotations

import math
import os
import resource
import shutil
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Dict, List, Optional

import numpy as np

import numbadam

from ._common import DemoError, Reporter

__all__ = ["LargeSettings", "plan_large", "train_large", "zipf_ids", "planted"]

GIB = 1 << 30
_SPREAD = 1_000_000_007  # a prime: id -> id * _SPREAD % rows is a permutation
_LATENT = 4  # rank of the planted ratings
_PAGE = 4096


@dataclass(frozen=True)
class LargeSettings:
    """Sizes of the large demo.

    ``rows=None`` sizes the table so that table plus optimizer state is 10%
    larger than this machine's memory (:func:`plan_large`).

    Examples
    --------
    >>> from numbadam.cli.demo.large import LargeSettings
    >>> s = LargeSettings.quick()
    >>> s.rows, s.dim, s.second_moment
    (200000, 16, 'row')
    >>> s.state_bytes_per_row  # m per element, one v per row
    68
    """

    rows: Optional[int] = None
    dim: int = 64
    batch: int = 2048  # ratings per step: 2 * batch ids
    steps: int = 2000
    checkpoint_every: int = 300
    zipf: float = 1.05
    learning_rate: float = 0.01
    noise: float = 0.1
    second_moment: str = "row"
    seed: int = 0

    @classmethod
    def quick(cls, **overrides: Any) -> "LargeSettings":
        """A small configuration that runs in seconds."""
        base = cls(rows=200_000, dim=16, batch=1024, steps=120, checkpoint_every=40)
        return replace(base, **overrides)

    @property
    def table_bytes_per_row(self) -> int:
        return 4 * self.dim

    @property
    def state_bytes_per_row(self) -> int:
        if self.second_moment == "row":
            return 4 * self.dim + 4
        return 8 * self.dim


def _size(n: float) -> str:
    """``12.3 GiB`` or ``45.6 MiB``."""
    return f"{n / GIB:.1f} GiB" if n >= GIB else f"{n / 2**20:.1f} MiB"


def physical_memory() -> int:
    """Bytes of RAM of this machine (0 where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PAGE_SIZE")) * int(os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 0


@dataclass(frozen=True)
class LargePlan:
    """What :func:`plan_large` checked: sizes and the folders to use."""

    settings: LargeSettings
    folder: str
    live_bytes: int
    checkpoint_bytes: int
    free_bytes: int
    memory_bytes: int

    @property
    def table_path(self) -> str:
        return os.path.join(self.folder, "table.npy")

    @property
    def slot_dir(self) -> str:
        return os.path.join(self.folder, "slots")

    @property
    def checkpoint_dir(self) -> str:
        return os.path.join(self.folder, "checkpoint")


def plan_large(folder: str, settings: LargeSettings) -> LargePlan:
    """Size the run and check ``folder`` before anything is written.

    Raises
    ------
    DemoError
        If ``folder`` is not an empty or new folder whose parent exists, or
        its file system lacks room for the table, the optimizer state and one
        full checkpoint of both (with a 5% margin for the delta saves).
    """
    if settings.second_moment not in ("row", "element"):
        raise DemoError(
            f"second moment must be 'row' or 'element', got {settings.second_moment!r}"
        )
    folder = os.path.abspath(folder)
    parent = os.path.dirname(folder)
    if os.path.lexists(folder):
        if not os.path.isdir(folder) or os.path.islink(folder):
            raise DemoError(f"{folder} exists and is not a folder")
        if os.listdir(folder):
            raise DemoError(
                f"{folder} is not empty; the large demo needs a new or empty folder "
                "(it writes table.npy, slots/ and checkpoint/ there)"
            )
    elif not os.path.isdir(parent):
        raise DemoError(f"the parent folder of {folder} does not exist")
    memory = physical_memory()
    s = settings
    per_row = s.table_bytes_per_row + s.state_bytes_per_row
    if s.rows is None:
        if memory <= 0:
            raise DemoError("cannot tell this machine's memory: give --rows")
        rows = int(math.ceil(1.1 * memory / per_row / 1e6)) * 1_000_000
        s = replace(s, rows=rows)
    if s.rows < 2:
        raise DemoError(f"the table needs at least 2 rows, got {s.rows}")
    live = s.rows * per_row
    checkpoint = live  # the first save is full
    free = shutil.disk_usage(folder if os.path.isdir(folder) else parent).free
    need = int((live + checkpoint) * 1.05)
    if free < need:
        raise DemoError(
            f"{os.path.dirname(folder) if not os.path.isdir(folder) else folder} "
            f"has {free / GIB:.1f} GiB free; {s.rows:,} rows x {s.dim} float32 need "
            f"{live / GIB:.1f} GiB of table and optimizer state plus "
            f"{checkpoint / GIB:.1f} GiB for one full checkpoint (and 5% for "
            f"deltas): {need / GIB:.1f} GiB. Free some space, or pass a smaller "
            "--rows"
        )
    return LargePlan(s, folder, live, checkpoint, free, memory)


# ---------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------


def zipf_ids(rng: np.random.Generator, n: int, rows: int, a: float) -> np.ndarray:
    """``n`` ids in ``[0, rows)``: rank ``k`` drawn with weight ``~ k**-a``,
    rank mapped to a row by a fixed permutation (popular rows are scattered).

    Examples
    --------
    >>> import numpy as np
    >>> from numbadam.cli.demo.large import zipf_ids
    >>> ids = zipf_ids(np.random.default_rng(0), 10000, 1000, 1.1)
    >>> bool(ids.min() >= 0 and ids.max() < 1000)
    True
    >>> counts = np.bincount(ids, minlength=1000)
    >>> int(np.argmax(counts)) == 0  # rank 1 is row 0 (0 * prime % rows)
    True
    """
    u = rng.random(n)
    top = float(rows) + 1.0
    if abs(a - 1.0) < 1e-9:
        x = top**u
    else:
        e = 1.0 - a
        x = (1.0 + u * (top**e - 1.0)) ** (1.0 / e)
    rank = np.minimum(np.floor(x).astype(np.int64) - 1, rows - 1)
    return (rank * _SPREAD) % rows


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64's finaliser: a well-mixed 64-bit hash of each element
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def planted(ids: np.ndarray, seed: int) -> np.ndarray:
    """The planted ``(len(ids), 4)`` latent factors of rows ``ids``, in [-1, 1).

    A hash of the id and the seed: the same id always gets the same factors,
    and nothing has to be stored.
    """
    salt = np.uint64((seed * 0x632BE59BD9B4E019) & 0xFFFFFFFFFFFFFFFF)
    base = ids.astype(np.uint64) * np.uint64(_LATENT) + salt
    k = np.arange(_LATENT, dtype=np.uint64)
    h = _mix(base[:, None] + k[None, :])
    return (h >> np.uint64(11)).astype(np.float64) * (2.0 / 2.0**53) - 1.0


def _batch(rng: np.random.Generator, s: LargeSettings):
    half = s.rows // 2
    users = zipf_ids(rng, s.batch, half, s.zipf)
    items = half + zipf_ids(rng, s.batch, s.rows - half, s.zipf)
    pu, pi = planted(users, s.seed), planted(items, s.seed)
    rating = (pu * pi).sum(axis=1) * (3.0 / math.sqrt(_LATENT))
    rating += s.noise * rng.standard_normal(s.batch)
    return users, items, rating.astype(np.float32)


# ---------------------------------------------------------------------------
# process counters
# ---------------------------------------------------------------------------


def _resident() -> Dict[str, int]:
    """This process's resident memory: anonymous and file-backed bytes."""
    out = {"anon": 0, "file": 0}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    out["anon"] = int(line.split()[1]) * 1024
                elif line.startswith("RssFile:"):
                    out["file"] = int(line.split()[1]) * 1024
    except OSError:  # (not Linux)
        out["anon"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return out


def _row_pages(arr: Any, rows: np.ndarray) -> List[tuple]:
    """``(file, offset)`` of every 4 KiB page that rows ``rows`` of the
    memory-mapped ``arr`` occupy (nothing for an array not backed by a file)."""
    mm = arr if isinstance(arr, np.memmap) else getattr(arr, "base", None)
    name = getattr(mm, "filename", None)
    if name is None or not isinstance(mm, np.memmap):
        return []
    if arr.__array_interface__["data"][0] != mm.__array_interface__["data"][0]:
        return []  # (a view starting elsewhere in the file)
    offset = mm.offset
    per_row = arr.strides[0] if arr.ndim else arr.itemsize
    width = per_row if arr.ndim > 1 else arr.itemsize
    start = int(offset) + rows.astype(np.int64) * per_row
    first = start // _PAGE
    last = (start + width - 1) // _PAGE
    pages = np.unique(np.concatenate([first, last]))
    return [(name, int(p) * _PAGE) for p in pages]


def read_probe(pages: List[tuple], threads: int = 32) -> Optional[float]:
    """Seconds to read ``pages`` (``(file, offset)``, 4 KiB each) straight from
    the disk (``O_DIRECT``, ``threads`` reads in flight), or ``None`` where the
    file system does not allow direct reads (tmpfs, some overlays)."""
    import mmap
    from concurrent.futures import ThreadPoolExecutor

    flag = getattr(os, "O_DIRECT", None)
    if flag is None or not pages:
        return None
    fds: Dict[str, int] = {}
    try:
        for name, _ in pages:
            if name not in fds:
                fds[name] = os.open(name, os.O_RDONLY | flag)
        buffers = [mmap.mmap(-1, _PAGE) for _ in range(threads)]  # page-aligned

        def read(chunk_and_buf):
            chunk, buf = chunk_and_buf
            for name, off in chunk:
                os.preadv(fds[name], [buf], off)

        chunks = [(pages[k::threads], buffers[k]) for k in range(threads)]
        t0 = time.perf_counter()
        with ThreadPoolExecutor(threads) as pool:
            list(pool.map(read, chunks))
        return time.perf_counter() - t0
    except OSError:
        return None
    finally:
        for fd in fds.values():
            os.close(fd)


def _faults() -> int:
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_majflt)


# ---------------------------------------------------------------------------
# the run
# ---------------------------------------------------------------------------


def _init_table(path: str, s: LargeSettings, reporter: Reporter) -> np.ndarray:
    table = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32,
                                      shape=(s.rows, s.dim))  # fmt: skip
    rng = np.random.default_rng(s.seed)
    chunk = max(1, (64 << 20) // (4 * s.dim))
    bar = reporter.bar((s.rows + chunk - 1) // chunk, "initialising table")
    scale = np.float32(1.0 / math.sqrt(s.dim))
    for k, start in enumerate(range(0, s.rows, chunk)):
        stop = min(start + chunk, s.rows)
        block = rng.standard_normal((stop - start, s.dim), dtype=np.float32)
        table[start:stop] = block * scale
        if bar.due(k):
            bar.update(k + 1, "")
    bar.close()
    table.flush()
    return table


def _optimizer(plan: LargePlan) -> Any:
    s = plan.settings
    return numbadam.Adam(
        learning_rate=s.learning_rate,
        sparse_mode="lazy",
        second_moment=s.second_moment,
        slot_dir=plan.slot_dir,
    )


def _save(opt: Any, table: np.ndarray, plan: LargePlan, full: bool) -> Any:
    # the first save is full, then deltas of the rows the steps marked dirty;
    # no second full save, which would need room for two checkpoints at once
    return numbadam.save_state_dir(
        plan.checkpoint_dir, opt, [table], full=full, full_every=1 << 30
    )


def _step(opt: Any, table: np.ndarray, batch: tuple, s: LargeSettings) -> float:
    """One lazy Adam step on a batch; the batch's loss before the step."""
    users, items, rating = batch
    eu, ei = table[users], table[items]
    err = np.einsum("ij,ij->i", eu, ei) - rating
    scale = (2.0 / s.batch) * err[:, None]
    grad = numbadam.IndexedSlices(
        np.concatenate([scale * ei, scale * eu]).astype(np.float32),
        np.concatenate([users, items]),
        table.shape,
    )
    opt.apply_gradients([(grad, table)])
    return float(np.mean(err * err))


def _probe(opt: Any, table: np.ndarray, rng: Any, s: LargeSettings, n: int):
    # n more steps, each after a direct (uncached) read of the pages its rows
    # occupy in the table and slot files: step time vs the disk's time
    steps, reads = [], []
    arrays = [table] + [opt.get_slot(table, name) for name in opt.get_slot_names()]
    for _ in range(n):
        batch = _batch(rng, s)
        rows = np.unique(np.concatenate(batch[:2]))
        pages = [p for a in arrays for p in _row_pages(a, rows)]
        t_read = read_probe(pages)
        t0 = time.perf_counter()
        _step(opt, table, batch, s)
        steps.append(time.perf_counter() - t0)
        if t_read is not None:
            reads.append(t_read)
    return {
        "step_seconds": float(np.median(steps)) if steps else None,
        "read_seconds": float(np.median(reads)) if reads else None,
        "pages": len(pages) if n else 0,
    }


def train_large(plan: LargePlan, reporter: Reporter) -> Dict[str, Any]:
    """Train the table of ``plan`` (see :func:`plan_large`) and report.

    Returns
    -------
    dict
        ``settings``, ``steps_per_second``, the loss of the first and the last
        checkpoint interval, resident memory (anonymous and file-backed, the
        largest seen), major page faults, and each checkpoint save (kind,
        bytes, seconds).
    """
    s = plan.settings
    os.makedirs(plan.folder, exist_ok=True)
    os.makedirs(plan.slot_dir, exist_ok=True)
    reporter.note(
        f"Large demo: {s.rows:,} rows x {s.dim} float32 ({_size(plan.live_bytes)} "
        f"of table and {s.second_moment}-wise Adam state; "
        f"{_size(plan.memory_bytes)} of RAM, {_size(plan.free_bytes)} "
        f"free in {plan.folder})"
    )
    table = _init_table(plan.table_path, s, reporter)
    opt = _optimizer(plan)
    rng = np.random.default_rng(s.seed + 1)
    saves: List[Dict[str, Any]] = []
    losses: List[float] = []
    interval: List[float] = []
    peak = {"anon": 0, "file": 0}
    faults0 = _faults()
    bar = reporter.bar(s.steps, "training")
    t0 = time.perf_counter()
    train_seconds = 0.0
    for step in range(s.steps):
        ts = time.perf_counter()
        interval.append(_step(opt, table, _batch(rng, s), s))
        train_seconds += time.perf_counter() - ts
        last = step + 1 == s.steps
        if (step + 1) % s.checkpoint_every == 0 or last:
            info = _save(opt, table, plan, full=not saves)
            saves.append({"step": step + 1, "kind": info.kind,
                          "bytes": info.bytes_written,
                          "seconds": round(info.seconds, 3)})  # fmt: skip
            losses.append(float(np.mean(interval)))
            interval = []
        res = _resident()
        peak = {k: max(peak[k], res[k]) for k in peak}
        if bar.due(step):
            rate = (step + 1) / max(train_seconds, 1e-9)
            bar.update(
                step + 1,
                f"{rate:.0f} steps/s, RSS anon {res['anon'] / GIB:.2f} GiB, "
                f"file {res['file'] / GIB:.2f} GiB, {_faults() - faults0} major faults",
            )
    bar.close()
    wall = time.perf_counter() - t0
    probe = _probe(opt, table, rng, s, 5)
    out = {
        "settings": asdict(s),
        "steps": s.steps,
        "steps_per_second": s.steps / max(train_seconds, 1e-9),
        "wall_seconds": wall,
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "rss_anon_peak": peak["anon"],
        "rss_file_peak": peak["file"],
        "major_faults": _faults() - faults0,
        "saves": saves,
        "probe": probe,
    }
    reporter.line(f"{'saved at step':>13}  {'kind':>6}  {'MiB':>9}  {'seconds':>8}")
    for sv in saves:
        reporter.line(
            f"{sv['step']:>13}  {sv['kind']:>6}  {sv['bytes'] / 2**20:>9.1f}  "
            f"{sv['seconds']:>8.2f}"
        )
    reporter.note(
        f"{out['steps_per_second']:.1f} steps/s over {s.steps} steps of "
        f"{2 * s.batch} ids; loss {out['first_loss']:.4f} (first "
        f"{s.checkpoint_every} steps) -> {out['last_loss']:.4f} (last); resident "
        f"memory at most {_size(peak['anon'])} anonymous + "
        f"{_size(peak['file'])} of mapped file pages; "
        f"{out['major_faults']} major page faults"
    )
    if probe["read_seconds"]:
        reporter.note(
            f"Disk probe: a step took {probe['step_seconds'] * 1e3:.1f} ms; reading "
            f"its {probe['pages']} pages straight from the disk (4 KiB random "
            f"reads, 32 in flight) {probe['read_seconds'] * 1e3:.1f} ms: "
            f"{probe['step_seconds'] / probe['read_seconds']:.2f}x"
        )
    else:
        reporter.note("Disk probe: direct reads are not possible here; skipped")
    return out
