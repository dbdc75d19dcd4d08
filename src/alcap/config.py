"""Typed run configuration: nested dataclasses, YAML files in configs/, `--set a.b=value` overrides.

The resolved configuration is saved in every run directory and checkpoint, so a result can
always be traced to the exact settings that produced it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import UnionType
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

import torch
import yaml

from .model.captioner import AlcapConfig
from .utils import setting


@dataclass
class DataConfig:
    """Where the songs come from and how they are batched."""

    manifest: str = setting("", "the data set's manifest (JSONL or CSV; see `alcap data`)")
    embeddings: str | None = setting(None, "embedding store of the songs' music (h_m, from `alcap embed`); "
                                           "null trains the lyrics-only baseline")
    train_split: str = setting("train", "the manifest split trained on")
    val_split: str = setting("val", "the manifest split validated on (and selected by)")
    max_lyrics_tokens: int = setting(512, "lyrics longer than this are truncated (BART's limit is 1024)")
    max_caption_tokens: int = setting(512, "captions longer than this are truncated")
    num_workers: int = setting(0, "DataLoader worker processes (0: batches are made in the main process)")
    pad_to_multiple_of: int | None = setting(
        None, "pad each batch's lyrics and captions up to a multiple of this many tokens (e.g. 64), so a "
        "compiled step (train.compile) meets a few shapes and reuses their graphs; padding carries no "
        "label, so the loss is unchanged; null: to the batch's longest")
    length_grouping: bool = setting(
        True, "batch rows of similar length together (shuffled groups of batches), so dynamic padding "
        "wastes little; false: plain random batches, as the original")
    attribute_words: str | None = setting(
        None, "words that state each attribute value in a caption, for val/stated_* and attribute "
        "accuracy; null: attributes.json beside the manifest, if any")


@dataclass
class ModelConfig:
    """The backbone and what ALCAP adds to it."""

    backbone: str = setting("facebook/bart-base", "Hugging Face Hub id, local BART directory, or a preset "
                                                  "(tiny, bart-base: randomly initialised, for tests and the demo)")
    tokenizer_vocab_size: int = setting(8000, "presets only: size of the BPE trained on the training text")
    alcap: AlcapConfig = setting(help="music fusion and contrastive alignment", factory=AlcapConfig)


AUTOCAST_DTYPES = {"no": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass
class GenerationConfig:
    """Decoding for evaluation and captioning; deterministic 4-beam search by default."""

    num_beams: int = setting(4, "beams of beam search (1: greedy or plain sampling)")
    do_sample: bool = setting(False, "sample instead of searching deterministically (the original sampled: "
                                     "num_beams 4, do_sample true, top_p 0.92)")
    top_p: float | None = setting(None, "nucleus sampling: keep the smallest set of tokens with this much "
                                        "probability; null: HF's default (1.0)")
    temperature: float | None = setting(None, "sampling temperature; null: HF's 1.0")
    num_return_sequences: int = setting(1, "captions per song (at most num_beams under beam search)")
    max_new_tokens: int = setting(128, "longest caption, in tokens")
    min_new_tokens: int | None = setting(None, "shortest caption, in tokens (e.g. equal to max_new_tokens "
                                               "for fixed-length benchmarks)")
    no_repeat_ngram_size: int = setting(0, "forbid repeating any n-gram of this size (0: off)")
    batch_size: int = setting(16, "songs captioned together")
    mixed_precision: Literal["no", "bf16", "fp16"] = setting(
        "no", "autocast of decoding on a GPU: no, bf16 or fp16 (ignored on the CPU, where it is slower)")
    compile: bool = setting(
        False, "decode with a static KV cache and a torch.compile'd decoding step (CUDA graphs on a GPU); lyrics "
        "are padded to multiples of 64 tokens so each batch size and lyrics bucket compiles once (the first "
        "batch of each pays it); for long captioning jobs on a GPU")
    compile_backend: str = setting("inductor", "the torch.compile backend of generation.compile")
    compile_mode: str | None = setting(None, "torch.compile mode of generation.compile: null, or reduce-overhead "
                                             "(CUDA graphs) or max-autotune")

    def check(self) -> None:
        if self.num_return_sequences < 1 or (not self.do_sample and self.num_return_sequences > self.num_beams):
            raise ValueError(f"generation.num_return_sequences must be 1..num_beams ({self.num_beams}) under beam "
                             f"search (or any with sampling), not {self.num_return_sequences}")
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
        if self.temperature is not None:
            out["temperature"] = self.temperature
        if self.num_return_sequences != 1:
            out["num_return_sequences"] = self.num_return_sequences
        if self.min_new_tokens is not None:
            out["min_new_tokens"] = self.min_new_tokens
        if self.no_repeat_ngram_size:
            out["no_repeat_ngram_size"] = self.no_repeat_ngram_size
        if self.compile:
            out.update(compile_backend=self.compile_backend, compile_mode=self.compile_mode)
        return out


@dataclass
class TrainConfig:
    """Optimisation, validation, checkpoints and logging."""

    epochs: int = setting(20, "passes over the training split")
    batch_size: int = setting(26, "training rows per step and process")
    grad_accum_steps: int = setting(1, "batches accumulated into one optimiser step")
    optimizer: Literal["adafactor", "adamw"] = setting("adafactor", "adafactor: the original's settings; or adamw")
    lr: float = setting(5e-5, "learning rate")
    new_modules_lr: float | None = setting(
        None, "learning rate of the fusion and alignment parameters, when it should differ from the "
        "backbone's (new, randomly initialised modules on a pretrained backbone often want more); null: lr")
    weight_decay: float = setting(0.0, "weight decay")
    lr_step_epochs: int = setting(10, "StepLR: multiply the learning rate by lr_gamma every this many epochs")
    lr_gamma: float = setting(0.1, "StepLR's factor")
    warmup_steps: int = setting(0, "linear learning-rate warm-up, in optimiser steps (the original had none)")
    max_grad_norm: float | None = setting(None, "clip the gradient norm to this; null: no clipping")
    eval_every_epochs: int = setting(1, "validate every this many epochs")
    eval_generate: bool = setting(
        True, "each validation also captions the validation songs (decoding as in generation) and logs "
        "val/rouge1_recall, ..., val/meteor, which select_metric can select on")
    eval_generate_songs: int | None = setting(None, "caption only the first N validation songs; null: all")
    eval_num_beams: int | None = setting(None, "beams when validating; null: generation.num_beams")
    select_metric: str = setting(
        "val/caption_loss", "the checkpoint with the best value of this is kept as best/. The caption loss by "
        "default, not val/loss, which for ALCAP adds alpha x the contrastive loss, so methods would be "
        "selected on different quantities")
    select_mode: Literal["auto", "min", "max"] = setting("auto", "auto: lower is better for losses, higher "
                                                                 "for everything else")

    early_stop_patience: int | None = setting(None, "validations without improvement before stopping; "
                                                    "null: never stop early")
    seed: int = setting(2020, "seed of the initialisation, shuffling and dropout")
    mixed_precision: Literal["no", "bf16", "fp16"] = setting("no", "no, or bf16/fp16 on a GPU")
    nonfinite_loss: Literal["stop", "skip"] = setting(
        "stop", "a step whose loss is NaN or infinite: stop the run with an error (bad data or a diverged "
        "model must not become an exported model), or skip the batch (logged as train/skipped_steps)")
    max_skipped_steps: int = setting(10, "with nonfinite_loss skip: stop after this many skipped steps")
    fused_optimizer: bool = setting(True, "AdamW as one fused kernel per step (torch's fused=True) instead of "
                                          "per-tensor updates; false: torch's default implementation")
    gradient_checkpointing: bool = setting(
        False, "recompute each BART layer's activations in the backward pass instead of keeping them: a "
        "fraction of the memory for one more forward pass of the layers (long lyrics and captions, large "
        "batches, small GPUs); the loss and gradients are unchanged")
    reuse_freed_memory: bool = setting(
        True, "keep the memory a step frees for the next step's tensors instead of returning it to the "
        "system (glibc's mallopt, Linux), so the next step does not fault its large tensors' pages in "
        "again: faster CPU steps, but the resident size stays at its high-water mark, fragments included, "
        "which can be higher (measured in docs/performance.md); false when memory is tight (a resumed run "
        "may switch it)")
    compile: bool = setting(
        False, "torch.compile the model (through Accelerate) with dynamic shapes, so dynamic padding does "
        "not recompile every batch; pays off on a GPU over long runs, the first steps are slow")
    compile_backend: str = setting("inductor", "the torch.compile backend (e.g. aot_eager to debug)")
    compile_mode: str | None = setting(None, "torch.compile mode: null, reduce-overhead or max-autotune")
    log_every_steps: int = setting(10, "write the training losses to log.jsonl every this many steps")
    log_with: list[str] = setting(
        help="experiment trackers through Accelerate, besides log.jsonl: tensorboard, wandb, mlflow, ... "
        "(each needs its package; tensorboard writes into the run directory's trackers/)", factory=list)
    keep_last_states: int = setting(2, "resume states kept (older ones are deleted)")
    save_every_steps: int | None = setting(None, "also save a resume state every N optimiser steps "
                                                 "(always at epoch ends); null: epoch ends only")
    max_steps: int | None = setting(None, "stop after this many optimiser steps (smoke tests); null: no limit")

    def selects_lower(self) -> bool:
        if self.select_mode not in ("auto", "min", "max"):
            raise ValueError(f"train.select_mode must be auto, min or max, not {self.select_mode!r}")
        return self.select_mode == "min" or (self.select_mode == "auto" and "loss" in self.select_metric)


@dataclass
class RunConfig:
    """Everything a training run needs; saved as run_config.yaml in the run and beside every exported model."""

    output_dir: str = setting("runs/alcap", "run directory: resume states, log.jsonl, best/ and last/")
    data: DataConfig = setting(help="the songs and their batches", factory=DataConfig)
    model: ModelConfig = setting(help="the backbone and what ALCAP adds to it", factory=ModelConfig)
    train: TrainConfig = setting(help="the optimisation", factory=TrainConfig)
    generation: GenerationConfig = setting(help="decoding, for validation and captioning", factory=GenerationConfig)

    def to_dict(self) -> dict:
        return asdict(self)

    def resolve_paths(self) -> "RunConfig":
        """Make the data paths, and a backbone that is a local directory, absolute (from the
        working directory), so that the config a run saves works from any directory."""
        import os

        data = self.data
        for name in ("manifest", "embeddings", "attribute_words"):
            value = getattr(data, name)
            if value:
                setattr(data, name, os.path.abspath(os.path.expanduser(value)))
        if self.model.backbone and Path(self.model.backbone).expanduser().is_dir():
            self.model.backbone = os.path.abspath(os.path.expanduser(self.model.backbone))
        return self

    def check(self) -> None:
        """Every value in its range, and the fusion layers inside the backbone: a wrong setting
        fails when the config is loaded, not deep inside training."""
        problems = []
        for key, (valid, expected) in RANGES.items():
            value = self.get(key)
            if value is not None and not valid(value):
                problems.append(f"{key}: {value!r} is out of range (expected {expected})")
        try:
            self.model.alcap.check(backbone_encoder_layers(self.model.backbone), self.model.backbone)
        except ValueError as exc:
            problems.append(str(exc))
        if problems:
            raise ConfigError("; ".join(problems))
        self.train.selects_lower()
        self.generation.check()

    def get(self, key: str):
        """The value at a dotted key, e.g. `train.lr`."""
        value = self
        for part in key.split("."):
            value = getattr(value, part)
        return value


def _at_least(low):
    return (lambda v: v >= low), f">= {low}"


_POSITIVE = (lambda v: v > 0), "> 0"
_FRACTION = (lambda v: 0 <= v < 1), "0 <= value < 1"
# Ranges of the numeric settings (types are checked by from_dict/typed_value).
RANGES = {
    "data.max_lyrics_tokens": _at_least(1), "data.max_caption_tokens": _at_least(1),
    "data.num_workers": _at_least(0), "model.tokenizer_vocab_size": _at_least(300),
    "model.alcap.music_dim": _at_least(1), "model.alcap.fusion_heads": _at_least(1),
    "model.alcap.fusion_residual_scale": _at_least(0), "model.alcap.fusion_dropout": _FRACTION,
    "model.alcap.alpha": _at_least(0),
    "train.epochs": _at_least(1), "train.batch_size": _at_least(1), "train.grad_accum_steps": _at_least(1),
    "train.lr": _POSITIVE, "train.new_modules_lr": _POSITIVE, "train.weight_decay": _at_least(0),
    "train.lr_step_epochs": _at_least(1), "train.lr_gamma": _POSITIVE, "train.warmup_steps": _at_least(0),
    "train.max_grad_norm": _POSITIVE, "train.eval_every_epochs": _at_least(1),
    "train.eval_generate_songs": _at_least(1), "train.eval_num_beams": _at_least(1),
    "train.early_stop_patience": _at_least(1), "train.log_every_steps": _at_least(1),
    "train.keep_last_states": _at_least(1), "train.save_every_steps": _at_least(1), "train.max_steps": _at_least(1),
    "train.max_skipped_steps": _at_least(0),
    "generation.num_beams": _at_least(1), "generation.max_new_tokens": _at_least(1),
    "generation.min_new_tokens": _at_least(0), "generation.no_repeat_ngram_size": _at_least(0),
    "generation.batch_size": _at_least(1), "generation.top_p": ((lambda v: 0 < v <= 1), "0 < value <= 1"),
}


KNOWN_HUB_BACKBONES = {"facebook/bart-base": 6, "facebook/bart-large": 12}


def backbone_encoder_layers(backbone: str) -> int | None:
    """Encoder layers of a preset or a local BART directory; None for a hub id (checked when loaded)."""
    from .model.backbone import PRESETS
    from .model.captioner import bart_config

    if backbone in PRESETS:
        return bart_config(backbone, 300).encoder_layers
    if backbone in KNOWN_HUB_BACKBONES:
        return KNOWN_HUB_BACKBONES[backbone]
    config = Path(backbone) / "config.json"
    try:
        import json

        return int(json.loads(config.read_text(encoding="utf-8"))["encoder_layers"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


class ConfigError(ValueError):
    """A configuration value of the wrong type or out of range; the message names the key."""


def from_dict(cls, data: dict | None, prefix: str = ""):
    """Build a (nested) dataclass from a dict, rejecting unknown keys with the valid ones listed
    and every value that does not have its field's type."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'}: expected a mapping of keys to values, "
                          f"got {data!r}")
    hints = get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"unknown {prefix.rstrip('.') or cls.__name__} key(s) {', '.join(map(str, unknown))}; "
                          f"valid: {', '.join(sorted(known))}")
    kwargs = {}
    for name, value in data.items():
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            kwargs[name] = from_dict(hint, value, f"{prefix}{name}.")
        else:
            kwargs[name] = typed_value(value, hint, f"{prefix}{name}")
    return cls(**kwargs)


def typed_value(value: Any, hint, key: str) -> Any:
    """`value` as the type `hint` declares, or a ConfigError naming the key, the value and the type.

    YAML reads `1e-3` as a string and `1` as an int; a float field takes both. An int field
    takes no fractions and a bool field no words other than YAML's true/false."""
    origin, args = get_origin(hint), get_args(hint)
    if origin in (Union, UnionType):  # the config's unions are all `X | None`
        if value is None and type(None) in args:
            return None
        (option,) = [a for a in args if a is not type(None)]
        return typed_value(value, option, key)
    if origin is Literal:
        if value in args:
            return value
        raise ConfigError(f"{key}: {value!r} is not one of {', '.join(map(repr, args))}")
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: {value!r} is not a list (write it as [a, b])")
        return [typed_value(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: {value!r} is not true or false")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: {value!r} is not a whole number")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{key}: {value!r} is not a number")
    if hint is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)  # a split or path that YAML read as a number
        raise ConfigError(f"{key}: {value!r} is not text")
    return value


def _parse_value(text: str, hint, key: str) -> Any:
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text  # not YAML: taken as the text itself, then type-checked
    return typed_value(value, hint, key)


def apply_override(config: RunConfig, assignment: str) -> None:
    """`train.lr=1e-4` style assignment on the nested config; values are parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} is not of the form key.path=value")
    path, text = assignment.split("=", 1)
    target = config
    parts = path.strip().split(".")
    for part in parts[:-1]:
        if not dataclasses.is_dataclass(target) or not hasattr(target, part):
            raise ConfigError(f"override {assignment!r}: no section {part!r}")
        target = getattr(target, part)
    name = parts[-1]
    if not dataclasses.is_dataclass(target) or name not in {f.name for f in fields(target)}:
        valid = ", ".join(f.name for f in fields(target)) if dataclasses.is_dataclass(target) else ""
        raise ConfigError(f"override {assignment!r}: unknown key {name!r} (valid here: {valid})")
    hint = get_type_hints(type(target))[name]
    if dataclasses.is_dataclass(hint):
        raise ConfigError(f"override {assignment!r}: {path} is a section; set one of its keys, e.g. "
                          f"{path}.{fields(hint)[0].name}=...")
    setattr(target, name, _parse_value(text, hint, path.strip()))


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """A YAML file plus overrides, checked (types and ranges) before anything runs; relative
    data paths are relative to the working directory."""
    data = read_yaml(path) if path is not None else {}
    config = from_dict(RunConfig, data)
    for assignment in overrides or []:
        apply_override(config, assignment)
    config.check()
    return config


def read_yaml(path: str | Path) -> dict:
    """A YAML mapping from a file, or a ConfigError naming the file and the line."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory; give a YAML config file (see configs/)") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text; is it a YAML config?") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}:{where}: not valid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (data:, model:, train:, ...), got "
                          f"{type(data).__name__}")
    return data


RUN_CONFIG_FILE = "run_config.yaml"  # beside every exported model


def load_run_config(model_dir: str | Path) -> RunConfig:
    """The configuration an exported model (best/, last/) was trained with."""
    return load_config(Path(model_dir) / RUN_CONFIG_FILE)


def save_config(config: RunConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(config.to_dict(), sort_keys=False), encoding="utf-8")


def config_entries(config: Any, prefix: str = "") -> list[dict]:
    """Every section and key of a (nested) config, in file order, with its value, default and
    meaning: the one reference that `alcap config show` and docs/config.md print."""
    defaults = type(config)()
    out = []
    for f in fields(config):
        key, value, meaning = f"{prefix}{f.name}", getattr(config, f.name), f.metadata.get("help", "")
        if dataclasses.is_dataclass(value):
            out.append({"key": key, "section": True, "help": meaning})
            out += config_entries(value, f"{key}.")
        else:
            out.append({"key": key, "section": False, "help": meaning, "value": value,
                        "default": getattr(defaults, f.name)})
    return out


def _yaml_value(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).strip().removesuffix("...").strip()


def describe_config(config: RunConfig, fmt: Literal["yaml", "markdown"] = "yaml") -> str:
    """The config with every key's meaning: commented YAML that loads back as the same config,
    or Markdown tables (the documentation's reference)."""
    import textwrap

    lines = []
    if fmt == "markdown":
        entries = config_entries(config)
        top = [e for e in entries if "." not in e["key"] and not e["section"]]
        entries = [{"key": "run", "section": True, "help": "the run itself"}] + top + [e for e in entries if e not in top]
        for entry in entries:
            if entry["section"]:
                lines += ["", f"### `{entry['key']}`: {entry['help']}", "", "| key | default | meaning |",
                          "|---|---|---|"]
            else:
                default = _yaml_value(entry["default"]).replace("|", "\\|")
                lines.append(f"| `{entry['key'].rsplit('.', 1)[-1]}` | `{default}` | {entry['help']} |")
        return "\n".join(lines).lstrip("\n") + "\n"
    for entry in config_entries(config):
        indent = "  " * entry["key"].count(".")
        name = entry["key"].rsplit(".", 1)[-1]
        note = entry["help"]
        if not entry["section"] and entry["value"] != entry["default"]:
            note += f" [default: {_yaml_value(entry['default'])}]"
        if lines and not indent:
            lines.append("")
        lines += textwrap.wrap(note, width=100, initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ")
        lines.append(f"{indent}{name}:" if entry["section"] else f"{indent}{name}: {_yaml_value(entry['value'])}")
    return "\n".join(lines) + "\n"
