"""Event v1: parse, validate and encode user actions (DESIGN.md contract).

An event is a UTF-8 JSON object of at most ``max_event_bytes`` (16 KiB)::

    {"event_id": "e1", "user_id": "u1", "item_id": "i9", "action": "click", "ts": 1700000000000,
     "surface": "homefeed", "duration_ms": 1200}

:meth:`EventParser.parse` never raises on input: it returns either an :class:`Event` or a
:class:`Rejection` whose ``reason`` is a short machine-readable code:

==========================  ==========================================================
reason                      when
==========================  ==========================================================
``too_large``               more than ``max_event_bytes`` bytes
``invalid_json``            not UTF-8 JSON
``not_an_object``           JSON, but not an object
``missing_field:<f>``       a required field is absent (or null)
``invalid_type:<f>``        a field has the wrong JSON type
``invalid_value:<f>``       right type, wrong value (empty/over-long string, NUL in item_id,
                            negative duration)
``unknown_action``          ``action`` is not in the configured vocabulary
``ts_in_future``            ``ts`` more than ``future_tolerance_ms`` (5 min) ahead of now
``ts_too_old``              ``ts`` older than the sequence window (default 30 days)
==========================  ==========================================================

Unknown extra fields are allowed and dropped. ``surface`` is kept as given; the sequence store codes
it against the surface vocabulary (unknown surfaces become "other"/code 0 there).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from streams.settings import DEFAULT_ACTIONS, MAX_ID_CHARS, EventSettings

__all__ = ["Event", "EventParser", "Rejection", "encode_event", "now_ms"]

REQUIRED_STR = ("event_id", "user_id", "item_id", "action")


@dataclass(frozen=True, slots=True)
class Event:
    """A valid action. ``ts`` is event time in ms since the epoch."""

    event_id: str
    user_id: str
    item_id: str
    action: str
    ts: int
    surface: str | None = None
    duration_ms: int | None = None

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"event_id": self.event_id, "user_id": self.user_id, "item_id": self.item_id,
                             "action": self.action, "ts": self.ts}
        if self.surface is not None:
            d["surface"] = self.surface
        if self.duration_ms is not None:
            d["duration_ms"] = self.duration_ms
        return d


@dataclass(frozen=True, slots=True)
class Rejection:
    """Why an input is not an event. ``reason`` is machine-readable, ``error`` is for humans."""

    reason: str
    error: str


def encode_event(event: Event) -> bytes:
    """The canonical JSON bytes of an event (optional fields omitted when None)."""
    return orjson.dumps(event.to_dict())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class EventParser:
    """Validates raw bytes against Event v1 with one orjson decode and no exceptions escaping."""

    __slots__ = ("_actions", "max_bytes", "future_tolerance_ms", "max_age_ms")

    def __init__(self, actions: Sequence[str] = DEFAULT_ACTIONS, *, max_bytes: int = 16_384,
                 future_tolerance_ms: int = 300_000, max_age_ms: int = 30 * 86_400_000) -> None:
        self._actions = frozenset(actions)
        self.max_bytes = max_bytes
        self.future_tolerance_ms = future_tolerance_ms
        self.max_age_ms = max_age_ms

    @classmethod
    def from_settings(cls, s: EventSettings) -> EventParser:
        return cls(s.actions, max_bytes=s.max_event_bytes, future_tolerance_ms=s.future_tolerance_ms,
                   max_age_ms=s.window_ms)

    def parse(self, raw: bytes | bytearray | memoryview | str | None, now: int | None = None) -> Event | Rejection:
        """Parse and validate one message value. ``now`` (ms) defaults to the wall clock."""
        if raw is None:
            return Rejection("invalid_json", "empty message (null value)")
        if isinstance(raw, str):
            raw = raw.encode("utf-8", "surrogatepass")
        size = len(raw)
        if size > self.max_bytes:
            return Rejection("too_large", f"event is {size} bytes, limit is {self.max_bytes}")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            return Rejection("invalid_json", f"not valid UTF-8 JSON: {exc}")
        if type(obj) is not dict:
            return Rejection("not_an_object", f"expected a JSON object, got {type(obj).__name__}")
        return self.validate(obj, now)

    def validate(self, obj: dict[str, Any], now: int | None = None) -> Event | Rejection:
        """Validate an already-decoded JSON object."""
        for name in REQUIRED_STR:
            value = obj.get(name)
            if value is None:
                return Rejection(f"missing_field:{name}", f"required field {name!r} is missing")
            if type(value) is not str:
                return Rejection(f"invalid_type:{name}", f"{name!r} must be a string, got {type(value).__name__}")
            if not value or len(value) > MAX_ID_CHARS:
                return Rejection(f"invalid_value:{name}",
                                 f"{name!r} must be 1-{MAX_ID_CHARS} characters, got {len(value)}")
        if "\x00" in obj["item_id"]:
            return Rejection("invalid_value:item_id", "'item_id' must not contain NUL characters")
        ts = obj.get("ts")
        if ts is None:
            return Rejection("missing_field:ts", "required field 'ts' is missing")
        if type(ts) is not int:
            return Rejection("invalid_type:ts", f"'ts' must be an integer (ms since epoch), got {type(ts).__name__}")
        action = obj["action"]
        if action not in self._actions:
            return Rejection("unknown_action", f"action {action!r} is not in the vocabulary {sorted(self._actions)}")
        surface = obj.get("surface")
        if surface is not None:
            if type(surface) is not str:
                return Rejection("invalid_type:surface", f"'surface' must be a string, got {type(surface).__name__}")
            if len(surface) > MAX_ID_CHARS:
                return Rejection("invalid_value:surface", f"'surface' is longer than {MAX_ID_CHARS} characters")
        duration = obj.get("duration_ms")
        if duration is not None:
            if type(duration) is not int:
                return Rejection("invalid_type:duration_ms",
                                 f"'duration_ms' must be an integer, got {type(duration).__name__}")
            if duration < 0:
                return Rejection("invalid_value:duration_ms", f"'duration_ms' must be >= 0, got {duration}")
        if now is None:
            now = time.time_ns() // 1_000_000
        if ts > now + self.future_tolerance_ms:
            return Rejection("ts_in_future", f"ts {ts} is {ts - now} ms ahead of now (limit {self.future_tolerance_ms})")
        if ts < now - self.max_age_ms:
            return Rejection("ts_too_old", f"ts {ts} is older than the {self.max_age_ms} ms sequence window")
        return Event(obj["event_id"], obj["user_id"], obj["item_id"], action, ts, surface, duration)
