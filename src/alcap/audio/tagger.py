"""Train a CNNSA music tagger on your own tags, for when the public MSD checkpoint is out of reach.

ALCAP's music encoder is a *trained* tagger: its features separate what tags name (instruments,
moods, tempo), so a captioner learns from a few hundred songs which words the music calls for.
A randomly initialised CNNSA is no stand-in for that: on the demo corpus its pooled outputs
are 0.94 cosine-similar between songs, and a fusion block trained directly on them to name
the lead instrument fits the 210 training songs and reaches 0.53-0.62 on unseen ones
(README, "The demo").

Training all of CNNSA on a CPU is hours of convolution, so this trains the half that is cheap
and matters most for h_m: the two self-attention layers, the pooler and the tag head, on top
of random convolutions whose BatchNorm statistics are estimated from the training audio (a
data-dependent initialisation; otherwise one offset dominates every feature). The CNN runs once
per song; the attention half trains on random time crops of its output. The result is an
ordinary checkpoint in the public layout (`best_model.pth`) with its tag names in `tags.txt`,
used with `--checkpoint` like the real one.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from ..utils import compute_environment
from .cnnsa import CNNSA, HIDDEN, random_cnnsa, state_dict_sha256
from .tags import TAG_NAMES_FILE

BINARY_VALUES = {"yes": 1.0, "no": 0.0, "true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0}


@dataclass
class TagSchema:
    """How manifest columns become tags: a yes/no column is one tag named after the column;
    any other column is one tag per value, exactly one of them on for each song."""

    columns: list[str]
    names: list[str] = field(default_factory=list)  # tag names in head order
    groups: dict[str, list[int]] = field(default_factory=dict)  # column -> its tags' indices
    binary: set[str] = field(default_factory=set)  # the yes/no columns

    @classmethod
    def from_values(cls, columns: list[str], values: dict[str, list[str]]) -> "TagSchema":
        schema = cls(columns)
        for column in columns:
            distinct = sorted(set(values[column]))
            if set(v.lower() for v in distinct) <= set(BINARY_VALUES):
                schema.binary.add(column)
                distinct = [column]
            schema.groups[column] = list(range(len(schema.names), len(schema.names) + len(distinct)))
            schema.names += distinct
        return schema

    def is_binary(self, column: str) -> bool:
        return column in self.binary

    def encode(self, song: dict[str, str]) -> np.ndarray:
        target = np.zeros(len(self.names), dtype=np.float32)
        for column in self.columns:
            value, idx = song[column], self.groups[column]
            if self.is_binary(column) and value.lower() in BINARY_VALUES:
                target[idx[0]] = BINARY_VALUES[value.lower()]
            elif not self.is_binary(column) and value in (known := [self.names[i] for i in idx]):
                target[idx[known.index(value)]] = 1.0
            else:
                raise ValueError(f"{column}={value!r} is not one of the tags learned for {column}")
        return target

    def accuracy(self, logits: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
        """Per column: the most probable value is the true one (binary: probability > 0.5 iff on)."""
        out = {}
        for column, idx in self.groups.items():
            if self.is_binary(column):
                right = (logits[:, idx[0]] > 0) == (targets[:, idx[0]] > 0.5)
            else:
                right = logits[:, idx].argmax(1) == targets[:, idx].argmax(1)
            out[column] = float(right.float().mean())
        return out


@dataclass
class TaggerConfig:
    epochs: int = 30
    batch_size: int = 16
    lr: float = 1e-3
    weight_decay: float = 0.01
    crop_steps: int = 64  # CNN time steps per training crop (about 8 s of a 15 s excerpt)
    calibration_songs: int = 32  # songs whose audio sets the BatchNorm statistics
    init_seed: int = 0  # seed of the random CNNSA the tagger starts from
    seed: int = 0  # order of batches and crops


@dataclass
class TaggerReport:
    tags: list[str]
    train_songs: int
    val_songs: int
    best_epoch: int
    history: list[dict]
    seconds: float
    weights_sha256: str = ""
    config: dict = field(default_factory=dict)


@torch.no_grad()
def calibrate_batchnorm(model: CNNSA, waves: torch.Tensor) -> None:
    """Set every BatchNorm's statistics to those of `waves` (one forward pass in training mode,
    cumulative averages), so each convolution's output is normalised for real audio."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
    model.train()
    model.convolve(waves)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = 0.1  # PyTorch's default, as in a fresh module
    model.eval()


def _attention_modules(model: CNNSA) -> list[nn.Module]:
    return [model.encoder, model.pooler, model.dense]


def train_tagger(train_waves: torch.Tensor, train_targets: np.ndarray, schema: TagSchema,
                 val_waves: torch.Tensor | None = None, val_targets: np.ndarray | None = None,
                 config: TaggerConfig = TaggerConfig(), progress: bool = True) -> tuple[CNNSA, TaggerReport]:
    """(songs, samples) 16 kHz excerpts with (songs, tags) 0/1 targets -> a trained CNNSA.

    With validation songs the weights of the epoch with the lowest validation loss are kept.
    """
    with torch.random.fork_rng():  # dropout draws from the global RNG: seed it, and leave the caller's alone
        torch.manual_seed(config.seed)
        return _train_tagger(train_waves, train_targets, schema, val_waves, val_targets, config, progress)


def _train_tagger(train_waves, train_targets, schema, val_waves, val_targets, config, progress):
    started = time.perf_counter()
    model, _ = random_cnnsa(config.init_seed)
    model.dense = nn.Linear(HIDDEN, len(schema.names))
    with torch.random.fork_rng():
        torch.manual_seed(config.init_seed)
        model.dense.reset_parameters()
    calibrate_batchnorm(model, train_waves[: config.calibration_songs])
    train_feats = _cnn_features(model, train_waves, progress)
    val_feats = _cnn_features(model, val_waves, progress) if val_waves is not None and len(val_waves) else None
    y_train = torch.from_numpy(np.asarray(train_targets, dtype=np.float32))
    y_val = torch.from_numpy(np.asarray(val_targets, dtype=np.float32)) if val_feats is not None else None

    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for m in _attention_modules(model) for p in m.parameters()]
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(config.seed)
    history, best, best_state, best_epoch = [], math.inf, None, config.epochs
    bar = tqdm(range(1, config.epochs + 1), desc="training the tagger", unit="epoch", disable=not progress,
               dynamic_ncols=True)
    for epoch in bar:
        _train_mode(model, True)
        order = torch.randperm(len(train_feats), generator=generator)
        total = 0.0
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            feats = _crop(train_feats[batch], config.crop_steps, generator)
            loss = nn.functional.binary_cross_entropy_with_logits(model.attend(feats).tag_logits, y_train[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        record = {"epoch": epoch, "train_loss": total / len(order)}
        _train_mode(model, False)
        if val_feats is not None:
            with torch.no_grad():
                logits = model.attend(val_feats).tag_logits
            record["val_loss"] = float(nn.functional.binary_cross_entropy_with_logits(logits, y_val))
            record["val_accuracy"] = schema.accuracy(logits, y_val)
            if record["val_loss"] < best:
                best, best_epoch = record["val_loss"], epoch
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
        history.append(record)
        bar.set_postfix(loss=f"{record['train_loss']:.3f}", **({"val": f"{record['val_loss']:.3f}"} if "val_loss" in record else {}))
    if best_state is not None:
        model.load_state_dict(best_state)
    for p in model.parameters():
        p.requires_grad_(False)
    model.eval()
    report = TaggerReport(tags=schema.names, train_songs=len(train_feats), val_songs=0 if val_feats is None else len(val_feats),
                          best_epoch=best_epoch, history=history, seconds=round(time.perf_counter() - started, 1),
                          weights_sha256=state_dict_sha256(model.state_dict()), config=asdict(config))
    return model, report


def _train_mode(model: CNNSA, on: bool) -> None:
    model.eval()  # the CNN (BatchNorm statistics) stays frozen
    for module in _attention_modules(model) + [model.dropout]:
        module.train(on)


@torch.no_grad()
def _cnn_features(model: CNNSA, waves: torch.Tensor, progress: bool, batch: int = 16) -> torch.Tensor:
    model.eval()
    chunks = [model.convolve(waves[i:i + batch]) for i in tqdm(range(0, len(waves), batch), desc="CNN features",
                                                               unit="batch", disable=not progress, leave=False)]
    return torch.cat(chunks)


def _crop(feats: torch.Tensor, steps: int, generator: torch.Generator) -> torch.Tensor:
    """One random window of `steps` time steps per song (all of it when shorter)."""
    if steps <= 0 or feats.shape[1] <= steps:
        return feats
    starts = torch.randint(0, feats.shape[1] - steps + 1, (feats.shape[0],), generator=generator)
    return torch.stack([f[s:s + steps] for f, s in zip(feats, starts.tolist())])


def save_tagger(model: CNNSA, report: TaggerReport, directory: str | Path) -> Path:
    """`best_model.pth` (the public checkpoint's layout), `tags.txt` and `tagger.json` (the report)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "best_model.pth"
    tmp = path.with_suffix(".tmp")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, tmp)
    tmp.replace(path)
    (directory / TAG_NAMES_FILE).write_text("\n".join(report.tags) + "\n", encoding="utf-8")
    record = {**asdict(report), "environment": compute_environment()}  # what exact results depend on
    (directory / "tagger.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return path
