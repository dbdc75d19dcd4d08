"""The real `alcap train` loop vs the bare training step it runs.

`train_throughput.py` times pre-collated batches with AdamW. This runs `alcap.train.loop.train`
itself, as a user does: the manifest and embedding store on disk, its DataLoader and collator
in the main process (data.num_workers 0, the default), Adafactor as the paper's configs, its
logging every step, and compares its rows/s with the bare step (forward, backward, update of
the same model size on batches collated beforehand) with Adafactor and with AdamW.

Every row has the same lengths (lyrics 512 tokens, the cap most SI lyrics reach; captions 100,
SI's median), so every batch has one shape and the two sides do the same work whatever rows
they draw. The loop's rate is marginal: (N2 - N1) steps over the time of an N2-step run minus
an N1-step run, so its start-up (model building, the export at the end) cancels out. Both
sides alternate, the same number of runs each.

    python benchmarks/train_loop.py [--quick] [--preset small] [--steps 8] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_and_spread, report  # noqa: E402
from training import build_model, row, run_steps, vocabulary, write_data  # noqa: E402

from alcap.data.dataset import CaptionCollator  # noqa: E402
from alcap.utils import reuse_freed_memory  # noqa: E402


def loop_seconds(root: Path, manifest: Path, store: Path, preset: str, fusion_layers: list[int], batch_size: int,
                 steps: int, run: int) -> float:
    from alcap.config import load_config
    from alcap.train.loop import train

    sets = [f"data.manifest={manifest}", f"data.embeddings={store}", f"model.backbone={preset}",
            "model.tokenizer_vocab_size=1000", "data.max_lyrics_tokens=512", "data.max_caption_tokens=512",
            f"train.batch_size={batch_size}", f"train.max_steps={steps}", "train.epochs=1000",
            "train.eval_every_epochs=1000", "train.eval_generate=false", "train.log_every_steps=1",
            f"model.alcap.fusion_layers={list(fusion_layers)}", "data.val_split=none",
            f"output_dir={root / f'run-{run}-{steps}'}"]
    start = time.perf_counter()
    train(load_config(None, sets), progress=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny preset, batch 4, 2 and 4 steps")
    parser.add_argument("--preset", default=None, help="backbone preset (default: small; tiny with --quick)")
    parser.add_argument("--batch-size", type=int, default=None, help="rows per step (default: 26; 4 with --quick)")
    parser.add_argument("--steps", type=int, default=None, help="steps of the longer loop run (default: 8; 4 quick)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each side, alternating (default: 2)")
    args = parser.parse_args()
    reuse_freed_memory()  # as `alcap train` does, for both sides
    preset = args.preset or ("tiny" if args.quick else "small")
    batch = args.batch_size or (4 if args.quick else 26)
    long_run = args.steps or (4 if args.quick else 8)
    short_run = long_run // 2
    rng = np.random.default_rng(0)
    rows = [row(i, rng, vocabulary(), 512, 100) for i in range(batch * (long_run + 1))]
    model, tokenizer = build_model(preset, rows)
    collate = CaptionCollator(tokenizer, 512, 512)
    batches = [collate(rows[i * batch:(i + 1) * batch]) for i in range(short_run)]
    optimizers = {"adafactor": None, "adamw": torch.optim.AdamW(model.parameters(), lr=1e-5)}
    from transformers.optimization import Adafactor

    optimizers["adafactor"] = Adafactor(model.parameters(), lr=1e-5, relative_step=False, warmup_init=False)
    run_steps(model, optimizers["adamw"], batches[:1])  # warm-up
    rates: dict[str, list[float]] = {"loop": [], "adafactor": [], "adamw": []}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        manifest, store = write_data(tmp, rows)
        for repeat in range(args.repeats):
            for side in (("loop", "adafactor", "adamw") if repeat % 2 == 0 else ("adamw", "adafactor", "loop")):
                if side == "loop":
                    layers = model.config.fusion_layers  # the bare step's model's
                    t_long = loop_seconds(tmp, manifest, store, preset, layers, batch, long_run, repeat)
                    t_short = loop_seconds(tmp, manifest, store, preset, layers, batch, short_run, repeat)
                    rates["loop"].append((long_run - short_run) * batch / (t_long - t_short))
                else:
                    seconds, n, _ = run_steps(model, optimizers[side], batches)
                    rates[side].append(n / seconds)
                print(f"{side}: {rates[side][-1]:.2f} rows/s", file=sys.stderr, flush=True)
    best, spread = best_and_spread(rates)
    report("train_loop", best["loop"], best["adafactor"], "rows/s",
           f"alcap train's loop, {preset}, batch {batch}, lyrics 512 + captions 100 tokens, Adafactor: "
           f"{best['loop']:.2f} rows/s vs the bare step with Adafactor {best['adafactor']:.2f} rows/s: "
           f"{best['loop'] / best['adafactor']:.2f}x (the bare step with AdamW: {best['adamw']:.2f} rows/s; ranges over "
           f"{args.repeats} runs: {spread})", preset=preset, batch_size=batch, runs=rates,
           adamw=round(best["adamw"], 3), loop_steps=[short_run, long_run])


if __name__ == "__main__":
    main()
