"""Tests of ``numbadam bench``'s pieces: the goal table, the timer, the cases.

The goal values expected here are worked out by hand from the formulas of
``numbadam.cli.goals``' docstring on made-up times; no timing is asserted.
"""

from __future__ import annotations

import json
import math

import pytest

from numbadam.cli import bench, timer
from numbadam.cli.goals import GOALS, Goal, Measured, as_measured, score, worst

BY_KEY = {g.key: g for g in GOALS}


def test_goal_keys_are_unique_and_families_known():
    assert len(BY_KEY) == len(GOALS)
    for g in GOALS:
        if g.backend == "cpu":
            assert set(g.families) <= set(bench.FAMILIES), g.key
        assert g.key.startswith(g.backend + "-")
        assert (g.ref == "") == (g.kind in ("time_us", "growth")), g.key


def test_goal_rejects_unknown_kind():
    with pytest.raises(ValueError, match="unknown kind 'faster'"):
        Goal("x", "cpu", ("dense",), "t", "a", "b", 1.0, kind="faster")


def test_dense_goals_by_size():
    # 1e4 float32 elements (280 kB, in cache): torch >= 3, numpy; 1e5 (2.8 MB):
    # torch >= 1, numpy; 1e7 (280 MB): probe, torch >= 1, numpy.
    times = {"numbadam": 2.0, "probe": 1.9, "torch-fused": 5.0, "numpy": 8.0}
    cases = [
        Measured("small", "dense", 28 * 10**4, dict(times)),
        Measured("medium", "dense", 28 * 10**5, dict(times)),
        Measured("large", "dense", 28 * 10**7, dict(times)),
    ]
    got = [(s.case, s.goal.key, s.value, s.met) for s in score(cases, "cpu")]
    assert got == [
        ("small", "cpu-dense-cache-torch", 2.5, False),
        ("small", "cpu-dense-numpy", 4.0, True),
        ("medium", "cpu-dense-torch", 2.5, True),
        ("medium", "cpu-dense-numpy", 4.0, True),
        ("large", "cpu-dense-probe", 0.95, True),
        ("large", "cpu-dense-torch", 2.5, True),
        ("large", "cpu-dense-numpy", 4.0, True),
    ]


def test_byte_limits_are_half_open():
    # min_bytes <= bytes < max_bytes: exactly 1e6 bytes is out of the caches
    case = Measured("edge", "dense", 1e6, {"numbadam": 1.0, "torch-fused": 1.0})
    assert [s.goal.key for s in score([case], "cpu")] == ["cpu-dense-torch"]


def test_missing_implementations_leave_their_goals_out():
    case = Measured("x", "sparse-tf", 1e9, {"numbadam": 1.0, "numpy-tf-style": 7.0})
    (only,) = score([case], "cpu")
    assert only.goal.key == "cpu-sparse-tf-numpy-out" and only.value == 7.0


def test_time_and_growth_goals():
    cases = [
        Measured("fixed", "fixed", 280, {"numbadam": 4e-6, "numpy": 5e-6}),
        Measured("lazy 1e4", "lazy", 1e6, {"numbadam-lazy": 2.0}),
        Measured("lazy rot", "lazy-rotating", 1e6, {"numbadam-lazy": 1.0}),
        Measured("lazy 1e6", "lazy", 1e6, {"numbadam-lazy": 2.8}),
    ]
    got = {s.goal.key: (s.case, s.value, s.met) for s in score(cases, "cpu")}
    assert got["cpu-fixed-cost"] == ("fixed", pytest.approx(4.0), True)
    assert got["cpu-fixed-numpy"] == ("fixed", pytest.approx(1.25), True)
    # the rotating case is not one of the rows-growth family's
    assert got["cpu-lazy-rows"] == ("lazy 1e4 vs lazy 1e6", pytest.approx(1.4), False)
    assert BY_KEY["cpu-fixed-cost"].met(9.99) and not BY_KEY["cpu-fixed-cost"].met(10)


def test_cuda_goals_from_report_rows():
    n = 1000
    rows = [
        {"case": "copy", "impl": "numba copy_to_device", "seconds": 1.0,
         "bytes": 8 * n},
        {"case": "dense", "impl": "numbadam", "seconds": 4.0, "bytes": 28 * n},
        {"case": "dense", "impl": "torch fused", "seconds": 4.4, "bytes": 28 * n},
        {"case": "sparse TF rule", "impl": "numbadam", "seconds": 3.0,
         "bytes": 28 * n},
        {"case": "sparse TF rule", "impl": "numbadam dense step, same table",
         "seconds": 2.0, "bytes": 28 * n},
    ]  # fmt: skip
    got = [(s.goal.key, s.value, s.met) for s in score(as_measured(rows), "cuda")]
    # bandwidth: (28n / 4) / (8n / 1) = 0.875
    assert got == [
        ("cuda-dense-copy", pytest.approx(0.875), True),
        ("cuda-dense-torch", pytest.approx(1.1), True),
        ("cuda-sparse-dense", 1.5, False),
    ]
    assert score(as_measured(rows), "cpu") == []


def test_worst_takes_the_least_favourable_case():
    fast, slow = BY_KEY["cpu-dense-numpy"], BY_KEY["cpu-lazy-rows"]
    from numbadam.cli.goals import Score

    scores = [Score(fast, "a", 5.0, True), Score(fast, "b", 2.0, True)]
    scores += [Score(slow, "c", 1.1, True), Score(slow, "d", 1.2, True)]
    assert worst(scores) == {"cpu-dense-numpy": 2.0, "cpu-lazy-rows": 1.2}


def test_needs_comparison():
    assert BY_KEY["cpu-dense-torch"].needs_comparison
    assert BY_KEY["cuda-dense-torch"].needs_comparison
    assert not BY_KEY["cpu-dense-probe"].needs_comparison
    assert not BY_KEY["cpu-lazy-rows"].needs_comparison


def _recorder():
    calls = []

    def make(name):
        return lambda: calls.append(name)

    return calls, make


def test_interleaved_alternates_blocks_after_warmup():
    calls, make = _recorder()
    out = timer.interleaved_samples(
        {"a": make("a"), "b": make("b")}, repeat=4, warmup=1, block=2, settle_s=0
    )
    assert calls == ["a", "b", "a", "a", "b", "b", "a", "a", "b", "b"]
    assert {k: len(v) for k, v in out.items()} == {"a": 4, "b": 4}
    assert all(t >= 0 for v in out.values() for t in v)


def test_interleaved_settles_each_block_with_untimed_runs():
    calls, make = _recorder()
    out = timer.interleaved_samples(
        {"a": make("a")}, repeat=3, warmup=0, block=3, settle_s=1e-3
    )
    assert len(out["a"]) == 3 and len(calls) >= 4  # at least one untimed run


def test_interleaved_default_block_and_medians():
    calls, make = _recorder()
    medians = timer.interleaved({"a": make("a")}, repeat=25, warmup=0, settle_s=0)
    # block = 25 // 10 = 2: 13 blocks of 2 reach 25
    assert len(calls) == 26 and set(medians) == {"a"}


class _FakeEvent:
    def __init__(self, clock):
        self.clock, self.at = clock, None

    def record(self):
        self.at = self.clock[0]

    def synchronize(self):
        pass


class _FakeCuda:
    """Events read a clock that ``fn`` advances by 1, 2, 3, ... milliseconds."""

    def __init__(self):
        self.clock = [0.0]
        self.syncs = 0

    def event(self):
        return _FakeEvent(self.clock)

    def event_elapsed_time(self, start, end):
        return end.at - start.at

    def synchronize(self):
        self.syncs += 1


def test_median_time_between_cuda_events(monkeypatch):
    from numba import config

    monkeypatch.setattr(config, "ENABLE_CUDASIM", 0)
    cuda = _FakeCuda()
    step = [0]

    def fn():
        step[0] += 1
        cuda.clock[0] += step[0]

    # warm-up runs advance 1 and 2 ms; timed runs 3, 4, 5: median 4 ms
    assert timer.median_time(fn, repeat=3, warmup=2, cuda=cuda) == pytest.approx(4e-3)
    assert cuda.syncs == 1  # after the warm-up, before the events


def test_run_families_and_goal_values():
    with pytest.raises(ValueError, match="unknown case families"):
        bench.run(quick=True, families=["bogus"])
    with pytest.raises(ValueError, match="unknown CPU goals"):
        bench.goal_values(["cuda-dense-copy"])
    result = bench.run(quick=True, compare=False, families=["fixed"])
    assert [c["case"] for c in result["cases"]] == [
        "fixed cost, one 10-element variable"
    ]
    assert [g["goal"] for g in result["goals"]] == [
        "fixed cost < 10 us",
        "speed-up vs numpy",
    ]
    assert result["machine"]["torch"] is None
    json.dumps(result)


def test_benchmark_machinery_smoke():
    case = bench._dense_case(2000, True, None, None)
    assert {"numbadam", "probe", "numpy"} <= set(case.times)
    result = {
        "machine": {"numbadam": "x", "numpy": "y", "torch": None, "optax": None,
                    "threads": 1, "quick": True},
        "cases": [case.as_dict()],
        "goals": bench._goals([case]),
    }  # fmt: skip
    text = bench.format_report(result)
    assert "dense float32" in text and "Goals" in text
    (numpy_goal,) = result["goals"]
    t = case.times
    assert numpy_goal["ratio"] == t["numpy"] / t["numbadam"]
    assert math.isfinite(numpy_goal["ratio"])
    json.dumps(result)


def test_interleaved_runs_before_untimed_before_every_run():
    calls, make = _recorder()
    out = timer.interleaved_samples(
        {"a": (make("prep"), make("a")), "b": make("b")},
        repeat=2, warmup=1, block=2, settle_s=0,
    )  # fmt: skip
    assert calls == ["prep", "a", "b", "prep", "a", "prep", "a", "b", "b"]
    assert {k: len(v) for k, v in out.items()} == {"a": 2, "b": 2}
    calls.clear()
    timer.interleaved_samples(
        {"a": (make("prep"), make("a"))}, repeat=1, warmup=0, block=1, settle_s=1e-3
    )
    # the settling runs too: every "a" follows a "prep"
    assert calls[0::2] == ["prep"] * (len(calls) // 2) and len(calls) >= 4
    assert calls[1::2] == ["a"] * (len(calls) // 2)


def test_feature_goals_from_made_up_times():
    n = 10**7
    cases = [
        Measured("adamw", "adamw", 28 * n,
                 {"numbadam": 5.0e-3, "probe": 4.9e-3, "torch-fused": 6.0e-3}),
        Measured("ema", "ema", 36 * n,
                 {"numbadam": 8.0e-3, "probe": 7.2e-3, "torch-fused+lerp_": 10e-3}),
        Measured("accumulate", "accumulate", 12 * n,
                 {"numbadam-accumulating": 2.0e-3, "probe": 1.9e-3,
                  "numbadam-applying": 6.0e-3, "numbadam-adam": 5.6e-3,
                  "torch-grad-add_": 2.5e-3},
                 {"numbadam-applying": 32 * n, "numbadam-adam": 28 * n}),
    ]  # fmt: skip
    got = {s.goal.key: (round(s.value, 4), s.met) for s in score(cases, "cpu")}
    assert got == {
        "cpu-adamw-probe": (0.98, True),
        "cpu-adamw-torch": (1.2, True),
        "cpu-ema-probe": (0.9, False),
        "cpu-ema-torch": (1.25, True),
        "cpu-accumulate-probe": (0.95, True),
        # (32 / 6.0) / (28 / 5.6) = 5.3333 / 5 = 1.0667
        "cpu-accumulate-applying": (1.0667, True),
        "cpu-accumulate-torch": (1.25, True),
    }


def test_feature_cases_run_what_they_name():
    from numbadam.cli import _features

    n = 3000
    adamw = _features.adamw_case(n, True, None)
    ema = _features.ema_case(n, True, None)
    acc = _features.accumulate_case(n, True, None)
    assert set(adamw.times) == {"numbadam", "probe", "numbadam-adam"}
    assert set(ema.times) == {"numbadam", "probe"}
    assert set(acc.times) == {
        "numbadam-accumulating", "probe", "numbadam-applying", "numbadam-adam"
    }  # fmt: skip
    assert acc.bytes_of("numbadam-applying") == 32 * n
    assert acc.bytes_of("numbadam-accumulating") == 12 * n
    assert [c.family for c in (adamw, ema, acc)] == ["adamw", "ema", "accumulate"]
    d = acc.as_dict()
    t = d["median_s"]["numbadam-applying"]
    assert d["GBps"]["numbadam-applying"] == pytest.approx(32 * n / t / 1e9)
    json.dumps(d)


def test_bench_family_option(capsys):
    import argparse

    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    with pytest.raises(SystemExit):
        parser.parse_args(["--family", "bogus"])
    assert "invalid choice" in capsys.readouterr().err
    args = parser.parse_args(["--quick", "--json", "--family", "fixed"])
    assert bench.main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert [c["case"] for c in out["cases"]] == ["fixed cost, one 10-element variable"]
