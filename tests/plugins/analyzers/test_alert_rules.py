"""An alert rule's buckets: bounded whatever the window, and a p95 that is close."""

from __future__ import annotations

from observer_plugins.analyzers.alerts.rules import MAX_BUCKETS, Rule, Tracker

from observer_core import Op


def op(duration_ms: float, success: bool = True, error: str | None = None) -> Op:
    fields = {"error": error} if error is not None else {}
    return Op(
        timestamp="2026-12-06T00:00:00.000Z",
        endpoint="/x",
        input_summary="",
        success=success,
        duration_ms=duration_ms,
        output_summary="",
        source="mcp",
        **fields,
    )


def test_a_long_window_keeps_a_bounded_number_of_buckets_and_every_op():
    tracker = Tracker(Rule(name="r", when="ops_per_min", above=1, window_secs=3600), now=0.0)
    for tick in range(1, 20_001):  # a 0.1 s cycle for 2000 s
        tracker.add(op(5), now=tick / 10)
        tracker.roll(tick / 10)
    assert len(tracker.buckets) <= MAX_BUCKETS + 1
    assert sum(bucket.count for bucket in tracker.buckets) == 20_000
    assert tracker.value(2000.0, 0.0) == 20_000 * 60 / 3600


def test_old_buckets_leave_the_window():
    tracker = Tracker(Rule(name="r", when="failure_rate", above=0.5, window_secs=10), now=0.0)
    tracker.add(op(5, False, "old"), now=0.5)
    tracker.roll(1.0)
    tracker.add(op(5, True), now=11.5)
    tracker.roll(12.0)
    assert tracker.value(12.0, 0.0) == 0.0
    assert tracker.sample_errors() == []


def test_p95_is_within_a_bin_of_the_exact_value():
    tracker = Tracker(Rule(name="r", when="p95_duration_ms", above=1, window_secs=60), now=0.0)
    durations = list(range(1, 1001))  # p95: 950 ms
    for duration in durations:
        tracker.add(op(duration), now=1.0)
    tracker.roll(1.0)
    value = tracker.value(1.0, 0.0)
    assert value is not None and 950 <= value <= 950 * 1.1


def test_sample_errors_are_distinct_newest_first_and_at_most_three():
    tracker = Tracker(Rule(name="r", when="failure_rate", above=0.5, window_secs=60), now=0.0)
    for tick, error in enumerate(["a", "b", "a", "c", "d", "e"], 1):
        tracker.add(op(1, False, error), now=tick)
        tracker.roll(tick)
    assert tracker.sample_errors() == ["e", "d", "c"]
