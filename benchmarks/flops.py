"""Achieved FLOP/s of alcap's training step as a fraction of this machine's measured matmul
peak (float32 GEMM on all threads): how close training runs to the physical limit here.

FLOPs are counted by PyTorch's FlopCounterMode (matmuls and attention, forward + backward) on
the same length-grouped, dynamically padded batches that are then timed. Also reported: the
FLOPs per row of the original's data path (everything padded to 512 + 512), i.e. how much of
its compute went into padding.

    python benchmarks/flops.py [--quick] [--preset bart-base|small] [--steps N]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, report  # noqa: E402
from training import build_model, naive_batches, ours_batches, run_steps, synthetic_rows  # noqa: E402


def matmul_peak(n: int, repeats: int = 5) -> float:
    """FLOP/s of the fastest of `repeats` n x n float32 matrix products."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    return 2 * n ** 3 / best_of(lambda: torch.mm(a, b), repeats)


def step_flops(model, batch) -> int:
    """FLOPs of one training step's forward and backward (the optimiser update is negligible)."""
    with FlopCounterMode(display=False) as counter:
        model(**batch).loss.backward()
    model.zero_grad()
    return counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="`small` preset, 4 steps (about a minute)")
    parser.add_argument("--preset", default=None, help="backbone preset (default: small with --quick, else bart-base)")
    parser.add_argument("--steps", type=int, default=None, help="timed training steps (default: 4 quick, 2 full)")
    parser.add_argument("--batch-size", type=int, default=26)
    parser.add_argument("--matmul-size", type=int, default=2048, help="side of the square GEMM of the peak (default: 2048)")
    args = parser.parse_args()
    preset = args.preset or ("small" if args.quick else "bart-base")
    steps = args.steps or (4 if args.quick else 2)
    rows = synthetic_rows(args.batch_size * 60)
    model, tokenizer = build_model(preset, rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    batches = ours_batches(rows, tokenizer, args.batch_size, steps)
    naive = naive_batches(rows, tokenizer, args.batch_size, 1)[0]

    peak = matmul_peak(args.matmul_size)
    flops = sum(step_flops(model, b) for b in batches)
    per_row_naive = step_flops(model, naive) / naive["input_ids"].shape[0]
    per_row_ours = flops / sum(b["input_ids"].shape[0] for b in batches)
    run_steps(model, optimizer, batches[:1])  # warm-up
    seconds, _, _ = run_steps(model, optimizer, batches)
    achieved = flops / seconds
    report("flops", achieved / 1e9, peak / 1e9, "GFLOP/s",
           f"training step, {preset}, batch {args.batch_size}, {steps} steps: {achieved / 1e9:.1f} GFLOP/s achieved "
           f"vs {peak / 1e9:.1f} GFLOP/s float32 matmul peak = {achieved / peak:.0%} of peak; "
           f"{per_row_ours / 1e9:.1f} GFLOP per row vs {per_row_naive / 1e9:.1f} padded to 512+512 "
           f"({1 - per_row_ours / per_row_naive:.0%} of the naive path's compute is padding): {achieved / peak:.2f}x",
           preset=preset, steps=steps, batch_size=args.batch_size, gflop_per_row_ours=round(per_row_ours / 1e9, 2),
           gflop_per_row_naive=round(per_row_naive / 1e9, 2), matmul_size=args.matmul_size)


if __name__ == "__main__":
    main()
