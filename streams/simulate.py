"""`actionstream simulate`: realistic synthetic user actions, published live or written to a file.

The generator (:class:`Simulator`) is pure Python with one seeded ``random.Random``: the same
:class:`SimConfig`, seed and time range give the same events, byte for byte. The CLI is a thin shell:
live mode paces the events to the wall clock and publishes them with :class:`ActionProducer`; ``--out``
writes JSON lines spread over the last ``--days`` days (the training data path), and ``--items-out``
writes each item's content vector.

The world:

* **Items** fall into ``clusters`` interests. Popularity is Zipf-like (``item_zipf``, weight ∝ 1/rank^a),
  with ranks shuffled over ids. Content vectors (``--items-out``) are the cluster centroid plus noise,
  unit length, so a content model can recover the clusters.
* **Users** have Zipf-like activity (``user_zipf``), 2-4 long-term interest clusters, and a personal
  engagement propensity (log-normal).
* **Sessions** start as a Poisson process; the user is drawn by activity. A session is 1 + Geometric
  requests 5-30 s apart. At session start a user without a live intent starts an **intent burst**
  with probability ``p_burst``: one cluster (a long-term interest 60 % of the time, otherwise anything)
  the user focuses on for 10-60 minutes. Clicking an item outside the current intent switches the intent
  to the item's cluster with probability ``p_switch``: recent actions tell where the user is now.
* A **request** is 10-25 impressions on one surface (homefeed / related / search), timestamps within 1 s,
  items drawn from the current intent (most on search), the long-term interests, or global popularity.
* **Follow-ups** on the same ``item_id`` within seconds to a few minutes: click (then maybe closeup,
  save, share, comment) with probabilities rising with affinity (current intent > long-term interest >
  off-interest); hides mostly on off-interest items. ``duration_ms`` on clicks and closeups.
  Resulting mix (default config): impressions ≫ clicks > closeups > saves > hides > shares > comments.
* **Arrival order** is event time, except that ``late_fraction`` (1 %) of events arrive 0.5-5 s late.

Affinity codes carried by :meth:`Simulator.annotated` (ground truth for tests and analysis):
``0`` off-interest, ``1`` long-term interest, ``2`` current intent burst.

Differences from real traffic (deliberate): no diurnal cycle, no new users/items over time, and a user's
sessions may overlap when they are drawn twice within minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import heapq
import logging
import math
import random
import sys
import time
from bisect import bisect
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

import numpy as np
import orjson
from tqdm import tqdm

from streams.events import Event, now_ms
from streams.settings import DAY_MS, ProducerSettings

__all__ = ["SimConfig", "Simulator", "item_vectors", "write_items", "write_jsonl"]

log = logging.getLogger(__name__)

HELP = "generate realistic synthetic user actions (publish or --out file)"

OFF, INTEREST, INTENT = 0, 1, 2
SURFACES = ("homefeed", "related", "search")
LIVE_WARMUP_S = 180  # sessions last minutes: simulate this much before the first sent event


@dataclass(frozen=True)
class SimConfig:
    """The synthetic world. Probabilities indexed by affinity ``[off, interest, intent]``."""

    users: int = 10_000
    items: int = 20_000
    clusters: int = 32
    dim: int = 32                      # content vector size (--items-out)
    seed: int = 0
    user_zipf: float = 0.8             # activity weight of the r-th most active user ∝ 1 / r^a
    item_zipf: float = 0.9             # popularity of the r-th most popular item ∝ 1 / r^a
    interests: tuple[int, int] = (2, 4)
    p_burst: float = 0.6               # a session starts an intent burst if none is live
    burst_minutes: tuple[float, float] = (10.0, 60.0)
    p_switch: float = 0.15             # a click outside the intent moves the intent to that cluster
    requests_mean: float = 3.0         # requests per session = 1 + Geometric(mean requests_mean - 1)
    request_gap_s: tuple[float, float] = (5.0, 30.0)
    impressions: tuple[int, int] = (10, 25)
    surface_weights: tuple[float, float, float] = (0.55, 0.25, 0.20)   # homefeed, related, search
    intent_share: tuple[float, float, float] = (0.35, 0.50, 0.65)      # impressions from the intent, per surface
    interest_share: float = 0.30       # impressions from long-term interests
    p_click: tuple[float, float, float] = (0.02, 0.08, 0.25)
    p_closeup: float = 0.5             # given a click
    p_save: tuple[float, float, float] = (0.05, 0.15, 0.35)        # given a click
    p_share: tuple[float, float, float] = (0.005, 0.02, 0.05)      # given a click
    p_comment: tuple[float, float, float] = (0.003, 0.01, 0.03)    # given a click
    p_hide: tuple[float, float, float] = (0.05, 0.006, 0.002)      # given no click
    late_fraction: float = 0.01
    late_ms: tuple[int, int] = (500, 5000)

    def __post_init__(self) -> None:
        if self.users < 1 or self.items < 1 or not 1 <= self.clusters <= self.items:
            raise ValueError("need users >= 1, items >= 1 and 1 <= clusters <= items")
        if self.interests[0] < 1 or self.interests[1] < self.interests[0]:
            raise ValueError("interests must be (min >= 1, max >= min)")


@dataclass
class _User:
    uid: str
    interests: tuple[int, ...]
    interest_cum: list[float]
    propensity: float
    intent: int = -1
    intent_until: int = 0


@dataclass
class _Session:
    user: _User
    remaining: int
    surfaces: list[str] = field(default_factory=list)


def _zipf_cum(n: int, a: float, rng: random.Random) -> tuple[list[int], list[float]]:
    """A random permutation of ``range(n)`` (index = rank) and the cumulative Zipf weights by rank."""
    order = list(range(n))
    rng.shuffle(order)
    return order, list(accumulate(1.0 / (r + 1) ** a for r in range(n)))


class Simulator:
    """Generates events in arrival order for event times in ``[start_ms, end_ms)``.

    Args:
        config: the world (users, items, clusters, probabilities); ``config.seed`` seeds everything.
        rate: target events per second of *event time* (the session rate adapts to hit it).
        start_ms, end_ms: the event-time range emitted (ms since the epoch).
        warmup_ms: simulate this long before ``start_ms`` without emitting, so sessions and follow-ups
            are already in flight at ``start_ms`` and the rate is steady from the first second.
    """

    def __init__(self, config: SimConfig, *, rate: float, start_ms: int, end_ms: int, warmup_ms: int = 0) -> None:
        if rate <= 0 or end_ms < start_ms:
            raise ValueError("need rate > 0 and end_ms >= start_ms")
        self.config = c = config
        self.rate = rate
        self.start_ms, self.end_ms, self.warmup_ms = start_ms, end_ms, warmup_ms
        self.rng = rng = random.Random(c.seed)
        self.run_id = hashlib.blake2b(f"{c.seed}:{start_ms}".encode(), digest_size=4).hexdigest()
        item_order, self._item_cum = _zipf_cum(c.items, c.item_zipf, rng)
        self.item_ids = [f"i{i}" for i in range(c.items)]
        self.item_cluster = [rng.randrange(c.clusters) for _ in range(c.items)]
        # items by popularity rank, globally and per cluster (with cumulative popularity weights)
        self._items_by_rank = item_order
        self._weight_of = {item: 1.0 / (r + 1) ** c.item_zipf for r, item in enumerate(item_order)}
        by_cluster: list[list[int]] = [[] for _ in range(c.clusters)]
        for item in item_order:
            by_cluster[self.item_cluster[item]].append(item)
        for k in range(c.clusters):  # a cluster left empty by chance borrows one item so it can be sampled
            if not by_cluster[k]:
                by_cluster[k].append(item_order[k % c.items])
        self._cluster_items = by_cluster
        self._cluster_cum = [list(accumulate(self._weight_of[i] for i in items)) for items in by_cluster]
        user_order, self._user_cum = _zipf_cum(c.users, c.user_zipf, rng)
        self._users_by_rank = user_order
        self.users: list[_User] = []
        for u in range(c.users):
            k = rng.randint(*c.interests)
            interests = tuple(rng.sample(range(c.clusters), min(k, c.clusters)))
            weights = [rng.random() + 0.2 for _ in interests]
            self.users.append(_User(f"u{u}", interests, list(accumulate(weights)),
                                    min(2.5, rng.lognormvariate(0.0, 0.4))))
        self._requests = 0      # requests scheduled (their heap entries carry seq = -count)
        self._requests_done = 0
        self._events_made = 0   # events of the requests done (follow-ups are scheduled at request time)
        self._seq = 0

    # ----- sampling helpers -------------------------------------------------------------------------
    def _interest(self, u: _User) -> int:
        return u.interests[bisect(u.interest_cum, self.rng.random() * u.interest_cum[-1])]

    def _start_burst(self, u: _User, t: int, cluster: int | None = None) -> None:
        rng = self.rng
        if cluster is None:
            cluster = self._interest(u) if rng.random() < 0.6 else rng.randrange(self.config.clusters)
        u.intent = cluster
        u.intent_until = t + int(rng.uniform(*self.config.burst_minutes) * 60_000)

    # ----- generation ------------------------------------------------------------------------------
    def _event(self, heap: list, u: _User, item: int, action: str, ts: int, surface: str,
               duration: int | None, aff: int) -> None:
        rng = self.rng
        self._seq += 1
        arrival = ts
        if rng.random() < self.config.late_fraction:
            arrival += rng.randint(*self.config.late_ms)
        if arrival < self.start_ms:  # warm-up: only the state it leaves behind matters
            return
        e = Event(f"{self.run_id}-{self._seq:x}", u.uid, self.item_ids[item], action, ts, surface, duration)
        heapq.heappush(heap, (arrival, self._seq, e, aff))

    def _request(self, heap: list, s: _Session, t: int) -> None:
        """One feed request at ``t``: impressions, then follow-ups scheduled on the same items."""
        c, rng, u = self.config, self.rng, s.user
        surface = rng.choices(SURFACES, weights=c.surface_weights)[0]
        intent = u.intent if u.intent_until > t else -1
        share_intent = c.intent_share[SURFACES.index(surface)] if intent >= 0 else 0.0
        n = rng.randint(*c.impressions)
        rnd = rng.random
        seen: set[int] = set()
        chosen: list[int] = []  # draw order is random (each slot's source is random): no shuffle needed
        for _ in range(n * 3):
            if len(chosen) == n:
                break
            r = rnd()
            if r < share_intent:
                k = intent
                cum = self._cluster_cum[k]
                item = self._cluster_items[k][bisect(cum, rnd() * cum[-1])]
            elif r < share_intent + c.interest_share:
                k = self._interest(u)
                cum = self._cluster_cum[k]
                item = self._cluster_items[k][bisect(cum, rnd() * cum[-1])]
            else:
                item = self._items_by_rank[bisect(self._item_cum, rnd() * self._item_cum[-1])]
            if item not in seen:
                seen.add(item)
                chosen.append(item)
        offsets = sorted([int(rnd() * 1000) for _ in chosen])
        made = len(chosen)
        late, late_ms, start, push, item_ids, clusters = (c.late_fraction, c.late_ms, self.start_ms, heapq.heappush,
                                                          self.item_ids, self.item_cluster)
        for item, off in zip(chosen, offsets, strict=True):
            ts = t + off
            k = clusters[item]
            aff = INTENT if k == intent else INTEREST if k in u.interests else OFF
            self._seq += 1
            arrival = ts + rng.randint(*late_ms) if rnd() < late else ts
            if arrival >= start:
                push(heap, (arrival, self._seq, Event(f"{self.run_id}-{self._seq:x}", u.uid, item_ids[item],
                                                      "impression", ts, surface, None), aff))
            p = u.propensity
            if rnd() < c.p_click[aff] * p:
                tc = ts + 500 + int(rng.expovariate(1 / 6000))
                base = (2000, 5000, 12000)[aff]
                self._event(heap, u, item, "click", tc, surface, int(rng.lognormvariate(math.log(base), 0.8)), aff)
                made += 1
                if rng.random() < c.p_closeup:
                    self._event(heap, u, item, "closeup", tc + rng.randint(1000, 10_000), surface,
                                int(rng.lognormvariate(math.log(base * 1.5), 0.8)), aff)
                    made += 1
                for action, probs, lo, hi in (("save", c.p_save, 2000, 60_000), ("share", c.p_share, 5000, 120_000),
                                              ("comment", c.p_comment, 5000, 180_000)):
                    if rng.random() < min(0.95, probs[aff] * p):
                        self._event(heap, u, item, action, tc + rng.randint(lo, hi), surface, None, aff)
                        made += 1
                if aff != INTENT and rng.random() < c.p_switch:
                    self._start_burst(u, tc, self.item_cluster[item])
            elif rng.random() < c.p_hide[aff]:
                self._event(heap, u, item, "hide", ts + rng.randint(1000, 15_000), surface, None, aff)
                made += 1
        self._events_made += made
        self._requests_done += 1
        s.remaining -= 1
        if s.remaining > 0:
            nxt = t + 1000 + int(rng.uniform(*c.request_gap_s) * 1000)
            self._requests += 1
            heapq.heappush(heap, (nxt, -self._requests, s, -1))  # negative seq marks a request

    def _new_session(self, heap: list, t: int) -> None:
        c, rng = self.config, self.rng
        u = self.users[self._users_by_rank[bisect(self._user_cum, rng.random() * self._user_cum[-1])]]
        if u.intent_until <= t and rng.random() < c.p_burst:
            self._start_burst(u, t)
        extra = 0
        if c.requests_mean > 1:
            q = 1.0 / c.requests_mean  # 1 + Geometric with mean requests_mean
            extra = int(math.log(1.0 - rng.random()) / math.log(1.0 - q)) if q < 1 else 0
        self._requests += 1
        heapq.heappush(heap, (t, -self._requests, _Session(u, 1 + extra), -1))

    def _stream(self) -> Iterator[tuple[int, Event, int]]:
        """(arrival ms, event, affinity) in arrival order, arrivals in [start_ms, end_ms)."""
        rng = self.rng
        heap: list = []
        t = float(self.start_ms - self.warmup_ms)
        next_session = t
        end, start = self.end_ms, self.start_ms
        while True:
            if heap and heap[0][0] <= next_session:
                arrival, seq, obj, aff = heapq.heappop(heap)
                if arrival >= end:  # the heap's minimum, and no session starts before it: done
                    return
                if seq < 0:
                    self._request(heap, obj, arrival)
                elif arrival >= start:
                    yield arrival, obj, aff
                continue
            if next_session >= end:
                if not heap:
                    return
                next_session = float("inf")
                continue
            self._new_session(heap, int(next_session))
            # events per session = events per request (measured) x requests per session (known mean)
            per_request = self._events_made / self._requests_done if self._requests_done >= 20 else 20.0
            next_session += rng.expovariate(self.rate / 1000.0 / (per_request * self.config.requests_mean))

    def __iter__(self) -> Iterator[Event]:
        for _, e, _ in self._stream():
            yield e

    def timed(self) -> Iterator[tuple[int, Event]]:
        """(arrival ms, event): when the event should be sent, and the event (whose ts may be earlier)."""
        for arrival, e, _ in self._stream():
            yield arrival, e

    def annotated(self) -> Iterator[tuple[Event, int]]:
        """(event, affinity) with affinity 0 off-interest, 1 long-term interest, 2 current intent."""
        for _, e, aff in self._stream():
            yield e, aff

    @property
    def expected_events(self) -> int:
        return int(self.rate * (self.end_ms - self.start_ms) / 1000)


def item_vectors(config: SimConfig, clusters: list[int]) -> np.ndarray:
    """Content vectors [items, dim] float32: the item's cluster centroid plus noise, unit length."""
    rng = np.random.default_rng(config.seed)
    centroids = rng.standard_normal((config.clusters, config.dim))
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    vecs = centroids[np.asarray(clusters)] + 0.6 * rng.standard_normal((config.items, config.dim)) / math.sqrt(config.dim)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    return vecs.astype(np.float32)


def write_items(sim: Simulator, path: Path) -> int:
    """``{"item_id", "vector", "cluster"}`` per line; returns the number of items."""
    vecs = item_vectors(sim.config, sim.item_cluster)
    with open(path, "wb") as fh:
        for i, item_id in enumerate(sim.item_ids):
            fh.write(orjson.dumps({"item_id": item_id, "vector": [round(float(x), 5) for x in vecs[i]],
                                   "cluster": sim.item_cluster[i]}) + b"\n")
    return len(sim.item_ids)


def write_jsonl(sim: Simulator, path: Path, progress: bool = True) -> Counter[str]:
    """Write every event as canonical Event v1 JSON lines; returns counts by action."""
    counts: Counter[str] = Counter()
    with open(path, "wb") as fh, tqdm(total=sim.expected_events, unit="ev", unit_scale=True, desc="simulate",
                                      disable=not progress, file=sys.stderr, mininterval=0.5) as bar:
        buf: list[bytes] = []
        for e in sim:
            counts[e.action] += 1
            buf.append(orjson.dumps(e.to_dict()))
            if len(buf) >= 4096:
                fh.write(b"\n".join(buf) + b"\n")
                bar.update(len(buf))
                buf.clear()
        if buf:
            fh.write(b"\n".join(buf) + b"\n")
            bar.update(len(buf))
    return counts


def publish_live(sim: Simulator, settings: ProducerSettings, progress: bool = True) -> tuple[Counter[str], int, float]:
    """Send each event when the wall clock reaches its arrival time.

    Returns:
        (counts by action, records acknowledged, seconds from the first send to the last acknowledgement).
    """
    from streams.producer import ActionProducer  # kafka-python only when publishing

    counts: Counter[str] = Counter()
    with ActionProducer(settings) as producer, tqdm(total=sim.expected_events, unit="ev", desc="publish",
                                                    disable=not progress, file=sys.stderr, mininterval=0.5) as bar:
        t0 = None
        pending = 0
        lag = 0  # if the warm-up overran the planned start, shift the schedule instead of bursting
        for arrival, e in sim.timed():
            if t0 is None:
                lag = max(0, now_ms() - arrival)
                if lag > 100:
                    log.warning("warm-up overran the planned start by %d ms: sending on schedule, "
                                "event times lag the wall clock by that much", lag)
            wait = (arrival + lag - now_ms()) / 1000
            if wait > 0.002:
                bar.update(pending)
                pending = 0
                time.sleep(wait)
            if t0 is None:
                t0 = time.monotonic()
            producer.send(e)
            counts[e.action] += 1
            pending += 1
        bar.update(pending)
        acked = producer.flush()
        elapsed = time.monotonic() - t0 if t0 is not None else 0.0
    return counts, acked, elapsed


def _summary(counts: Counter[str]) -> str:
    total = sum(counts.values())
    mix = ", ".join(f"{a} {n} ({n / max(total, 1):.1%})" for a, n in counts.most_common())
    return f"{total} events\n  by action: {mix}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.description = (
        "Generate realistic synthetic user actions: Zipf-like user activity and item popularity, items in "
        "interest clusters, users with 2-4 long-term interests plus 10-60 min intent bursts, requests of "
        "10-25 impressions followed by clicks/closeups/saves/shares/comments (more likely on intent items) "
        "and hides (mostly off-interest). Live mode (default) publishes ~RATE events/s with ts = now to "
        "the actions topic for DURATION seconds. --out FILE writes JSON lines instead, spread over the "
        "last --days days (the training-data path). The same --seed (and --end-ms) gives the same events.")
    p.add_argument("--users", type=int, default=10_000, help="number of users")
    p.add_argument("--items", type=int, default=20_000, help="number of items")
    p.add_argument("--clusters", type=int, default=32, help="number of item interest clusters")
    p.add_argument("--rate", type=float, default=100.0, help="events per second (live mode)")
    p.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (live mode)")
    p.add_argument("--seed", type=int, default=0, help="random seed (same seed, same world and events)")
    p.add_argument("--out", type=Path, help="write JSON lines to this file instead of publishing")
    p.add_argument("--days", type=float, help="with --out: spread events over the last DAYS days (at most 29)")
    p.add_argument("--events", type=int, help="with --out: number of events (default RATE x DURATION)")
    p.add_argument("--end-ms", type=int, help="with --out: end of the time range, ms since the epoch (default now)")
    p.add_argument("--items-out", type=Path, help="also write item content vectors {item_id, vector, cluster}")
    p.add_argument("--dim", type=int, default=32, help="content vector dimension for --items-out")
    p.add_argument("--bootstrap", help="Kafka bootstrap servers host:port (env ACTIONSTREAM_KAFKA_BOOTSTRAP_SERVERS)")
    p.add_argument("--topic", help="target topic (env ACTIONSTREAM_TOPIC_ACTIONS; default user-actions)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    config = SimConfig(users=args.users, items=args.items, clusters=args.clusters, dim=args.dim, seed=args.seed)
    progress = not args.no_progress
    if args.out is not None:
        days = args.days if args.days is not None else args.duration / 86_400
        if not 0 < days <= 29:
            print("actionstream simulate: --days must be in (0, 29] so every event is inside the 30-day "  # noqa: T201
                  "window when it is published later", file=sys.stderr)
            return 2
        end = args.end_ms if args.end_ms is not None else now_ms()
        span_ms = int(days * DAY_MS)
        n = args.events if args.events is not None else int(args.rate * args.duration)
        sim = Simulator(config, rate=max(n, 1) / (span_ms / 1000), start_ms=end - span_ms, end_ms=end,
                        warmup_ms=min(span_ms, 600_000))
        if args.items_out:
            log.info("wrote %d item vectors to %s", write_items(sim, args.items_out), args.items_out)
        t0 = time.monotonic()
        counts = write_jsonl(sim, args.out, progress)
        dt = time.monotonic() - t0
        print(f"wrote {args.out}: {_summary(counts)}\n  over {days:g} days ending {end}; "  # noqa: T201
              f"generated in {dt:.1f}s ({sum(counts.values()) / max(dt, 1e-9):,.0f} events/s)")
        return 0
    settings = ProducerSettings.load(kafka_bootstrap_servers=args.bootstrap, topic_actions=args.topic)
    # the warm-up (LIVE_WARMUP_S of traffic simulated, not sent) runs at >= 100k events/s: start after it
    start = now_ms() + 500 + int(args.rate * LIVE_WARMUP_S / 100)
    sim = Simulator(config, rate=args.rate, start_ms=start, end_ms=start + int(args.duration * 1000),
                    warmup_ms=LIVE_WARMUP_S * 1000)
    if args.items_out:
        log.info("wrote %d item vectors to %s", write_items(sim, args.items_out), args.items_out)
    log.info("publishing ~%.0f events/s for %.0fs to %s at %s", args.rate, args.duration,
             settings.topic_actions, settings.kafka_bootstrap_servers)
    counts, acked, elapsed = publish_live(sim, settings, progress)
    total = sum(counts.values())
    print(f"published {_summary(counts)}\n  {acked} acknowledged by Kafka in {elapsed:.1f}s "  # noqa: T201
          f"({total / max(elapsed, 1e-9):,.0f} events/s) to {settings.topic_actions}")
    return 0
