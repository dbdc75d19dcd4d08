"""The interface between audio and the embedding store.

A `MusicExtractor` turns a batch of equal-length 16 kHz waveforms into frozen music
embeddings (B, L_m, dim). The store records `identity()` and refuses to mix embeddings from
extractors whose identity differs, so adding another music encoder means adding a class
here and a name in `extractor_class`; the captioning model only ever sees (L_m, dim) arrays.
Two encoders exist: CNNSA (ALCAP's own, 256 channels) and musicnn (pretrained on the MSD or
MagnaTagATune, 753 channels, from its PyPI wheel).
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from pathlib import Path

import torch

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from .cnnsa import CNNSA, Res2d, load_cnnsa, load_state_dict_strict, random_cnnsa, state_dict_sha256
from . import musicnn
from .tags import default_tag_names, tag_names


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class MusicExtractor(ABC):
    """A frozen music encoder: (B, N) mono waveforms at `sample_rate` -> (B, L_m, dim) float32
    sequences h_m (`embed`), the input of ALCAP's fusion. Implementations: CNNSAExtractor
    (ALCAP's, 256-d) and MusicnnExtractor (musicnn's pretrained weights, 753-d)."""

    name: str
    sample_rate: int
    dim: int

    @abstractmethod
    def identity(self) -> dict:
        """Everything that changes the embeddings: a store built with another identity is refused."""

    def describe(self) -> dict:
        """Identity plus informational fields (where the weights came from)."""
        return self.identity()

    @abstractmethod
    def embed(self, waves: torch.Tensor) -> torch.Tensor:
        """(B, N) float32 waveforms at `sample_rate` -> (B, L_m, dim) float32 on the CPU."""

    def tag(self, waves: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, n_tags) tag probabilities of the encoder's own tagging head, if it has one."""
        raise NotImplementedError(f"the {self.name} encoder has no tagging head")

    def tag_names(self) -> tuple[str, ...]:
        """Names of the tagging head's outputs, in order."""
        raise NotImplementedError(f"the {self.name} encoder has no tagging head")

    @classmethod
    def from_state(cls, identity: dict, state: dict[str, torch.Tensor], source: str,
                   device: str | torch.device = "cpu") -> "MusicExtractor":
        """Rebuild from weights saved with a model (`model` state dict) and the recorded identity;
        encoders that model directories carry (`extractor_class`) implement it."""
        raise NotImplementedError(f"{cls.__name__} cannot be rebuilt from saved weights")


class CNNSAExtractor(MusicExtractor):
    """CNNSA's last-layer sequence (CLS first), ALCAP's h_m."""

    name = "cnnsa"
    dim = 256

    def __init__(self, model: CNNSA, weights_sha256: str, source: str, device: str | torch.device = "auto",
                 tags: tuple[str, ...] | None = None):
        self.device = resolve_device(device)
        # The tag head's names: tags.txt of a trained tagger, else the MSD top-50 for 50 tags.
        self.tags = tuple(tags) if tags else default_tag_names(model.dense.out_features)
        self.model = model.eval().to(self.device)  # the checkpoint's layout: hashed, exported, inspected
        self._inference = inference_copy(self.model)
        self.weights_sha256 = weights_sha256
        self.source = source
        self.sample_rate = model.sample_rate

    @classmethod
    def from_checkpoint(cls, path: str | Path, device: str | torch.device = "auto") -> "CNNSAExtractor":
        model, digest = load_cnnsa(path)
        # Resolved: stores and models record the source, and are used from other directories.
        return cls(model, digest, source=str(Path(path).resolve()), device=device,
                   tags=tag_names(path, model.dense.out_features))

    @classmethod
    def from_state(cls, identity, state, source, device="cpu", tags=None) -> "CNNSAExtractor":
        model = CNNSA(n_tags=state["dense.weight"].shape[0] if "dense.weight" in state else 50)
        load_state_dict_strict(model, state, source)
        return cls(model, state_dict_sha256(model.state_dict()), source=source, device=device, tags=tags)

    @classmethod
    def random_init(cls, seed: int = 0, device: str | torch.device = "auto") -> "CNNSAExtractor":
        model, digest = random_cnnsa(seed)
        return cls(model, digest, source=f"random-init (seed {seed})", device=device)

    def identity(self) -> dict:
        return {
            "name": self.name,
            "weights_sha256": self.weights_sha256,
            "dim": self.dim,
            "output": "last transformer layer, full sequence, CLS first",
            "frontend": self.model.spec.config(),
        }

    def describe(self) -> dict:
        return {**self.identity(), "weights_source": self.source}

    @torch.inference_mode()
    def embed(self, waves: torch.Tensor) -> torch.Tensor:
        return self._inference(waves.to(self.device)).sequence.float().cpu()

    @torch.inference_mode()
    def tag(self, waves: torch.Tensor) -> torch.Tensor:
        """(B, N) -> (B, n_tags) tag probabilities."""
        return self._inference(waves.to(self.device)).tag_probs.float().cpu()

    def tag_names(self) -> tuple[str, ...]:
        return self.tags


def inference_copy(model: CNNSA) -> CNNSA:
    """The same function, faster (1.25x from channels-last, more from folding): each residual
    block's BatchNorms folded into the convolutions before them (exact maths in eval mode, to
    float32 rounding) and the convolutions run channels-last, which oneDNN and cuDNN prefer.
    The convolutions are 80% of the encoder's time."""
    fast = copy.deepcopy(model).eval()
    for block in fast.modules():
        if isinstance(block, Res2d):
            for i in (1, 2, 3) if block.has_shortcut else (1, 2):
                conv, bn = getattr(block, f"conv_{i}"), getattr(block, f"bn_{i}")
                setattr(block, f"conv_{i}", fuse_conv_bn_eval(conv, bn))
                setattr(block, f"bn_{i}", nn.Identity())
    return fast.to(memory_format=torch.channels_last)


class MusicnnExtractor(MusicExtractor):
    """musicnn's mid-end sequence (753 channels: front end and three conv layers), averaged over
    17-frame windows: 11 steps per 3 s patch, 3.68 per second, 55 x 753 for a 15 s excerpt."""

    sample_rate = musicnn.SAMPLE_RATE
    dim = musicnn.FRAME_CHANNELS

    def __init__(self, name: str, model: musicnn.Musicnn, weights_sha256: str, source: str,
                 device: str | torch.device = "auto"):
        if name not in musicnn.VARIANTS:
            raise ValueError(f"unknown musicnn encoder {name!r}: one of {', '.join(musicnn.VARIANTS)}")
        self.name = name
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.frontend = musicnn.MusicnnFrontEnd().to(self.device)
        self.weights_sha256, self.source = weights_sha256, source

    @classmethod
    def from_package(cls, name: str = "musicnn-msd", device: str | torch.device = "auto") -> "MusicnnExtractor":
        """The pretrained weights of the installed `musicnn` wheel (converted once, then cached)."""
        if name not in musicnn.VARIANTS:
            raise ValueError(f"unknown musicnn encoder {name!r}: one of {', '.join(musicnn.VARIANTS)}")
        variant = musicnn.VARIANTS[name]
        model, checkpoint_sha256 = musicnn.load_musicnn(variant)  # the 9 MB checkpoint is hashed once
        source = f"musicnn 0.1.0 wheel: {variant} (checkpoint data sha256 {checkpoint_sha256[:16]})"
        return cls(name, model, state_dict_sha256(model.state_dict()), source, device)

    @classmethod
    def from_state(cls, identity, state, source, device="cpu", tags=None) -> "MusicnnExtractor":
        model = musicnn.Musicnn(n_tags=state["tags.weight"].shape[0] if "tags.weight" in state else 50)
        load_state_dict_strict(model, state, source)
        return cls(identity["name"], model, state_dict_sha256(model.state_dict()), source, device)

    def identity(self) -> dict:
        return {
            "name": self.name,
            "weights_sha256": self.weights_sha256,
            "dim": self.dim,
            "output": f"mid-end features (front end + 3 conv layers) averaged over {musicnn.POOL_FRAMES}-frame windows "
                      f"of each non-overlapping {musicnn.PATCH_FRAMES}-frame patch",
            "steps_per_second": round(musicnn.SAMPLE_RATE / musicnn.HOP / musicnn.POOL_FRAMES, 4),
            "frontend": musicnn.MusicnnFrontEnd.config(),
        }

    def describe(self) -> dict:
        return {**self.identity(), "weights_source": self.source}

    def tag_names(self) -> tuple[str, ...]:
        return musicnn.labels(musicnn.VARIANTS[self.name])

    def _patches(self, waves: torch.Tensor) -> tuple[torch.Tensor, int]:
        mel = musicnn.patches(self.frontend(waves.to(self.device)))  # (B, P, 187, 96)
        return mel.flatten(0, 1), mel.shape[1]

    @torch.inference_mode()
    def embed(self, waves: torch.Tensor) -> torch.Tensor:
        flat, count = self._patches(waves)
        frames = self.model.frame_features(flat)  # (B * P, 753, 187)
        steps = musicnn.PATCH_FRAMES // musicnn.POOL_FRAMES
        pooled = frames.reshape(*frames.shape[:2], steps, musicnn.POOL_FRAMES).mean(dim=3)  # (B * P, 753, 11)
        return pooled.transpose(1, 2).reshape(waves.shape[0], count * steps, self.dim).float().cpu()

    @torch.inference_mode()
    def tag(self, waves: torch.Tensor) -> torch.Tensor:
        """The mean over patches of the per-patch taggram, as musicnn's `top_tags` averages."""
        flat, count = self._patches(waves)
        probs = torch.sigmoid(self.model(flat).tag_logits)
        return probs.reshape(waves.shape[0], count, -1).mean(dim=1).float().cpu()


ENCODER_NAMES = ("cnnsa", *musicnn.VARIANTS)


def extractor_class(name: str) -> type[MusicExtractor]:
    if name == "cnnsa":
        return CNNSAExtractor
    if name in musicnn.VARIANTS:
        return MusicnnExtractor
    raise ValueError(f"unknown music encoder {name!r}: one of {', '.join(ENCODER_NAMES)}")
