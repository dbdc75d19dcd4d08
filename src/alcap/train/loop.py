"""The training application: one explicit Accelerate loop (CPU, one GPU or many, same code).

Run directory layout:
    config.yaml       the fully resolved configuration
    environment.jsonl threads, CPU ISA, GPU and library versions, one line per (re)start
    log.jsonl         one JSON object per logged step / evaluation (train/..., val/... keys)
    states/step_N/    resume states (model, optimiser, scheduler, RNG), the last few kept;
                      states/latest names the newest complete one
    best/             exported model with the best validation score (save_pretrained style)
    last/             exported model at the end of training
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator, DataLoaderConfiguration
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import TorchDynamoPlugin, broadcast_object_list, set_seed
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..audio.decode import Excerpt
from ..config import RUN_CONFIG_FILE, RunConfig, load_config, save_config
from ..data.dataset import CaptionCollator, CaptionDataset, LengthGroupedSampler
from ..data.manifest import read_manifest
from ..data.store import EmbeddingStore
from ..evaluate import caption_and_score, songs_with_references
from ..metrics.attributes import AttributeWords
from ..inference import SHARED_ENCODERS_DIR, Captioner, extractor_from_store_meta, save_music_encoder
from ..model.backbone import load_backbone
from ..model.captioner import AlcapModel
from ..utils import (
    compute_environment, file_sha256, nested_differences, refused_pickle, reuse_freed_memory, share_as_umask,
)

logger = logging.getLogger("alcap.train")
# Accelerate warns at every save_state that BART's tied embeddings are stored once; the resume
# test shows they reload tied, so the warning is noise here.
logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)
LOSS_KEYS = ("loss", "caption_loss", "contrast_loss")
SELECTED_FILE = "selected.json"  # in best/: the epoch, step and value it was selected at
ENVIRONMENT_FILE = "environment.jsonl"


@dataclass
class TrainerState:
    """What a resume needs beyond the tensors; saved as trainer_state.json in each state."""

    epoch: int = 0  # epoch in progress
    batches_done: int = 0  # batches of that epoch already trained on
    global_step: int = 0  # optimiser steps
    best_value: float | None = None
    best_epoch: int | None = None  # epochs trained when best/ was exported
    evals_without_improvement: int = 0
    history: list = field(default_factory=list)
    skipped_steps: int = 0  # batches skipped for a non-finite loss (train.nonfinite_loss=skip)


def step_lr_factor(step: int, steps_per_epoch: int, step_epochs: int, gamma: float, warmup_steps: int = 0) -> float:
    """StepLR as a pure function of the optimiser step, gamma ** (epoch // step_epochs), after an
    optional linear warm-up over the first `warmup_steps` steps."""
    warmup = min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0
    return warmup * gamma ** ((step // max(1, steps_per_epoch)) // max(1, step_epochs))


NEW_MODULES = ("fusion.", "alignment.")  # what ALCAP adds to BART, randomly initialised


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """Adafactor (the original's settings) or AdamW; with `train.new_modules_lr` the fusion and
    alignment parameters get their own LR (LambdaLR scales both groups alike)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    new = [p for n, p in named if n.startswith(NEW_MODULES)]
    groups = [{"params": [p for n, p in named if not n.startswith(NEW_MODULES)], "lr": cfg.lr}]
    if new:
        groups.append({"params": new, "lr": cfg.new_modules_lr if cfg.new_modules_lr is not None else cfg.lr})
    if cfg.optimizer == "adafactor":
        from transformers.optimization import Adafactor

        # The original's settings: fixed LR, no relative step, no warm-up init, no weight decay.
        return Adafactor(groups, lr=cfg.lr, relative_step=False, warmup_init=False, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        # fused: one kernel for the whole update instead of a few per parameter tensor (torch's own;
        # CPU and CUDA), the same update to rounding (tests/train/test_optimizer_fused).
        return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, fused=cfg.fused_optimizer)
    raise ValueError(f"unknown optimizer {cfg.optimizer!r}; use adafactor or adamw")


def _record_step(line: str) -> float:
    try:
        return json.loads(line).get("step", 0)
    except (ValueError, AttributeError):
        return math.inf  # a torn or damaged line from a killed run: dropped


class RunLog:
    """Appends JSON lines to log.jsonl (main process only), and gives the numbers to the
    run's Accelerate trackers (`train.log_with`) when there are any."""

    def __init__(self, path: Path, enabled: bool, accelerator: Accelerator | None = None):
        self.path, self.enabled, self.accelerator = path, enabled, accelerator

    def keep_until(self, step: int) -> None:
        """Drop the records of steps after `step`: a resumed run redoes them, and the log then
        reads as one uninterrupted run's (what plots and reports expect)."""
        if not (self.enabled and self.path.exists()):
            return
        lines = self.path.read_text(encoding="utf-8").splitlines(keepends=True)
        kept = [line for line in lines if line.endswith("\n") and _record_step(line) <= step]
        if len(kept) != len(lines):
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        """One line of strict JSON: a NaN or infinite value is written as null (bare NaN is not JSON)."""
        if self.enabled:
            clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(clean, allow_nan=False) + "\n")
        if self.accelerator is not None and self.accelerator.trackers:
            numbers = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k not in ("step", "epoch")
                       and math.isfinite(v)}
            self.accelerator.log(numbers, step=record.get("step"))


def train(config: RunConfig, progress: bool = True) -> dict:
    """Train one model as `config` says; returns a summary (best value, paths, steps)."""
    config.check()
    config.resolve_paths()  # recorded in config.yaml and every exported model, used from anywhere
    out = Path(config.output_dir)
    tc = config.train
    if tc.reuse_freed_memory:
        reuse_freed_memory()  # each step's large tensors reuse the last step's memory, not fresh pages
    # Accelerate keeps its settings process-wide and refuses (precision) or ignores (compilation)
    # new ones; `alcap experiment` trains many models in one process, so each run starts afresh.
    # The process group (PartialState) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    GradientState._reset_state()
    compile_plugin = (TorchDynamoPlugin(backend=tc.compile_backend, mode=tc.compile_mode, dynamic=True)
                      if tc.compile else None)
    # Accelerate treats CPU processes started by torchrun as independent runs unless told they
    # are CPU workers of one job (`accelerate launch --cpu` tells it; torchrun does not).
    cpu_job = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = Accelerator(
        cpu=cpu_job, gradient_accumulation_steps=tc.grad_accum_steps, mixed_precision=tc.mixed_precision,
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=tc.seed),
        dynamo_plugin=compile_plugin, log_with=tc.log_with or None, project_dir=str(out / "trackers"),
    )
    set_seed(tc.seed)

    # The data is checked before the run directory exists: a refused run leaves nothing behind.
    manifest = read_manifest(config.data.manifest)
    use_music = config.model.alcap.use_music
    if use_music and not config.data.embeddings:
        raise ValueError("model.alcap.use_music is true but data.embeddings is not set")
    store = EmbeddingStore.open(config.data.embeddings) if use_music else None
    if store is not None and config.model.alcap.music_dim != store.dim:
        # The model's music dimension is the store's (CNNSA 256, musicnn 753), whatever the config said.
        logger.info("model.alcap.music_dim %d -> %d, the dimension of %s", config.model.alcap.music_dim, store.dim,
                    config.data.embeddings)
        config.model.alcap.music_dim = store.dim
    if (out / "states" / "latest").exists():
        _check_same_run(out, config)  # before config.yaml is rewritten
    train_rows, val_rows = manifest.split(config.data.train_split), manifest.split(config.data.val_split)
    for split in (config.data.train_split, config.data.val_split):
        if manifest.duplicate_rows(split):
            logger.warning("%s: %d exact duplicate rows in split %r are used once", config.data.manifest,
                           manifest.duplicate_rows(split), split)
    if not train_rows:
        raise ValueError(f"{config.data.manifest}: no rows in split {config.data.train_split!r}")
    train_set, val_set = CaptionDataset(train_rows, store), CaptionDataset(val_rows, store)
    # The music encoder behind the store travels with every exported model (see inference.py).
    encoder = extractor_from_store_meta(store.meta, store_root=store.root) if store is not None else None
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
        save_config(config, out / "config.yaml")
        # One line per start (a resumed run may have moved): exact results depend on these.
        with open(out / ENVIRONMENT_FILE, "a", encoding="utf-8") as f:
            f.write(json.dumps({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "processes": accelerator.num_processes,
                                **compute_environment()}) + "\n")

    # A preset's tokenizer is trained once, at the start; a resumed run reads it back.
    tokenizer_dir = out / "tokenizer"
    texts = [t for r in train_set.rows for t in (r.lyrics, r.caption) if t]
    bart, tokenizer = load_backbone(config.model.backbone, texts, config.model.tokenizer_vocab_size,
                                    tokenizer_dir=tokenizer_dir if tokenizer_dir.exists() else None)
    if accelerator.is_main_process and not tokenizer_dir.exists():
        tokenizer.save_pretrained(tokenizer_dir)
    model = AlcapModel(config.model.alcap, bart)
    if tc.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    if use_music and config.model.alcap.music_standardize:
        model.set_music_statistics(*music_statistics(store, {r.song_id for r in train_set.rows}))

    collate = CaptionCollator(tokenizer, config.data.max_lyrics_tokens, config.data.max_caption_tokens,
                              config.data.pad_to_multiple_of)
    # Loaders get generators of their own: starting an iterator must not draw from the global
    # RNG, or a resumed run would see other dropout masks than an uninterrupted one.
    if config.data.length_grouping:
        lengths = train_set.token_lengths(tokenizer, config.data.max_lyrics_tokens, config.data.max_caption_tokens)
        order = {"sampler": LengthGroupedSampler(lengths, tc.batch_size * accelerator.num_processes, tc.seed)}
    else:
        order = {"shuffle": True}
    train_loader = DataLoader(train_set, batch_size=tc.batch_size, collate_fn=collate, num_workers=config.data.num_workers,
                              generator=torch.Generator().manual_seed(tc.seed), **order)
    val_loader = DataLoader(val_set, batch_size=tc.batch_size, shuffle=False, collate_fn=collate,
                            num_workers=config.data.num_workers, generator=torch.Generator().manual_seed(tc.seed))
    optimizer = build_optimizer(model, tc)
    steps_per_epoch = math.ceil(len(train_loader) / tc.grad_accum_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: step_lr_factor(step, steps_per_epoch, tc.lr_step_epochs, tc.lr_gamma, tc.warmup_steps))
    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler)

    state = TrainerState()
    if (out / "states" / "latest").exists():
        state_dir = resume_state_dir(out / "states")
        try:
            accelerator.load_state(str(state_dir))
        except Exception as exc:  # noqa: BLE001 - weights-only unpickling refuses code; say so in one line
            reason = refused_pickle(exc) or str(exc).splitlines()[0][:300]
            raise ResumeError(f"{state_dir}: cannot load this resume state ({reason}); it was not written by alcap "
                              "or is damaged. Train into another --output-dir") from None
        state = TrainerState(**json.loads((state_dir / "trainer_state.json").read_text()))
        logger.info("resumed from %s (epoch %d, step %d)", state_dir, state.epoch, state.global_step)
    song_of_index = {i: s for s, i in train_set.song_index.items()}

    if tc.log_with:
        hparams = {k: v if isinstance(v, (int, float, str, bool)) else str(v) for k, v in _flat(config.to_dict()).items()}
        accelerator.init_trackers(out.name, config=hparams)
    log = RunLog(out / "log.jsonl", accelerator.is_main_process, accelerator)
    log.keep_until(state.global_step)  # a killed run logged steps past its last state
    bar = tqdm(total=tc.epochs * len(train_loader), initial=state.epoch * len(train_loader) + state.batches_done,
               desc="training", unit="batch", disable=not (progress and accelerator.is_main_process), dynamic_ncols=True)
    window: dict[str, list[float]] = {}
    started = time.perf_counter()
    stop = False
    while state.epoch < tc.epochs and not stop:
        train_loader.set_epoch(state.epoch)
        model.train()
        loader = accelerator.skip_first_batches(train_loader, state.batches_done) if state.batches_done else train_loader
        for batch in loader:
            with accelerator.accumulate(model):
                output = model(**batch, return_logits=False)  # the loss without (B, L_c, vocab) logits
                if not _finite_everywhere(accelerator, output.loss):
                    _nonfinite_loss(config, state, output, batch, song_of_index, out)
                    optimizer.zero_grad()  # the batch is skipped (train.nonfinite_loss=skip)
                    state.batches_done += 1
                    bar.update(1)
                    log.write({"epoch": state.epoch, "step": state.global_step, "train/skipped_steps": state.skipped_steps})
                    continue
                accelerator.backward(output.loss)
                if tc.max_grad_norm and accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(model.parameters(), tc.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            state.batches_done += 1
            bar.update(1)
            # Kept as tensors on the device until the log line: a float() per loss and step would
            # make the host wait for the GPU at every step.
            for key in LOSS_KEYS:
                value = getattr(output, key)
                if value is not None:
                    window.setdefault(key, []).append(value.detach())
            if output.info_nce_bound is not None:  # mean log K - L over the global contrastive batch
                window.setdefault("info_nce_bound", []).append(torch.as_tensor(output.info_nce_bound).detach())
            if accelerator.sync_gradients:
                state.global_step += 1
                if state.global_step % tc.log_every_steps == 0:
                    _log_train(log, window, state, scheduler, bar, started)
                if tc.save_every_steps and state.global_step % tc.save_every_steps == 0:
                    _save_state(accelerator, out, state, tc.keep_last_states)
                if tc.max_steps and state.global_step >= tc.max_steps:
                    stop = True
                    break
        if state.batches_done >= len(train_loader):
            state.epoch, state.batches_done = state.epoch + 1, 0
        if stop or state.epoch % tc.eval_every_epochs == 0 or state.epoch == tc.epochs:
            metrics = evaluate_losses(model, val_loader, accelerator) if len(val_set) else {}
            if tc.eval_generate and len(val_set):
                metrics.update(validation_captions(accelerator, model, tokenizer, config, val_rows, store))
            record = {"epoch": state.epoch, "step": state.global_step, **metrics}
            log.write(record)
            state.history.append(record)
            stop = _select(accelerator, model, tokenizer, config, out, state, metrics, store, encoder) or stop
        _save_state(accelerator, out, state, tc.keep_last_states)
    bar.close()
    if window:  # steps since the last log line
        _log_train(log, window, state, scheduler, bar, started)
    _export(accelerator, model, tokenizer, config, out / "last", store, encoder)
    if state.best_value is None:  # no validation rows: the last model is the best we know
        _export(accelerator, model, tokenizer, config, out / "best", store, encoder)
    accelerator.wait_for_everyone()
    if tc.log_with:
        accelerator.end_training()
    return {"output_dir": str(out), "global_step": state.global_step, "epochs": state.epoch,
            "best": {tc.select_metric: state.best_value}, "best_epoch": state.best_epoch,
            "seconds": round(time.perf_counter() - started, 1),
            "history": state.history, "main_process": accelerator.is_main_process}


# Changes that do not alter what is learned (only when training stops, or how fast it runs).
RESUMABLE_CHANGES = ("train.epochs", "train.max_steps", "train.early_stop_patience", "generation", "train.compile",
                     "data.num_workers", "train.gradient_checkpointing", "train.reuse_freed_memory")


def enable_gradient_checkpointing(model: AlcapModel) -> None:
    """Every BART encoder and decoder layer recomputed in the backward pass (HF's checkpointing,
    non-reentrant: dropout masks are replayed, so gradients equal the plain step's). The
    encoder layers that `AlcapModel.encode` runs itself are checkpointed too: the layers do it."""
    model.bart.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})


def _check_same_run(out: Path, config: RunConfig) -> None:
    """Resuming is only for the same experiment; a changed config must not silently continue an old run."""
    saved = load_config(out / "config.yaml").resolve_paths().to_dict()  # runs saved before paths were absolute
    changed = [(k, a, b) for k, a, b in nested_differences(saved, config.to_dict())
               if k != "output_dir" and not k.startswith(RESUMABLE_CHANGES)]
    if changed:
        detail = "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in changed)
        raise ValueError(f"{out} holds a run with another configuration ({detail}). Resume it with its own "
                         "config, or train into another --output-dir (or delete this one).")


def music_statistics(store: EmbeddingStore, song_ids: set[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-feature mean and std of h_m over every time step of the given songs (float64 sums)."""
    total = sq = None
    count = 0
    for song_id in sorted(song_ids):
        x = store.get(song_id, dtype=np.float64)
        total = x.sum(0) if total is None else total + x.sum(0)
        sq = (x**2).sum(0) if sq is None else sq + (x**2).sum(0)
        count += len(x)
    mean = total / count
    std = np.sqrt(np.maximum(sq / count - mean**2, 0.0))
    return torch.from_numpy(mean).float(), torch.from_numpy(std).float()


def _flat(tree: dict, prefix: str = "") -> dict:
    """{"train": {"lr": 1e-4}} -> {"train.lr": 1e-4}: trackers take flat hyper-parameters."""
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _log_train(log: RunLog, window: dict, state: TrainerState, scheduler, bar, started: float) -> None:
    # seconds: since this process started training (a resumed run starts again from 0), for
    # throughput from the log alone.
    record = {"epoch": state.epoch, "step": state.global_step, "lr": scheduler.get_last_lr()[0],
              "seconds": round(time.perf_counter() - started, 3)}
    for key, values in window.items():  # one transfer per key and log line
        record[f"train/{key}"] = float(torch.stack([v.float().reshape(()) for v in values]).mean())
    window.clear()
    log.write(record)
    bar.set_postfix(loss=f"{record.get('train/loss', float('nan')):.3f}")


@torch.no_grad()
def evaluate_losses(model, loader, accelerator) -> dict:
    """Teacher-forced validation losses, row-weighted means over all processes.

    (With several processes the last batch may repeat a few rows to even the shards out.)
    """
    model.eval()
    sums: dict[str, float] = {}
    count = 0
    for batch in loader:
        output = model(**batch, return_logits=False)
        n = torch.tensor(float(batch["input_ids"].shape[0]), device=accelerator.device)
        for key in LOSS_KEYS:
            value = getattr(output, key)
            if value is not None:
                sums[key] = sums.get(key, 0.0) + float(accelerator.reduce(value.detach() * n, "sum"))
        count += int(accelerator.reduce(n, "sum"))
    model.train()
    return {f"val/{k}": v / max(count, 1) for k, v in sums.items()}


VAL_CAPTION_KEYS = ("rouge1_recall", "rouge2_recall", "rougeL_recall", "rouge1_f1", "rouge2_f1", "rougeL_f1", "meteor")


@torch.no_grad()
def validation_captions(accelerator, model, tokenizer, config: RunConfig, val_rows, store) -> dict:
    """Caption the validation songs and score them: {"val/rouge1_recall": ..., "val/meteor": ...}.

    Runs on the main process (generation is short next to an epoch); the others wait and
    receive the scores.
    """
    metrics: dict = {}
    if accelerator.is_main_process:
        generation = config.generation.with_overrides(num_beams=config.train.eval_num_beams)
        captioner = Captioner(accelerator.unwrap_model(model, keep_torch_compile=False), tokenizer, None, Excerpt(),
                              config, generation, device=accelerator.device)
        items = songs_with_references(val_rows)[:config.train.eval_generate_songs]
        words = AttributeWords.for_manifest(config.data.manifest, config.data.attribute_words)
        _, scores, _ = caption_and_score(captioner, items, store, words=words)
        metrics = {f"val/{k}": scores[k] for k in VAL_CAPTION_KEYS if scores.get(k) is not None}
        metrics.update({f"val/stated_{k}": v for k, v in scores.get("attribute_accuracy", {}).items()})
        model.train()
    # Every process needs the scores: checkpoint selection and early stopping must agree.
    shared = [metrics]
    broadcast_object_list(shared, from_process=0)
    return shared[0]


def _select(accelerator, model, tokenizer, config: RunConfig, out: Path, state: TrainerState, metrics: dict,
            store, encoder) -> bool:
    """Export best/ on improvement; True when early stopping says stop."""
    tc = config.train
    value = metrics.get(tc.select_metric)
    if value is None:
        return False
    if not math.isfinite(value):  # a diverged model is never the best one
        logger.warning("%s is %s at epoch %d: not a candidate for best/", tc.select_metric, value, state.epoch)
        state.evals_without_improvement += 1
        return bool(tc.early_stop_patience and state.evals_without_improvement >= tc.early_stop_patience)
    better = state.best_value is None or (value < state.best_value if tc.selects_lower() else value > state.best_value)
    if better:
        state.best_value, state.best_epoch, state.evals_without_improvement = value, state.epoch, 0
        _export(accelerator, model, tokenizer, config, out / "best", store, encoder,
                selected={"epoch": state.epoch, "step": state.global_step, "metric": tc.select_metric, "value": value})
    else:
        state.evals_without_improvement += 1
    return bool(tc.early_stop_patience and state.evals_without_improvement >= tc.early_stop_patience)


def _export(accelerator, model, tokenizer, config: RunConfig, directory: Path, store=None, encoder=None,
            selected: dict | None = None) -> None:
    """A model directory users load with `from_pretrained`, written atomically (tmp + rename);
    `selected` (best/: which evaluation it is) goes into its selected.json."""
    accelerator.wait_for_everyone()
    if not accelerator.is_main_process:
        return
    unwrapped = accelerator.unwrap_model(model, keep_torch_compile=False)
    bad = [n for n, t in unwrapped.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise NonFiniteError(f"not exporting {directory}: {len(bad)} tensors hold NaN or infinite values "
                             f"({', '.join(bad[:3])}{', ...' if len(bad) > 3 else ''}); the model diverged")
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    unwrapped.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if selected is not None:
        (tmp / SELECTED_FILE).write_text(json.dumps(selected) + "\n", encoding="utf-8")
    save_config(config, tmp / RUN_CONFIG_FILE)
    if encoder is not None:
        save_music_encoder(encoder, store.meta["excerpt"], tmp, shared=directory.parent / SHARED_ENCODERS_DIR)
    share_as_umask(tmp)
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def _save_state(accelerator, out: Path, state: TrainerState, keep: int) -> None:
    """Resume state; `states/latest` is switched only after the state is complete."""
    name = f"step_{state.global_step:08d}"
    states = out / "states"
    accelerator.save_state(str(states / name))
    accelerator.wait_for_everyone()  # every process's files are written before they are summed up
    if accelerator.is_main_process:
        (states / name / "trainer_state.json").write_text(json.dumps(state.__dict__), encoding="utf-8")
        write_checksums(states / name)
        share_as_umask(states / name)
        tmp = states / "latest.tmp"
        tmp.write_text(name)
        os.replace(tmp, states / "latest")
        for old in sorted(p for p in states.glob("step_*") if p.is_dir())[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


class NonFiniteError(ValueError):
    """A NaN or infinite loss or weight: the run stops instead of exporting a broken model."""


class ResumeError(ValueError):
    """A resume state that cannot be trusted (damaged, foreign, or outside the run directory)."""


def _finite_everywhere(accelerator, loss: torch.Tensor) -> bool:
    """True when every process's loss is finite, so all processes skip or stop together."""
    finite = torch.isfinite(loss.detach()).float().reshape(1)
    return bool(accelerator.gather(finite).min() > 0) if accelerator.num_processes > 1 else bool(finite)


def _nonfinite_loss(config: RunConfig, state: TrainerState, output, batch, song_of_index: dict, out: Path) -> None:
    """Stop with the batch's songs named, or count a skipped batch (train.nonfinite_loss=skip)."""
    tc = config.train
    songs = sorted({song_of_index.get(int(i), str(int(i))) for i in batch["song_ids"].tolist()})
    parts = {k: float(getattr(output, k).detach()) for k in LOSS_KEYS if getattr(output, k) is not None}
    where = (f"epoch {state.epoch + 1}, batch {state.batches_done + 1} (step {state.global_step}); songs "
             f"{', '.join(songs[:8])}{' ...' if len(songs) > 8 else ''}")
    losses = ", ".join(f"{k} {v}" for k, v in parts.items())
    if tc.nonfinite_loss == "skip" and state.skipped_steps < tc.max_skipped_steps:
        state.skipped_steps += 1
        logger.warning("skipped a batch with a non-finite loss (%s) at %s [%d of at most %d]", losses, where,
                       state.skipped_steps, tc.max_skipped_steps)
        return
    latest = out / "states" / "latest"
    kept = f"the last good resume state is states/{latest.read_text().strip()}" if latest.is_file() else \
        "no resume state was saved yet"
    advice = ("more than train.max_skipped_steps batches were skipped" if tc.nonfinite_loss == "skip" else
              "to skip such batches instead, set train.nonfinite_loss=skip")
    raise NonFiniteError(f"non-finite loss ({losses}) at {where}. Nothing was exported from it and {kept}. "
                         f"Check the data (`alcap data validate`, `alcap store info`) or lower train.lr; {advice}")


CHECKSUMS_FILE = "checksums.json"


def write_checksums(state_dir: Path) -> None:
    """Size and sha256 of every file of a resume state, checked before the state is loaded."""
    sums = {p.name: {"bytes": p.stat().st_size, "sha256": file_sha256(p)}
            for p in sorted(state_dir.iterdir()) if p.is_file() and p.name != CHECKSUMS_FILE}
    (state_dir / CHECKSUMS_FILE).write_text(json.dumps(sums, indent=1) + "\n", encoding="utf-8")


def state_problem(state_dir: Path) -> str | None:
    """Why a resume state must not be loaded (a file missing, truncated or changed), or None."""
    try:
        sums = json.loads((state_dir / CHECKSUMS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {CHECKSUMS_FILE} (an incomplete save, or a state from an older alcap)"
    except (OSError, ValueError) as exc:
        return f"{CHECKSUMS_FILE} unreadable ({exc})"
    if "trainer_state.json" not in sums:
        return "no trainer_state.json"
    for name, expected in sums.items():
        path = state_dir / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["bytes"]:
            return f"{name} has {path.stat().st_size} bytes, {expected['bytes']} were written (truncated?)"
        if file_sha256(path) != expected["sha256"]:
            return f"{name} differs from what was written (sha256 mismatch)"
    return None


def resume_state_dir(states: Path) -> Path:
    """The state to resume from: the one `states/latest` names, verified; when it is damaged,
    the newest older state that verifies, with a warning. `latest` may only name a
    `step_N` folder inside `states/`."""
    import re

    name = (states / "latest").read_text(encoding="utf-8").strip()
    if not re.fullmatch(r"step_\d+", name) or not (states / name).is_dir():
        raise ResumeError(f"{states / 'latest'}: names {name!r}, which is not a resume state in {states} "
                          "(expected step_N); the run directory was edited or damaged")
    candidates = [states / name] + sorted((p for p in states.glob("step_*") if p.is_dir() and p.name < name),
                                          reverse=True)
    problems = []
    for candidate in candidates:
        problem = state_problem(candidate)
        if problem is None:
            if problems:
                logger.warning("resume state %s is damaged (%s); resuming from the older %s instead",
                               states / name, problems[0], candidate.name)
            return candidate
        problems.append(problem)
    raise ResumeError(f"{states / name}: damaged resume state ({problems[0]}) and no older complete state to "
                      "fall back to; delete the run directory to start again, or train into another --output-dir")
