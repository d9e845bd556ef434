"""The feature API against REAL workers (``actionstream worker`` subprocesses) on the real Kafka broker.

Two module-scoped set-ups keep the cost at three worker start-ups:

* ``solo``: one worker, no auth, ``max_body_bytes=4096``, ``max_candidates=10``; events produced with a random partitioner;
  its start-up is watched to see ``/readyz`` (and the user routes) answer 503 before recovery ends.
* ``pair``: two workers in one consumer group with ``api_token`` set: auth, and routing of a request
  to the worker that owns the user (with the token and the POST body carried along).

Expected state is always the offline rebuild (``streams.sequence.rebuild``) of the produced events.
"""

from __future__ import annotations

import http.client
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest

from streams.api import WORKER_HEADER
from streams.events import Event, encode_event, now_ms
from streams.features import sequence_stats
from streams.sequence import Act, SequenceCodec
from tests.streams.harness import (
    WorkerProc,
    create_topics,
    event_keys,
    expected_state,
    make_events,
    parse_metrics,
    produce,
    wait_until,
)

pytestmark = pytest.mark.kafka

CODEC = SequenceCodec()
TOKEN = "test-token-" + uuid.uuid4().hex[:8]
FEATURES_ROUTE = "/v1/users/{user_id}/features"
ODD_USER_IDS = ("a b", "ü-user", "x/y", "q?z&r", "pct%41")  # must survive quoting and forwarding


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


def call(url: str, method: str = "GET", body: bytes | None = None, token: str | None = None,
         headers: dict[str, str] | None = None) -> Reply:
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:  # noqa: S310 - loopback test URL
            return Reply(resp.status, dict(resp.headers), resp.read())
    except urllib.error.HTTPError as exc:
        return Reply(exc.code, dict(exc.headers), exc.read())


def q(user_id: str) -> str:
    """A user id as one URL path segment (ids may hold spaces, '/', '?', non-ASCII)."""
    return urllib.parse.quote(user_id, safe="")


def wait_for_sequences(workers: list[WorkerProc], expected: dict[str, list[Act]], token: str | None = None,
                       timeout_s: float = 60.0) -> None:
    """Until every user's sequence, asked through every worker, equals the offline rebuild."""
    want = {u: [CODEC.to_json(a) for a in seq] for u, seq in expected.items()}

    def done() -> bool:
        for w in workers:
            for u, seq in want.items():
                r = call(f"{w.url}/v1/users/{q(u)}/sequence", token=token)
                if r.status != 200 or r.json()["sequence"] != seq:
                    return False
        return True

    wait_until(done, timeout_s, "every user's sequence to equal the offline rebuild", interval_s=0.5)


@dataclass
class Solo:
    worker: WorkerProc
    events: list[Event]
    expected: dict[str, list[Act]]
    startup_codes: list[tuple[int, int]]  # (readyz status, features status) seen while starting


def new_topics(kafka: Any, prefix: str) -> tuple[str, str]:
    topic, dlq = f"{prefix}-{uuid.uuid4().hex[:8]}", f"{prefix}-dlq-{uuid.uuid4().hex[:8]}"
    create_topics(kafka.bootstrap, [topic, dlq], partitions=4)
    return topic, dlq


@pytest.fixture(scope="module")
def solo(kafka: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Solo]:
    topic, dlq = new_topics(kafka, "api-solo")
    worker = WorkerProc(kafka.bootstrap, tmp_path_factory.mktemp("api") / "solo", topic=topic, dlq=dlq,
                        worker_id=f"api-solo-{uuid.uuid4().hex[:6]}",
                        env={"ACTIONSTREAM_MAX_BODY_BYTES": "4096", "ACTIONSTREAM_MAX_CANDIDATES": "10"}).start()
    try:
        codes: list[tuple[int, int]] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                ready = call(worker.url + "/readyz").status
            except OSError:  # web server not listening yet
                time.sleep(0.05)
                continue
            codes.append((ready, call(worker.url + "/v1/users/someone/features").status))
            if ready == 200:
                break
            time.sleep(0.05)
        worker.wait_ready(timeout_s=5)
        events = make_events(400, 25, seed=7, prefix="s")
        produce(kafka.bootstrap, topic, [encode_event(e) for e in events], keys=event_keys(events),
                partitioner="random")
        expected = expected_state(events, CODEC)
        wait_for_sequences([worker], expected)
        yield Solo(worker, events, expected, codes)
    finally:
        worker.stop()


def test_readyz_is_503_until_recovery_then_200(solo: Solo) -> None:
    codes = solo.startup_codes
    assert codes[-1][0] == 200, solo.worker.log_tail()
    assert codes[0] == (503, 503), f"first answers while recovering should be 503: {codes[:5]}"
    assert call(solo.worker.url + "/livez").status == 200


def test_sequence_equals_offline_rebuild(solo: Solo) -> None:
    for user, seq in solo.expected.items():
        r = call(f"{solo.worker.url}/v1/users/{user}/sequence")
        assert r.status == 200
        body = r.json()
        assert body["user_id"] == user
        assert body["sequence_length"] == len(seq)
        assert body["sequence"] == [CODEC.to_json(a) for a in seq]
        ts = [a["ts"] for a in body["sequence"]]
        assert ts == sorted(ts, reverse=True)  # newest first


def test_features_match_offline_statistics(solo: Solo) -> None:
    for user, seq in solo.expected.items():
        r = call(f"{solo.worker.url}/v1/users/{user}/features")
        assert r.status == 200
        got = r.json()
        assert got["user_id"] == user
        assert got["realtime"] == [] and got["daily"] is None and got["daily_date"] is None
        assert got["model_version"] == "none"
        assert got["sequence_length"] == len(seq)
        assert got["last_action_ts"] == seq[0][0]
        # the server's "now", recovered from the answer, gives the exact offline statistics
        now = seq[0][0] + round(got["seconds_since_last_action"] * 1000)
        offline = sequence_stats(seq, now, CODEC)
        for key in ("counts", "seconds_since_last", "sequence_length", "last_action_ts"):
            assert got[key] == offline[key], (user, key)


def test_user_without_history_gets_200_and_empty_features(solo: Solo) -> None:
    r = call(f"{solo.worker.url}/v1/users/never-seen-{uuid.uuid4().hex}/features")
    assert r.status == 200
    got = r.json()
    assert (got["sequence_length"], got["last_action_ts"], got["realtime"], got["daily"]) == (0, None, [], None)
    assert sum(got["counts"]["window"].values()) == 0
    r = call(f"{solo.worker.url}/v1/users/never-seen/sequence")
    assert (r.status, r.json()["sequence"]) == (200, [])


@pytest.mark.parametrize(("body", "status", "message"), [
    (b"{nope", 400, "not valid JSON"),
    (b"[]", 400, "must be a JSON object"),
    (b'{"candidates": []}', 400, "is empty"),
    (b'{"candidates": ["a", 3]}', 400, "candidates[1]"),
    (orjson.dumps({"candidates": [f"i{i}" for i in range(11)]}), 400, "too many candidates: 11 > 10"),
    (b'{"candidates": ["' + b"x" * 5000 + b'"]}', 413, "exceeds the limit of 4096 bytes"),
    (b'{"candidates": ["a", "b"]}', 503, "model not loaded"),
])
def test_score_validates_body_before_scoring(solo: Solo, body: bytes, status: int, message: str) -> None:
    r = call(f"{solo.worker.url}/v1/users/u1/score", "POST", body)
    assert r.status == status
    assert message in r.json()["error"]


def test_chunked_body_over_the_limit_is_413(solo: Solo) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", solo.worker.port, timeout=10)
    try:
        chunks = iter([b'{"candidates": ["'] + [b"x" * 1000] * 8 + [b'"]}'])
        conn.request("POST", "/v1/users/u1/score", body=chunks, encode_chunked=True,
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 413
        assert "exceeds the limit" in orjson.loads(resp.read())["error"]
    finally:
        conn.close()


def test_bad_user_id_and_unknown_routes(solo: Solo) -> None:
    r = call(f"{solo.worker.url}/v1/users/{'x' * 129}/features")
    assert (r.status, "1..128 characters" in r.json()["error"]) == (400, True)
    assert call(solo.worker.url + "/v1/nothing/here").status == 404
    assert call(f"{solo.worker.url}/v1/users/u1/features", "DELETE").status == 405


def test_metrics_expose_http_latency_by_route_method_status(solo: Solo) -> None:
    for _ in range(3):
        call(f"{solo.worker.url}/v1/users/u1/features")
    call(f"{solo.worker.url}/v1/users/u1/score", "POST", b"{")
    call(solo.worker.url + "/no/such/route")
    r = call(solo.worker.url + "/metrics")
    assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
    m = parse_metrics(r.body.decode())
    h = "actionstream_http_request_duration_seconds"
    assert m[f'{h}_count{{method="GET",route="{FEATURES_ROUTE}",status="200"}}'] >= 3
    assert m[f'{h}_count{{method="POST",route="/v1/users/{{user_id}}/score",status="400"}}'] >= 1
    assert m[f'{h}_count{{method="GET",route="unmatched",status="404"}}'] >= 1
    assert m[f'{h}_count{{method="GET",route="/readyz",status="503"}}'] >= 1  # seen while starting
    assert not any("u1" in name for name in m)  # no user ids in labels
    # ?name[]= keeps only the named samples' metrics (prometheus_client's exporter convention)
    some = call(solo.worker.url + f"/metrics?name[]={h}_count&name[]=actionstream_events_consumed_total")
    assert some.status == 200
    kept = parse_metrics(some.body.decode())
    assert kept[f'{h}_count{{method="GET",route="{FEATURES_ROUTE}",status="200"}}'] >= 3
    assert "actionstream_events_consumed_total" in kept
    assert {name.partition("{")[0] for name in kept} <= {f"{h}_count", f"{h}_sum", f"{h}_bucket", f"{h}_created",
                                                         "actionstream_events_consumed_total",
                                                         "actionstream_events_consumed_created"}
    assert len(some.body) < len(r.body) / 4


# --------------------------------------------------------------------------------------- two workers, auth


@dataclass
class Pair:
    workers: list[WorkerProc]
    expected: dict[str, list[Act]]


@pytest.fixture(scope="module")
def pair(kafka: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    topic, dlq = new_topics(kafka, "api-pair")
    group = f"api-pair-{uuid.uuid4().hex[:6]}"
    base: Path = tmp_path_factory.mktemp("api-pair")
    env = {"ACTIONSTREAM_API_TOKEN": TOKEN}
    workers = [WorkerProc(kafka.bootstrap, base / f"w{i}", topic=topic, dlq=dlq, worker_id=group, env=env)
               for i in (1, 2)]
    try:
        for w in workers:
            w.start()
        for w in workers:
            w.wait_ready(timeout_s=60)
        events = make_events(300, 30, seed=11, prefix="p")
        events += [Event(f"odd-{i}", user, "i1", "click", now_ms() - 1_000, None, None)
                   for i, user in enumerate(ODD_USER_IDS)]
        produce(kafka.bootstrap, topic, [encode_event(e) for e in events], keys=event_keys(events),
                partitioner="random")
        expected = expected_state(events, CODEC)
        wait_for_sequences(workers, expected, token=TOKEN, timeout_s=90)
        yield Pair(workers, expected)
    finally:
        for w in workers:
            w.stop()


def test_auth_required_except_health_and_metrics(pair: Pair) -> None:
    url = pair.workers[0].url
    for path, method, body in [("/v1/users/p-u1/features", "GET", None), ("/v1/users/p-u1/sequence", "GET", None),
                               ("/v1/users/p-u1/score", "POST", b'{"candidates": ["a"]}')]:
        missing = call(url + path, method, body)
        assert missing.status == 401, path
        assert missing.headers["WWW-Authenticate"].startswith("Bearer")
        assert "missing bearer token" in missing.json()["error"]
        wrong = call(url + path, method, body, token=TOKEN + "x")
        assert (wrong.status, "invalid bearer token" in wrong.json()["error"]) == (401, True)
        assert call(url + path, method, body, headers={"Authorization": TOKEN}).status == 401  # no "Bearer "
    assert call(url + "/v1/users/p-u1/features", token=TOKEN).status == 200
    for path in ("/livez", "/readyz", "/metrics"):
        assert call(url + path).status == 200, path
    assert call(url + "/router/").status == 401  # Faust's own pages are behind the token too


def test_requests_are_routed_to_the_owning_worker(pair: Pair) -> None:
    served_by: dict[str, str] = {}
    routed = 0
    for user, seq in pair.expected.items():
        answers = [call(f"{w.url}/v1/users/{q(user)}/sequence", token=TOKEN) for w in pair.workers]
        assert [a.status for a in answers] == [200, 200]
        assert answers[0].json() == answers[1].json()
        assert answers[0].json()["user_id"] == user
        assert answers[0].json()["sequence"] == [CODEC.to_json(a) for a in seq]
        owners = {a.headers[WORKER_HEADER] for a in answers}
        assert len(owners) == 1, f"{user}: two workers claim to own it: {owners}"
        served_by[user] = owners.pop()
        routed += sum(1 for w in pair.workers if w.url != served_by[user])
    assert set(served_by.values()) == {w.url for w in pair.workers}, "each worker should own some users"
    assert routed == len(pair.expected)  # every user: exactly one of the two requests was forwarded

    # POST: the body and the token travel with the forwarded request (the owner would answer 400/401)
    user = next(iter(pair.expected))
    other = next(w for w in pair.workers if w.url != served_by[user])
    r = call(f"{other.url}/v1/users/{q(user)}/score", "POST", b'{"candidates": ["i1", "i2"]}', token=TOKEN)
    assert (r.status, r.json()["error"], r.headers[WORKER_HEADER]) == (503, "model not loaded", served_by[user])
    f = call(f"{other.url}/v1/users/{q(user)}/features", token=TOKEN)
    assert (f.status, f.headers[WORKER_HEADER], f.json()["sequence_length"]) == \
        (200, served_by[user], len(pair.expected[user]))
