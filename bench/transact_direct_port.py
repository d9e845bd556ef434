"""A straightforward port of the official TransAct module's forward (github pinterest/transformer_user_action),
used only as the "direct port" baseline in ``bench/transact_inference.py``.

Kept as the official code does it (see ``shared/reference/transact.md`` §1.2): d_model = 96 with early
fusion, ``nn.TransformerEncoderLayer(96, nhead=2, 32, dropout 0.1, batch_first=True)`` x 2 (post-LN),
action-id lookup table with padding 0, a key padding mask (padding, plus future actions at eval;
index 0 never masked) passed as a float -inf mask, ``out_linear`` on the max-pool, and the output
``cat(out_linear(max_S(out)), out[:, :10].flatten)`` = (B, 1056). Scoring one user against C candidates
with it means C rows, each a full copy of the user's sequence with one candidate glued to every row.
Not part of the platform: no training, no checkpoints.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class DirectPortTransAct(nn.Module):
    def __init__(self, action_vocab: int = 20, action_emb_dim: int = 32, item_emb_dim: int = 32,
                 time_window_ms: int = 3_600_000, latest_n_emb: int = 10, max_seq_len: int = 100,
                 num_layer: int = 2, nhead: int = 2, dim_feedforward: int = 32, dropout: float = 0.1) -> None:
        super().__init__()
        self.max_seq_len, self.latest_n_emb, self.time_window_ms = max_seq_len, latest_n_emb, time_window_ms
        lookup = torch.zeros(max_seq_len, dtype=torch.long)  # official: t[id + 1] = rank(id); -1 -> 0
        for rank, raw in enumerate(range(action_vocab)):
            lookup[raw + 1] = rank
        self.register_buffer("action_type_lookup", lookup)
        self.action_emb_module = nn.Embedding(action_vocab, action_emb_dim, padding_idx=0)
        d_model = action_emb_dim + 2 * item_emb_dim
        layer = nn.TransformerEncoderLayer(d_model, nhead, dim_feedforward, dropout, batch_first=True)
        self.transformer_encoder = nn.TransformerEncoder(layer, num_layer)
        self.out_linear = nn.Linear(d_model, d_model)

    def forward(self, action_type_seq: Tensor, item_embedding_seq: Tensor, action_time_seq: Tensor,
                request_time: Tensor, item_embedding: Tensor) -> Tensor:
        """(B,S) long, (B,S,32), (B,S) long, (B,) long, (B,32) -> (B, 1056)."""
        s = self.max_seq_len
        action_type_seq, item_embedding_seq = action_type_seq[:, :s], item_embedding_seq[:, :s]
        action_time_seq = action_time_seq[:, :s]
        idx = self.get_buffer("action_type_lookup")[action_type_seq + 1]
        action_emb = self.action_emb_module(idx)
        key_padding_mask = idx <= 0
        if self.training:
            window = int(torch.randint(0, self.time_window_ms + 1, ()).item())
            short = (request_time.unsqueeze(-1) - action_time_seq) < window
        else:
            short = (request_time.unsqueeze(-1) - action_time_seq) < 0
        mask = torch.logical_or(key_padding_mask, short)
        mask[:, 0] = False
        float_mask = torch.zeros(mask.shape, dtype=item_embedding_seq.dtype).masked_fill(mask, float("-inf"))
        x = torch.cat([action_emb, item_embedding_seq,
                       item_embedding.unsqueeze(1).expand(-1, action_emb.shape[1], -1)], dim=2)
        out = self.transformer_encoder(src=x, src_key_padding_mask=float_mask)
        pooled = self.out_linear(out.max(dim=1).values)
        return torch.cat([pooled, out[:, : self.latest_n_emb].flatten(1)], dim=1)
