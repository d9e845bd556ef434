"""Talking to running `actionstream worker` processes: readiness, /metrics, paced producing, HTTP load.

Everything here measures from the outside, through the contracts (``/readyz``, ``/metrics`` names of
``tasks/metrics_contract.md``, ``GET /v1/users/{id}/features``, the ``sequences`` changelog topic), so it
keeps working whatever the worker does inside.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from bench.procs import Proc
from streams.events import now_ms
from streams.metrics import parse_exposition
from streams.sequence import _HEADER, _HS, _REC, event_key

__all__ = ["HANDLED_COUNTERS", "HttpLoad", "PacedRun", "changelog_freshness", "histogram_quantiles", "metrics_text", "paced_produce",
           "scrape", "wait_handled", "wait_ready"]



# The counters behind :func:`handled`, plus rerouted: what a throughput poll needs. Asking the worker for these
# alone (``/metrics?name[]=...``) costs it ~0.3 ms per poll instead of ~2.5 ms for the whole ~16 KB text: at
# 20 polls/s per worker, the whole text took ~5% of a worker's core away from the run being measured.
HANDLED_COUNTERS = ("actionstream_events_accepted_total", "actionstream_events_duplicate_total",
                    "actionstream_events_rejected_total")


def metrics_text(port: int, timeout: float = 2.0, names: Sequence[str] = ()) -> str:
    """One worker's /metrics text; with ``names``, only those samples' metrics (``?name[]=``)."""
    query = "?" + "&".join(f"name[]={n}" for n in names) if names else ""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics{query}", timeout=timeout) as resp:  # noqa: S310
        return resp.read().decode()


def scrape(port: int, names: Sequence[str] = ()) -> dict[str, float]:
    """``{'name{labels}': value}`` of one worker's /metrics (only ``names`` when given)."""
    return parse_exposition(metrics_text(port, names=names))


def metric(samples: dict[str, float], name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, v in samples.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{val}"' in rest for k, val in labels.items()):
            total += v
    return total


def handled(samples: dict[str, float]) -> float:
    """Input events a worker is done with, each counted once by its outcome: applied (accepted), valid but
    changing nothing (duplicate, or too old for a full sequence), or rejected to the dead-letter topic."""
    return sum(metric(samples, name) for name in HANDLED_COUNTERS)


def wait_handled(port: int, n: int, timeout: float) -> float:
    """Wait until the worker is done with ``n`` input events; returns the seconds it took."""
    t0 = time.monotonic()
    while handled(scrape(port, HANDLED_COUNTERS)) < n:
        if time.monotonic() - t0 > timeout:
            raise RuntimeError(f"the worker did not process {n} events within {timeout:.0f}s of the phase end")
        time.sleep(0.1)
    return time.monotonic() - t0


def histogram_quantiles(before: dict[str, float], after: dict[str, float], name: str,
                        qs: Sequence[float], **labels: str) -> list[float | None]:
    """Quantiles (seconds) of the observations between two scrapes, interpolated inside buckets (the same
    estimate as PromQL ``histogram_quantile``); None when nothing was observed."""
    buckets: dict[float, float] = {}
    for key, v in after.items():
        base, _, rest = key.partition("{")
        if base != name + "_bucket" or not all(f'{k}="{val}"' in rest for k, val in labels.items()):
            continue
        le = re.search(r'le="([^"]+)"', rest)
        if le:
            bound = float("inf") if le.group(1) == "+Inf" else float(le.group(1))
            buckets[bound] = buckets.get(bound, 0.0) + v - before.get(key, 0.0)
    bounds = sorted(buckets)
    if not bounds or buckets[bounds[-1]] <= 0:
        return [None for _ in qs]
    total = buckets[bounds[-1]]
    out: list[float | None] = []
    for q in qs:
        rank = q * total
        prev_b, prev_c = 0.0, 0.0
        for b in bounds:
            c = buckets[b]
            if c >= rank:
                if b == float("inf"):
                    out.append(prev_b)
                else:
                    out.append(prev_b + (b - prev_b) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 1.0))
                break
            prev_b, prev_c = b, c
    return out


def ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:  # noqa: S310
            return resp.status == 200
    except OSError:
        return False


def wait_ready(procs: Sequence[tuple[Proc, int]], timeout: float = 90.0) -> float:
    """Seconds until every worker answers 200 on /readyz."""
    t0 = time.monotonic()
    pending = list(procs)
    while pending:
        for p, _port in pending:
            if not p.alive():
                raise RuntimeError(f"worker exited before ready:\n{p.tail()}")
        pending = [(p, port) for p, port in pending if not ready(port)]
        if pending and time.monotonic() - t0 > timeout:
            raise RuntimeError(f"worker not ready after {timeout:.0f}s:\n{pending[0][0].tail()}")
        if pending:
            time.sleep(0.1)
    return time.monotonic() - t0


@dataclass
class PacedRun:
    """Events sent by :func:`paced_produce`: ``sent[event_key] = event ts (ms)``, ``user_of[event_key]``, and the
    achieved rate."""

    sent: dict[int, int] = field(default_factory=dict)
    user_of: dict[int, str] = field(default_factory=dict)
    users: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.sent) / self.seconds if self.seconds else 0.0


async def _paced(bootstrap: str, topic: str, rate: float, seconds: float, users: int, seed: int) -> PacedRun:
    from aiokafka import AIOKafkaProducer
    rng = np.random.default_rng(seed)
    w = 1.0 / np.arange(1, users + 1) ** 0.8
    picks = rng.choice(users, size=int(rate * seconds) + 1, p=w / w.sum())
    p = AIOKafkaProducer(bootstrap_servers=bootstrap, linger_ms=2, acks=1)
    await p.start()
    run = PacedRun()
    tick = 0.01
    try:
        t0 = time.monotonic()
        i = 0
        futs = []
        while True:
            elapsed = time.monotonic() - t0
            if elapsed >= seconds:
                break
            due = min(len(picks), int(elapsed * rate) + 1)
            while i < due:
                user = f"fresh-{int(picks[i]):06d}"
                eid = uuid.uuid4().hex
                ts = now_ms()
                value = orjson.dumps({"event_id": eid, "user_id": user, "item_id": f"pin-{int(rng.integers(1e6)):09d}",
                                      "action": "impression", "ts": ts, "surface": "homefeed"})
                futs.append(await p.send(topic, value, key=user.encode()))
                run.sent[event_key(eid)] = ts
                run.user_of[event_key(eid)] = user
                i += 1
            await asyncio.sleep(tick)
        run.seconds = time.monotonic() - t0
        await asyncio.gather(*futs)
    finally:
        await p.stop()
    run.users = sorted({f"fresh-{int(u):06d}" for u in picks[:len(run.sent)]})
    return run


def sequence_lengths(port: int, users: Sequence[str]) -> dict[str, int]:
    """``sequence_length`` of each user as served by ``GET /v1/users/{id}/sequence`` (keep-alive)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out: dict[str, int] = {}
    try:
        for u in users:
            conn.request("GET", f"/v1/users/{u}/sequence")
            resp = conn.getresponse()
            body = resp.read()
            out[u] = int(orjson.loads(body)["sequence_length"]) if resp.status == 200 else -resp.status
    finally:
        conn.close()
    return out


def paced_produce(bootstrap: str, topic: str, *, rate: float, seconds: float, users: int = 2000,
                  seed: int = 0) -> PacedRun:
    """Publish fresh events (``ts`` = the wall clock at send) at ``rate``/s for ``seconds`` (10 ms ticks)."""
    return asyncio.run(_paced(bootstrap, topic, rate, seconds, users, seed))


def changelog_freshness(bootstrap: str, changelog: str, sent: dict[int, int],
                        found: set[int] | None = None) -> np.ndarray:
    """Per event: timestamp of the first changelog record holding it − event ts, in ms.

    A changelog record carries the user's whole blob; the worker may coalesce several updates of one
    user into one record, so every action of every record is looked at, and an event counts at the first
    record (in offset order within its partition) that holds it. Actions not in ``sent`` are skipped.
    ``found`` (when given) receives the keys of the events found.
    """
    from kafka import KafkaConsumer, TopicPartition
    c = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, max_partition_fetch_bytes=8 << 20)
    lat: list[int] = []
    seen: set[int] = set()
    try:
        tps = [TopicPartition(changelog, p) for p in sorted(c.partitions_for_topic(changelog) or ())]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        end = c.end_offsets(tps)
        deadline = time.monotonic() + 60
        while any(c.position(tp) < end[tp] for tp in tps) and time.monotonic() < deadline:
            for recs in c.poll(timeout_ms=500, max_records=50_000).values():
                for r in recs:
                    v = r.value
                    if not v or len(v) < _HS + _REC.size:
                        continue
                    n = _HEADER.unpack_from(v, 0)[1]
                    for i in range(n):
                        key = _REC.unpack_from(v, _HS + i * _REC.size)[1]
                        if key in sent and key not in seen:
                            seen.add(key)
                            lat.append(r.timestamp - sent[key])
    finally:
        c.close()
    if found is not None:
        found |= seen
    return np.asarray(lat, dtype=np.float64)


class HttpLoad:
    """GET ``/v1/users/{id}/features`` at a steady rate from one keep-alive connection.

    The client runs in its own process (``python -m bench.live``), as a ranking service would: in the
    benchmark's process it would share the GIL with the paced producer thread, and its measured latency
    would include waiting for that thread (measured: client p99 8.5 ms while the worker's own histogram
    put p99 in the low milliseconds)."""

    def __init__(self, port: int, users: Sequence[str], rate: float, seconds: float) -> None:
        self.port, self.users, self.rate, self.seconds = port, list(users), rate, seconds
        self.latencies_ms: list[float] = []
        self.status: dict[int, int] = {}
        self.errors = 0
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> HttpLoad:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.live", str(self.port), str(self.rate), str(self.seconds)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(self.users).encode())
        self._proc.stdin.close()
        return self

    def join(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        out = self._proc.stdout.read()
        if self._proc.wait() != 0:
            raise RuntimeError(f"HTTP load process exited {self._proc.returncode}")
        res = json.loads(out)
        self.latencies_ms = res["latencies_ms"]
        self.status = {int(k): v for k, v in res["status"].items()}
        self.errors = res["errors"]


def run_http_load(port: int, users: Sequence[str], rate: float, seconds: float) -> dict[str, Any]:
    """The client loop of :class:`HttpLoad` (in its own process): latencies, statuses, errors."""
    latencies: list[float] = []
    status: dict[int, int] = {}
    errors = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    period = 1.0 / rate
    t0 = time.monotonic()
    i = 0
    while True:
        due = t0 + i * period
        now = time.monotonic()
        if now - t0 >= seconds:
            break
        if due > now:
            time.sleep(due - now)
        user = users[i % len(users)]
        s = time.perf_counter()
        try:
            conn.request("GET", f"/v1/users/{user}/features")
            resp = conn.getresponse()
            resp.read()
            latencies.append((time.perf_counter() - s) * 1e3)
            status[resp.status] = status.get(resp.status, 0) + 1
        except (OSError, http.client.HTTPException):
            errors += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        i += 1
    conn.close()
    return {"latencies_ms": latencies, "status": status, "errors": errors}


if __name__ == "__main__":  # the HttpLoad client process: argv port rate seconds, users as JSON on stdin
    _users = json.loads(sys.stdin.read())
    _res = run_http_load(int(sys.argv[1]), _users, float(sys.argv[2]), float(sys.argv[3]))
    sys.stdout.write(json.dumps(_res))
