"""`ActionProducer` (kafka-python) and the `actionstream produce [FILE|-]` command.

The producer publishes Event v1 JSON to ``topic_actions`` with key = ``user_id`` (UTF-8), ``acks=all``,
idempotence on, batching (``linger_ms``/``batch_size``) and compression from
:class:`~streams.settings.ProducerSettings`, and SASL/TLS from ``settings.kafka_python_security()``.
kafka-python's default partitioner is murmur2 like the Java client and aiokafka, so a user's events land
on the partition Faust expects.

Delivery errors are never silent: every send's future gets an errback that counts failures and keeps the
first error, and :meth:`ActionProducer.flush` raises :class:`~streams.errors.DeliveryError` with the
count and the first error when any record since the previous flush was not acknowledged. kafka-python's
idempotent producer treats a non-retriable broker error (e.g. a record over the topic's
``max.message.bytes``) as fatal and fails every later record too: after a ``DeliveryError``, close the
producer and build a new one. Valid events (at most 16 KiB) never come near the 1 MiB default limit.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from kafka import KafkaProducer
from kafka.errors import KafkaError
from kafka.producer.future import FutureRecordMetadata
from tqdm import tqdm

from streams.errors import ConfigError, DeliveryError
from streams.events import Event, EventParser, Rejection, encode_event
from streams.settings import ProducerSettings

__all__ = ["ActionProducer", "ProduceReport", "produce_lines"]

log = logging.getLogger(__name__)

HELP = "validate JSON-lines events from a file/stdin and publish them"
EXIT_OK, EXIT_REJECTED, EXIT_DELIVERY = 0, 1, 3
PROGRESS_MIN_BYTES = 1 << 20  # show a progress bar for files of 1 MiB or more


class ActionProducer:
    """A kafka-python producer for user actions with delivery errors surfaced.

    Args:
        settings: bootstrap, security, topic names and producer tuning.
        **overrides: extra :class:`kafka.KafkaProducer` keyword arguments (e.g. short timeouts in tests).
    Raises:
        DeliveryError: the cluster cannot be reached at construction time.
        ConfigError: the configured compression codec has no library installed.
    """

    def __init__(self, settings: ProducerSettings, **overrides: Any) -> None:
        self.settings = settings
        self.topic = settings.topic_actions
        compression = None if settings.producer_compression == "none" else settings.producer_compression
        config: dict[str, Any] = dict(
            bootstrap_servers=settings.kafka_bootstrap_servers.split(","),
            client_id="actionstream-producer", acks="all", enable_idempotence=True,
            linger_ms=settings.producer_linger_ms, batch_size=settings.producer_batch_bytes,
            compression_type=compression, **settings.kafka_python_security())
        config.update(overrides)
        try:
            self._producer = KafkaProducer(**config)
        except KafkaError as exc:
            raise DeliveryError(f"cannot reach Kafka at {settings.kafka_bootstrap_servers}: {exc} "
                                "(is the broker up? check ACTIONSTREAM_KAFKA_BOOTSTRAP_SERVERS)") from exc
        except RuntimeError as exc:  # kafka-python: "Libraries for lz4 compression codec not found"
            raise ConfigError(f"ACTIONSTREAM_PRODUCER_COMPRESSION={settings.producer_compression}: {exc}; "
                              "install the codec package or choose gzip/none") from exc
        self.sent = 0
        self.acked = 0
        self.failed = 0
        self.first_error: BaseException | None = None
        self._pending_failed = 0

    def _ok(self, _meta: Any) -> None:
        self.acked += 1

    def _error(self, exc: BaseException) -> None:
        self.failed += 1
        self._pending_failed += 1
        if self.first_error is None:
            self.first_error = exc
            log.error("Kafka did not acknowledge a record: %r", exc)

    def send_raw(self, value: bytes | None, key: bytes | None = None, partition: int | None = None,
                 topic: str | None = None) -> FutureRecordMetadata:
        """Send arbitrary bytes (tests that need garbage or a chosen partition). Errors counted as for :meth:`send`."""
        try:
            future = self._producer.send(topic or self.topic, value=value, key=key, partition=partition)
        except KafkaError as exc:  # metadata timeout, record too large for max_request_size, ...
            self._error(exc)
            raise DeliveryError(f"could not enqueue a record for {topic or self.topic}: {exc}") from exc
        self.sent += 1
        future.add_callback(self._ok)
        future.add_errback(self._error)
        return future

    def send(self, event: Event, value: bytes | None = None) -> FutureRecordMetadata:
        """Publish one event keyed by its user. ``value`` (already-validated raw bytes) defaults to the
        canonical encoding."""
        return self.send_raw(encode_event(event) if value is None else value, key=event.user_id.encode("utf-8"))

    def send_many(self, events: Iterable[Event]) -> int:
        n = 0
        for e in events:
            self.send(e)
            n += 1
        return n

    def flush(self, timeout: float | None = 60.0) -> int:
        """Wait until every record sent so far is acknowledged or failed.

        Returns:
            the total number of acknowledged records.
        Raises:
            DeliveryError: some records since the previous flush failed (count + first error), or the
                flush timed out.
        """
        try:
            self._producer.flush(timeout=timeout)
        except KafkaError as exc:
            raise DeliveryError(f"flush did not complete in {timeout}s: {self.sent - self.acked - self.failed} "
                                f"records still unacknowledged ({exc})") from exc
        if self._pending_failed:
            n, self._pending_failed = self._pending_failed, 0
            raise DeliveryError(f"{n} record(s) were not acknowledged by Kafka ({self.acked} acknowledged); "
                                f"first error: {self.first_error!r}")
        return self.acked

    def close(self, timeout: float = 30.0) -> None:
        self._producer.close(timeout=timeout)

    def __enter__(self) -> ActionProducer:
        return self

    def __exit__(self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


class ProduceReport:
    """What `produce` did with each line: counts, rejection reasons, and the first rejected line numbers."""

    def __init__(self, max_listed: int = 50) -> None:
        self.lines = 0
        self.blank = 0
        self.valid = 0
        self.reasons: Counter[str] = Counter()
        self.listed: list[tuple[int, Rejection]] = []
        self.max_listed = max_listed

    @property
    def rejected(self) -> int:
        return sum(self.reasons.values())

    def reject(self, line_no: int, r: Rejection) -> None:
        self.reasons[r.reason] += 1
        if len(self.listed) < self.max_listed:
            self.listed.append((line_no, r))

    def format(self, topic: str, acked: int | None) -> str:
        out = [f"read {self.lines} lines: {self.valid} valid, {self.rejected} rejected, {self.blank} blank (skipped)"]
        if acked is None:
            out.append(f"dry run: nothing sent (would send {self.valid} events to {topic})")
        else:
            out.append(f"sent {acked} events to {topic} (acknowledged by Kafka, key = user_id)")
        if self.rejected:
            out.append("rejected by reason: " + ", ".join(f"{k}={v}" for k, v in self.reasons.most_common()))
            for line_no, r in self.listed:
                out.append(f"  line {line_no}: {r.reason}: {r.error}")
            if self.rejected > len(self.listed):
                out.append(f"  ... and {self.rejected - len(self.listed)} more rejected lines")
        return "\n".join(out)


def _lines(fh: IO[bytes], total_bytes: int | None) -> Iterator[bytes]:
    show = total_bytes is not None and total_bytes >= PROGRESS_MIN_BYTES
    with tqdm(total=total_bytes, unit="B", unit_scale=True, desc="produce", disable=not show,
              file=sys.stderr) as bar:
        for line in fh:
            bar.update(len(line))
            yield line


def produce_lines(lines: Iterable[bytes], parser: EventParser, producer: ActionProducer | None,
                  report: ProduceReport) -> ProduceReport:
    """Validate each JSON line and send the valid ones (the original bytes, keyed by user)."""
    for raw in lines:
        report.lines += 1
        value = raw.rstrip(b"\r\n")
        if not value.strip():
            report.blank += 1
            continue
        result = parser.parse(value)
        if isinstance(result, Rejection):
            report.reject(report.lines, result)
            continue
        report.valid += 1
        if producer is not None:
            producer.send(result, value)
    return report


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Read Event v1 JSON lines from FILE (or stdin with '-'), validate each exactly as the worker "
        "does, publish the valid ones (unchanged bytes, key = user_id, acks=all) and print a summary: "
        "sent, rejected by reason, and each rejected line number with its reason. Exit codes: 0 = every "
        "line valid and acknowledged; 1 = some lines rejected (the valid ones were still sent and "
        "acknowledged); 2 = bad settings; 3 = Kafka unreachable or did not acknowledge some records.")
    p.add_argument("file", nargs="?", default="-", help="JSON-lines file, or '-' for stdin")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers host:port (env ACTIONSTREAM_KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--topic", help="target topic (env ACTIONSTREAM_TOPIC_ACTIONS; default user-actions)")
    p.add_argument("--max-listed", type=int, default=50, help="rejected lines listed one by one; the rest are counted")
    p.add_argument("--dry-run", action="store_true", help="validate and report only; send nothing")


def run(args: argparse.Namespace) -> int:
    settings = ProducerSettings.load(kafka_bootstrap_servers=args.bootstrap, topic_actions=args.topic)
    parser = EventParser.from_settings(settings)
    report = ProduceReport(max_listed=args.max_listed)
    try:
        producer = None if args.dry_run else ActionProducer(settings)
    except DeliveryError as exc:
        print(f"actionstream produce: {exc}", file=sys.stderr)  # noqa: T201 - command output
        return EXIT_DELIVERY
    acked: int | None = None
    try:
        if args.file == "-":
            produce_lines(_lines(sys.stdin.buffer, None), parser, producer, report)
        else:
            path = Path(args.file)
            if not path.is_file():
                print(f"actionstream produce: no such file: {path}", file=sys.stderr)  # noqa: T201 - command output
                return 2
            with open(path, "rb") as fh:
                produce_lines(_lines(fh, os.path.getsize(path)), parser, producer, report)
        if producer is not None:
            try:
                acked = producer.flush()
            except DeliveryError as exc:
                print(report.format(settings.topic_actions, producer.acked))  # noqa: T201 - command output
                print(f"actionstream produce: delivery failed: {exc}", file=sys.stderr)  # noqa: T201 - command output
                return EXIT_DELIVERY
    finally:
        if producer is not None:
            producer.close()
    print(report.format(settings.topic_actions, acked))  # noqa: T201 - command output
    return EXIT_REJECTED if report.rejected else EXIT_OK
