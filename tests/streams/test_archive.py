"""The event archive: layout, day filters, dedup of at-least-once repeats, torn last lines, plain files."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from streams.archive import ArchiveWriter, archive_path, day_of, iter_files, read_events
from streams.events import Event, encode_event

DAY_MS = 86_400_000
T0 = 1_750_000_000_000  # 2025-06-15 15:06:40 UTC


def ev(i: int, ts: int, user: str = "u1") -> Event:
    return Event(f"e{i}", user, f"i{i}", "click", ts, "homefeed", 100 + i)


def test_day_and_path_layout(tmp_path: Path) -> None:
    assert day_of(T0) == dt.date(2025, 6, 15)
    assert day_of(T0 - T0 % DAY_MS - 1) == dt.date(2025, 6, 14)  # one ms before UTC midnight
    assert archive_path(tmp_path, dt.date(2025, 6, 15), 7) == tmp_path / "date=2025-06-15" / "part-007.jsonl"


def test_writer_then_reader_round_trip_with_day_filter_and_dedup(tmp_path: Path) -> None:
    w = ArchiveWriter(tmp_path)
    events = [ev(0, T0 - 2 * DAY_MS), ev(1, T0 - DAY_MS), ev(2, T0, "u2"), ev(3, T0 + 1)]
    for p, e in enumerate(events):
        w.append(encode_event(e), e.ts, partition=p % 2)
    assert w.pending == 4
    assert w.flush() == 4 and w.pending == 0
    w.append(encode_event(events[2]), events[2].ts, partition=0)  # replay after a crash: a repeated line
    w.flush()
    assert sorted(p.relative_to(tmp_path).as_posix() for p in iter_files(tmp_path)) == [
        "date=2025-06-13/part-000.jsonl", "date=2025-06-14/part-001.jsonl",
        "date=2025-06-15/part-000.jsonl", "date=2025-06-15/part-001.jsonl"]
    assert sorted(read_events(tmp_path), key=lambda e: e.ts) == events
    assert len(list(read_events(tmp_path, dedup=False))) == 5
    recent = list(read_events(tmp_path, start=dt.date(2025, 6, 14)))
    assert sorted(e.event_id for e in recent) == ["e1", "e2", "e3"]
    only_13 = list(read_events(tmp_path, start=dt.date(2025, 6, 13), end=dt.date(2025, 6, 13)))
    assert [e.event_id for e in only_13] == ["e0"]


def test_torn_last_line_is_skipped_and_plain_files_read(tmp_path: Path) -> None:
    f = tmp_path / "events.jsonl"
    good = [ev(i, T0 + i) for i in range(3)]
    f.write_bytes(b"".join(encode_event(e) + b"\n" for e in good) + b'{"event_id": "e9", "user_')
    assert list(read_events(f)) == good
    assert list(read_events([str(f), f])) == good  # the same file twice: dedup by event_id


def test_missing_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no event file or archive directory"):
        list(read_events(tmp_path / "nope"))


def test_flush_failure_keeps_the_buffer(tmp_path: Path) -> None:
    blocker = tmp_path / "archive"
    blocker.write_text("a file where the archive dir should be")
    w = ArchiveWriter(blocker)
    w.append(encode_event(ev(0, T0)), T0, 0)
    with pytest.raises(OSError):
        w.flush()
    assert w.pending == 1  # nothing lost: the next flush retries
