"""CNNSA music encoder (Won et al. 2019), the frozen music side of ALCAP.

Module and parameter names follow the public `minzwon/sota-music-tagging-models` checkpoints
(`models/{msd,mtat,jamendo}/attention/best_model.pth`) so those files load unchanged.
Layout: log-mel -> BatchNorm2d(1) -> 7 residual conv blocks -> (B, T', 256) -> fixed CLS
vector prepended -> 2-layer post-LN transformer without position embeddings -> h_m.
"""

from __future__ import annotations

import hashlib
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ..utils import refused_pickle
from .frontend import MelFrontEnd

HIDDEN = 256
# Buffers that checkpoints saved from the torchaudio-based module carry; our front end is fixed.
IGNORED_CHECKPOINT_KEYS = ("spec.spectrogram.window", "spec.mel_scale.fb")
CHECKPOINT_FILE_NAMES = ("best_model.pth", "model.pth", "model.safetensors")


class CheckpointError(Exception):
    """A music-encoder checkpoint that does not match the CNNSA layout."""


def fixed_cls_vector() -> torch.Tensor:
    """The original's CLS token: `np.random.seed(0); np.random.random((1, 256))` as float32.

    A private RandomState gives the same numbers without touching numpy's global state.
    """
    return torch.from_numpy(np.random.RandomState(0).random_sample((1, HIDDEN)).astype(np.float32))


class Res2d(nn.Module):
    """conv(stride) -> bn -> relu -> conv -> bn, plus a strided conv shortcut when shapes change."""

    def __init__(self, in_ch: int, out_ch: int, stride: int | tuple[int, int] = 2):
        super().__init__()
        self.conv_1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
        self.bn_1 = nn.BatchNorm2d(out_ch)
        self.conv_2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.bn_2 = nn.BatchNorm2d(out_ch)
        self.has_shortcut = stride != 1 or in_ch != out_ch
        if self.has_shortcut:
            self.conv_3 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1)
            self.bn_3 = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        body = self.bn_2(self.conv_2(F.relu(self.bn_1(self.conv_1(x)))))
        shortcut = self.bn_3(self.conv_3(x)) if self.has_shortcut else x
        return F.relu(shortcut + body)


class _SelfAttention(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(hidden, hidden)
        self.value = nn.Linear(hidden, hidden)


class _AttentionOutput(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)


class _Attention(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.self = _SelfAttention(hidden)
        self.output = _AttentionOutput(hidden)


class _Dense(nn.Module):
    def __init__(self, n_in: int, n_out: int, norm: bool):
        super().__init__()
        self.dense = nn.Linear(n_in, n_out)
        if norm:
            self.LayerNorm = nn.LayerNorm(n_out, eps=1e-12)


class TransformerLayer(nn.Module):
    """BERT-style post-LayerNorm layer with exact (erf) GELU; names match the checkpoint."""

    def __init__(self, hidden: int = HIDDEN, heads: int = 8, intermediate: int = 1024,
                 hidden_dropout: float = 0.4, attention_dropout: float = 0.5):
        super().__init__()
        self.heads = heads
        self.attention = _Attention(hidden)
        self.intermediate = _Dense(hidden, intermediate, norm=False)
        self.output = _Dense(intermediate, hidden, norm=True)
        self.hidden_dropout = nn.Dropout(hidden_dropout)
        self.attention_dropout = attention_dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        att = self.attention.self

        def split(t: torch.Tensor) -> torch.Tensor:  # (B, N, D) -> (B, heads, N, D / heads)
            return t.view(b, n, self.heads, d // self.heads).transpose(1, 2)

        ctx = F.scaled_dot_product_attention(
            split(att.query(x)), split(att.key(x)), split(att.value(x)),
            dropout_p=self.attention_dropout if self.training else 0.0,
        )
        ctx = ctx.transpose(1, 2).reshape(b, n, d)
        out = self.attention.output
        x = out.LayerNorm(self.hidden_dropout(out.dense(ctx)) + x)
        h = F.gelu(self.intermediate.dense(x))  # exact erf GELU, as the original
        return self.output.LayerNorm(self.hidden_dropout(self.output.dense(h)) + x)


class TransformerEncoder(nn.Module):
    def __init__(self, num_layers: int = 2, **layer_kwargs):
        super().__init__()
        self.layer = nn.ModuleList([TransformerLayer(**layer_kwargs) for _ in range(num_layers)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x)
        return x


@dataclass
class CNNSAOutput:
    sequence: torch.Tensor  # (B, 1 + T', 256): last transformer layer, CLS first; ALCAP's h_m
    tag_probs: torch.Tensor  # (B, n_tags): sigmoid of the tagging head
    tag_logits: torch.Tensor  # (B, n_tags): before the sigmoid (for a numerically stable training loss)


TIME_STRIDE = 8  # layers 1-3 halve time
# Whole songs run through the CNN in chunks (see CNNSA.convolve). The receptive field reaches
# 85 mel frames to each side (3 + 6 + 12 from layers 1-3, 16 from each of layers 4-7).
CONV_CHUNK_FRAMES, CONV_HALO_FRAMES = 2048, 88


class CNNSA(nn.Module):
    """CNN + self-attention music tagger; ALCAP uses its last-layer sequence as h_m."""

    def __init__(self, n_channels: int = 128, n_tags: int = 50, sample_rate: int = 16000):
        super().__init__()
        self.spec = MelFrontEnd(sample_rate=sample_rate, n_fft=512, n_mels=128, f_min=0.0, f_max=8000.0)
        self.spec_bn = nn.BatchNorm2d(1)
        c = n_channels
        self.layer1 = Res2d(1, c, stride=2)
        self.layer2 = Res2d(c, c, stride=2)
        self.layer3 = Res2d(c, 2 * c, stride=2)
        self.layer4 = Res2d(2 * c, 2 * c, stride=(2, 1))
        self.layer5 = Res2d(2 * c, 2 * c, stride=(2, 1))
        self.layer6 = Res2d(2 * c, 2 * c, stride=(2, 1))
        self.layer7 = Res2d(2 * c, 2 * c, stride=(2, 1))
        self.encoder = TransformerEncoder(num_layers=2, hidden=HIDDEN, heads=8, intermediate=1024)
        self.pooler = _Dense(HIDDEN, HIDDEN, norm=False)
        self.dropout = nn.Dropout(0.5)
        self.dense = nn.Linear(HIDDEN, n_tags)
        self.register_buffer("cls_vector", fixed_cls_vector(), persistent=False)

    @property
    def sample_rate(self) -> int:
        return self.spec.sample_rate

    def sequence_length(self, num_samples: int) -> int:
        """Length of h_m for a waveform of `num_samples` (CLS included); 240000 -> 119."""
        t = self.spec.num_frames(num_samples)
        for _ in range(3):  # time halves in layers 1-3 (3x3 kernel, padding 1, stride 2)
            t = (t + 1) // 2
        return t + 1

    def forward(self, wave: torch.Tensor) -> CNNSAOutput:
        """wave: (B, N) mono at 16 kHz."""
        return self.attend(self.convolve(wave))

    def convolve(self, wave: torch.Tensor) -> torch.Tensor:
        """The CNN half: (B, N) waveform -> (B, T', 256) time-major feature sequence.

        A long input (a whole song) runs through the CNN in chunks of CONV_CHUNK_FRAMES mel
        frames, each with CONV_HALO_FRAMES of context on both sides, so its memory is that of
        a short excerpt (a 10-minute song took 2.6 GB in one piece). The halo covers the CNN's
        receptive field and chunks start on its time stride (8), so the result is the
        unchunked one (tested)."""
        x = self.spec_bn(self.spec(wave).unsqueeze(1))  # (B, 1, 128, T)
        frames = x.shape[-1]
        if frames <= CONV_CHUNK_FRAMES + 2 * CONV_HALO_FRAMES:
            return self._cnn(x)
        pieces = []
        for start in range(0, frames, CONV_CHUNK_FRAMES):
            end = min(start + CONV_CHUNK_FRAMES, frames)
            lo, hi = max(0, start - CONV_HALO_FRAMES), min(frames, end + CONV_HALO_FRAMES)
            first = (start - lo) // TIME_STRIDE
            pieces.append(self._cnn(x[..., lo:hi])[:, first:first + -(-end // TIME_STRIDE) - start // TIME_STRIDE])
        return torch.cat(pieces, dim=1)

    def _cnn(self, x: torch.Tensor) -> torch.Tensor:
        for block in (self.layer1, self.layer2, self.layer3, self.layer4, self.layer5, self.layer6, self.layer7):
            x = block(x)
        return x.squeeze(2).transpose(1, 2)  # (B, 256, 1, T') -> (B, T', 256)

    def attend(self, x: torch.Tensor) -> CNNSAOutput:
        """The self-attention half: CNN features (B, T', 256) -> h_m and the tag probabilities."""
        cls = self.cls_vector.to(x.dtype).expand(x.shape[0], 1, HIDDEN)
        seq = self.encoder(torch.cat([cls, x], dim=1))  # (B, 1 + T', 256)
        pooled = torch.tanh(self.pooler.dense(seq[:, 0]))
        logits = self.dense(self.dropout(pooled))
        return CNNSAOutput(sequence=seq, tag_probs=torch.sigmoid(logits), tag_logits=logits)


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint file, or a directory holding one (e.g. `models/msd/attention/`)."""
    path = Path(path)
    if path.is_dir():
        for name in CHECKPOINT_FILE_NAMES:
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"{path}: no checkpoint file in this directory (looked for {', '.join(CHECKPOINT_FILE_NAMES)})")
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a CNNSA state dict with the original key names, normalised for loading.

    Accepts a `module.` prefix (nn.DataParallel) and the torchaudio front-end buffers (dropped).
    `torch.load(weights_only=True)` never runs code from the file.
    """
    path = resolve_checkpoint(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure to read is reported with the file name
        refused = refused_pickle(exc)
        if refused and "a pickled" in refused:
            raise CheckpointError(f"{path}: {refused}; save the weights with torch.save(model.state_dict(), path)") from None
        if isinstance(exc, pickle.UnpicklingError):
            raise CheckpointError(f"{path}: cannot read checkpoint (not a PyTorch checkpoint, or a damaged one)") from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot read checkpoint ({first[:200]}); is it a truncated download?") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors, got {type(state).__name__}")
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return {k: v for k, v in state.items() if k not in IGNORED_CHECKPOINT_KEYS}


def load_state_dict_strict(model: CNNSA, state: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Load or fail with the exact keys that are missing, unexpected or of the wrong shape."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong_shape = sorted(
        f"{k} {tuple(state[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in set(state) & set(expected) if state[k].shape != expected[k].shape
    )
    if missing or unexpected or wrong_shape:
        lines = [f"{source} does not match the {type(model).__name__} layout:"]
        for title, keys in (("missing keys", missing), ("unexpected keys", unexpected), ("wrong shapes", wrong_shape)):
            if keys:
                lines.append(f"  {title} ({len(keys)}): " + ", ".join(keys))
        raise CheckpointError("\n".join(lines))
    model.load_state_dict(state, strict=True)


def state_dict_sha256(state: dict[str, torch.Tensor]) -> str:
    """Hash of the weights themselves, so renamed or re-prefixed copies of a file hash alike."""
    h = hashlib.sha256()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_cnnsa(path: str | Path) -> tuple[CNNSA, str]:
    """CNNSA in eval mode with weights from `path`, and the weights' sha256."""
    state = read_state_dict(path)
    model = CNNSA(n_tags=state["dense.weight"].shape[0] if "dense.weight" in state else 50)
    load_state_dict_strict(model, state, source=str(path))
    return model.eval(), state_dict_sha256(model.state_dict())


def random_cnnsa(seed: int = 0) -> tuple[CNNSA, str]:
    """Randomly initialised CNNSA (the public weights cannot be fetched offline) and its hash."""
    gen_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        model = CNNSA()
    finally:
        torch.random.set_rng_state(gen_state)
    return model.eval(), state_dict_sha256(model.state_dict())
