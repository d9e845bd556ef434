"""TransAct: a transformer over a user's realtime actions, inside a DCN v2 multi-head ranker.

Paper: Xia et al., "TransAct: Transformer-based Realtime User Action Model for Recommendation at
Pinterest", KDD 2023 (arXiv 2306.00248); official module: github.com/pinterest/transformer_user_action.
Facts used here are collected in ``shared/reference/transact.md``.

Pieces (shapes: B batch, S sequence length, Di item dim, Da action-embedding dim, d model dim):

* :class:`ItemEncoder`: an item's content vector (PinSage in the paper) where the item store has one,
  else a learned hashed-id embedding (hash 0 = padding -> zeros).
* :class:`TransAct`: per action ``[action_emb (Da); item (Di)]``, with early fusion the candidate's
  vector concatenated to every row (d = Da + 2 Di = 96, "concat" in the paper), a 2-layer, 1-head
  ``nn.TransformerEncoder`` (FFN 32, dropout 0.1, no positional encoding), output
  ``flatten([o_0 .. o_{K-1}, maxpool_S(O)])`` with K = 10: (B, (K+1) d) = (B, 1056).
  With ``early_fusion=False`` it is candidate-free (d = 64, out 704): the realtime user vector the
  stream worker stores.
* :class:`RankingModel`: the host ranker: ``[sequence output; PinnerFormer daily vector (optional);
  candidate vector]`` -> full-rank DCN v2 cross layers -> MLP -> one logit per head, trained with the
  paper's weighted multi-head BCE (label-weight matrix M[h][a], Appendix A).

Where we differ, and why:

* 1 head (paper) not 2 (official code). Window T ~ U[0, 24 h] drawn PER EXAMPLE with torch's RNG
  (paper), not one Python ``random`` draw per batch with a 1 h default (code); reproducible with a seed.
* Padding is masked out of attention AND of the output: padded positions are zeroed before the
  encoder (so their values cannot matter), give zeros in the first-K columns and -inf before the
  max-pool. The official code pools over padded positions too.
* Actions hidden by the time-window mask are hidden everywhere (attention keys, first-K, max-pool),
  not only as attention keys: otherwise their own content still reaches the output through the
  residual path and the mask does not hide them. Only in training; at inference nothing but padding is
  masked (the official code also masks actions newer than the request at eval; our sequences are
  built strictly before the request, and the stream accepts up to 5 min of clock skew).
* Never a fully masked row: if the window would hide every action of a row, its newest action stays
  visible (FuxiCTR's rule, closer to the paper than the official code's "never mask index 0"); an
  empty sequence attends to one zeroed position and its output is all zeros (no NaN).
* Action code 0 is padding only (our codes are 1-based); the official lookup table also maps raw
  action 0 to padding. No ``out_linear`` on the max-pool (official code, not in the paper): the DCN's
  first cross layer is a learned linear map of the same vector.
* The ranker is a reduced Pinnability: no other user/context features, no wide part, no user weights
  (w_u = 1); head weights ``w_h = max(1, sum_a M[h,a] y_a)`` so an example with no engagement keeps
  weight 1 (the paper's formula gives it weight 0 if the matrix has no base term). The training default
  hide weight is 1, not the paper's 100 (``TrainSettings.hide_weight``, why in :mod:`transact.train`);
  :func:`default_label_weights` keeps 100 as its own default so the paper's matrix stays one call away.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["CHECKPOINT_FORMAT", "ItemEncoder", "RankingConfig", "RankingModel", "TransAct", "TransActConfig",
           "default_label_weights", "label_weight_matrix", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "actionstream.transact/1"


@dataclass(frozen=True)
class TransActConfig:
    n_actions: int = 8  # vocab INCLUDING padding code 0 (7 default actions + padding)
    action_emb_dim: int = 32  # Da
    item_dim: int = 32  # Di (PinSage: 32)
    seq_len: int = 100  # S: the latest 100 actions, newest first
    num_layers: int = 2
    nhead: int = 1  # paper: 1 (official code: 2)
    dim_feedforward: int = 32
    dropout: float = 0.1
    first_k: int = 10  # K newest output columns kept
    use_first_k: bool = True
    use_max_pool: bool = True
    early_fusion: bool = True  # concat the candidate's vector to every action row
    time_window_ms: int = 86_400_000  # paper: T ~ U[0, 24 h] per example (official code: 1 h)
    time_window_mask: bool = True  # training only
    hash_buckets: int = 100_003  # hashed-id fallback embedding rows (row 0 = padding)

    def __post_init__(self) -> None:
        if self.n_actions < 2:
            raise ValueError("n_actions counts padding code 0 and must be >= 2")
        if self.d_model % self.nhead:
            raise ValueError(f"d_model {self.d_model} is not divisible by nhead {self.nhead}")
        if not (self.use_first_k or self.use_max_pool):
            raise ValueError("at least one of use_first_k / use_max_pool must be on")
        if self.first_k < 1 or self.seq_len < 1 or self.time_window_ms < 0:
            raise ValueError("first_k and seq_len must be >= 1, time_window_ms >= 0")

    @property
    def d_model(self) -> int:
        return self.action_emb_dim + self.item_dim * (2 if self.early_fusion else 1)

    @property
    def out_dim(self) -> int:
        return self.d_model * (self.first_k * self.use_first_k + self.use_max_pool)


def default_label_weights(heads: tuple[str, ...], hide_weight: float = 100.0) -> tuple[tuple[float, ...], ...]:
    """M[h][a]: identity, plus a hide up-weighting every other head's (negative) label (paper App. A)."""
    m = [[1.0 if h == a else 0.0 for a in heads] for h in heads]
    if "hide" in heads:
        j = heads.index("hide")
        for i, h in enumerate(heads):
            if h != "hide":
                m[i][j] = hide_weight
    return tuple(tuple(r) for r in m)


@dataclass(frozen=True)
class RankingConfig:
    transact: TransActConfig = field(default_factory=TransActConfig)
    sequence_encoder: Literal["transact", "average", "none"] = "transact"
    daily_dim: int = 0  # PinnerFormer vector size; 0 = not used
    realtime_input: bool = False  # feed the candidate-free realtime vector (forces no early fusion)
    cross_layers: int = 2  # full-rank DCN v2
    mlp_dims: tuple[int, ...] = (128, 64)
    heads: tuple[str, ...] = ("click", "save", "hide")
    label_weights: tuple[tuple[float, ...], ...] | None = None  # M[h][a]; None = default_label_weights

    def __post_init__(self) -> None:
        if self.sequence_encoder not in ("transact", "average", "none"):
            raise ValueError(f"unknown sequence_encoder {self.sequence_encoder!r}")
        if not self.heads:
            raise ValueError("at least one head is required")
        m = self.weight_matrix()
        if len(m) != len(self.heads) or any(len(r) != len(self.heads) for r in m):
            raise ValueError(f"label_weights must be {len(self.heads)}x{len(self.heads)} (heads x labels)")

    def weight_matrix(self) -> tuple[tuple[float, ...], ...]:
        return self.label_weights if self.label_weights is not None else default_label_weights(self.heads)

    @property
    def encoder_config(self) -> TransActConfig:
        """The TransAct config actually built (``realtime_input`` turns early fusion off)."""
        t = self.transact
        if self.realtime_input and t.early_fusion:
            return TransActConfig(**{**asdict(t), "early_fusion": False})
        return t


class ItemEncoder(nn.Module):
    """Content vector where present, else a learned hashed-id embedding."""

    def __init__(self, item_dim: int, hash_buckets: int) -> None:
        super().__init__()
        self.item_dim = item_dim
        self.hashed = nn.Embedding(hash_buckets, item_dim, padding_idx=0)
        nn.init.normal_(self.hashed.weight, std=0.1)
        with torch.no_grad():
            self.hashed.weight[0].zero_()

    def forward(self, vec: Tensor, has_vec: Tensor, hash: Tensor) -> Tensor:
        """vec (…, Di) float, has_vec (…) bool, hash (…) long -> (…, Di)."""
        return torch.where(has_vec.unsqueeze(-1), vec, self.hashed(hash))


def window_keep(action: Tensor, action_ts: Tensor, request_ts: Tensor, window_ms: int | None) -> Tensor:
    """Positions a row may see, (B, S) bool: not padding and, when ``window_ms``, outside (req - T, req].

    T ~ U[0, window_ms] per row (torch RNG). A row whose real actions would all be hidden keeps its newest.
    """
    real = action != 0
    if not window_ms:
        return real
    t = torch.rand(action.shape[0], device=action.device, dtype=torch.float64) * window_ms  # (B,)
    age = (request_ts.unsqueeze(1) - action_ts).to(torch.float64)  # (B, S) ms
    keep = real & (age >= t.unsqueeze(1))
    lost = ~keep.any(1) & real[:, 0]
    keep[:, 0] |= lost  # newest first: index 0 is the newest real action
    return keep


class TransAct(nn.Module):
    """The TransAct sequence encoder; ``early_fusion=False`` gives the candidate-free realtime vector."""

    def __init__(self, cfg: TransActConfig, items: ItemEncoder | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.items = items if items is not None else ItemEncoder(cfg.item_dim, cfg.hash_buckets)
        self.action_emb = nn.Embedding(cfg.n_actions, cfg.action_emb_dim, padding_idx=0)
        layer = nn.TransformerEncoderLayer(cfg.d_model, cfg.nhead, cfg.dim_feedforward, cfg.dropout,
                                           batch_first=True)  # post-LN, ReLU: PyTorch defaults (official code)
        self.encoder = nn.TransformerEncoder(layer, cfg.num_layers, enable_nested_tensor=False)

    @property
    def out_dim(self) -> int:
        return self.cfg.out_dim

    def rows(self, batch: dict[str, Tensor], cand: Tensor | None) -> Tensor:
        """Encoder input (B, S, d): ``[action_emb; item (; cand)]``, zero at padded positions."""
        action = batch["action"]
        x = [self.action_emb(action), self.items(batch["item_vec"], batch["item_has_vec"], batch["item_hash"])]
        if self.cfg.early_fusion:
            if cand is None:
                raise ValueError("early fusion needs the candidate vector (cand (B, Di))")
            x.append(cand.unsqueeze(1).expand(-1, action.shape[1], -1))
        return torch.cat(x, -1).masked_fill((action == 0).unsqueeze(-1), 0.0)

    def forward(self, batch: dict[str, Tensor], cand: Tensor | None = None) -> Tensor:
        """batch: ``action`` (B,S), ``item_*`` (B,S,·), ``action_ts`` (B,S), ``request_ts`` (B,);
        cand: encoded candidate (B, Di), required with early fusion. Returns (B, out_dim)."""
        c = self.cfg
        x = self.rows(batch, cand)  # (B, S, d)
        window = c.time_window_ms if (self.training and c.time_window_mask) else None
        keep = window_keep(batch["action"], batch["action_ts"], batch["request_ts"], window)  # (B, S)
        ignore = ~keep
        ignore[:, 0] &= keep.any(1)  # an empty row attends to its (zeroed) first position: no NaN
        o = self.encoder(x, src_key_padding_mask=ignore)  # (B, S, d)
        return self.compress(o, keep)

    def compress(self, o: Tensor, keep: Tensor) -> Tensor:
        """o (B, S, d), keep (B, S) -> (B, out_dim): first K visible-or-zero columns + masked max-pool."""
        c = self.cfg
        parts = []
        if c.use_first_k:
            first = o[:, : c.first_k].masked_fill(~keep[:, : c.first_k].unsqueeze(-1), 0.0)
            if first.shape[1] < c.first_k:  # shorter than K (e.g. truncated at inference)
                first = F.pad(first, (0, 0, 0, c.first_k - first.shape[1]))
            parts.append(first.flatten(1))
        if c.use_max_pool:
            mx = o.masked_fill(~keep.unsqueeze(-1), -math.inf).amax(1)  # (B, d)
            parts.append(torch.where(keep.any(1, keepdim=True), mx, torch.zeros_like(mx)))
        return torch.cat(parts, 1)


class CrossLayer(nn.Module):
    """DCN v2 full-rank cross: x_{l+1} = x0 * (W x_l + b) + x_l."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, dim)
        nn.init.zeros_(self.linear.bias)
        nn.init.normal_(self.linear.weight, std=1.0 / dim)

    def forward(self, x0: Tensor, x: Tensor, linear: Callable[[Tensor], Tensor] | None = None) -> Tensor:
        """``linear``: another evaluation of ``W x + b`` (the serving path's int8 GEMM); default the layer's own."""
        return x0 * (self.linear if linear is None else linear)(x) + x


class RankingModel(nn.Module):
    """[sequence encoding; daily vector; candidate vector] -> DCN v2 -> MLP -> (B, H) logits."""

    def __init__(self, cfg: RankingConfig) -> None:
        super().__init__()
        self.cfg = cfg
        t = cfg.encoder_config
        self.items = ItemEncoder(t.item_dim, t.hash_buckets)
        self.transact: TransAct | None = None
        if cfg.sequence_encoder == "transact":
            self.transact = TransAct(t, self.items)
            seq_dim = t.out_dim
        elif cfg.sequence_encoder == "average":
            self.action_emb = nn.Embedding(t.n_actions, t.action_emb_dim, padding_idx=0)
            seq_dim = t.action_emb_dim + t.item_dim
        else:
            seq_dim = 0
        self.in_dim = seq_dim + t.item_dim + (cfg.daily_dim + 1 if cfg.daily_dim else 0)
        self.cross = nn.ModuleList(CrossLayer(self.in_dim) for _ in range(cfg.cross_layers))
        mlp: list[nn.Module] = []
        prev = self.in_dim
        for width in cfg.mlp_dims:
            mlp += [nn.Linear(prev, width), nn.ReLU()]
            prev = width
        self.mlp = nn.Sequential(*mlp)
        self.head = nn.Linear(prev, len(cfg.heads))
        self.register_buffer("label_weights", torch.tensor(cfg.weight_matrix(), dtype=torch.float32),
                             persistent=False)

    def sequence(self, batch: dict[str, Tensor], cand: Tensor) -> Tensor | None:
        """The sequence part of the features: (B, seq_dim) or None for ``sequence_encoder="none"``."""
        if self.transact is not None:
            return self.transact(batch, cand if self.transact.cfg.early_fusion else None)
        if self.cfg.sequence_encoder == "average":
            action = batch["action"]
            rows = torch.cat([self.action_emb(action),
                              self.items(batch["item_vec"], batch["item_has_vec"], batch["item_hash"])], -1)
            real = (action != 0).unsqueeze(-1).to(rows.dtype)  # (B, S, 1)
            return (rows * real).sum(1) / real.sum(1).clamp_min(1.0)
        return None

    def features(self, batch: dict[str, Tensor],
                 sequence: Callable[[dict[str, Tensor], Tensor], Tensor | None] | None = None) -> Tensor:
        """x0 (B, in_dim): the DCN input. ``sequence``: computes the sequence part in place of
        :meth:`sequence` (the serving path's fused transformer, :class:`transact.evaluate.ServingPath`)."""
        cand = self.items(batch["cand_vec"], batch["cand_has_vec"], batch["cand_hash"])  # (B, Di)
        seq = (sequence or self.sequence)(batch, cand)
        return self.join(seq, cand, batch)

    def join(self, seq: Tensor | None, cand: Tensor, batch: dict[str, Tensor]) -> Tensor:
        parts = [] if seq is None else [seq]
        parts.append(cand)
        if self.cfg.daily_dim:
            if "daily" in batch:
                m = batch["daily_mask"].to(cand.dtype).unsqueeze(1)  # (B, 1)
                parts += [batch["daily"].to(cand.dtype) * m, m]
            else:
                parts.append(cand.new_zeros(cand.shape[0], self.cfg.daily_dim + 1))
        return torch.cat(parts, 1)

    def head_logits(self, x0: Tensor, cross_linears: Sequence[Callable[[Tensor], Tensor]] | None = None) -> Tensor:
        """x0 (B, in_dim) -> logits (B, H): DCN v2 cross layers, MLP, linear heads. ``cross_linears``: one
        replacement per cross layer for its ``W x + b`` (e.g. :class:`transact.inference.Int8Linear`)."""
        x = x0
        for i, layer in enumerate(self.cross):
            x = layer(x0, x, None if cross_linears is None else cross_linears[i])
        return self.head(self.mlp(x))

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        """batch (see :mod:`transact.features`) -> logits (B, H), one per head in ``cfg.heads``."""
        return self.head_logits(self.features(batch))

    def label_weight_matrix(self, labels: Tensor) -> Tensor:
        """labels (B, H) 0/1 -> head weights (B, H) = max(1, labels @ M^T)."""
        return label_weight_matrix(labels, self.get_buffer("label_weights"))

    def loss(self, logits: Tensor, labels: Tensor, head_weights: Tensor | None = None) -> Tensor:
        """Weighted multi-head BCE: mean over the batch of sum_h w_h * BCE(logit_h, y_h)."""
        if head_weights is None:
            head_weights = self.label_weight_matrix(labels)
        bce = F.binary_cross_entropy_with_logits(logits, labels, reduction="none")  # (B, H)
        return (bce * head_weights).sum(1).mean()


def label_weight_matrix(labels: Tensor, matrix: Tensor) -> Tensor:
    """labels (B, A) 0/1, matrix M (H, A) -> per-head weights (B, H) = max(1, sum_a M[h,a] y_a)."""
    return (labels.to(matrix.dtype) @ matrix.T).clamp_min(1.0)


def _config_to_dict(cfg: RankingConfig | TransActConfig) -> dict[str, Any]:
    return {"kind": type(cfg).__name__, **asdict(cfg)}


def _config_from_dict(d: dict[str, Any]) -> RankingConfig | TransActConfig:
    d = dict(d)
    kind = d.pop("kind")
    if kind == "TransActConfig":
        return TransActConfig(**d)
    if kind != "RankingConfig":
        raise ValueError(f"unknown model config kind {kind!r}")
    d["transact"] = TransActConfig(**d["transact"])
    d["mlp_dims"] = tuple(d["mlp_dims"])
    d["heads"] = tuple(d["heads"])
    if d.get("label_weights") is not None:
        d["label_weights"] = tuple(tuple(r) for r in d["label_weights"])
    return RankingConfig(**d)


def save_checkpoint(path: str | Path, model: RankingModel | TransAct, cfg: RankingConfig | TransActConfig,
                    vocab: dict[str, Any]) -> None:
    """Save config + state_dict + vocabularies as plain containers/tensors (loadable weights-only)."""
    if isinstance(model, RankingModel) != isinstance(cfg, RankingConfig):
        raise TypeError(f"model {type(model).__name__} does not match config {type(cfg).__name__}")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"format": CHECKPOINT_FORMAT, "config": _config_to_dict(cfg), "state_dict": state,
                "vocab": vocab}, path)


def load_checkpoint(path: str | Path) -> tuple[RankingModel | TransAct, RankingConfig | TransActConfig, dict[str, Any]]:
    """Load a checkpoint written by :func:`save_checkpoint` (``weights_only=True``: no pickled objects).

    Returns the model in eval mode on CPU, its config and the vocab dict.
    """
    blob = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not an actionstream TransAct checkpoint (format {CHECKPOINT_FORMAT})")
    cfg = _config_from_dict(blob["config"])
    model: RankingModel | TransAct = RankingModel(cfg) if isinstance(cfg, RankingConfig) else TransAct(cfg)
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, cfg, blob["vocab"]
