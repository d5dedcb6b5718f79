"""Random mixes of malformed and valid pairs: each call is all or nothing.

hypothesis draws a few calls per example. Each call is a random list of valid
pairs (dense, IndexedSlices or ``None`` gradients, variables with and without
slots) into which zero to two malformed items are inserted at random places:
the bad inputs of ``test_bad_input.py`` (wrong shapes and dtypes, read-only
and non-array variables, bad IndexedSlices, masked arrays, items that are not
pairs, a variable twice) and the memory overlaps of ``test_overlap.py``
(views of one array, a variable aliasing itself, a slot as a variable).

A call with a malformed item must raise ValueError, TypeError or IndexError
with every variable, slot, weight and ``iterations`` bitwise as before (and no
slot created). A valid call must give what a twin optimizer, stepped on copies
of the variables with the valid calls only, gives. After the calls both step
once more on every variable and must still agree: a refused call leaves
nothing behind that a later step could see.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

import numpy as np
import pytest
from helpers import assert_bitwise, assert_unchanged, snapshot
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numbadam
from numbadam import IndexedSlices

as_strided = np.lib.stride_tricks.as_strided

#: The pool of variables: (shape, dtype). The last has no slots at first.
POOL = [
    ((5, 3), np.float32),
    ((6, 4), np.float64),
    ((7,), np.float32),
    ((4, 2), np.float32),
]
STEPPED = 3  # POOL[:STEPPED] take a step when the optimizer is made


class World:
    """An optimizer and its twin, with their variables (copies of each other)."""

    def __init__(self, seed: int, amsgrad: bool, mode: str) -> None:
        self.rng = np.random.default_rng(seed)
        self.vars = [
            self.rng.standard_normal(shape).astype(dtype) for shape, dtype in POOL
        ]
        self.twins = [v.copy() for v in self.vars]
        self.opt = numbadam.Adam(0.1, amsgrad=amsgrad, sparse_mode=mode)
        self.ref = numbadam.Adam(0.1, amsgrad=amsgrad, sparse_mode=mode)
        first = [(self.dense(i), i) for i in range(STEPPED)]
        self.step(first)

    # -- gradients ------------------------------------------------------------

    def dense(self, i: int) -> np.ndarray:
        shape, dtype = POOL[i]
        return self.rng.standard_normal(shape).astype(dtype)

    def sparse(self, i: int) -> IndexedSlices:
        shape, dtype = POOL[i]
        k = int(self.rng.integers(0, 5))
        idx = self.rng.integers(0, shape[0], k)  # (duplicates are valid: summed)
        vals = self.rng.standard_normal((k,) + shape[1:]).astype(dtype)
        return IndexedSlices(vals, idx, shape)

    # -- steps ----------------------------------------------------------------

    def step(self, pairs: List[Tuple[Any, int]]) -> None:
        """A valid call on both optimizers; their results must agree."""
        out = self.opt.apply_gradients([(g, self.vars[i]) for g, i in pairs])
        ref = self.ref.apply_gradients([(g, self.twins[i]) for g, i in pairs])
        assert (out is None) == (ref is None)
        self.check_in_step()

    def check_in_step(self) -> None:
        for k, (v, t) in enumerate(zip(self.vars, self.twins)):
            assert_bitwise(v, t, f"variable {k}")
        mine, theirs = self.opt.get_weights(), self.ref.get_weights()
        assert len(mine) == len(theirs)
        for k, (a, b) in enumerate(zip(mine, theirs)):
            assert_bitwise(a, b, f"weight {k}")
        assert self.opt.get_slot_names() == self.ref.get_slot_names()


def _readonly(a: np.ndarray) -> np.ndarray:
    a.flags.writeable = False
    return a


def _broadcast_writeable(shape, dtype) -> np.ndarray:
    x = np.broadcast_to(np.zeros(shape[-1:], dtype), shape)
    x.flags.writeable = True
    return x


# Each maker: (world, pairs of the call so far) -> (items to insert, extra
# arrays that must not change). ``pairs`` are (gradient, pool index) of the
# valid part; a maker that needs a pool variable in the call adds its pair.
Maker = Callable[[World, List[Tuple[Any, int]]], Tuple[List[Any], List[np.ndarray]]]


def _in_call(w: World, pairs: List[Tuple[Any, int]], i: int) -> np.ndarray:
    """Pool variable ``i``, with a gradient in the call (a ``None`` gradient
    writes nothing, so a view overlapping it would be valid)."""
    pairs[:] = [(g, j) for g, j in pairs if j != i or g is not None]
    if all(j != i for _, j in pairs):
        pairs.append((w.dense(i), i))
    return w.vars[i]


def _fresh(shape=(3, 2), dtype=np.float32) -> np.ndarray:
    return np.zeros(shape, dtype)


MAKERS: Dict[str, Maker] = {
    "shape mismatch": lambda w, p: ([(np.ones((6, 3), np.float32), w.vars[1])], []),
    "int gradient": lambda w, p: ([(np.ones((7,), np.int32), w.vars[2])], []),
    "complex gradient": lambda w, p: (
        [(np.ones((5, 3), np.complex64), w.vars[0])],
        [],
    ),
    "string gradient": lambda w, p: ([(np.full((7,), "x"), w.vars[2])], []),
    "ragged gradient": lambda w, p: ([([[1.0, 2.0], [3.0]], w.vars[3])], []),
    "masked gradient": lambda w, p: (
        [(np.ma.masked_greater(np.ones((4, 2), np.float32), 0.5), w.vars[3])],
        [],
    ),
    "int variable": lambda w, p: ([(np.ones(3), np.zeros(3, np.int64))], []),
    "big-endian variable": lambda w, p: ([(np.ones(3), np.zeros(3, ">f4"))], []),
    "read-only variable": lambda w, p: (
        [(np.ones((3, 2), np.float32), _readonly(_fresh()))],
        [],
    ),
    "list variable": lambda w, p: ([(np.ones(2), [0.0, 1.0])], []),
    "variable None": lambda w, p: ([(np.ones(2), None)], []),
    "3-tuple": lambda w, p: ([(np.ones(2), np.zeros(2), np.zeros(2))], []),
    "bare array": lambda w, p: ([np.zeros(2, np.float32)], []),
    "string item": lambda w, p: (["gw"], []),
    "sparse out of range": lambda w, p: (
        [(IndexedSlices(np.ones((2, 3), np.float32), np.array([1, 5])), w.vars[0])],
        [],
    ),
    "sparse negative index": lambda w, p: (
        [(IndexedSlices(np.ones((1, 4)), np.array([-1])), w.vars[1])],
        [],
    ),
    "sparse float indices": lambda w, p: (
        [(IndexedSlices(np.ones((2, 2), np.float32), np.array([0.0, 1.0])), w.vars[3])],
        [],
    ),
    "sparse value shape": lambda w, p: (
        [(IndexedSlices(np.ones((2, 5)), np.array([0, 1])), w.vars[1])],
        [],
    ),
    "sparse length mismatch": lambda w, p: (
        [(IndexedSlices(np.ones((3, 3), np.float32), np.array([0, 1])), w.vars[0])],
        [],
    ),
    "sparse dense_shape": lambda w, p: (
        [(IndexedSlices(np.ones((1, 4)), np.array([0]), (9, 4)), w.vars[1])],
        [],
    ),
    "sparse on a 0-d variable": lambda w, p: (
        [(IndexedSlices(np.ones(1, np.float32), np.array([0])), _fresh(()))],
        [],
    ),
    "masked sparse indices": lambda w, p: (
        [
            (
                IndexedSlices(
                    np.ones((2, 2), np.float32),
                    np.ma.masked_equal(np.array([0, 1]), 1),
                ),
                w.vars[3],
            )
        ],
        [],
    ),
    "duplicate": lambda w, p: ([(w.dense(2), _in_call(w, p, 2))], []),
    "duplicate through a new view": lambda w, p: (
        [(w.dense(0), _in_call(w, p, 0)[:])],
        [],
    ),
    "overlap: reshape": lambda w, p: (
        [(np.ones(24), _in_call(w, p, 1).reshape(24))],
        [],
    ),
    "overlap: transpose": lambda w, p: (
        [(np.ones((3, 5), np.float32), _in_call(w, p, 0).T)],
        [],
    ),
    "overlap: a row": lambda w, p: (
        [(np.ones(2, np.float32), _in_call(w, p, 3)[1])],
        [],
    ),
    "overlap: shifted halves": lambda w, p: _shifted(),
    "aliasing itself: broadcast": lambda w, p: (
        [(np.ones((3, 4)), _broadcast_writeable((3, 4), np.float64))],
        [],
    ),
    "aliasing itself: as_strided": lambda w, p: _diagonal(),
    "slot as variable": lambda w, p: _slot(w, None),
    "view of a slot": lambda w, p: _slot(w, 1),
}


def _shifted():
    buf = np.arange(9, dtype=np.float32)
    return [(np.ones(8, np.float32), buf[:-1]), (np.ones(8, np.float32), buf[1:])], [
        buf
    ]


def _diagonal():
    base = np.arange(9, dtype=np.float32)
    return [(np.ones((3, 3), np.float32), as_strided(base, (3, 3), (4, 4)))], [base]


def _slot(w: World, where: Any):
    s = w.opt.get_slot(w.vars[0], "v")
    if where is not None:
        s = s[where]
    return [(np.ones(s.shape, np.float32), s)], []


@st.composite
def calls(draw) -> List[Tuple[List[Tuple[str, int]], List[Tuple[int, str]]]]:
    """A recipe of a call: the valid pairs (kind, pool index) and the malformed
    items (position, kind)."""
    order = draw(st.permutations(range(len(POOL))))
    n = draw(st.integers(0, len(POOL)))
    valid = []
    for i in order[:n]:
        kinds = ["dense", "none"] + (["sparse"] if len(POOL[i][0]) == 2 else [])
        valid.append((draw(st.sampled_from(kinds)), i))
    bad = draw(
        st.lists(
            st.tuples(st.integers(0, len(POOL)), st.sampled_from(sorted(MAKERS))),
            max_size=2,
        )
    )
    return valid, bad


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@settings(
    deadline=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    amsgrad=st.booleans(),
    mode=st.sampled_from(["dense", "lazy"]),
    recipes=st.lists(calls(), min_size=1, max_size=4),
)
def test_malformed_calls_change_nothing(seed, amsgrad, mode, recipes):
    w = World(seed, amsgrad, mode)
    for valid, bad in recipes:
        pairs: List[Tuple[Any, int]] = []
        for kind, i in valid:
            g = {"dense": w.dense, "sparse": w.sparse, "none": lambda i: None}[kind]
            pairs.append((g(i), i))
        inserts: List[Tuple[int, Any]] = []
        extras: List[np.ndarray] = []
        for pos, kind in bad:
            items, more = MAKERS[kind](w, pairs)
            inserts.extend((pos, item) for item in items)
            extras.extend(more)
        call: List[Any] = [(g, w.vars[i]) for g, i in pairs]
        for pos, item in inserts:
            call.insert(min(pos, len(call)), item)
        all_none = bool(pairs) and all(g is None for g, _ in pairs)
        if not inserts and not all_none:
            w.step(pairs)  # a valid call (or the empty no-op)
            continue
        variables = w.vars + extras
        before = snapshot(w.opt, variables)
        with pytest.raises((ValueError, TypeError, IndexError)):
            w.opt.apply_gradients(call)
        assert_unchanged(before, w.opt, variables)
        w.check_in_step()
    # still working, and still the twin of the reference
    w.step([(w.dense(i), i) for i in range(len(POOL))])
    assert int(w.opt.iterations) == int(w.ref.iterations) >= 2
