"""Beam search without per-beam copies of the cross-attention keys and values.

Under beam search HF repeats each input's encoder states once per beam, projects them to
cross-attention keys and values once per beam, reads them once per beam at every decoding
step and reorders them after every step. All of these copies are identical within an input,
and beams are only ever reordered within their input. `BeamCache.prefilled` stores each
input's cross keys and values once, and `beam_sdpa` lets the beams of an input attend to
them together, as extra query rows. Captions are unchanged (tested against HF's own cache).

Both go through HF's public extension points (the attention-function registry and the
encoder-decoder cache); `modeling_bart` is used as it is.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, DynamicCache, EncoderDecoderCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

BEAM_SDPA = "alcap_beam_sdpa"


def beam_sdpa(module, query, key, value, attention_mask, **kwargs):
    """HF's SDPA attention, where consecutive groups of query rows may share one row of keys
    and values (the beams of one input in cross-attention). Otherwise exactly `sdpa`."""
    group = query.shape[0] // key.shape[0]
    if group == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    inputs, heads, q_len, head_dim = key.shape[0], query.shape[1], query.shape[2], query.shape[3]
    # (inputs * beams, H, q, d) -> (inputs, H, beams * q, d): the beams become more queries.
    packed = query.view(inputs, group, heads, q_len, head_dim).transpose(1, 2).reshape(inputs, heads, group * q_len, head_dim)
    if attention_mask is not None:  # the encoder padding mask: the same for every beam and query
        attention_mask = attention_mask[::group, :, :1]
    out, weights = sdpa_attention_forward(module, packed, key, value, attention_mask, **kwargs)
    # (inputs, beams * q, H, d) -> (inputs * beams, q, H, d)
    return out.reshape(inputs * group, q_len, heads, head_dim), weights


AttentionInterface.register(BEAM_SDPA, beam_sdpa)
ALL_MASK_ATTENTION_FUNCTIONS.register(BEAM_SDPA, sdpa_mask)


class BeamCache(EncoderDecoderCache):
    """HF's encoder-decoder KV cache without the wasted reorder of the cross-attention keys
    and values after every beam-search step (a third of batched 4-beam decoding time here):
    they are identical for all beams of one input."""

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        self.self_attention_cache.reorder_cache(beam_idx)

    @classmethod
    def prefilled(cls, bart, encoder_states: torch.Tensor) -> "BeamCache":
        """A cache whose cross-attention keys and values are already computed from the
        un-repeated (inputs, L, d_model) encoder states, one row per input; the decoder then
        never projects the repeated states. Needs the `beam_sdpa` attention."""
        config = bart.config.get_text_config(decoder=True)
        cross = DynamicCache(config=config)
        for index, layer in enumerate(bart.get_decoder().layers):
            attention = layer.encoder_attn
            shape = (*encoder_states.shape[:-1], -1, attention.head_dim)  # as BartAttention shapes them
            keys = attention.k_proj(encoder_states).view(shape).transpose(1, 2)
            values = attention.v_proj(encoder_states).view(shape).transpose(1, 2)
            cross.update(keys, values, index)
        return cls(DynamicCache(config=config), cross)  # is_updated: the decoder reuses `cross`
