"""The caption loss without B x T x V logits.

HF's BART applies its LM head (d x V; V = 50,265 for BART's vocabulary) at every caption
position, padding included, and keeps the logits, their log-softmax and both gradients alive
through the backward pass: for a batch of 26 captions of ~100 tokens that is several GB. Here
the head is applied only where there is a label, a chunk of positions at a time, and each
chunk's gradients (with respect to the hidden states, the head's weight and its bias) are
computed in the forward pass, right after its logits, so that memory holds one chunk's logits
at a time and nothing is recomputed: the softmax is formed in place in the logits' buffer and
is the logits' gradient once the target's 1 is taken off. The backward pass only scales the
stored gradients by the incoming one. The value and the gradients are those of HF's loss (mean
cross-entropy over the labelled positions), to float rounding.

On a CUDA device with Liger's kernels installed (`pip install liger-kernel`), Liger's fused
Triton kernel for the same computation is used instead.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE = -100  # HF's label for positions without a target (padding)
CHUNK_POSITIONS = 1024  # labelled positions per chunk: 1024 x 50,265 float32 logits = 0.2 GB


def label_token_loss(hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     chunk: int | None = None) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T + bias` against `labels` over the positions
    whose label is not -100: HF's `CrossEntropyLoss()(logits.view(-1, V), labels.view(-1))`
    without its logits. hidden (B, T, d), labels (B, T), weight (V, d), bias (V,)."""
    chunk = chunk or CHUNK_POSITIONS
    keep = labels != IGNORE
    states, targets = hidden[keep], labels[keep]
    if not torch.is_grad_enabled() or not (states.requires_grad or weight.requires_grad
                                           or (bias is not None and bias.requires_grad)):
        return _chunked_loss(states, targets, weight, bias, chunk, None) / targets.numel()  # no graph to build
    liger = _liger_loss(states, targets, weight, bias)
    if liger is not None:
        return liger
    return LinearCrossEntropy.apply(states, weight, bias, targets, chunk)


class LinearCrossEntropy(torch.autograd.Function):
    """Mean cross-entropy of `states @ weight.T + bias` against `targets`; (N, d), (V, d), (V,), (N,)."""

    @staticmethod
    def forward(ctx, states, weight, bias, targets, chunk):
        count = targets.numel()
        grads = {"states": torch.empty_like(states) if ctx.needs_input_grad[0] else None,
                 "weight": torch.zeros_like(weight, dtype=torch.float32) if ctx.needs_input_grad[1] else None,
                 "bias": torch.zeros_like(bias, dtype=torch.float32) if ctx.needs_input_grad[2] else None}
        total = _chunked_loss(states, targets, weight, bias, chunk, grads, scale=1.0 / max(count, 1))
        # Gradients in their inputs' dtypes (weight and bias summed in float32 above); kept on ctx:
        # they are neither inputs nor outputs, so save_for_backward has nothing to check on them.
        ctx.grads = [None if g is None else g.to(x.dtype) for g, x in zip(grads.values(), (states, weight, bias))]
        return total / count  # no labelled position: nan, as HF's mean over nothing

    @staticmethod
    def backward(ctx, grad_output):
        return *(None if g is None else g * grad_output for g in ctx.grads), None, None


def _chunked_loss(states, targets, weight, bias, chunk: int, grads: dict | None, scale: float = 1.0) -> torch.Tensor:
    """Summed cross-entropy over the rows of `states`, a chunk of rows at a time; with `grads`
    (buffers from LinearCrossEntropy.forward), the gradients of `scale` x the sum go into them."""
    device_type = states.device.type
    dtype = torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else weight.dtype
    # The matmuls run in autocast's dtype, as F.linear would; the softmax and the sums in float32.
    w = weight.to(dtype)
    total = states.new_zeros((), dtype=torch.float32)
    with torch.autocast(device_type, enabled=False):
        for start in range(0, targets.numel(), chunk):
            h, t = states[start:start + chunk].to(dtype), targets[start:start + chunk]
            logits = F.linear(h, w, None if bias is None else bias.to(dtype)).float()
            target_logits = logits.gather(1, t[:, None]).squeeze(1)
            top = logits.amax(dim=1, keepdim=True)
            probs = logits.sub_(top).exp_()  # in place: the logits are not needed again
            sums = probs.sum(dim=1, keepdim=True)
            total = total + (sums.log() + top).squeeze(1).sub(target_logits).sum()
            if grads is None:
                continue
            grad_logits = probs.div_(sums)  # the softmax ...
            grad_logits[torch.arange(t.numel(), device=t.device), t] -= 1  # ... minus the one-hot target
            grad_logits.mul_(scale)
            low = grad_logits.to(dtype)  # a no-op in float32
            if grads["states"] is not None:
                grads["states"][start:start + chunk] = low @ w
            if grads["weight"] is not None:
                if dtype == torch.float32:
                    grads["weight"].addmm_(low.T, h)
                else:
                    grads["weight"].add_(low.T @ h)
            if grads["bias"] is not None:
                grads["bias"].add_(grad_logits.sum(dim=0))
    return total


def _liger_loss(states, targets, weight, bias) -> torch.Tensor | None:
    """Liger's fused linear cross-entropy (Triton) on a CUDA device where it is installed; None elsewhere."""
    if states.device.type != "cuda":
        return None
    try:
        from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss
    except ImportError:
        return None
    return LigerFusedLinearCrossEntropyLoss(reduction="mean")(weight, states, targets, bias)
