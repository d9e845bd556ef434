"""Pieces of the worker that need no broker: the DLQ record, the archive writer, worker settings, routing."""

from __future__ import annotations

import base64
from pathlib import Path

import orjson
import pytest
from aiokafka.partitioner import DefaultPartitioner

from streams.agents import DLQ_MAX_PAYLOAD_BYTES, dead_letter
from streams.archive import ArchiveWriter, read_events
from streams.errors import ConfigError
from streams.events import Event, encode_event
from streams.settings import WorkerSettings
from streams.tables import owner_partition


def test_dead_letter_record_has_the_contract_fields_and_original_bytes() -> None:
    raw = b"\xff not json"
    rec = orjson.loads(dead_letter("invalid_json", "not valid UTF-8 JSON", "user-actions", 3, 42, raw))
    assert rec == {"reason": "invalid_json", "error": "not valid UTF-8 JSON", "topic": "user-actions",
                   "partition": 3, "offset": 42, "payload_b64": base64.b64encode(raw).decode()}


def test_dead_letter_truncates_oversized_payloads_and_flags_null() -> None:
    big = bytes(range(256)) * 4000  # 1,024,000 bytes
    rec = orjson.loads(dead_letter("too_large", "e", "t", 0, 1, big))
    assert base64.b64decode(rec["payload_b64"]) == big[:DLQ_MAX_PAYLOAD_BYTES]
    assert rec["payload_truncated"] is True and rec["payload_bytes"] == len(big)
    assert len(dead_letter("too_large", "e", "t", 0, 1, big)) < 1_000_000  # fits Kafka's default limit
    null = orjson.loads(dead_letter("invalid_json", "empty", "t", 0, 2, None))
    assert null["payload_b64"] == "" and null["payload_null"] is True


def test_archive_writer_layout_flush_and_readback(tmp_path: Path) -> None:
    w = ArchiveWriter(tmp_path)
    day1, day2 = 1_700_000_000_000, 1_700_000_000_000 + 86_400_000
    events = [Event(f"e{i}", f"u{i % 3}", "i", "click", day1 if i < 5 else day2) for i in range(8)]
    for i, e in enumerate(events):
        w.append(encode_event(e), e.ts, partition=i % 2)
    assert w.pending == 8 and not list(tmp_path.rglob("*.jsonl"))  # buffered until flush
    assert w.flush() == 8 and w.pending == 0
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.jsonl"))
    assert files == ["date=2023-11-14/part-000.jsonl", "date=2023-11-14/part-001.jsonl",
                     "date=2023-11-15/part-000.jsonl", "date=2023-11-15/part-001.jsonl"]
    w.append(encode_event(events[0]), events[0].ts, 0)  # at-least-once: a replayed event appends again
    w.flush()
    assert sorted(e.event_id for e in read_events(tmp_path)) == sorted(e.event_id for e in events)
    assert len(list(read_events(tmp_path, dedup=False))) == 9


def test_archive_writer_keeps_lines_when_the_disk_write_fails(tmp_path: Path) -> None:
    blocker = tmp_path / "archive"
    blocker.write_text("a file where the archive dir should be")
    w = ArchiveWriter(blocker)
    w.append(b'{"event_id":"e"}', 1_700_000_000_000, 0)
    with pytest.raises(OSError):
        w.flush()
    assert w.pending == 1  # nothing lost: retried at the next flush


def test_worker_settings_defaults_and_clear_errors() -> None:
    s = WorkerSettings.load()
    assert s.state_dir == Path(".actionstream/worker-6066")
    assert s.changelog_topic == "actionstream-sequences-changelog"
    assert WorkerSettings.load(archive_dir="").archive_dir is None
    with pytest.raises(ConfigError, match="ACTIONSTREAM_HEARTBEAT_INTERVAL_S"):
        WorkerSettings.load(heartbeat_interval_s=3, session_timeout_s=6)
    with pytest.raises(ConfigError, match="ACTIONSTREAM_WEB_PORT"):
        WorkerSettings.load(web_port=0)
    with pytest.raises(ConfigError, match="ACTIONSTREAM_TRANSACT_CHECKPOINT"):
        WorkerSettings.load(transact_checkpoint="/nonexistent/model.pt")
    assert "secret" not in str(WorkerSettings.load(api_token="secret").masked())


def test_owner_partition_matches_the_java_default_partitioner() -> None:
    partitions = list(range(8))
    for user in ("u1", "user-0000042", "ü-ñ", "x" * 128):
        key = user.encode()
        assert owner_partition(key, 8) == DefaultPartitioner()(key, partitions, partitions)
