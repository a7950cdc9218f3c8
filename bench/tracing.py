#!/usr/bin/env python3
"""The cost of tracing: the relay with OTEL_* unset, sampling 1% and sampling 100%, in one run.

    scripts/bench --tracing [--duration 8] [--rounds 3] [--ref <commit>] [--out bench/results] [--profile]

Five relays (memory dedupe, one broker) at saturation (closed loop), driven by the same load generator:

  reference     tracing unset; with --ref, that commit's relay (bench/run.py's `git archive` checkout, served
                with this venv), else this build again, so the first ratio then shows the noise
  unset         tracing unset (no OTEL_* variable at all)
  sampled-0%    parentbased_traceidratio 0: tracing on, no webhook sampled (what the unsampled path costs:
                each record still carries its trace context)
  sampled-1%    parentbased_traceidratio 0.01, exporting by OTLP/HTTP to a sink on 127.0.0.1
  sampled-100%  the same at 1.0

The sink (bench/otlp_sink.py) answers 200 and counts requests, bytes and spans, so the exporter does
all its work. Rounds alternate the targets to spread the machine's noise; each figure is the median
round. The relay's CPU is read per process and per thread: the event loop's (the main thread), and the
others' (the span exporter's thread, the event loop's workers; the median of the rounds' differences,
so the two need not add up to the process's median); the broker's too, on the same cores. Then,
in this process, the SDK's own cost per span (start, attributes, end; OTLP encoding),
to say where the 100% run's time goes. Reports, never asserts.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from localkafka import LocalKafka, free_port  # noqa: E402

from bench import profile as sampling  # noqa: E402
from bench.load import SECRET, LoadGen, write_templates  # noqa: E402
from bench.otlp_sink import OtlpSink  # noqa: E402
from bench.run import PYTHON, Target, checkouts, cpu_seconds  # noqa: E402
from bench.span_costs import TREE, sdk_costs  # noqa: E402

RATIOS = {"sampled-0%": "0.0", "sampled-1%": "0.01", "sampled-100%": "1.0"}


def relays(bootstrap: str, sinks: dict[str, OtlpSink], reference: Path | None) -> list[Target]:
    """A --ref checkout is served as bench/run.py serves one: PYTHONPATH and the working directory put its
    `relay` first."""
    serve = [str(Path(PYTHON).parent / "mytpe-relay"), "serve"]
    base = {
        "RELAY_MYTPE_SECRETS": SECRET,
        "RELAY_HOST": "127.0.0.1",
        "RELAY_DEDUPE_URL": "memory://",
        "RELAY_LOG_LEVEL": "WARNING",
        "RELAY_TOPIC_PREFIX": "bench",
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
    }
    if reference is None:
        first = Target("reference", [serve], dict(base), [0], "/readyz")
    else:
        at_ref = [[PYTHON, "-m", "relay", "serve"]]
        first = Target("reference", at_ref, {**base, "PYTHONPATH": str(reference)}, [0], "/readyz", cwd=reference)
    targets = [first, Target("unset", [serve], dict(base), [0], "/readyz")]
    for name, ratio in RATIOS.items():
        tracing = {
            "OTEL_EXPORTER_OTLP_ENDPOINT": sinks[name].endpoint,
            "OTEL_SERVICE_NAME": "mytpe-relay-bench",
            "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
            "OTEL_TRACES_SAMPLER_ARG": ratio,
        }
        targets.append(Target(name, [serve], {**base, **tracing}, [0], "/readyz"))
    for target in targets:
        target.ports = [free_port()]
        target.env["RELAY_PORT"] = str(target.ports[0])
    return targets


def measure(
    target: Target, load: LoadGen, kafka_pid: int, duration: float, conns: int, *, profile: Path | None = None
) -> dict[str, Any]:
    """bench/run.py's measure, keeping the warm-up's count: the sink's totals cover every request sent.
    `profile`: py-spy samples the relay meanwhile (bench/profile.py), into `<profile>/<target>-<n>.txt`."""
    warm = load.run(target.urls, mode="closed", conns=conns, duration=3, warmup=0)
    cpu, kafka_cpu = target.cpu(), cpu_seconds(kafka_pid)
    if len(target.processes) != 1:  # the split below reads one process's threads
        raise RuntimeError(f"{target.name}: one relay process expected, not {len(target.processes)}")
    main = main_thread_seconds(target.processes[0].pid)
    out = None if profile is None else profile / f"{target.name}-{len(list(profile.glob(target.name + '-*.md')))}"
    recorders = [] if out is None else sampling.record([p.pid for p in target.processes], duration, out)
    result = load.run(target.urls, mode="closed", conns=conns, duration=duration, warmup=0)
    if out is not None:
        Path(f"{out}.md").write_text(sampling.finish(recorders, out))
    answered = max(result["ok"], 1)
    result["cpu_per_10k"] = (target.cpu() - cpu) / answered * 10_000
    result["kafka_cpu_per_10k"] = (cpu_seconds(kafka_pid) - kafka_cpu) / answered * 10_000
    result["main_cpu_per_10k"] = (main_thread_seconds(target.processes[0].pid) - main) / answered * 10_000
    result["sent_with_warmup"] = warm["ok"] + result["ok"]
    return result


def main_thread_seconds(pid: int) -> float:
    """The CPU seconds of the process's main thread (its event loop): the rest of the process's is its other
    threads' (the span exporter's, the loop's workers')."""
    return cpu_seconds(pid, thread=pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per run")
    parser.add_argument("--rounds", type=int, default=3, help="runs per target, alternated")
    parser.add_argument("--conns", type=int, default=64, help="connections of the closed loop")
    parser.add_argument("--ref", default="", help="the reference relay's commit (default: this build)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--profile", action="store_true", help="py-spy each run into <out>/profile (bench/profile.py)")
    args = parser.parse_args()
    profile = args.out / "profile" if args.profile else None
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
    args.out.mkdir(parents=True, exist_ok=True)
    load = LoadGen.build()
    runs: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory(prefix="mytpe-bench-tracing-") as tmp:
        work = Path(tmp)
        load.templates = write_templates(work)
        with (
            checkouts([args.ref] if args.ref else [], work) as refs,
            LocalKafka(work / "kafka", fast_start=False) as kafka,
            OtlpSink() as none,
            OtlpSink() as one,
            OtlpSink() as every,
        ):
            sinks = {"sampled-0%": none, "sampled-1%": one, "sampled-100%": every}
            kafka_pid = int(kafka.pid_file.read_text())
            targets = relays(kafka.bootstrap, sinks, next(iter(refs.values()), None))
            for target in targets:
                target.start(work)
            try:
                for round_ in range(args.rounds):
                    for target in targets if round_ % 2 == 0 else reversed(targets):
                        run = measure(target, load, kafka_pid, args.duration, args.conns, profile=profile)
                        if set(run["statuses"]) != {"200"}:
                            raise RuntimeError(f"{target.name}: answers {run['statuses']}, not all 200")
                        runs.setdefault(target.name, []).append(run)
                        print(f"bench: {target.name} round {round_ + 1}: {run['rps']:.0f} req/s", flush=True)
            finally:
                for target in targets:
                    target.stop()  # SIGTERM: the relay flushes its last spans to the sink before it exits
            exported = {name: _exported(sink, runs.get(name, [])) for name, sink in sinks.items()}
            ref = next(iter(refs), None)  # the commit's short name
    context = {"duration": args.duration, "conns": args.conns, "rounds": args.rounds, "ref": ref}
    summary = summarise(runs, exported, sdk_costs(), **context)
    results = profile or args.out  # a profiled run's figures carry py-spy's cost: never the run of record
    (results / "tracing.json").write_text(json.dumps(summary, indent=2) + "\n")
    (results / "tracing.md").write_text(markdown(summary))
    print(markdown(summary))
    return 0


def _exported(sink: OtlpSink, runs: list[dict[str, Any]]) -> dict[str, Any]:
    sent = max(sum(run["sent_with_warmup"] for run in runs), 1)
    counts = sink.counts
    return {
        "webhooks": sent,
        "posts": counts.requests,
        "bytes_per_webhook": counts.received_bytes / sent,
        "spans_per_webhook": None if counts.spans is None else counts.spans / sent,
        "bytes_per_span": None if not counts.spans else counts.received_bytes / counts.spans,
    }


def summarise(
    runs: dict[str, list[dict[str, Any]]], exported: dict[str, dict[str, Any]], sdk: dict[str, Any], **context: Any
) -> dict[str, Any]:
    def median(name: str, key: str) -> float:
        return float(statistics.median(run[key] for run in runs[name]))

    def by_thread(name: str) -> dict[str, Any]:
        """The event loop's thread and the others, µs per webhook: each round's, and their medians."""
        main = [run["main_cpu_per_10k"] * 100 for run in runs[name]]
        others = [(run["cpu_per_10k"] - run["main_cpu_per_10k"]) * 100 for run in runs[name]]
        return {
            "main_us_each": main,
            "others_us_each": others,
            "main_us_per_webhook": statistics.median(main),
            "others_us_per_webhook": statistics.median(others),
        }

    table: dict[str, dict[str, Any]] = {
        name: {
            "rps": median(name, "rps"),
            "rps_each": [run["rps"] for run in runs[name]],
            "p99_ms": median(name, "p99_ms"),
            "cpu_us_per_webhook": median(name, "cpu_per_10k") * 100,  # CPU s per 10k = 100 µs per webhook
            **by_thread(name),
            "broker_us_per_webhook": median(name, "kafka_cpu_per_10k") * 100,
            **exported.get(name, {}),
        }
        for name in runs
    }
    unset = table["unset"]
    extra = table["sampled-100%"]["cpu_us_per_webhook"] - unset["cpu_us_per_webhook"]
    spans = table["sampled-100%"].get("spans_per_webhook") or 0.0
    sdk_us = None
    if sdk.get("relay_tree_us") is not None:  # the relay makes a sampled webhook's spans; the exporter encodes them
        sdk_us = spans * (sdk["relay_tree_us"] / TREE + sdk["encode_us"])
    # The 1% run's spans over 1% of its webhooks: a traced webhook's tree, moved by the share its ratio drew.
    per_trace = (table["sampled-1%"].get("spans_per_webhook") or 0.0) / float(RATIOS["sampled-1%"])
    # At 100% every webhook is traced: fewer than TREE spans per webhook means the batch processor's queue
    # (OTEL_BSP_MAX_QUEUE_SIZE) dropped some. (Measured against the 1% run until 2026-12-04, whose draw moves
    # by a few percent: a drop that size read as none.)
    dropped = 1 - spans / TREE if spans else None
    return {
        **context,
        "targets": table,
        "sdk_per_span_us": sdk,
        "ratio_unset_to_reference": unset["rps"] / table["reference"]["rps"],
        "ratio_0pct_to_unset": table["sampled-0%"]["rps"] / unset["rps"],
        "ratio_1pct_to_unset": table["sampled-1%"]["rps"] / unset["rps"],
        "ratio_100pct_to_unset": table["sampled-100%"]["rps"] / unset["rps"],
        "extra_cpu_us_100pct": extra,
        "sdk_share_us_100pct": sdk_us,
        "spans_per_traced_webhook": per_trace or None,
        "dropped_share_100pct": dropped,
    }


def markdown(summary: dict[str, Any]) -> str:
    def optional(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    rows = [
        f"| {name} | {t['rps']:,.0f} | {' / '.join(f'{r:,.0f}' for r in t['rps_each'])} | {t['p99_ms']:.2f}"
        f" | {t['cpu_us_per_webhook']:.1f} | {t['main_us_per_webhook']:.1f} | {t['others_us_per_webhook']:.1f}"
        f" | {t['broker_us_per_webhook']:.1f} | {optional(t.get('spans_per_webhook'), '.2f')}"
        f" | {optional(t.get('bytes_per_webhook'), ',.0f')} |"
        for name, t in summary["targets"].items()
    ]
    reference = f"commit {summary['ref']}" if summary["ref"] else "this build again (no --ref: the ratio is noise)"
    sdk = summary["sdk_per_span_us"]
    where = ""
    if summary["sdk_share_us_100pct"] is not None:
        where = (
            f" Measured apart in this process: {sdk['relay_tree_us']:.1f} µs for the relay to make and end a"
            f" sampled tree of five spans (the SDK's tracer: {sdk['sdk_tree_us']:.1f} µs; one SDK span,"
            f" {sdk['start_end_us']:.1f} µs), {sdk['encode_us']:.1f} µs for the relay to encode a span as OTLP"
            f" (the SDK's own encoder: {sdk['sdk_encode_us']:.1f} µs), so about"
            f" {summary['sdk_share_us_100pct']:.0f} µs for a traced webhook's spans; a tree of five spans the"
            " ratio did not sample costs"
            f" {sdk['unsampled_tree_us']:.1f} µs in the SDK (the relay starts none of them for a webhook it does"
            " not sample)."
        )
    dropped = summary["dropped_share_100pct"]
    if dropped is not None:
        where += (
            f" The 1% run's spans over 1% of its webhooks: {summary['spans_per_traced_webhook']:.1f} (the share"
            " its ratio drew moves this from the spans of one traced webhook); "
        ) + (
            "at 100% none were dropped."
            if dropped < 0.005
            else f"at 100% the batch processor dropped {dropped:.0%} (a full queue): their export is not counted."
        )
    return "\n".join(
        [
            "| relay | req/s (median) | each round | p99 ms (closed loop) | CPU µs / webhook | of it, the event"
            " loop's thread | of it, other threads (the exporter) | broker CPU µs / webhook | spans / webhook"
            " | OTLP bytes / webhook |",
            "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|",
            *rows,
            "",
            f"- unset / reference ({reference}): **{summary['ratio_unset_to_reference']:.3f}x**",
            f"- sampled 0% / unset (tracing on, no webhook sampled): **{summary['ratio_0pct_to_unset']:.3f}x**",
            f"- sampled 1% / unset: **{summary['ratio_1pct_to_unset']:.3f}x**",
            f"- sampled 100% / unset: **{summary['ratio_100pct_to_unset']:.3f}x**,"
            f" {summary['extra_cpu_us_100pct']:+.1f} CPU µs per webhook.{where}",
            "",
            f"{summary['rounds']} alternated rounds of {summary['duration']:g} s, {summary['conns']} connections;"
            " spans exported by OTLP/HTTP to a counting sink on 127.0.0.1.",
            "",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
