"""The event archive: accepted events as day-partitioned JSON lines, the single source of training data.

Layout (written by the worker's archive agent, read by training and the daily job)::

    <archive_dir>/date=YYYY-MM-DD/part-<kafka partition, 3 digits>.jsonl

``date`` is the UTC day of the event time (``ts``); every line is the canonical Event v1 JSON
(:func:`streams.events.encode_event`). Delivery is at-least-once, so a line may repeat after a worker
restart: readers deduplicate by ``event_id`` (``dedup=True``, the default). A plain ``.jsonl`` file (the
simulator's ``--out``) is read the same way, so every consumer accepts either.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator
from pathlib import Path

import orjson

from streams.events import Event

__all__ = ["archive_path", "day_of", "iter_files", "read_events"]


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
