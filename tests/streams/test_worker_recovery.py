"""Recovery and rebalancing of the stream worker against real Kafka, compared with the offline rebuild.

* kill -9 in the middle of a stream, restart with the RocksDB dir kept, then kill -9 again and restart
  with the dir deleted (state rebuilt from the changelog): every user's full sequence, read through the
  HTTP API (i.e. from the worker's RocksDB), equals ``streams.sequence.rebuild`` of all events.
* 1 -> 2 -> 1 workers while events flow: same full-state comparison, through both workers' API.
"""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import pytest

from streams.events import Event, encode_event
from tests.streams.harness import (
    WorkerProc,
    create_topics,
    diff_json,
    diff_states,
    event_keys,
    expected_json,
    expected_state,
    explain_diff,
    group_offsets,
    http_state,
    log_problems,
    make_events,
    produce,
    read_dlq,
    wait_for_state,
    wait_until,
)

pytestmark = pytest.mark.kafka

PARTITIONS = 4
CLEAN = {"lost": 0, "extra": 0, "wrong": 0}


def _names(prefix: str) -> tuple[str, str, str]:
    s = os.urandom(4).hex()
    return f"{prefix}-acts-{s}", f"{prefix}-dlq-{s}", f"{prefix}-{s}"


def _produce_in_background(bootstrap: str, topic: str, events: list[Event], chunks: int = 10) -> threading.Thread:
    def run() -> None:
        step = len(events) // chunks + 1
        for i in range(0, len(events), step):
            part = events[i:i + step]
            produce(bootstrap, topic, [encode_event(e) for e in part], keys=event_keys(part))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def _accepted(w: WorkerProc) -> float:
    try:
        return w.metrics().get("actionstream_events_accepted_total", 0.0)
    except OSError:
        return 0.0


def _owns_partitions(w: WorkerProc, topic: str) -> bool:
    """Whether the worker reports consumer lag (i.e. holds an assignment) for ``topic``."""
    try:
        return any(k.startswith("actionstream_consumer_lag_messages{") and f'topic="{topic}"' in k
                   for k in w.metrics())
    except OSError:
        return False


def _assert_full_state(w: WorkerProc, bootstrap: str, events: list[Event]) -> None:
    expected = expected_state(events)
    state = wait_for_state(bootstrap, w.changelog_topic, expected, 120)
    assert not state.split_users
    dlq = read_dlq(bootstrap, w.dlq)  # every event here is valid: a DLQ record is a lost action
    assert diff_states(state.sequences, expected) == CLEAN and not dlq, (
        f"changelog differs from the offline rebuild\n{explain_diff(state.sequences, expected, PARTITIONS)}\n"
        f"dead-lettered: {[(r['reason'], r['error']) for r in dlq[:5]]} ({len(dlq)} records)\n"
        f"input offsets: {group_offsets(bootstrap, w.worker_id, w.topic)}\n"
        f"worker log problems:\n{log_problems(w)}")
    assert diff_json(http_state(w, expected), expected_json(expected)) == CLEAN, "worker state differs"


def test_kill9_restart_with_kept_and_with_deleted_state(kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    topic, dlq, group = _names("crash")
    create_topics(kafka.bootstrap, [topic, dlq], PARTITIONS)
    events = make_events(8_000, 800, seed=21, prefix="c-")
    data = tmp_path / "w1"
    w = WorkerProc(kafka.bootstrap, data, topic=topic, dlq=dlq, worker_id=group, partitions=PARTITIONS).start()
    w.wait_ready(90)
    producer = _produce_in_background(kafka.bootstrap, topic, events)
    wait_until(lambda: _accepted(w) >= 2000, 120, "the worker to apply 2000 events")
    w.kill()  # mid-stream: offsets, changelog and RocksDB at arbitrary points

    w = WorkerProc(kafka.bootstrap, data, topic=topic, dlq=dlq, worker_id=group, partitions=PARTITIONS,
                   port=w.port).start()
    w.wait_ready(90)
    producer.join(120)
    _assert_full_state(w, kafka.bootstrap, events)

    # crash again, lose the local state entirely: recovery rebuilds RocksDB from the changelog
    more = make_events(1500, 800, seed=22, prefix="c-")
    produce(kafka.bootstrap, topic, [encode_event(e) for e in more], keys=event_keys(more))
    w.kill()
    shutil.rmtree(data)
    w = WorkerProc(kafka.bootstrap, data, topic=topic, dlq=dlq, worker_id=group, partitions=PARTITIONS,
                   port=w.port).start()
    try:
        w.wait_ready(120)
        _assert_full_state(w, kafka.bootstrap, events + more)
    finally:
        w.stop()


def test_one_to_two_to_one_workers(kafka, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    topic, dlq, group = _names("scale")
    create_topics(kafka.bootstrap, [topic, dlq], PARTITIONS)
    batches = [make_events(2000, 500, seed=30 + i, prefix="s-") for i in range(3)]
    w1 = WorkerProc(kafka.bootstrap, tmp_path / "w1", topic=topic, dlq=dlq, worker_id=group,
                    partitions=PARTITIONS).start()
    w2 = WorkerProc(kafka.bootstrap, tmp_path / "w2", topic=topic, dlq=dlq, worker_id=group,
                    partitions=PARTITIONS)
    try:
        w1.wait_ready(90)
        produce(kafka.bootstrap, topic, [encode_event(e) for e in batches[0]], keys=event_keys(batches[0]))

        w2.start()  # joins: half of the partitions (and their state) move to it
        w2.wait_ready(90)
        wait_until(lambda: _owns_partitions(w2, topic), 90, "w2 to be assigned input partitions")
        wait_until(w1.ready, 90, "w1 ready after the rebalance")
        before = _accepted(w1)
        producer = _produce_in_background(kafka.bootstrap, topic, batches[1], chunks=5)
        producer.join(120)
        seen = batches[0] + batches[1]
        _assert_full_state(w1, kafka.bootstrap, seen)
        # both workers serve every user (the API routes to the owner) and both applied events
        assert diff_json(http_state(w2, expected_state(seen)), expected_json(expected_state(seen))) == CLEAN
        assert _accepted(w2) > 0 and _accepted(w1) > before

        w1.stop()  # leaves: w2 takes every partition back, recovering w1's from the changelog
        produce(kafka.bootstrap, topic, [encode_event(e) for e in batches[2]], keys=event_keys(batches[2]))
        wait_until(w2.ready, 90, "w2 ready after w1 left")
        _assert_full_state(w2, kafka.bootstrap, seen + batches[2])
    finally:
        w1.stop()
        w2.stop()
