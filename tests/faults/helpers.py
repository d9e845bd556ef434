"""Fault-suite helpers on top of ``tests/streams/harness.py``: full-state comparison with counts.

Every scenario ends with :func:`check_state`: it reads the state two ways, and compares EVERY user's
sequence with the offline rebuild (:func:`streams.sequence.rebuild` of all accepted events):

* the ``sequences`` changelog topic (what any worker recovers from), latest record per user;
* the live API, ``GET /v1/users/{id}/sequence`` for every expected user, asked of one worker (requests for
  users owned by another worker are routed there).

Counts, all of which must be 0:

* ``lost``: expected actions missing from the user's stored sequence (a missing user counts all of its);
* ``duplicated``: actions stored more than once in one sequence, plus users whose records appear in more
  than one changelog partition (two owners = two sequences for one user);
* ``wrong``: users whose stored sequence differs from the rebuild in any way (order, contents, extra
  actions), plus users stored that should not exist.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import orjson

from streams.events import Event
from streams.sequence import KEY, Act, SequenceCodec
from tests.streams.harness import WorkerProc, http_get, log_lines, wait_for_state

__all__ = ["Counts", "api_state", "check_state", "compare", "uid", "wait_handled"]

RESULTS: list[dict[str, object]] = []  # collected by tests/faults/conftest.py for the end-of-run table


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


@dataclass
class Counts:
    lost: int = 0
    duplicated: int = 0
    wrong: int = 0
    users: int = 0
    actions: int = 0
    details: list[str] = field(default_factory=list)

    @property
    def zero(self) -> bool:
        return self.lost == 0 and self.duplicated == 0 and self.wrong == 0

    def __str__(self) -> str:
        return (f"lost={self.lost} duplicated={self.duplicated} wrong={self.wrong} "
                f"(users={self.users}, actions={self.actions})")


def compare(actual: dict[str, list[Act]], expected: dict[str, list[Act]],
            split_users: Iterable[str] = ()) -> Counts:
    c = Counts(users=len(expected), actions=sum(map(len, expected.values())))
    for user, exp in expected.items():
        got = actual.get(user, [])
        got_keys = [a[KEY] for a in got]
        got_set = set(got_keys)
        c.lost += sum(1 for a in exp if a[KEY] not in got_set)
        c.duplicated += len(got_keys) - len(got_set)
        if got != exp:
            c.wrong += 1
            if len(c.details) < 5:
                c.details.append(f"{user}: stored {len(got)} actions, expected {len(exp)}")
    for user in actual:
        if user not in expected:
            c.wrong += 1
            if len(c.details) < 5:
                c.details.append(f"{user}: stored but has no accepted event")
    split = list(split_users)
    c.duplicated += len(split)
    if split:
        c.details.append(f"users in more than one changelog partition: {split[:5]}")
    return c


def _act_from_json(d: dict[str, object], codec: SequenceCodec) -> Act:
    action = codec.action_code(str(d["action"]))
    surface = d.get("surface")
    sc = codec.surfaces.index(surface) + 1 if isinstance(surface, str) and surface in codec.surfaces else 0
    return (int(d["ts"]), int(str(d["event_key"]), 16), action, sc, int(d.get("duration_ms") or 0),  # type: ignore[arg-type]
            str(d["item_id"]))


def api_state(worker: WorkerProc, users: Iterable[str], codec: SequenceCodec,
              retries: int = 20) -> dict[str, list[Act]]:
    """Every user's sequence as served by the API (routed to the owner), retrying 503s during rebalances."""
    out: dict[str, list[Act]] = {}
    for user in users:
        for attempt in range(retries):
            status, body = http_get(f"{worker.url}/v1/users/{user}/sequence")
            if status == 200:
                seq = orjson.loads(body)["sequence"]
                if seq:
                    out[user] = [_act_from_json(d, codec) for d in seq]
                break
            if status != 503 or attempt == retries - 1:
                raise AssertionError(f"GET sequence of {user}: HTTP {status} {body[:200]!r}")
            time.sleep(0.5)
    return out


def group_lag(bootstrap: str, group: str, topics: Sequence[str]) -> int:
    """Messages of ``topics`` not yet committed by consumer ``group`` (end offset − committed offset)."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    from streams.topics import uncommitted

    admin = KafkaAdminClient(bootstrap_servers=bootstrap, client_id="faults-lag")
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(t, p) for t in topics for p in consumer.partitions_for_topic(t) or set()]
        return uncommitted(admin, group, consumer.end_offsets(tps))
    finally:
        consumer.close()
        admin.close()


def wait_caught_up(bootstrap: str, group: str, topics: Sequence[str], timeout_s: float) -> int:
    """Wait until ``group`` committed everything in ``topics``; returns the lag left (0 unless timed out)."""
    deadline = time.monotonic() + timeout_s
    while True:
        lag = group_lag(bootstrap, group, topics)
        if lag <= 0 or time.monotonic() > deadline:
            return lag
        time.sleep(0.5)


def check_state(name: str, bootstrap: str, changelog: str, expected: dict[str, list[Act]],
                api_worker: WorkerProc | None, codec: SequenceCodec | None = None, timeout_s: float = 240.0,
                **info: object) -> tuple[Counts, Counts | None]:
    """Wait until the group has committed all input (the stream is done), let the changelog converge, then
    compare it and the API with the rebuild; print and record the counts."""
    codec = codec or SequenceCodec()
    t0 = time.monotonic()
    lag = -1
    if api_worker is not None:
        topics = [api_worker.topic, f"{api_worker.worker_id}-{api_worker.topic}-by-user"]
        lag = wait_caught_up(bootstrap, api_worker.worker_id, topics, timeout_s)
        info["lag_at_check"] = lag
    state = wait_for_state(bootstrap, changelog, expected, timeout_s=10.0 if lag == 0 else 30.0)
    converge_s = time.monotonic() - t0
    log_counts = compare(state.sequences, expected, state.split_users)
    api_counts = None
    if api_worker is not None:
        api_counts = compare(api_state(api_worker, expected.keys(), codec), expected)
    if not log_counts.zero and api_worker is not None:
        log_counts.details += diagnose(bootstrap, api_worker.topic, changelog, expected, state.sequences)
        log_counts.details += [f"worker log: {line}" for line in seek_and_gap_lines(api_worker)]
    print(f"\n[fault:{name}] changelog: {log_counts}")
    if api_counts is not None:
        print(f"[fault:{name}] API:       {api_counts}")
    for d in log_counts.details + (api_counts.details if api_counts else []):
        print(f"[fault:{name}]   {d}")
    RESULTS.append({"scenario": name, "changelog": str(log_counts),
                    "api": str(api_counts) if api_counts else "-", "converged_s": round(converge_s, 1), **info})
    return log_counts, api_counts


def seek_and_gap_lines(worker: WorkerProc, n: int = 30) -> list[str]:
    """A failed check's clues from the worker's log (all its runs): every seek with the read offsets it left,
    every input gap (offsets Faust would count as acknowledged without handing them over), WARNING / ERROR."""
    return log_lines(worker, n, also=("seeked to committed", "never handed over", "Worker ready", "Signal received"))


def assert_zero(log_counts: Counts, api_counts: Counts | None) -> None:
    assert log_counts.zero, f"changelog state differs from the offline rebuild: {log_counts} {log_counts.details}"
    if api_counts is not None:
        assert api_counts.zero, f"API state differs from the offline rebuild: {api_counts} {api_counts.details}"


def diagnose(bootstrap: str, topic: str, changelog: str, expected: dict[str, list[Act]],
             actual: dict[str, list[Act]], limit: int = 5) -> list[str]:
    """Where the lost actions came from: input partition/offset, and whether any changelog record of the
    user ever held them (tells "never processed" from "processed, then overwritten")."""
    from streams.sequence import decode, event_key
    from tests.streams.harness import read_topic

    lost: dict[int, str] = {}
    for user, exp in expected.items():
        have = {a[KEY] for a in actual.get(user, [])}
        for a in exp:
            if a[KEY] not in have and len(lost) < limit:
                lost[a[KEY]] = user
    if not lost:
        return []
    where: dict[int, str] = {}
    for r in read_topic(bootstrap, topic):
        try:
            k = event_key(orjson.loads(r.value)["event_id"])
        except Exception:  # noqa: BLE001 - malformed input is expected in some scenarios
            continue
        if k in lost and k not in where:
            where[k] = f"input p{r.partition}@{r.offset}"
    held: dict[int, list[str]] = {k: [] for k in lost}
    for r in read_topic(bootstrap, changelog):
        if r.key is None or r.value is None or r.key.startswith(b"__faust"):
            continue
        keys = {a[KEY] for a in decode(r.value)}
        for k in lost:
            if k in keys and r.key.decode() == lost[k]:
                held[k].append(f"p{r.partition}@{r.offset}")
    return [f"lost {lost[k]} action {k:016x} from {where.get(k, 'input ?')}; changelog records holding it: "
            f"{held[k][:3] or 'none'}{' ...' if len(held[k]) > 3 else ''}" for k in lost]


def accepted(worker: WorkerProc) -> float:
    try:
        return worker.metrics().get("actionstream_events_accepted_total", 0.0)
    except (OSError, RuntimeError):
        return 0.0


def handled(workers: Sequence[WorkerProc]) -> float:
    """Messages the live workers read from the input (and reroute) topics, by their counters."""
    total = 0.0
    for w in workers:
        try:
            total += w.metrics().get("actionstream_events_consumed_total", 0.0)
        except (OSError, RuntimeError):
            pass
    return total


def wait_handled(workers: Sequence[WorkerProc], n: float, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while handled(workers) < n:
        if time.monotonic() > deadline:
            raise TimeoutError(f"workers consumed {handled(workers):.0f} of {n:.0f} messages in {timeout_s}s")
        time.sleep(0.2)


def wait_accepted_at_least(worker: WorkerProc, n: float, timeout_s: float) -> float:
    """Poll until the worker accepted ``n`` events; returns the count seen (to kill it mid-stream)."""
    deadline = time.monotonic() + timeout_s
    while True:
        got = accepted(worker)
        if got >= n:
            return got
        if not worker.alive():
            raise RuntimeError(f"worker died:\n{worker.log_tail()}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"worker accepted only {got:.0f} of {n:.0f} events:\n{worker.log_tail()}")
        time.sleep(0.05)


def users_of(events: Iterable[Event]) -> set[str]:
    return {e.user_id for e in events}
