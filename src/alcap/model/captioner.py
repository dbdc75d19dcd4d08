"""ALCAP on top of Hugging Face BART: lyrics encoder + music fusion + alignment + BART decoder.

HF's modules are used as they are (no fork of modeling_bart): this file only runs the
encoder layers itself, so that the alignment head can read the lyrics states that enter
the first fusion layer and the fusion block can act after chosen layers. The decoder and
`generate()` are HF's, fed with the fused encoder states.
"""

from __future__ import annotations

import json
import re
from contextlib import contextmanager
from typing import Literal
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import BartConfig, BartForConditionalGeneration, DynamicCache, StaticCache
from transformers.models.bart.modeling_bart import shift_tokens_right
from transformers.masking_utils import create_bidirectional_mask
from transformers.modeling_outputs import BaseModelOutput

from .alignment import AlignmentHead, gather_across_processes, info_nce, info_nce_log_candidates, song_index
from .beam import BEAM_SDPA, BeamCache
from ..utils import setting
from .fusion import FusionBlock
from .loss import label_token_loss

CONFIG_FILE, WEIGHTS_FILE = "alcap_config.json", "model.safetensors"


@dataclass
class AlcapConfig:
    """What ALCAP adds to BART. Defaults are the original code's for `bart-base`."""

    use_music: bool = setting(True, "fuse music into the lyrics encoder; false: the lyrics-only BART baseline")
    music_dim: int = setting(256, "width of the music embeddings h_m (the music encoder's output)")
    music_standardize: bool = setting(
        False, "standardise h_m per feature with the training songs' statistics (kept in the model). It removes "
        "the offset all songs share, so what differs between songs is the signal; off in the original, on in "
        "configs/demo.yaml")
    fusion_layers: list[int] = setting(help="fuse music after these encoder layers (0-based)",
                                       factory=lambda: [4, 5])
    fusion_shared: bool = setting(True, "one fusion block reused at every fusion layer")
    fusion_heads: int = setting(1, "attention heads of the fusion block's lyrics-to-music attention")
    fusion_residual_scale: float = setting(0.1, "weight of the fusion update added to the lyrics states")
    fusion_forget_gate: bool = setting(False, "a learned per-feature gate on the fusion update (BART-fusion had it; ALCAP turns it off)")
    fusion_dropout: float = setting(0.0, "dropout in the fusion block's attention")
    fusion_norm: Literal["post", "update"] = setting(
        "update", "where the fusion block's LayerNorm sits: post, the original's LayerNorm(h + 0.1 attn), or "
        "update, h + 0.1 LayerNorm(attn), which bounds the music's share whatever its scale. Models exported "
        "before this option existed load as post")
    align_layer: int | None = setting(None, "the alignment head reads the lyrics states entering this encoder "
                                            "layer; null: the first fusion layer")
    alpha: float = setting(0.02, "weight of the contrastive audio-lyrics loss; 0 is BART-fusion")
    temperature: float = setting(0.3, "temperature of the InfoNCE contrastive loss")
    symmetric: bool = setting(False, "contrast both directions (music to lyrics and lyrics to music); "
                                     "false: music to lyrics, as the original")

    def alignment_layer(self) -> int:
        return self.align_layer if self.align_layer is not None else min(self.fusion_layers)

    def check(self, encoder_layers: int | None, backbone: str = "the backbone") -> None:
        """Fusion and alignment layers inside the backbone's encoder (when its depth is known)."""
        if self.temperature <= 0:
            raise ValueError(f"model.alcap.temperature: {self.temperature!r} is out of range (expected > 0)")
        if not self.use_music:
            return
        if not self.fusion_layers:
            raise ValueError("model.alcap.fusion_layers: [] is empty (fuse after at least one encoder layer)")
        if encoder_layers is None:
            return
        bad = [i for i in self.fusion_layers if not 0 <= i < encoder_layers]
        if bad:
            raise ValueError(f"model.alcap.fusion_layers: {self.fusion_layers} has {bad}, outside the "
                             f"{encoder_layers} encoder layers of {backbone} (expected 0..{encoder_layers - 1})")
        if not 0 <= self.alignment_layer() <= encoder_layers:
            raise ValueError(f"model.alcap.align_layer: {self.align_layer} is outside 0..{encoder_layers}")


@dataclass
class AlcapOutput:
    loss: torch.Tensor | None  # caption_loss + alpha * contrast_loss
    caption_loss: torch.Tensor | None
    contrast_loss: torch.Tensor | None  # computed whenever music is used, also with alpha = 0 (for logging)
    logits: torch.Tensor | None  # (B, L_caption, vocab); None when trained with return_logits=False
    z_music: torch.Tensor | None = None  # (B, music_dim) pooled music
    z_lyrics: torch.Tensor | None = None  # (B, music_dim) projected pooled lyrics
    fusion_attentions: list[torch.Tensor] | None = None  # per fusion layer, (B, L_t, L_m)
    # InfoNCE bound on I(music; lyrics), mean log K - contrast_loss over the (global) contrastive
    # batch, K the candidates each row had; detached, for logging
    info_nce_bound: torch.Tensor | None = None


@dataclass
class EncoderOutput:
    states: torch.Tensor  # (B, L_t, d_model) fused lyrics states for the decoder
    align_states: torch.Tensor  # (B, L_t, d_model) lyrics states entering the alignment layer
    attentions: list[torch.Tensor] | None


# Batches are padded to their own longest row and decoding grows the keys by one token a step,
# so attention sees a new shape at almost every call. cuDNN's attention, which PyTorch tries
# first for bf16/fp16 with a padding mask on Hopper, builds an execution plan for every new
# shape (~9 ms a call, forward or backward, on an H100: bart-base training steps took 424 ms
# instead of 88). The flash, memory-efficient and math kernels need no plan.
VARIABLE_SHAPE_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def variable_shape_attention():
    """SDPA restricted to the kernels that cost nothing per new input shape (all but cuDNN's)."""
    return sdpa_kernel(VARIABLE_SHAPE_SDPA_BACKENDS)


# Compiled decoding compiles one graph per input shape; lyrics padded to a multiple of this
# many tokens give a run a handful of shapes (8 up to 512 tokens) instead of one per batch.
COMPILE_LENGTH_MULTIPLE = 64


def pad_to_multiple(input_ids: torch.Tensor, attention_mask: torch.Tensor, multiple: int, pad_id: int):
    """(B, L) ids and mask right-padded to a multiple of `multiple` (padding is masked: the
    encoder states of the real tokens do not change)."""
    extra = -input_ids.shape[1] % multiple
    if not extra:
        return input_ids, attention_mask
    return (torch.nn.functional.pad(input_ids, (0, extra), value=pad_id),
            torch.nn.functional.pad(attention_mask, (0, extra), value=0))


@contextmanager
def compiled_decoding(bart: BartForConditionalGeneration, backend, mode: str | None = None):
    """Within: `bart`'s forward is torch.compile'd with static shapes (one graph per shape,
    kept on the model for later calls); without a backend, nothing changes. HF's own
    auto-compilation covers greedy and sampling only, not beam search."""
    if not backend:
        yield
        return
    if torch._dynamo.config.recompile_limit < 64:  # a graph per (batch size, lyrics bucket)
        torch._dynamo.config.recompile_limit = 64
    key = (backend, mode)
    if getattr(bart, "_alcap_compiled", (None,))[0] != key:
        forward = type(bart).forward.__get__(bart)
        bart._alcap_compiled = (key, torch.compile(forward, backend=backend, mode=mode, dynamic=False))
    bart.forward = bart._alcap_compiled[1]
    try:
        yield
    finally:
        del bart.forward  # the class's again


def decoder_length(generation_kwargs: dict, defaults) -> int:
    """Decoder positions a static cache needs: the start token and every generated token."""
    if generation_kwargs.get("max_new_tokens") is not None:
        return generation_kwargs["max_new_tokens"] + 1
    return generation_kwargs.get("max_length") or defaults.max_length


class AlcapModel(nn.Module):
    """ALCAP: BART whose encoder states are fused with the music after chosen layers, plus the
    contrastive alignment head (config.use_music False: the lyrics-only BART baseline).

    In: lyrics `input_ids`/`attention_mask` (B, L_t), music `music` (B, L_m, music_dim) with
    `music_mask` (B, L_m), caption `labels` (B, L_c) for training. Out: `forward` gives the
    caption loss, the contrastive loss and their sum `loss = caption + alpha * contrast`;
    `generate` gives caption token ids. `from_pretrained(dir)` / `save_pretrained(dir)` read and
    write a model directory (safetensors, no pickles)."""

    def __init__(self, config: AlcapConfig, bart: BartForConditionalGeneration):
        super().__init__()
        config.check(bart.config.encoder_layers)
        self.config = config
        self.bart = bart
        if bart.config._attn_implementation == "sdpa":  # the same maths; beam search reads shared keys once
            bart.set_attn_implementation(BEAM_SDPA)
        d_model = bart.config.d_model
        if config.use_music:
            n_blocks = 1 if config.fusion_shared else len(config.fusion_layers)
            self.fusion = nn.ModuleList([
                FusionBlock(d_model, config.music_dim, config.fusion_heads, config.fusion_residual_scale,
                            config.fusion_forget_gate, config.fusion_dropout, config.fusion_norm)
                for _ in range(n_blocks)
            ])
            self.alignment = AlignmentHead(d_model, config.music_dim)
            self.register_buffer("music_mean", torch.zeros(config.music_dim))
            self.register_buffer("music_std", torch.ones(config.music_dim))

    def set_music_statistics(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.music_mean.copy_(mean)
        self.music_std.copy_(std.clamp(min=1e-6))

    def _prepare_music(self, music):
        if music is None or not self.config.use_music:
            return music
        music = music.to(self.music_mean.dtype)
        if self.config.music_standardize:
            music = (music - self.music_mean) / self.music_std
        return music

    # ------------------------------------------------------------------ encoder

    def _fusion_block(self, layer: int) -> FusionBlock:
        return self.fusion[0 if self.config.fusion_shared else self.config.fusion_layers.index(layer)]

    def encode(self, input_ids, attention_mask, music=None, music_mask=None, need_weights: bool = False) -> EncoderOutput:
        """Lyrics ids (B, L_t) + music (B, L_m, music_dim) -> fused states, through HF's own modules."""
        enc = self.bart.get_encoder()
        embeds = enc.embed_tokens(input_ids)
        hidden = enc.layernorm_embedding(embeds + enc.embed_positions(input_ids).to(embeds.device))
        hidden = nn.functional.dropout(hidden, p=enc.dropout, training=self.training)
        mask = create_bidirectional_mask(config=enc.config, inputs_embeds=embeds, attention_mask=attention_mask)
        use_music = self.config.use_music and music is not None
        align_at = self.config.alignment_layer()
        align_states, attentions = None, [] if need_weights else None
        for i, layer in enumerate(enc.layers):
            if i == align_at:
                align_states = hidden
            if not (self.training and enc.layerdrop > 0 and torch.rand([]) < enc.layerdrop):
                hidden = layer(hidden, mask)
            if use_music and i in self.config.fusion_layers:
                hidden, weights = self._fusion_block(i)(hidden, music.to(hidden.dtype), music_mask, need_weights)
                if need_weights:
                    attentions.append(weights)
        if align_states is None:  # align_layer == number of layers: the encoder's output
            align_states = hidden
        return EncoderOutput(hidden, align_states, attentions)

    # ------------------------------------------------------------------ training

    def forward(self, input_ids, attention_mask, labels=None, music=None, music_mask=None, song_ids=None,
                decoder_input_ids=None, return_attention: bool = False, return_logits: bool = True) -> AlcapOutput:
        """labels: (B, L_c) caption ids with -100 at padding; song_ids mark rows of one song.
        `return_logits=False` (training): the caption loss is computed on the labelled positions
        only, chunk by chunk (model/loss.py), and no (B, L_c, vocab) logits are made."""
        music = self._prepare_music(music)
        with variable_shape_attention():
            encoded = self.encode(input_ids, attention_mask, music, music_mask, need_weights=return_attention)
            encoder_outputs = BaseModelOutput(last_hidden_state=encoded.states)
            if labels is not None and not return_logits:
                if decoder_input_ids is None:
                    decoder_input_ids = shift_tokens_right(labels, self.bart.config.pad_token_id,
                                                           self.bart.config.decoder_start_token_id)
                hidden = self.bart.model(attention_mask=attention_mask, encoder_outputs=encoder_outputs,
                                         decoder_input_ids=decoder_input_ids, use_cache=False).last_hidden_state
                caption_loss = label_token_loss(hidden, labels, self.bart.lm_head.weight, self.bart.final_logits_bias[0])
                logits = None
            else:
                out = self.bart(attention_mask=attention_mask, encoder_outputs=encoder_outputs, labels=labels,
                                decoder_input_ids=decoder_input_ids, use_cache=False)
                caption_loss, logits = out.loss, out.logits
        contrast_loss = z_m = z_t = bound = None
        if self.config.use_music and music is not None:
            z_m, z_t = self.alignment(encoded.align_states, attention_mask, music, music_mask)
            if self.config.alpha > 0:
                contrast_loss, log_candidates = self._contrast(z_m, z_t, song_ids)
            else:  # BART-fusion: only logged (a plain `if`, which torch.compile can trace)
                with torch.no_grad():
                    contrast_loss, log_candidates = self._contrast(z_m, z_t, song_ids)
            bound = log_candidates - contrast_loss.detach()
        loss = caption_loss
        if loss is not None and contrast_loss is not None and self.config.alpha > 0:
            loss = loss + self.config.alpha * contrast_loss
        return AlcapOutput(loss, caption_loss, contrast_loss, logits, z_m, z_t, encoded.attentions, bound)

    def _contrast(self, z_m: torch.Tensor, z_t: torch.Tensor, song_ids) -> tuple[torch.Tensor, torch.Tensor]:
        """InfoNCE over the global batch: under several processes the embeddings of all of them
        are gathered. Each process then holds the same global loss L but back-propagates only
        into its own rows, and data-parallel training averages gradients over the W processes;
        the gradient is therefore scaled by W (the value is not), so the update equals a single
        process's on the whole batch. Also returns the mean log number of candidates per row."""
        ids = song_index(song_ids, z_m.shape[0], z_m.device)
        z_m, z_t, ids, world = gather_across_processes(z_m, z_t, ids)
        loss = info_nce(z_m, z_t, ids, self.config.temperature, self.config.symmetric)
        if world > 1 and loss.requires_grad:
            loss = loss * world - loss.detach() * (world - 1)
        return loss, info_nce_log_candidates(ids)

    # ------------------------------------------------------------------ inference

    @torch.no_grad()
    def generate(self, input_ids, attention_mask, music=None, music_mask=None, compile_backend=None,
                 compile_mode: str | None = None, **generation_kwargs) -> torch.Tensor:
        """Caption ids through HF `generate()` (greedy, beam, sampling, ... by its kwargs).

        `compile_backend` (e.g. "inductor"; torch.compile's `backend`, with `compile_mode` its
        `mode`, e.g. "reduce-overhead" for CUDA graphs): decode with a static KV cache and a
        compiled decoding step. With the cross-attention keys prefilled, every step, the first
        included, has the same shapes; the lyrics are padded to a multiple of
        COMPILE_LENGTH_MULTIPLE tokens, so each (batch size, lyrics bucket) compiles once and is
        reused; the first batch of a shape pays the compilation."""
        music = self._prepare_music(music)
        max_cache_len = None
        if compile_backend:
            input_ids, attention_mask = pad_to_multiple(input_ids, attention_mask, COMPILE_LENGTH_MULTIPLE,
                                                        self.bart.config.pad_token_id)
            max_cache_len = decoder_length(generation_kwargs, self.bart.generation_config)
            generation_kwargs["disable_compile"] = True  # HF's compiles greedy and sampling only; ours every mode
        with variable_shape_attention(), compiled_decoding(self.bart, compile_backend, compile_mode):
            encoded = self.encode(input_ids, attention_mask, music, music_mask)
            defaults = self.bart.generation_config  # what HF uses for what the kwargs leave out
            beams = generation_kwargs.get("num_beams") or defaults.num_beams or 1
            if (beams > 1 or max_cache_len) and "cache" not in generation_kwargs:
                if self.bart.config._attn_implementation == BEAM_SDPA:
                    rows = max(beams, generation_kwargs.get("num_return_sequences") or defaults.num_return_sequences or 1)
                    generation_kwargs["cache"] = BeamCache.prefilled(self.bart, encoded.states, max_cache_len, rows)
                else:  # another attention (e.g. eager): HF's cross cache, filled at the first step
                    config = self.bart.config.get_text_config(decoder=True)
                    own = StaticCache(config=config, max_cache_len=max_cache_len) if max_cache_len else DynamicCache(config=config)
                    generation_kwargs["cache"] = BeamCache(own, DynamicCache(config=config))
            return self.bart.generate(
                encoder_outputs=BaseModelOutput(last_hidden_state=encoded.states), attention_mask=attention_mask,
                **generation_kwargs,
            )

    @torch.no_grad()
    def inspect(self, input_ids, attention_mask, music, music_mask=None) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """For figures and diagnostics: the fusion attention maps (one (B, L_t, L_m) per fusion
        layer), and the alignment embeddings z_m (B, music_dim) and z_t (B, music_dim)."""
        if not self.config.use_music:
            raise ValueError("a lyrics-only model has no fusion attention and no alignment head")
        music = self._prepare_music(music)
        with variable_shape_attention():
            encoded = self.encode(input_ids, attention_mask, music, music_mask, need_weights=True)
        z_m, z_t = self.alignment(encoded.align_states, attention_mask, music, music_mask)
        return encoded.attentions, z_m, z_t

    # ------------------------------------------------------------------ persistence

    def save_pretrained(self, directory: str | Path) -> None:
        """config.json (BART's), alcap_config.json and model.safetensors; no pickles."""
        from safetensors.torch import save_model

        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.bart.config.save_pretrained(directory)
        (directory / CONFIG_FILE).write_text(json.dumps(asdict(self.config), indent=2) + "\n", encoding="utf-8")
        save_model(self, str(directory / WEIGHTS_FILE))  # handles BART's tied embeddings

    @classmethod
    def from_pretrained(cls, directory: str | Path, device: str | torch.device = "cpu") -> "AlcapModel":
        from safetensors import SafetensorError
        from safetensors.torch import load_model

        directory = model_directory(directory)
        try:
            saved = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
            config = AlcapConfig(**{"fusion_norm": "post", **saved})  # exported before the option: the original
        except (ValueError, TypeError) as exc:
            raise ModelDirError(f"{directory / CONFIG_FILE}: unreadable ({exc}); re-export the model") from None
        try:
            bart = BartForConditionalGeneration(BartConfig.from_pretrained(directory))
        except (OSError, ValueError) as exc:
            raise ModelDirError(f"{directory / 'config.json'}: missing or unreadable BART config "
                                f"({str(exc).splitlines()[0]}); re-export the model") from None
        model = cls(config, bart)
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise ModelDirError(f"{weights}: missing; the model directory is incomplete (copy it again, or use "
                                "best/ or last/ of the training run)")
        try:
            load_model(model, str(weights), device=str(device))
        except (SafetensorError, OSError) as exc:
            raise ModelDirError(f"{weights}: truncated or damaged ({str(exc).splitlines()[0]}); copy it again "
                                "or re-export the model") from None
        except RuntimeError as exc:
            raise ModelDirError(f"{weights}: does not match {CONFIG_FILE} ({str(exc).splitlines()[0][:200]})") from None
        return model.eval()


class ModelDirError(ValueError):
    """A model directory that is missing, incomplete or damaged; the message names the file."""


HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?$")


def model_directory(directory: str | Path) -> Path:
    """`directory` if it looks like an exported alcap model, else a ModelDirError saying why. A
    Hugging Face Hub repo id (`owner/name`, optionally `@revision`) that is not a local path is
    fetched into the Hugging Face cache, or found there offline (HF_HUB_OFFLINE=1)."""
    text = str(directory)
    directory = Path(directory).expanduser()
    if not directory.exists() and HUB_REPO_ID.match(text):
        directory = hub_snapshot(text)
    if not directory.exists():
        raise ModelDirError(f"{directory}: model directory not found")
    if not directory.is_dir():
        raise ModelDirError(f"{directory}: is a file; give a model directory (best/ or last/ of a training run)")
    if not (directory / CONFIG_FILE).is_file():
        hint = " (it is a run directory: use its best/ or last/)" if (directory / "best").is_dir() else ""
        raise ModelDirError(f"{directory}: not an alcap model directory (no {CONFIG_FILE}){hint}")
    return directory


def hub_snapshot(repo: str) -> Path:
    """The local snapshot of a Hub model repo: downloaded once, then read from the cache."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, LocalEntryNotFoundError,
                                        RepositoryNotFoundError, RevisionNotFoundError)

    repo_id, _, revision = repo.partition("@")
    try:
        return Path(snapshot_download(repo_id, revision=revision or None))
    except GatedRepoError:
        raise ModelDirError(f"{repo}: a gated Hub repository; accept its terms on the Hub and log in "
                            "(`hf auth login`)") from None
    except RepositoryNotFoundError:
        raise ModelDirError(f"{repo}: neither a local directory nor a model repository on the Hugging Face Hub "
                            "(a private one needs `hf auth login`)") from None
    except RevisionNotFoundError:
        raise ModelDirError(f"{repo}: the Hub repository has no revision {revision!r}") from None
    except LocalEntryNotFoundError:
        why = "HF_HUB_OFFLINE is set" if constants.HF_HUB_OFFLINE else "the Hub cannot be reached"
        raise ModelDirError(f"{repo}: not a local directory, not in the Hugging Face cache ({constants.HF_HUB_CACHE}), "
                            f"and {why}: run `hf download {repo_id}` where there is a network (then copy the "
                            "cache, or the folder it prints, here), or give a local model directory") from None
    except (HfHubHTTPError, OSError) as exc:
        raise ModelDirError(f"{repo}: could not fetch it from the Hugging Face Hub ({str(exc).splitlines()[0]})") from None


def bart_config(preset: str, vocab_size: int, **overrides) -> BartConfig:
    """Random-init backbones: `bart-base` (the paper's dimensions), `small` (demo) and `tiny` (tests)."""
    presets = {
        "bart-base": dict(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                          decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                          max_position_embeddings=1024),
        "small": dict(d_model=128, encoder_layers=3, decoder_layers=2, encoder_attention_heads=4,
                      decoder_attention_heads=4, encoder_ffn_dim=512, decoder_ffn_dim=512,
                      max_position_embeddings=520),
        "tiny": dict(d_model=64, encoder_layers=3, decoder_layers=2, encoder_attention_heads=4,
                     decoder_attention_heads=4, encoder_ffn_dim=128, decoder_ffn_dim=128,
                     max_position_embeddings=520),
    }
    if preset not in presets:
        raise ValueError(f"unknown backbone preset {preset!r}; choose from {', '.join(presets)} or give a directory")
    config = BartConfig(vocab_size=vocab_size, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                        decoder_start_token_id=2, forced_eos_token_id=2, **{**presets[preset], **overrides})
    return config
