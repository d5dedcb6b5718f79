"""Bad and crafted files (``numbadam.checkpoint._read``): each refused with one
clear CheckpointError naming it, from the zip directory and the header before
any large read, with nothing given modified.
"""

from __future__ import annotations

import json
import os
import zipfile

import numpy as np
import pytest
from checkpoint_helpers import (
    _arrays,
    _bits,
    _encode,
    _expect,
    _header,
    _rewrite,
    _set,
    _variant,
    save_good,
)

import numbadam
from numbadam.checkpoint import HEADER_KEY, load_checkpoint, save_checkpoint


@pytest.mark.parametrize(
    "content, match",
    [
        (b"", "empty"),
        (b"hello world, not a checkpoint", "not an .npz archive"),
        (b"\x80\x04\x95\x00\x00", "not an .npz archive"),  # a raw pickle
    ],
)
def test_not_an_npz(tmp_path, content, match):
    path = tmp_path / "x.npz"
    path.write_bytes(content)
    _expect(path, match)


def test_npy_file(tmp_path):
    path = tmp_path / "x.npz"
    with open(path, "wb") as f:
        np.save(f, np.arange(3))
    _expect(path, "single .npy array")


@pytest.fixture
def good(tmp_path):
    return save_good(tmp_path)


@pytest.mark.parametrize("fraction", [0.02, 0.3, 0.6, 0.95, 0.999])
def test_truncated(good, tmp_path, fraction):
    src, _ = good
    data = src.read_bytes()
    path = tmp_path / "cut.npz"
    path.write_bytes(data[: max(3, int(len(data) * fraction))])
    _expect(path, "truncated or corrupt")


def test_corrupted_bytes(good, tmp_path):
    src, variables = good
    data = bytearray(src.read_bytes())
    # Flip bytes inside the first member's payload: its CRC no longer matches.
    with zipfile.ZipFile(src) as zf:
        info = zf.infolist()[-1]
    pos = info.header_offset + 30 + len(info.filename) + 60
    data[pos : pos + 4] = b"\xff\xfe\xfd\xfc"
    path = tmp_path / "flip.npz"
    path.write_bytes(bytes(data))
    table = np.zeros((10, 2), np.float32)
    _expect(path, "corrupt", {"table": table, "bias": np.zeros(2, np.float32)})
    assert not table.any()


def test_foreign_npz(tmp_path):
    path = tmp_path / "foreign.npz"
    np.savez(path, weights=np.ones(3), bias=np.zeros(2))
    _expect(path, "not a numbadam checkpoint.*arrays: bias, weights")


def test_pickle_bearing_npz(good, tmp_path):
    src, _ = good
    arrays = _arrays(src)
    arrays["variable_0"] = np.array([{"evil": "payload"}, None], dtype=object)
    path = tmp_path / "pickled.npz"
    np.savez(path, **arrays)  # np.savez pickles object arrays
    _expect(path, "pickled Python objects")


def test_wrong_keys(good, tmp_path):
    src, _ = good
    _expect(_rewrite(src, tmp_path / "a.npz", weight_2=None), "missing array.*weight_2")
    _expect(
        _rewrite(src, tmp_path / "b.npz", extra=np.zeros(1)), "unexpected array.*extra"
    )


def test_wrong_shapes_in_file(good, tmp_path):
    src, _ = good
    bad = np.zeros((9, 2), np.float32)
    _expect(
        _rewrite(src, tmp_path / "a.npz", variable_0=bad), "variable 'table' has shape"
    )
    _expect(
        _rewrite(src, tmp_path / "b.npz", weight_1=bad), "optimizer weight 1 has shape"
    )
    wrong_dtype = _arrays(src)["variable_1"].astype(np.float64)
    _expect(_rewrite(src, tmp_path / "c.npz", variable_1=wrong_dtype), "dtype float64")


def test_bad_headers(good, tmp_path):
    src, _ = good
    header = _header(src)

    def variant(name, **changes):
        h = json.loads(json.dumps(header))
        h.update(changes)
        return _rewrite(src, tmp_path / name, **{HEADER_KEY: _encode(h)})

    raw = np.frombuffer(b"{not json", np.uint8)
    _expect(_rewrite(src, tmp_path / "a.npz", **{HEADER_KEY: raw}), "not valid JSON")
    _expect(
        _rewrite(src, tmp_path / "b.npz", **{HEADER_KEY: np.ones(3, np.float32)}),
        "not a uint8",
    )
    _expect(variant("c.npz", format="other"), "not a numbadam checkpoint header")
    _expect(variant("d.npz", version=99), "version 99")
    _expect(variant("e.npz", weights="x"), "malformed")
    _expect(variant("f.npz", step=17), "step count disagrees")
    opt = dict(header["optimizer"], class_name="SGD")
    _expect(variant("g.npz", optimizer=opt), "unknown optimizer class 'SGD'")
    cfg = dict(header["optimizer"]["config"], bogus=1)
    _expect(
        variant("h.npz", optimizer=dict(header["optimizer"], config=cfg)),
        "cannot rebuild the optimizer",
    )
    cfg = dict(header["optimizer"]["config"], amsgrad=False)  # file has vhat slots
    _expect(
        variant("i.npz", optimizer=dict(header["optimizer"], config=cfg)),
        "does not use",
    )


# ---------------------------------------------------------------------------
# crafted archives: refused from the zip directory and the header, before any
# large read; every malformed file is one CheckpointError naming it
# ---------------------------------------------------------------------------


def _peak_bytes(fn):
    import tracemalloc

    tracemalloc.start()
    try:
        fn()
    finally:
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return peak


def _add_bomb(src, dst, name, nbytes):
    """Copy src with one more member: a valid float64 .npy of nbytes zeros, deflated."""
    import shutil

    shutil.copyfile(src, dst)
    with zipfile.ZipFile(dst, "a", compression=zipfile.ZIP_DEFLATED) as zf:
        with zf.open(name, "w", force_zip64=True) as m:
            np.lib.format.write_array_header_1_0(
                m, {"descr": "<f8", "fortran_order": False, "shape": (nbytes // 8,)}
            )
            chunk = bytes(1 << 20)
            for _ in range(nbytes >> 20):
                m.write(chunk)
    return dst


BOMB = 32 << 20  # bytes once decompressed (the file grows by ~32 KB)


@pytest.mark.parametrize("member, match", [
    ("zzz.npy", "unexpected array.*zzz"),
    ("weight_99.npy", "'weight_99' is compressed"),
])  # fmt: skip
def test_compressed_extra_member_is_refused_without_decompressing(
    good, tmp_path, member, match
):
    src, _ = good
    path = _add_bomb(src, tmp_path / "bomb.npz", member, BOMB)
    assert os.path.getsize(path) < os.path.getsize(src) + BOMB // 100
    peak = _peak_bytes(lambda: _expect(path, match))
    assert peak < BOMB // 8, f"{peak} bytes allocated to refuse the file"


def test_compressed_member_is_refused(good, tmp_path):
    src, variables = good
    arrays = _arrays(src)
    path = tmp_path / "compressed.npz"
    np.savez_compressed(path, **arrays)
    peak = _peak_bytes(lambda: _expect(path, "is compressed"))
    assert peak < 1 << 20
    # A known member, with the shape the header gives it, but compressed: a
    # small file that would decompress to 32 MB.
    header = _header(src)
    header["variables"][0]["shape"] = [BOMB // 8]
    header["variables"][0]["dtype"] = "<f8"
    arrays.pop("variable_0")
    arrays[HEADER_KEY] = _encode(header)
    np.savez(tmp_path / "base.npz", **arrays)
    bomb = _add_bomb(tmp_path / "base.npz", tmp_path / "b.npz", "variable_0.npy", BOMB)
    table = np.zeros((10, 2), np.float32)
    peak = _peak_bytes(lambda: _expect(bomb, "'variable_0' is compressed"))
    assert peak < BOMB // 8 and not table.any()


def _central_entry(data, name):
    """Offset of the central-directory entry of member `name` in zip bytes."""
    pos = 0
    while True:
        pos = data.index(b"PK\x01\x02", pos + 1)
        n = int.from_bytes(data[pos + 28 : pos + 30], "little")
        if data[pos + 46 : pos + 46 + n] == name.encode():
            return pos


@pytest.mark.parametrize("field, value, match", [
    (6, b"\xff\x00", "truncated or corrupt .npz archive"),  # version needed: 25.5
    (10, b"\x63\x00", "compressed"),  # compression method 99
    (8, b"\x01\x00", "encrypted"),  # flag bits: encrypted
    (8, b"\x40\x00", "encrypted"),  # flag bits: strong encryption
    (20, b"\xfe\xff\xff\x7f", "beyond the file"),  # compressed size
    (24, b"\xfe\xff\xff\x7f", "beyond the file"),  # uncompressed size
    (42, b"\xfe\xff\xff\x7f", "beyond the file|corrupt"),  # local header offset
])  # fmt: skip
def test_damaged_zip_directory(good, tmp_path, field, value, match):
    src, variables = good
    data = bytearray(src.read_bytes())
    pos = _central_entry(data, "weight_1.npy") + field
    data[pos : pos + len(value)] = value
    path = tmp_path / "damaged.npz"
    path.write_bytes(bytes(data))
    table, bias = np.zeros((10, 2), np.float32), np.zeros(2, np.float32)
    peak = _peak_bytes(lambda: _expect(path, match, {"table": table, "bias": bias}))
    assert peak < 1 << 20 and not table.any() and not bias.any()


def test_duplicate_member(good, tmp_path):
    src, _ = good
    import shutil
    import warnings

    path = tmp_path / "dup.npz"
    shutil.copyfile(src, path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name
        with zipfile.ZipFile(path, "a") as zf:
            with zf.open("weight_1.npy", "w") as m:
                np.lib.format.write_array(m, np.zeros(3))
    _expect(path, "'weight_1' appears twice")


def test_deeply_nested_header(good, tmp_path):
    src, _ = good
    for text in (b"[" * 100_000, b'{"a": ' * 100_000):
        raw = np.frombuffer(text, np.uint8)
        path = _rewrite(src, tmp_path / "deep.npz", **{HEADER_KEY: raw})
        _expect(path, "not valid JSON")


@pytest.mark.parametrize("edit, match", [
    (_set("weights", 1, "variable", 0.0), r"malformed \(weight 1: variable 0.0\)"),
    (_set("weights", 1, "variable", True), "malformed"),
    (_set("weights", 1, "variable", 7), "malformed"),
    (_set("weights", 1, "role", "other"), "malformed"),
    (_set("weights", 1, "slot", 3), "malformed"),
    (_set("variables", 1, "name", "table"), "'table' appears twice"),
    (_set("variables", 1, "name", None), "malformed"),
    (_set("variables", 0, "dtype", [["a", "<f4"]]), "malformed.*dtype"),
    (_set("variables", 0, "dtype", "|O"), "malformed.*not numeric"),
    (_set("variables", 0, "dtype", "V8"), "malformed.*not numeric"),
    (_set("variables", 0, "dtype", "no such dtype"), "malformed.*not a NumPy dtype"),
    (_set("variables", 0, "shape", [10, True]), "malformed.*shape"),
    (_set("variables", 0, "shape", "10"), "malformed.*shape"),
    (_set("variables", 0, "shape", [1] * 40), "malformed.*shape"),
    (_set("variables", 0, 3), "malformed"),
    (_set("optimizer", "module", 3), "malformed"),
    (_set("version", True), "version True"),
    (_set("step", -1), "malformed"),
    (_set("step", 3.0), "malformed"),
])  # fmt: skip
def test_malformed_header_fields(good, tmp_path, edit, match):
    src, variables = good
    path = _variant(src, tmp_path / "bad.npz", edit)
    table, bias = np.zeros((10, 2), np.float32), np.zeros(2, np.float32)
    _expect(path, match, {"table": table, "bias": bias})
    assert not table.any() and not bias.any()


@pytest.mark.parametrize("value, step, match", [
    (np.array(2**63, np.uint64), 2**63, "step 9223372036854775808 is not"),
    (np.array(2**63, np.uint64), 3, "iterations is 9223372036854775808"),
    (np.array(2**64 - 1, np.uint64), 3, "iterations is 18446744073709551615"),
    (np.array(1e19), 10**19, "malformed"),
    (np.array(3.0), 3, "iterations, which must be a 0-d integer"),
    (np.array(float("nan")), 3, "iterations, which must be a 0-d integer"),
    (np.array(3 + 0j), 3, "iterations, which must be a 0-d integer"),
    (np.array([3, 3, 3]), 3, "iterations, which must be a 0-d integer"),
    (np.array([[3]], np.int64), 3, "iterations, which must be a 0-d integer"),
    (np.array(-1), -1, "malformed"),
    (np.array(-1), 3, "iterations is -1"),
])  # fmt: skip
def test_bad_iterations_in_file(good, tmp_path, value, step, match):
    src, _ = good

    def edit(h):
        h["step"] = step
        h["weights"][0].update(shape=list(value.shape), dtype=value.dtype.str)

    path = _variant(src, tmp_path / "it.npz", edit, weight_0=value)
    table, bias = np.zeros((10, 2), np.float32), np.zeros(2, np.float32)
    _expect(path, match, {"table": table, "bias": bias})
    assert not table.any() and not bias.any()


def test_float64_hyperparameters_resume_bit_identical(tmp_path):
    # JSON writes a np.float64 hyperparameter as a plain float, which
    # from_config would round to float32: the header marks it.
    def make():
        return numbadam.Adam(np.float64(0.01), beta_2=np.float64(0.999), decay=0.01)

    def run(opt, w, steps):
        for t in steps:
            opt.apply_gradients([(np.full(3, 0.5 - t, np.float64), w)])

    w1, w2 = np.ones(3), np.ones(3)
    o1, o2 = make(), make()
    run(o1, w1, range(6))
    run(o2, w2, range(3))
    path = tmp_path / "c.npz"
    save_checkpoint(path, o2, [w2])
    assert _header(path)["optimizer"]["float64"] == ["beta_2", "learning_rate"]
    ckpt = load_checkpoint(path)
    assert type(ckpt.optimizer.get_config()["beta_2"]) is np.float64
    run(ckpt.optimizer, ckpt.variables["0"], range(3, 6))
    assert _bits(ckpt.variables["0"]) == _bits(w1)
    # (a Python-float optimizer writes no marker)
    save_checkpoint(tmp_path / "d.npz", numbadam.Adam(0.01), [np.ones(3)])
    assert "float64" not in _header(tmp_path / "d.npz")["optimizer"]
    header = _header(path)
    for i, bad in enumerate((["amsgrad"], "beta_2", [["beta_2"]], ["nope"])):
        h = json.loads(json.dumps(header))
        h["optimizer"]["float64"] = bad
        bad_path = _rewrite(path, tmp_path / f"bad{i}.npz", **{HEADER_KEY: _encode(h)})
        _expect(bad_path, "malformed")
