"""PinnerFormer: a causal transformer over a user's positive actions → one daily user embedding.

Paper: Pancha et al., "PinnerFormer: Sequence Modeling for User Representation at Pinterest", KDD 2022
(arXiv 2205.04507); facts we rely on are in ``shared/reference/pinnerformer.md``.

As in the paper:
  * per-action features, concatenated: item content vector, learned action-type and surface embeddings,
    ``log(1 + duration)``, Time2Vec-style time features (fixed periods, learned phases, ``cos/sin`` plus
    ``log t``) for three times: absolute time (12 periods 0.25 h … 365 d), time since the latest action and
    the gap to the previous action (32 log-spaced periods, 1 s … 4 weeks);
  * linear projection to H + learnable positional encoding, PreNorm causal transformer
    (``U = V + MHSA(LN(V))``, ``V' = U + FFN(LN(U))``, FFN width 4H, GELU);
  * at every position LayerNorm → MLP (H→4H→D, GELU) → L2 norm; the user embedding is the output at the
    most recent position (``e_1``);
  * item ("pin") tower: MLP on the item vector, L2-normalised.

Where we differ:
  * CPU-sized defaults: 2 layers, H = 128, 4 heads, D = 64 (paper: 6 layers, H = 768, 8 heads, D = 256).
    M = 256 as in the paper.
  * Sequences are left-padded to a fixed length S, oldest first: the most recent action always sits in the
    last slot, so the learnable positional encoding is indexed by recency. Padding slots attend only to
    themselves and never to real actions; real actions never attend to padding.
  * Item vectors come from our item store instead of PinSage. Items may have no vector (all-zero row); both
    towers can add a learned hashed-id embedding (``id_buckets`` > 0; 0 turns it off). The paper uses
    PinSage only.
  * "Time since the latest action" is measured from the newest action *of the input window*, as in the
    paper; every position therefore sees the newest action's *timestamp* (never its item, type, surface
    or duration). Set ``time_since_latest=False`` for a strictly causal model.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["PinnerFormer", "PinnerFormerConfig", "load_checkpoint", "save_checkpoint"]

HOUR_S = 3600.0
DAY_S = 86_400.0
ABS_PERIODS_S: tuple[float, ...] = tuple(h * HOUR_S for h in (0.25, 0.5, 0.75, 1, 2, 4, 8, 16)) + tuple(
    d * DAY_S for d in (1, 7, 28, 365))


def log_spaced_periods(n: int = 32, lo_s: float = 1.0, hi_s: float = 28 * DAY_S) -> tuple[float, ...]:
    """``n`` periods log-spaced from ``lo_s`` to ``hi_s`` seconds (paper: 32, 1 s … 4 weeks)."""
    return tuple(float(x) for x in torch.logspace(math.log10(lo_s), math.log10(hi_s), n, dtype=torch.float64))


@dataclass
class PinnerFormerConfig:
    item_dim: int = 32               # Di: length of the item content vector (zeros where an item has none)
    n_actions: int = 8               # action vocabulary INCLUDING padding code 0 (7 default actions + 1)
    n_surfaces: int = 7              # surface vocabulary including 0 (= unknown/absent)
    id_buckets: int = 32_768         # hashed item-id embedding table size (0 = content vector only)
    max_len: int = 256               # M: most recent input actions kept
    width: int = 128                 # H
    n_layers: int = 2
    n_heads: int = 4
    emb_dim: int = 64                # D: user and item embedding size
    action_emb_dim: int = 8
    surface_emb_dim: int = 8
    rel_periods: int = 32            # periods of the two relative-time features
    time_since_latest: bool = True   # paper feature; see module docstring on causality
    dropout: float = 0.1
    item_hidden: int = 256           # item tower hidden width

    def __post_init__(self) -> None:
        assert self.width % self.n_heads == 0, "width must be divisible by n_heads"
        assert self.n_actions >= 2 and self.n_surfaces >= 1 and self.max_len >= 1


class Time2Vec(nn.Module):
    """Fixed periods, learned phases: ``[cos(2πt/p+φ), sin(2πt/p+φ), log(1+|t|)]`` → (…, 2P+1)."""

    def __init__(self, periods_s: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("omega", 2 * math.pi / torch.tensor(periods_s, dtype=torch.float64), persistent=False)
        self.phase = nn.Parameter(torch.zeros(len(periods_s)))
        self.out_dim = 2 * len(periods_s) + 1

    def forward(self, t_s: Tensor) -> Tensor:
        """t_s: (…) float64 seconds → (…, 2P+1) float32."""
        # reduce modulo each period in float64 first: epoch seconds × ω loses precision in float32
        omega: Tensor = self.omega  # type: ignore[assignment]
        ang = torch.remainder(t_s.unsqueeze(-1) * omega, 2 * math.pi).float() + self.phase
        return torch.cat([torch.cos(ang), torch.sin(ang), torch.log1p(t_s.abs()).float().unsqueeze(-1)], dim=-1)


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: PinnerFormerConfig) -> None:
        super().__init__()
        self.n_heads = cfg.n_heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.dropout = cfg.dropout

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        """x: (B, S, H); allowed: (B, 1, S, S) bool, True where query i may attend key j."""
        B, S, H = x.shape
        q, k, v = self.qkv(x).split(H, dim=2)
        q, k, v = (t.view(B, S, self.n_heads, H // self.n_heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, S, hs)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, S, H))


class Block(nn.Module):
    """PreNorm block: ``U = V + MHSA(LN(V))``, ``V' = U + FFN(LN(U))``."""

    def __init__(self, cfg: PinnerFormerConfig) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.width)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.width)
        self.ffn = nn.Sequential(nn.Linear(cfg.width, 4 * cfg.width), nn.GELU(), nn.Linear(4 * cfg.width, cfg.width),
                                 nn.Dropout(cfg.dropout))

    def forward(self, x: Tensor, allowed: Tensor) -> Tensor:
        x = x + self.attn(self.ln1(x), allowed)
        return x + self.ffn(self.ln2(x))


def _l2(x: Tensor) -> Tensor:
    return F.normalize(x, p=2, dim=-1, eps=1e-12)


class PinnerFormer(nn.Module):
    """User tower (causal transformer) + item tower.

    Batch (dict of tensors; sequences OLDEST FIRST, left-padded with action code 0, most recent in slot S-1):
      ``action`` (B,S) long (0 = padding), ``surface`` (B,S) long, ``duration_ms`` (B,S) float,
      ``ts_ms`` (B,S) long (event time), ``item_vec`` (B,S,Di) float, ``item_bucket`` (B,S) long (0 = none).
    """

    def __init__(self, cfg: PinnerFormerConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.action_emb = nn.Embedding(cfg.n_actions, cfg.action_emb_dim, padding_idx=0)
        self.surface_emb = nn.Embedding(cfg.n_surfaces, cfg.surface_emb_dim)
        self.t_abs = Time2Vec(ABS_PERIODS_S)
        rel = log_spaced_periods(cfg.rel_periods)
        self.t_latest = Time2Vec(rel) if cfg.time_since_latest else None
        self.t_gap = Time2Vec(rel)
        id_dim = cfg.item_dim if cfg.id_buckets else 0
        # the id table is shared by both towers; each tower has its own projection of it
        self.item_id_emb = nn.Embedding(cfg.id_buckets, max(id_dim, 1), padding_idx=0) if cfg.id_buckets else None
        if self.item_id_emb is not None:
            nn.init.normal_(self.item_id_emb.weight, std=0.02)
        d_in = (cfg.item_dim + id_dim + cfg.action_emb_dim + cfg.surface_emb_dim + 1 + self.t_abs.out_dim
                + self.t_gap.out_dim + (self.t_latest.out_dim if self.t_latest is not None else 0))
        self.in_proj = nn.Linear(d_in, cfg.width)
        self.pos_emb = nn.Parameter(torch.randn(cfg.max_len, cfg.width) * 0.02)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList([Block(cfg) for _ in range(cfg.n_layers)])
        self.ln_f = nn.LayerNorm(cfg.width)
        self.head = nn.Sequential(nn.Linear(cfg.width, 4 * cfg.width), nn.GELU(), nn.Linear(4 * cfg.width, cfg.emb_dim))
        self.item_tower = nn.Sequential(nn.Linear(cfg.item_dim + id_dim, cfg.item_hidden), nn.GELU(),
                                        nn.Linear(cfg.item_hidden, cfg.emb_dim))

    def _item_features(self, vec: Tensor, bucket: Tensor) -> Tensor:
        """vec (…, Di) float, bucket (…) long → (…, Di [+ Di])."""
        if self.item_id_emb is None:
            return vec
        return torch.cat([vec, self.item_id_emb(bucket)], dim=-1)

    def action_features(self, batch: dict[str, Tensor]) -> Tensor:
        """Concatenated per-action features → (B, S, d_in)."""
        action = batch["action"]
        valid = action > 0
        t = batch["ts_ms"].double() / 1000.0                                         # (B, S) seconds
        latest = t[:, -1:]                                                           # newest slot
        prev = torch.cat([t[:, :1], t[:, :-1]], dim=1)
        gap = torch.where(valid & (torch.cat([valid[:, :1], valid[:, :-1]], 1)), t - prev, torch.zeros_like(t))
        parts = [self._item_features(batch["item_vec"], batch["item_bucket"]), self.action_emb(action),
                 self.surface_emb(batch["surface"]), torch.log1p(batch["duration_ms"].float().clamp(min=0) / 1000)
                 .unsqueeze(-1), self.t_abs(t), self.t_gap(gap.clamp(min=0))]
        if self.t_latest is not None:
            parts.append(self.t_latest((latest - t).clamp(min=0)))
        x = torch.cat(parts, dim=-1)
        return x * valid.unsqueeze(-1)                                               # padding rows = 0

    def encode_sequence(self, batch: dict[str, Tensor]) -> Tensor:
        """Per-position L2-normalised embeddings (B, S, D); position S-1 is the user embedding."""
        return self.project(self.hidden(batch))

    def project(self, h: Tensor) -> Tensor:
        """Per-position output head: (…, H) → LayerNorm → MLP → L2 norm → (…, D)."""
        return _l2(self.head(self.ln_f(h)))

    def hidden(self, batch: dict[str, Tensor]) -> Tensor:
        """Transformer output before the head, (B, S, H) (training projects only the sampled positions)."""
        action = batch["action"]
        B, S = action.shape
        assert S <= self.cfg.max_len, f"sequence length {S} > max_len {self.cfg.max_len}"
        valid = action > 0                                                           # (B, S)
        x = self.drop(self.in_proj(self.action_features(batch)) + self.pos_emb[self.cfg.max_len - S:])
        causal = torch.ones(S, S, dtype=torch.bool, device=action.device).tril()
        eye = torch.eye(S, dtype=torch.bool, device=action.device)
        # query i may see key j when j <= i and both are real actions, or when j == i (keeps padding finite)
        allowed = (causal & valid[:, None, :] & valid[:, :, None]) | eye              # (B, S, S)
        allowed = allowed.unsqueeze(1)                                               # (B, 1, S, S)
        for block in self.blocks:
            x = block(x, allowed)
        return x

    def user_embedding(self, batch: dict[str, Tensor]) -> Tensor:
        """(B, D): the output at the most recent position (e_1)."""
        return self.project(self.hidden(batch)[:, -1])

    def encode_items(self, vec: Tensor, bucket: Tensor) -> Tensor:
        """Item tower: vec (N, Di) float, bucket (N,) long → (N, D) L2-normalised."""
        return _l2(self.item_tower(self._item_features(vec, bucket)))


def save_checkpoint(path: Path | str, model: PinnerFormer, meta: dict[str, Any] | None = None) -> None:
    """Plain dicts and tensors only, so :func:`load_checkpoint` can use ``weights_only=True``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save({"format": "pinnerformer/1", "config": asdict(model.cfg), "state_dict": model.state_dict(),
                "meta": meta or {}}, tmp)
    tmp.replace(path)


def load_checkpoint(path: Path | str) -> tuple[PinnerFormer, dict[str, Any]]:
    """Return ``(model in eval mode, meta)``; ``meta`` holds the training vocabularies and settings."""
    blob = torch.load(Path(path), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != "pinnerformer/1":
        raise ValueError(f"{path} is not a PinnerFormer checkpoint")
    model = PinnerFormer(PinnerFormerConfig(**blob["config"]))
    model.load_state_dict(blob["state_dict"])
    model.eval()
    return model, dict(blob["meta"])

