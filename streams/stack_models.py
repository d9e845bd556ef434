"""Models for the local stack: `actionstream up` trains small real models once, before the workers start.

Without configured checkpoints the worker serves no realtime vectors and ``score`` answers 503. So, when
``ACTIONSTREAM_TRANSACT_CHECKPOINT`` / ``ACTIONSTREAM_REALTIME_CHECKPOINT`` are not set, :func:`bootstrap_models`
writes under ``<stack dir>/models/``:

1. ``history.jsonl`` + ``items.jsonl``: 28 days of simulated history (:mod:`streams.simulate`, the ``--out``
   mode with ``--items-out``) of the SAME world (seed, users, items) the demo traffic comes from, so the
   item vectors and interests the models learn are the ones the workers see;
2. ``pinnerformer/model.pt``: a tiny PinnerFormer (:func:`embeddings.train.train_model`, dense all-action
   loss), reused by ``actionstream demo`` for its daily job;
3. ``transact/model.pt``: the early-fusion TransAct ranking model, heads click/save/hide, trained with
   :func:`transact.train.train_model` on point-in-time examples of the history JOINED with the user's
   PinnerFormer vector of the day before the request (:func:`daily_features`, the join of ``experiment
   hybrid``: what yesterday's daily job would have published), so ``daily_dim`` = the PinnerFormer size
   and the score route uses both vectors (the hybrid, PinnerFormer paper sec. 5);
4. ``realtime/model.pt``: a candidate-free TransAct (``RankingConfig(realtime_input=True)``), the worker's
   realtime user vectors;
5. ``models.json``: what was trained, on what, the held-out metrics and seconds per step.

Later ``up`` runs reuse the files (``--retrain-models`` forces, ``--no-models`` skips). Sized to train in
well under a minute on 2 CPU cores: these models show the platform working end to end, not model quality
(``actionstream train transact|pinnerformer`` and ``ablate transact`` measure that).

Where we differ from the papers: tiny models (TransAct preset ``tiny``, 1-layer PinnerFormer of width 32) and
few steps; the PinnerFormer is trained on the same history the ranking examples come from (its own held-out
split only guards its Recall@10); the daily vector of a request is the embedding of the user's actions
before the request's UTC day (no vector: ``daily_mask`` 0, as for a user without a record in the worker).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from streams.errors import ActionstreamError
from transact.data import PointInTimeData

__all__ = ["ModelFiles", "WorldSpec", "bootstrap_models", "daily_features", "transact_settings"]

log = logging.getLogger(__name__)

DAY_MS = 86_400_000


@dataclass(frozen=True)
class WorldSpec:
    """The simulated world and training budget of the bootstrap (the demo's traffic must use the same world)."""

    users: int = 200
    items: int = 2000
    seed: int = 7
    days: float = 28.0
    events: int = 40_000
    item_dim: int = 16
    pinnerformer_steps: int = 60
    pinnerformer_dim: int = 32
    transact_epochs: int = 2
    threads: int = 1  # measured: 2 threads on 2 busy shared cores were slower (OpenMP spinning)


@dataclass(frozen=True)
class ModelFiles:
    """Paths of the bootstrapped models under ``<stack dir>/models``."""

    root: Path

    @property
    def history(self) -> Path:
        return self.root / "history.jsonl"

    @property
    def items(self) -> Path:
        return self.root / "items.jsonl"

    @property
    def pinnerformer(self) -> Path:
        return self.root / "pinnerformer" / "model.pt"

    @property
    def ranking(self) -> Path:
        return self.root / "transact" / "model.pt"

    @property
    def realtime(self) -> Path:
        return self.root / "realtime" / "model.pt"

    @property
    def manifest(self) -> Path:
        return self.root / "models.json"

    def complete(self) -> bool:
        """All files of a finished bootstrap exist (the manifest is written last)."""
        return all(p.is_file() for p in (self.items, self.pinnerformer, self.ranking, self.realtime, self.manifest))

    def read_manifest(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.manifest.read_text())
        return data


def daily_features(data: PointInTimeData, model: Any, corpus: Any, batch_size: int = 256) -> Any:
    """``data`` joined with each request's served daily vector: the user's PinnerFormer embedding of the actions
    before the request's UTC day (:func:`embeddings.hybrid_experiment.daily_vectors`, the experiment's join).

    Args:
        data: point-in-time examples (R requests).
        model: an :class:`embeddings.pinnerformer.PinnerFormer` in eval mode (emb_dim D).
        corpus: the :class:`embeddings.data.Corpus` of the same events (built like the daily job builds it).
    Returns:
        :class:`embeddings.hybrid_experiment.DailyPointInTimeData`: daily (R, D) float32, daily_mask (R,) bool.
    """
    from embeddings.hybrid_experiment import DailyPointInTimeData, daily_vectors

    daily, mask, counts = daily_vectors(model, corpus, data.users, data.request_user, data.request_ts, batch_size)
    log.info("daily vectors: %d of %d requests have one (%d distinct user-days)", counts["with_daily"],
             counts["requests"], counts["embedded"])
    return DailyPointInTimeData.attach(data, daily, mask)


class _Steps:
    """One log line per bootstrap step, with its duration."""

    def __init__(self, total: int) -> None:
        self.total, self.n = total, 0
        self.seconds: dict[str, float] = {}
        self.what, self.t0 = "", time.perf_counter()
        self.t = self.t0

    def start(self, what: str) -> None:
        self.n += 1
        self.what, self.t = what, time.perf_counter()
        log.info("models [%d/%d] %s ...", self.n, self.total, what)

    def done(self, detail: str) -> None:
        dt = time.perf_counter() - self.t
        self.seconds[self.what] = round(dt, 1)
        log.info("models [%d/%d] %s: %s (%.1f s)", self.n, self.total, self.what, detail, dt)


def _simulate(files: ModelFiles, w: WorldSpec) -> int:
    from streams.events import now_ms
    from streams.simulate import SimConfig, Simulator, write_items, write_jsonl

    end = now_ms()
    span = int(w.days * DAY_MS)
    sim = Simulator(SimConfig(users=w.users, items=w.items, dim=w.item_dim, seed=w.seed),
                    rate=w.events / (span / 1000), start_ms=end - span, end_ms=end, warmup_ms=min(span, 600_000))
    write_items(sim, files.items)
    return sum(write_jsonl(sim, files.history, progress=False).values())


def _train_pinnerformer(files: ModelFiles, w: WorldSpec, progress: bool) -> tuple[Any, Any, dict[str, Any]]:
    from embeddings.data import PositiveRule, build_corpus
    from embeddings.pinnerformer import save_checkpoint
    from embeddings.settings import PinnerFormerSettings
    from embeddings.train import load_corpus, train_model
    from streams.archive import read_events
    from streams.items import MemoryItemStore

    s = PinnerFormerSettings.load(pf_steps=w.pinnerformer_steps, pf_batch_size=32, pf_width=32, pf_layers=1,
                                  pf_heads=2, pf_max_len=64, pf_emb_dim=w.pinnerformer_dim, pf_positions=8,
                                  pf_random_negatives=256, pf_id_buckets=4099, pf_threads=w.threads,
                                  pf_seed=w.seed)
    model, metrics = train_model(s, load_corpus(s, files.history, files.items), progress=progress)
    meta = {"settings": s.model_dump(mode="json"), "cut_ms": metrics["cut_ms"], "input_exclude": ["impression"],
            "recall_at_10": metrics["recall_at_k"], "model_version": f"pinnerformer-stack-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"}
    save_checkpoint(files.pinnerformer, model, meta)
    model.eval()
    # the corpus exactly as the daily job builds it from this checkpoint (impressions are not model input)
    corpus = build_corpus(read_events(files.history), MemoryItemStore.from_file(files.items), actions=s.actions,
                          surfaces=s.surfaces, rule=PositiveRule(min_dwell_ms=s.pf_min_dwell_ms),
                          input_exclude=("impression",), id_buckets=model.cfg.id_buckets, item_dim=model.cfg.item_dim)
    return model, corpus, {k: metrics[k] for k in ("recall_at_k", "popularity_recall_at_k", "users") if k in metrics}


def transact_settings(files: ModelFiles, w: WorldSpec) -> Any:
    """The :class:`transact.settings.TrainSettings` of both bootstrap TransAct trainings (preset ``tiny``)."""
    from transact.settings import TrainSettings

    return TrainSettings.load(events=files.history, items=files.items, out=files.ranking.parent, config="tiny",
                              epochs=w.transact_epochs, batch_size=256, hash_buckets=4099, seed=w.seed, device="cpu")


def _train_transact(s: Any, data: PointInTimeData, out: Path, *, daily_dim: int, realtime: bool,
                    progress: bool) -> dict[str, Any]:
    from dataclasses import replace

    from transact.model import save_checkpoint
    from transact.train import model_config, train_model, vocab_of

    cfg = replace(model_config(s, n_actions=len(s.actions) + 1, item_dim=data.table.dim), daily_dim=daily_dim,
                  realtime_input=realtime)
    train_idx, eval_idx = data.split()
    name = "realtime-tiny" if realtime else ("hybrid-tiny" if daily_dim else "transact-tiny")
    res = train_model(cfg, data, train_idx, eval_idx, epochs=s.epochs, batch_size=s.batch_size, lr=s.lr,
                      seed=s.seed, device="cpu", negative_heads=tuple(s.negative_heads), progress=progress,
                      desc=f"train {name}", eval_each_epoch=False)
    vocab = vocab_of(s, data, cfg, name)
    vocab["model_version"] = f"{name}-stack-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}"
    save_checkpoint(out, res.model.cpu(), cfg, vocab)
    final = res.history["final"]
    return {"model_version": vocab["model_version"], "daily_dim": daily_dim,
            "hit@3": {h: round(m["hit@3"], 4) for h, m in final.get("heads", {}).items()},
            "auc": {h: round(m["auc"], 4) for h, m in final.get("heads", {}).items()}}


def bootstrap_models(root: Path, world: WorldSpec = WorldSpec(), *, force: bool = False,
                     progress: bool = True) -> ModelFiles:
    """Train the stack's models into ``root`` unless a finished bootstrap is there (``force`` retrains).

    Raises :class:`ActionstreamError` when a step fails (the message names it).
    """
    files = ModelFiles(Path(root))
    if files.complete() and not force:
        log.info("models: reusing %s (trained %s; --retrain-models to train again)", files.root,
                 files.read_manifest().get("trained_at", "?"))
        return files
    files.root.mkdir(parents=True, exist_ok=True)
    files.manifest.unlink(missing_ok=True)
    before = torch.get_num_threads()
    torch.set_num_threads(world.threads)
    steps = _Steps(5)
    try:
        steps.start(f"simulating {world.days:g} days of history ({world.users} users, {world.items} items, "
                    f"seed {world.seed})")
        n = _simulate(files, world)
        steps.done(f"{n} events in {files.history}, {world.item_dim}-d item vectors in {files.items}")

        steps.start(f"training PinnerFormer ({world.pinnerformer_steps} steps)")
        pf, corpus, pf_metrics = _train_pinnerformer(files, world, progress)
        steps.done(f"held-out Recall@10 {pf_metrics.get('recall_at_k', float('nan')):.3f}, {files.pinnerformer}")

        from transact.train import PRESETS, load_data

        steps.start("point-in-time examples + yesterday's PinnerFormer vector per request")
        ts = transact_settings(files, world)
        data = load_data(ts, seq_len=PRESETS[ts.config]["transact"]["seq_len"], hash_buckets=ts.hash_buckets,
                         progress=False)
        joined = daily_features(data, pf, corpus)
        steps.done(f"{len(data)} examples in {len(data.request_ts)} requests, "
                   f"{int(joined.daily_mask.sum())} with a daily vector")

        steps.start("training the early-fusion TransAct ranking model (hybrid: + daily vector)")
        ranking = _train_transact(ts, joined, files.ranking, daily_dim=pf.cfg.emb_dim, realtime=False,
                                  progress=progress)
        steps.done(f"eval HIT@3 {ranking['hit@3']}, {files.ranking}")

        steps.start("training the candidate-free realtime TransAct")
        realtime = _train_transact(ts, data, files.realtime, daily_dim=0, realtime=True,
                                   progress=progress)
        steps.done(f"eval HIT@3 {realtime['hit@3']}, {files.realtime}")
    except ActionstreamError:
        raise
    except Exception as exc:  # noqa: BLE001 - name the step that failed
        raise ActionstreamError(f"training the stack's models failed at step '{steps.what}': "
                                f"{type(exc).__name__}: {exc}") from exc
    finally:
        torch.set_num_threads(before)
    manifest = {"trained_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "world": world.__dict__, "history": str(files.history), "items": str(files.items),
                "pinnerformer": {"path": str(files.pinnerformer), **pf_metrics},
                "ranking": {"path": str(files.ranking), **ranking},
                "realtime": {"path": str(files.realtime), **realtime},
                "seconds": steps.seconds, "total_seconds": round(time.perf_counter() - steps.t0, 1)}
    files.manifest.write_text(json.dumps(manifest, indent=2))
    log.info("models: trained in %.0f s into %s", manifest["total_seconds"], files.root)
    return files
