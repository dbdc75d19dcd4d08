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


def reference_loss(hidden, labels, weight, bias):
    logits = torch.nn.functional.linear(hidden, weight, bias)
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), labels.flatten())


def loss_inputs(seed=0, vocab=50, d=8):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(3, 7, d, generator=g, requires_grad=True)
    weight = torch.randn(vocab, d, generator=g, requires_grad=True)
    bias = torch.randn(vocab, generator=g, requires_grad=True)
    labels = torch.randint(0, vocab, (3, 7), generator=g)
    labels[0, 5:] = -100
    labels[2, 1:] = -100
    return hidden, labels, weight, bias


def test_gradients_of_hidden_states_weight_and_bias_with_a_scaled_upstream_gradient():
    # the gradients are computed in the forward pass and scaled by the incoming one in backward
    hidden, labels, weight, bias = loss_inputs()
    (3.5 * reference_loss(hidden, labels, weight, bias)).backward()
    expected = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    (3.5 * label_token_loss(hidden, labels, weight, bias, chunk=4)).backward()
    for got, want in zip((hidden.grad, weight.grad, bias.grad), expected):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_without_gradients_the_value_is_the_same():
    hidden, labels, weight, bias = loss_inputs(1)
    expected = reference_loss(hidden, labels, weight, bias)
    with torch.no_grad():
        got = label_token_loss(hidden, labels, weight, bias, chunk=3)
    assert not got.requires_grad
    torch.testing.assert_close(got, expected.detach(), rtol=1e-6, atol=1e-6)


def test_under_bf16_autocast_it_follows_autocasts_matmul():
    # the matmuls in bfloat16 as autocast's F.linear runs them; softmax and sums in float32
    hidden, labels, weight, bias = loss_inputs(2, vocab=300, d=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = reference_loss(hidden, labels, weight, bias)
        got = label_token_loss(hidden, labels, weight, bias, chunk=5)
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
    got.backward()
    assert hidden.grad.dtype == hidden.dtype and weight.grad.dtype == weight.dtype
    grads = [t.grad.clone() for t in (hidden, weight, bias)]
    for t in (hidden, weight, bias):
        t.grad = None
    reference_loss(hidden, labels, weight, bias).backward()  # float32
    for got_grad, t in zip(grads, (hidden, weight, bias)):
        torch.testing.assert_close(got_grad, t.grad, rtol=0.05, atol=2e-3)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="Liger's kernel needs a CUDA device")
def test_liger_on_cuda_agrees_with_the_chunked_loss():
    pytest.importorskip("liger_kernel")
    hidden, labels, weight, bias = (t.detach().cuda().requires_grad_(t.requires_grad) if t.is_floating_point()
                                    else t.cuda() for t in loss_inputs(3, vocab=500, d=64))
    got = label_token_loss(hidden, labels, weight, bias)  # Liger's
    got.backward()
    grads = [t.grad.clone() for t in (hidden, weight)]
    hidden.grad = weight.grad = None
    expected = loss_module.LinearCrossEntropy.apply(hidden[labels != -100], weight, bias, labels[labels != -100], 64)
    expected.backward()
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[0], hidden.grad, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(grads[1], weight.grad, rtol=1e-4, atol=1e-4)
