"""Broker outage: Apache Kafka stopped (SIGTERM, controlled shutdown) for 20 s mid-stream, then restarted
with its data on the same ports. The worker must ride it out (or be restarted by nothing: it is not
touched) and end with every user's sequence equal to the offline rebuild: lost = duplicated = wrong = 0.

Uses its own broker (the session broker is shared by other tests and must not go away).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from streams.broker import EmbeddedKafka, free_port
from streams.events import encode_event
from streams.settings import BrokerSettings
from tests.faults.helpers import assert_zero, check_state, uid, wait_accepted_at_least
from tests.streams.harness import WorkerProc, create_topics, event_keys, expected_state, make_events, produce

pytestmark = [pytest.mark.kafka, pytest.mark.faults, pytest.mark.timeout(600)]

PARTITIONS = 4
OUTAGE_S = 20.0


def test_broker_stopped_20s_mid_stream(tmp_path: Path) -> None:
    broker = EmbeddedKafka(BrokerSettings(broker_data_dir=tmp_path / "kafka", broker_port=free_port(),
                                          broker_controller_port=free_port(), broker_heap="512m")).start()
    w: WorkerProc | None = None
    try:
        topic, dlq, group = uid("outage-in"), uid("outage-dlq"), uid("outage")
        create_topics(broker.bootstrap, [topic, dlq], PARTITIONS)
        events = make_events(16_000, 300, seed=51, prefix="o")
        first, second = events[:10_000], events[10_000:]
        produce(broker.bootstrap, topic, [encode_event(e) for e in first], keys=event_keys(first))
        w = WorkerProc(broker.bootstrap, tmp_path / "w1", topic=topic, dlq=dlq, worker_id=group,
                       partitions=PARTITIONS).start()
        w.wait_ready(90)
        at_stop = wait_accepted_at_least(w, 2_000, 120)
        t0 = time.monotonic()
        broker.stop()
        time.sleep(max(0.0, OUTAGE_S - (time.monotonic() - t0)))
        assert w.alive(), f"the worker died during the broker outage:\n{w.log_tail()}"
        broker.start()
        produce(broker.bootstrap, topic, [encode_event(e) for e in second], keys=event_keys(second))
        counts = check_state("broker-outage-20s", broker.bootstrap, w.changelog_topic, expected_state(events), w,
                             accepted_at_stop=int(at_stop), worker_alive=w.alive())
    finally:
        if w is not None:
            w.stop()
        broker.stop()
    assert_zero(*counts)
