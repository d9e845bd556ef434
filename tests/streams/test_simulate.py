"""The synthetic traffic generator: determinism and the dynamics the models are supposed to learn."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import orjson
import pytest

from streams.cli import main
from streams.events import Event, EventParser
from streams.simulate import INTENT, INTEREST, OFF, SimConfig, Simulator, item_vectors, write_items

END = 1_750_000_000_000
CONFIG = SimConfig(users=500, items=3000, clusters=16, seed=7)
RATE, SPAN_MS = 100.0, 1_200_000  # 20 minutes of event time, ~120k events


def make(seed: int = 7, warmup_ms: int = 300_000, span_ms: int = SPAN_MS, **kw: object) -> Simulator:
    cfg = SimConfig(**{**CONFIG.__dict__, "seed": seed, **kw})  # type: ignore[arg-type]
    return Simulator(cfg, rate=RATE, start_ms=END - span_ms, end_ms=END, warmup_ms=warmup_ms)


@pytest.fixture(scope="module")
def stream() -> list[tuple[int, Event, int]]:
    """(arrival ms, event, affinity) without warm-up, so every follow-up's impression is in the stream."""
    return list(make(warmup_ms=0)._stream())


def test_same_seed_same_events_other_seed_other_events() -> None:
    small = dict(warmup_ms=60_000, span_ms=180_000, users=50, items=200, clusters=4)
    a = list(make(seed=3, **small))  # type: ignore[arg-type]
    b = list(make(seed=3, **small))  # type: ignore[arg-type]
    c = list(make(seed=4, **small))  # type: ignore[arg-type]
    assert len(a) > 1000 and a == b
    assert [e.item_id for e in a[:100]] != [e.item_id for e in c[:100]]
    assert len({e.event_id for e in a}) == len(a)  # ids are unique


def test_events_are_valid_and_inside_the_range(stream: list[tuple[int, Event, int]]) -> None:
    parser = EventParser()
    for _, e, _ in stream[::50]:
        assert parser.parse(orjson.dumps(e.to_dict()), now=END) == e
    assert all(END - SPAN_MS <= arrival < END for arrival, _, _ in stream)


def test_rate_is_steady_after_warmup() -> None:
    events = list(make(warmup_ms=300_000, span_ms=300_000))
    expected = RATE * 300
    assert 0.85 * expected < len(events) < 1.15 * expected, len(events)


def test_action_mix_ordering(stream: list[tuple[int, Event, int]]) -> None:
    n = Counter(e.action for _, e, _ in stream)
    assert n["impression"] > 4 * n["click"]
    assert n["click"] > n["save"] > n["hide"] > 0
    assert n["closeup"] > 0 and n["share"] > 0 and n["comment"] > 0
    assert all(e.duration_ms is not None for _, e, _ in stream if e.action in ("click", "closeup"))
    assert all(e.duration_ms is None for _, e, _ in stream if e.action not in ("click", "closeup"))
    assert {e.surface for _, e, _ in stream} == {"homefeed", "search", "related"}


def _top_share(counts: Counter[str], population: int, fraction: float) -> float:
    values = sorted(counts.values(), reverse=True)
    return sum(values[: max(1, int(population * fraction))]) / sum(values)


def test_power_law_users_and_items(stream: list[tuple[int, Event, int]]) -> None:
    users = Counter(e.user_id for _, e, _ in stream)
    items = Counter(e.item_id for _, e, a in stream if e.action == "impression")
    # a uniform world would give the top 10% of users 10% of events; Zipf gives far more
    assert _top_share(users, CONFIG.users, 0.10) > 0.40
    assert _top_share(items, CONFIG.items, 0.01) > 0.08
    assert len(items) > CONFIG.items / 2  # while the long tail is still reached


def test_engagement_rises_with_affinity_and_hides_are_off_interest(stream: list[tuple[int, Event, int]]) -> None:
    impressions = Counter(a for _, e, a in stream if e.action == "impression")
    clicks = Counter(a for _, e, a in stream if e.action == "click")
    ctr = {a: clicks[a] / impressions[a] for a in (OFF, INTEREST, INTENT)}
    assert ctr[INTENT] > 2 * ctr[INTEREST] > 2 * ctr[OFF] > 0
    hides = Counter(a for _, e, a in stream if e.action == "hide")
    assert hides[OFF] / sum(hides.values()) > 0.7


def test_follow_ups_refer_to_an_earlier_impression_of_the_same_item(stream: list[tuple[int, Event, int]]) -> None:
    shown: dict[tuple[str, str], int] = {}
    checked = 0
    for e in sorted((e for _, e, _ in stream), key=lambda e: (e.ts, e.action != "impression")):
        key = (e.user_id, e.item_id)
        if e.action == "impression":
            shown[key] = e.ts
        else:
            assert key in shown and 0 <= e.ts - shown[key] <= 10 * 60_000, e
            checked += 1
    assert checked > 1000


def test_event_time_increases_with_a_few_late_arrivals(stream: list[tuple[int, Event, int]]) -> None:
    arrivals = [a for a, _, _ in stream]
    assert arrivals == sorted(arrivals)
    newest, late, max_late = 0, 0, 0
    for _, e, _ in stream:
        if e.ts < newest:
            late += 1
            max_late = max(max_late, newest - e.ts)
        newest = max(newest, e.ts)
    assert 0 < late / len(stream) < 0.03
    assert max_late <= 5_000


def test_recent_actions_predict_engagement(stream: list[tuple[int, Event, int]]) -> None:
    """The realtime sequence matters: an impression in the cluster of the user's last click is clicked far
    more often than one in another of the user's clusters."""
    sim = make(warmup_ms=0)
    cluster = {item_id: sim.item_cluster[i] for i, item_id in enumerate(sim.item_ids)}
    last_click: dict[str, int] = {}
    shown: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    clicked: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    pending: dict[tuple[str, str], int] = {}
    for _, e, _ in stream:
        if e.action == "impression":
            if e.user_id in last_click:
                same = int(cluster[e.item_id] == last_click[e.user_id])
                shown[e.user_id][same] += 1
                pending[(e.user_id, e.item_id)] = same
        elif e.action == "click":
            same = pending.pop((e.user_id, e.item_id), None)
            if same is not None:
                clicked[e.user_id][same] += 1
            last_click[e.user_id] = cluster[e.item_id]
    ctr_same = sum(c[1] for c in clicked.values()) / sum(s[1] for s in shown.values())
    ctr_other = sum(c[0] for c in clicked.values()) / sum(s[0] for s in shown.values())
    assert ctr_same > 2 * ctr_other, (ctr_same, ctr_other)


def test_item_vectors_cluster(tmp_path: Path) -> None:
    sim = make(warmup_ms=0)
    vecs = item_vectors(sim.config, sim.item_cluster)
    assert vecs.shape == (CONFIG.items, CONFIG.dim) and vecs.dtype == np.float32
    assert np.allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    labels = np.asarray(sim.item_cluster)
    sims = vecs[:300] @ vecs[:300].T
    same = labels[:300, None] == labels[None, :300]
    np.fill_diagonal(same, False)
    assert sims[same].mean() > 0.5 > 0.1 > abs(sims[~same].mean())
    path = tmp_path / "items.jsonl"
    assert write_items(sim, path) == CONFIG.items
    first = orjson.loads(path.read_bytes().splitlines()[0])
    assert set(first) == {"item_id", "vector", "cluster"} and len(first["vector"]) == CONFIG.dim


def test_cli_out_mode_is_deterministic_and_loadable(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["simulate", "--users", "200", "--items", "1000", "--clusters", "8", "--seed", "5", "--days", "2",
            "--events", "20000", "--end-ms", str(END), "--no-progress"]
    a, b, items = tmp_path / "a.jsonl", tmp_path / "b.jsonl", tmp_path / "items.jsonl"
    assert main([*args, "--out", str(a), "--items-out", str(items)]) == 0
    assert main([*args, "--out", str(b)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert a.read_bytes() == b.read_bytes()
    events = [orjson.loads(line) for line in a.read_bytes().splitlines()]
    assert 15_000 < len(events) < 25_000
    ts = [e["ts"] for e in events]
    assert END - 2 * 86_400_000 <= min(ts) and max(ts) < END and max(ts) - min(ts) > 1.5 * 86_400_000
    item_ids = {orjson.loads(line)["item_id"] for line in items.read_bytes().splitlines()}
    assert {e["item_id"] for e in events} <= item_ids


def test_cli_refuses_history_older_than_the_window(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["simulate", "--out", str(tmp_path / "x.jsonl"), "--days", "45"]) == 2
    assert "--days must be in (0, 29]" in capsys.readouterr().err
    assert not (tmp_path / "x.jsonl").exists()
