"""The caption loss without B x T x V logits.

HF's BART applies its LM head (d x V; V = 50,265 for BART's vocabulary) at every caption
position, padding included, and keeps the logits, their log-softmax and both gradients alive
through the backward pass: for a batch of 26 captions of ~100 tokens that is several GB. Here
the head is applied only where there is a label, a chunk of positions at a time, and each
chunk's logits are recomputed in the backward pass instead of kept (activation
checkpointing), so memory holds one chunk's logits at a time. The value and the gradients are
those of HF's loss (mean cross-entropy over the labelled positions), to float rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE = -100  # HF's label for positions without a target (padding)
CHUNK_POSITIONS = 2048  # labelled positions per chunk: 2048 x 50,265 float32 logits = 0.4 GB


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None):
    logits = F.linear(hidden, weight, bias)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def label_token_loss(hidden: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                     chunk: int = CHUNK_POSITIONS) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T + bias` against `labels` over the positions
    whose label is not -100: HF's `CrossEntropyLoss()(logits.view(-1, V), labels.view(-1))`
    without its logits. hidden (B, T, d), labels (B, T), weight (V, d), bias (V,)."""
    keep = labels != IGNORE
    states, targets = hidden[keep], labels[keep]
    count = targets.numel()
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, count, chunk):
        part = (states[start:start + chunk], targets[start:start + chunk], weight, bias)
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            total = total + checkpoint(_chunk_loss, *part, use_reentrant=False)
        else:
            total = total + _chunk_loss(*part)
    return total / count  # no labelled position: nan, as HF's mean over nothing
