"""Load the worker's models from the checkpoints named in :class:`~streams.settings.WorkerSettings`.

Two TransAct models (Xia et al., KDD 2023) serve a worker; both are optional:

* ``ACTIONSTREAM_TRANSACT_CHECKPOINT``: the early-fusion :class:`~transact.model.RankingModel`, wrapped in a
  :class:`transact.inference.Scorer` for ``POST /v1/users/{id}/score`` (uses the PinnerFormer daily vector
  too when the model was trained with ``daily_dim > 0``: the paper's hybrid, PinnerFormer sec. 5);
* ``ACTIONSTREAM_REALTIME_CHECKPOINT``: a candidate-free TransAct (``early_fusion=False``, or a RankingModel
  trained with ``realtime_input=True``), wrapped in a :class:`transact.inference.Encoder`: the realtime user
  vectors of ``GET /v1/users/{id}/features`` (:mod:`streams.realtime`). It may be the same file as the
  ranking checkpoint when that model is candidate-free.

Item vectors come from ``ACTIONSTREAM_ITEMS_PATH`` (a JSONL file, loaded into memory, or a RocksDB
:class:`~streams.items.ItemStore` directory, opened read-only so several workers can share it); without it
every item uses the learned hashed-id embedding.

Fail fast: a checkpoint that is missing, unreadable, of the wrong kind, or built for another action vocabulary
or item vector size stops the worker at start-up with :class:`~streams.errors.ConfigError` naming the variable.
No checkpoint configured is not an error: the worker runs without vectors (``realtime: []``, score 503) and
``actionstream_model_loaded{model}`` says 0.

Model labels of ``actionstream_model_loaded`` / ``actionstream_model_info``: ``transact`` (the ranking model,
as the ops alert expects), ``transact_realtime`` (the realtime encoder; ours, not in the metrics contract's
list) and ``pinnerformer_daily`` (set by :mod:`streams.daily` once daily records arrive).

Rolling in a new checkpoint (issue 5): state never depends on the model. Sequences live in RocksDB + their
changelog; realtime vectors are derived state tagged with the model version (:mod:`streams.realtime`) and
are recomputed under the new version on the next action or read. So a rolling restart of the workers with
the new ``ACTIONSTREAM_TRANSACT_CHECKPOINT`` / ``ACTIONSTREAM_REALTIME_CHECKPOINT`` is enough: each restarted
worker recovers its partitions from local RocksDB (or the changelog) and serves the new model. Without a
restart: replace the checkpoint files (atomically: write, then ``mv``) and send the worker ``SIGHUP``
(:func:`streams.hybrid.reload_models`); a checkpoint that fails to load is logged and the old models stay.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from streams.errors import ConfigError
from streams.items import ItemLookup
from streams.metrics import WorkerMetrics
from streams.settings import WorkerSettings

__all__ = ["MODEL_DAILY", "MODEL_RANKING", "MODEL_REALTIME", "Models", "load_items", "load_models",
           "set_model_gauges"]

log = logging.getLogger(__name__)

MODEL_RANKING = "transact"
MODEL_REALTIME = "transact_realtime"
MODEL_DAILY = "pinnerformer_daily"


@dataclass
class Models:
    """What :func:`load_models` found: each part is None when not configured."""

    scorer: Any = None  # transact.inference.Scorer
    encoder: Any = None  # transact.inference.Encoder
    items: ItemLookup | None = None


def load_items(path: Path | None) -> ItemLookup | None:
    """A JSONL item file (into memory) or an ItemStore directory (read-only); None without a path."""
    if path is None:
        return None
    from streams.items import ItemStore, MemoryItemStore

    try:
        return ItemStore(path, read_only=True) if Path(path).is_dir() else MemoryItemStore.from_file(path)
    except Exception as exc:  # noqa: BLE001 - any load failure is a configuration problem here
        raise ConfigError(f"ACTIONSTREAM_ITEMS_PATH: cannot load item vectors from {path}: {exc}") from None


def _check_vocab(var: str, path: Path, vocab: dict[str, Any], n_actions: int, item_dim: int,
                 settings: WorkerSettings, items: ItemLookup | None) -> None:
    """The checkpoint must read the worker's action codes and item vectors the way it was trained."""
    trained = vocab.get("actions")
    if trained is not None and tuple(trained) != tuple(settings.actions):
        raise ConfigError(f"{var}: {path} was trained with actions {list(trained)} but the worker uses "
                          f"ACTIONSTREAM_ACTIONS={','.join(settings.actions)}: action codes would not match")
    if n_actions < len(settings.actions) + 1:
        raise ConfigError(f"{var}: {path} knows {n_actions - 1} actions, the worker's vocabulary has "
                          f"{len(settings.actions)}")
    if items is not None and items.dim != item_dim:
        raise ConfigError(f"{var}: {path} expects {item_dim}-d item vectors but ACTIONSTREAM_ITEMS_PATH holds "
                          f"{items.dim}-d vectors")


def torch_threads_for_scoring() -> None:
    """Parallel candidate slices each run torch single-threaded (transact.inference.Scorer)."""
    import torch

    if torch.get_num_threads() != 1:
        log.warning("ACTIONSTREAM_SCORE_THREADS > 1: torch intra-op threads set to 1 for the whole process "
                    "(ACTIONSTREAM_TORCH_THREADS=%d is overridden)", torch.get_num_threads())
        torch.set_num_threads(1)


def load_models(settings: WorkerSettings) -> Models:
    """Load the configured checkpoints (CPU, eval mode). Raises :class:`ConfigError` on any problem."""
    from transact.inference import Encoder, Scorer, bf16_for

    models = Models(items=load_items(settings.items_path))
    threads = settings.torch_threads
    if settings.transact_checkpoint is not None:
        path, var = Path(settings.transact_checkpoint), "ACTIONSTREAM_TRANSACT_CHECKPOINT"
        try:
            scorer = Scorer.from_checkpoint(path, models.items, threads=settings.score_threads,
                                            int8_cross=settings.score_int8_dcn, bf16=bf16_for(settings.score_bf16))
        except Exception as exc:  # noqa: BLE001 - unreadable, wrong format, wrong kind
            raise ConfigError(f"{var}: cannot load {path}: {type(exc).__name__}: {exc}") from None
        t = scorer.cfg.encoder_config
        _check_vocab(var, path, scorer.vocab, t.n_actions, t.item_dim, settings, models.items)
        models.scorer = scorer
        log.info("ranking model %s loaded from %s (heads %s, daily_dim %d, DCN %s, transformer GEMMs %s)",
                 scorer.model_version, path, ",".join(scorer.heads), scorer.cfg.daily_dim,
                 "float32" if scorer.cross8 is None else "int8", "bf16" if scorer.bf16 else "float32")
    if settings.realtime_checkpoint is not None:
        path, var = Path(settings.realtime_checkpoint), "ACTIONSTREAM_REALTIME_CHECKPOINT"
        try:
            encoder = Encoder.from_checkpoint(path, models.items, threads=threads)
        except Exception as exc:  # noqa: BLE001
            raise ConfigError(f"{var}: cannot load {path}: {type(exc).__name__}: {exc}") from None
        _check_vocab(var, path, encoder.vocab, encoder.cfg.n_actions, encoder.cfg.item_dim, settings, models.items)
        models.encoder = encoder
        if settings.encoder_process:
            from streams.encoder_process import EncoderProcess
            models.encoder = EncoderProcess(encoder, path, settings.items_path, threads=threads,
                                            nice=settings.encoder_nice)
        log.info("realtime encoder %s loaded from %s (%d-d vectors)", encoder.model_version, path, encoder.out_dim)
    if settings.score_threads > 1:
        torch_threads_for_scoring()
    return models


def set_model_gauges(metrics: WorkerMetrics, models: Models, previous: Models | None = None) -> None:
    """``model_loaded`` 0/1 for every model label from start-up (alerts need the series) + ``model_info``.

    ``previous``: the models being replaced (a reload): their ``model_info`` series are removed.
    """
    pairs = ((MODEL_RANKING, models.scorer, previous.scorer if previous else None),
             (MODEL_REALTIME, models.encoder, previous.encoder if previous else None))
    for label, model, old in pairs:
        if old is not None:
            try:
                metrics.model_info.remove(label, str(old.model_version))
            except KeyError:
                pass
        metrics.model_loaded.labels(model=label).set(1 if model is not None else 0)
        if model is not None:
            metrics.model_info.labels(model=label, version=str(model.model_version)).set(1)
    if previous is None:
        metrics.model_loaded.labels(model=MODEL_DAILY).set(0)  # streams.hybrid sets 1 once records arrive
