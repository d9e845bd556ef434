"""Worker faults against the real broker: kill -9 mid-stream, RocksDB dir deleted, 1 → 2 → 1 workers, two workers
starting together on a backlog.

Each scenario runs a stream through real `actionstream worker` subprocesses and then compares every
user's stored sequence (changelog and API) with the offline rebuild of all accepted events: lost,
duplicated and wrong counts must all be 0 (see tests/faults/helpers.py).
"""

from __future__ import annotations

import shutil
import threading
import time
from pathlib import Path

import pytest

from streams.events import encode_event
from tests.faults.helpers import accepted, assert_zero, check_state, uid, wait_accepted_at_least
from tests.streams.harness import WorkerProc, create_topics, event_keys, expected_state, make_events, produce

pytestmark = [pytest.mark.kafka, pytest.mark.faults, pytest.mark.timeout(600)]

PARTITIONS = 4
N_EVENTS = 20_000
N_USERS = 400


def _setup(bootstrap: str, tmp_path: Path, name: str) -> tuple[str, str, str]:
    topic, dlq, group = uid(f"{name}-in"), uid(f"{name}-dlq"), uid(name)
    create_topics(bootstrap, [topic, dlq], PARTITIONS)
    return topic, dlq, group


def _worker(bootstrap: str, tmp_path: Path, topic: str, dlq: str, group: str, name: str) -> WorkerProc:
    return WorkerProc(bootstrap, tmp_path / name, topic=topic, dlq=dlq, worker_id=group, partitions=PARTITIONS)


@pytest.mark.parametrize("delete_dir", [False, True], ids=["kill9-dir-kept", "kill9-dir-deleted"])
def test_kill9_mid_stream(kafka, tmp_path: Path, delete_dir: bool) -> None:
    name = "kill9-dir-deleted" if delete_dir else "kill9-dir-kept"
    topic, dlq, group = _setup(kafka.bootstrap, tmp_path, name)
    events = make_events(N_EVENTS, N_USERS, seed=11, prefix="k")
    produce(kafka.bootstrap, topic, [encode_event(e) for e in events], keys=event_keys(events))
    w = _worker(kafka.bootstrap, tmp_path, topic, dlq, group, "w1").start()
    try:
        w.wait_ready(90)
        kills = []
        for frac in (0.25, 0.3):  # two crashes: the second one lands while the first replay is running
            at_kill = wait_accepted_at_least(w, N_EVENTS * frac, 120)
            w.kill()
            kills.append(int(at_kill))
            if delete_dir:
                shutil.rmtree(w.data_dir)
            w.start()
            recovered_s = w.wait_ready(120)
        assert kills[-1] < N_EVENTS, "the worker finished before the kill: not mid-stream"
        counts = check_state(name, kafka.bootstrap, w.changelog_topic, expected_state(events), w,
                             accepted_at_kills=kills, ready_after_restart_s=round(recovered_s, 1))
    finally:
        w.stop()
    assert_zero(*counts)


def test_scale_1_2_1(kafka, tmp_path: Path) -> None:
    name = "workers-1-2-1"
    topic, dlq, group = _setup(kafka.bootstrap, tmp_path, name)
    events = make_events(N_EVENTS, N_USERS, seed=12, prefix="s")
    thirds = [events[i * len(events) // 3:(i + 1) * len(events) // 3] for i in range(3)]
    w1 = _worker(kafka.bootstrap, tmp_path, topic, dlq, group, "w1").start()
    w2 = _worker(kafka.bootstrap, tmp_path, topic, dlq, group, "w2")
    errors: list[BaseException] = []

    def trickle(chunk: list, seconds: float) -> None:
        """Publish ``chunk`` in 20 slices over ``seconds`` (a live stream during the rebalance)."""
        try:
            step = max(1, len(chunk) // 20)
            for i in range(0, len(chunk), step):
                part = chunk[i:i + step]
                produce(kafka.bootstrap, topic, [encode_event(e) for e in part], keys=event_keys(part))
                time.sleep(seconds / 20)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            errors.append(exc)

    try:
        w1.wait_ready(90)
        trickle(thirds[0], 3)
        t = threading.Thread(target=trickle, args=(thirds[1], 10))
        t.start()
        w2.start()                      # 1 -> 2 while events flow
        w2.wait_ready(90)
        t.join()
        t = threading.Thread(target=trickle, args=(thirds[2], 10))
        t.start()
        time.sleep(2)
        assert w2.stop() == 0           # 2 -> 1 while events flow (clean leave)
        t.join()
        assert not errors, errors
        w1.wait_ready(90)
        counts = check_state(name, kafka.bootstrap, w1.changelog_topic, expected_state(events), w1)
    finally:
        w2.stop()
        w1.stop()
    assert_zero(*counts)


def test_two_workers_start_together_on_a_backlog(kafka, tmp_path: Path) -> None:
    """A new group of two workers over a topic that already holds a backlog (a first deployment, or the
    benchmark's scale-out run): the first to join takes every partition and starts reading, the second joins
    a moment later and the group rebalances while most of what the first one read is not committed yet (often
    nothing is). Every partition restarts from its committed offset, or from the start, on its new owner or
    its old one: events are handled twice, never lost."""
    name = "two-workers-cold-backlog"
    topic, dlq, group = _setup(kafka.bootstrap, tmp_path, name)
    events = make_events(N_EVENTS, N_USERS, seed=13, prefix="b")
    produce(kafka.bootstrap, topic, [encode_event(e) for e in events], keys=event_keys(events))
    w1 = _worker(kafka.bootstrap, tmp_path, topic, dlq, group, "w1").start()
    w2 = _worker(kafka.bootstrap, tmp_path, topic, dlq, group, "w2").start()
    try:
        w1.wait_ready(90)
        w2.wait_ready(90)
        counts = check_state(name, kafka.bootstrap, w1.changelog_topic, expected_state(events), w1)
        shared = [accepted(w1), accepted(w2)]
    finally:
        w2.stop()
        w1.stop()
    assert all(shared), f"one worker applied nothing ({shared}): the group never shared the backlog"
    assert_zero(*counts)
