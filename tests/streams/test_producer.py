"""ActionProducer, `actionstream produce` and live `simulate` against the real Apache Kafka broker."""

from __future__ import annotations

import io
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaAdminClient
from kafka.partitioner import murmur2

from streams.broker import free_port
from streams.cli import main
from streams.errors import DeliveryError
from streams.events import Event, EventParser, now_ms
from streams.producer import ActionProducer
from streams.settings import ProducerSettings
from tests.streams.harness import read_topic

pytestmark = pytest.mark.kafka


def make_topic(bootstrap: str, name: str, partitions: int = 4, **configs: str) -> str:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics({name: {"num_partitions": partitions, "replication_factor": 1, "configs": configs}})
        admin.wait_for_topics([name])
    finally:
        admin.close()
    return name


def settings_for(bootstrap: str, topic: str) -> ProducerSettings:
    return ProducerSettings.load(kafka_bootstrap_servers=bootstrap, topic_actions=topic)


def assert_keyed_by_user(records: list[Any], partitions: int) -> dict[str, set[int]]:
    """Every record's key is its value's user_id, all of a user's records sit on the murmur2 partition."""
    by_user: dict[str, set[int]] = defaultdict(set)
    for r in records:
        value = orjson.loads(r.value)
        assert r.key == value["user_id"].encode()
        by_user[value["user_id"]].add(r.partition)
        assert r.partition == (murmur2(r.key) & 0x7FFFFFFF) % partitions
    assert all(len(p) == 1 for p in by_user.values())
    return by_user


def test_produce_then_consume_keyed_by_user(kafka: Any, unique_topic: Callable[[str], str]) -> None:
    topic = make_topic(kafka.bootstrap, unique_topic("actions"), partitions=4)
    now = now_ms()
    events = [Event(f"e{i}", f"u{i % 13}", f"i{i}", "click", now - i, "homefeed", i) for i in range(300)]
    with ActionProducer(settings_for(kafka.bootstrap, topic)) as producer:
        assert producer.send_many(events) == 300
        assert producer.flush() == 300 and producer.failed == 0
    records = read_topic(kafka.bootstrap, topic)
    assert len(records) == 300
    by_user = assert_keyed_by_user(records, 4)
    assert len(by_user) == 13 and len({p for ps in by_user.values() for p in ps}) > 1
    parser = EventParser()
    assert sorted((parser.parse(r.value) for r in records), key=lambda e: int(e.event_id[1:])) == events


def test_send_raw_picks_partitions_and_sends_garbage(kafka: Any, unique_topic: Callable[[str], str]) -> None:
    topic = make_topic(kafka.bootstrap, unique_topic("raw"), partitions=3)
    with ActionProducer(settings_for(kafka.bootstrap, topic)) as producer:
        producer.send_raw(b"\xff not json", partition=2)
        producer.send_raw(b"{}", key=b"k", partition=0)
        producer.flush()
    got = {(r.partition, r.key, r.value) for r in read_topic(kafka.bootstrap, topic)}
    assert got == {(2, None, b"\xff not json"), (0, b"k", b"{}")}


def test_unreachable_bootstrap_fails_fast_with_a_clear_error() -> None:
    settings = ProducerSettings.load(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
    t0 = time.monotonic()
    with pytest.raises(DeliveryError, match="cannot reach Kafka at 127.0.0.1"):
        ActionProducer(settings, bootstrap_timeout_ms=1500, request_timeout_ms=1500)
    assert time.monotonic() - t0 < 20


def test_rejected_record_surfaces_in_flush(kafka: Any, unique_topic: Callable[[str], str]) -> None:
    """The broker refuses a record larger than the topic's max.message.bytes: flush says so."""
    topic = make_topic(kafka.bootstrap, unique_topic("small"), partitions=2, **{"max.message.bytes": "1024"})
    with ActionProducer(settings_for(kafka.bootstrap, topic)) as producer:
        producer.send_raw(b'{"ok": 1}', partition=0)
        producer.send_raw(os.urandom(8000), partition=1)  # incompressible, over the topic limit
        with pytest.raises(DeliveryError, match=r"1 record\(s\) were not acknowledged.*first error") as err:
            producer.flush()
        assert "TooLarge" in str(err.value)
        assert producer.acked == 1 and producer.failed == 1
    assert [r.value for r in read_topic(kafka.bootstrap, topic)] == [b'{"ok": 1}']


def mixed_file(path: Path) -> tuple[Path, list[str]]:
    now = now_ms()
    valid = [{"event_id": f"v{i}", "user_id": f"u{i % 3}", "item_id": f"i{i}", "action": "click", "ts": now - i}
             for i in range(5)]
    lines = [
        orjson.dumps(valid[0]),
        b"this is not json",                                                     # line 2
        orjson.dumps(valid[1]),
        orjson.dumps({**valid[2], "action": "like", "event_id": "bad-action"}),  # line 4
        b"",                                                                      # blank: skipped
        orjson.dumps({k: v for k, v in valid[3].items() if k != "user_id"}),      # line 6
        orjson.dumps({**valid[2], "extra": {"kept": "out"}}),
        orjson.dumps({**valid[3], "ts": now + 3_600_000, "event_id": "future"}),  # line 8
        b"[1, 2]",                                                                # line 9
        orjson.dumps(valid[4]) + b"\r",                                           # CRLF file
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, ["v0", "v1", "v2", "v4"]


def test_produce_cli_reports_each_rejected_line_and_sends_only_valid(
        kafka: Any, unique_topic: Callable[[str], str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    topic = make_topic(kafka.bootstrap, unique_topic("cli"), partitions=2)
    path, valid_ids = mixed_file(tmp_path / "mixed.jsonl")
    rc = main(["produce", str(path), "--bootstrap", kafka.bootstrap, "--topic", topic])
    out = capsys.readouterr().out
    assert rc == 1  # some lines rejected; the valid ones were still sent
    assert "read 10 lines: 4 valid, 5 rejected, 1 blank" in out
    assert f"sent 4 events to {topic}" in out
    for line_no, reason in [(2, "invalid_json"), (4, "unknown_action"), (6, "missing_field:user_id"),
                            (8, "ts_in_future"), (9, "not_an_object")]:
        assert f"  line {line_no}: {reason}: " in out
    records = read_topic(kafka.bootstrap, topic)
    assert sorted(orjson.loads(r.value)["event_id"] for r in records) == valid_ids
    assert_keyed_by_user(records, 2)


def test_produce_cli_stdin_dry_run_and_listing_cap(kafka: Any, unique_topic: Callable[[str], str],
                                                   monkeypatch: pytest.MonkeyPatch,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    data = b"\n".join([b"garbage"] * 7)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data)))
    rc = main(["produce", "-", "--dry-run", "--max-listed", "3"])
    out = capsys.readouterr().out
    assert rc == 1 and "dry run: nothing sent" in out
    assert out.count(": invalid_json: ") == 3 and "... and 4 more rejected lines" in out

    topic = make_topic(kafka.bootstrap, unique_topic("stdin"), partitions=1)
    now = now_ms()
    good = orjson.dumps({"event_id": "s1", "user_id": "u", "item_id": "i", "action": "save", "ts": now})
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(good + b"\n")))
    assert main(["produce", "--bootstrap", kafka.bootstrap, "--topic", topic]) == 0
    assert [r.value for r in read_topic(kafka.bootstrap, topic)] == [good]


def test_simulate_live_publishes_at_the_requested_rate(kafka: Any, unique_topic: Callable[[str], str],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    topic = make_topic(kafka.bootstrap, unique_topic("sim"), partitions=4)
    t0 = time.monotonic()
    rc = main(["simulate", "--rate", "300", "--duration", "3", "--users", "300", "--items", "2000",
               "--bootstrap", kafka.bootstrap, "--topic", topic, "--no-progress"])
    wall = time.monotonic() - t0
    out = capsys.readouterr().out
    assert rc == 0 and "acknowledged by Kafka" in out
    records = read_topic(kafka.bootstrap, topic)
    assert 600 < len(records) < 1300, len(records)  # ~900 = 300/s x 3 s
    assert wall >= 2.5  # paced to the wall clock, not dumped at once
    assert_keyed_by_user(records, 4)
    parser = EventParser()
    assert all(isinstance(parser.parse(r.value), Event) for r in records)
    assert abs(max(orjson.loads(r.value)["ts"] for r in records) - now_ms()) < 60_000  # ts = now
