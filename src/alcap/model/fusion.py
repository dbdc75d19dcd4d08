"""Cross-modal fusion: lyrics states attend over the music sequence (BART-fusion / ALCAP)."""

from __future__ import annotations

import torch
from torch import nn


class FusionBlock(nn.Module):
    """h_t <- LayerNorm(h_t + scale * g * MHA(Q = W_q h_t, K = W_k h_m, V = W_v h_m)).

    The projections in front of the multi-head attention (which has its own) follow the
    original BART-fusion. `g` is 1 unless the forget gate is on, then
    g = sigmoid(W_g [h_t; attn]) per feature (BART-fusion had it; ALCAP switches it off).
    """

    def __init__(self, d_model: int, music_dim: int, heads: int = 1, residual_scale: float = 0.1,
                 forget_gate: bool = False, dropout: float = 0.0):
        super().__init__()
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(music_dim, d_model)
        self.value = nn.Linear(music_dim, d_model)
        self.attention = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.gate = nn.Linear(2 * d_model, d_model) if forget_gate else None
        self.layer_norm = nn.LayerNorm(d_model)
        self.residual_scale = residual_scale

    def forward(self, text: torch.Tensor, music: torch.Tensor, music_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """text (B, L_t, d_model), music (B, L_m, music_dim), music_mask (B, L_m) 1 = real.

        Returns the fused text states and, if asked, the attention weights (B, L_t, L_m)
        averaged over heads.
        """
        update, weights = self.update(text, music, music_mask, need_weights)
        return self.layer_norm(text + update), weights

    def update(self, text: torch.Tensor, music: torch.Tensor, music_mask: torch.Tensor | None = None,
               need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The residual the block adds to the lyric states, scale * g * attention, before its LayerNorm."""
        padding = None if music_mask is None else ~music_mask.bool()
        attended, weights = self.attention(
            self.query(text), self.key(music), self.value(music), key_padding_mask=padding,
            need_weights=need_weights, average_attn_weights=True,
        )
        if self.gate is not None:
            attended = torch.sigmoid(self.gate(torch.cat([text, attended], dim=-1))) * attended
        return self.residual_scale * attended, weights
