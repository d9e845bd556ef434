"""The sequence agent: validate once, route to the user's owner partition, update the sequence, archive.

Per message of ``user-actions`` (or of the internal reroute topic), :meth:`EventHandler.handle`:

1. parses the bytes ONCE with :class:`streams.events.EventParser` (never raises);
2. a rejection goes to the dead-letter topic as the DESIGN.md record ``{reason, error, topic, partition,
   offset, payload_b64}`` (key = the original key) and is counted by reason;
3. an event that arrived on the partition owning its user (``murmur2(user_id) % n``, what every Java,
   kafka-python or aiokafka producer keyed by user_id does) is applied at once: one RocksDB read, the
   :func:`streams.sequence.update_blob` fast path, one write + one changelog record of the small blob;
4. an event that arrived elsewhere (librdkafka's CRC32 partitioner, random or unkeyed producers) is
   forwarded, bytes unchanged, to the internal topic ``<worker_id>-<topic_actions>-by-user`` at its owner
   partition. That topic is co-partitioned with the input, so the worker owning the user consumes it and
   applies step 3 there.

Why not ``stream.group_by(user_id)``: Faust's repartition sends *every* event through a second topic and a
second stream pass, and Faust costs one event-loop iteration per pass (~6k/s per process here, see
``shared/reference/measurements.md``): it halves the ceiling for well-keyed traffic. Forwarding only the
misrouted events gives the same guarantee (one owner per user) with no extra pass in the common case,
and exactly the cost of ``group_by`` in the worst case (a random partitioner).

Delivery: DLQ records, forwarded events and changelog records go through the worker's
:class:`streams.outbox.Outbox`; the outbox, the archive (:class:`streams.archive.ArchiveWriter`) and the
producer are flushed before every offset commit (``streams.app._install_commit_hook``), so everything is
at-least-once. Events processed twice after a crash change nothing (the sequence update is idempotent
and order-independent).

Any exception while handling one message (not expected: the parser never raises) is logged with its
topic/partition/offset and the message goes to the DLQ with reason ``processing_error``: one poison
message never stops the stream.
"""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from typing import Any

import orjson

from streams.archive import ArchiveWriter
from streams.events import Event, EventParser, Rejection, encode_event
from streams.metrics import WorkerMetrics
from streams.sequence import SequenceCodec
from streams.tables import SequenceStore

__all__ = ["DLQ_MAX_PAYLOAD_BYTES", "EventHandler", "dead_letter"]

log = logging.getLogger(__name__)

# A DLQ record must fit Kafka's default 1 MB message limit: payloads above this are cut (and marked).
DLQ_MAX_PAYLOAD_BYTES = 600_000

# send(key, value, partition) -> None; wraps faust Topic.send_soon in the app
Send = Callable[[bytes | None, bytes, int | None], Any]


def dead_letter(reason: str, error: str, topic: str, partition: int, offset: int,
                payload: bytes | None) -> bytes:
    """The DESIGN.md dead-letter record (JSON bytes). Oversized payloads are truncated and flagged."""
    raw = payload or b""
    record: dict[str, Any] = {"reason": reason, "error": error, "topic": topic, "partition": partition,
                              "offset": offset}
    if len(raw) > DLQ_MAX_PAYLOAD_BYTES:
        record["payload_b64"] = base64.b64encode(raw[:DLQ_MAX_PAYLOAD_BYTES]).decode("ascii")
        record["payload_truncated"] = True
        record["payload_bytes"] = len(raw)
    else:
        record["payload_b64"] = base64.b64encode(raw).decode("ascii")
    if payload is None:
        record["payload_null"] = True
    return orjson.dumps(record)


class EventHandler:
    """Handles one message at a time; no Faust inside, so it is testable without a broker.

    Args:
        parser / codec / store: validation, Act conversion, the sequences table.
        metrics: the worker's metrics container.
        send_dlq / send_reroute: produce to the dead-letter / reroute topic (at-least-once, see above).
        reroute_topic: name of the reroute topic (its messages were validated once already).
        archive: the archive sink, or None when archiving is off.
    """

    def __init__(self, parser: EventParser, codec: SequenceCodec, store: SequenceStore,
                 metrics: WorkerMetrics, send_dlq: Send, send_reroute: Send, reroute_topic: str,
                 archive: ArchiveWriter | None = None) -> None:
        self.parser = parser
        self.codec = codec
        self.store = store
        self.send_dlq = send_dlq
        self.send_reroute = send_reroute
        self.reroute_topic = reroute_topic
        self.archive = archive
        m = metrics
        self._consumed = m.events_consumed_total
        self._accepted = m.events_accepted_total
        self._duplicate = m.events_duplicate_total
        self._rejected = m.events_rejected_total
        self._rejected_by_reason: dict[str, Any] = {}
        self._rerouted = m.events_rerouted_total
        self._processing = m.processing_seconds
        self._freshness = m.freshness_seconds.labels(stage="sequence")
        self._last_ts_gauge = m.last_event_timestamp_seconds
        self.last_ts = 0
        # users whose sequence changed -> event time, for the realtime encoder (streams.realtime); None = off
        self.dirty: dict[bytes, int] | None = None

    def handle(self, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int,
               timestamp_s: float | None = None) -> str:
        """Process one message; return the outcome: applied, duplicate, rerouted or rejected."""
        t0 = time.perf_counter()
        try:
            outcome = self._handle(key, value, topic, partition, offset, timestamp_s)
        except Exception as exc:  # noqa: BLE001 - a poison message must not stop the stream
            log.exception("processing error at %s[%d]@%d; sent to the DLQ", topic, partition, offset)
            self._reject("processing_error", f"{type(exc).__name__}: {exc}", key, value, topic, partition,
                         offset)
            outcome = "rejected"
        self._processing.observe(time.perf_counter() - t0)
        return outcome

    def _handle(self, key: bytes | None, value: bytes | None, topic: str, partition: int, offset: int,
                timestamp_s: float | None) -> str:
        rerouted = topic == self.reroute_topic
        if rerouted:
            # validated when it first arrived; judge its age against that moment, not a later clock
            now = int(timestamp_s * 1000) if timestamp_s else None
            result = self.parser.parse(value, now)
        else:
            self._consumed.inc()
            result = self.parser.parse(value)
        if type(result) is Rejection:
            self._reject(result.reason, result.error, key, value, topic, partition, offset)
            return "rejected"
        event: Event = result  # type: ignore[assignment]
        user_key = event.user_id.encode("utf-8", "surrogatepass")
        owner = self.store.owner(user_key)
        if owner != partition:
            self.send_reroute(user_key, value if isinstance(value, bytes) else bytes(value or b""), owner)
            self._rerouted.inc()
            return "rerouted"
        act = self.codec.to_act(event)
        new = self.store.apply(partition, user_key, act)
        stored_at = time.time()
        if self.archive is not None:
            self.archive.append(encode_event(event), event.ts, partition)
        if new is None:  # counted once, as duplicate: accepted + duplicate + rejected = events handled
            self._duplicate.inc()
            return "duplicate"
        self._accepted.inc()
        self._freshness.observe(max(0.0, stored_at - event.ts / 1000))
        if self.dirty is not None:
            self.dirty.setdefault(user_key, event.ts)
        if event.ts > self.last_ts:
            self.last_ts = event.ts
            self._last_ts_gauge.set(event.ts / 1000)
        return "applied"

    def _reject(self, reason: str, error: str, key: bytes | None, value: bytes | None, topic: str,
                partition: int, offset: int) -> None:
        counter = self._rejected_by_reason.get(reason)
        if counter is None:
            counter = self._rejected_by_reason[reason] = self._rejected.labels(reason=reason)
        counter.inc()
        self.send_dlq(key, dead_letter(reason, error, topic, partition, offset, value), None)
