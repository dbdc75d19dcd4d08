"""Captioning for users and evaluation: model directory + music encoder -> captions.

A model directory (`best/` or `last/` of a run) holds the captioner, its tokenizer, the run
config and, in `music_encoder/`, the exact music-encoder weights its training embeddings came
from, so captioning a new audio file uses the same h_m as training did.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .audio.cnnsa import CheckpointError, load_cnnsa, random_cnnsa
from .audio.decode import AudioError, Excerpt, TrackWindows, load_audio, load_waveform, source_name
from .audio.extractor import CNNSAExtractor, MusicExtractor, MusicnnExtractor, extractor_class, resolve_device
from .audio.musicnn import MusicnnError
from .config import GenerationConfig, RunConfig, load_run_config
from .data.dataset import pad_music
from .model.captioner import AlcapModel, ModelDirError, model_directory
from .utils import cpu_info, share_as_umask

ENCODER_DIR = "music_encoder"
SHARED_ENCODERS_DIR = "music_encoders"  # in a run directory: each encoder's weights once, by sha256


def extractor_from_store_meta(meta: dict, device="cpu", store_root: str | Path | None = None) -> MusicExtractor:
    """Rebuild the encoder a store was made with (its weights file or its random-init seed)."""
    identity = meta["extractor"]
    source = meta.get("info", {}).get("extractor", {}).get("weights_source", "")
    recorded = f"{Path(store_root) / 'store.json'} records" if store_root else "the store records"
    if extractor_class(identity["name"]) is MusicnnExtractor:
        try:
            extractor = MusicnnExtractor.from_package(identity["name"], device=device)
        except MusicnnError as exc:
            raise CheckpointError(f"{recorded} that its embeddings came from {identity['name']}: {exc}") from None
        if extractor.weights_sha256 != identity["weights_sha256"]:
            raise ValueError(f"{recorded} {identity['name']} weights sha256 {identity['weights_sha256'][:12]}, but the "
                             f"installed musicnn package now gives {extractor.weights_sha256[:12]}: reinstall "
                             "musicnn==0.1.0 or re-embed")
        return extractor
    if source.startswith("random-init (seed "):
        model, digest = random_cnnsa(int(source[len("random-init (seed "):-1]))
    else:
        try:
            model, digest = load_cnnsa(source)
        except CheckpointError as exc:
            hint = (" (a relative path, resolved from this working directory: run from the directory the store "
                    "was made in, or re-embed)") if not Path(source).is_absolute() else ""
            raise CheckpointError(f"{recorded} that its embeddings came from the music encoder {source!r}, which "
                                  f"cannot be loaded{hint}: {exc}") from None
    if digest != identity["weights_sha256"]:
        raise ValueError(f"{recorded} music-encoder weights sha256 {identity['weights_sha256'][:12]}, but {source!r} "
                         f"now has {digest[:12]}: the checkpoint file was replaced")
    return CNNSAExtractor(model, digest, source=source, device=device)


def save_music_encoder(extractor: MusicExtractor, excerpt: dict, directory: Path, shared: Path | None = None) -> None:
    """Write `directory/music_encoder/`: the weights and encoder.json (identity with the weights'
    sha256, source, excerpt, tag names). With `shared` (a run's music_encoders/), the weights are
    stored there once, named by their sha256, and hard-linked into the model directory: every
    best/ and last/ of a run shares one copy on disk and each stays a complete directory."""
    from safetensors.torch import save_file

    target = directory / ENCODER_DIR
    target.mkdir(parents=True, exist_ok=True)
    weights = target / "model.safetensors"

    def write(path: Path) -> None:
        state = {k: v.detach().cpu().contiguous() for k, v in extractor.model.state_dict().items()}
        save_file(state, str(path))
        share_as_umask(path)

    if shared is None:
        write(weights)
    else:
        shared.mkdir(parents=True, exist_ok=True)
        blob = shared / f"{extractor.weights_sha256}.safetensors"
        if not blob.is_file():
            partial = blob.with_name(blob.name + ".tmp")
            write(partial)
            os.replace(partial, blob)
        weights.unlink(missing_ok=True)
        try:
            os.link(blob, weights)
        except OSError:  # a file system without hard links: a copy
            shutil.copyfile(blob, weights)
    record = {"identity": extractor.identity(), "source": extractor.source, "excerpt": excerpt}
    try:
        record["tags"] = list(extractor.tag_names())
    except NotImplementedError:
        pass
    (target / "encoder.json").write_text(json.dumps(record, indent=2) + "\n")


def is_encoder_directory(path: str | Path) -> bool:
    """A model's music_encoder/ (or a model directory that has one)."""
    path = Path(path)
    return (path / "encoder.json").is_file() or (path / ENCODER_DIR / "encoder.json").is_file()


def load_music_encoder(directory: Path, device="cpu") -> tuple[MusicExtractor, Excerpt]:
    """The music encoder of a model directory (or of its music_encoder/ given directly)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    directory = Path(directory)
    encoder_dir = directory if (directory / "encoder.json").is_file() else directory / ENCODER_DIR
    if not encoder_dir.is_dir():
        raise ModelDirError(f"{encoder_dir}: missing; a music model carries the music encoder its embeddings came "
                            "from (every exported best/ and last/ has it): copy the model directory again")
    try:
        meta = json.loads((encoder_dir / "encoder.json").read_text(encoding="utf-8"))
        state = load_file(str(encoder_dir / "model.safetensors"))
    except (OSError, ValueError, SafetensorError) as exc:
        raise ModelDirError(f"{encoder_dir}: missing or damaged music encoder files ({str(exc).splitlines()[0]}); "
                            "copy the model directory again") from None
    identity = meta.get("identity", {})
    try:
        extractor = extractor_class(identity.get("name", "cnnsa")).from_state(identity, state, meta["source"], device,
                                                                              tags=meta.get("tags"))
    except (ValueError, KeyError, CheckpointError) as exc:
        raise ModelDirError(f"{encoder_dir}: the music encoder files do not describe a known encoder "
                            f"({str(exc).splitlines()[0]})") from None
    if extractor.weights_sha256 != identity.get("weights_sha256"):
        raise ModelDirError(f"{encoder_dir}: weights do not match the recorded sha256 (damaged copy?)")
    return extractor, Excerpt(**meta["excerpt"])


# How a whole track's windows become the one music sequence the caption is generated from:
# "concat" the windows' h_m in time order, or "pool" them (the mean over windows, step by step,
# which keeps the trained excerpt's length). README, "Whole tracks", has the comparison.
FULL_TRACK_MODES = ("concat", "pool")
DEFAULT_FULL_TRACK = "pool"


# How the captioning model's weights are held at inference. "int8": torch's dynamic quantisation
# of every nn.Linear (int8 weights per output channel, activations quantised per batch; CPU
# only). The music encoder stays float32, so its h_m equal the stores' and the library's.
QUANTIZE_MODES = ("none", "int8")


def int8_full_range() -> bool:
    """Whether int8 activations may use all 8 bits here. torch keeps one in reserve
    (reduce_range) because fbgemm's AVX2 kernels add pairs of u8 x s8 products in int16, which
    saturates; with AVX-512 VNNI they accumulate in int32, so the full range is exact and
    halves the activations' rounding error (the demo's int8 4-beam captions: ROUGE-L -2.74
    with 7 bits, -0.05 with 8)."""
    return torch.backends.quantized.engine in ("x86", "fbgemm") and "avx512_vnni" in cpu_info()[1]


class FullRangeDynamicLinear(torch.ao.nn.quantized.dynamic.Linear):
    """torch's dynamic int8 linear layer with 8-bit activations (see `int8_full_range`)."""

    def forward(self, x):
        return torch.ops.quantized.linear_dynamic(x, self._packed_params._packed_params, reduce_range=False).to(x.dtype)


def quantize_model(model: AlcapModel, mode: str | None, device: torch.device) -> AlcapModel:
    """`model` with its linear layers quantised as `mode` (a QUANTIZE_MODES name; None: none)."""
    if mode in (None, "none"):
        return model
    if mode not in QUANTIZE_MODES:
        raise ValueError(f"quantize must be one of {', '.join(QUANTIZE_MODES)}, not {mode!r}")
    if device.type != "cpu":
        raise ValueError(f"int8 quantisation is for captioning on the CPU, not on {device}; on a GPU use "
                         "--mixed-precision bf16")
    import warnings

    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    from torch.ao.quantization.quantization_mappings import get_default_dynamic_quant_module_mappings

    mapping = dict(get_default_dynamic_quant_module_mappings())  # a copy: torch returns its own dict
    if int8_full_range():
        mapping[torch.nn.Linear] = FullRangeDynamicLinear
    with warnings.catch_warnings():  # torch marks eager quantisation as moving to torchao; it still works
        warnings.simplefilter("ignore")
        return quantize_dynamic(model.eval(), {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8,
                                mapping=mapping)


def full_track_mode(value) -> str | None:
    """None (excerpt), or the whole-track mode that `value` (False, True, or a mode) names."""
    if value is None or value is False:
        return None
    if value is True:
        return DEFAULT_FULL_TRACK
    if value in FULL_TRACK_MODES:
        return value
    raise ValueError(f"full_track must be True, False or one of {', '.join(FULL_TRACK_MODES)}, not {value!r}")


@dataclass
class CaptionResult:
    """One song of `Captioner.caption_batch`: its caption, or why it could not be captioned."""

    source: str  # the input as given (a path)
    caption: str | None = None
    error: str | None = None
    lyrics: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


class Captioner:
    """A trained model with its music encoder, ready to caption songs.

    `Captioner.from_pretrained(dir)` loads a model directory (`best/` or `last/` of a run: the
    captioner, tokenizer, run config and the music encoder its training embeddings came from).
    `caption(audio, lyrics)` -> str; `caption_batch(audios, lyrics)` -> CaptionResult per input;
    `caption_embeddings(lyrics, h_m)` captions from precomputed music embeddings."""

    def __init__(self, model: AlcapModel, tokenizer, extractor: MusicExtractor | None, excerpt: Excerpt,
                 run: RunConfig, generation: GenerationConfig | None = None, device="cpu", quantize: str | None = None):
        self.device = resolve_device(device)
        self.quantize = quantize or "none"  # a QUANTIZE_MODES name; libraries record it
        self.model = quantize_model(model.eval().to(self.device), self.quantize, self.device)
        self.tokenizer, self.extractor, self.excerpt = tokenizer, extractor, excerpt
        self.run = run  # the configuration the model was trained with
        self.generation = generation or run.generation
        self.max_lyrics_tokens = run.data.max_lyrics_tokens

    @classmethod
    def from_pretrained(cls, directory: str | Path, device="auto", generation: GenerationConfig | None = None,
                        quantize: str | None = None) -> "Captioner":
        """`quantize`: "int8" for faster CPU captioning (QUANTIZE_MODES; README, "Performance",
        has its speed and quality)."""
        from transformers import AutoTokenizer

        directory = model_directory(directory)
        run = load_run_config(directory)
        if quantize not in (None, "none") and device == "auto":
            device = "cpu"  # int8 kernels are the CPU's; "auto" must not pick a GPU for them
        device = resolve_device(device)
        model = AlcapModel.from_pretrained(directory, device=device)
        extractor, excerpt = None, Excerpt()
        if model.config.use_music:
            extractor, excerpt = load_music_encoder(directory, device)
        try:
            tokenizer = AutoTokenizer.from_pretrained(directory)
        except (OSError, ValueError) as exc:
            raise ModelDirError(f"{directory}: the tokenizer files are missing or damaged ({str(exc).splitlines()[0]})") from None
        return cls(model, tokenizer, extractor, excerpt, run, generation, device, quantize)

    @property
    def uses_music(self) -> bool:
        return self.model.config.use_music

    def caption(self, audio, lyrics: str | None = None, sample_rate: int | None = None, full_track=False,
                **generation) -> str:
        """One song's caption.

        `audio`: a file path, the file's bytes, a binary file object, a waveform with its rate as
        `(wave, sample_rate)` or `sample_rate=` (numpy or torch, (samples,) or (channels,
        samples)), or None for no audio (lyrics-only models only). `lyrics`: the song's text,
        None or "" for an instrumental. `full_track`: hear the whole track, not the trained
        excerpt (True, or a mode of FULL_TRACK_MODES; see `embed_track`). `generation`:
        GenerationConfig fields for this call, e.g. num_beams=1. A bad input raises AudioError
        (or ValueError for an unusable type)."""
        return self.caption_batch([audio], [lyrics], sample_rate=sample_rate, full_track=full_track,
                                  **generation)[0].caption

    def caption_batch(self, audios: Sequence, lyrics: Sequence[str | None] | None = None, errors: str = "raise",
                      progress: bool = False, sample_rate: int | None = None, full_track=False,
                      **generation) -> list["CaptionResult"]:
        """Caption songs, one result per input in input order (inputs and `full_track` as
        `caption` takes them; `lyrics` None: all instrumentals).

        Every input is decoded, whatever the model uses: a missing or unreadable file is an
        error also for a lyrics-only model (which does not hear it). `errors="raise"` raises
        the first bad input's AudioError before anything is generated; `errors="skip"` returns
        it as that item's `error` and captions the others."""
        if errors not in ("raise", "skip"):
            raise ValueError(f"errors must be 'raise' or 'skip', not {errors!r}")
        lyrics = [None] * len(audios) if lyrics is None else lyrics
        if isinstance(lyrics, str):
            raise ValueError("lyrics of a batch are a list, one per song (a single string was given)")
        if len(audios) != len(lyrics):
            raise ValueError(f"{len(audios)} audio inputs but {len(lyrics)} lyrics")
        if generation:
            unknown = sorted(set(generation) - {f.name for f in dataclasses.fields(GenerationConfig)})
            if unknown:
                raise ValueError(f"unknown generation option(s) {', '.join(unknown)}; GenerationConfig has "
                                 + ", ".join(f.name for f in dataclasses.fields(GenerationConfig)))
            configured, self.generation = self.generation, dataclasses.replace(self.generation, **generation)
            try:
                return self.caption_batch(audios, lyrics, errors, progress, sample_rate, full_track)
            finally:
                self.generation = configured
        results = [CaptionResult(source=source_name(a), lyrics=lyr or "") for a, lyr in zip(audios, lyrics)]
        music: dict[int, np.ndarray] = {}
        size = self.generation.batch_size
        whole = full_track_mode(full_track) if self.uses_music else None
        for i in range(len(audios)) if whole else ():  # one track at a time, streamed
            try:
                h_m = self.embed_track(audios[i], whole, sample_rate)[0]
                if not np.isfinite(h_m).all():
                    raise AudioError(results[i].source, "the music encoder produced non-finite values")
                music[i] = h_m
            except AudioError as exc:
                if errors == "raise":
                    raise
                results[i].error = exc.reason
        for start in range(0, len(audios), size) if not whole else ():  # a batch of waves in memory at a time
            waves = {}
            for i in range(start, min(start + size, len(audios))):
                try:
                    waves[i] = self._decode(audios[i], sample_rate)
                except AudioError as exc:
                    if errors == "raise":
                        raise
                    results[i].error = exc.reason
            if self.uses_music:
                for i, h_m in self.embed_music(waves).items():
                    if np.isfinite(h_m).all():
                        music[i] = h_m
                    elif errors == "raise":
                        raise AudioError(results[i].source, "the music encoder produced non-finite values")
                    else:
                        results[i].error = "the music encoder produced non-finite values"
        good = [i for i, r in enumerate(results) if r.error is None]
        if not good:
            return results
        captions = self.caption_embeddings([results[i].lyrics for i in good],
                                           [music[i] for i in good] if self.uses_music else None, progress=progress)
        for i, caption in zip(good, captions):
            results[i].caption = caption
        return results

    def _decode(self, audio, sample_rate: int | None = None) -> np.ndarray | None:
        if audio is None:
            if self.uses_music:
                raise AudioError("<no audio>", "no audio given; this model hears the music, give an audio file")
            return None
        rate = self.extractor.sample_rate if self.extractor is not None else 16000
        if isinstance(audio, tuple) and len(audio) == 2:
            return load_waveform(audio[0], audio[1], rate, self.excerpt).samples
        if isinstance(audio, np.ndarray) or isinstance(audio, torch.Tensor):
            if sample_rate is None:
                raise AudioError("<waveform>", "a waveform needs its sample rate: pass (wave, sample_rate) or "
                                               "sample_rate=")
            return load_waveform(audio, sample_rate, rate, self.excerpt).samples
        if not isinstance(audio, (str, Path, bytes, bytearray, memoryview)) and not hasattr(audio, "read"):
            raise ValueError(f"cannot caption a {type(audio).__name__}: give a file path, the file's bytes, a binary "
                             "file object, or a waveform as (wave, sample_rate)")
        return load_audio(audio, rate, self.excerpt).samples

    def embed_track(self, audio, mode: str = DEFAULT_FULL_TRACK, sample_rate: int | None = None,
                    windows_per_batch: int = 8) -> tuple[np.ndarray, float]:
        """h_m of a whole track and its duration in seconds: the encoder hears consecutive
        windows of the trained excerpt's length (TrackWindows: streamed, so memory does not grow
        with the track), `windows_per_batch` at a time, and `mode` makes one music sequence of
        them: "concat" (L_m per window, in time order) or "pool" (their mean, step by step)."""
        if mode not in FULL_TRACK_MODES:
            raise ValueError(f"mode must be one of {', '.join(FULL_TRACK_MODES)}, not {mode!r}")
        if not self.uses_music:
            raise ValueError("a lyrics-only model hears no music")
        rate = self.extractor.sample_rate
        if isinstance(audio, tuple) and len(audio) == 2 or isinstance(audio, (np.ndarray, torch.Tensor)):
            wave, source_rate = audio if isinstance(audio, tuple) else (audio, sample_rate)
            if source_rate is None:
                raise AudioError("<waveform>", "a waveform needs its sample rate: pass (wave, sample_rate) or "
                                               "sample_rate=")
            audio = load_waveform(wave, source_rate, rate, Excerpt(seconds=None)).samples
        elif audio is None:
            raise AudioError("<no audio>", "no audio given; this model hears the music, give an audio file")
        windows = TrackWindows(audio, rate, self.excerpt.seconds or Excerpt().seconds)
        parts, total, batch = [], None, []

        def flush():
            nonlocal total
            h = self.extractor.embed(torch.from_numpy(np.stack(batch))).numpy()
            if mode == "pool":
                total = h.sum(axis=0) if total is None else total + h.sum(axis=0)
            else:
                parts.extend(h)
            batch.clear()

        for window in windows:
            batch.append(window)
            if len(batch) == windows_per_batch:
                flush()
        if batch:
            flush()
        h_m = total / windows.windows if mode == "pool" else np.concatenate(parts)
        return np.ascontiguousarray(h_m, dtype=np.float32), windows.source_duration or windows.duration

    def embed_music(self, waves: dict[int, np.ndarray]) -> dict[int, np.ndarray]:
        """h_m per input; equal-length waves (a fixed excerpt) go through the encoder together."""
        by_length: dict[int, list[int]] = {}
        for i, wave in waves.items():
            by_length.setdefault(len(wave), []).append(i)
        out = {}
        for group in by_length.values():
            sequences = self.extractor.embed(torch.from_numpy(np.stack([waves[i] for i in group])))
            out.update({i: seq.numpy() for i, seq in zip(group, sequences)})
        return out

    @torch.no_grad()
    def caption_embeddings(self, lyrics: Sequence[str], music: Sequence[np.ndarray] | None,
                           progress: bool = False) -> list:
        """Captions from lyrics and precomputed h_m arrays (evaluation uses the store's): a str
        per song, or a list of `generation.num_return_sequences` strs when that is above 1.

        Batches hold lyrics of similar token length (longest first), so little of a batch is
        padding; the captions come back in the order given."""
        self.generation.check()
        if self.generation.compile and self.quantize != "none":
            raise ValueError("generation.compile does not combine with --quantize int8: torch's quantised linear "
                             "layers break the compiled graph at every layer; use one or the other")
        per_song = self.generation.num_return_sequences
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
            texts = [text.strip() for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]
            for k, i in enumerate(rows):  # HF returns a song's sequences next to each other
                captions[i] = texts[k] if per_song == 1 else texts[k * per_song:(k + 1) * per_song]
        return captions
