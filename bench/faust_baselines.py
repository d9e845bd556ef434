"""(b) naive baseline and (c) framework ceiling: minimal Faust agents run as subprocess workers.

Each run gets a fresh app id (consumer group, changelog topics) and data dir, reads the same
pre-filled topic from the beginning, and reports events/s from its first to its N-th event, plus the
wall-clock time from process start to the first event (imports + group join + assignment).
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.procs import Proc, start_module, wait_for_json

__all__ = ["FaustRun", "run_faust_app"]


@dataclass(frozen=True)
class FaustRun:
    events_per_s: float
    seconds: float
    startup_s: float
    cpu_seconds: float
    events: int
    complete: bool

    @property
    def events_per_cpu_s(self) -> float:
        """Events per CPU second of the worker process: what one dedicated core does (robust to a busy machine)."""
        return 0.0 if not self.cpu_seconds else (self.events_per_s * self.seconds) / self.cpu_seconds


def run_faust_app(module: str, *, bootstrap: str, topic: str, n: int, scratch: Path, take: int = 0,
                  store: str = "rocksdb://", timeout: float = 300.0, budget_s: float = 120.0,
                  fast_drain: bool = False) -> FaustRun:
    """Run ``bench.faust_apps.<module>`` over ``topic`` until it has processed ``n`` events, or for at most
    ``budget_s`` seconds after its first event (then the rate is the one over the events done so far:
    ``complete`` is False). ``timeout`` bounds start-up + the run."""
    app_id = f"bench-{module}-{uuid.uuid4().hex[:6]}"
    out = scratch / f"{app_id}.json"
    args = ["--bootstrap", bootstrap, "--topic", topic, "--n", str(n), "--out", str(out),
            "--data-dir", str(scratch / app_id), "--app-id", app_id, "--store", store, "--take", str(take)]
    if fast_drain:
        args.append("--fast-drain")
    t0 = time.monotonic()
    proc = start_module(f"bench.faust_apps.{module}", args, scratch / f"{app_id}.log")
    progress = out.with_suffix(".progress")
    try:
        res, complete = _wait(out, progress, proc, timeout, budget_s)
    finally:
        proc.stop()
    # ``first`` is on the child's monotonic clock: the same CLOCK_MONOTONIC on Linux.
    return FaustRun(events_per_s=res["count"] / res["seconds"], seconds=res["seconds"],
                    startup_s=max(0.0, res["first"] - t0), cpu_seconds=res.get("cpu_seconds", 0.0),
                    events=int(res["count"]), complete=complete)


def _wait(out: Path, progress: Path, proc: Proc, timeout: float, budget_s: float) -> tuple[dict[str, float], bool]:
    deadline = time.monotonic() + timeout
    while True:
        if out.exists():
            return orjson.loads(out.read_bytes()), True
        if progress.exists():
            snap = orjson.loads(progress.read_bytes())
            if time.monotonic() - snap["first"] > budget_s and snap["seconds"] > 0:
                return snap, False
        if not proc.alive():
            return wait_for_json(out, proc, 0.1), True  # raises with the log tail
        if time.monotonic() > deadline:
            raise RuntimeError(f"no result after {timeout:.0f}s:\n{proc.tail()}")
        time.sleep(0.05)
