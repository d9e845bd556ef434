"""Benchmark workload: simulator-like Event v1 JSON (~190 B, key = user id), fast to generate.

``request_id`` is an extra field (allowed by Event v1, kept out of state) standing in for the
request context real producers attach; it brings the mean size to the ~190 B of measurements.md.

A small local generator rather than :mod:`streams.simulate`: benchmarks need a fixed-size, seeded batch
generated in about a second, not realistic sessions. Same shape as the simulator's output: Zipf-skewed
users and items, an action mix dominated by impressions, event times spread over the last ``span_s`` seconds and
increasing (a few percent arrive out of order by up to 2 s), unique uuid-like event ids.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import orjson

from streams.events import now_ms

__all__ = ["Workload", "make_events"]

ACTIONS = ("impression", "click", "save", "closeup", "hide", "share", "comment")
ACTION_P = (0.80, 0.09, 0.03, 0.04, 0.02, 0.01, 0.01)
SURFACES = ("homefeed", "search", "related")


@dataclass(frozen=True)
class Workload:
    """A deterministic batch of events: ``values[i]`` (JSON bytes) keyed by ``keys[i]`` (user id bytes)."""

    keys: list[bytes]
    values: list[bytes]
    users: int

    @property
    def n(self) -> int:
        return len(self.values)

    @property
    def mean_bytes(self) -> float:
        return sum(map(len, self.values)) / max(1, len(self.values))


def _zipf_choice(rng: np.random.Generator, n_items: int, size: int, a: float) -> np.ndarray:
    w = 1.0 / np.arange(1, n_items + 1) ** a
    return rng.choice(n_items, size=size, p=w / w.sum())


def make_events(n: int, users: int, *, items: int = 50_000, seed: int = 7, span_s: float = 600.0,
                end_ms: int | None = None, uniform_users: bool = False) -> Workload:
    """``n`` events over ``users`` users, event times in ``[end - span, end]`` (end defaults to now).

    ``uniform_users=True`` deals events to users round-robin (every user gets ``n // users`` or one more:
    used to give every user a full 100-action sequence).
    """
    rng = np.random.default_rng(seed)
    end = now_ms() if end_ms is None else end_ms
    start = end - int(span_s * 1000)
    u = np.arange(n) % users if uniform_users else _zipf_choice(rng, users, n, 0.8)
    it = _zipf_choice(rng, items, n, 0.9)
    act = rng.choice(len(ACTIONS), size=n, p=ACTION_P)
    surf = rng.integers(0, len(SURFACES), size=n)
    ts = np.linspace(start, end, n).astype(np.int64)
    late = rng.random(n) < 0.03
    ts = ts - late * rng.integers(0, 2000, size=n)
    dur = rng.integers(200, 30_000, size=n)
    req = rng.integers(0, 2**63, size=n)
    keys: list[bytes] = []
    values: list[bytes] = []
    ns = uuid.UUID(int=seed)
    for i in range(n):
        user = f"user-{int(u[i]):07d}"
        a = ACTIONS[act[i]]
        ev = {"event_id": str(uuid.uuid5(ns, str(i))), "user_id": user, "item_id": f"pin-{int(it[i]):09d}",
              "action": a, "ts": int(ts[i]), "surface": SURFACES[surf[i]], "request_id": f"{int(req[i]):016x}"}
        if a in ("click", "closeup"):
            ev["duration_ms"] = int(dur[i])
        keys.append(user.encode())
        values.append(orjson.dumps(ev))
    return Workload(keys, values, users)


def iter_chunks(w: Workload, size: int) -> Iterator[tuple[list[bytes], list[bytes]]]:
    for i in range(0, w.n, size):
        yield w.keys[i:i + size], w.values[i:i + size]
