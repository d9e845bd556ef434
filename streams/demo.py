"""`actionstream demo`: drive a running local stack (`actionstream up`) end to end and show the result.

1. publishes simulated traffic (``actionstream simulate``: power-law users/items, interest bursts) live;
2. waits until the workers have consumed it (their ``/metrics``), and reports accepted/rejected counts;
3. runs the daily PinnerFormer job (``actionstream daily``) on the stack's event archive, publishing to the
   embeddings topic, with the PinnerFormer `actionstream up` trained into ``<state-dir>/models/`` (and its item
   vectors); without a checkpoint (a stack started with ``--no-models``) it first trains a tiny one on
   simulated history of the same users and items (``--train-steps``, 0 = skip);
4. picks the most active user of the traffic and prints their hybrid features
   (``GET /v1/users/{id}/features``) and candidate scores (``POST /v1/users/{id}/score``) from the API.

The traffic's world (users, items, seed) defaults to the one the stack's models were trained on (``stack.json``).
Every step says what it did or why it was skipped (e.g. a stack started with ``--no-models`` has no TransAct
model: scores answer 503).
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib.util
import json
import logging
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr

from streams.errors import ActionstreamError
from streams.settings import KafkaSettings
from streams.stack import load_state

HELP = "drive a running local stack: traffic, daily job, print features and scores"

log = logging.getLogger("streams.demo")


# A deliberately tiny PinnerFormer so the demo trains in about a minute on 2 shared cores: it shows the daily
# pipeline working, not the model's quality (use `actionstream train pinnerformer` defaults for that).
TINY_PINNERFORMER = {"ACTIONSTREAM_PF_WIDTH": "32", "ACTIONSTREAM_PF_LAYERS": "1", "ACTIONSTREAM_PF_HEADS": "2",
                     "ACTIONSTREAM_PF_MAX_LEN": "64", "ACTIONSTREAM_PF_RANDOM_NEGATIVES": "256",
                     "ACTIONSTREAM_PF_POSITIONS": "8", "ACTIONSTREAM_PF_THREADS": "1"}


class DemoSettings(KafkaSettings):
    """`actionstream demo` (Kafka address and topics come from the running stack's stack.json)."""

    api_token: SecretStr = SecretStr("")
    demo_users: int = Field(200, ge=1)
    demo_items: int = Field(2000, ge=10)
    demo_rate: float = Field(300.0, gt=0)
    demo_duration_s: float = Field(20.0, gt=0)
    demo_seed: int = 7
    demo_candidates: int = Field(8, ge=1, le=1000)
    demo_train_steps: int = Field(30, ge=0, description="train a small PinnerFormer when none exists (0 = skip)")
    demo_pinnerformer_checkpoint: Path | None = None


def _say(text: str = "") -> None:
    print(text, flush=True)  # noqa: T201 - the command's output


def _http(method: str, url: str, token: str, body: dict[str, Any] | None = None,
          timeout: float = 30) -> tuple[int, Any]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310 - the stack's loopback API
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode("utf-8", "replace")


def _scrape(url: str) -> dict[str, float]:
    """Sum of each sample name over label sets on one worker's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{url}/metrics", timeout=10) as resp:  # noqa: S310
        text = resp.read().decode()
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[s.name] = out.get(s.name, 0.0) + float(s.value)
    return out


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "streams.cli", *args]


def _step(what: str, cmd: list[str], capture: bool = False, env: dict[str, str] | None = None) -> str:
    """Run one step's command; a failure becomes a one-line error naming the step (its output is above)."""
    done = subprocess.run(cmd, capture_output=capture, text=True, env={**os.environ, **(env or {})})
    if done.returncode != 0:
        detail = f":\n{done.stderr.strip()[-2000:]}" if capture else " (its output is above)"
        raise ActionstreamError(f"demo step '{what}' failed with exit code {done.returncode}{detail}")
    return done.stdout or ""


def publish_traffic(s: DemoSettings) -> None:
    _say(f"[1/4] publishing ~{s.demo_rate:.0f} events/s for {s.demo_duration_s:.0f}s "
         f"({s.demo_users} users, {s.demo_items} items) to {s.topic_actions} ...")
    _step("simulate", _cli("simulate", "--bootstrap", s.kafka_bootstrap_servers, "--topic", s.topic_actions,
                           "--rate", str(s.demo_rate), "--duration", str(s.demo_duration_s),
                           "--users", str(s.demo_users), "--items", str(s.demo_items), "--seed", str(s.demo_seed),
                           "--no-progress", "--log-level", "WARNING"))


def wait_applied(workers: list[str], timeout: float = 120) -> dict[str, float]:
    """Wait until the workers' consumed counter stops moving and the input lag is zero."""
    deadline = time.monotonic() + timeout
    last: float = -1
    stable_since = time.monotonic()
    totals: dict[str, float] = {}
    while time.monotonic() < deadline:
        totals = {}
        for url in workers:
            for k, v in _scrape(url).items():
                totals[k] = totals.get(k, 0.0) + v
        consumed = totals.get("actionstream_events_consumed_total", 0.0)
        lag = totals.get("actionstream_consumer_lag_messages", 0.0)
        if consumed != last:
            last, stable_since = consumed, time.monotonic()
        elif lag == 0 and time.monotonic() - stable_since > 2:
            break
        time.sleep(0.5)
    else:
        log.warning("workers still busy after %.0fs; showing what is there", timeout)
    _say(f"[2/4] workers consumed {totals.get('actionstream_events_consumed_total', 0):,.0f} messages: "
         f"{totals.get('actionstream_events_accepted_total', 0):,.0f} accepted, "
         f"{totals.get('actionstream_events_rejected_total', 0):,.0f} rejected, "
         f"{totals.get('actionstream_events_duplicate_total', 0):,.0f} duplicates")
    return totals


def run_daily_job(s: DemoSettings, state: dict[str, Any], stack_dir: Path) -> bool:
    """Run the daily job on the stack's archive; True when it published embeddings."""
    if importlib.util.find_spec("embeddings.daily_job") is None:
        _say("[3/4] daily job: embeddings/daily_job.py is not in this checkout; skipped (features show daily: null)")
        return False
    archive = Path(state["archive_dir"])
    if not any(archive.glob("date=*/part-*.jsonl")):
        _say(f"[3/4] daily job: the archive {archive} is empty (workers run with the archive off?); skipped")
        return False
    checkpoint = (s.demo_pinnerformer_checkpoint or (stack_dir / "models" / "pinnerformer" / "model.pt")).resolve()
    models = state.get("models") or {}
    # the stack's bootstrapped PinnerFormer reads the same item vectors as the workers
    items = models.get("items") if models.get("pinnerformer") == str(checkpoint) else None
    if not checkpoint.is_file():
        if s.demo_train_steps == 0:
            _say(f"[3/4] daily job: no PinnerFormer checkpoint at {checkpoint} and --train-steps 0; skipped. "
                 f"Train one: actionstream train pinnerformer --events {archive} --out {checkpoint.parent}")
            return False
        history = stack_dir / "models" / "pinnerformer-history.jsonl"
        history.parent.mkdir(parents=True, exist_ok=True)
        _say(f"[3/4] no PinnerFormer checkpoint at {checkpoint}: training a small one ({s.demo_train_steps} "
             f"steps) on 28 days of simulated history of the same users and items ({history}) ...")
        _step("simulate history", _cli("simulate", "--out", str(history), "--days", "28", "--events", "40000",
                                       "--users", str(s.demo_users), "--items", str(s.demo_items),
                                       "--seed", str(s.demo_seed), "--no-progress", "--log-level", "WARNING"))
        _step("train pinnerformer", _cli("train", "pinnerformer", "--events", str(history), "--out",
                                         str(checkpoint.parent), "--steps", str(s.demo_train_steps),
                                         "--batch-size", "32", "--log-level", "WARNING"),
              env=TINY_PINNERFORMER)
        if not checkpoint.is_file():
            raise ActionstreamError(f"training finished but wrote no {checkpoint}")
    day = dt.datetime.now(dt.timezone.utc).date().isoformat()
    _say(f"[3/4] daily job for {day}: archive {archive}, checkpoint {checkpoint}"
         + (f", items {items}" if items else "") + " ...")
    out = _step("daily", _cli("daily", "--archive", str(archive), "--date", day, "--checkpoint", str(checkpoint),
                              "--snapshots", str(stack_dir / "snapshots"), "--bootstrap",
                              s.kafka_bootstrap_servers, "--topic", s.topic_embeddings, "--log-level", "WARNING",
                              *(["--items", str(items)] if items else [])),
                capture=True)
    try:
        manifest = json.loads(out[out.index("{"):])
        summary = {k: v for k, v in manifest.items() if not isinstance(v, (dict, list))}
        _say("      " + json.dumps(summary))
        return bool(manifest.get("published_records"))
    except ValueError:
        _say(out.strip())
    return True


def most_active_user(s: DemoSettings, sample: int = 3000) -> tuple[str, list[str]]:
    """The most frequent user among the last ``sample`` messages, and the items seen most often there."""
    import orjson
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=s.kafka_bootstrap_servers.split(","), enable_auto_commit=False,
                             consumer_timeout_ms=3000, **s.kafka_python_security())
    try:
        parts = [TopicPartition(s.topic_actions, p) for p in consumer.partitions_for_topic(s.topic_actions) or []]
        consumer.assign(parts)
        ends = consumer.end_offsets(parts)
        per = max(1, sample // max(1, len(parts)))
        for tp in parts:
            consumer.seek(tp, max(0, ends[tp] - per))
        users: Counter[str] = Counter()
        items: Counter[str] = Counter()
        for msg in consumer:
            try:
                event = orjson.loads(msg.value)
                users[str(event["user_id"])] += 1
                items[str(event["item_id"])] += 1
            except (ValueError, KeyError, TypeError):
                continue
    finally:
        consumer.close()
    if not users:
        raise ActionstreamError(f"no events found on {s.topic_actions}")
    return users.most_common(1)[0][0], [i for i, _ in items.most_common(50)]


def _short(vector: Any) -> str:
    if not vector:
        return "[] (none yet)" if vector == [] else "null"
    return f"[{', '.join(f'{x:.3f}' for x in vector[:4])}, ...] ({len(vector)} values)"


def settled_features(api: str, user: str, token: str, *, want_daily: bool, want_realtime: bool,
                     timeout: float = 20) -> tuple[int, Any]:
    """GET features until the expected parts are there (the daily records and the realtime encoder are
    asynchronous) or ``timeout``; the last answer either way."""
    deadline = time.monotonic() + timeout
    while True:
        status, features = _http("GET", f"{api}/v1/users/{user}/features", token)
        ok = status == 200 and isinstance(features, dict) and (not want_daily or features.get("daily")) \
            and (not want_realtime or features.get("realtime"))
        if ok or status != 200 or time.monotonic() > deadline:
            return status, features
        time.sleep(0.5)


def show_user(s: DemoSettings, api: str, user: str, popular: list[str], *, want_daily: bool = False,
              want_realtime: bool = False) -> int:
    token = s.api_token.get_secret_value()
    status, features = settled_features(api, user, token, want_daily=want_daily, want_realtime=want_realtime)
    _say(f"[4/4] user {user}: GET /v1/users/{user}/features -> {status}")
    if status != 200:
        _say(f"      {features}")
        return 1
    for key, value in features.items():
        shown = _short(value) if key in ("realtime", "daily") else json.dumps(value)
        _say(f"      {key:<24} {shown}")
    _, seq = _http("GET", f"{api}/v1/users/{user}/sequence", token)
    recent: list[str] = []
    acts = seq.get("sequence") if isinstance(seq, dict) else None
    for act in acts or []:
        item = act.get("item_id") if isinstance(act, dict) else None
        if item and item not in recent:
            recent.append(item)
    half = s.demo_candidates // 2
    candidates = list(dict.fromkeys(recent[:half] + [i for i in popular if i not in recent]))[:s.demo_candidates]
    status, scores = _http("POST", f"{api}/v1/users/{user}/score", token, {"candidates": candidates})
    _say(f"      POST /v1/users/{user}/score ({len(candidates)} candidates: {half} from the user's recent "
         f"items, the rest popular) -> {status}")
    if status != 200:
        _say(f"      {scores}")
        if status == 503:
            _say("      (the worker has no TransAct ranking model: `make up` trains one unless started with "
                 "--no-models, or set ACTIONSTREAM_TRANSACT_CHECKPOINT=<model.pt> for `make up`)")
        return 0
    rows = scores.get("scores", [])
    heads = [k for k in (rows[0] if rows else {}) if k != "item_id"]
    _say(f"      {'item_id':<14}" + "".join(f"{h:>10}" for h in heads) + f"   model {scores.get('model_version')}")
    for row in sorted(rows, key=lambda r: -float(r.get(heads[0], 0)) if heads else 0):
        _say(f"      {row['item_id']:<14}" + "".join(f"{float(row[h]):>10.4f}" for h in heads))
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, default=Path(".actionstream"),
                   help="state dir of the running `actionstream up` (its stack.json says where things are)")
    p.add_argument("--rate", type=float, help="simulated events per second (300)")
    p.add_argument("--duration", type=float, help="seconds of simulated traffic (20)")
    p.add_argument("--users", type=int, help="simulated users (200)")
    p.add_argument("--items", type=int, help="simulated items (2000)")
    p.add_argument("--seed", type=int, help="simulator seed (7)")
    p.add_argument("--candidates", type=int, help="candidates to score (8)")
    p.add_argument("--train-steps", type=int, help="PinnerFormer steps to train when no checkpoint exists "
                                                   "(30; 0 = skip the daily job instead)")
    p.add_argument("--pinnerformer-checkpoint", type=Path,
                   help="daily-job checkpoint (default <state-dir>/models/pinnerformer/model.pt)")
    p.add_argument("--user", help="show this user instead of the most active one")
    p.add_argument("--skip-traffic", action="store_true", help="do not publish traffic (reuse what is there)")


def run(args: argparse.Namespace) -> int:
    state = load_state(args.state_dir)
    world = (state.get("models") or {}).get("world") or {}  # the world the stack's models were trained on
    s = DemoSettings.load(
        kafka_bootstrap_servers=state["bootstrap"], topic_actions=state["topic_actions"],
        topic_dlq=state["topic_dlq"], topic_embeddings=state["topic_embeddings"], partitions=state["partitions"],
        demo_rate=args.rate, demo_duration_s=args.duration, demo_users=args.users or world.get("users"),
        demo_items=args.items or world.get("items"), demo_seed=args.seed if args.seed is not None else world.get("seed"), demo_candidates=args.candidates, demo_train_steps=args.train_steps,
        demo_pinnerformer_checkpoint=args.pinnerformer_checkpoint)
    workers: list[str] = state["workers"]
    _say(f"demo against the stack in {args.state_dir}: Kafka {s.kafka_bootstrap_servers}, "
         f"workers {', '.join(workers)}")
    if not args.skip_traffic:
        publish_traffic(s)
    wait_applied(workers)
    published = run_daily_job(s, state, Path(args.state_dir).resolve())
    user, popular = most_active_user(s)
    if args.user:
        user = args.user
    if state.get("prometheus"):
        _say(f"      Prometheus: {state['prometheus']}/graph?g0.expr=rate(actionstream_events_accepted_total[1m])")
    loaded = state.get("loaded_models") or {}
    return show_user(s, workers[0], user, popular, want_daily=published,
                     want_realtime="transact_realtime" in loaded)
