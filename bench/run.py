#!/usr/bin/env python3
"""The relay against the ceiling of its stack and a naive handler, side by side in one run.

    scripts/bench [--duration 10] [--rates 0.1,0.25,0.5,0.75] [--out bench/results] [--rounds N]

Starts a real Kafka broker (KRaft, loopback) and Redis, then serves each target in turn on loopback
and drives it with the same load generator (bench/loadgen, Go, standard library), which signs every
request as MyTPE does with a unique delivery id:

  bare          Starlette+uvicorn reading the body and answering 200: the ceiling of the stack
  naive         verify, parse, `send_and_wait` per request (bench/targets.py)
  floor         verify, parse, publish through the relay's own batched publisher (bench/targets.py)
  relay-memory  mytpe-relay, in-memory dedupe
  relay-memory-plain  mytpe-relay's app and uvicorn settings, in-memory dedupe, with uvicorn's stock
                httptools protocol instead of GuardedHttpTools (bench/targets.py relay-plain)
  relay-redis   mytpe-relay, Redis dedupe
  relay-redis-x2 two relay processes sharing Redis, connections split between them (scale-out)
  relay-memory@<commit>  with --ref <commit>: that commit's relay, in-memory dedupe, served from a
                throwaway `git worktree` with this venv's packages (an A/B in one run; removed after)

For each: requests/s at saturation (closed loop), CPU seconds per 10k answered requests and peak RSS
of the target's processes (and the broker's CPU, and the records per Kafka batch it appended:
bench/kafkalog.py), then latency at fixed open-loop rates, fractions of the bare ceiling measured first.
Writes results.json, results.md and latency.png under --out.
With --rounds N, every target is measured N times, in a new order each round, each figure is its median round, and
issue 28's goal ratios are given round by round (bench/rounds.py). With --pin, each target runs alone on
CPU 1 and everything else (the broker, Redis, the generator, the publisher alone, this script) on CPU 0, so
that a target never shares its core with them: the other extreme from the run without it, in which all of
them share both cores (a replica in production shares a node with no load generator, and with a broker only
if the scheduler puts it there). Pinned, the broker's JVM and the Go generator
see one CPU each, so they run as on a one-CPU machine (the JVM then picks its serial collector). Reports,
never asserts: the machine is
shared and noisy, so read the ratios of one run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from localkafka import LocalKafka, free_port  # noqa: E402

from bench import kafkalog, report, tail  # noqa: E402
from bench import profile as sampling  # noqa: E402
from bench import rounds as bench_rounds  # noqa: E402
from bench.load import SECRET, LoadGen, write_templates  # noqa: E402
from tests.servers import LocalRedis  # noqa: E402

PYTHON = sys.executable
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int, *, thread: int | None = None) -> float:
    """A process's CPU seconds (user and system), or with `thread`, that thread's only."""
    stat = Path(f"/proc/{pid}/stat" if thread is None else f"/proc/{pid}/task/{thread}/stat")
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Target:
    """One or more server processes answering on their own loopback ports."""

    name: str
    commands: list[list[str]]
    env: dict[str, str]
    ports: list[int]
    ready_path: str = "/webhooks/mytpe"
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    path: str = "/webhooks/mytpe"
    cwd: Path | None = None  # a --ref checkout: `python -m relay` imports the package from there
    cpus: str = ""  # with --pin: `taskset -c` runs the target's processes on these CPUs only

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{port}{self.path}" for port in self.ports]

    def start(self, log_dir: Path, timeout: float = 60.0) -> None:
        for index, command in enumerate(self.commands):
            log = (log_dir / f"{self.name}-{index}.log").open("wb")
            if self.cpus:
                command = ["taskset", "-c", self.cpus, *command]  # noqa: PLW2901 - started pinned, threads too
            self.processes.append(
                subprocess.Popen(  # noqa: S603
                    command, env={**os.environ, **self.env}, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT
                )
            )
        deadline = time.monotonic() + timeout
        for port in self.ports:
            while not _answers(f"http://127.0.0.1:{port}{self.ready_path}"):
                if time.monotonic() > deadline or any(p.poll() is not None for p in self.processes):
                    self.stop()
                    raise RuntimeError(f"{self.name} did not start; see {log_dir}/{self.name}-*.log")
                time.sleep(0.2)

    def cpu(self) -> float:
        return sum(cpu_seconds(p.pid) for p in self.processes)

    def peak_rss(self) -> float:
        return sum(peak_rss_mib(p.pid) for p in self.processes)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.processes.clear()


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - loopback URL built here
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer (405 on GET /webhooks/mytpe) means the server is up
    except OSError:
        return False


def relay_env(bootstrap: str, port: int, dedupe: str) -> dict[str, str]:
    return {
        "RELAY_MYTPE_SECRETS": SECRET,
        "RELAY_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "RELAY_HOST": "127.0.0.1",
        "RELAY_PORT": str(port),
        "RELAY_DEDUPE_URL": dedupe,
        "RELAY_LOG_LEVEL": "WARNING",
    }


def targets(bootstrap: str, redis_url: str, refs: dict[str, Path]) -> list[Target]:
    serve = [str(Path(PYTHON).parent / "mytpe-relay"), "serve"]
    baseline = [PYTHON, str(ROOT / "bench" / "targets.py")]
    bare, naive, floor, memory, redis, plain = (free_port() for _ in range(6))
    pair = [free_port(), free_port()]
    two_relays = [[*serve, "--port", str(port)] for port in pair]
    kafka = ["--bootstrap", bootstrap, "--secret", SECRET]
    memory_env = relay_env(bootstrap, memory, "memory://")
    at_refs = []
    for short, checkout in refs.items():  # PYTHONPATH and the working directory put the checkout's relay first
        port = free_port()
        env = {**relay_env(bootstrap, port, "memory://"), "PYTHONPATH": str(checkout)}
        command = [[PYTHON, "-m", "relay", "serve"]]
        at_refs.append(Target(f"relay-memory@{short}", command, env, [port], "/readyz", cwd=checkout))
    redis_env = relay_env(bootstrap, redis, redis_url)
    return [
        Target("bare", [[*baseline, "bare", "--port", str(bare)]], {}, [bare]),
        Target("naive", [[*baseline, "naive", "--port", str(naive), *kafka]], {}, [naive]),
        Target("floor", [[*baseline, "floor", "--port", str(floor), *kafka]], {}, [floor]),
        Target("relay-memory", [serve], memory_env, [memory], "/readyz"),
        *at_refs,
        Target(
            "relay-memory-plain",
            [[*baseline, "relay-plain", "--port", str(plain)]],
            relay_env(bootstrap, plain, "memory://"),
            [plain],
            "/readyz",
        ),
        Target("relay-redis", [serve], redis_env, [redis], "/readyz"),
        Target("relay-redis-x2", two_relays, relay_env(bootstrap, pair[0], redis_url), pair, "/readyz"),
    ]


@contextlib.contextmanager
def checkouts(commits: list[str], into: Path) -> Iterator[dict[str, Path]]:
    """Each commit's tree, extracted by `git archive` under `into`; removed on exit.

    An export rather than `git worktree add`: it writes nothing into the repository's metadata, so a bench
    killed halfway leaves no worktree to prune. The venv's packages serve every checkout."""
    found: dict[str, Path] = {}
    try:
        for commit in commits:
            try:
                short = _git("rev-parse", "--short=7", f"{commit}^{{commit}}").strip()
            except subprocess.CalledProcessError:
                raise SystemExit(f"bench: --ref {commit}: not a commit of this repository") from None
            checkout = into / f"ref-{short}"
            checkout.mkdir(parents=True)
            archive = subprocess.run(["git", "archive", short], cwd=ROOT, capture_output=True, check=True)  # noqa: S603, S607
            subprocess.run(["tar", "-x", "-C", str(checkout)], input=archive.stdout, check=True)  # noqa: S603, S607
            found[short] = checkout
        yield found
    finally:
        for checkout in found.values():
            shutil.rmtree(checkout, ignore_errors=True)


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, check=True, text=True).stdout  # noqa: S603, S607


def measure(
    target: Target,
    load: LoadGen,
    kafka_pid: int,
    duration: float,
    conns: int,
    *,
    profile: Path | None = None,
    redis_pid: int = 0,
    segments: kafkalog.Reader | None = None,
) -> dict[str, Any]:
    """Saturation: a warm-up, then a closed loop whose CPU and memory are read from /proc (and, with
    `profile`, sampled by py-spy: bench/profile.py). With `redis_pid`, redis-server's CPU per webhook too: on
    these two cores it competes with the relay. With `segments` (the broker's log), the Kafka record batches
    the broker appended, per webhook, and their records per batch: the relay and the broker pay per batch."""
    load.run(target.urls, mode="closed", conns=conns, duration=3, warmup=0)  # connections, JIT, topic metadata
    written = _appended(segments)
    cpu, kafka_cpu = target.cpu(), cpu_seconds(kafka_pid)
    redis_cpu = cpu_seconds(redis_pid) if redis_pid else 0.0
    pids = [process.pid for process in target.processes]
    recorders = sampling.record(pids, duration, profile / target.name) if profile else []
    result = load.run(target.urls, mode="closed", conns=conns, duration=duration, warmup=0)
    if profile:
        (profile / f"{target.name}-profile.md").write_text(sampling.finish(recorders, profile / target.name))
    answered = max(result["ok"], 1)
    result["cpu_per_10k"] = (target.cpu() - cpu) / answered * 10_000
    result["kafka_cpu_per_10k"] = (cpu_seconds(kafka_pid) - kafka_cpu) / answered * 10_000
    if redis_pid:
        result["redis_cpu_per_10k"] = (cpu_seconds(redis_pid) - redis_cpu) / answered * 10_000
    _batches(result, written, _appended(segments), answered)
    result["peak_rss_mib"] = target.peak_rss()
    return result


def _appended(segments: kafkalog.Reader | None) -> kafkalog.Appended | None:
    """What the broker's log holds, or None: not read, or unreadable (said, and the run goes on)."""
    if segments is None:
        return None
    try:
        return segments.appended()
    except (OSError, ValueError, struct.error) as exc:
        print(f"bench: the broker's log segments could not be read ({exc}); no records per batch", flush=True)
        return None


def producer_floor(bootstrap: str) -> dict[str, Any]:
    """bench/producer.py in a process of its own: aiokafka's cost per record, with nothing around it."""
    command = [PYTHON, str(ROOT / "bench" / "producer.py"), "--bootstrap", bootstrap]
    done = subprocess.run(command, capture_output=True, check=True, timeout=300)  # noqa: S603
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def open_loop(
    target: Target,
    load: LoadGen,
    *,
    ceiling: float,
    capacity: float,
    args: argparse.Namespace,
    fractions: list[float],
    work: Path,
    segments: kafkalog.Reader | None = None,
) -> dict[str, Any]:
    """Latency at each fixed rate (fractions of the ceiling) this target can serve; with it, the target's CPU
    there (per webhook, and CPU seconds per second summed over its processes: the generator's warm-up
    included, so over every request it sent, answered 2xx or not), the records per Kafka batch, and where
    the slow answers sat in time (bench/tail.py)."""
    runs = {}
    for fraction in fractions:
        rate = round(ceiling * fraction)
        if rate > 1.2 * capacity:
            continue  # far past this target's capacity: the backlog only grows
        timeline = work / f"{target.name}-{fraction}.timeline"
        written, cpu, began = _appended(segments), target.cpu(), time.monotonic()
        run = load.run(
            target.urls, mode="open", conns=args.conns, duration=args.duration, warmup=3, rate=rate, timeline=timeline
        )
        used, elapsed = target.cpu() - cpu, time.monotonic() - began
        sent = max(run["sent"] - run["late"], 1)  # a late request was dropped, never sent
        run["cpu_per_10k"] = used / sent * 10_000
        run["busy"] = used / elapsed
        _batches(run, written, _appended(segments), sent)
        found = tail.episodes(tail.read(timeline))
        run["slow_episodes"] = found.episodes
        if found.slow:  # no answer, no share: left out rather than read as 0%
            run["slow_in_largest"] = found.largest_share
        runs[str(fraction)] = run
    return runs


def _batches(
    run: dict[str, Any], before: kafkalog.Appended | None, after: kafkalog.Appended | None, count: int
) -> None:
    """The Kafka record batches the broker appended between `before` and `after`, per webhook of `count`, and
    their records per batch (none for a target that published nothing: no figure, rather than a 0)."""
    if before is not None and after is not None:
        appended = after.since(before)
        run["kafka_batches_per_webhook"] = appended.batches / count
        if appended.batches:
            run["kafka_records_per_batch"] = appended.records / appended.batches


def measure_rounds(
    chosen: list[Target],
    load: LoadGen,
    kafka_pid: int,
    *,
    redis_pid: int,
    work: Path,
    args: argparse.Namespace,
    profile: Path | None,
    segments: kafkalog.Reader | None = None,
) -> list[dict[str, dict[str, Any]]]:
    """Every target measured `args.rounds` times (bench/rounds.py), at the open-loop rates set by the first
    round's bare ceiling; one dict of runs by target name per round."""
    by_name = {target.name: target for target in chosen}
    fractions = sorted({float(f) for f in args.rates.split(",")} | {args.half})
    if args.rounds > 1:
        fractions = sorted({*fractions, args.goal_rate})
    ceiling = 0.0
    passes: list[dict[str, dict[str, Any]]] = []
    for index in range(args.rounds):
        runs: dict[str, dict[str, Any]] = {}
        for name in bench_rounds.order(list(by_name), index):
            target = by_name[name]
            print(f"bench: {name}" + (f" (round {index + 1} of {args.rounds})" if args.rounds > 1 else ""), flush=True)
            target.start(work)
            try:
                run = measure(
                    target,
                    load,
                    kafka_pid,
                    args.duration,
                    args.conns,
                    profile=profile,
                    redis_pid=redis_pid,
                    segments=segments,
                )
                ceiling = ceiling or run["rps"]  # bare comes first: its saturation sets the rates
                run["open"] = open_loop(
                    target,
                    load,
                    ceiling=ceiling,
                    capacity=run["rps"],
                    args=args,
                    fractions=fractions,
                    work=work,
                    segments=segments,
                )
            finally:
                target.stop()
            runs[name] = run
            print(f"bench: {name}: {run['rps']:.0f} req/s, {run['cpu_per_10k']:.2f} CPU s/10k", flush=True)
        passes.append(runs)
    return passes


def stage_costs(runs: dict[str, dict[str, Any]], profile: Path) -> str:
    """CPU µs per webhook by stage for every profiled target: where the relay spends more than the floor."""
    stacks = {name: (profile / f"{name}.txt").read_text().splitlines() for name in runs}
    return sampling.stage_costs({name: (stacks[name], run["cpu_per_10k"] * 100) for name, run in runs.items()})


def write_results(summary: dict[str, Any], passes: list[dict[str, dict[str, Any]]], args: argparse.Namespace) -> str:
    """results.json, results.md (with rounds, the goal ratios of each) and latency.png; the Markdown."""
    text = report.markdown(summary)
    if args.rounds > 1:
        at = str(args.goal_rate)
        text += "\n" + bench_rounds.markdown([bench_rounds.goals(p, at=at) for p in passes], at=at)
        opened = tail.markdown(passes, at=at)
        if opened:
            text += "\n" + opened
    (args.out / "results.json").write_text(json.dumps(summary, indent=2) + "\n")
    (args.out / "results.md").write_text(text)
    report.plot(summary, args.out / "latency.png")
    return text


def _refused(args: argparse.Namespace) -> str:
    """Why these arguments cannot run, or ""."""
    if args.rounds < 1:
        return "--rounds must be 1 or more"
    if args.rounds > 1 and args.profile:
        return "--profile samples one pass: use it without --rounds"
    if args.pin and (not args.only or "relay-redis-x2" in args.only.split(",")):
        return "--pin gives each target one CPU, two processes too: pick targets with --only, not relay-redis-x2"
    if args.pin and not {0, 1} <= os.sched_getaffinity(0):
        return "--pin runs the targets on CPU 1 and the rest on CPU 0: this process may not use both"
    return ""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds per run")
    parser.add_argument("--conns", type=int, default=64, help="connections of the closed loop")
    parser.add_argument("--rates", default="0.1,0.25,0.5,0.75", help="open-loop rates, fractions of the bare ceiling")
    parser.add_argument("--half", type=float, default=0.5, help="the fixed rate of the latency columns")
    parser.add_argument("--only", default="", help="comma-separated target names (default: all)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    parser.add_argument("--ref", action="append", default=[], help="also serve this commit's relay (memory mode)")
    parser.add_argument("--profile", action="store_true", help="py-spy each closed loop (bench/profile.py)")
    parser.add_argument("--rounds", type=int, default=1, help="measure every target this many times (bench/rounds.py)")
    parser.add_argument("--goal-rate", type=float, default=0.25, help="issue 28's latency goal rate, with --rounds")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="each target on CPU 1 alone; the broker, Redis, the generator and the bench on CPU 0",
    )
    args = parser.parse_args()
    refused = _refused(args)
    if refused:
        parser.error(refused)
    args.out.mkdir(parents=True, exist_ok=True)
    profile = args.out if args.profile else None
    load = LoadGen.build()
    if args.pin:  # inherited by every process started from here on, except the targets (`cpus`)
        os.sched_setaffinity(0, {0})
    with tempfile.TemporaryDirectory(prefix="mytpe-bench-") as tmp:
        work = Path(tmp)
        load.templates = write_templates(work)
        with (
            checkouts(args.ref, work) as refs,
            LocalKafka(work / "kafka", fast_start=False) as kafka,
            LocalRedis(work / "redis") as redis,
        ):
            kafka_pid = int(kafka.pid_file.read_text())
            only = set(args.only.split(",")) if args.only else set()
            every = targets(kafka.bootstrap, redis.url, refs)
            chosen = [t for t in every if not only or t.name in only or t.name.startswith("relay-memory@")]
            for target in chosen if args.pin else ():
                target.cpus = "1"
            print("bench: the publisher alone", flush=True)
            producer = producer_floor(kafka.bootstrap)
            assert redis.process is not None  # noqa: S101 - started by the `with`
            redis_pid = redis.process.pid
            segments = kafkalog.Reader(kafka.data_dir / "data")  # the broker's log.dirs
            passes = measure_rounds(
                chosen, load, kafka_pid, redis_pid=redis_pid, work=work, args=args, profile=profile, segments=segments
            )
    runs = {name: passes[0][name] for name in passes[0]}
    if args.rounds > 1:
        runs = {name: bench_rounds.median_run([p[name] for p in passes if name in p]) for name in runs}
    context = {"machine": report.machine(), "duration": args.duration, "conns": args.conns, "pinned": args.pin}
    summary = report.summarise(runs, producer=producer, half=args.half, **context)
    if args.rounds > 1:
        summary["passes"] = passes  # every round's own figures, beside their medians in "runs"
    text = write_results(summary, passes, args)
    if profile:
        stages = stage_costs(runs, profile)
        (profile / "profile-stages.md").write_text(stages)
        print(stages)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
