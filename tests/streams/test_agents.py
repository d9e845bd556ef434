"""The sequence agent's handler (:class:`streams.agents.EventHandler`) on a real platform (RocksDB tables,
unstarted producer): outcomes and the counters that operators and the benchmark read."""

from __future__ import annotations

import asyncio
from pathlib import Path

from streams.app import create_platform
from streams.events import Event, encode_event, now_ms
from streams.settings import WorkerSettings


def test_each_message_is_counted_once_by_its_outcome(tmp_path: Path) -> None:
    """accepted + duplicate + rejected = consumed: a duplicate is not also counted as accepted (the bench's
    end-of-run test and the docs of ``actionstream_events_accepted_total`` rely on it)."""
    platform = create_platform(WorkerSettings.load(data_dir=tmp_path / "state", archive_dir=""))
    handler, topic = platform.handler, platform.settings.topic_actions
    t = now_ms()
    e1 = Event("x1", "u9", "i1", "click", t - 5_000, "homefeed", None)
    e2 = Event("x2", "u9", "i2", "save", t - 1_000, "homefeed", None)
    key = b"u9"
    part = platform.sequences.owner(key)
    messages = [encode_event(e1), encode_event(e2), encode_event(e1), b"{not json"]

    async def handle_all() -> list[str]:  # Faust queues the changelog records on the (unstarted) producer
        return [handler.handle(key, m, topic, part, i) for i, m in enumerate(messages)]

    assert asyncio.run(handle_all()) == ["applied", "applied", "duplicate", "rejected"]

    def value(name: str) -> float:
        return sum(s.value for metric in platform.registry.collect() for s in metric.samples if s.name == name)

    assert value("actionstream_events_consumed_total") == 4
    assert value("actionstream_events_accepted_total") == 2
    assert value("actionstream_events_duplicate_total") == 1
    assert value("actionstream_events_rejected_total") == 1
