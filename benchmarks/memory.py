"""Peak memory (RSS) of training steps at batch 26: alcap's data path (length-grouped batches,
dynamic padding) vs the original's (every lyric and caption padded to 512 tokens).

Each data path runs in a fresh process (peak RSS is a per-process high-water mark): the model
and AdamW are built, then the same number of steps run; reported are the peak RSS and how
far the steps raised it above the resting model + optimiser. Lower is better (ratio < 1).

    python benchmarks/memory.py [--quick] [--preset bart-base|small] [--steps N]
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
from training import build_model, naive_batches, ours_batches, run_steps, synthetic_rows  # noqa: E402

MIB = 1024 * 1024


def measure(path: str, preset: str, steps: int, batch_size: int) -> dict:
    """In this (fresh) process: MiB resident after set-up and at the peak of the training steps."""
    rows = synthetic_rows(batch_size * 60)
    model, tokenizer = build_model(preset, rows)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    make = ours_batches if path == "ours" else naive_batches
    batches = make(rows, tokenizer, batch_size, steps)
    run_steps(model, optimizer, batches[:1])  # the optimiser's state exists from the first step on
    resting = psutil.Process().memory_info().rss / MIB
    run_steps(model, optimizer, batches)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"resting_mib": resting, "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="`small` preset, 3 steps (well under a minute)")
    parser.add_argument("--preset", default=None, help="backbone preset (default: small with --quick, else bart-base)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per data path (default: 3 quick, 2 full)")
    parser.add_argument("--batch-size", type=int, default=26)
    parser.add_argument("--child", choices=["ours", "naive"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    preset = args.preset or ("small" if args.quick else "bart-base")
    steps = args.steps or (3 if args.quick else 2)
    if args.child:
        print(json.dumps(measure(args.child, preset, steps, args.batch_size)))
        return
    result = {}
    for path in ("ours", "naive"):
        done = subprocess.run([sys.executable, __file__, "--child", path, "--preset", preset, "--steps", str(steps),
                               "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
        result[path] = json.loads(done.stdout.strip().splitlines()[-1])
    ours, naive = result["ours"], result["naive"]
    growth = {k: v["peak_mib"] - v["resting_mib"] for k, v in result.items()}
    report("memory", ours["peak_mib"], naive["peak_mib"], "MiB peak RSS (lower is better)",
           f"peak RSS of {steps} training steps, {preset}, batch {args.batch_size}: length-grouped dynamic padding "
           f"{ours['peak_mib']:.0f} MiB (+{growth['ours']:.0f} MiB over model and optimiser) vs padding to 512+512 "
           f"{naive['peak_mib']:.0f} MiB (+{growth['naive']:.0f} MiB): {ours['peak_mib'] / naive['peak_mib']:.2f}x",
           preset=preset, steps=steps, batch_size=args.batch_size, lower_is_better=True,
           step_mib_ours=round(growth["ours"], 1), step_mib_baseline=round(growth["naive"], 1),
           resting_mib=round(ours["resting_mib"], 1))


if __name__ == "__main__":
    main()
