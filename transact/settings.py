"""Settings of the TransAct training, evaluation and ablation processes (one frozen object per process).

Every field reads ``ACTIONSTREAM_<FIELD>`` (e.g. ``ACTIONSTREAM_EPOCHS=5``); command-line options win.
The event vocabulary and the sequence store's ``sequence_length``/``window_days`` come from
:class:`~streams.settings.EventSettings`, i.e. the SAME variables the worker reads, so offline sequences
are built exactly like the stored ones.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from streams.settings import CsvTuple, EventSettings, _split_csv

__all__ = ["AblateSettings", "DataSettings", "EvalSettings", "MovieLensSettings", "TrainSettings"]


class DataSettings(EventSettings):
    """Where the events/items are and how point-in-time examples are defined (see :mod:`transact.data`)."""

    events: Path = Field(description="event JSONL file or archive directory")
    items: Path | None = Field(None, description="item vectors JSONL (item_id, vector); none = hashed ids only")
    heads: CsvTuple = ("click", "save", "hide")
    negative_heads: CsvTuple = ("hide",)
    request_ms: int = Field(2_000, ge=1, description="impressions within this long of a request's first form it")
    label_window_ms: int = Field(600_000, ge=0, description="an action this long after an impression labels it")
    eval_fraction: float = Field(0.2, gt=0, lt=1, description="last fraction of request time held out")
    batch_size: int = Field(512, ge=1, le=1_000_000)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    threads: int = Field(0, ge=0, le=1024, description="torch intra-op threads; 0 = torch's default")
    seed: int = 0

    @field_validator("heads", "negative_heads", mode="before")
    @classmethod
    def _csv_heads(cls, v: Any) -> Any:
        return _split_csv(v)

    @field_validator("events")
    @classmethod
    def _events_exist(cls, v: Path) -> Path:
        if not Path(v).exists():
            raise ValueError(f"no event file or archive directory at {v}")
        return v

    @field_validator("items")
    @classmethod
    def _items_exist(cls, v: Path | None) -> Path | None:
        if v is not None and not Path(v).is_file():
            raise ValueError(f"no item file at {v}")
        return v

    @model_validator(mode="after")
    def _check_heads(self) -> DataSettings:
        for h in self.heads:
            if h not in self.actions:
                raise ValueError(f"heads: {h!r} is not in the action vocabulary {list(self.actions)}")
        return self


class TrainSettings(DataSettings):
    """``actionstream train transact``."""

    out: Path = Path("runs/transact")
    config: Literal["tiny", "small", "default"] = "default"
    sequence_encoder: Literal["transact", "average", "none"] = "transact"
    seq_len: int | None = Field(None, ge=1, le=10_000, description="model sequence length; default from --config")
    epochs: int = Field(3, ge=1, le=1000)
    lr: float = Field(1e-2, gt=0, le=1.0, description="peak AdamW learning rate (see transact.train)")
    weight_decay: float = Field(0.0, ge=0)
    warmup_fraction: float = Field(0.05, ge=0, lt=1, description="linear LR warm-up, then cosine (paper)")
    hide_weight: float = Field(1.0, ge=0, description="label-weight matrix M[h][hide]: a hidden item's click/save "
                               "negatives count this much (paper: 100, for Pinterest's labels; 1 here, see "
                               "transact.train)")
    time_window_ms: int = Field(0, ge=0, description="random time-window mask T ~ U[0, this] in training; 0 = off "
                                "(paper: 24 h = 86400000, for Pinterest's long sequences; why off: transact.train)")
    hash_buckets: int = Field(100_003, ge=2)
    max_train_examples: int | None = Field(None, ge=1, description="subsample train examples (quick runs)")
    max_eval_examples: int | None = Field(None, ge=1, description="subsample eval requests to about this many examples")


class EvalSettings(DataSettings):
    """``actionstream eval transact``."""

    checkpoint: Path
    out: Path | None = None
    split: Literal["eval", "all"] = "eval"

    @field_validator("checkpoint")
    @classmethod
    def _ckpt(cls, v: Path) -> Path:
        if not Path(v).is_file():
            raise ValueError(f"no checkpoint file at {v}")
        return v


class AblateSettings(TrainSettings):
    """``actionstream ablate transact``."""

    out: Path = Path("runs/ablate-transact")
    variants: CsvTuple = ()  # empty = all (transact.ablate.VARIANTS)

    @field_validator("variants", mode="before")
    @classmethod
    def _csv_variants(cls, v: Any) -> Any:
        return _split_csv(v)


class MovieLensSettings(EventSettings):
    """``actionstream data movielens``."""

    out: Path = Path("data/movielens")
    source: Path | None = Field(None, description="ml-100k directory; default: the installed recbole wheel's")
