"""bench/rounds.py: several rounds of the bench as medians, and issue 28's goal ratios round by round.
Pure logic on made-up runs; no timing is asserted."""

from __future__ import annotations

from typing import Any

from bench import report, rounds


def _at(rate: float, p99: float, *, failed: int = 0) -> dict[str, Any]:
    """An open-loop result whose other percentiles are not multiples of its p99: a ratio of the wrong one
    differs."""
    latency = {"rate": rate, "rps": rate, "p50_ms": 1.0, "p90_ms": 2.0, "p99_ms": p99, "p999_ms": p99 + 50}
    statuses = {"200": 10, **({"503": failed} if failed else {})}
    return {**latency, "max_ms": p99 + 100, "statuses": statuses, "io_errors": 0}


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


def test_each_round_orders_the_targets_anew_the_first_keeps_bare_first() -> None:
    names = ["bare", "naive", "floor", "relay-memory", "relay-redis"]
    orders = [rounds.order(names, i) for i in range(5)]
    assert orders[0] == names
    assert all(sorted(one) == sorted(names) for one in orders)
    after_memory = [one[one.index("relay-memory") + 1] if one[-1] != "relay-memory" else None for one in orders]
    assert after_memory[0] == "relay-redis"
    assert "relay-redis" not in after_memory[1:4]  # a rotation kept it there in every round
    assert len({one.index("relay-redis") for one in orders}) >= 3  # nor is its place always the same
    assert rounds.order([], 3) == []
    assert rounds.order(["a"], 3) == ["a"]
    assert [rounds.order(["a", "b"], i) for i in range(3)] == [["a", "b"], ["b", "a"], ["a", "b"]]


def test_a_target_s_rounds_become_medians_with_a_rate_kept_only_where_every_round_served_it() -> None:
    passes = [
        _run(900, 2.0, {"0.1": _at(100, 4.0), "0.25": _at(250, 30.0, failed=2)}, io_errors=1),
        _run(1200, 1.0, {"0.1": _at(100, 6.0), "0.25": _at(250, 10.0)}, io_errors=2),
        _run(1000, 6.0, {"0.1": _at(100, 5.0)}),  # past capacity at 25%: skipped there
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
    assert (run["statuses"], run["io_errors"]) == ({"200": 300}, 3)
    two = rounds.median_run(passes[:2])
    assert two["rps"] == 1050  # the median of an even count: the mean of the middle two
    assert two["open"]["0.25"]["p99_ms"] == 20.0
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
    assert "| 2 | 1.100 | - | 70% | 0.900 |" in text
    assert "| median of the rounds' ratios | 0.900 | 1.60 | 60% | 0.900 |" in text
    assert "at 25% of bare" in text
    missed: dict[str, float | None] = {
        "redis/memory": 0.8497,
        "redis p99/naive p99": 1.501,
        "naive load": 0.5,
        "memory/floor": 0.7996,
    }
    assert "| 1 | 0.849 | 1.51 | 50% | 0.799 |" in rounds.markdown([missed], at="0.25")  # none reads as met
    unbounded = {**missed, "redis/memory": float("nan"), "redis p99/naive p99": float("inf")}
    assert "| 1 | nan | inf |" in rounds.markdown([unbounded], at="0.25")
    exact = {**missed, "redis/memory": 1.001, "redis p99/naive p99": 0.07}  # 1.001 * 1000, 0.07 * 100: inexact
    assert "| 1 | 1.001 | 0.07 |" in rounds.markdown([exact], at="0.25")
    empty = rounds.markdown([dict.fromkeys(rows[0])], at="0.25")
    assert "| median of the rounds' ratios | - | - | - | - |" in empty


def test_a_table_of_medians_says_so() -> None:
    machine = {"cpus": 2, "cpu": "x", "python": "3.11", "kernel": "k"}
    producer = {"records_per_s": 900.0, "cpu_us_per_record": 40.0}
    one = {"relay-memory": _run(800, 1.0, {"0.25": _at(200, 5.0)}), "bare": _run(1000, 0.5, {"0.25": _at(200, 1.0)})}
    single = report.markdown(report.summarise(one, half=0.25, producer=producer, machine=machine, duration=8, conns=64))
    assert "| ratio (same run) | value |" in single
    assert "median" not in single
    medians = {name: rounds.median_run([run, run, run]) for name, run in one.items()}
    table = report.markdown(
        report.summarise(medians, half=0.25, producer=producer, machine=machine, duration=8, conns=64)
    )
    assert "Each figure is the target's median over 3 rounds" in table
    assert "| ratio of the medians (same run) | value |" in table
