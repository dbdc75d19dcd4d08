"""Typed run configuration: nested dataclasses, YAML files in configs/, `--set a.b=value` overrides.

The resolved configuration is saved in every run directory and checkpoint, so a result can
always be traced to the exact settings that produced it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import torch
import yaml

from .model.captioner import AlcapConfig


@dataclass
class DataConfig:
    manifest: str = ""
    embeddings: str | None = None  # embedding store; None trains the lyrics-only baseline
    train_split: str = "train"
    val_split: str = "val"
    max_lyrics_tokens: int = 512
    max_caption_tokens: int = 512
    num_workers: int = 0
    # Batch rows of similar length together (shuffled groups of batches), so that dynamic padding
    # wastes little; off: plain random batches, as the original.
    length_grouping: bool = True


@dataclass
class ModelConfig:
    backbone: str = "facebook/bart-base"  # hub id, local directory, or preset: tiny, bart-base
    tokenizer_vocab_size: int = 8000  # presets only: size of the BPE trained on the training text
    alcap: AlcapConfig = field(default_factory=AlcapConfig)


AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class GenerationConfig:
    """Decoding for evaluation and captioning; deterministic 4-beam search by default."""

    num_beams: int = 4
    do_sample: bool = False
    top_p: float | None = None  # the original: num_beams 4, do_sample true, top_p 0.92
    max_new_tokens: int = 128
    min_new_tokens: int | None = None  # e.g. equal to max_new_tokens for fixed-length benchmarks
    no_repeat_ngram_size: int = 0
    batch_size: int = 16
    # Autocast of decoding on a GPU: no, bf16 or fp16 (ignored on the CPU, where it is slower).
    mixed_precision: str = "no"

    def check(self) -> None:
        if self.mixed_precision not in AUTOCAST_DTYPES:
            raise ValueError(f"generation.mixed_precision must be no, bf16 or fp16, not {self.mixed_precision!r}")

    def autocast_dtype(self, device: torch.device) -> torch.dtype | None:
        """The dtype generation autocasts to on `device`, or None for full precision."""
        self.check()
        return AUTOCAST_DTYPES[self.mixed_precision] if device.type == "cuda" else None

    def with_overrides(self, **changes) -> "GenerationConfig":
        """A copy with these settings changed; a None leaves its setting as configured."""
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    def kwargs(self) -> dict:
        out = {"num_beams": self.num_beams, "do_sample": self.do_sample, "max_new_tokens": self.max_new_tokens}
        if self.top_p is not None:
            out["top_p"] = self.top_p
        if self.min_new_tokens is not None:
            out["min_new_tokens"] = self.min_new_tokens
        if self.no_repeat_ngram_size:
            out["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        return out


@dataclass
class TrainConfig:
    epochs: int = 20
    batch_size: int = 26
    grad_accum_steps: int = 1
    optimizer: str = "adafactor"  # adafactor (the original's settings) or adamw
    lr: float = 5e-5
    # LR of the fusion and alignment parameters when it should differ from the backbone's
    # (None: the same). New, randomly initialised modules on a pretrained backbone often want more.
    new_modules_lr: float | None = None
    weight_decay: float = 0.0
    lr_step_epochs: int = 10  # StepLR: multiply the LR by lr_gamma every lr_step_epochs epochs
    lr_gamma: float = 0.1
    warmup_steps: int = 0  # linear LR warm-up (the original had none)
    max_grad_norm: float | None = None
    eval_every_epochs: int = 1
    # Each evaluation also captions the validation songs (decoding as in `generation`, beams as
    # eval_num_beams) and logs val/rouge1_recall, ..., val/meteor, selectable as select_metric.
    eval_generate: bool = True
    eval_generate_songs: int | None = None  # caption only the first N validation songs (None: all)
    eval_num_beams: int | None = None  # None: generation.num_beams
    select_metric: str = "val/loss"  # the checkpoint with the best value of this is kept as best/
    select_mode: str = "auto"  # min, max, or auto: min for losses, max for everything else

    def selects_lower(self) -> bool:
        if self.select_mode not in ("auto", "min", "max"):
            raise ValueError(f"train.select_mode must be auto, min or max, not {self.select_mode!r}")
        return self.select_mode == "min" or (self.select_mode == "auto" and "loss" in self.select_metric)
    early_stop_patience: int | None = None  # evaluations without improvement before stopping
    seed: int = 2020
    mixed_precision: str = "no"  # no, bf16, fp16 (GPU)
    # torch.compile the model (through Accelerate) with dynamic shapes, so dynamic padding does
    # not recompile every batch. Pays off on GPU over long runs; the first steps are slow.
    compile: bool = False
    compile_backend: str = "inductor"  # any torch.compile backend (e.g. aot_eager to debug)
    compile_mode: str | None = None  # None, reduce-overhead, max-autotune
    log_every_steps: int = 10
    keep_last_states: int = 2
    save_every_steps: int | None = None  # resume states also every N optimiser steps (always at epoch ends)
    max_steps: int | None = None  # stop early after this many optimiser steps (smoke tests)


@dataclass
class RunConfig:
    output_dir: str = "runs/alcap"
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def check(self) -> None:
        """Settings that are only read late (at the first evaluation): wrong ones fail before training."""
        self.train.selects_lower()
        self.generation.check()


def from_dict(cls, data: dict | None):
    """Build a (nested) dataclass from a dict, rejecting unknown keys with the valid ones listed."""
    data = data or {}
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} key(s) {', '.join(unknown)}; valid: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value)
        else:
            kwargs[name] = _coerce(value, hint)
    return cls(**kwargs)


def _coerce(value: Any, hint) -> Any:
    """YAML reads `1e-3` as a string and `1` as an int; a float field wants a float."""
    base = [a for a in get_args(hint) if a is not type(None)] if get_origin(hint) is not None else [hint]
    if float in base and not isinstance(value, bool):
        if isinstance(value, int):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise ValueError(f"expected a number, got {value!r}") from None
    return value


def _parse_value(text: str, hint) -> Any:
    return _coerce(yaml.safe_load(text), hint)


def apply_override(config: RunConfig, assignment: str) -> None:
    """`train.lr=1e-4` style assignment on the nested config; values are parsed as YAML."""
    if "=" not in assignment:
        raise ValueError(f"override {assignment!r} is not of the form key.path=value")
    path, text = assignment.split("=", 1)
    target = config
    parts = path.strip().split(".")
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or not hasattr(target, part):
            raise ValueError(f"override {assignment!r}: no section {part!r}")
        target = getattr(target, part)
    name = parts[-1]
    if not dataclasses.is_dataclass(target) or name not in {f.name for f in fields(target)}:
        valid = ", ".join(f.name for f in fields(target)) if dataclasses.is_dataclass(target) else ""
        raise ValueError(f"override {assignment!r}: unknown key {name!r} (valid here: {valid})")
    setattr(target, name, _parse_value(text, get_type_hints(type(target))[name]))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """A YAML file plus overrides; relative data paths are relative to the working directory."""
    data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {} if path is not None else {}
    config = from_dict(RunConfig, data)
    for assignment in overrides or []:
        apply_override(config, assignment)
    return config


RUN_CONFIG_FILE = "run_config.yaml"  # beside every exported model


def load_run_config(model_dir: str | Path) -> RunConfig:
    """The configuration an exported model (best/, last/) was trained with."""
    return load_config(Path(model_dir) / RUN_CONFIG_FILE)


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")
