"""The caption loss on labelled positions only, in chunks: HF's loss and gradients, without its logits."""

import pytest
import torch
from transformers import BartForConditionalGeneration

from alcap.model import loss as loss_module
from alcap.model.captioner import AlcapConfig, AlcapModel, bart_config
from alcap.model.loss import label_token_loss

VOCAB = 3000  # large enough that the LM head dominates, as BART's 50,265 do


def model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = AlcapModel(AlcapConfig(fusion_layers=[1, 2], alpha=0.02), BartForConditionalGeneration(bart_config("tiny", VOCAB)))
    model.bart.final_logits_bias.normal_()  # a non-zero bias, so leaving it out would show
    g = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(4, VOCAB, (4, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, -4:] = 0
    labels = torch.randint(4, VOCAB, (4, 9), generator=g)
    labels[1, -5:] = -100  # padding of a shorter caption
    labels[3, -2:] = -100
    music = torch.randn(4, 10, 256, generator=g)
    return model, dict(input_ids=ids, attention_mask=mask, labels=labels, music=music, song_ids=["a", "b", "c", "a"])


@pytest.mark.parametrize("chunk", [5, 2048])  # several chunks (with a ragged last one), and one
def test_the_chunked_loss_and_its_gradients_are_hfs(chunk, monkeypatch):
    monkeypatch.setattr(loss_module, "CHUNK_POSITIONS", chunk)
    model, batch = model_and_batch()
    model.eval()  # no dropout: both passes see the same network (gradients flow in eval mode too)
    reference = model(**batch)  # HF's loss over full logits
    reference.loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    ours = model(**batch, return_logits=False)
    ours.loss.backward()
    assert ours.logits is None
    torch.testing.assert_close(ours.caption_loss, reference.caption_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.loss, reference.loss, rtol=1e-5, atol=1e-5)
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert set(got) == set(expected)
    for name, grad in expected.items():
        torch.testing.assert_close(got[name], grad, rtol=1e-5, atol=1e-5, msg=name)


def test_a_hand_checked_example():
    # two positions with labels, one without; V = 3, d = 2
    hidden = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [5.0, 5.0]]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])
    bias = torch.tensor([0.0, 0.0, 1.0])
    labels = torch.tensor([[0, 2, -100]])
    # position 0: logits (1, 0, 1) -> -log(e / (2e + 1)); position 1: logits (0, 1, 1) -> -log(e / (2e + 1))
    e = torch.exp(torch.tensor(1.0))
    expected = -torch.log(e / (2 * e + 1))
    assert label_token_loss(hidden, labels, weight, bias, chunk=1).item() == pytest.approx(expected.item(), rel=1e-6)
    assert torch.isnan(label_token_loss(hidden, torch.full((1, 3), -100), weight, bias))  # HF's mean over nothing
