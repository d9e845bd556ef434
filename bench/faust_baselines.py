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

from bench.procs import start_module, wait_for_json

__all__ = ["FaustRun", "run_faust_app"]


@dataclass(frozen=True)
class FaustRun:
    events_per_s: float
    seconds: float
    startup_s: float
    cpu_seconds: float

    @property
    def events_per_cpu_s(self) -> float:
        """Events per CPU second of the worker process: what one dedicated core does (robust to a busy machine)."""
        return 0.0 if not self.cpu_seconds else (self.events_per_s * self.seconds) / self.cpu_seconds


def run_faust_app(module: str, *, bootstrap: str, topic: str, n: int, scratch: Path, take: int = 0,
                  store: str = "rocksdb://", timeout: float = 300.0) -> FaustRun:
    """Run ``bench.faust_apps.<module>`` over ``topic`` until it has processed ``n`` events."""
    app_id = f"bench-{module}-{uuid.uuid4().hex[:6]}"
    out = scratch / f"{app_id}.json"
    args = ["--bootstrap", bootstrap, "--topic", topic, "--n", str(n), "--out", str(out),
            "--data-dir", str(scratch / app_id), "--app-id", app_id, "--store", store, "--take", str(take)]
    t0 = time.monotonic()
    proc = start_module(f"bench.faust_apps.{module}", args, scratch / f"{app_id}.log")
    try:
        res = wait_for_json(out, proc, timeout)
    finally:
        proc.stop()
    # ``first`` is on the child's monotonic clock: the same CLOCK_MONOTONIC on Linux.
    return FaustRun(events_per_s=res["count"] / res["seconds"], seconds=res["seconds"],
                    startup_s=max(0.0, res["first"] - t0), cpu_seconds=res.get("cpu_seconds", 0.0))
