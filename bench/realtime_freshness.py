"""Realtime TransAct vectors in the worker: throughput cost and freshness under load (issue 5 acceptance).

Three runs of real `actionstream worker` processes on an embedded Apache Kafka broker:

1. ``off``: backlog drain of N pre-filled events without a realtime checkpoint (events/s);
2. ``on``: the same with ``ACTIONSTREAM_REALTIME_CHECKPOINT`` set (the paper-sized candidate-free TransAct,
   random weights: cost does not depend on them); events/s, encoder batches, vectors stored;
3. ``live``: a fresh worker with the encoder, warmed up, then fed at a steady ``--rate`` events/s with
   current event times for ``--seconds``; freshness p50/p99 of ``stage="sequence"`` vs ``stage="realtime"``
   from the worker's histograms over that phase (``histogram_quantile``-style interpolation within buckets),
   measured as the freshness section measures the sequence stage alone.

    python -m bench.realtime_freshness --events 60000 --users 6000 --rate 1500 --seconds 20

Throughput is measured from the outside like :mod:`bench.platform_throughput` (first accepted event to the
last, polled every 50 ms). Prints a markdown table and writes JSON with ``--out``.
"""

from __future__ import annotations

import argparse
import json
import logging
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bench.env import BenchEnv
from bench.live import HANDLED_COUNTERS, handled, metrics_text, wait_ready
from bench.procs import Proc, start_module
from bench.workload import make_events
from streams.broker import free_port
from streams.metrics import parse_exposition

log = logging.getLogger(__name__)


def scrape(port: int, names: Sequence[str] = ()) -> dict[str, float]:
    return parse_exposition(metrics_text(port, timeout=5, names=names))


def write_checkpoint(path: Path) -> Path:
    import torch

    from transact.model import TransAct, TransActConfig, save_checkpoint

    torch.manual_seed(0)
    cfg = TransActConfig(early_fusion=False)  # paper sizes: 2 layers, d = 64, S = 100, output 704
    save_checkpoint(path, TransAct(cfg), cfg, {"model_version": "bench-realtime"})
    return path


def start_worker(env: BenchEnv, topic: str, scratch: Path, name: str, extra_env: dict[str, str]) -> tuple[Proc, int]:
    port = free_port()
    args = ["worker", "--log-level", "WARNING", "--bootstrap", env.bootstrap, "--port", str(port),
            "--data-dir", str(scratch / name), "--worker-id", f"bench-rt-{name}-{uuid.uuid4().hex[:6]}",
            "--partitions", str(env.partitions), "--topic-actions", topic, "--topic-dlq", f"{topic}-dlq",
            "--archive-dir", ""]
    emb = {"ACTIONSTREAM_TOPIC_EMBEDDINGS": f"{topic}-emb"}
    return start_module("streams.cli", args, scratch / f"{name}.log", {**emb, **extra_env}), port


def drain(env: BenchEnv, topic: str, n: int, scratch: Path, name: str, extra_env: dict[str, str]) -> dict[str, Any]:
    """Backlog drain of the pre-filled topic; events/s + the worker's encoder counters at the end."""
    proc, port = start_worker(env, topic, scratch, name, extra_env)
    try:
        first = None
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if not proc.alive():
                raise RuntimeError(f"worker exited:\n{proc.tail()}")
            try:
                m = scrape(port, HANDLED_COUNTERS)
            except OSError:
                time.sleep(0.05)
                continue
            accepted = handled(m)
            now = time.monotonic()
            if first is None and accepted > 0:
                first = now
            if accepted >= n and first is not None:
                seconds = now - first
                break
            time.sleep(0.05)
        else:
            raise RuntimeError("drain timed out")
        time.sleep(1.0)  # let the encoder finish its last batches
        m = scrape(port)
        batches = m.get("actionstream_encoder_batch_size_count", 0.0)
        return {"events_per_s": n / seconds, "seconds": seconds, "encoder_batches": batches,
                "vectors_encoded": m.get("actionstream_encoder_batch_size_sum", 0.0),
                "mean_batch": m.get("actionstream_encoder_batch_size_sum", 0.0) / batches if batches else None,
                "encoder_ms_per_batch": 1000 * m.get("actionstream_encoder_seconds_sum", 0.0) / batches if batches else None}
    finally:
        proc.stop()


def live(env: BenchEnv, scratch: Path, users: int, rate: float, seconds: float, extra_env: dict[str, str]) -> dict[str, Any]:
    """A fresh worker fed at ``rate`` events/s with current event times; freshness quantiles per stage.

    Measured like the freshness section (:func:`bench.sections.freshness`): a 1-second warm-up at 50 events/s
    (group join, first encoder batch), then the paced phase (:func:`bench.live.paced_produce`: asyncio
    producer, Zipf-like users, 10 ms ticks); the quantiles are of the histogram observations between a scrape
    before and one after the phase, so the worker's start-up is not in them."""
    from bench.live import histogram_quantiles, paced_produce, wait_handled

    topic = env.topic("rt-live")
    proc, port = start_worker(env, topic, scratch, "live", extra_env)
    try:
        wait_ready([(proc, port)], 120.0)
        warm = paced_produce(env.bootstrap, topic, rate=50, seconds=1.0, users=users, seed=98)
        total = len(warm.sent)
        wait_handled(port, total, 60.0)
        time.sleep(0.5)
        before = scrape(port)
        run = paced_produce(env.bootstrap, topic, rate=rate, seconds=seconds, users=users, seed=3)
        total += len(run.sent)
        wait_handled(port, total, 60.0)
        time.sleep(1.0)  # the encoder's last batches
        after = scrape(port)
        name = "actionstream_freshness_seconds"
        out: dict[str, Any] = {"rate": run.rate, "seconds": run.seconds, "sent": len(run.sent),
                               "accepted": after.get("actionstream_events_accepted_total", 0.0)
                               - before.get("actionstream_events_accepted_total", 0.0)}
        for stage in ("sequence", "realtime"):
            key = f'{name}_count{{stage="{stage}"}}'
            out[f"{stage}_observations"] = after.get(key, 0.0) - before.get(key, 0.0)
            p50, p99 = histogram_quantiles(before, after, name, (0.5, 0.99), stage=stage)
            out[f"{stage}_p50_s"], out[f"{stage}_p99_s"] = p50, p99
        b = "actionstream_encoder_batch_size"
        batches = after.get(f"{b}_count", 0.0) - before.get(f"{b}_count", 0.0)
        out["mean_batch"] = (after.get(f"{b}_sum", 0.0) - before.get(f"{b}_sum", 0.0)) / batches if batches else None
        return out
    finally:
        proc.stop()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.realtime_freshness", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--events", type=int, default=60_000, help="pre-filled events for the drain runs")
    p.add_argument("--users", type=int, default=6_000, help="distinct users (Zipf-like skew)")
    p.add_argument("--rate", type=float, default=1500.0, help="events/s of the live run")
    p.add_argument("--seconds", type=float, default=20.0, help="length of the live run")
    p.add_argument("--partitions", type=int, default=8)
    p.add_argument("--bootstrap", help="use a running broker instead of starting one")
    p.add_argument("--out", type=Path, help="write the results as JSON here")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    with BenchEnv(partitions=args.partitions, bootstrap=args.bootstrap) as env:
        scratch = env.dir("realtime")
        on = {"ACTIONSTREAM_REALTIME_CHECKPOINT": str(write_checkpoint(scratch / "realtime.pt"))}
        w = make_events(args.events, args.users)
        topic = env.prefilled("rt-drain", w)
        res = {"off": drain(env, topic, w.n, scratch, "off", {}),
               "on": drain(env, topic, w.n, scratch, "on", on),
               "live": live(env, scratch, args.users, args.rate, args.seconds, on)}
    off, on_, lv = res["off"], res["on"], res["live"]
    print(f"| run | events/s | encoder batches | mean batch | ms/batch |\n|---|---|---|---|---|\n"  # noqa: T201
          f"| encoder off | {off['events_per_s']:,.0f} | - | - | - |\n"
          f"| encoder on | {on_['events_per_s']:,.0f} | {on_['encoder_batches']:.0f} | "
          f"{on_['mean_batch'] or 0:.1f} | {on_['encoder_ms_per_batch'] or 0:.1f} |\n\n"
          f"live {lv['rate']:.0f} events/s for {lv['seconds']:.0f} s ({lv['accepted']:.0f} accepted): freshness "
          f"sequence p50 {lv['sequence_p50_s']} s / p99 {lv['sequence_p99_s']} s; realtime p50 "
          f"{lv['realtime_p50_s']} s / p99 {lv['realtime_p99_s']} s ({lv['realtime_observations']:.0f} "
          f"observations, mean batch {lv['mean_batch']})")
    if args.out:
        args.out.write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
