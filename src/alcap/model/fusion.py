"""Cross-modal fusion: lyrics states attend over the music sequence (BART-fusion / ALCAP)."""

from __future__ import annotations

import torch
from torch import nn


class FusionBlock(nn.Module):
    """norm "post" (the original): h_t <- LayerNorm(h_t + scale * g * attn);
    norm "update":                h_t <- h_t + scale * g * LayerNorm(attn);
    attn = MHA(Q = W_q h_t, K = W_k h_m, V = W_v h_m).

    The projections in front of the multi-head attention (which has its own) follow the
    original BART-fusion. `g` is 1 unless the forget gate is on, then
    g = sigmoid(W_g [h_t; attn]) per feature (BART-fusion had it; ALCAP switches it off).

    Why "update": after the original's LayerNorm the share of the lyric states in the output
    depends on how large the music update happens to be, which the music's scale and the
    training decide: music with a large shared offset and small differences between songs
    is ignored, standardised music swamps the lyrics. Normalising the update instead leaves
    the lyric states as BART made them and holds the music's contribution at `scale` of a
    unit-variance vector. Both use the same parameters (one LayerNorm), so weights of either
    load into the other; a model directory says which it was trained with.
    """

    def __init__(self, d_model: int, music_dim: int, heads: int = 1, residual_scale: float = 0.1,
                 forget_gate: bool = False, dropout: float = 0.0, norm: str = "post"):
        super().__init__()
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(music_dim, d_model)
        self.value = nn.Linear(music_dim, d_model)
        self.attention = nn.MultiheadAttention(d_model, heads, dropout=dropout, batch_first=True)
        self.gate = nn.Linear(2 * d_model, d_model) if forget_gate else None
        self.layer_norm = nn.LayerNorm(d_model)
        self.residual_scale = residual_scale
        if norm not in ("post", "update"):
            raise ValueError(f"fusion norm must be post or update, not {norm!r}")
        self.norm = norm

    def forward(self, text: torch.Tensor, music: torch.Tensor, music_mask: torch.Tensor | None = None,
                need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """text (B, L_t, d_model), music (B, L_m, music_dim), music_mask (B, L_m) 1 = real.

        Returns the fused text states and, if asked, the attention weights (B, L_t, L_m)
        averaged over heads.
        """
        update, weights = self.update(text, music, music_mask, need_weights)
        return (self.layer_norm(text + update) if self.norm == "post" else text + update), weights

    def update(self, text: torch.Tensor, music: torch.Tensor, music_mask: torch.Tensor | None = None,
               need_weights: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The residual the block adds to the lyric states (for norm "post", before its LayerNorm)."""
        padding = None if music_mask is None else ~music_mask.bool()
        attended, weights = self.attention(
            self.query(text), self.key(music), self.value(music), key_padding_mask=padding,
            need_weights=need_weights, average_attn_weights=True,
        )
        if self.norm == "update":
            attended = self.layer_norm(attended)
        if self.gate is not None:
            attended = torch.sigmoid(self.gate(torch.cat([text, attended], dim=-1))) * attended
        return self.residual_scale * attended, weights
