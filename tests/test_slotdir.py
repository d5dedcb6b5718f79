"""Slots on disk (numbadam._slotdir) and the prefetch of lazy steps
(numbadam._prefetch).

An optimizer with ``slot_dir`` must take the same steps, bit for bit, as one
with its slots in memory (the twin in each test), keep each slot in its own
``.npy`` file, and refuse bad folders before anything changes.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
from collections import namedtuple

import numpy as np
import pytest

import numbadam
from numbadam import _prefetch, _slotdir
from numbadam._slotdir import MARKER, SlotDir

from helpers import assert_bitwise


def _grads(rng, step, table_shape, dense_shape):
    k = 6
    idx = rng.integers(0, table_shape[0], k)
    idx[-1] = idx[0]  # a duplicate
    gs = np.array(rng.standard_normal((k, table_shape[1])), np.float32)
    g = numbadam.IndexedSlices(gs, idx, table_shape)
    return g, np.array(rng.standard_normal(dense_shape), np.float32)


def _run(opt, table, w, steps, seed=0):
    rng = np.random.default_rng(seed)
    for s in range(steps):
        g, gw = _grads(rng, s, table.shape, w.shape)
        opt.apply_gradients([(g, table), (gw, w)])


@pytest.mark.parametrize(
    "kwargs",
    [
        {"sparse_mode": "lazy"},
        {"sparse_mode": "dense"},
        {"sparse_mode": "lazy", "amsgrad": True, "weight_decay": 0.01},
    ],
)
def test_memmapped_slots_take_the_same_steps(tmp_path, kwargs):
    rng = np.random.default_rng(1)
    table = np.array(rng.standard_normal((50, 3)), np.float32)
    w = np.array(rng.standard_normal((4, 5)), np.float32)
    t2, w2 = table.copy(), w.copy()
    opt = numbadam.Adam(0.01, slot_dir=tmp_path, **kwargs)
    twin = numbadam.Adam(0.01, **kwargs)
    _run(opt, table, w, 5)
    _run(twin, t2, w2, 5)
    assert_bitwise(table, t2, "table")
    assert_bitwise(w, w2, "w")
    names = ["m", "v"] + (["vhat"] if kwargs.get("amsgrad") else [])
    want = {MARKER} | {
        _slotdir.slot_file_name(i, n) for i in range(2) for n in names
    }
    assert set(os.listdir(tmp_path)) == want
    opt._slot_dir.flush()
    for i, (var, ref) in enumerate([(table, t2), (w, w2)]):
        for n in names:
            slot = opt.get_slot(var, n)
            assert type(slot) is np.ndarray and isinstance(slot.base, np.memmap)
            assert_bitwise(slot, twin.get_slot(ref, n), n)
            on_disk = np.load(tmp_path / _slotdir.slot_file_name(i, n))
            assert_bitwise(on_disk, slot, f"file of {n}")
    assert "slot_dir" not in opt.get_config()


def _unchanged(opt, w, before):
    assert opt._iterations is None
    assert opt.get_slot_names() == []
    assert_bitwise(w, before, "variable")


def _step(opt, w):
    opt.apply_gradients([(np.ones_like(w), w)])


def test_bad_folders_are_refused_at_construction(tmp_path):
    with pytest.raises(FileNotFoundError, match="slot_dir does not exist"):
        numbadam.Adam(slot_dir=tmp_path / "missing")
    (tmp_path / "f").write_text("x")
    with pytest.raises(NotADirectoryError, match="not a folder"):
        numbadam.Adam(slot_dir=tmp_path / "f")
    with pytest.raises(TypeError, match="slot_dir must be"):
        numbadam.Adam(slot_dir=3)
    opt = numbadam.Adam(slot_dir=tmp_path)
    _step(opt, np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="holds the slots of another optimizer"):
        numbadam.Adam(slot_dir=tmp_path)


@pytest.mark.skipif(
    not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can write anyway"
)
def test_read_only_folder(tmp_path):
    os.chmod(tmp_path, 0o500)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            numbadam.Adam(slot_dir=tmp_path)
    finally:
        os.chmod(tmp_path, 0o700)


def test_two_optimizers_on_one_folder(tmp_path):
    a = numbadam.Adam(slot_dir=tmp_path)
    b = numbadam.Adam(slot_dir=tmp_path)  # (neither has claimed it yet)
    _step(a, np.zeros(3, np.float32))
    w = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="now holds the slots of another"):
        _step(b, w)
    _unchanged(b, w, np.ones(3, np.float32))


@pytest.mark.parametrize("kind", ["file", "symlink", "folder", "fifo"])
def test_something_where_a_slot_file_goes(tmp_path, kind):
    target = tmp_path / _slotdir.slot_file_name(0, "v")
    if kind == "file":
        target.write_bytes(b"other run")
    elif kind == "symlink":
        target.symlink_to(tmp_path / "elsewhere")
    elif kind == "folder":
        target.mkdir()
    else:
        if not hasattr(os, "mkfifo"):
            pytest.skip("no FIFOs")
        os.mkfifo(target)
    opt = numbadam.Adam(slot_dir=tmp_path)
    w = np.ones(3, np.float32)
    with pytest.raises(FileExistsError, match="slot file would go"):
        _step(opt, w)
    _unchanged(opt, w, np.ones(3, np.float32))
    assert sorted(os.listdir(tmp_path)) == sorted(
        [target.name]
    )
    if kind == "file":
        assert target.read_bytes() == b"other run"


def test_full_disk_is_refused_first(tmp_path, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**6, 10**6, 1000))
    opt = numbadam.Adam(slot_dir=tmp_path)
    w = np.ones((100, 4), np.float32)  # 2 x 1600 bytes of slots
    with pytest.raises(OSError, match="bytes free") as info:
        _step(opt, w)
    assert info.value.errno == errno.ENOSPC
    _unchanged(opt, w, np.ones((100, 4), np.float32))
    assert os.listdir(tmp_path) == []
    with pytest.raises(OSError, match="bytes free"):
        opt.build([w])
    _unchanged(opt, w, np.ones((100, 4), np.float32))


def test_release_and_resume(tmp_path):
    folder = tmp_path / "slots"
    folder.mkdir()
    rng = np.random.default_rng(3)
    table = np.array(rng.standard_normal((30, 2)), np.float32)
    w = np.array(rng.standard_normal(7), np.float32)
    t2, w2 = table.copy(), w.copy()
    opt = numbadam.Adam(0.01, sparse_mode="lazy", slot_dir=folder)
    twin = numbadam.Adam(0.01, sparse_mode="lazy")
    _run(opt, table, w, 3)
    _run(twin, t2, w2, 3)
    numbadam.save_state_dir(tmp_path / "ckpt", opt, {"t": table, "w": w})
    del opt
    removed = numbadam.release_slot_dir(folder)
    assert removed[-1] == MARKER and len(removed) == 5
    assert os.listdir(folder) == []
    t3, w3 = np.zeros_like(table), np.zeros_like(w)
    again = numbadam.Adam(0.01, sparse_mode="lazy", slot_dir=folder)
    numbadam.load_state_dir(tmp_path / "ckpt", again, {"t": t3, "w": w3})
    assert isinstance(again.get_slot(t3, "m").base, np.memmap)
    _run(again, t3, w3, 4, seed=9)
    _run(twin, t2, w2, 4, seed=9)
    assert_bitwise(t3, t2, "table")
    assert_bitwise(again.get_slot(t3, "v"), twin.get_slot(t2, "v"), "v")
    with pytest.raises(FileNotFoundError, match="no numbadam-slots.json"):
        numbadam.release_slot_dir(tmp_path / "ckpt")


def test_buffer_slots_stay_in_memory(tmp_path):
    buf = numbadam.ParameterBuffer([(3,), (2,)])
    opt = numbadam.Adam(slot_dir=tmp_path)
    opt.apply_gradients(buf.grads_and_vars())
    assert [f for f in os.listdir(tmp_path) if f.startswith("slot-")] == []
    assert not isinstance(opt.get_slot(buf.params[0], "m").base, np.memmap)


# ---------------------------------------------------------------------------
# prefetch


def _memmap(tmp_path, shape, dtype=np.float32):
    return np.lib.format.open_memmap(tmp_path / "t.npy", "w+", dtype, shape)


def test_mapping_of_finds_the_offset(tmp_path):
    mm = _memmap(tmp_path, (64, 4))
    got = _prefetch.mapping_of(mm)
    assert isinstance(got[0], mmap.mmap)
    header = os.path.getsize(tmp_path / "t.npy") - mm.nbytes
    assert got[1] == header  # (open_memmap maps the file from offset 0)
    view = mm[10:].view(np.ndarray).reshape(-1)
    assert _prefetch.mapping_of(view)[1] == header + 10 * 16
    assert _prefetch.mapping_of(np.zeros(4)) is None


@pytest.mark.skipif(not _prefetch._HAS_MADVISE, reason="no mmap.madvise")
def test_willneed_merges_page_ranges(tmp_path, monkeypatch):
    page = mmap.PAGESIZE
    width = page // 4  # one row per page, float32
    mm = _memmap(tmp_path, (100, width))
    calls = []

    class Spy:
        def __init__(self, mm):
            self.mm = mm

        def __len__(self):
            return len(self.mm)

        def madvise(self, what, start, length):
            calls.append((what, start, length))
            self.mm.madvise(what, start, length)

    real, off = _prefetch.mapping_of(mm)
    rows = np.array([3, 4, 5, 40, 90])
    n = _prefetch.willneed_rows(mm, rows, (Spy(real), off))
    # each row spans its page and the next (the header shifts it by off bytes)
    lo = [(off + r * page) // page for r in rows]
    hi = [(off + (r + 1) * page - 1) // page + 1 for r in rows]
    want = [(lo[0], hi[2]), (lo[3], hi[3]), (lo[4], hi[4])]
    size = len(real)
    assert n == 3
    assert calls == [
        (mmap.MADV_WILLNEED, a * page, min(b * page, size) - a * page) for a, b in want
    ]


def test_prefetch_runs_before_lazy_steps(tmp_path, monkeypatch):
    seen = []
    real = _prefetch.willneed_rows

    def spy(a, rows, where=None):
        seen.append(rows.tolist())
        return real(a, rows, where)

    monkeypatch.setattr(_prefetch, "willneed_rows", spy)
    table = np.zeros((20, 2), np.float32)
    opt = numbadam.Adam(sparse_mode="lazy", slot_dir=tmp_path)
    g = numbadam.IndexedSlices(np.ones((3, 2), np.float32), [7, 2, 7], (20, 2))
    opt.apply_gradients([(g, table)])  # (slots are created by this step)
    seen.clear()
    opt.apply_gradients([(g, table)])
    assert seen == [[2, 7], [2, 7]]  # m and v: the table is in memory
