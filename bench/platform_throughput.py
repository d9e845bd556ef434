"""Platform throughput: end-to-end events/s of real `actionstream worker` processes over a pre-filled topic.

consume -> validate -> route -> sequence update in RocksDB -> changelog, measured from the outside:
the worker(s) start on a topic already holding N events; we poll every worker's ``/metrics`` every
50 ms and time from the first poll that sees ``actionstream_events_accepted_total > 0`` to the first poll
that sees the sum reach N (start-up and group join excluded; reported separately as ``ready_s``).
The poll interval bounds the timing error (±0.1 s over runs of 10-30 s).

    python -m bench.platform_throughput --events 100000 --users 10000 [--workers 2] [--bootstrap host:port]

Importable: :func:`measure_platform` returns a :class:`PlatformRun` (used by ``bench.run``).
"""

from __future__ import annotations

import argparse
import logging
import time
import urllib.request
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from bench.env import BenchEnv
from bench.procs import Proc, rss_bytes, start_module
from bench.workload import Workload, make_events
from streams.broker import free_port

__all__ = ["PlatformRun", "measure_platform", "start_workers"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PlatformRun:
    events: int
    workers: int
    events_per_s: float
    seconds: float
    ready_s: float
    rerouted: float
    rss_bytes: int | None


def _accepted(port: int) -> tuple[float, float]:
    """(accepted, rerouted) counters of one worker, from its /metrics text."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as resp:  # noqa: S310
        text = resp.read().decode()
    acc = rer = 0.0
    for line in text.splitlines():
        if line.startswith("actionstream_events_accepted_total "):
            acc = float(line.split()[1])
        elif line.startswith("actionstream_events_rerouted_total "):
            rer = float(line.split()[1])
    return acc, rer


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


def measure_platform(env: BenchEnv, topic: str, n: int, *, workers: int = 1, timeout: float = 300.0) -> PlatformRun:
    """Run ``workers`` worker processes over the pre-filled ``topic`` until they accepted ``n`` events."""
    worker_id = f"bench-platform-{uuid.uuid4().hex[:6]}"
    scratch = env.dir(worker_id)
    t0 = time.monotonic()
    procs = start_workers(env.bootstrap, topic, scratch, workers=workers, partitions=env.partitions,
                          worker_id=worker_id)
    try:
        first: float | None = None
        ready_s = 0.0
        deadline = t0 + timeout
        while True:
            now = time.monotonic()
            if now > deadline:
                raise RuntimeError(f"workers did not accept {n} events in {timeout:.0f}s:\n{procs[0][0].tail()}")
            for p, _ in procs:
                if not p.alive():
                    raise RuntimeError(f"worker exited early:\n{p.tail()}")
            try:
                counts = [_accepted(port) for _, port in procs]
            except OSError:
                time.sleep(0.05)
                continue
            accepted = sum(c[0] for c in counts)
            if first is None and accepted > 0:
                first = now
                ready_s = now - t0
            if accepted >= n:
                assert first is not None
                seconds = now - first
                rerouted = sum(c[1] for c in counts)
                rss = rss_bytes(procs[0][0].pid)
                break
            time.sleep(0.05)
    finally:
        for p, _ in procs:
            p.stop()
    return PlatformRun(events=n, workers=workers, events_per_s=n / seconds, seconds=seconds, ready_s=ready_s,
                       rerouted=rerouted, rss_bytes=rss)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--bootstrap", help="use a running broker instead of starting one")
    args = p.parse_args()
    logging.basicConfig(level="INFO", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    w: Workload = make_events(args.events, args.users)
    with BenchEnv(partitions=args.partitions, bootstrap=args.bootstrap) as env:
        topic = env.prefilled("platform", w)
        run = measure_platform(env, topic, w.n, workers=args.workers)
    print(f"platform: {run.events_per_s:,.0f} events/s ({run.events} events, {run.workers} worker(s), "
          f"{run.seconds:.1f}s; first event {run.ready_s:.1f}s after start; rerouted {run.rerouted:.0f})")
    print(asdict(run))


if __name__ == "__main__":
    main()
