import pytest
import torch
from transformers import BartForConditionalGeneration

from alcap.model.captioner import AlcapConfig, AlcapModel, bart_config

VOCAB = 120


def tiny_model(seed: int = 0, **overrides) -> AlcapModel:
    torch.manual_seed(seed)
    cfg = {"fusion_layers": [1, 2], **overrides}
    return AlcapModel(AlcapConfig(**cfg), BartForConditionalGeneration(bart_config("tiny", VOCAB))).eval()


def batch(seed: int = 1, b: int = 3, l_t: int = 9, l_c: int = 7, l_m: int = 11):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (b, l_t), generator=g)
    ids[:, 0], ids[:, -1] = 0, 2
    mask = torch.ones(b, l_t, dtype=torch.long)
    ids[0, -3:], mask[0, -3:] = 1, 0  # first row is padded
    labels = torch.randint(4, VOCAB, (b, l_c), generator=g)
    labels[1, -2:] = -100
    music = torch.randn(b, l_m, 256, generator=g)
    return ids, mask, labels, music


def test_without_fusion_it_is_exactly_hf_bart():
    model = tiny_model(use_music=False, alpha=0.0)
    ids, mask, labels, music = batch()
    ours = model(ids, mask, labels, music=music)
    model.bart.set_attn_implementation("sdpa")  # HF's stock attention, not alcap's beam-search variant
    ref = model.bart(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
    assert torch.equal(ours.logits, ref.logits)
    assert torch.equal(ours.caption_loss, ref.loss) and torch.equal(ours.loss, ref.loss)
    assert ours.contrast_loss is None


def test_fusion_changes_the_output_and_losses_add_up():
    model = tiny_model(alpha=0.02)
    ids, mask, labels, music = batch()
    out = model(ids, mask, labels, music=music, song_ids=["a", "b", "a"])
    plain = model.bart(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
    assert not torch.allclose(out.logits, plain.logits)
    assert out.loss.item() == pytest.approx(out.caption_loss.item() + 0.02 * out.contrast_loss.item(), rel=1e-6)
    assert out.z_music.shape == out.z_lyrics.shape == (3, 256)


def test_music_and_padding_are_respected():
    model = tiny_model()
    ids, mask, labels, music = batch()
    out = model(ids, mask, labels, music=music, return_attention=True)
    assert len(out.fusion_attentions) == 2 and out.fusion_attentions[0].shape == (3, 9, 11)
    torch.testing.assert_close(out.fusion_attentions[0].sum(-1), torch.ones(3, 9))
    # Padding the music sequence with masked steps changes nothing.
    padded = torch.cat([music, torch.randn(3, 4, 256)], dim=1)
    music_mask = torch.cat([torch.ones(3, 11), torch.zeros(3, 4)], dim=1).long()
    out_padded = model(ids, mask, labels, music=padded, music_mask=music_mask, return_attention=True)
    torch.testing.assert_close(out_padded.logits, out.logits, atol=1e-5, rtol=1e-5)
    assert torch.all(out_padded.fusion_attentions[1][:, :, 11:] == 0)


def test_gradients_reach_fusion_and_projection_only_when_they_should():
    model = tiny_model(alpha=0.02).train()
    ids, mask, labels, music = batch()
    model(ids, mask, labels, music=music).loss.backward()
    assert model.fusion[0].key.weight.grad.abs().sum() > 0
    assert model.alignment.proj.weight.grad.abs().sum() > 0
    assert model.bart.get_encoder().layers[0].fc1.weight.grad.abs().sum() > 0  # alignment reaches the lower encoder
    fusion_only = tiny_model(alpha=0.0).train()
    out = fusion_only(ids, mask, labels, music=music)
    out.loss.backward()
    assert out.contrast_loss is not None and not out.contrast_loss.requires_grad  # logged, not trained
    assert fusion_only.alignment.proj.weight.grad is None
    assert fusion_only.fusion[0].key.weight.grad.abs().sum() > 0


def test_per_layer_fusion_blocks_and_forget_gate():
    model = tiny_model(fusion_shared=False, fusion_forget_gate=True)
    assert len(model.fusion) == 2 and model.fusion[0].gate is not None
    ids, mask, labels, music = batch()
    assert torch.isfinite(model(ids, mask, labels, music=music).loss)


def test_save_and_reload_give_identical_outputs(tmp_path):
    model = tiny_model(seed=3, fusion_heads=2, temperature=0.2)
    ids, mask, labels, music = batch()
    model.save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"config.json", "alcap_config.json", "model.safetensors"}
    again = AlcapModel.from_pretrained(tmp_path)
    assert again.config == model.config
    a, b = model(ids, mask, labels, music=music), again(ids, mask, labels, music=music)
    assert torch.equal(a.logits, b.logits) and torch.equal(a.loss, b.loss)
    assert again.bart.lm_head.weight.data_ptr() == again.bart.get_input_embeddings().weight.data_ptr()  # still tied


def test_generation_batched_equals_one_at_a_time():
    model = tiny_model()
    ids, mask, _, music = batch()
    kwargs = dict(max_length=12, num_beams=1, do_sample=False)
    together = model.generate(ids, mask, music=music, **kwargs)
    for i in range(3):
        keep = mask[i].bool()
        alone = model.generate(ids[i : i + 1, keep], mask[i : i + 1, keep], music=music[i : i + 1], **kwargs)
        n = alone.shape[1]
        assert torch.equal(together[i, :n], alone[0]), i
    beams = model.generate(ids, mask, music=music, max_length=12, num_beams=4, do_sample=False)
    assert beams.shape[0] == 3


def test_beam_search_with_shared_cross_attention_gives_hf_captions(monkeypatch):
    """Our beam search (cross keys/values once per input, never reordered, beams packed as
    queries) against HF's stock SDPA attention and cache, with a padded row."""
    from transformers import DynamicCache, EncoderDecoderCache

    from alcap.model.beam import BEAM_SDPA, BeamCache

    model, stock = tiny_model(), tiny_model()  # same weights
    stock.bart.set_attn_implementation("sdpa")
    assert model.bart.config._attn_implementation == BEAM_SDPA
    ids, mask, _, music = batch(b=4, l_t=15)
    reordered, cross_rows = [], []
    original, prefilled = EncoderDecoderCache.reorder_cache, BeamCache.prefilled

    def spy(cache, beam_idx):  # HF's cache (BeamCache overrides it): beams really were reordered
        reordered.append(not torch.equal(beam_idx, torch.arange(len(beam_idx))))
        return original(cache, beam_idx)

    def spy_prefilled(bart, states, *static):
        cache = prefilled(bart, states, *static)
        cross_rows.append(cache.cross_attention_cache.layers[0].keys.shape[0])
        return cache

    monkeypatch.setattr(EncoderDecoderCache, "reorder_cache", spy)
    monkeypatch.setattr(BeamCache, "prefilled", spy_prefilled)
    config = stock.bart.config
    for kwargs in (dict(num_beams=4, do_sample=False, max_new_tokens=16, min_new_tokens=16),
                   dict(num_beams=3, do_sample=True, top_p=0.9, max_new_tokens=10)):
        kwargs.update(output_scores=True, return_dict_in_generate=True)
        torch.manual_seed(0)
        ours = model.generate(ids, mask, music=music, **kwargs)
        torch.manual_seed(0)
        hf = stock.generate(ids, mask, music=music, cache=EncoderDecoderCache(
            DynamicCache(config=config), DynamicCache(config=config)), **kwargs)
        assert torch.equal(ours.sequences, hf.sequences), kwargs
        torch.testing.assert_close(torch.stack(ours.scores), torch.stack(hf.scores), rtol=1e-5, atol=1e-5)
    assert any(reordered) and cross_rows == [4, 4]  # one row of cross keys per song, not per beam


def test_compiled_decoding_with_a_static_cache_gives_the_same_captions_and_compiles_once_per_shape(monkeypatch):
    """generation.compile: the self-attention keys in a StaticCache allocated before the first
    step, beams reordered in place, the decoding step compiled (here with a backend that only
    counts the graphs it is given and runs them as they are)."""
    from transformers import StaticCache

    from alcap.model.beam import BeamCache

    model = tiny_model()
    ids, mask, _, music = batch(b=4, l_t=15)
    graphs, caches = [], []

    def counting(gm, example_inputs):
        graphs.append(len(example_inputs))
        return gm.forward

    prefilled = BeamCache.prefilled

    def spy(bart, states, max_cache_len=None, rows_per_input=1):
        caches.append(prefilled(bart, states, max_cache_len, rows_per_input))
        return caches[-1]

    monkeypatch.setattr(BeamCache, "prefilled", spy)
    for kwargs in (dict(num_beams=4, do_sample=False, max_new_tokens=16, min_new_tokens=16),
                   dict(num_beams=1, do_sample=False, max_new_tokens=12, min_new_tokens=12)):
        kwargs.update(output_scores=True, return_dict_in_generate=True)
        eager = model.generate(ids, mask, music=music, **kwargs)
        for _ in range(2):  # the second call reuses the first one's graph
            compiled = model.generate(ids, mask, music=music, compile_backend=counting, **kwargs)
            assert torch.equal(compiled.sequences, eager.sequences), kwargs
            torch.testing.assert_close(torch.stack(compiled.scores), torch.stack(eager.scores), rtol=1e-5, atol=1e-5)
        own = caches[-1].self_attention_cache
        rows, positions = 4 * kwargs["num_beams"], kwargs["max_new_tokens"] + 1  # the start token too
        assert isinstance(own, StaticCache) and own.layers[0].keys.shape[:3] == (rows, 4, positions)
    assert len(graphs) == 2  # one per shape (4 x 4 beams, 4 x 1), the first step included
    assert "forward" not in model.bart.__dict__  # the class's forward again after generate


def test_compiled_decoding_pads_lyrics_to_buckets_of_64_tokens():
    from alcap.model.captioner import COMPILE_LENGTH_MULTIPLE, pad_to_multiple

    ids, mask, _, _ = batch(b=2, l_t=70)
    padded, padded_mask = pad_to_multiple(ids, mask, COMPILE_LENGTH_MULTIPLE, pad_id=1)
    assert padded.shape == (2, 128) and torch.equal(padded[:, :70], ids) and (padded[:, 70:] == 1).all()
    assert torch.equal(padded_mask[:, :70], mask) and not padded_mask[:, 70:].any()
    assert pad_to_multiple(padded, padded_mask, 64, 1)[0] is padded  # already a multiple: unchanged


def test_attention_never_uses_cudnn_which_plans_every_new_shape(monkeypatch):
    """Batches are padded to their own length and decoding grows by a token a step; cuDNN's
    SDPA builds a plan per new shape (424 ms bart-base steps instead of 88 on an H100), so
    training, generation and inspection run without it, and leave the caller's setting alone."""
    enabled, original = [], torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        enabled.append(torch.backends.cuda.cudnn_sdp_enabled())
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    model = tiny_model()
    ids, mask, labels, music = batch()
    model.train()(ids, mask, labels=labels, music=music).loss.backward()
    calls = len(enabled)
    model.eval().generate(ids, mask, music=music, max_new_tokens=3, num_beams=2)
    model.inspect(ids, mask, music)
    assert calls >= 2 * 3 and len(enabled) > calls and not any(enabled)  # encoder + decoder layers at least
    assert torch.backends.cuda.cudnn_sdp_enabled()


def test_beam_attention_equals_sdpa_on_repeated_keys():
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    from alcap.model.beam import beam_sdpa

    g = torch.Generator().manual_seed(0)
    inputs, beams, heads, keys, dim = 3, 4, 2, 7, 8
    module = torch.nn.Module()
    module.is_causal = False
    for q_len in (1, 2):
        query = torch.randn(inputs * beams, heads, q_len, dim, generator=g)
        key, value = torch.randn(2, inputs, heads, keys, dim, generator=g)
        mask = torch.ones(inputs, keys, dtype=torch.bool)
        mask[0, -3:] = False
        mask = mask[:, None, None, :].expand(inputs, 1, q_len, keys).repeat_interleave(beams, 0)
        ours, _ = beam_sdpa(module, query, key, value, mask, scaling=dim ** -0.5)
        ref, _ = sdpa_attention_forward(module, query, key.repeat_interleave(beams, 0),
                                        value.repeat_interleave(beams, 0), mask, scaling=dim ** -0.5)
        assert ours.shape == ref.shape == (inputs * beams, q_len, heads, dim)
        torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-6)


def test_bad_configuration_is_explained():
    with pytest.raises(ValueError, match=r"fusion_layers: \[1, 5\] has \[5\], outside the 3 encoder layers of the backbone \(expected 0..2\)"):
        tiny_model(fusion_layers=[1, 5])
    with pytest.raises(ValueError, match=r"fusion_layers: \[\] is empty"):
        tiny_model(fusion_layers=[])
    with pytest.raises(ValueError, match=r"align_layer: 4 is outside 0..3"):
        tiny_model(align_layer=4)
    with pytest.raises(ValueError, match=r"temperature: 0.0 is out of range"):
        tiny_model(temperature=0.0)


def test_music_standardisation_uses_saved_statistics(tmp_path):
    model = tiny_model(music_standardize=True)
    ids, mask, labels, music = batch()
    mean, std = torch.full((256,), 0.5), torch.full((256,), 2.0)
    model.set_music_statistics(mean, std)
    plain = tiny_model(music_standardize=False)
    plain.load_state_dict(model.state_dict())
    torch.testing.assert_close(model(ids, mask, labels, music=music).logits,
                               plain(ids, mask, labels, music=(music - 0.5) / 2.0).logits)
    model.save_pretrained(tmp_path)
    again = AlcapModel.from_pretrained(tmp_path)
    assert torch.equal(again.music_mean, mean) and torch.equal(again.music_std, std)


def test_without_fusion_training_mode_is_exactly_hf_bart_dropout_included():
    """Same seed, train mode: ALCAP's own encoder loop draws the same dropout masks as HF's
    (embedding dropout, layer dropout), so a missing dropout anywhere shows."""
    model = tiny_model(use_music=False, alpha=0.0).train()
    assert model.bart.config.dropout > 0
    ids, mask, labels, _ = batch()
    torch.manual_seed(11)
    ours = model(ids, mask, labels)
    model.bart.set_attn_implementation("sdpa")
    torch.manual_seed(11)
    ref = model.bart(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
    assert torch.equal(ours.logits, ref.logits) and torch.equal(ours.loss, ref.loss)
    torch.manual_seed(12)
    assert not torch.equal(model(ids, mask, labels).logits, ours.logits)  # dropout is really on


@pytest.mark.parametrize("align_layer", [None, 0])
def test_alignment_reads_the_lyrics_states_before_any_fusion(monkeypatch, align_layer):
    """"Align before fuse": the head's input is HF's hidden_states[k], the states entering layer k."""
    from alcap.model.alignment import AlignmentHead

    model = tiny_model(align_layer=align_layer)  # fusion after layers 1 and 2; k = 1 by default
    seen = {}
    forward = AlignmentHead.forward

    def spy(self, lyrics_states, *args):
        seen["states"] = lyrics_states
        return forward(self, lyrics_states, *args)

    monkeypatch.setattr(AlignmentHead, "forward", spy)
    ids, mask, labels, music = batch()
    with torch.no_grad():
        model(ids, mask, labels, music=music)
        hf = model.bart.get_encoder()(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    k = model.config.alignment_layer()
    assert k == (1 if align_layer is None else 0)
    torch.testing.assert_close(seen["states"], hf.hidden_states[k], rtol=0, atol=1e-6)
    assert not torch.allclose(seen["states"], hf.hidden_states[k + 1], atol=1e-3)


def layer_norm_by_hand(x, ln):
    mean, var = x.mean(-1, keepdim=True), x.var(-1, unbiased=False, keepdim=True)
    return (x - mean) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def fusion_by_hand(block, text, music, music_mask):
    """post: LayerNorm(h + 0.1 * g * attn); update: h + 0.1 * g * LayerNorm(attn); attn =
    MHA(W_q h, W_k m, W_v m), written out."""
    d, heads = text.shape[-1], block.attention.num_heads
    q, k, v = block.query(text), block.key(music), block.value(music)
    w_q, w_k, w_v = block.attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = block.attention.in_proj_bias.chunk(3)
    q, k, v = q @ w_q.T + b_q, k @ w_k.T + b_k, v @ w_v.T + b_v

    def split(t):  # (B, L, d) -> (B, heads, L, d / heads)
        return t.view(t.shape[0], t.shape[1], heads, d // heads).transpose(1, 2)

    scores = split(q) @ split(k).transpose(-1, -2) / (d // heads) ** 0.5
    scores = scores.masked_fill(~music_mask.bool()[:, None, None, :], float("-inf"))
    attn = (scores.softmax(-1) @ split(v)).transpose(1, 2).reshape(text.shape)
    attn = attn @ block.attention.out_proj.weight.T + block.attention.out_proj.bias
    if block.norm == "update":
        attn = layer_norm_by_hand(attn, block.layer_norm)
    if block.gate is not None:
        attn = torch.sigmoid(torch.cat([text, attn], -1) @ block.gate.weight.T + block.gate.bias) * attn
    h = text + block.residual_scale * attn
    return layer_norm_by_hand(h, block.layer_norm) if block.norm == "post" else h


@pytest.mark.parametrize("norm", ["post", "update"])
@pytest.mark.parametrize("shared, gate, heads", [(True, False, 1), (False, True, 2), (True, True, 1), (False, False, 2)])
def test_the_fusion_block_is_the_formula_at_each_fusion_layer(shared, gate, heads, norm):
    model = tiny_model(fusion_shared=shared, fusion_forget_gate=gate, fusion_heads=heads, fusion_norm=norm)
    with torch.no_grad():
        for block in model.fusion:  # non-trivial LayerNorm and gate parameters
            block.layer_norm.weight.uniform_(0.5, 1.5)
            block.layer_norm.bias.uniform_(-0.2, 0.2)
    calls = []
    hooks = [block.register_forward_hook(lambda mod, args, out, j=j: calls.append((j, args, out[0])))
             for j, block in enumerate(model.fusion)]
    ids, mask, labels, music = batch()
    music_mask = torch.ones(3, 11, dtype=torch.long)
    music_mask[2, 7:] = 0
    with torch.no_grad():
        model(ids, mask, labels, music=music, music_mask=music_mask)
        for j, (text, m, m_mask, _), out in calls:
            torch.testing.assert_close(out, fusion_by_hand(model.fusion[j], text, m, m_mask), rtol=1e-5, atol=1e-5)
    for hook in hooks:
        hook.remove()
    assert [j for j, _, _ in calls] == ([0, 0] if shared else [0, 1])  # one block reused, or one per layer


def test_model_directories_from_before_the_fusion_norm_option_load_as_the_original(tmp_path):
    """Same parameters either way; an alcap_config.json without fusion_norm is the original ("post")."""
    import json

    model = tiny_model(fusion_norm="post")
    assert set(model.state_dict()) == set(tiny_model(fusion_norm="update").state_dict())
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "alcap_config.json").read_text())
    del config["fusion_norm"]
    (tmp_path / "alcap_config.json").write_text(json.dumps(config))
    loaded = AlcapModel.from_pretrained(tmp_path)
    assert loaded.config.fusion_norm == "post" and loaded.fusion[0].norm == "post"
    ids, mask, labels, music = batch()
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids, mask, labels, music=music).logits, model(ids, mask, labels, music=music).logits)
    assert AlcapConfig().fusion_norm == "update"  # new runs
