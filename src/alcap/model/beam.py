"""Beam search without per-beam copies of the cross-attention keys and values.

Under beam search HF repeats each input's encoder states once per beam, projects them to
cross-attention keys and values once per beam, reads them once per beam at every decoding
step and reorders them after every step. All of these copies are identical within an input,
and beams are only ever reordered within their input. `BeamCache.prefilled` stores each
input's cross keys and values once, and `beam_sdpa` lets the beams of an input attend to
them together, as extra query rows. Captions are unchanged (tested against HF's own cache).

Both go through HF's public extension points (the attention-function registry and the
encoder-decoder cache); `modeling_bart` is used as it is.

With `max_cache_len` the self-attention keys and values live in HF's `StaticCache`, allocated
once for the longest caption and written in place, so every decoding step has the same shapes
and tensor addresses: what torch.compile needs to compile the step once (HF's `compile_config`)
and CUDA graphs need to replay it. Beams are then reordered in place, too.
"""

from __future__ import annotations

import torch
from transformers import AttentionInterface, DynamicCache, EncoderDecoderCache, StaticCache
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
        for layer in self.self_attention_cache.layers:
            if layer.is_compileable:  # static: keep the tensors (compiled graphs hold their addresses)
                if layer.is_initialized:
                    layer.keys.copy_(layer.keys.index_select(0, beam_idx))
                    layer.values.copy_(layer.values.index_select(0, beam_idx))
            else:
                layer.reorder_cache(beam_idx)

    @classmethod
    def prefilled(cls, bart, encoder_states: torch.Tensor, max_cache_len: int | None = None,
                  rows_per_input: int = 1) -> "BeamCache":
        """A cache whose cross-attention keys and values are already computed from the
        un-repeated (inputs, L, d_model) encoder states, one row per input; the decoder then
        never projects the repeated states. Needs the `beam_sdpa` attention. `max_cache_len`:
        a static self-attention cache of that many positions (decoder tokens) for
        `rows_per_input` sequences per input (beams), allocated now so that the first decoding
        step has the shapes of the others; else a dynamic one."""
        config = bart.config.get_text_config(decoder=True)
        cross = DynamicCache(config=config)
        for index, layer in enumerate(bart.get_decoder().layers):
            attention = layer.encoder_attn
            shape = (*encoder_states.shape[:-1], -1, attention.head_dim)  # as BartAttention shapes them
            keys = attention.k_proj(encoder_states).view(shape).transpose(1, 2)
            values = attention.v_proj(encoder_states).view(shape).transpose(1, 2)
            cross.update(keys, values, index)
        if max_cache_len:
            own = StaticCache(config=config, max_cache_len=max_cache_len)
            own.early_initialization(encoder_states.shape[0] * rows_per_input, keys.shape[1], keys.shape[-1],
                                     keys.dtype, keys.device)  # keys.dtype: the autocast one, if any
        else:
            own = DynamicCache(config=config)
        return cls(own, cross)  # is_updated: the decoder reuses `cross`
