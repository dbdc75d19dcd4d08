"""Peak memory (RSS) of a training step at batch 26: alcap's data path (length-grouped batches,
dynamic padding) vs the original's (every lyric and caption padded to 512 tokens).

alcap's steps vary in size, so two of its batches are measured: a typical one (the median
padded size of an epoch) and the largest of the epoch, which sets the peak of a whole run and
is the headline number. Each measurement runs (twice, keeping the lower peak) in a fresh process (peak RSS is a per-process
high-water mark): model and AdamW are built, one step creates the optimiser state, then the
measured step runs. Lower is better (ratio < 1).

    python benchmarks/memory.py [--quick] [--preset bart-base|small] [--bart-vocab] [--gradient-checkpointing]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import psutil
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402
from training import (  # noqa: E402
    MAX_TOKENS, add_bart_vocab_arg, build_model, naive_batches, ours_batches, padded_tokens, run_steps, synthetic_rows, token_lengths,
)

from alcap.data.dataset import CaptionCollator, LengthGroupedSampler  # noqa: E402
from alcap.train.loop import enable_gradient_checkpointing  # noqa: E402
from alcap.utils import reuse_freed_memory  # noqa: E402

MIB = 1024 * 1024


def measure(path: str, preset: str, batch_size: int, bart_vocab: bool = False, checkpointing: bool = False) -> dict:
    """In this (fresh) process: MiB resident after set-up and at the peak of the training step
    (alcap's for its batches: the loss on labelled positions only; HF's full-logits loss for the
    naive path, as the original computed it). Freed memory is kept for reuse, as `alcap train`
    keeps it, in every process alike."""
    reuse_freed_memory()
    rows = synthetic_rows(batch_size * 60)
    model, tokenizer = build_model(preset, rows, bart_vocab=bart_vocab)
    if checkpointing and path in ("typical", "largest"):  # alcap's step only; the baselines are HF's as it is
        enable_gradient_checkpointing(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    # Every process prepares all three batches, so they differ only in the step they run.
    batches = {"naive": naive_batches(rows, tokenizer, batch_size, 1)[0],
               "typical": ours_batches(rows, tokenizer, batch_size, 1)[0],  # the median batch by size
               "largest": largest_batch(rows, tokenizer, batch_size)}
    batches["largest-hf-loss"] = batches["largest"]  # the same batch, HF's loss over full logits
    batch = batches[path]
    small = {k: v[:1] for k, v in batch.items()}
    full_logits = path in ("naive", "largest-hf-loss")
    run_steps(model, optimizer, [small], full_logits=full_logits)  # the optimiser's state exists from the first step on
    resting = psutil.Process().memory_info().rss / MIB
    run_steps(model, optimizer, [batch], full_logits=full_logits)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"resting_mib": resting, "peak_mib": peak, "padded_tokens_per_row": padded_tokens(batch) / batch_size}


def largest_batch(rows: list[dict], tokenizer, batch_size: int) -> dict:
    lengths = token_lengths(rows, tokenizer)
    batches = [b for b in LengthGroupedSampler(lengths, batch_size, seed=0).batches() if len(b) == batch_size]
    return CaptionCollator(tokenizer, MAX_TOKENS, MAX_TOKENS)([rows[i] for i in max(
        batches, key=lambda b: lengths[b].max(axis=0).sum())])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="`small` preset (well under a minute)")
    parser.add_argument("--preset", default=None, help="backbone preset (default: small with --quick, else bart-base)")
    parser.add_argument("--batch-size", type=int, default=26)
    parser.add_argument("--repeats", type=int, default=2,
                        help="fresh processes per measurement; the lowest peak is kept (RSS varies ~10%% run to run)")
    parser.add_argument("--child", choices=["typical", "largest", "largest-hf-loss", "naive"], help=argparse.SUPPRESS)
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="alcap's step with train.gradient_checkpointing (layers recomputed in the backward pass)")
    add_bart_vocab_arg(parser)
    args = parser.parse_args()
    preset = args.preset or ("small" if args.quick else "bart-base")
    if args.child:
        print(json.dumps(measure(args.child, preset, args.batch_size, args.bart_vocab, args.gradient_checkpointing)))
        return
    result = {}
    for path in ("typical", "largest", "largest-hf-loss", "naive"):
        runs = []
        for _ in range(args.repeats):
            done = subprocess.run([sys.executable, __file__, "--child", path, "--preset", preset,
                                   "--batch-size", str(args.batch_size)] + (["--bart-vocab"] if args.bart_vocab else [])
                                  + (["--gradient-checkpointing"] if args.gradient_checkpointing else []),
                                  capture_output=True, text=True, check=True)
            runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        result[path] = min(runs, key=lambda r: r["peak_mib"])
    step = {k: v["peak_mib"] - v["resting_mib"] for k, v in result.items()}
    pad = {k: v["padded_tokens_per_row"] for k, v in result.items()}
    largest, naive, typical = result["largest"]["peak_mib"], result["naive"]["peak_mib"], result["typical"]["peak_mib"]
    same = result["largest-hf-loss"]["peak_mib"]
    report("memory", largest, naive, "MiB peak RSS (lower is better)",
           f"peak RSS of a training step, {preset}, batch {args.batch_size}"
           f"{', alcap with gradient checkpointing' if args.gradient_checkpointing else ''}: alcap's largest batch of an epoch "
           f"({pad['largest']:.0f} padded tokens per row) {largest:.0f} MiB (+{step['largest']:.0f} MiB over model and "
           f"optimiser), its typical batch ({pad['typical']:.0f} tokens) {typical:.0f} MiB (+{step['typical']:.0f} MiB) "
           f"vs padding to 512+512 {naive:.0f} MiB (+{step['naive']:.0f} MiB): {largest / naive:.2f}x; the largest "
           f"batch with HF's full-logits loss {same:.0f} MiB: {largest / same:.2f}x",
           preset=preset, batch_size=args.batch_size, bart_vocab=args.bart_vocab, lower_is_better=True,
           gradient_checkpointing=args.gradient_checkpointing,
           same_batch_hf_loss_mib=round(same, 1), vs_same_batch_hf_loss=round(largest / same, 3), typical_mib=round(typical, 1),
           step_mib_largest=round(step["largest"], 1), step_mib_typical=round(step["typical"], 1),
           step_mib_baseline=round(step["naive"], 1), resting_mib=round(result["naive"]["resting_mib"], 1))


if __name__ == "__main__":
    main()
