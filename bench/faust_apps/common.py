"""Shared wiring of the benchmark's minimal Faust apps.

Each app is started as its own process (``python -m bench.faust_apps.<name> ...``) so it owns one
core and one event loop, exactly like a real worker. The agent counts processed events; when it has
seen ``--n`` of them it writes ``--out`` (JSON: first/last event times on the process's monotonic
clock, count, and the CPU seconds the process burned meanwhile) and keeps running until the benchmark sends SIGTERM. The timed interval runs from the
first event the agent sees to the N-th, so process start-up and the group join are excluded (they are
reported separately from the wall clock). Every 0.5 s it also writes ``<out>.progress`` (the same fields so
far), so the benchmark can time-box a run on a slow machine and report the rate over the events done.

Consumer tuning follows measurements.md (ready in ~3 s), except the session: Apache Kafka refuses a session
timeout under its group.min.session.timeout.ms (6 s by default), so session 6 s,
heartbeat 0.5 s, rebalance 10 s, max poll 30 s.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

import faust
import orjson

__all__ = ["Progress", "make_app", "parse_args", "run_worker"]


def parse_args(description: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bootstrap", required=True, help="Kafka host:port")
    p.add_argument("--topic", required=True, help="pre-filled input topic")
    p.add_argument("--n", type=int, required=True, help="events to process before writing --out")
    p.add_argument("--out", type=Path, required=True, help="result JSON file")
    p.add_argument("--data-dir", type=Path, required=True, help="Faust data dir (RocksDB tables)")
    p.add_argument("--app-id", required=True, help="Faust app id = consumer group (unique per run)")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--store", default="rocksdb://", help="table store URL (rocksdb:// or memory://)")
    p.add_argument("--take", type=int, default=0, help="batch with stream.take(N, within=0.05); 0 = per event")
    p.add_argument("--fast-drain", action="store_true",
                   help="use the worker's consumer drain loop (streams.drain) instead of Faust's")
    return p.parse_args()


def make_app(args: argparse.Namespace) -> faust.App:
    app = faust.App(
        args.app_id, broker=f"kafka://{args.bootstrap}", datadir=str(args.data_dir), store=args.store,
        topic_partitions=args.partitions, web_enabled=False, consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0, broker_heartbeat_interval=0.5, broker_rebalance_timeout=10.0,
        broker_max_poll_interval=30.0)
    if args.fast_drain:
        from streams.drain import install
        if not install(app):
            raise SystemExit("--fast-drain: streams.drain does not apply to this Faust release (see the warning)")
    return app


class Progress:
    """Counts events; writes the result file once ``n`` have been processed."""

    def __init__(self, n: int, out: Path) -> None:
        self.n, self.out = n, out
        self.count = 0
        self.first: float | None = None
        self.first_cpu = 0.0
        self.last_write = 0.0
        self.done = False

    def tick(self, k: int = 1) -> None:
        now = time.monotonic()
        if self.first is None:
            self.first = now
            self.first_cpu = time.process_time()
            self.last_write = now
        self.count += k
        if now - self.last_write >= 0.5 and not self.done:
            # progress snapshot: lets the benchmark time-box a run on a slow (busy) machine
            self.last_write = now
            snap = {"count": self.count, "first": self.first, "last": now, "seconds": now - self.first,
                    "cpu_seconds": time.process_time() - self.first_cpu}
            tmp = self.out.with_suffix(".progress.tmp")
            tmp.write_bytes(orjson.dumps(snap))
            tmp.rename(self.out.with_suffix(".progress"))
        if not self.done and self.count >= self.n:
            self.done = True
            result: dict[str, Any] = {"count": self.count, "first": self.first, "last": time.monotonic(),
                                      "seconds": time.monotonic() - self.first,
                                      "cpu_seconds": time.process_time() - self.first_cpu}
            tmp = self.out.with_suffix(".tmp")
            tmp.write_bytes(orjson.dumps(result))
            tmp.rename(self.out)


def run_worker(app: faust.App) -> None:
    logging.getLogger("aiokafka").setLevel(logging.ERROR)
    worker = faust.Worker(app, loglevel="WARNING", quiet=True)
    worker.execute_from_commandline()
