"""Folder checkpoints with delta saves (numbadam._statedir).

Round trips are compared bit for bit with the arrays saved (kept independently
in the test); corrupt folders must raise CheckpointError naming the file; a
save killed (SIGKILL) at every file-system step must leave the old or the new
checkpoint, and the next save must leave no stray file.
"""

from __future__ import annotations

import errno
import io
import itertools
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from numbadam import _statedir, _statedir_io
from numbadam.checkpoint import CheckpointError

ROOT = Path(__file__).resolve().parent.parent
DTYPES = ["<f2", "<f4", "<f8", ">f4", "<i1", "<i4", "<i8", "|u1", "<u8", "|b1", "<c8"]


def _random(shape, dtype, rng) -> np.ndarray:
    """Random bits of ``dtype`` (NaN payloads, -0.0, subnormals included)."""
    dt = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dt.itemsize
    raw = rng.integers(0, 256, n, dtype=np.uint8)
    if dt.kind == "b":
        raw &= 1
    return raw.view(dt).reshape(shape).copy()


def _same(got: dict, want: dict) -> None:
    assert list(got) == list(want)
    for k in want:
        g, w = got[k], want[k]
        assert g.dtype == w.dtype and g.shape == w.shape, k
        assert np.ascontiguousarray(g).tobytes() == w.tobytes(), k


def _copy(arrays: dict) -> dict:
    return {k: np.array(v, copy=True) for k, v in arrays.items()}


def _listing(folder) -> set:
    return set(os.listdir(folder))


def _manifest(folder) -> dict:
    return json.loads((Path(folder) / "manifest.json").read_text())


def _clean(folder) -> None:
    """The folder holds the manifest and exactly the files it lists."""
    assert _listing(folder) == {"manifest.json"} | _statedir_io.referenced(
        _manifest(folder)
    )


def _state(rng) -> dict:
    return {
        "table": _random((40, 6), "<f4", rng),
        "vec": _random((30,), "<f8", rng),
        "half": _random((5, 2, 3), "<f2", rng),
        "step": np.array(7, np.int64),
        "empty": np.zeros((0, 3), np.float16),
    }


def _touch(arrays: dict, rng, n=3, skip=()) -> dict:
    """Change ``n`` random rows of every non-empty array: the dirty masks."""
    dirty = {}
    for k, a in arrays.items():
        rows = _statedir_io.rows_of(a)
        if not rows.shape[0] or k in skip:
            dirty[k] = None
            continue
        mask = np.zeros(rows.shape[0], bool)
        mask[rng.integers(0, rows.shape[0], n)] = True
        rows[mask] = _random(rows[mask].shape, a.dtype, rng)
        dirty[k] = mask
    return dirty


# ---------------------------------------------------------------------------
# round trips
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("mmap_mode", ["c", "r", None])
def test_full_round_trip_is_bitwise(tmp_path, mmap_mode):
    rng = np.random.default_rng(0)
    arrays = {f"a{i}-{dt}": _random((7, 3), dt, rng) for i, dt in enumerate(DTYPES)}
    arrays.update(
        scalar=_random((), "<f8", rng),
        empty=np.zeros((0, 4), np.float32),
        no_columns=np.zeros((3, 0), np.float64),
        cube=_random((2, 3, 4), "<f2", rng),
        vector=_random((11,), "<i4", rng),
    )
    want = _copy(arrays)
    meta = {"epoch": 3, "loss": [0.5, 0.25], "name": "ünï"}
    info = _statedir.save(tmp_path / "ck", arrays, meta)
    assert info.kind == "full" and info.files[-1] == "manifest.json"
    assert info.bytes_written == sum(
        (tmp_path / "ck" / f).stat().st_size for f in info.files
    )
    got_meta, got = _statedir.load(tmp_path / "ck", mmap_mode)
    assert got_meta == meta
    _same(got, want)
    for k, a in got.items():
        if a.size and mmap_mode is not None:
            assert isinstance(a, np.memmap), k
        if mmap_mode == "r":
            assert not a.flags.writeable
        else:
            assert a.flags.writeable
    _clean(tmp_path / "ck")


def test_copy_on_write_never_changes_the_files(tmp_path):
    rng = np.random.default_rng(1)
    arrays = _state(rng)
    _statedir.save(tmp_path, arrays, {})
    dirty = _touch(arrays, rng)
    _statedir.save(tmp_path, arrays, {}, dirty=dirty)
    want = _copy(arrays)
    _, got = _statedir.load(tmp_path)  # deltas replayed over private pages
    for a in got.values():
        a[...] = 0
    _, again = _statedir.load(tmp_path, None, verify=True)  # base checksums hold
    _same(again, want)


def test_deltas_rollover_and_cleanup(tmp_path):
    rng = np.random.default_rng(2)
    arrays = _state(rng)
    kinds = [_statedir.save(tmp_path, arrays, {"i": 0}, full_every=3).kind]
    for i in range(1, 9):
        dirty = _touch(arrays, rng, n=2, skip=["vec"])  # vec: unchanged
        info = _statedir.save(tmp_path, arrays, {"i": i}, dirty=dirty, full_every=3)
        kinds.append(info.kind)
        meta, got = _statedir.load(tmp_path)
        assert meta == {"i": i}
        _same(got, arrays)
        _clean(tmp_path)
        deltas = [d for a in _manifest(tmp_path)["arrays"] for d in a["deltas"]]
        if info.kind == "full":
            assert not deltas and len(info.removed) > 0
    assert kinds == ["full", "delta", "delta", "delta"] * 2 + ["full"]


def test_changed_layout_forces_a_full_save(tmp_path):
    rng = np.random.default_rng(3)
    arrays = _state(rng)
    _statedir.save(tmp_path, arrays, {})
    none = {k: None for k in arrays}
    assert _statedir.save(tmp_path, arrays, {}, dirty=none).kind == "delta"
    assert _statedir.save(tmp_path, arrays, {}, dirty=none, full=True).kind == "full"
    assert _statedir.save(tmp_path, arrays, {}).kind == "full"  # dirty=None
    changes = [
        ("table", np.zeros((41, 6), np.float32)),  # shape
        ("table", np.zeros((40, 6), np.float64)),  # dtype
        ("extra", np.ones(3)),  # a new name
    ]
    for name, value in changes:
        new = dict(arrays, **{name: value})
        info = _statedir.save(tmp_path, new, {}, dirty={k: None for k in new})
        assert info.kind == "full"
        _same(_statedir.load(tmp_path)[1], new)
        _clean(tmp_path)
    reordered = dict(reversed(list(arrays.items())))
    info = _statedir.save(tmp_path, reordered, {}, dirty={k: None for k in arrays})
    assert info.kind == "full"
    _same(_statedir.load(tmp_path)[1], reordered)


def test_delta_bytes_follow_the_touched_rows(tmp_path):
    rng = np.random.default_rng(4)
    table = _random((20000, 16), "<f4", rng)
    other = _random((5000,), "<f8", rng)
    full = _statedir.save(tmp_path, {"t": table, "o": other}, {})
    assert full.bytes_written >= table.nbytes + other.nbytes
    mask = np.zeros(20000, bool)
    mask[rng.integers(0, 20000, 50)] = True
    table[mask] = _random(table[mask].shape, "<f4", rng)
    info = _statedir.save(
        tmp_path, {"t": table, "o": other}, {}, dirty={"t": mask, "o": None}
    )
    touched = int(mask.sum()) * (16 * 4 + 8)  # rows and their indices
    assert info.kind == "delta"
    assert touched <= info.bytes_written <= 2 * touched + 4096
    assert info.bytes_written == sum((tmp_path / f).stat().st_size for f in info.files)
    _same(_statedir.load(tmp_path)[1], {"t": table, "o": other})
    # everything dirty: a full save is no bigger than the delta would be
    everything = _statedir.save(
        tmp_path,
        {"t": table, "o": other},
        {},
        dirty={"t": np.ones(20000, np.uint8), "o": None},
    )
    assert everything.kind == "full"


def test_zero_d_arrays_as_one_row(tmp_path):
    arrays = {
        "s": np.array(1.5, np.float32),
        "i": np.array(3, np.int64),
        "big": np.zeros(100),  # unchanged: else a full save would be as small
    }
    _statedir.save(tmp_path, arrays, {})
    arrays["s"][...] = -0.0
    arrays["i"][...] = 9
    dirty = {"s": np.array(True), "i": np.ones(1, np.uint8), "big": None}
    assert _statedir.save(tmp_path, arrays, {}, dirty=dirty).kind == "delta"
    _same(_statedir.load(tmp_path)[1], arrays)


# ---------------------------------------------------------------------------
# bad arguments: nothing written
# ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        (dict(dirty={"w": np.zeros(4, bool)}), ValueError, "missing"),
        (dict(dirty={"w": None, "v": None, "x": None}), ValueError, "unknown"),
        (dict(dirty={"w": np.zeros(3, bool), "v": None}), ValueError, r"\(4,\)"),
        (dict(dirty={"w": np.zeros(4, np.int32), "v": None}), TypeError, "int32"),
        (dict(dirty=[1]), TypeError, "mapping"),
        (dict(meta=[]), TypeError, "meta must be a dict"),
        (dict(meta={"x": object()}), ValueError, "JSON"),
        (dict(full_every=-1), ValueError, "full_every"),
        (dict(arrays={"w": [1.0]}), TypeError, "not an ndarray"),
        (dict(arrays={"w": np.array(["a"])}), ValueError, "not numeric"),
        (dict(arrays={1: np.ones(2)}), TypeError, "strings"),
        (dict(arrays=[np.ones(2)]), TypeError, "mapping"),
    ],
)
def test_bad_arguments_write_nothing(tmp_path, kwargs, exc, match):
    arrays = {"w": np.ones((4, 2)), "v": np.ones(3, np.float32)}
    _statedir.save(tmp_path, arrays, {"old": True})
    before = {f: (tmp_path / f).read_bytes() for f in _listing(tmp_path)}
    args = {"arrays": arrays, "meta": {"new": True}}
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        _statedir.save(tmp_path, args.pop("arrays"), args.pop("meta"), **args)
    assert {f: (tmp_path / f).read_bytes() for f in _listing(tmp_path)} == before


def test_bad_paths(tmp_path):
    (tmp_path / "file").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="not a folder"):
        _statedir.save(tmp_path / "file", {}, {})
    with pytest.raises(CheckpointError, match="not a folder"):
        _statedir.load(tmp_path / "file")
    with pytest.raises(FileNotFoundError):
        _statedir.load(tmp_path / "missing")
    with pytest.raises(FileNotFoundError):
        _statedir.save(tmp_path / "no" / "parent", {}, {})
    with pytest.raises(CheckpointError, match="manifest.json: is missing"):
        _statedir.load(tmp_path)
    with pytest.raises(ValueError, match="mmap_mode"):
        _statedir.load(tmp_path, "r+")


def test_foreign_folders_are_left_alone(tmp_path):
    (tmp_path / "manifest.json").write_text('{"format": "numbadam.sharded/1"}')
    (tmp_path / "shard-00000-of-00001.npz").write_bytes(b"x")
    with pytest.raises(CheckpointError, match="left alone"):
        _statedir.save(tmp_path, {"w": np.ones(2)}, {})
    (tmp_path / "manifest.json").write_text("not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        _statedir.save(tmp_path, {"w": np.ones(2)}, {})
    assert _listing(tmp_path) == {"manifest.json", "shard-00000-of-00001.npz"}
    # files that only look like ours are kept; the manifest's mode is kept
    other = tmp_path / "other"
    other.mkdir()
    keep = ["notes.txt", "base-1-2-3.npy", "delta-00000001-ABCDEF12-00000-rows.npy"]
    for name in keep:
        (other / name).write_bytes(b"mine")
    _statedir.save(other, {"w": np.ones(2)}, {})
    os.chmod(other / "manifest.json", 0o600)
    info = _statedir.save(other, {"w": np.ones(2)}, {})
    assert all((other / n).read_bytes() == b"mine" for n in keep)
    for name in info.files:
        assert stat.S_IMODE((other / name).stat().st_mode) == 0o600
    os.remove(other / "manifest.json")
    os.symlink(other / info.files[0], other / "manifest.json")
    with pytest.raises(CheckpointError, match="symbolic link"):
        _statedir.save(other, {"w": np.ones(2)}, {})


@pytest.mark.skipif(_statedir_io.fcntl is None, reason="no flock on this platform")
def test_a_save_while_another_holds_the_folder_writes_nothing(tmp_path):
    # Another process in the middle of a save (it holds the folder's lock):
    # a second save refuses at once, before reading or removing anything, and
    # the folder keeps its checkpoint; once the lock is free, saves go on.
    first = {"w": np.arange(6.0).reshape(3, 2)}
    _statedir.save(tmp_path, first, {"n": 1})
    (tmp_path / "base-00000009-deadbeef-00000.npy").write_bytes(b"stray")
    before = {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)}
    holder = textwrap.dedent(
        f"""
        import fcntl, os, sys
        fd = os.open({str(tmp_path)!r}, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        sys.stdin.readline()
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", holder], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
        text=True,
    )  # fmt: skip
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(CheckpointError, match="another save into this folder"):
            _statedir.save(tmp_path, {"w": np.zeros((3, 2))}, {"n": 2})
        assert {n: (tmp_path / n).read_bytes() for n in os.listdir(tmp_path)} == before
        meta, got = _statedir.load(tmp_path, None)
        assert meta == {"n": 1}
        _same(got, first)
    finally:
        proc.stdin.write("\n")
        proc.stdin.close()
        proc.wait(timeout=60)
    info = _statedir.save(tmp_path, {"w": np.zeros((3, 2))}, {"n": 2})
    assert "base-00000009-deadbeef-00000.npy" in info.removed
    assert _statedir.load(tmp_path, None)[0] == {"n": 2}


@pytest.mark.skipif(_statedir_io.fcntl is None, reason="no flock on this platform")
def test_overlapping_saves_in_one_process_refuse(tmp_path, monkeypatch):
    # A save that starts while another one (another thread) is writing its
    # files is refused; the first completes and its checkpoint loads.
    arrays = {"a": np.ones((4, 2)), "b": np.full(3, 2.0)}
    seen = []
    real = _statedir_io.write_array

    def write_array(folder, name, *args, **kwargs):
        if not seen:
            with pytest.raises(CheckpointError, match="in progress") as exc:
                _statedir.save(tmp_path, {"a": np.zeros((4, 2))}, {"who": "second"})
            seen.append(exc.value)
        return real(folder, name, *args, **kwargs)

    monkeypatch.setattr(_statedir, "write_array", write_array)
    _statedir.save(tmp_path, arrays, {"who": "first"})
    assert len(seen) == 1 and seen[0].path == os.fspath(tmp_path)
    meta, got = _statedir.load(tmp_path, None)
    assert meta == {"who": "first"}
    _same(got, arrays)


def test_strays_and_broken_checkpoints_are_replaced(tmp_path):
    arrays = {"w": np.arange(12.0).reshape(4, 3)}
    _statedir.save(tmp_path, arrays, {})
    strays = [
        "base-00000009-deadbeef-00000.npy",
        "delta-00000009-deadbeef-00000-data.npy",
        ".manifest.json.deadbeef.tmp",
    ]
    for name in strays:
        (tmp_path / name).write_bytes(b"left by a crash")
    info = _statedir.save(tmp_path, arrays, {}, dirty={"w": None})
    assert info.kind == "delta" and set(strays) <= set(info.removed)
    _clean(tmp_path)
    os.remove(tmp_path / _manifest(tmp_path)["arrays"][0]["file"]["name"])
    info = _statedir.save(tmp_path, arrays, {}, dirty={"w": None})
    assert info.kind == "full"  # the old one was broken
    _same(_statedir.load(tmp_path)[1], arrays)
    _clean(tmp_path)


# ---------------------------------------------------------------------------
# corrupt folders
# ---------------------------------------------------------------------------


def _checkpoint(folder: Path) -> dict:
    """A base save and one delta: {"w": (10, 3) float32, "s": 0-d}."""
    arrays = {"w": np.arange(30, dtype=np.float32).reshape(10, 3), "s": np.array(2.0)}
    _statedir.save(folder, arrays, {"m": 1})
    arrays["w"][[2, 5]] = -1
    _statedir.save(
        folder, arrays, {"m": 2}, dirty={"w": np.isin(np.arange(10), [2, 5]), "s": None}
    )
    return _manifest(folder)


def _edit_manifest(folder: Path, edit) -> None:
    doc = _manifest(folder)
    edit(doc)
    (folder / "manifest.json").write_text(json.dumps(doc))


def _rewrite(folder: Path, name: str, array: np.ndarray) -> None:
    """Replace a listed file by ``array``, its size and checksum updated."""
    np.save(folder / name, array, allow_pickle=False)
    data = (folder / name).read_bytes()

    def edit(doc):
        for f in _statedir_io.files_of(doc):
            if f["name"] == name:
                f.update(size=len(data), crc32=zlib.crc32(data))

    _edit_manifest(folder, edit)


def _base(doc):
    return doc["arrays"][0]["file"]["name"]


def _rows(doc):
    return doc["arrays"][0]["deltas"][0]["rows"]["name"]


def _data(doc):
    return doc["arrays"][0]["deltas"][0]["data"]["name"]


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x40
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:-4])


def _object_array(path: Path) -> None:
    """An .npy file of the right shape whose dtype is object (pickles)."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|O", "fortran_order": False, "shape": (10, 3)}
    )
    path.write_bytes(header.getvalue() + bytes(240))


def _fifo(path: Path) -> None:
    os.remove(path)
    os.mkfifo(path)


def _link(path: Path) -> None:
    data = path.read_bytes()
    os.remove(path)
    (path.parent / "real.npy").write_bytes(data)
    os.symlink(path.parent / "real.npy", path)


def _set(*keys_value):
    *keys, value = keys_value

    def edit(doc):
        d = doc
        for k in keys[:-1]:
            d = d[k]
        d[keys[-1]] = value

    return lambda folder, doc: _edit_manifest(folder, edit)


CORRUPT = {
    "manifest not JSON": (
        lambda f, d: (f / "manifest.json").write_text("{"),
        "manifest.json",
    ),
    "manifest truncated": (
        lambda f, d: _truncate(f / "manifest.json"),
        "manifest.json",
    ),
    "manifest a list": (
        lambda f, d: (f / "manifest.json").write_text("[]"),
        "manifest.json",
    ),
    "manifest a FIFO": (lambda f, d: _fifo(f / "manifest.json"), "manifest.json"),
    "manifest a link": (lambda f, d: _link(f / "manifest.json"), "manifest.json"),
    "format": (_set("format", "other"), "manifest.json"),
    "version": (_set("version", 2), "manifest.json"),
    "meta": (_set("meta", [1]), "manifest.json"),
    "shape": (_set("arrays", 0, "shape", "10"), "manifest.json"),
    "dtype": (_set("arrays", 0, "dtype", "O"), "manifest.json"),
    "bad dtype": (_set("arrays", 0, "dtype", "float99"), "manifest.json"),
    "size": (_set("arrays", 0, "file", "size", -1), "manifest.json"),
    "file name": (_set("arrays", 0, "file", "name", "../x.npy"), "manifest.json"),
    "deltas": (_set("arrays", 0, "deltas", {}), "manifest.json"),
    "count": (_set("arrays", 0, "deltas", 0, "count", 11), "manifest.json"),
    "duplicate name": (_set("arrays", 1, "name", "w"), "manifest.json"),
    "arrays": (_set("arrays", None), "manifest.json"),
    "generation": (_set("generation", True), "manifest.json"),
    "base missing": (lambda f, d: os.remove(f / _base(d)), "base"),
    "base truncated": (lambda f, d: _truncate(f / _base(d)), "base"),
    "base header": (lambda f, d: _flip(f / _base(d), 30), "base"),
    "base a FIFO": (lambda f, d: _fifo(f / _base(d)), "base"),
    "base a link": (lambda f, d: _link(f / _base(d)), "base"),
    "base shape": (
        lambda f, d: _rewrite(f, _base(d), np.zeros((3, 10), np.float32)),
        "base",
    ),
    "base pickle": (lambda f, d: _object_array(f / _base(d)), "base"),
    "delta data flipped": (lambda f, d: _flip(f / _data(d), 130), "data"),
    "delta rows missing": (lambda f, d: os.remove(f / _rows(d)), "rows"),
    "delta rows a link": (lambda f, d: _link(f / _rows(d)), "rows"),
    "rows out of range": (
        lambda f, d: _rewrite(f, _rows(d), np.array([2, 10])),
        "rows",
    ),
    "rows negative": (lambda f, d: _rewrite(f, _rows(d), np.array([-1, 5])), "rows"),
    "rows repeated": (lambda f, d: _rewrite(f, _rows(d), np.array([5, 5])), "rows"),
    "rows dtype": (
        lambda f, d: _rewrite(f, _rows(d), np.array([2, 5], np.int32)),
        "rows",
    ),
    "data shape": (
        lambda f, d: _rewrite(f, _data(d), np.zeros((2, 4), np.float32)),
        "data",
    ),
}


@pytest.mark.parametrize("case", sorted(CORRUPT))
def test_corrupt_folders_raise_naming_the_file(tmp_path, case):
    doc = _checkpoint(tmp_path)
    corrupt, which = CORRUPT[case]
    corrupt(tmp_path, doc)
    name = {"base": _base(doc), "rows": _rows(doc), "data": _data(doc)}.get(
        which, which
    )
    for mode in ("c", None):
        with pytest.raises(CheckpointError) as info:
            _statedir.load(tmp_path, mode)
        assert info.value.path == str(tmp_path / name), info.value


def test_base_checksum_with_verify(tmp_path):
    doc = _checkpoint(tmp_path)
    _flip(tmp_path / _base(doc), 200)  # data, not header
    _statedir.load(tmp_path)  # mapped: sizes and headers only
    for kwargs in ({"mmap_mode": None}, {"verify": True}):
        with pytest.raises(CheckpointError, match="checksum"):
            _statedir.load(tmp_path, **kwargs)


# ---------------------------------------------------------------------------
# failures and crashes
# ---------------------------------------------------------------------------


def _events(save) -> list:
    seen = []
    _statedir_io._fault = lambda what, name: seen.append((what, name))
    try:
        save()
    finally:
        _statedir_io._fault = None
    return seen


def test_an_error_at_any_step_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    rng = np.random.default_rng(5)
    arrays = _state(rng)
    folder = tmp_path / "ck"
    _statedir.save(folder, arrays, {"v": 0})
    old = _copy(arrays)
    dirty = _touch(arrays, rng)
    monkeypatch.setattr(_statedir_io, "_CHUNK", 64)
    for full in (False, True):
        before = {f: (folder / f).read_bytes() for f in _listing(folder)}
        probe = tmp_path / f"probe-{full}"
        shutil.copytree(folder, probe)
        steps = _events(
            lambda p=probe, f=full: _statedir.save(p, arrays, {}, dirty=dirty, full=f)
        )
        replace = [w for w, _ in steps].index("replace")
        for k in range(replace + 1):
            calls = itertools.count()

            def fault(what, name, calls=calls, k=k):
                if next(calls) == k:
                    raise OSError(errno.ENOSPC, "No space left on device")

            monkeypatch.setattr(_statedir_io, "_fault", fault)
            with pytest.raises(OSError, match="previous checkpoint is unchanged"):
                _statedir.save(folder, arrays, {"v": 1}, dirty=dirty, full=full)
            monkeypatch.setattr(_statedir_io, "_fault", None)
            assert {f: (folder / f).read_bytes() for f in _listing(folder)} == before
        meta, got = _statedir.load(folder)
        assert meta == {"v": 0}
        _same(got, old)


CRASH_DRIVER = textwrap.dedent(
    """
    import os, shutil, signal, sys
    import numpy as np
    from numbadam import _statedir, _statedir_io

    root, scenario = sys.argv[1], sys.argv[2]
    with np.load(os.path.join(root, "new.npz"), allow_pickle=False) as z:
        data = {k: z[k] for k in z.files}
    arrays = {k[2:]: v for k, v in data.items() if k.startswith("a_")}
    dirty = {k: data.get("m_" + k) for k in arrays}
    _statedir_io._CHUNK = 64  # many writes per file: kills inside files too
    n = 0
    while True:
        target = os.path.join(root, f"{scenario}-{n:04d}")
        shutil.copytree(os.path.join(root, "template"), target)
        pid = os.fork()
        if pid == 0:
            seen = [0]

            def fault(what, name):
                if seen[0] == n:
                    os.kill(os.getpid(), signal.SIGKILL)
                seen[0] += 1

            _statedir_io._fault = fault
            try:
                _statedir.save(target, arrays, {"v": "new"}, dirty=dirty,
                               full=scenario == "full")
            except BaseException:
                os._exit(3)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0:
            break  # the save ran to the end: every step has been a kill point
        if not (os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL):
            sys.exit(f"point {n}: the child ended with status {status}")
        n += 1
    print(n)
    """
)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
@pytest.mark.parametrize("scenario", ["delta", "full"])
def test_sigkill_at_every_step(tmp_path, scenario):
    rng = np.random.default_rng(6)
    arrays = _state(rng)
    template = tmp_path / "template"
    _statedir.save(template, arrays, {"v": "start"})
    _statedir.save(template, arrays, {"v": "old"}, dirty=_touch(arrays, rng))
    old = _copy(arrays)
    dirty = _touch(arrays, rng)
    new = _copy(arrays)
    payload = {f"a_{k}": v for k, v in new.items()}
    payload.update({f"m_{k}": m for k, m in dirty.items() if m is not None})
    np.savez(tmp_path / "new.npz", **payload)
    (tmp_path / "driver.py").write_text(CRASH_DRIVER)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    run = subprocess.run(
        [sys.executable, str(tmp_path / "driver.py"), str(tmp_path), scenario],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr
    points = int(run.stdout.split()[-1])
    assert points > 20
    outcomes, partial = [], 0
    for n in range(points + 1):
        folder = tmp_path / f"{scenario}-{n:04d}"
        meta, got = _statedir.load(folder)
        listed = {"manifest.json"} | _statedir_io.referenced(_manifest(folder))
        partial += any(  # a file the kill cut short
            (folder / f).stat().st_size % 64 and f not in listed
            for f in _listing(folder)
        )
        outcomes.append(meta["v"])
        _same(got, {"old": old, "new": new}[meta["v"]])
        # the next save (a delta to the new state) leaves no stray file
        redo = dirty if meta["v"] == "old" else {k: None for k in new}
        _statedir.save(folder, new, {"v": "after"}, dirty=redo)
        assert _statedir.load(folder)[0] == {"v": "after"}
        _same(_statedir.load(folder, None)[1], new)
        _clean(folder)
    # the switch happens once, at the manifest's replacement
    switch = outcomes.index("new")
    assert outcomes == ["old"] * switch + ["new"] * (points + 1 - switch)
    assert 0 < switch < points
    assert partial > 0


# ---------------------------------------------------------------------------
# property: any sequence of row updates and saves loads as the final arrays
# ---------------------------------------------------------------------------


@st.composite
def _histories(draw):
    dtype = draw(st.sampled_from(["<f2", "<f4", "<f8", "<i4"]))
    nrows = draw(st.integers(0, 12))
    cols = draw(st.sampled_from([(), (1,), (3,), (2, 2)]))
    steps = draw(
        st.lists(
            st.tuples(
                st.lists(st.integers(0, max(nrows - 1, 0)), max_size=5),  # rows
                st.booleans(),  # also update the scalar
                st.booleans(),  # full=True
                st.sampled_from(["c", None]),  # how to load afterwards
            ),
            min_size=1,
            max_size=10,
        )
    )
    return dtype, (nrows,) + cols, steps, draw(st.integers(0, 4)), draw(st.integers())


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_histories())
def test_any_history_loads_as_the_final_arrays(history):
    dtype, shape, steps, full_every, seed = history
    rng = np.random.default_rng(seed % 2**32)
    arrays = {"t": _random(shape, dtype, rng), "s": _random((), "<f8", rng)}
    with tempfile.TemporaryDirectory() as tmp:
        _statedir.save(tmp, arrays, {"k": -1}, full_every=full_every)
        masks = {"t": np.zeros(shape[0], bool), "s": np.zeros(1, np.uint8)}
        for k, (rows, scalar, full, mode) in enumerate(steps):
            if shape[0]:
                arrays["t"][rows] = _random((len(rows),) + shape[1:], dtype, rng)
                masks["t"][rows] = True
            if scalar:
                arrays["s"][...] = rng.standard_normal()
                masks["s"][0] = 1
            dirty = {n: m if m.any() else None for n, m in masks.items()}
            _statedir.save(
                tmp, arrays, {"k": k}, dirty=dirty, full=full, full_every=full_every
            )
            for m in masks.values():
                m[:] = 0  # after a successful save
            meta, got = _statedir.load(tmp, mode)
            assert meta == {"k": k}
            _same(got, arrays)
            _clean(tmp)
