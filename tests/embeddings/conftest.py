"""Small hand-made data for the embeddings tests: users with 1-2 topics, items with topic vectors.

Users mostly engage with items of their topics (saves, long clicks), sometimes impressions/hides; so a
model that learns anything beats chance on Recall@10.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import orjson
import pytest

from streams.events import Event

DAY = 86_400_000
T0 = 1_700_006_400_000  # 2023-11-15 00:00 UTC


def make_events(n_users: int = 60, n_items: int = 120, days: int = 30, topics: int = 6, seed: int = 0,
                t0: int = T0) -> tuple[list[Event], dict[str, list[float]]]:
    rng = np.random.default_rng(seed)
    item_topic = rng.integers(0, topics, n_items)
    centers = rng.normal(size=(topics, 8))
    vectors = {f"i{i}": (centers[item_topic[i]] + 0.3 * rng.normal(size=8)).round(4).tolist() for i in range(n_items)}
    events: list[Event] = []
    for u in range(n_users):
        likes = rng.choice(topics, size=2, replace=False)
        n = int(rng.integers(10, 40))
        ts = np.sort(rng.integers(t0, t0 + days * DAY, n))
        for j, t in enumerate(ts):
            topic = likes[0] if rng.random() < 0.7 else (likes[1] if rng.random() < 0.7 else rng.integers(topics))
            item = int(rng.choice(np.flatnonzero(item_topic == topic)))
            action = str(rng.choice(["save", "click", "impression", "hide", "closeup"], p=[.3, .35, .2, .05, .1]))
            events.append(Event(f"e{u}-{j}", f"u{u}", f"i{item}", action, int(t), "homefeed",
                                int(rng.integers(0, 30_000)) if action in ("click", "closeup") else None))
    return events, vectors


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in rows))
    return path


@pytest.fixture
def toy_files(tmp_path: Path) -> tuple[Path, Path]:
    events, vectors = make_events()
    ev = write_jsonl(tmp_path / "events.jsonl", [e.to_dict() for e in events])
    it = write_jsonl(tmp_path / "items.jsonl", [{"item_id": k, "vector": v} for k, v in vectors.items()])
    return ev, it
