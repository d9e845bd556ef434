"""The stream worker end to end: real Apache Kafka, a real `actionstream worker` subprocess, real RocksDB.

One worker serves the three tests of this module (each uses its own users): traffic keyed the usual
way, traffic on random partitions (one sequence per user anyway), and bad input (all in the DLQ, the
worker stays up, good events around them applied). Every check compares full state with
``streams.sequence.rebuild`` of the accepted events, through the changelog and through the HTTP API.
"""

from __future__ import annotations

import base64
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from streams.archive import read_events
from streams.events import EventParser, Rejection, encode_event, now_ms
from tests.streams.harness import (
    WorkerProc,
    create_topics,
    diff_json,
    diff_states,
    event_keys,
    expected_json,
    expected_state,
    http_state,
    make_events,
    produce,
    read_dlq,
    wait_for_state,
    wait_until,
)

pytestmark = pytest.mark.kafka

PARTITIONS = 4


class Env:
    def __init__(self, bootstrap: str, topic: str, dlq: str, worker: WorkerProc, archive: Path) -> None:
        self.bootstrap, self.topic, self.dlq, self.worker, self.archive = bootstrap, topic, dlq, worker, archive

    def changelog_for(self, users: set[str], expected: dict, timeout_s: float = 90.0) -> dict:
        state = wait_for_state(self.bootstrap, self.worker.changelog_topic, expected, timeout_s,
                               users=users)
        return {u: s for u, s in state.sequences.items() if u in users}


@pytest.fixture(scope="module")
def env(kafka, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    tmp = tmp_path_factory.mktemp("worker-stream")
    suffix = os.urandom(4).hex()
    topic, dlq, group = f"acts-{suffix}", f"dlq-{suffix}", f"stream-{suffix}"
    create_topics(kafka.bootstrap, [topic, dlq], PARTITIONS)
    # a 32-event agent buffer: the consumer's hand-off waits (streams.drain's slow path) are exercised too
    worker = WorkerProc(kafka.bootstrap, tmp / "w1", topic=topic, dlq=dlq, worker_id=group,
                        partitions=PARTITIONS, archive_dir=tmp / "archive",
                        env={"ACTIONSTREAM_STREAM_BUFFER_MAXSIZE": "32", "ACTIONSTREAM_FAST_DRAIN": "true"}).start()
    try:
        worker.wait_ready(90)
        yield Env(kafka.bootstrap, topic, dlq, worker, tmp / "archive")
    finally:
        worker.stop()


def test_keyed_traffic_reaches_table_api_metrics_and_archive(env: Env) -> None:
    events = make_events(3000, 300, seed=1, prefix="k-")
    produce(env.bootstrap, env.topic, [encode_event(e) for e in events], keys=event_keys(events))
    expected = expected_state(events)
    users = set(expected)

    state = env.changelog_for(users, expected)
    assert diff_states(state, expected) == {"lost": 0, "extra": 0, "wrong": 0}
    assert diff_json(http_state(env.worker, users), expected_json(expected)) == {"lost": 0, "extra": 0, "wrong": 0}

    # a user without history: 200 with an empty sequence
    status, body = env.worker.sequence("k-nobody")
    assert status == 200 and body["sequence"] == []

    # the archive holds every accepted event (flushed every second and on commit)
    def archived() -> set[str]:
        return {e.event_id for e in read_events(env.archive) if e.user_id.startswith("k-")} if env.archive.exists() else set()
    wait_until(lambda: archived() == {e.event_id for e in events}, 30, "archive to hold all events")

    m = env.worker.metrics()
    # every event handled once by its outcome: applied, or valid but changing nothing (too old for a full sequence)
    assert m["actionstream_events_accepted_total"] + m["actionstream_events_duplicate_total"] >= 3000
    assert m["actionstream_recovery_ready"] == 1
    assert m['actionstream_freshness_seconds_count{stage="sequence"}'] > 0
    # 3000 events through a 32-event buffer: some hand-offs waited, and none was lost (checked above)
    assert m["actionstream_consumer_handoff_waits_total"] > 0
    # ready: the start-up heap was frozen once (streams.heap), and collections are timed by generation
    assert m["actionstream_gc_frozen_objects"] > 10_000
    assert m['actionstream_gc_pause_seconds_count{generation="0"}'] > 0


def test_random_partitions_still_one_sequence_per_user(env: Env) -> None:
    events = make_events(3000, 200, seed=2, prefix="r-")
    values = [encode_event(e) for e in events]
    half = len(values) // 2
    # half on random partitions, half with librdkafka's CRC32 partitioner (keyed, other partition)
    produce(env.bootstrap, env.topic, values[:half], keys=event_keys(events)[:half], partitioner="random", seed=5)
    produce(env.bootstrap, env.topic, values[half:], keys=event_keys(events)[half:], partitioner="crc32")
    expected = expected_state(events)
    users = set(expected)

    state = wait_for_state(env.bootstrap, env.worker.changelog_topic, expected, 90, users=users)
    assert not [u for u in state.split_users if u in users], "a user's state was written to two partitions"
    got = {u: s for u, s in state.sequences.items() if u in users}
    assert diff_states(got, expected) == {"lost": 0, "extra": 0, "wrong": 0}
    assert diff_json(http_state(env.worker, users), expected_json(expected)) == {"lost": 0, "extra": 0, "wrong": 0}
    assert env.worker.metrics()["actionstream_events_rerouted_total"] > 0


def _bad_inputs(now: int) -> list[tuple[bytes | None, str]]:
    good = {"event_id": "b-x", "user_id": "b-u1", "item_id": "i1", "action": "click", "ts": now}

    def ev(**changes: object) -> bytes:
        d = {**good, **changes}
        return orjson.dumps({k: v for k, v in d.items() if v is not ...})

    table: list[tuple[bytes | None, str]] = [
        (b"this is not json", "invalid_json"),
        (b"\xff\xfe\x00garbage", "invalid_json"),
        (None, "invalid_json"),
        (b"[1, 2, 3]", "not_an_object"),
        (b'"a string"', "not_an_object"),
        (ev(user_id=...), "missing_field:user_id"),
        (ev(event_id=None), "missing_field:event_id"),
        (ev(ts=...), "missing_field:ts"),
        (ev(user_id=42), "invalid_type:user_id"),
        (ev(ts="yesterday"), "invalid_type:ts"),
        (ev(item_id=""), "invalid_value:item_id"),
        (ev(user_id="u" * 200), "invalid_value:user_id"),
        (ev(duration_ms=-5), "invalid_value:duration_ms"),
        (ev(action="dance"), "unknown_action"),
        (ev(ts=now + 3_600_000), "ts_in_future"),
        (ev(ts=now - 40 * 86_400_000), "ts_too_old"),
        (ev(item_id="x" * 100, blob="y" * 20_000), "too_large"),
        (b"z" * 900_000, "too_large"),  # near Kafka's 1 MB limit: the DLQ record keeps a truncated copy
    ]
    rng = __import__("random").Random(11)
    parser = EventParser()
    for _ in range(40):
        raw = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300)))
        verdict = parser.parse(raw, now)
        assert isinstance(verdict, Rejection)
        table.append((raw, verdict.reason))
    return table


def test_bad_input_goes_to_dlq_and_good_events_around_it_apply(env: Env) -> None:
    now = now_ms()
    bad = _bad_inputs(now)
    good = make_events(400, 40, seed=3, prefix="g-", now=now)
    values: list[bytes | None] = []
    keys: list[bytes | None] = []
    for i, e in enumerate(good):  # interleave: bad inputs between good events
        values.append(encode_event(e))
        keys.append(e.user_id.encode())
        if i < len(bad):
            values.append(bad[i][0])
            keys.append(b"bad-key")
    produce(env.bootstrap, env.topic, values, keys=keys)

    expected = expected_state(good)
    got = env.changelog_for(set(expected), expected)
    assert diff_states(got, expected) == {"lost": 0, "extra": 0, "wrong": 0}

    def dlq_records() -> list[dict]:
        return [r for r in read_dlq(env.bootstrap, env.dlq) if r["topic"] == env.topic]
    wait_until(lambda: len(dlq_records()) >= len(bad), 60, "every bad input in the DLQ")
    records = dlq_records()
    assert len(records) == len(bad)
    by_payload = {}
    for r in records:
        assert set(r) >= {"reason", "error", "topic", "partition", "offset", "payload_b64"}
        assert r["error"]
        by_payload.setdefault(base64.b64decode(r["payload_b64"]), []).append(r)
    for raw, reason in bad:
        payload = (raw or b"")[:600_000]
        assert payload in by_payload, f"missing DLQ record for {reason}"
        assert reason in [r["reason"] for r in by_payload[payload]], (reason, by_payload[payload])
    huge = by_payload[b"z" * 600_000][0]
    assert huge["payload_truncated"] is True and huge["payload_bytes"] == 900_000

    assert env.worker.alive()
    m = env.worker.metrics()
    assert m['actionstream_events_rejected_total{reason="unknown_action"}'] >= 1
    assert m['actionstream_events_rejected_total{reason="invalid_json"}'] >= 3


def test_sigusr1_writes_thread_and_task_stacks_to_the_log(env: Env) -> None:
    """What operators (deploy/README.md) and the benchmark's stall detector rely on: ``kill -USR1`` makes a
    running worker write every thread's stack and every asyncio task's stack to its log, and keep running."""
    assert env.worker.proc is not None
    before = env.worker.log_path.stat().st_size
    os.kill(env.worker.proc.pid, signal.SIGUSR1)

    def dumped() -> bool:
        with env.worker.log_path.open("rb") as fh:
            fh.seek(before)
            text = fh.read().decode(errors="replace")
        return "THREAD MainThread" in text and "Stack for <Task" in text and "sequence_agent" in text

    wait_until(dumped, 30, "the stack dump in the worker log")
    assert env.worker.alive()
    status, _ = env.worker.sequence("k-nobody")
    assert status == 200
