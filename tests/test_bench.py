"""The benchmark's own parts: the load generator must send what the relay accepts, and the report
must compute its ratios from the runs it is given. No timing is asserted here."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from redis import Redis as SyncRedis

from bench import counted, inprocess, profile, report, tail
from bench.load import SECRET, LoadGen, write_templates
from bench.soak import checkpoints
from relay.settings import Secret, Settings
from tests.conftest import require_tool
from tests.fakes import FakePublisher
from tests.servers import LocalRedis, running_relay


@pytest.fixture(scope="module")
def loadgen(tmp_path_factory: pytest.TempPathFactory) -> LoadGen:
    require_tool("go")
    load = LoadGen.build()
    load.templates = write_templates(tmp_path_factory.mktemp("templates"))
    return load


async def test_every_generated_request_is_verified_and_distinct(
    loadgen: LoadGen, settings_factory: Callable[..., Settings], tmp_path: Path
) -> None:
    publisher = FakePublisher()
    timeline = tmp_path / "open.timeline"
    async with running_relay(settings_factory(secrets=(Secret(SECRET),)), publisher=publisher) as relay:
        closed = await asyncio.to_thread(
            loadgen.run, [relay.webhook_url], mode="closed", conns=4, duration=60, warmup=0, limit=300
        )
        opened = await asyncio.to_thread(
            loadgen.run, [relay.webhook_url], mode="open", conns=4, duration=1, warmup=0, rate=100, timeline=timeline
        )
    answers = tail.read(timeline)  # one line per measured answer, in order of scheduled send
    assert len(answers) == opened["ok"]
    sends = [sent for sent, _ in answers]
    assert sends == sorted(sends)
    assert sends[0] >= 0 and sends[-1] < 1_000_000
    assert sends[1] - sends[0] == pytest.approx(10_000, abs=1)  # scheduled at 100/s, whenever it went
    assert tail.p99([latency for _, latency in answers]) == round(opened["p99_ms"] * 1000)  # the generator's rule
    assert closed["statuses"] == {"200": 300}
    assert closed["io_errors"] == 0
    assert opened["ok"] == opened["sent"] > 0
    assert opened["statuses"] == {"200": opened["sent"]}
    events = [orjson.loads(sent.value) for sent in publisher.sent]
    assert len(events) == 300 + opened["sent"]
    assert len({event["id"] for event in events}) == len(events)  # one delivery id per request
    assert {event["type"] for event in events} == {
        "app.mytpe.pay.transaction.completed",
        "app.mytpe.pay.pay_link.updated",
    }
    keys = {sent.key for sent in publisher.sent}
    assert len(keys) > 100  # entity ids vary, so records spread over partitions as in production


def test_the_generators_timeline_is_in_send_order_and_its_p99_rounds_as_bench_tail_does() -> None:
    require_tool("go")
    done = subprocess.run(
        ["go", "test", "-v", "-run", "TestTimeline|TestPercentile", "."],  # noqa: S607
        check=False,
        cwd=Path(__file__).resolve().parent.parent / "bench" / "loadgen",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "--- PASS: TestTimelineIsWrittenInSendOrder" in done.stdout  # ran, not "no tests to run"
    assert "--- PASS: TestPercentileRoundsItsRank" in done.stdout


def test_slow_answers_are_grouped_into_episodes_of_adjacent_windows() -> None:
    # 1,000 answers sent every 10 ms; 19 of them slow, so the p99 is a slow one (50 ms) and they alone count
    slow = {*range(100, 110), 300, *range(500, 506), 700, 711}
    pairs = [(n * 10_000, 50_000 if n in slow else 1_000) for n in range(1000)]
    assert tail.WINDOW_US == 50_000
    # windows 20 and 21 (adjacent: one episode of 10), 60 (1), 100 and 101 (6), 140 (1), 142 (1: not adjacent)
    assert tail.episodes(pairs) == tail.Episodes(slow=19, episodes=5, largest_share=(10 + 6 + 1) / 19)
    assert tail.p99([latency for _, latency in pairs]) == 50_000
    assert tail.p99(list(range(150))) == 148  # rank 0.99 * 150 = 148.5, rounded to 149: the 149th of 150
    assert tail.episodes([]) == tail.Episodes(0, 0, 0.0)


def test_the_tail_table_gives_each_targets_open_loop_beside_its_closed_loop() -> None:
    def target(rps: float, episodes: int, open_: tuple[float, float, float], batch: float | None) -> dict[str, Any]:
        busy, cpu, share = open_
        opened: dict[str, Any] = {"rate": 1000, "busy": busy, "cpu_per_10k": cpu, "slow_episodes": episodes}
        opened["slow_in_largest"] = share
        closed: dict[str, Any] = {"rps": rps, "cpu_per_10k": cpu / 2, "open": {"0.25": opened}}
        if batch is not None:
            opened["kafka_records_per_batch"], closed["kafka_records_per_batch"] = batch, 3 * batch
        return closed

    # Skewed values in each column, so that a mean would read differently from the median
    passes = [
        {"bare": target(4000, 1, (0.2, 2.0, 0.9), None), "relay-redis": target(1500, 2, (0.9, 4.0, 1.0), 2.0)},
        {"bare": target(5000, 3, (0.9, 3.0, 0.5), None), "relay-redis": target(1600, 4, (0.5, 4.2, 0.2), 1.0)},
        {"bare": target(4100, 2, (0.3, 2.1, 0.8), None), "relay-redis": target(2600, 1, (0.8, 6.0, 0.9), 1.2)},
    ]
    del passes[2]["relay-redis"]["open"]["0.25"]["slow_in_largest"]  # a run with no slow answer has no share
    passes[1]["naive"] = target(2000, 1, (0.5, 1.0, 1.0), 1.0)  # not in every round: no row
    table = tail.markdown(passes, at="0.25")
    assert "| bare | 30% | 2.10 / 1.05 | - / - | 3,100 | 1 / 3 / 2 | 80% |" in table
    assert "| relay-redis | 80% | 4.20 / 2.10 | 1.20 / 3.60 | 600 | 2 / 4 / 1 | 60% |" in table
    assert "naive" not in table
    assert tail.markdown(passes, at="0.5") == ""  # no target open-looped there


def _run(rps: float, p99: float) -> dict[str, object]:
    return {
        "rps": rps,
        "statuses": {"200": 10},
        "io_errors": 0,
        "cpu_per_10k": 1.0,
        "kafka_cpu_per_10k": 0.5,
        "peak_rss_mib": 40.0,
        "open": {"0.5": {"rate": 500, "p50_ms": p99 / 4, "p99_ms": p99, "p999_ms": p99 * 2, **_ok()}},
    }


def _ok() -> dict[str, object]:
    return {"statuses": {"200": 10, "503": 2}, "io_errors": 1}


def test_report_ratios_and_table_come_from_the_runs() -> None:
    runs = {"bare": _run(1000, 2.0), "naive": _run(250, 8.0), "relay-memory": _run(800, 3.0)}
    runs["naive"]["redis_cpu_per_10k"] = 0.25  # read where the bench knows Redis's pid
    runs["naive"]["kafka_records_per_batch"] = 5.714  # read where the bench knows the broker's log
    producer = {"records_per_s": 900.0, "cpu_us_per_record": 40.0}
    machine = {"cpus": 2, "cpu": "x", "python": "3.11", "kernel": "k"}
    summary = report.summarise(runs, half=0.5, producer=producer, machine=machine, duration=10, conns=64)
    assert summary["ratios"] == {
        "relay/bare throughput": 0.8,
        "relay/bare p99 at half load": 1.5,
        "relay/naive throughput": 3.2,
    }
    table = report.markdown(summary)
    assert "| relay-memory | 800 | 0.75 | 3.00 | 6.00 | 1.00 | 0.50 | - | - | 40 | 3 |" in table
    assert "| naive | 250 | 2.00 | 8.00 | 16.00 | 1.00 | 0.50 | 5.71 | 0.25 | 40 | 3 |" in table
    assert "| relay/naive throughput | 3.20 |" in table


def test_a_pinned_run_says_so_in_its_header_and_an_unpinned_one_does_not() -> None:
    producer = {"records_per_s": 900.0, "cpu_us_per_record": 40.0}
    machine = {"cpus": 2, "cpu": "x", "python": "3.11", "kernel": "k"}
    runs = {"bare": _run(1000, 2.0)}
    for pinned in (True, False):
        summary = report.summarise(
            runs, half=0.5, producer=producer, machine=machine, duration=10, conns=64, pinned=pinned
        )
        assert ("Pinned: each target alone on CPU 1;" in report.markdown(summary)) is pinned


def test_a_pinned_run_refuses_a_target_of_two_processes_and_a_process_without_both_cpus(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bench import run

    def args(**given: Any) -> argparse.Namespace:
        return argparse.Namespace(**{"rounds": 1, "profile": False, "pin": False, "only": "", **given})

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert run._refused(args()) == ""
    assert run._refused(args(only="relay-redis-x2")) == ""  # unpinned, its two processes share both cores
    assert "relay-redis-x2" in run._refused(args(pin=True))  # every target: relay-redis-x2 too
    assert "relay-redis-x2" in run._refused(args(pin=True, only="bare,relay-redis-x2"))
    assert run._refused(args(pin=True, only="bare,relay-redis")) == ""
    for cpus in ({0}, {1}, {2, 3}):
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, cpus=cpus: cpus, raising=False)
        assert "CPU 0" in run._refused(args(pin=True, only="bare,relay-redis"))
        assert run._refused(args(only="bare,relay-redis")) == ""  # unpinned: any CPUs will do
    assert "--rounds" in run._refused(args(rounds=0))


def test_report_compares_the_relay_with_the_floor_redis_mode_and_a_ref() -> None:
    runs = {
        "naive": _run(250, 8.0),
        "floor": _run(1000, 2.0),
        "relay-memory": _run(800, 3.0),
        "relay-memory@67b3584": _run(400, 3.0),
        "relay-redis": _run(600, 12.0),
    }
    producer = {"records_per_s": 900.0, "cpu_us_per_record": 40.0}
    machine = {"cpus": 2, "cpu": "x", "python": "3.11", "kernel": "k"}
    summary = report.summarise(runs, half=0.5, producer=producer, machine=machine, duration=10, conns=64)
    assert summary["ratios"] == {
        "relay/naive throughput": 3.2,
        "relay/floor throughput": 0.8,
        "relay/floor CPU per webhook": 1.0,
        "relay-redis/relay-memory throughput": 0.75,
        "relay-redis/naive p99 at half load": 1.5,
        "relay-memory/relay-memory@67b3584 throughput": 2.0,
        "relay-memory/relay-memory@67b3584 CPU per webhook": 1.0,
    }


def test_profile_stages_split_each_target_cpu_by_its_samples() -> None:
    floor = [
        "main (x.py:1);webhook (bench/targets.py:9);hexdigest (hmac.py:1) 1",
        "main (x.py:1);run (uvicorn/a.py:3) 3",
    ]
    relay = [
        "run (asyncio/runners.py:1) 1",
        "main (x.py:1);claim (relay/dedupe/redis_store.py:9);write (asyncio/s.py:1) 1",
    ]
    table = profile.stage_costs({"floor": (floor, 40.0), "relay": (relay, 100.0)})
    assert "| uvicorn + httptools | 30.0 | 0.0 |" in table
    assert "| verify + parse (relay/mytpe) | 10.0 | 0.0 |" in table
    assert "| event loop (asyncio, uvloop) | 0.0 | 50.0 |" in table
    assert "| dedupe: relay | 0.0 | 50.0 |" in table  # a write to Redis is the store's cost, not the loop's
    assert "| **total** | 40.0 | 100.0 |" in table


@pytest.mark.parametrize("pipeline", ["/repo/relay/pipeline/relay.py:52", "/repo/relay/pipeline.py:52"])
def test_the_profile_has_a_pipeline_stage_before_and_after_the_split(pipeline: str) -> None:
    # STAGES named only "relay/pipeline.py", which the split removed: the pipeline's samples counted as the http
    # endpoint's, so `scripts/bench --profile --ref` A/Bs across the split misled. (Found by review, issue 22.)
    frames = [
        "__call__ (/repo/relay/http/webhook.py:130)",
        f"handle ({pipeline})",
        "deliver (/repo/relay/pipeline/deliverer.py:90)" if "pipeline/" in pipeline else "main (x.py:1)",
    ]
    assert profile.stage(frames) == "relay pipeline"


@pytest.mark.parametrize(
    "inner",
    ["start_span (trace/__init__.py:1187)", "traceparent (/repo/relay/tracing/otel.py:197)", "send (http/client.py:9)"],
)
def test_the_profile_has_a_tracing_stage(inner: str) -> None:
    # bench/tracing.py --profile exists to find where tracing spends time: its SDK samples (named by py-spy from
    # below the `opentelemetry` namespace package) counted as their caller's stage. (Found by review, issue 26.)
    caller = (
        "export (http/trace_exporter/__init__.py:3)"
        if "client" in inner
        else "handle (/repo/relay/pipeline/relay.py:5)"
    )
    assert (
        profile.stage(["__call__ (/repo/relay/http/webhook.py:130)", caller, inner])
        == "tracing (relay, OpenTelemetry SDK)"
    )


def test_soak_checkpoints_cover_100k_the_cap_and_the_end() -> None:
    assert checkpoints(1_000_000, 500_000) == [100_000, 500_000, 750_000, 1_000_000]
    assert checkpoints(50_000, 500_000) == [50_000]


def test_the_otlp_sink_counts_what_the_sdk_exporter_sends() -> None:
    """The tracing bench's sink is a real OTLP/HTTP endpoint for the real exporter: 200, bytes and spans counted."""
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    from bench.otlp_sink import OtlpSink

    with OtlpSink() as sink:
        exporter = OTLPSpanExporter(endpoint=f"{sink.endpoint}/v1/traces", timeout=10)
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("bench-test")
        with tracer.start_as_current_span("parent"):
            tracer.start_span("child").end()
        provider.shutdown()
        with pytest.raises(urllib.error.HTTPError) as refused:
            request = urllib.request.Request(f"{sink.endpoint}/v1/metrics", data=b"x")  # noqa: S310 - loopback
            urllib.request.urlopen(request, timeout=10)  # noqa: S310
        assert refused.value.code == 404
        refused.value.close()
    assert (sink.counts.requests, sink.counts.spans) == (2, 2)  # SimpleSpanProcessor: one POST per span
    assert sink.counts.received_bytes > 0


def test_the_tracing_report_compares_the_targets_of_one_run() -> None:
    from bench import tracing

    def runs(rps: float, cpu: float) -> list[dict[str, object]]:
        run = {"rps": rps, "p99_ms": 9.0, "cpu_per_10k": cpu, "main_cpu_per_10k": cpu - 0.1, "kafka_cpu_per_10k": 0.2}
        return [{**run, "sent_with_warmup": 1000} for _ in range(3)]

    # the split by thread is the median of each round's difference, not the difference of the medians
    # (process, main thread) per round: medians 1.2 and 1.15; differences 0.1, 0.4 and 0.05
    split = [(1.0, 0.9), (1.6, 1.2), (1.2, 1.15)]
    rounds = zip(runs(980, 0), split, strict=True)
    uneven = [{**run, "cpu_per_10k": cpu, "main_cpu_per_10k": main} for run, (cpu, main) in rounds]

    exported = {
        "sampled-0%": {"spans_per_webhook": 0.0, "bytes_per_webhook": 0.0},
        "sampled-1%": {"spans_per_webhook": 0.05, "bytes_per_webhook": 12.0},
        "sampled-100%": {"spans_per_webhook": 5.0, "bytes_per_webhook": 1200.0},
    }
    targets = {"reference": uneven, "unset": runs(990, 1.0)}
    targets |= {"sampled-0%": runs(975, 1.01), "sampled-1%": runs(970, 1.02), "sampled-100%": runs(700, 1.5)}
    sdk = {"start_end_us": 4.0, "encode_us": 2.0, "sdk_encode_us": 8.0, "unsampled_tree_us": 7.0}
    sdk |= {"relay_tree_us": 40.0, "sdk_tree_us": 60.0}  # per span, 8 to make and 2 to encode: not 4 + 2
    summary = tracing.summarise(targets, exported, sdk, duration=3, conns=64, rounds=3, ref=None)
    assert summary["ratio_unset_to_reference"] == 990 / 980
    reference = summary["targets"]["reference"]
    assert reference["main_us_per_webhook"] == pytest.approx(115.0)
    assert reference["others_us_per_webhook"] == pytest.approx(10.0)  # the difference of the medians: 5.0
    assert summary["ratio_1pct_to_unset"] == 970 / 990
    assert summary["ratio_0pct_to_unset"] == 975 / 990
    assert summary["extra_cpu_us_100pct"] == 50.0 and summary["sdk_share_us_100pct"] == 50.0
    table = tracing.markdown(summary)
    assert "| sampled-100% | 700 | 700 / 700 / 700 | 9.00 | 150.0 | 140.0 | 10.0 | 20.0 | 5.00 | 1,200 |" in table
    assert "this build again (no --ref: the ratio is noise)" in table
    assert "- sampled 0% / unset (tracing on, no webhook sampled): **0.985x**" in table
    assert summary["spans_per_traced_webhook"] == 5.0 and summary["dropped_share_100pct"] == 0.0
    assert "about 50 µs for a traced webhook's spans" in table and "at 100% none were dropped." in table
    assert "the SDK's own encoder: 8.0 µs" in table
    assert reference["others_us_each"] == pytest.approx([10.0, 40.0, 5.0])  # per round, kept beside the median
    # the drop is measured against a traced webhook's five spans, not the 1% run's drawn share
    exported["sampled-1%"]["spans_per_webhook"] = 0.048  # a draw of 0.96%: 4.8 spans per 1% of webhooks
    exported["sampled-100%"]["spans_per_webhook"] = 4.8
    dropped = tracing.summarise(targets, exported, sdk, duration=3, conns=64, rounds=3, ref=None)
    assert dropped["dropped_share_100pct"] == pytest.approx(0.04)
    assert "at 100% the batch processor dropped 4%" in tracing.markdown(dropped)
    assert "40.0 µs for the relay to make and end a sampled tree of five spans (the SDK's tracer: 60.0 µs" in table


def test_the_sdk_costs_are_measured_for_each_part() -> None:
    from bench.span_costs import sdk_costs

    costs = sdk_costs(spans=50)
    assert set(costs) == {"start_end_us", "encode_us", "sdk_encode_us", "unsampled_tree_us", "relay_tree_us"} | {
        "sdk_tree_us"
    }
    assert all(isinstance(value, float) and value >= 0 for value in costs.values())


def test_the_tracing_bench_serves_the_reference_commit_and_traces_only_the_sampled_relays(tmp_path) -> None:
    from bench import tracing
    from bench.otlp_sink import OtlpSink

    with OtlpSink() as none, OtlpSink() as one, OtlpSink() as every:
        sinks = {"sampled-0%": none, "sampled-1%": one, "sampled-100%": every}
        same, at_ref = tracing.relays("127.0.0.1:9", sinks, None), tracing.relays("127.0.0.1:9", sinks, tmp_path)
    assert [t.name for t in same] == ["reference", "unset", "sampled-0%", "sampled-1%", "sampled-100%"]
    assert same[0].commands == same[1].commands and same[0].cwd is None
    assert (at_ref[0].cwd, at_ref[0].env["PYTHONPATH"]) == (tmp_path, str(tmp_path))
    assert at_ref[0].commands[0][1:] == ["-m", "relay", "serve"]
    assert not [name for t in same[:2] for name in t.env if name.startswith("OTEL_")]
    traced = {t.name: t.env for t in same[2:]}
    assert traced["sampled-1%"]["OTEL_EXPORTER_OTLP_ENDPOINT"] == one.endpoint
    assert (traced["sampled-100%"]["OTEL_TRACES_SAMPLER_ARG"], traced["sampled-1%"]["OTEL_TRACES_SAMPLER_ARG"]) == (
        "1.0",
        "0.01",
    )
    assert traced["sampled-0%"]["OTEL_TRACES_SAMPLER_ARG"] == "0.0"
    assert len({t.env["RELAY_PORT"] for t in same}) == 5


def test_the_dedupe_count_empties_redis_before_each_run(tmp_path: Path) -> None:
    """bench/counted.py sends the same deliveries in each run: a Redis store left as the last run left it
    answered every one of the next run's as a duplicate, which counted Redis mode about 52k instructions
    per webhook too many. Memory dedupe starts empty in its own process: nothing to do."""
    require_tool("redis-server")
    with LocalRedis(tmp_path / "redis") as server, SyncRedis.from_url(server.url) as client:
        client.set("mytpe-relay:counted:dedupe:A", "done")
        counted._forget(server.url)
        left = client.dbsize()
        client.set("kept", "1")
        counted._forget(counted.MEMORY)
        kept = client.dbsize()
    assert (left, kept) == (0, 1)


def test_the_dedupe_count_forgets_before_each_counted_run(monkeypatch: pytest.MonkeyPatch) -> None:
    """`_per_webhook` runs `--requests` webhooks, then 200, and subtracts: the store is emptied before each."""
    calls: list[tuple[str, int | str]] = []
    monkeypatch.setattr(counted, "_forget", lambda dedupe: calls.append(("forget", dedupe)))

    def count(valgrind: str, calls_file: Path, requests: int, **options: object) -> int:
        calls.append(("count", requests))
        return requests * 1000

    monkeypatch.setattr(counted, "count", count)
    args = argparse.Namespace(requests=1200, in_flight=64, loop="uvloop")
    per_webhook, _ = counted._per_webhook(
        "valgrind", Path("calls.json"), args, "b:9092", ratio=None, dedupe="redis://r"
    )
    assert calls == [("forget", "redis://r"), ("count", 1200), ("forget", "redis://r"), ("count", counted.LOW)]
    assert per_webhook == 1000


def test_a_measured_child_caches_no_bytecode_for_the_next(tmp_path: Path) -> None:
    """A child that cached a module's bytecode spared the next child the compile, so a run pair counted the
    compile as per-webhook cost (about 26k instructions at ratio 0, seen in a fresh checkout)."""
    (tmp_path / "probe.py").write_text("VALUE = 1\n")
    command = [sys.executable, "-c", "import probe"]
    subprocess.run(command, cwd=tmp_path, env=inprocess.child_env(tmp_path), check=True)
    assert not (tmp_path / "__pycache__").exists()


def test_every_counted_and_measured_child_runs_with_that_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """bench/counted.py's warm-up and counted runs, and bench/inprocess.py's runs, all go through `child_env`."""
    seen: list[tuple[str, dict[str, str]]] = []

    def run(command: list[str], *, env: dict[str, str], **options: object) -> subprocess.CompletedProcess[str]:
        for part in command:
            if part.startswith("--cachegrind-out-file="):
                Path(part.split("=", 1)[1]).write_text("summary: 1000\n")
        seen.append((Path(command[0]).name, env))
        return subprocess.CompletedProcess(command, 0, "1.0\n", "")

    monkeypatch.setattr(subprocess, "run", run)
    calls = tmp_path / "calls.json"
    counted._warm(calls, "b:9092", in_flight=64, loop="uvloop")
    counted.count("valgrind", calls, 200, bootstrap="b:9092", ratio=0.0, otlp="", in_flight=64)
    inprocess.side(tmp_path, calls, 200)
    inprocess.side(tmp_path, calls, 200, valgrind="valgrind")
    assert [name for name, _ in seen] == [Path(sys.executable).name, "valgrind", Path(sys.executable).name, "valgrind"]
    assert all(env["PYTHONDONTWRITEBYTECODE"] == "1" for _, env in seen)


@pytest.mark.parametrize("script", ["counted.py", "inprocess.py"])
def test_the_counting_scripts_start_from_any_directory_without_the_venvs_path(tmp_path: Path, script: str) -> None:
    """`python bench/counted.py` puts its own tree on the path in `main()`: nothing before that may import
    from `bench` (a top-level import did, and ran only where the editable install supplied the path)."""
    path = Path(counted.__file__).with_name(script)
    done = subprocess.run([sys.executable, "-S", str(path), "--help"], cwd=tmp_path, capture_output=True, check=False)
    assert done.returncode == 0, done.stderr.decode()[-300:]


def test_the_counted_child_tunes_the_collector_as_serve_does(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`serve` freezes its startup objects and spaces the young generation's collections (`tune_gc`); a
    count at Python's defaults measured a collector the relay process never runs (10.8k more instructions
    per webhook, tracing unset). The child tunes it once its app is built, before the webhooks, and sends
    the first `requests` of all the requests it holds."""
    import relay.http.app
    import relay.http.server

    steps: list[str] = []
    real_create_app = relay.http.app.create_app

    def create_app(*args: Any, **kwargs: Any) -> Any:
        steps.append("create_app")
        return real_create_app(*args, **kwargs)

    async def run(app: object, calls: list[object], in_flight: int) -> float:
        steps.append(f"{len(calls)} webhooks")
        return 0.0

    monkeypatch.setattr(relay.http.app, "create_app", create_app)
    monkeypatch.setattr(relay.http.server, "tune_gc", lambda: steps.append("tune_gc"))
    monkeypatch.setattr(inprocess, "_run", run)
    calls = tmp_path / "calls.json"
    inprocess.requests_file(calls, 5)
    thresholds, frozen = gc.get_threshold(), gc.get_freeze_count()
    try:
        counted.drive(calls, 3, bootstrap="127.0.0.1:9", ratio=None, otlp="", in_flight=1, dedupe=counted.MEMORY)
    finally:  # were the fake missed, the real tuning is undone for the tests after this one
        gc.set_threshold(*thresholds)
        if gc.get_freeze_count() != frozen:
            gc.unfreeze()
    assert steps == ["create_app", "tune_gc", "3 webhooks"]


async def test_the_in_flight_driver_sends_each_request_once_from_as_many_tasks_as_in_flight() -> None:
    """bench/counted.py's driver: `in_flight` requests at once, each sent once, from `in_flight` workers. It
    made one task per request, all at once: driver work that the count took as the relay's (50k
    instructions per webhook, tracing unset)."""
    seen: list[bytes] = []
    now = peak = tasks = 0

    async def app(scope: dict[str, Any], receive: Callable[[], Any], send: Callable[[Any], Any]) -> None:
        nonlocal now, peak, tasks
        if scope["type"] == "lifespan":
            while (await receive())["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        now += 1
        peak, tasks = max(peak, now), max(tasks, len(asyncio.all_tasks()))
        seen.append((await receive())["body"])
        await asyncio.sleep(0)
        now -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    calls: list[tuple[bytes, list[tuple[bytes, bytes]]]] = [(f"{index}".encode(), []) for index in range(200)]
    await inprocess._run(app, calls, in_flight=8)
    assert sorted(seen) == sorted(body for body, _ in calls)
    assert peak == 8
    assert tasks <= 8 + 2  # the workers, the test's own task and the lifespan's


def test_the_count_refuses_a_run_no_longer_than_the_one_it_subtracts(tmp_path: Path) -> None:
    """`--requests 200` made both runs alike, and the child sent fewer requests than asked when the file
    held fewer: a count of nothing, or a division by zero."""
    path = Path(counted.__file__)
    done = subprocess.run(
        [sys.executable, "-S", str(path), "--requests", "200"], cwd=tmp_path, capture_output=True, check=False
    )
    assert done.returncode == 2 and b"more than 200" in done.stderr
    calls = tmp_path / "calls.json"
    inprocess.requests_file(calls, 2)
    with pytest.raises(ValueError, match="holds 2 requests, not 3"):
        counted.drive(calls, 3, bootstrap="127.0.0.1:9", ratio=None, otlp="", in_flight=1, dedupe=counted.MEMORY)


def test_the_whole_process_count_takes_off_the_idle_rate_over_the_longer_run() -> None:
    from bench.whole import Run, per_webhook

    high, low = Run(instructions=9_000_000, seconds=30.0), Run(instructions=2_000_000, seconds=10.0)
    raw, corrected = per_webhook(high, low, 1000, idle_per_second=50_000.0)
    assert raw == 7_000.0  # (9M - 2M) / 1000
    assert corrected == 6_000.0  # less 50k a second over the 20 s longer run, per webhook


def test_a_threads_cpu_is_read_apart_from_its_process() -> None:
    """bench/tracing.py splits the relay's CPU by thread: a busy thread's seconds are its own, not the main
    thread's (which waits meanwhile)."""
    from bench.run import cpu_seconds

    pid, read = os.getpid(), {}

    def busy() -> None:
        tid = threading.get_native_id()
        read["start"] = cpu_seconds(pid, thread=tid)
        until = time.thread_time() + 0.3
        while time.thread_time() < until:
            pass
        read["end"] = cpu_seconds(pid, thread=tid)

    main_before = cpu_seconds(pid, thread=pid)
    worker = threading.Thread(target=busy)
    worker.start()
    worker.join()
    main_after = cpu_seconds(pid, thread=pid)
    assert read["end"] - read["start"] >= 0.25  # /proc counts in ticks of 10 ms
    assert main_after - main_before < 0.1
