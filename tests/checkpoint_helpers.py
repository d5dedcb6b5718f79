"""Shared pieces of the checkpoint tests: a trained optimizer, a good file and
its rewrites, and ``_expect``, which checks the one clear error of a bad file
(naming it, nothing modified).
"""

from __future__ import annotations

import json

import numpy as np
import pytest

import numbadam
from numbadam import CheckpointError, load_checkpoint, save_checkpoint
from numbadam.checkpoint import HEADER_KEY


def _bits(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def _trained(amsgrad=False):
    table = np.arange(20, dtype=np.float32).reshape(10, 2)
    bias = np.zeros(2, np.float32)
    opt = numbadam.Adam(learning_rate=0.01, amsgrad=amsgrad, beta_1=0.8)
    for _ in range(3):
        g = numbadam.IndexedSlices(np.ones((3, 2), np.float32), [1, 1, 4], (10, 2))
        opt.apply_gradients([(g, table), (np.ones(2, np.float32), bias)])
    return opt, {"table": table, "bias": bias}


def save_good(tmp_path):
    """A checkpoint of ``_trained(amsgrad=True)`` in ``tmp_path``: (path, variables)."""
    opt, variables = _trained(amsgrad=True)
    path = tmp_path / "good.npz"
    save_checkpoint(path, opt, variables)
    return path, variables


def _arrays(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _rewrite(src, dst, allow_pickle=False, **changes):
    arrays = _arrays(src)
    for k, v in changes.items():
        if v is None:
            del arrays[k]
        else:
            arrays[k] = v
    np.savez(dst, **arrays)
    return dst


def _header(path):
    return json.loads(_arrays(path)[HEADER_KEY].tobytes())


def _encode(header):
    return np.frombuffer(json.dumps(header).encode(), np.uint8)


def _expect(path, match, variables=None):
    with pytest.raises(CheckpointError, match=match) as info:
        load_checkpoint(path, variables)
    assert str(info.value).startswith(str(path) + ": ")
    assert info.value.path == str(path)
    assert "\n" not in str(info.value)
    # No chained NumPy/zipfile traceback behind it.
    exc = info.value
    assert exc.__cause__ is None and (
        exc.__context__ is None or exc.__suppress_context__
    )
    return info.value


def _variant(src, dst, edit, **arrays):
    header = _header(src)
    edit(header)
    return _rewrite(src, dst, **{HEADER_KEY: _encode(header)}, **arrays)


def _set(*keys_and_value):
    *keys, value = keys_and_value

    def edit(h):
        for k in keys[:-1]:
            h = h[k]
        h[keys[-1]] = value

    return edit
