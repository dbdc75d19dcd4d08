"""Captioning for users and evaluation: model directory + music encoder -> captions.

A model directory (`best/` or `last/` of a run) holds the captioner, its tokenizer, the run
config and, in `music_encoder/`, the exact music-encoder weights its training embeddings came
from, so captioning a new audio file uses the same h_m as training did.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .audio.cnnsa import CNNSA, load_cnnsa, load_state_dict_strict, random_cnnsa, state_dict_sha256
from .audio.decode import Excerpt, load_audio
from .audio.extractor import CNNSAExtractor, resolve_device
from .config import GenerationConfig, RunConfig, load_run_config
from .data.dataset import pad_music
from .model.captioner import AlcapModel

ENCODER_DIR = "music_encoder"


def extractor_from_store_meta(meta: dict, device="cpu") -> CNNSAExtractor:
    """Rebuild the encoder a store was made with (its weights file or its random-init seed)."""
    identity = meta["extractor"]
    source = meta.get("info", {}).get("extractor", {}).get("weights_source", "")
    if source.startswith("random-init (seed "):
        model, digest = random_cnnsa(int(source[len("random-init (seed "):-1]))
    else:
        model, digest = load_cnnsa(source)
    if digest != identity["weights_sha256"]:
        raise ValueError(f"the music encoder at {source!r} has sha256 {digest[:12]}, but the embeddings were made "
                         f"with {identity['weights_sha256'][:12]}")
    return CNNSAExtractor(model, digest, source=source, device=device)


def save_music_encoder(extractor: CNNSAExtractor, excerpt: dict, directory: Path) -> None:
    from safetensors.torch import save_file

    target = directory / ENCODER_DIR
    target.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in extractor.model.state_dict().items()}
    save_file(state, str(target / "model.safetensors"))
    (target / "encoder.json").write_text(json.dumps(
        {"identity": extractor.identity(), "source": extractor.source, "excerpt": excerpt}, indent=2) + "\n")


def load_music_encoder(directory: Path, device="cpu") -> tuple[CNNSAExtractor, Excerpt]:
    from safetensors.torch import load_file

    meta = json.loads((directory / ENCODER_DIR / "encoder.json").read_text())
    state = load_file(str(directory / ENCODER_DIR / "model.safetensors"))
    model = CNNSA(n_tags=state["dense.weight"].shape[0])  # 50 for the MSD tagger; any number for others
    load_state_dict_strict(model, state, str(directory))
    digest = state_dict_sha256(model.state_dict())
    if digest != meta["identity"]["weights_sha256"]:
        raise ValueError(f"{directory / ENCODER_DIR}: weights do not match the recorded sha256")
    return CNNSAExtractor(model, digest, source=meta["source"], device=device), Excerpt(**meta["excerpt"])


class Captioner:
    """`Captioner.from_pretrained(dir).caption("song.mp3", lyrics=None)` -> caption text."""

    def __init__(self, model: AlcapModel, tokenizer, extractor: CNNSAExtractor | None, excerpt: Excerpt,
                 run: RunConfig, generation: GenerationConfig | None = None, device="cpu"):
        self.device = resolve_device(device)
        self.model = model.eval().to(self.device)
        self.tokenizer, self.extractor, self.excerpt = tokenizer, extractor, excerpt
        self.run = run  # the configuration the model was trained with
        self.generation = generation or run.generation
        self.max_lyrics_tokens = run.data.max_lyrics_tokens

    @classmethod
    def from_pretrained(cls, directory: str | Path, device="auto", generation: GenerationConfig | None = None) -> "Captioner":
        from transformers import AutoTokenizer

        directory = Path(directory)
        run = load_run_config(directory)
        device = resolve_device(device)
        model = AlcapModel.from_pretrained(directory, device=device)
        extractor, excerpt = None, Excerpt()
        if model.config.use_music:
            extractor, excerpt = load_music_encoder(directory, device)
        return cls(model, AutoTokenizer.from_pretrained(directory), extractor, excerpt, run, generation, device)

    @property
    def uses_music(self) -> bool:
        return self.model.config.use_music

    def caption(self, audio: str | Path | None, lyrics: str | None = None) -> str:
        return self.caption_batch([audio], [lyrics])[0]

    def caption_batch(self, audios: Sequence, lyrics: Sequence[str | None], progress: bool = False) -> list[str]:
        """Decode and embed each file (when the model uses music), then caption in batches."""
        music = None
        if self.uses_music:
            waves = [load_audio(a, self.extractor.sample_rate, self.excerpt).samples for a in audios]
            if len({len(w) for w in waves}) == 1:  # a fixed excerpt: one encoder call per batch
                size = self.generation.batch_size
                music = [m.numpy() for i in range(0, len(waves), size)
                         for m in self.extractor.embed(torch.from_numpy(np.stack(waves[i:i + size])))]
            else:  # whole files of different lengths
                music = [self.extractor.embed(torch.from_numpy(w)[None])[0].numpy() for w in waves]
        return self.caption_embeddings([lyr or "" for lyr in lyrics], music, progress=progress)

    @torch.no_grad()
    def caption_embeddings(self, lyrics: Sequence[str], music: Sequence[np.ndarray] | None,
                           progress: bool = False) -> list[str]:
        """Captions from lyrics and precomputed h_m arrays (evaluation uses the store's).

        Batches hold lyrics of similar token length (longest first), so little of a batch is
        padding; the captions come back in the order given."""
        tokens = self.tokenizer(list(lyrics), truncation=True, max_length=self.max_lyrics_tokens)["input_ids"]
        order = sorted(range(len(lyrics)), key=lambda i: -len(tokens[i]))
        captions: list[str] = [""] * len(lyrics)
        size = self.generation.batch_size
        autocast = self.generation.autocast_dtype(self.device)
        for start in tqdm(range(0, len(order), size), desc="captioning", unit="batch", disable=not progress):
            rows = order[start:start + size]
            enc = self.tokenizer.pad({"input_ids": [tokens[i] for i in rows]}, return_tensors="pt").to(self.device)
            kwargs = {}
            if music is not None:
                m, mask = pad_music([np.asarray(music[i]) for i in rows])
                kwargs = {"music": m.to(self.device), "music_mask": mask.to(self.device)}
            with torch.autocast(self.device.type, dtype=autocast, enabled=autocast is not None):
                ids = self.model.generate(enc["input_ids"], enc["attention_mask"], **kwargs, **self.generation.kwargs())
            for i, text in zip(rows, self.tokenizer.batch_decode(ids, skip_special_tokens=True)):
                captions[i] = text.strip()
        return captions
