"""Training throughput: alcap's data path (length-grouped batches + dynamic padding) vs the
original's naive one (random batches, every lyric and every caption padded to 512 tokens).

Same model (ALCAP, random init, `bart-base` dimensions by default), batch 26, AdamW steps
(forward, backward, update), on synthetic rows whose lengths follow SI-like distributions:
lyrics often at the 512-token cap, captions long-tailed (median ~100 tokens, max 512).

    python benchmarks/train_throughput.py [--quick] [--preset bart-base|small] [--steps N] [--bart-vocab]
        [--device cuda --bf16 --compile [--compile-mode reduce-overhead] [--pad-to-multiple-of 64]]

With --compile, every timed batch is first run once untimed (that pass compiles each shape);
its extra time over the timed pass is reported as the compile time. --pad-to-multiple-of
rounds alcap's lengths up to buckets (data.pad_to_multiple_of), so a compiled step meets a
few shapes, each compiled once and, with --compile-mode reduce-overhead, replayed as a CUDA graph.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402
from training import MAX_TOKENS, add_bart_vocab_arg, build_model, epoch_padding, naive_batches, ours_batches, padded_tokens, run_steps, synthetic_rows  # noqa: E402

from alcap.train.loop import enable_gradient_checkpointing  # noqa: E402
from alcap.utils import reuse_freed_memory  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="`small` preset, 6 steps each (about a minute)")
    parser.add_argument("--preset", default=None, help="backbone preset (default: small with --quick, else bart-base)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per data path (default: 6 quick, 4 full)")
    parser.add_argument("--batch-size", type=int, default=26)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU), as train.mixed_precision: bf16")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model with dynamic shapes, as train.compile: true; every timed batch "
                             "is run once untimed first, so compilation stays out of the numbers")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode with --compile (e.g. reduce-overhead: "
                        "CUDA graphs; max-autotune)")
    parser.add_argument("--pad-to-multiple-of", type=int, default=None, metavar="N",
                        help="alcap's batches padded to multiples of N tokens (data.pad_to_multiple_of; e.g. 64)")
    parser.add_argument("--gradient-checkpointing", action="store_true",
                        help="alcap's steps with train.gradient_checkpointing (the padded baseline without)")
    add_bart_vocab_arg(parser)
    args = parser.parse_args()
    reuse_freed_memory()  # as `alcap train` does, for both sides
    preset = args.preset or ("small" if args.quick else "bart-base")
    steps = args.steps or (6 if args.quick else 4)
    rows = synthetic_rows(args.batch_size * 60)
    model, tokenizer = build_model(preset, rows, bart_vocab=args.bart_vocab)
    vocab = model.bart.get_input_embeddings().num_embeddings
    model.to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    ours_b = ours_batches(rows, tokenizer, args.batch_size, steps, args.pad_to_multiple_of)
    naive_b = naive_batches(rows, tokenizer, args.batch_size, steps)

    device = {"device": args.device, "autocast": torch.bfloat16 if args.bf16 else None}
    compile_seconds = None
    if args.compile:
        model = torch.compile(model, dynamic=True, mode=args.compile_mode)
        compile_seconds = run_steps(model, optimizer, ours_b, **device)[0]  # compiles each shape
    run_steps(model, optimizer, naive_b[:1], full_logits=True, **device)  # the naive batches share one shape
    # Warm-up, the largest batch first: the allocator reaches a run's high-water mark, as a real
    # run's does after its first long batches; every timed alcap batch is still a new shape.
    run_steps(model, optimizer, naive_b[:1], full_logits=True, **device)
    run_steps(model, optimizer, ours_b[:1], **device)
    if args.gradient_checkpointing:
        enable_gradient_checkpointing(model)
    t_ours, rows_ours, tokens_ours = run_steps(model, optimizer, ours_b, **device)
    if compile_seconds is not None:
        compile_seconds = round(compile_seconds - t_ours, 1)
    if args.gradient_checkpointing:
        model.bart.activation_checkpointing_disable()
    t_naive, rows_naive, tokens_naive = run_steps(model, optimizer, naive_b, full_logits=True, **device)
    ours, baseline = rows_ours / t_ours, rows_naive / t_naive
    padded_ours = np.mean([padded_tokens(b) / b["input_ids"].shape[0] for b in ours_b])
    epoch_padded, epoch_real = epoch_padding(rows, tokenizer, args.batch_size, args.pad_to_multiple_of)
    precision = ("bf16 autocast" if args.bf16 else "float32") + (
        f", torch.compile ({args.compile_mode or 'default'} mode; compiling took {compile_seconds:.1f} s more)"
        if args.compile else "") + (f", lengths in buckets of {args.pad_to_multiple_of}" if args.pad_to_multiple_of else "") + (
        ", alcap with gradient checkpointing" if args.gradient_checkpointing else "")
    report("train_throughput", ours, baseline, "rows/s",
           f"training steps, {preset}, {args.device} {precision}, batch {args.batch_size}, {steps} steps each: length-grouped dynamic padding "
           f"{ours:.2f} rows/s ({tokens_ours / t_ours:.0f} real tokens/s, mean padded length {padded_ours:.0f}) vs "
           f"padding to 512+512 {baseline:.2f} rows/s ({tokens_naive / t_naive:.0f} real tokens/s); over a whole epoch "
           f"rows hold {epoch_real:.0f} real tokens, padded to {epoch_padded:.0f} here vs {2 * MAX_TOKENS}: "
           f"{ours / baseline:.2f}x",
           preset=preset, vocab=vocab, device=args.device, precision=precision, steps=steps, batch_size=args.batch_size,
           compile_seconds=compile_seconds, pad_to_multiple_of=args.pad_to_multiple_of,
           tokens_per_s_ours=round(tokens_ours / t_ours, 1),
           tokens_per_s_baseline=round(tokens_naive / t_naive, 1), padded_tokens_per_row_timed=round(float(padded_ours), 1),
           padded_tokens_per_row_epoch=round(epoch_padded, 1), real_tokens_per_row_epoch=round(epoch_real, 1))


if __name__ == "__main__":
    main()
