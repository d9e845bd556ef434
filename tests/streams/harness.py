"""Reusable helpers for integration and fault tests of the stream worker (real Kafka, real subprocesses).

    topics(bootstrap, [actions, dlq], partitions=4)
    w = WorkerProc(bootstrap, tmp_path / "w1", topic=actions, dlq=dlq, worker_id=group).start()
    w.wait_ready()
    produce(bootstrap, actions, [encode_event(e) for e in events], partitioner="random")
    state = wait_for_state(bootstrap, w.changelog_topic, expected)     # user -> [Act] from the changelog
    assert diff_states(state.sequences, expected) == {"lost": 0, "extra": 0, "wrong": 0}
    w.stop()

The full-state comparison reads the ``sequences`` changelog topic (what a worker recovers from) and,
where the API is up, each user's ``GET /v1/users/{id}/sequence`` from the worker that owns it.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from streams.broker import free_port
from streams.events import Event, now_ms
from streams.metrics import parse_exposition
from streams.sequence import KEY, Act, SequenceCodec, decode, rebuild

REPO = Path(__file__).resolve().parents[2]
ACTIONS = ("impression", "click", "save", "closeup", "hide", "share", "comment")


# ---------------------------------------------------------------------------------------------- topics

def create_topics(bootstrap: str, names: Iterable[str], partitions: int) -> None:
    """Create topics (ignore ones that exist) with ``partitions`` partitions, replication 1."""
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="harness-admin")
    try:
        for name in names:
            try:
                admin.create_topics([NewTopic(name, partitions, 1)])
            except TopicAlreadyExistsError:
                pass
    finally:
        admin.close()


# ---------------------------------------------------------------------------------------------- events

def make_events(n_events: int, n_users: int, *, seed: int = 0, now: int | None = None,
                span_ms: int = 3_600_000, prefix: str = "") -> list[Event]:
    """Deterministic valid events: skewed users, out-of-order timestamps within ``span_ms`` before now."""
    rng = random.Random(seed)
    now = now_ms() if now is None else now
    out = []
    for i in range(n_events):
        u = int(n_users * rng.random() ** 2)  # skewed: low ids are heavy users
        out.append(Event(f"{prefix}e{seed}-{i}", f"{prefix}u{u}", f"i{rng.randrange(5000)}", rng.choice(ACTIONS),
                         now - rng.randrange(span_ms), rng.choice(("homefeed", "search", None)),
                         rng.choice((None, rng.randrange(60_000)))))
    return out


# ---------------------------------------------------------------------------------------------- produce

def produce(bootstrap: str, topic: str, values: Sequence[bytes | None], *,
            keys: Sequence[bytes | None] | None = None, partitioner: str = "key", partitions: int | None = None,
            seed: int = 0) -> None:
    """Publish ``values`` and wait for every ack.

    partitioner: ``"key"`` (the client's murmur2 on the key), ``"random"`` (every message on a random
    partition, like a producer that ignores keys), or ``"crc32"`` (librdkafka's default for keyed messages).
    """
    import zlib

    from kafka import KafkaProducer

    rng = random.Random(seed)
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=5, batch_size=262_144,
                             max_request_size=2_000_000, acks="all")
    try:
        if partitioner != "key" and partitions is None:
            partitions = len(producer.partitions_for(topic))
        futures = []
        for i, v in enumerate(values):
            k = keys[i] if keys is not None else None
            p: int | None = None
            if partitioner == "random":
                p = rng.randrange(partitions or 1)
            elif partitioner == "crc32" and k is not None:
                p = (zlib.crc32(k) & 0xFFFFFFFF) % (partitions or 1)
            futures.append(producer.send(topic, value=v, key=k, partition=p))
        producer.flush(60)
        for f in futures:
            f.get(30)
    finally:
        producer.close(10)


def event_keys(events: Sequence[Event]) -> list[bytes]:
    return [e.user_id.encode() for e in events]


# ---------------------------------------------------------------------------------------------- read topics

def read_topic(bootstrap: str, topic: str, timeout_s: float = 30.0) -> list[Any]:
    """All records of ``topic`` (kafka-python ConsumerRecords), read from the beginning to the end offsets."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False, group_id=None,
                             consumer_timeout_ms=1000, max_partition_fetch_bytes=4_000_000)
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        if not tps:
            return []
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout_s
        while any(consumer.position(tp) < end[tp] for tp in tps):
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} did not reach the end offsets in {timeout_s}s")
            for records in consumer.poll(timeout_ms=500, max_records=100_000).values():
                out.extend(records)
        return out
    finally:
        consumer.close()


@dataclass
class ChangelogState:
    """The latest value per user in the changelog, and users found in more than one partition."""

    sequences: dict[str, list[Act]] = field(default_factory=dict)
    partitions: dict[str, set[int]] = field(default_factory=dict)

    @property
    def split_users(self) -> list[str]:
        return sorted(u for u, ps in self.partitions.items() if len(ps) > 1)


def read_changelog(bootstrap: str, topic: str) -> ChangelogState:
    state = ChangelogState()
    for r in read_topic(bootstrap, topic):
        if r.key is None or r.key.startswith(b"__faust"):
            continue
        user = r.key.decode()
        state.partitions.setdefault(user, set()).add(r.partition)
        if r.value is None:
            state.sequences.pop(user, None)
        else:
            state.sequences[user] = decode(r.value)
    return state


def read_dlq(bootstrap: str, topic: str) -> list[dict[str, Any]]:
    return [orjson.loads(r.value) for r in read_topic(bootstrap, topic)]


# ---------------------------------------------------------------------------------------------- compare

def expected_state(events: Iterable[Event], codec: SequenceCodec | None = None) -> dict[str, list[Act]]:
    """The offline rebuild (``streams.sequence.rebuild``) every worker state must equal."""
    return rebuild(events, codec or SequenceCodec())


def diff_states(actual: dict[str, list[Act]], expected: dict[str, list[Act]]) -> dict[str, int]:
    """Counts of users missing (lost), unexpected (extra) and with a different sequence (wrong)."""
    lost = sum(1 for u in expected if u not in actual)
    extra = sum(1 for u in actual if u not in expected)
    wrong = sum(1 for u, s in expected.items() if u in actual and actual[u] != s)
    return {"lost": lost, "extra": extra, "wrong": wrong}


def explain_diff(actual: dict[str, list[Act]], expected: dict[str, list[Act]], partitions: int, n: int = 8) -> str:
    """For a failed :func:`diff_states`: the wrong users per owner partition, and for the first ``n`` of them
    how many expected actions the stored sequence lacks and how many it has that were not expected."""
    from streams.tables import owner_partition

    wrong = [u for u, s in expected.items() if u in actual and actual[u] != s]
    per: dict[int, int] = {}
    for u in wrong:
        p = owner_partition(u.encode(), partitions)
        per[p] = per.get(p, 0) + 1
    lines = [f"wrong users per owner partition: {dict(sorted(per.items()))}"]
    for u in wrong[:n]:
        got, want = {a[KEY] for a in actual[u]}, {a[KEY] for a in expected[u]}
        lines.append(f"  {u}: stored {len(actual[u])} actions, expected {len(expected[u])}; "
                     f"{len(want - got)} expected actions missing, {len(got - want)} unexpected")
    return "\n".join(lines)


def group_offsets(bootstrap: str, group: str, topic: str) -> str:
    """The group's committed offsets and the end offsets of ``topic``, per partition (a stalled commit below
    the end offset, long after processing, means events were skipped rather than applied)."""
    from kafka import KafkaConsumer, TopicPartition

    try:
        c = KafkaConsumer(bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False)  # never joins
        try:
            tps = [TopicPartition(topic, p) for p in sorted(c.partitions_for_topic(topic) or ())]
            committed = {tp.partition: c.committed(tp) for tp in tps}
            end = {tp.partition: off for tp, off in c.end_offsets(tps).items()}
        finally:
            c.close()
    except Exception as exc:  # noqa: BLE001 - a diagnostic must not hide the assertion it explains
        return f"(offsets unavailable: {exc!r})"
    return f"committed {dict(sorted(committed.items()))}, end {dict(sorted(end.items()))}"


def log_lines(worker: WorkerProc, n: int = 40, also: tuple[str, ...] = ()) -> list[str]:
    """The last ``n`` ERROR / WARNING / Traceback lines of a worker's log (all its runs), plus those holding
    any of ``also`` (each cut at 400 characters)."""
    try:
        text = worker.log_path.read_text(errors="replace")
    except OSError:
        return ["(no log)"]
    keys = (" ERROR ", " WARNING ", "Traceback", *also)
    return [line[:400] for line in text.splitlines() if any(k in line for k in keys)][-n:]


def log_problems(worker: WorkerProc, n: int = 40) -> str:
    """The ERROR / WARNING / Traceback lines of a worker's log (the last ``n``), one string."""
    return "\n".join(log_lines(worker, n)) or "(no ERROR or WARNING lines)"


def wait_for_state(bootstrap: str, changelog: str, expected: dict[str, list[Act]],
                   timeout_s: float = 60.0, users: set[str] | None = None) -> ChangelogState:
    """Poll the changelog until it equals ``expected`` (or the timeout: returns the last state read).

    ``users``: compare only these users (tests sharing one worker use disjoint users).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        state = read_changelog(bootstrap, changelog)
        got = state.sequences if users is None else {u: s for u, s in state.sequences.items() if u in users}
        if diff_states(got, expected) == {"lost": 0, "extra": 0, "wrong": 0} or time.monotonic() > deadline:
            return state
        time.sleep(1.0)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.2) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(interval_s)


# ---------------------------------------------------------------------------------------------- workers

def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback test URL
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text -> {'name{labels}': value} (comments skipped)."""
    return parse_exposition(text)


class WorkerProc:
    """One ``python -m streams.cli worker`` subprocess with its own port, data dir and log file."""

    def __init__(self, bootstrap: str, data_dir: Path, *, topic: str, dlq: str, worker_id: str,
                 partitions: int = 4, port: int | None = None, archive_dir: Path | None = None,
                 env: dict[str, str] | None = None) -> None:
        self.bootstrap = bootstrap
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.topic, self.dlq, self.worker_id, self.partitions = topic, dlq, worker_id, partitions
        self.archive_dir = archive_dir
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = self.data_dir.parent / f"{self.data_dir.name}-{self.port}.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def changelog_topic(self) -> str:
        return f"{self.worker_id}-sequences-changelog"

    def start(self) -> WorkerProc:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Each worker gets its own embeddings topic: tests share one broker, and a topic created by
        # another test with another partition count would (rightly) stop this worker at start-up.
        env = {**os.environ, "ACTIONSTREAM_SESSION_TIMEOUT_S": "6", "PYTHONUNBUFFERED": "1",
               "ACTIONSTREAM_TOPIC_EMBEDDINGS": f"{self.topic}-embeddings", **self.extra_env}
        cmd = [sys.executable, "-m", "streams.cli", "worker", "--log-level", "INFO",
               "--bootstrap", self.bootstrap, "--port", str(self.port), "--data-dir", str(self.data_dir),
               "--worker-id", self.worker_id, "--partitions", str(self.partitions),
               "--topic-actions", self.topic, "--topic-dlq", self.dlq,
               "--archive-dir", str(self.archive_dir) if self.archive_dir else ""]
        log = open(self.log_path, "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def ready(self) -> bool:
        try:
            return http_get(self.url + "/readyz", timeout=1.0)[0] == 200
        except OSError:
            return False

    def wait_ready(self, timeout_s: float = 60.0) -> float:
        """Block until /readyz is 200; return the seconds it took. Raises with the log tail on failure."""
        t0 = time.monotonic()
        while not self.ready():
            if not self.alive():
                raise RuntimeError(f"worker exited ({self.proc and self.proc.returncode}):\n{self.log_tail()}")
            if time.monotonic() - t0 > timeout_s:
                raise TimeoutError(f"worker not ready after {timeout_s}s:\n{self.log_tail()}")
            time.sleep(0.2)
        return time.monotonic() - t0

    def metrics(self) -> dict[str, float]:
        status, body = http_get(self.url + "/metrics")
        if status != 200:
            raise RuntimeError(f"/metrics answered {status}")
        return parse_metrics(body.decode())

    def sequence(self, user_id: str) -> tuple[int, Any]:
        status, body = http_get(f"{self.url}/v1/users/{user_id}/sequence")
        return status, (orjson.loads(body) if body else None)

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGTERM (clean stop: commit, flush), SIGKILL after ``timeout_s``."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return proc.returncode if proc else None
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return proc.wait(10)

    def kill(self) -> None:
        """SIGKILL (crash) the worker."""
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


# ---------------------------------------------------------------------------------------------- HTTP state

def http_state(worker: WorkerProc, users: Iterable[str]) -> dict[str, list[dict[str, Any]]]:
    """Every user's ``GET /v1/users/{id}/sequence`` through ``worker`` (the API routes to the owner).

    Users with an empty sequence are left out, like users absent from a rebuild.
    """
    out: dict[str, list[dict[str, Any]]] = {}
    for u in users:
        for _attempt in range(50):
            status, body = worker.sequence(u)
            if status == 200:
                break
            time.sleep(0.2)  # 503 during a rebalance: retry
        else:
            raise RuntimeError(f"GET sequence of {u} kept answering {status}: {body}")
        if body["sequence"]:
            out[u] = body["sequence"]
    return out


def expected_json(expected: dict[str, list[Act]], codec: SequenceCodec | None = None) -> dict[str, list[dict[str, Any]]]:
    """The API view (``codec.to_json``) of an expected state, for comparison with :func:`http_state`."""
    codec = codec or SequenceCodec()
    return {u: [codec.to_json(a) for a in seq] for u, seq in expected.items()}


def diff_json(actual: dict[str, list[dict[str, Any]]], expected: dict[str, list[dict[str, Any]]]) -> dict[str, int]:
    return diff_states(actual, expected)  # type: ignore[arg-type]
