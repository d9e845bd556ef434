"""Platform throughput: end-to-end events/s of real `actionstream worker` processes over a pre-filled topic.

consume -> validate -> route -> sequence update in RocksDB -> changelog, measured from the outside:
the worker(s) start on a topic already holding N events; we poll every worker's ``/metrics`` every
50 ms and time from the first poll at which EVERY worker has handled an event (accepted + duplicate +
rejected > 0) to the last poll at which a counter moved, once the group has committed every input offset
(start-up, group join and the 2-worker start-up rebalance excluded; reported separately as ``ready_s``).
The poll interval bounds the timing error (±0.1 s over runs of 10-30 s).

On a shared, loaded machine wall-clock rates swing by 2x between runs, so every run also reports
``events_per_cpu_s``: events divided by the CPU seconds (user + system, from ``/proc/<pid>/stat``) the
worker processes burned over the same interval - what one dedicated core would do. ``--baseline`` runs
the framework ceiling (``bench.faust_apps.decode_only``, a Faust agent that only decodes) over the same
topic the same way, so the ratio platform / decode-only is measured side by side.

    python -m bench.platform_throughput --events 100000 --users 10000 [--workers 2] [--bootstrap host:port]

Importable: :func:`measure_platform` returns a :class:`PlatformRun` (used by ``bench.run``). With several workers
it also gives the rate until the first of them ran out of work and how long the others went on alone; the
benchmark's scale-out figure is the median of 3 alternating rounds of one and two workers
(``bench.sections._scale_out``); ``--repeat`` here repeats one configuration.
"""

from __future__ import annotations

import argparse
import logging
import os
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
from kafka import KafkaAdminClient, TopicPartition

from bench.env import BenchEnv, topic_end_offsets
from bench.live import HANDLED_COUNTERS, handled, metric, scrape
from bench.procs import Proc, rss_bytes, start_module
from bench.workload import Workload, make_events
from streams.broker import free_port
from streams.topics import uncommitted

__all__ = ["PlatformRun", "Stalled", "cpu_seconds", "measure_decode_only", "measure_platform", "start_workers"]

log = logging.getLogger(__name__)


STALL_S = 60.0  # no event handled for this long = stalled (a normal run's longest pause, a rebalance, is < 15 s)
STACK_DUMP_WAIT_S = 3.0


class Stalled(RuntimeError):
    """The workers handled no event for ``STALL_S`` seconds; their logs hold their thread and task stacks."""


@dataclass(frozen=True)
class PlatformRun:
    events: int
    workers: int
    events_per_s: float
    seconds: float
    ready_s: float
    rerouted: float
    rss_bytes: int | None
    cpu_seconds: float = 0.0
    broker_cpu_seconds: float = 0.0
    machine_busy_cores: float = 0.0  # every process on the machine, from /proc/stat
    replayed: int = 0  # events handled more than once (after a rebalance), not counted in ``events``
    # several workers: the rate until the first of them ran out of work, and how long the others went on alone
    all_busy_events_per_s: float = 0.0
    tail_s: float = 0.0

    @property
    def events_per_cpu_s(self) -> float:
        return self.events / self.cpu_seconds if self.cpu_seconds else 0.0


def machine_busy_seconds() -> float:
    """CPU seconds spent non-idle by all cores since boot (Linux /proc/stat; 0.0 elsewhere)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process (Linux /proc; 0.0 if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _counters(port: int) -> tuple[float, float]:
    """(handled, rerouted) of one worker, from its /metrics: handled as :func:`bench.live.handled` (each
    input message counted once by its outcome; a message handled again after a rebalance counts again)."""
    samples = scrape(port, (*HANDLED_COUNTERS, "actionstream_events_rerouted_total"))
    return handled(samples), metric(samples, "actionstream_events_rerouted_total")


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:  # noqa: S310
            return resp.status == 200
    except OSError:
        return False


def start_workers(bootstrap: str, topic: str, scratch: Path, *, workers: int, partitions: int, log_level: str = "WARNING",
                  worker_id: str) -> list[tuple[Proc, int]]:
    """Start ``workers`` `actionstream worker` processes of one group; return (process, port) pairs."""
    out = []
    for i in range(workers):
        port = free_port()
        args = ["worker", "--log-level", log_level, "--bootstrap", bootstrap, "--port", str(port),
                "--data-dir", str(scratch / f"{worker_id}-w{i}"), "--worker-id", worker_id,
                "--partitions", str(partitions), "--topic-actions", topic, "--topic-dlq", f"{topic}-dlq",
                "--archive-dir", ""]
        out.append((start_module("streams.cli", args, scratch / f"{worker_id}-w{i}.log"), port))
    return out


def measure_platform(env: BenchEnv, topic: str, n: int, *, workers: int = 1, timeout: float = 300.0,
                     stall_s: float = STALL_S) -> PlatformRun:
    """Run ``workers`` worker processes over the pre-filled ``topic`` (``n`` events) until they are done.

    **Done** = the group has committed the end offset of every input partition (read from the broker), and
    the workers' handled counters (accepted + duplicate + rejected) have reached ``n`` and stopped. The run
    ends at the last poll at which a counter moved (the commit itself lands up to a second later). A count
    alone is not enough: after a rebalance a worker handles again the events its partition's previous owner
    had not committed yet, so the counters can reach ``n`` while the tail of a partition is still unread.

    Timed from the first poll at which EVERY worker has handled an event: with two workers the first one to
    join takes all partitions and starts alone, then the group rebalances (both pause) when the second joins.
    That start-up is not throughput; timing from the first worker's first event made the 2-worker figure
    depend on how long that rebalance took (scale-out 1.45-1.88x in runs of the same code). Events handled
    before that moment are left out of the rate and the CPU figures. ``PlatformRun.events`` = ``n`` minus
    those: events handled twice (``replayed``) are work, not progress, and are not counted.

    Raises :class:`Stalled` when the counters stay flat for ``stall_s`` seconds before the end (from the
    first /metrics answer): before stopping them, each worker is sent SIGUSR1 and writes its thread and
    asyncio task stacks to its log (``<scratch>/<worker_id>-w<i>.log``, INFO level)."""
    worker_id = f"bench-platform-{uuid.uuid4().hex[:6]}"
    scratch = env.dir(worker_id)
    broker_pid = env.broker.proc.pid if env.broker is not None and env.broker.proc is not None else 0
    ends = topic_end_offsets(env.bootstrap, topic)
    if sum(ends.values()) != n:
        raise RuntimeError(f"topic {topic} holds {sum(ends.values())} messages, expected {n}")
    t0 = time.monotonic()
    procs = start_workers(env.bootstrap, topic, scratch, workers=workers, partitions=env.partitions,
                          worker_id=worker_id, log_level="INFO")

    def usage() -> tuple[float, float, float]:
        return (sum(cpu_seconds(p.pid) for p, _ in procs), cpu_seconds(broker_pid) if broker_pid else 0.0,
                machine_busy_seconds())

    admin: KafkaAdminClient | None = None  # opened at the first committed-offsets check
    try:
        first: float | None = None
        handled, last_change, at_change = -1.0, t0, (0.0, 0.0, 0.0)
        moved: list[tuple[float, float]] = [(t0, 0.0)] * len(procs)  # per worker: (last move, group total then)
        per_worker: list[float] = [-1.0] * len(procs)
        base, ready_s, next_commit_check = 0.0, 0.0, 0.0
        at_first = (0.0, 0.0, 0.0)
        deadline = t0 + timeout
        while True:
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"workers did not finish {n} events in {timeout:.0f}s (handled {handled:.0f}):\n"
                                   f"{procs[0][0].tail()}")
            for p, _ in procs:
                if not p.alive():
                    raise RuntimeError(f"worker exited early:\n{p.tail()}")
            try:
                counts = [_counters(port) for _, port in procs]
            except OSError:
                time.sleep(0.05)
                continue
            total = sum(c[0] for c in counts)
            for i, c in enumerate(counts):
                if c[0] != per_worker[i]:
                    per_worker[i], moved[i] = c[0], (now, total)
            if total != handled:
                handled, last_change, at_change = total, now, usage()
            elif now - last_change > stall_s:
                for p, _ in procs:
                    p.dump_stacks()
                time.sleep(STACK_DUMP_WAIT_S)
                raise Stalled(f"{workers} worker(s) handled no event for {stall_s:.0f}s (at {handled:.0f} of {n}); "
                              f"thread and task stacks are in their logs:\n{procs[0][0].tail()}")
            if first is None and all(c[0] > 0 for c in counts):
                first, base, ready_s, at_first = now, total, now - t0, usage()
            if handled >= n and now - last_change >= 0.2 and now >= next_commit_check:
                next_commit_check = now + 0.5
                if admin is None:
                    admin = KafkaAdminClient(bootstrap_servers=env.bootstrap, client_id="bench-committed",
                                             request_timeout_ms=5000)
                if uncommitted(admin, worker_id, {TopicPartition(topic, p): end for p, end in ends.items()}) == 0:
                    if first is None:
                        raise RuntimeError(f"all {n} events were handled before all {workers} workers were consuming")
                    seconds = last_change - first
                    cpu, broker_cpu = at_change[0] - at_first[0], at_change[1] - at_first[1]
                    busy = (at_change[2] - at_first[2]) / seconds if seconds > 0 else 0.0
                    rerouted = sum(c[1] for c in counts)
                    rss = rss_bytes(procs[0][0].pid)
                    break
            time.sleep(0.05)
    finally:
        for p, _ in procs:
            p.stop()
        if admin is not None:
            admin.close()
    counted = int(n - base)
    if counted < n / 2:
        raise RuntimeError(f"only {counted} of {n} events were handled after all {workers} workers were consuming: "
                           "the topic is too small to time them together")
    assert first is not None
    done_at, total_then = min(moved)  # the first worker to run out of work (the last move of its counter)
    # the handled counters include events handled again after the start-up rebalance: left out, all of them
    all_busy = max(0.0, total_then - base - max(0.0, handled - n)) / (done_at - first) if done_at > first else 0.0
    return PlatformRun(events=counted, workers=workers, events_per_s=counted / seconds, seconds=seconds, ready_s=ready_s,
                       rerouted=rerouted, rss_bytes=rss, cpu_seconds=cpu, broker_cpu_seconds=broker_cpu,
                       machine_busy_cores=busy, replayed=int(max(0.0, handled - n)),
                       all_busy_events_per_s=all_busy, tail_s=max(0.0, last_change - done_at))


def measure_decode_only(env: BenchEnv, topic: str, n: int, timeout: float = 300.0) -> PlatformRun:
    """The framework ceiling over the same topic, with the same CPU accounting (samples every 50 ms)."""
    app_id = f"bench-decode-{uuid.uuid4().hex[:6]}"
    scratch = env.dir(app_id)
    out = scratch / "result.json"
    t0 = time.monotonic()
    proc = start_module("bench.faust_apps.decode_only",
                        ["--bootstrap", env.bootstrap, "--topic", topic, "--n", str(n), "--out", str(out),
                         "--data-dir", str(scratch / "data"), "--app-id", app_id,
                         "--partitions", str(env.partitions)], scratch / "decode.log")
    samples: list[tuple[float, float]] = []
    try:
        while not out.exists():
            if not proc.alive() or time.monotonic() - t0 > timeout:
                raise RuntimeError(f"decode-only app failed:\n{proc.tail()}")
            samples.append((time.monotonic(), cpu_seconds(proc.pid)))
            time.sleep(0.05)
        samples.append((time.monotonic(), cpu_seconds(proc.pid)))
        res = orjson.loads(out.read_bytes())
        rss = rss_bytes(proc.pid)
    finally:
        proc.stop()

    def cpu_at(t: float) -> float:  # last sample at or before t
        return max((c for ts, c in samples if ts <= t), default=samples[0][1])

    cpu = cpu_at(res["last"] + 0.05) - cpu_at(res["first"])
    return PlatformRun(events=res["count"], workers=1, events_per_s=res["count"] / res["seconds"],
                       seconds=res["seconds"], ready_s=max(0.0, res["first"] - t0), rerouted=0.0, rss_bytes=rss,
                       cpu_seconds=cpu)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--bootstrap", help="use a running broker instead of starting one")
    p.add_argument("--baseline", action="store_true", help="also run the decode-only Faust agent (ceiling)")
    p.add_argument("--repeat", type=int, default=1, help="alternate the runs this many times")
    args = p.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("kafka").setLevel(logging.WARNING)  # kafka-python's connection chatter (offset checks)
    w: Workload = make_events(args.events, args.users)
    with BenchEnv(partitions=args.partitions, bootstrap=args.bootstrap) as env:
        topic = env.prefilled("platform", w)
        for _ in range(args.repeat):
            if args.baseline:
                base = measure_decode_only(env, topic, w.n)
                print(f"decode-only: {base.events_per_s:,.0f} events/s wall, {base.events_per_cpu_s:,.0f} "
                      f"events per CPU-second", flush=True)
            run = measure_platform(env, topic, w.n, workers=args.workers)
            print(f"platform:    {run.events_per_s:,.0f} events/s wall, {run.events_per_cpu_s:,.0f} events per "
                  f"CPU-second ({run.events} events, {run.workers} worker(s), {run.seconds:.1f}s; first event "
                  f"{run.ready_s:.1f}s after start; rerouted {run.rerouted:.0f}; handled again after a rebalance "
                  f"{run.replayed})", flush=True)
            if args.baseline:
                print(f"ratio platform/decode-only: wall {run.events_per_s / base.events_per_s:.2f}, "
                      f"per CPU-second {run.events_per_cpu_s / base.events_per_cpu_s:.2f}", flush=True)


if __name__ == "__main__":
    main()
