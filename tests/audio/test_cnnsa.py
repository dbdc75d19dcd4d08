import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from alcap.audio.cnnsa import (
    CNNSA, CheckpointError, TransformerLayer, fixed_cls_vector, load_cnnsa, random_cnnsa, read_state_dict,
    state_dict_sha256,
)
from alcap.audio.tags import MSD_TOP50_TAGS


def original_key_names() -> set[str]:
    """The state-dict keys of the public checkpoint, written out from SPEC section 3."""
    keys = {f"spec_bn.{p}" for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    for i in range(1, 8):
        convs = (1, 2, 3)  # every block changes shape (stride 2 or (2, 1)), so all have conv_3
        keys |= {f"layer{i}.conv_{c}.{p}" for c in convs for p in ("weight", "bias")}
        keys |= {f"layer{i}.bn_{c}.{p}" for c in convs
                 for p in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")}
    for i in (0, 1):
        pre = f"encoder.layer.{i}"
        for name in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                     "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"):
            keys |= {f"{pre}.{name}.weight", f"{pre}.{name}.bias"}
    return keys | {"pooler.dense.weight", "pooler.dense.bias", "dense.weight", "dense.bias"}


def test_parameter_names_are_the_public_checkpoints():
    assert set(CNNSA().state_dict()) == original_key_names()


def test_cls_vector_is_bit_exact():
    np.random.seed(0)
    expected = torch.Tensor(np.random.random((1, 256)))  # how the original built it
    assert torch.equal(fixed_cls_vector(), expected)
    assert torch.equal(CNNSA().cls_vector, expected)


def test_fifteen_seconds_give_119_by_256_and_tag_probabilities(cnnsa_checkpoint):
    model, _ = load_cnnsa(cnnsa_checkpoint)
    wave = torch.randn(2, 240000) * 0.1
    out = model(wave)
    assert out.sequence.shape == (2, 119, 256) and model.sequence_length(240000) == 119
    assert out.tag_probs.shape == (2, len(MSD_TOP50_TAGS)) == (2, 50)
    assert torch.all((out.tag_probs >= 0) & (out.tag_probs <= 1))
    assert torch.isfinite(out.sequence).all()
    again = model(wave)  # eval mode: no dropout, BatchNorm uses running statistics
    assert torch.equal(out.sequence, again.sequence) and torch.equal(out.tag_probs, again.tag_probs)
    assert torch.equal(model(wave[1:]).sequence[0], out.sequence[1])  # batch rows do not interact


def test_the_extractors_fast_copy_computes_the_checkpoints_function(cnnsa_checkpoint):
    from alcap.audio.extractor import CNNSAExtractor

    extractor = CNNSAExtractor.from_checkpoint(cnnsa_checkpoint, device="cpu")
    wave = torch.randn(3, 48000) * 0.1
    with torch.no_grad():
        reference = extractor.model(wave)  # the checkpoint's modules, BatchNorm unfolded
    scale = reference.sequence.abs().max()
    torch.testing.assert_close(extractor.embed(wave), reference.sequence, rtol=0, atol=1e-5 * scale)
    torch.testing.assert_close(extractor.tag(wave), reference.tag_probs, rtol=0, atol=1e-5)
    assert set(extractor.model.state_dict()) == original_key_names()  # what is hashed and exported is unchanged


def test_checkpoint_with_prefix_and_torchaudio_buffers_loads_unchanged(cnnsa_checkpoint, tmp_path):
    raw = torch.load(cnnsa_checkpoint, weights_only=True)
    model, digest = load_cnnsa(cnnsa_checkpoint)
    for key, value in model.state_dict().items():
        assert torch.equal(value, raw[f"module.{key}"])
    # The same weights without prefix and buffers, in a directory: same model, same hash.
    plain = {k[len("module."):]: v for k, v in raw.items() if not k.startswith("module.spec.")}
    (tmp_path / "plain").mkdir()
    torch.save(plain, tmp_path / "plain" / "best_model.pth")
    _, digest_plain = load_cnnsa(tmp_path / "plain")
    assert digest_plain == digest


def test_mismatched_checkpoints_list_the_keys(cnnsa_checkpoint, tmp_path):
    state = read_state_dict(cnnsa_checkpoint)
    broken = dict(state)
    del broken["layer3.bn_2.running_var"]
    broken["encoder.layer.2.output.dense.weight"] = torch.zeros(1)
    broken["dense.weight"] = torch.zeros(50, 128)
    torch.save(broken, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as info:
        load_cnnsa(tmp_path / "broken.pth")
    message = str(info.value)
    assert "missing keys (1): layer3.bn_2.running_var" in message
    assert "unexpected keys (1): encoder.layer.2.output.dense.weight" in message
    assert "dense.weight (50, 128) (expected (50, 256))" in message
    with pytest.raises(CheckpointError, match="no checkpoint file"):
        load_cnnsa(tmp_path)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: cannot read"):
        load_cnnsa(tmp_path / "junk.pth")


def reference_bert_layer(layer: TransformerLayer, x: torch.Tensor) -> torch.Tensor:
    """The original's BertLayer maths, written out step by step (TF-style LayerNorm, erf GELU)."""

    def layer_norm(h, ln):
        u = h.mean(-1, keepdim=True)
        s = (h - u).pow(2).mean(-1, keepdim=True)
        return ln.weight * (h - u) / torch.sqrt(s + 1e-12) + ln.bias

    att = layer.attention.self
    b, n, d = x.shape
    heads = layer.heads

    def split(t):
        return t.view(b, n, heads, d // heads).permute(0, 2, 1, 3)

    scores = split(att.query(x)) @ split(att.key(x)).transpose(-1, -2) / math.sqrt(d // heads)
    ctx = (torch.softmax(scores, dim=-1) @ split(att.value(x))).permute(0, 2, 1, 3).reshape(b, n, d)
    h = layer_norm(layer.attention.output.dense(ctx) + x, layer.attention.output.LayerNorm)
    inter = layer.intermediate.dense(h)
    inter = inter * 0.5 * (1.0 + torch.erf(inter / math.sqrt(2.0)))
    return layer_norm(layer.output.dense(inter) + h, layer.output.LayerNorm)


def test_transformer_layer_equals_the_reference_maths():
    torch.manual_seed(0)
    layer = TransformerLayer().eval()
    with torch.no_grad():  # non-trivial LayerNorm parameters
        for ln in (layer.attention.output.LayerNorm, layer.output.LayerNorm):
            ln.weight.uniform_(0.5, 1.5)
            ln.bias.uniform_(-0.2, 0.2)
    x = torch.randn(3, 119, 256)
    torch.testing.assert_close(layer(x), reference_bert_layer(layer, x), atol=1e-5, rtol=1e-5)


def test_random_init_is_reproducible_and_leaves_global_rng_alone():
    torch.manual_seed(7)
    before = torch.rand(1)
    torch.manual_seed(7)
    a, digest_a = random_cnnsa(0)
    after = torch.rand(1)
    b, digest_b = random_cnnsa(0)
    assert torch.equal(before, after)
    assert digest_a == digest_b == state_dict_sha256(b.state_dict())
    assert random_cnnsa(1)[1] != digest_a


def test_a_whole_song_runs_through_the_cnn_in_exact_chunks(monkeypatch):
    """Chunks with a halo that covers the receptive field give the unchunked features; a
    halo that is too small does not (so the comparison can fail)."""
    import alcap.audio.cnnsa as cnnsa

    torch.manual_seed(0)
    model = cnnsa.CNNSA().eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    wave = 0.1 * torch.randn(1, 16000 * 40 + 123)  # 2501 mel frames: not a multiple of the stride
    with torch.no_grad():
        whole = model._cnn(model.spec_bn(model.spec(wave).unsqueeze(1)))
        monkeypatch.setattr(cnnsa, "CONV_CHUNK_FRAMES", 512)
        chunked = model.convolve(wave)
        monkeypatch.setattr(cnnsa, "CONV_HALO_FRAMES", 40)
        too_little_context = model.convolve(wave)
    assert chunked.shape == whole.shape == (1, 313, 256)
    torch.testing.assert_close(chunked, whole, rtol=0, atol=1e-5)
    assert (too_little_context - whole).abs().max() > 1e-3


def test_the_recorded_encoder_path_is_absolute(cnnsa_checkpoint, monkeypatch):
    """A store or model records where its encoder came from and is used from other directories."""
    from alcap.audio.extractor import CNNSAExtractor

    monkeypatch.chdir(cnnsa_checkpoint.parent.parent)
    extractor = CNNSAExtractor.from_checkpoint("attention/best_model.pth", device="cpu")
    assert extractor.source == str(cnnsa_checkpoint) and extractor.describe()["weights_source"] == str(cnnsa_checkpoint)


def reference_cnnsa(state: dict, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The original CNNSA (Won et al. 2019; SPEC section 3) written out with plain functional ops
    from the checkpoint's tensors alone: mel (B, 128, T) -> (h_m, tag probabilities)."""
    def bn(x, name):
        return F.batch_norm(x, state[f"{name}.running_mean"], state[f"{name}.running_var"], state[f"{name}.weight"],
                            state[f"{name}.bias"], training=False, eps=1e-5)

    def conv(x, name, stride):
        return F.conv2d(x, state[f"{name}.weight"], state[f"{name}.bias"], stride=stride, padding=1)

    x = bn(mel.unsqueeze(1), "spec_bn")
    strides = [2, 2, 2, (2, 1), (2, 1), (2, 1), (2, 1)]
    for i, stride in enumerate(strides, start=1):
        body = bn(conv(F.relu(bn(conv(x, f"layer{i}.conv_1", stride), f"layer{i}.bn_1")), f"layer{i}.conv_2", 1),
                  f"layer{i}.bn_2")
        shortcut = bn(conv(x, f"layer{i}.conv_3", stride), f"layer{i}.bn_3")  # every block changes shape
        x = F.relu(shortcut + body)
    x = x.squeeze(2).permute(0, 2, 1)  # (B, 256, 1, T') -> (B, T', 256)
    np.random.seed(0)
    cls = torch.tensor(np.random.random((1, 256)), dtype=torch.float32).expand(x.shape[0], 1, 256)
    h = torch.cat([cls, x], dim=1)

    def linear(t, name):
        return F.linear(t, state[f"{name}.weight"], state[f"{name}.bias"])

    def layer_norm(t, name):
        u = t.mean(-1, keepdim=True)
        s = (t - u).pow(2).mean(-1, keepdim=True)
        return state[f"{name}.weight"] * (t - u) / torch.sqrt(s + 1e-12) + state[f"{name}.bias"]

    b, n, d = h.shape
    for i in (0, 1):
        pre = f"encoder.layer.{i}"

        def heads(t):
            return t.view(b, n, 8, d // 8).permute(0, 2, 1, 3)

        q, k, v = (heads(linear(h, f"{pre}.attention.self.{w}")) for w in ("query", "key", "value"))
        ctx = (torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d // 8), dim=-1) @ v).permute(0, 2, 1, 3).reshape(b, n, d)
        h = layer_norm(linear(ctx, f"{pre}.attention.output.dense") + h, f"{pre}.attention.output.LayerNorm")
        inter = linear(h, f"{pre}.intermediate.dense")
        inter = inter * 0.5 * (1.0 + torch.erf(inter / math.sqrt(2.0)))
        h = layer_norm(linear(inter, f"{pre}.output.dense") + h, f"{pre}.output.LayerNorm")
    pooled = torch.tanh(linear(h[:, 0], "pooler.dense"))
    return h, torch.sigmoid(linear(pooled, "dense"))


def test_the_whole_forward_equals_the_original_maths_written_out():
    """Guards every part of the CNN (e.g. each block's final ReLU) and the transformer, on
    random weights with non-trivial BatchNorm statistics and affine parameters."""
    torch.manual_seed(3)
    model = CNNSA().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
    wave = 0.1 * torch.randn(2, 48000)
    with torch.no_grad():
        out = model(wave)
        mel = model.spec(wave)  # the front end is checked against librosa in test_frontend.py
        sequence, probs = reference_cnnsa({k: v.clone() for k, v in model.state_dict().items()}, mel)
    assert out.sequence.shape == sequence.shape == (2, 1 + 24, 256)
    torch.testing.assert_close(out.sequence, sequence, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out.tag_probs, probs, rtol=1e-4, atol=1e-5)
