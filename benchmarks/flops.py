"""Achieved FLOP/s of alcap's training step as a fraction of this machine's measured matmul
peak (float32 GEMM on all CPU threads; on a GPU, the GEMM in the step's precision): how close
training runs to the physical limit here.

FLOPs are counted by PyTorch's FlopCounterMode (matmuls and attention, forward + backward) on
the same length-grouped, dynamically padded batches that are then timed. Also reported: the
FLOPs per row of the original's data path (everything padded to 512 + 512), i.e. how much of
its compute went into padding.

    python benchmarks/flops.py [--quick] [--preset bart-base|small] [--steps N] [--device cuda --bf16]
        [--compile [--compile-mode reduce-overhead] [--pad-to-multiple-of 64]]

With --compile the step runs through torch.compile (dynamic shapes, as train.compile); each
timed batch is run once untimed first, whose extra time is reported as the compile time. The
FLOPs are counted on the uncompiled model, for the batches as padded.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, report  # noqa: E402
from training import add_bart_vocab_arg, build_model, naive_batches, ours_batches, run_steps, synthetic_rows  # noqa: E402
from alcap.utils import reuse_freed_memory  # noqa: E402


def matmul_peak(n: int, repeats: int = 5, device: str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of the fastest of `repeats` n x n matrix products (random data: zeros run faster)."""
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    torch.mm(a, b)
    return 2 * n ** 3 / best_of(lambda: torch.mm(a, b), repeats, device)


def step_flops(model, batch, device: str = "cpu", full_logits: bool = False) -> int:
    """FLOPs of one training step's forward and backward (the optimiser update is negligible):
    alcap's (the loss on labelled positions, the LM head recomputed in the backward pass), or
    with `full_logits` the original's (HF's loss over every position)."""
    batch = {k: v.to(device) for k, v in batch.items()}
    with FlopCounterMode(display=False) as counter:
        model(**batch, return_logits=full_logits).loss.backward()
    model.zero_grad()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="`small` preset, 4 steps (about a minute)")
    parser.add_argument("--preset", default=None, help="backbone preset (default: small with --quick, else bart-base)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default: 4 quick, 2 full)")
    parser.add_argument("--batch-size", type=int, default=26)
    parser.add_argument("--matmul-size", type=int, default=None,
                        help="side of the square GEMM of the peak (default: 2048 on CPU, 8192 on a GPU)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument("--bf16", action="store_true",
                        help="bfloat16 autocast (GPU), as train.mixed_precision: bf16; the peak is then a bf16 GEMM")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model, as train.compile: true")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. reduce-overhead (CUDA graphs)")
    parser.add_argument("--pad-to-multiple-of", type=int, default=None, metavar="N",
                        help="batches padded to multiples of N tokens (data.pad_to_multiple_of; e.g. 64)")
    add_bart_vocab_arg(parser)
    args = parser.parse_args()
    reuse_freed_memory()  # as `alcap train` does, for both sides
    preset = args.preset or ("small" if args.quick else "bart-base")
    steps = args.steps or (4 if args.quick else 2)
    on_gpu = torch.device(args.device).type == "cuda"
    size = args.matmul_size or (8192 if on_gpu else 2048)
    dtype = torch.bfloat16 if args.bf16 else torch.float32
    rows = synthetic_rows(args.batch_size * 60)
    model, tokenizer = build_model(preset, rows, bart_vocab=args.bart_vocab)
    vocab = model.bart.get_input_embeddings().num_embeddings
    model.to(args.device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batches = ours_batches(rows, tokenizer, args.batch_size, steps, args.pad_to_multiple_of)
    naive = naive_batches(rows, tokenizer, args.batch_size, 1)[0]

    peak = matmul_peak(size, repeats=20 if on_gpu else 5, device=args.device, dtype=dtype)
    flops = sum(step_flops(model, b, args.device) for b in batches)
    per_row_naive = step_flops(model, naive, args.device, full_logits=True) / naive["input_ids"].shape[0]
    per_row_ours = flops / sum(b["input_ids"].shape[0] for b in batches)
    device = {"device": args.device, "autocast": dtype if args.bf16 else None}
    run_steps(model, optimizer, [naive], full_logits=True, **device)  # warm-up, the largest batch first (allocator)
    compile_seconds = None
    if args.compile:
        model = torch.compile(model, dynamic=True, mode=args.compile_mode)
        compile_seconds = run_steps(model, optimizer, batches, **device)[0]  # compiles each shape
    run_steps(model, optimizer, batches[:1], **device)
    seconds, _, _ = run_steps(model, optimizer, batches, **device)
    achieved = flops / seconds
    precision = "bf16" if args.bf16 else "float32"
    if args.compile:
        compile_seconds = round(compile_seconds - seconds, 1)
        precision += f", torch.compile ({args.compile_mode or 'default'} mode; compiling took {compile_seconds:.1f} s more)"
    if args.pad_to_multiple_of:
        precision += f", lengths in buckets of {args.pad_to_multiple_of}"
    peak_name = "bf16" if args.bf16 else "float32"
    report("flops", achieved / 1e9, peak / 1e9, "GFLOP/s",
           f"training step, {preset}, {args.device} {precision}, batch {args.batch_size}, {steps} steps: "
           f"{achieved / 1e9:.1f} GFLOP/s achieved vs {peak / 1e9:.1f} GFLOP/s {peak_name} matmul peak = "
           f"{achieved / peak:.0%} of peak; {per_row_ours / 1e9:.1f} GFLOP per row vs {per_row_naive / 1e9:.1f} padded "
           f"to 512+512 ({1 - per_row_ours / per_row_naive:.0%} of the naive path's compute is padding): "
           f"{achieved / peak:.2f}x",
           preset=preset, vocab=vocab, device=args.device, precision=precision, steps=steps, batch_size=args.batch_size,
           gflop_per_row_ours=round(per_row_ours / 1e9, 2), gflop_per_row_naive=round(per_row_naive / 1e9, 2),
           matmul_size=size, compile_seconds=compile_seconds, pad_to_multiple_of=args.pad_to_multiple_of)


if __name__ == "__main__":
    main()
