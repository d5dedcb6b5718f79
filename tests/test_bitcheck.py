"""Tests of ``tests/bitcheck.py``, the behaviour-preservation script.

Its case list must be deterministic (else a comparison would report noise) and
``--compare`` must catch a single changed byte, a missing array and an extra one.
"""

from __future__ import annotations

import bitcheck
import numpy as np

#: The first cases of the grid: dense, TF-rule sparse, lazy sparse, a
#: ParameterBuffer, a mix of dtypes and layouts, a strided view.
N = 6


def _flip_and_save(path, key):
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    raw = bytearray(data[key].tobytes())
    raw[-1] ^= 0x01
    a = data[key]
    data[key] = np.frombuffer(bytes(raw), a.dtype).reshape(a.shape)
    np.savez(path, **data)


def test_quick_cases_cover_every_layout():
    layouts = {c["layout"] for c in bitcheck.make_cases(N)}
    assert layouts == {"dense", "sparse", "lazy", "buffer", "mixed", "strided"}


def test_case_list_is_a_deterministic_prefix():
    a = bitcheck.make_cases(N)
    b = bitcheck.make_cases(2 * N)[:N]
    assert a == b
    assert [c["id"] for c in a] == list(range(N))


def test_recording_twice_gives_the_same_bytes():
    cases = bitcheck.make_cases(N)
    first, _ = bitcheck.run_all(cases, [])
    second, _ = bitcheck.run_all(cases, [])
    assert first.keys() == second.keys()
    for c in cases:  # every case took its steps and has weights, no error
        keys = [k for k in first if k.startswith(f"case{c['id']:04d}/")]
        assert f"case{c['id']:04d}/step{c['steps']}/iterations" in keys
        assert any("/weights/" in k for k in keys)
        assert not any(k.endswith("/error") for k in keys)
    assert sum(a.size for a in first.values()) > 0
    different = [k for k in first if not bitcheck.same(first[k], second[k])]
    assert different == []


def test_same_compares_dtype_shape_and_bytes():
    a = np.array([1.0, -0.0], np.float32)
    assert bitcheck.same(a, a.copy())
    assert not bitcheck.same(a, np.array([1.0, 0.0], np.float32))  # -0.0 vs 0.0
    assert not bitcheck.same(a, a.astype(np.float64))
    assert not bitcheck.same(a, a.reshape(2, 1))
    nan = np.array([np.nan], np.float64)
    assert bitcheck.same(nan, nan.copy())  # bytes, not ==


def test_compare_flags_one_flipped_byte(tmp_path, capsys):
    path = str(tmp_path / "base.npz")
    assert bitcheck.main(["--out", path, "--cases", "4"]) == 0
    assert bitcheck.main(["--compare", path]) == 0
    out = capsys.readouterr().out
    assert "4 cases" in out and " 0 differ, 0 missing, 0 extra" in out
    with np.load(path, allow_pickle=False) as f:  # a non-empty variable of case 1
        key = [
            k for k in sorted(f.files) if k.startswith("case0001/step") and f[k].nbytes
        ]
        key = key[0]
    _flip_and_save(path, key)
    assert bitcheck.main(["--compare", path]) == 1
    out = capsys.readouterr().out
    assert " 1 differ, 0 missing, 0 extra" in out
    assert f"differs: {key}" in out
    assert "case 1: {" in out  # the case description comes with it


def test_compare_flags_missing_and_extra_arrays(tmp_path, capsys):
    path = str(tmp_path / "base.npz")
    assert bitcheck.main(["--out", path, "--cases", "3"]) == 0
    with np.load(path, allow_pickle=False) as f:
        data = {k: f[k] for k in f.files}
    dropped = "case0002/weights/0"
    del data[dropped]  # the run has it: extra
    data["case0000/weights/99"] = np.zeros(1)  # the run lacks it: missing
    np.savez(path, **data)
    assert bitcheck.main(["--compare", path]) == 1
    out = capsys.readouterr().out
    assert " 0 differ, 1 missing, 1 extra" in out
    assert "missing: case0000/weights/99" in out
    assert f"extra: {dropped}" in out


def test_compare_of_a_prefix_ignores_the_other_cases(tmp_path, capsys):
    path = str(tmp_path / "base.npz")
    assert bitcheck.main(["--out", path, "--cases", "3"]) == 0
    _flip_and_save(path, "case0002/weights/0")
    assert bitcheck.main(["--compare", path, "--cases", "2"]) == 0
    assert bitcheck.main(["--compare", path]) == 1
    out = capsys.readouterr().out
    assert "differs: case0002/weights/0" in out
