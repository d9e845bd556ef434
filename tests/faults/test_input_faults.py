"""Input faults against the real broker: a producer picking random partitions, a burst of 10,000 malformed
events mixed with good ones, and a duplicate replay of the whole topic.

Each run compares every user's stored sequence (changelog and API) with the offline rebuild of the
accepted events: lost, duplicated and wrong counts must all be 0 (tests/faults/helpers.py).
"""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import orjson
import pytest

from streams.events import EventParser, Rejection, encode_event, now_ms
from tests.faults.helpers import assert_zero, check_state, uid, wait_handled
from tests.streams.harness import (
    WorkerProc,
    create_topics,
    event_keys,
    expected_state,
    make_events,
    produce,
    read_dlq,
    read_topic,
    wait_until,
)

pytestmark = [pytest.mark.kafka, pytest.mark.faults, pytest.mark.timeout(600)]

PARTITIONS = 4


def _start(bootstrap: str, tmp_path: Path, name: str) -> WorkerProc:
    topic, dlq, group = uid(f"{name}-in"), uid(f"{name}-dlq"), uid(name)
    create_topics(bootstrap, [topic, dlq], PARTITIONS)
    w = WorkerProc(bootstrap, tmp_path / "w1", topic=topic, dlq=dlq, worker_id=group, partitions=PARTITIONS).start()
    w.wait_ready(90)
    return w


def test_random_partitioner(kafka, tmp_path: Path) -> None:
    """Every message on a random partition (a producer that ignores keys): still one sequence per user."""
    events = make_events(10_000, 300, seed=21, prefix="r")
    w = _start(kafka.bootstrap, tmp_path, "random-partitions")
    try:
        produce(kafka.bootstrap, w.topic, [encode_event(e) for e in events], keys=event_keys(events),
                partitioner="random", partitions=PARTITIONS, seed=21)
        counts = check_state("random-partitions", kafka.bootstrap, w.changelog_topic, expected_state(events), w)
        rerouted = w.metrics().get("actionstream_events_rerouted_total", 0)
    finally:
        w.stop()
    print(f"[fault:random-partitions] {rerouted:.0f} of {len(events)} events arrived on a partition not owning "
          "their user and were forwarded")
    assert_zero(*counts)
    assert rerouted > len(events) / 2  # 3 of 4 random picks miss the owner: the reroute path really ran


def malformed(rng: random.Random, i: int, now: int) -> bytes | None:
    """One bad message of a rotating kind (every DESIGN.md rejection reason, random bytes, null)."""
    good = {"event_id": f"bad-{i}", "user_id": f"mu{i % 50}", "item_id": "i1", "action": "click", "ts": now}
    kind = i % 12
    if kind == 0:
        return bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 200)))
    if kind == 1:
        return b'{"event_id": "x", "user_id": '
    if kind == 2:
        return orjson.dumps([good])
    if kind == 3:
        return orjson.dumps({k: v for k, v in good.items() if k != "user_id"})
    if kind == 4:
        return orjson.dumps({**good, "action": "teleport"})
    if kind == 5:
        return orjson.dumps({**good, "ts": now + 3_600_000})
    if kind == 6:
        return orjson.dumps({**good, "ts": now - 40 * 86_400_000})
    if kind == 7:
        return orjson.dumps({**good, "ts": str(now)})
    if kind == 8:
        return orjson.dumps({**good, "duration_ms": -5})
    if kind == 9:
        return None if i % 24 == 9 else b""
    if kind == 10:
        return orjson.dumps({**good, "item_id": "a\x00b"})
    return orjson.dumps({**good, "pad": "x" * 17_000}) if i % 600 == 11 else orjson.dumps({**good, "user_id": ""})


def test_malformed_burst(kafka, tmp_path: Path) -> None:
    """10,000 malformed messages interleaved with 5,000 good events: every bad one in the DLQ with its reason,
    every good one applied, the worker never stops."""
    rng = random.Random(31)
    now = now_ms()
    good = make_events(5_000, 200, seed=31, prefix="m")
    bad = [malformed(rng, i, now) for i in range(10_000)]
    parser = EventParser()
    want = Counter()
    for b in bad:
        r = parser.parse(b, now=now)
        assert isinstance(r, Rejection), f"test input meant to be malformed was accepted: {b[:80]!r}"
        want[r.reason] += 1
    stream: list[tuple[bytes | None, bytes | None]] = [(e.user_id.encode(), encode_event(e)) for e in good]
    stream += [(f"mu{i % 50}".encode(), b) for i, b in enumerate(bad)]
    rng.shuffle(stream)
    w = _start(kafka.bootstrap, tmp_path, "malformed-burst")
    try:
        produce(kafka.bootstrap, w.topic, [v for _, v in stream], keys=[k for k, _ in stream])
        wait_until(lambda: len(read_dlq(kafka.bootstrap, w.dlq)) >= len(bad), 180, "10,000 DLQ records")
        counts = check_state("malformed-burst", kafka.bootstrap, w.changelog_topic, expected_state(good), w)
        dlq = read_dlq(kafka.bootstrap, w.dlq)
        got = Counter(r["reason"] for r in dlq)
        assert w.alive(), "the worker stopped on bad input"
    finally:
        w.stop()
    print(f"[fault:malformed-burst] DLQ records {len(dlq)} of {len(bad)}; reasons {dict(sorted(got.items()))}")
    assert_zero(*counts)
    assert len(dlq) == len(bad)
    assert got == want


def test_duplicate_replay(kafka, tmp_path: Path) -> None:
    """Re-publish every message of the topic (a producer replaying its log): state unchanged."""
    events = make_events(10_000, 300, seed=41, prefix="d")
    w = _start(kafka.bootstrap, tmp_path, "duplicate-replay")
    try:
        produce(kafka.bootstrap, w.topic, [encode_event(e) for e in events], keys=event_keys(events))
        expected = expected_state(events)
        check_state("duplicate-replay:1st", kafka.bootstrap, w.changelog_topic, expected, w)
        records = read_topic(kafka.bootstrap, w.topic)
        assert len(records) == len(events)
        produce(kafka.bootstrap, w.topic, [r.value for r in records], keys=[r.key for r in records])
        wait_handled([w], 2 * len(events), 180)
        counts = check_state("duplicate-replay", kafka.bootstrap, w.changelog_topic, expected, w,
                             duplicates_counted=int(w.metrics().get("actionstream_events_duplicate_total", 0)))
    finally:
        w.stop()
    assert_zero(*counts)
