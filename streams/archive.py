"""The event archive: accepted events as day-partitioned JSON lines, the single source of training data.

Layout (written by the worker's archive agent, read by training and the daily job)::

    <archive_dir>/date=YYYY-MM-DD/part-<kafka partition, 3 digits>.jsonl

``date`` is the UTC day of the event time (``ts``); every line is the canonical Event v1 JSON
(:func:`streams.events.encode_event`). Delivery is at-least-once (:class:`ArchiveWriter` is flushed before every
Kafka offset commit, so a committed event is on disk; events re-read after a crash are appended again),
so a line may repeat after a worker restart: readers deduplicate by ``event_id`` (``dedup=True``, the default). A plain ``.jsonl`` file (the
simulator's ``--out``) is read the same way, so every consumer accepts either.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from streams.events import Event

__all__ = ["ArchiveWriter", "archive_path", "day_of", "iter_files", "read_events"]


def day_of(ts_ms: int) -> dt.date:
    """UTC calendar day of an event time in ms."""
    return dt.datetime.fromtimestamp(ts_ms / 1000, tz=dt.timezone.utc).date()


def archive_path(archive_dir: Path, day: dt.date, partition: int) -> Path:
    return Path(archive_dir) / f"date={day.isoformat()}" / f"part-{partition:03d}.jsonl"


def iter_files(path: Path, start: dt.date | None = None, end: dt.date | None = None) -> list[Path]:
    """JSONL files under ``path`` (a file or an archive dir), restricted to days in [start, end]."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no event file or archive directory at {path}")
    out = []
    for f in sorted(path.rglob("*.jsonl")):
        part = f.parent.name
        if part.startswith("date="):
            day = dt.date.fromisoformat(part[5:])
            if (start and day < start) or (end and day > end):
                continue
        out.append(f)
    return out


def read_events(paths: Path | str | Iterable[Path | str], *, start: dt.date | None = None,
                end: dt.date | None = None, dedup: bool = True) -> Iterator[Event]:
    """Yield the archived events (file order; not sorted). Lines that are not valid events are skipped:
    the archive only ever holds accepted events, so this only guards against a torn last line."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    seen: set[str] = set()
    for p in paths:
        for f in iter_files(Path(p), start, end):
            with open(f, "rb") as fh:
                for line in fh:
                    try:
                        d = orjson.loads(line)
                        e = Event(d["event_id"], d["user_id"], d["item_id"], d["action"], int(d["ts"]),
                                  d.get("surface"), d.get("duration_ms"))
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        continue
                    if dedup:
                        if e.event_id in seen:
                            continue
                        seen.add(e.event_id)
                    yield e


class ArchiveWriter:
    """Buffers accepted events and appends them to the archive layout (the worker's archive sink).

    ``append`` is cheap (a list append); ``flush`` writes every buffered line with one ``write`` per file
    (``date=<UTC day>/part-<partition>.jsonl``, opened in append mode) and is called periodically and
    before every Kafka offset commit, which makes the archive at-least-once: an event whose input offset
    was committed is on disk; one processed again after a crash is written again (readers dedup by
    ``event_id``). A line is only ever written whole by a single ``write`` call; a crash in the middle
    of one leaves at most a torn last line, which :func:`read_events` skips.
    """

    def __init__(self, archive_dir: Path) -> None:
        self.archive_dir = Path(archive_dir)
        self._buffer: dict[tuple[dt.date, int], list[bytes]] = {}
        self._day_cache: dict[int, dt.date] = {}
        self.lines_written = 0

    def append(self, event_json: bytes, ts_ms: int, partition: int) -> None:
        """Queue one canonical event line (no newline) for ``partition``'s file of its UTC day."""
        hour = ts_ms // 3_600_000
        day = self._day_cache.get(hour)
        if day is None:
            if len(self._day_cache) > 10_000:
                self._day_cache.clear()
            day = self._day_cache[hour] = day_of(ts_ms)
        buf = self._buffer.get((day, partition))
        if buf is None:
            buf = self._buffer[(day, partition)] = []
        buf.append(event_json)

    @property
    def pending(self) -> int:
        return sum(len(v) for v in self._buffer.values())

    def flush(self) -> int:
        """Write all buffered lines; return how many. Raises OSError (disk full, permissions)."""
        buffer, self._buffer = self._buffer, {}
        n = 0
        items = list(buffer.items())
        for i, ((day, partition), lines) in enumerate(items):
            path = archive_path(self.archive_dir, day, partition)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                with open(path, "ab") as fh:
                    fh.write(b"\n".join(lines) + b"\n")
            except OSError:
                for k, v in items[i:]:  # keep what was not written; the caller's commit fails
                    self._buffer.setdefault(k, [])[:0] = v
                raise
            n += len(lines)
        self.lines_written += n
        return n
