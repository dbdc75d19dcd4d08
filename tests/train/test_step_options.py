"""Options of the training step for GPUs, checked on the CPU: length buckets and the fused AdamW."""

import copy
from types import SimpleNamespace

import torch
from transformers import BartForConditionalGeneration

from alcap.data.dataset import CaptionCollator
from alcap.model.backbone import train_bpe_tokenizer
from alcap.model.captioner import AlcapConfig, AlcapModel, bart_config
from alcap.train.loop import build_optimizer

ROWS = [{"lyrics": "the city lights " * n, "caption": "a slow song about " + "the night " * (n // 2), "song_index": n,
         "music": torch.randn(6, 16).numpy()} for n in (3, 9, 20)]


def tokenizer():
    return train_bpe_tokenizer([r["lyrics"] + r["caption"] for r in ROWS] * 5, vocab_size=300, min_frequency=1)


def model(vocab):
    torch.manual_seed(0)
    return AlcapModel(AlcapConfig(fusion_layers=[1, 2], alpha=0.02, music_dim=16),
                      BartForConditionalGeneration(bart_config("tiny", vocab))).eval()


def test_length_buckets_pad_to_multiples_and_leave_the_loss_unchanged():
    tok = tokenizer()
    plain = CaptionCollator(tok, 512, 512)(ROWS)
    bucketed = CaptionCollator(tok, 512, 512, pad_to_multiple_of=64)(ROWS)
    assert plain["input_ids"].shape[1] % 64 != 0 and bucketed["input_ids"].shape[1] == 64
    assert bucketed["labels"].shape[1] == 64 and (bucketed["labels"][:, plain["labels"].shape[1]:] == -100).all()
    net = model(len(tok))
    with torch.no_grad():
        a, b = net(**plain, return_logits=False), net(**bucketed, return_logits=False)
    torch.testing.assert_close(b.caption_loss, a.caption_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(b.loss, a.loss, rtol=1e-5, atol=1e-6)


def test_the_fused_adamw_makes_the_same_steps_as_torchs_default():
    tok = tokenizer()
    batch = CaptionCollator(tok, 512, 512)(ROWS)
    nets = {}
    for fused in (False, True):
        net = copy.deepcopy(model(len(tok))).train()
        torch.manual_seed(1)
        optimizer = build_optimizer(net, SimpleNamespace(optimizer="adamw", lr=1e-3, weight_decay=0.01,
                                                         new_modules_lr=None, fused_optimizer=fused))
        assert optimizer.defaults["fused"] is fused
        for _ in range(3):
            torch.manual_seed(2)  # the same dropout masks in both runs
            net(**batch, return_logits=False).loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        nets[fused] = dict(net.named_parameters())
    for name, param in nets[False].items():
        torch.testing.assert_close(nets[True][name], param, rtol=1e-5, atol=1e-6, msg=name)


def test_gradient_checkpointing_recomputes_the_layers_and_leaves_loss_and_gradients_unchanged():
    from alcap.train.loop import enable_gradient_checkpointing

    tok = tokenizer()
    batch = CaptionCollator(tok, 512, 512)(ROWS)
    plain = model(len(tok)).train()  # dropout on: the recomputation must replay the same masks
    checkpointed = copy.deepcopy(plain)
    enable_gradient_checkpointing(checkpointed)
    calls = []
    layers = [*checkpointed.bart.model.encoder.layers, *checkpointed.bart.model.decoder.layers]
    for layer in layers:
        layer.fc1.register_forward_pre_hook(lambda module, args: calls.append(module))  # inside the checkpoint
    grads, losses = {}, {}
    for name, net in (("plain", plain), ("checkpointed", checkpointed)):
        torch.manual_seed(3)
        out = net(**batch, return_logits=False)
        out.loss.backward()
        losses[name] = out.loss.detach()
        grads[name] = {k: p.grad for k, p in net.named_parameters() if p.grad is not None}
    assert len(calls) == 2 * len(layers)  # each layer ran forward again in the backward pass
    torch.testing.assert_close(losses["checkpointed"], losses["plain"])
    assert grads["plain"].keys() == grads["checkpointed"].keys()
    for name, grad in grads["plain"].items():
        torch.testing.assert_close(grads["checkpointed"][name], grad, rtol=1e-5, atol=1e-6, msg=name)
