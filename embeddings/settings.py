"""Settings of the PinnerFormer processes (one frozen object per process, built at the entry point).

Every field reads ``ACTIONSTREAM_<FIELD>`` (e.g. ``ACTIONSTREAM_PF_STEPS=2000``); command-line options win.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from streams.settings import EventSettings, KafkaSettings

__all__ = ["DailySettings", "PinnerFormerSettings"]


class PinnerFormerSettings(EventSettings):
    """`actionstream train|eval pinnerformer` and the objective comparison."""

    pf_objective: Literal["dense_all_action", "all_action", "next_action", "sasrec"] = "dense_all_action"
    pf_label_window_days: float = Field(28.0, gt=0, description="K: dense/all-action labels from the next K days")
    pf_eval_horizon_days: float = Field(14.0, gt=0, description="Recall@10 positives in (t, t + horizon]")
    pf_eval_cut: Literal["global", "per_user"] = Field(
        "global", description="global: one cut t = last event - horizon (train on events <= t); per_user: each "
                              "held-out user's median action (train users' full timelines)")
    pf_eval_fraction: float = Field(0.2, gt=0, lt=1, description="share of users held out for evaluation")
    pf_min_dwell_ms: int = Field(10_000, ge=0, description="click/closeup count as positive from this dwell")
    pf_steps: int = Field(600, ge=1)
    pf_batch_size: int = Field(64, ge=2)
    pf_positions: int = Field(16, ge=1, description="dense: sampled positions per sequence")
    pf_random_negatives: int = Field(1024, ge=0)
    pf_lr: float = Field(1e-3, gt=0)
    pf_weight_decay: float = Field(0.01, ge=0)
    pf_logq: bool = True
    pf_seed: int = 0
    pf_threads: int = Field(2, ge=1)
    pf_eval_every: int = Field(0, ge=0, description="evaluate every N steps for the learning curve (0 = end only)")
    # model (PinnerFormerConfig)
    pf_max_len: int = Field(256, ge=2)
    pf_width: int = Field(128, ge=8)
    pf_layers: int = Field(2, ge=1)
    pf_heads: int = Field(4, ge=1)
    pf_emb_dim: int = Field(64, ge=4)
    pf_id_buckets: int = Field(32_768, ge=0)
    pf_dropout: float = Field(0.1, ge=0, lt=1)
    pf_time_since_latest: bool = True


class DailySettings(KafkaSettings, EventSettings):
    """`actionstream daily`: the daily embedding job."""

    daily_archive: Path = Path(".actionstream/archive")
    daily_snapshots: Path = Path(".actionstream/snapshots")
    daily_checkpoint: Path = Path("runs/pinnerformer/model.pt")
    daily_items: Path | None = Field(None, description="item vectors: JSONL file or ItemStore (RocksDB) dir")
    daily_batch_size: int = Field(128, ge=1)
    daily_active_hours: float = Field(24.0, gt=0, description="re-embed users active in this many hours")
    daily_publish: bool = True
    daily_atol: float = Field(1e-6, ge=0, description="vectors closer than this count as unchanged")
    daily_threads: int = Field(2, ge=1)
