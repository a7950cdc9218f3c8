"""bench/rounds.py: several rounds of the bench as medians, and issue 28's goal ratios round by round.
Pure logic on made-up runs; no timing is asserted."""

from __future__ import annotations

from typing import Any

from bench import rounds


def _at(rate: float, p99: float, *, failed: int = 0) -> dict[str, Any]:
    latency = {"rate": rate, "rps": rate, "p50_ms": p99 / 4, "p90_ms": p99 / 2, "p99_ms": p99, "p999_ms": p99 * 2}
    return {
        **latency,
        "max_ms": p99 * 3,
        "statuses": {"200": 10, **({"503": failed} if failed else {})},
        "io_errors": 0,
    }


def _run(rps: float, cpu: float, opened: dict[str, dict[str, Any]], *, io_errors: int = 0) -> dict[str, Any]:
    return {
        "rps": rps,
        "cpu_per_10k": cpu,
        "kafka_cpu_per_10k": 0.5,
        "peak_rss_mib": 40.0,
        "statuses": {"200": 100},
        "io_errors": io_errors,
        "open": opened,
    }


def test_each_round_rotates_the_order_the_first_keeps_bare_first() -> None:
    names = ["bare", "naive", "floor", "relay-memory", "relay-redis"]
    assert rounds.order(names, 0) == names
    assert rounds.order(names, 1) == ["naive", "floor", "relay-memory", "relay-redis", "bare"]
    assert rounds.order(names, 7) == ["floor", "relay-memory", "relay-redis", "bare", "naive"]
    assert {tuple(sorted(rounds.order(names, i))) for i in range(10)} == {tuple(sorted(names))}
    assert rounds.order([], 3) == []


def test_a_target_s_rounds_become_medians_with_a_rate_kept_only_where_every_round_served_it() -> None:
    passes = [
        _run(900, 2.0, {"0.1": _at(100, 4.0), "0.25": _at(250, 30.0, failed=2)}, io_errors=1),
        _run(1200, 1.0, {"0.1": _at(100, 6.0), "0.25": _at(250, 10.0)}),
        _run(1000, 3.0, {"0.1": _at(100, 5.0)}),  # past capacity at 25%: skipped there
    ]
    for number, one in enumerate(passes):
        one["redis_cpu_per_10k"] = 0.1 * number
    run = rounds.median_run(passes)
    assert (run["rps"], run["cpu_per_10k"], run["redis_cpu_per_10k"], run["rounds"]) == (1000, 2.0, 0.1, 3)
    del passes[0]["redis_cpu_per_10k"]
    assert "redis_cpu_per_10k" not in rounds.median_run(passes)  # not read in every round: no median
    assert list(run["open"]) == ["0.1"]
    assert run["open"]["0.1"]["p99_ms"] == 5.0
    assert run["open"]["0.1"]["statuses"] == {"200": 30}
    assert (run["statuses"], run["io_errors"]) == ({"200": 300}, 1)
    two = rounds.median_run(passes[:2])
    assert two["open"]["0.25"]["p99_ms"] == 20.0  # the median of an even count: the mean of the middle two
    assert two["open"]["0.25"]["statuses"] == {"200": 20, "503": 2}


def test_the_goals_of_one_round() -> None:
    at = "0.25"
    one = {
        "naive": _run(1000, 1.0, {at: _at(800, 20.0)}),
        "floor": _run(2000, 1.0, {at: _at(800, 5.0)}),
        "relay-memory": _run(1600, 1.0, {at: _at(800, 10.0)}),
        "relay-redis": _run(1200, 1.0, {at: _at(800, 25.0)}),
    }
    assert rounds.goals(one, at=at) == {
        "redis/memory": 0.75,
        "redis p99/naive p99": 1.25,
        "naive load": 0.8,
        "memory/floor": 0.8,
    }
    one["relay-redis"]["open"] = {}  # past its capacity at that rate
    del one["floor"]
    assert rounds.goals(one, at=at) == {
        "redis/memory": 0.75,
        "redis p99/naive p99": None,
        "naive load": 0.8,
        "memory/floor": None,
    }
    assert rounds.goals({}, at=at) == dict.fromkeys(
        ("redis/memory", "redis p99/naive p99", "naive load", "memory/floor")
    )


def test_the_goal_table_gives_every_round_and_the_median_of_those_that_have_a_value() -> None:
    rows: list[dict[str, float | None]] = [
        {"redis/memory": 0.9, "redis p99/naive p99": 1.2, "naive load": 0.5, "memory/floor": 0.7},
        {"redis/memory": 1.1, "redis p99/naive p99": None, "naive load": 0.7, "memory/floor": 0.9},
        {"redis/memory": 0.8, "redis p99/naive p99": 2.0, "naive load": 0.6, "memory/floor": 1.0},
    ]
    text = rounds.markdown(rows, at="0.25")
    assert "| 2 | 1.10 | - | 70% | 0.90 |" in text
    assert "| median | 0.90 | 1.60 | 60% | 0.90 |" in text
    assert "at 25% of bare" in text
    empty = rounds.markdown([dict.fromkeys(rows[0])], at="0.25")
    assert "| median | - | - | - | - |" in empty
