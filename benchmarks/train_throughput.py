"""Training throughput: alcap's data path (length-grouped batches + dynamic padding) vs the
original's naive one (random batches, every lyric and every caption padded to 512 tokens).

Same model (ALCAP, random init, `bart-base` dimensions by default), batch 26, AdamW steps
(forward, backward, update), on synthetic rows whose lengths follow SI-like distributions:
lyrics often at the 512-token cap, captions long-tailed (median ~100 tokens, max 512).

    python benchmarks/train_throughput.py [--quick] [--preset bart-base|small] [--steps N]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

from alcap.data.dataset import CaptionCollator, LengthGroupedSampler  # noqa: E402
from alcap.model.backbone import load_backbone  # noqa: E402
from alcap.model.captioner import AlcapConfig, AlcapModel  # noqa: E402

MAX_TOKENS = 512


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Lyrics: 60% at or past the cap, the rest 100-400 words; captions: log-normal, median ~100."""
    rng = np.random.default_rng(seed)
    words = [f"w{i}" for i in range(300)]
    rows = []
    for i in range(n):
        n_lyrics = int(rng.integers(480, 700)) if rng.random() < 0.6 else int(rng.integers(100, 400))
        n_caption = int(np.clip(rng.lognormal(np.log(100), 0.7), 10, MAX_TOKENS - 2))
        rows.append({"song_id": f"s{i // 3}", "song_index": i // 3, "lyrics": " ".join(rng.choice(words, n_lyrics)),
                     "caption": " ".join(rng.choice(words, n_caption)),
                     "music": rng.standard_normal((119, 256)).astype(np.float16)})
    return rows


class PadToMax(CaptionCollator):
    """The naive data path: every batch padded to the maximum lengths."""

    def __call__(self, items):
        lyr = self.tokenizer([it["lyrics"] for it in items], padding="max_length", truncation=True,
                             max_length=self.max_lyrics_tokens, return_tensors="pt")
        cap = self.tokenizer([it["caption"] for it in items], padding="max_length", truncation=True,
                             max_length=self.max_caption_tokens, return_tensors="pt")
        labels = cap["input_ids"].masked_fill(cap["attention_mask"] == 0, -100)
        music = torch.from_numpy(np.stack([it["music"] for it in items]).astype(np.float32))
        return {"input_ids": lyr["input_ids"], "attention_mask": lyr["attention_mask"], "labels": labels,
                "music": music, "music_mask": torch.ones(music.shape[:2], dtype=torch.long),
                "song_ids": torch.tensor([it["song_index"] for it in items])}


def run_steps(model, optimizer, batches) -> tuple[float, int, int]:
    """Seconds for the training steps, rows and real (non-padding) tokens processed."""
    rows = tokens = 0
    start = time.perf_counter()
    for batch in batches:
        output = model(**batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        rows += batch["input_ids"].shape[0]
        tokens += int(batch["attention_mask"].sum() + (batch["labels"] != -100).sum())
    return time.perf_counter() - start, rows, tokens


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="`small` preset, 6 steps each (about a minute)")
    parser.add_argument("--preset", default=None, help="backbone preset (default: small with --quick, else bart-base)")
    parser.add_argument("--steps", type=int, default=None, help="training steps per data path (default: 6 quick, 4 full)")
    parser.add_argument("--batch-size", type=int, default=26)
    args = parser.parse_args()
    preset = args.preset or ("small" if args.quick else "bart-base")
    steps = args.steps or (6 if args.quick else 4)
    rows = synthetic_rows(args.batch_size * 60)
    torch.manual_seed(0)
    bart, tokenizer = load_backbone(preset, [r["lyrics"] for r in rows[:200]] + [r["caption"] for r in rows[:200]],
                                    vocab_size=1000)
    model = AlcapModel(AlcapConfig(fusion_layers=[bart.config.encoder_layers - 2, bart.config.encoder_layers - 1]),
                       bart).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)

    dynamic = CaptionCollator(tokenizer, MAX_TOKENS, MAX_TOKENS)
    sampler = LengthGroupedSampler([len(r["lyrics"]) + len(r["caption"]) for r in rows], args.batch_size, seed=0)
    ours_batches = [dynamic([rows[i] for i in b]) for b in sampler.batches()[:steps]]
    naive = PadToMax(tokenizer, MAX_TOKENS, MAX_TOKENS)
    order = np.random.default_rng(0).permutation(len(rows))
    naive_batches = [naive([rows[i] for i in order[k * args.batch_size:(k + 1) * args.batch_size]]) for k in range(steps)]

    run_steps(model, optimizer, ours_batches[:1])  # warm-up
    t_ours, rows_ours, tokens_ours = run_steps(model, optimizer, ours_batches)
    t_naive, rows_naive, tokens_naive = run_steps(model, optimizer, naive_batches)
    ours, baseline = rows_ours / t_ours, rows_naive / t_naive
    padded_ours = np.mean([b["input_ids"].shape[1] + b["labels"].shape[1] for b in ours_batches])
    report("train_throughput", ours, baseline, "rows/s",
           f"training steps, {preset}, batch {args.batch_size}, {steps} steps each: length-grouped dynamic padding "
           f"{ours:.2f} rows/s ({tokens_ours / t_ours:.0f} real tokens/s, mean padded length {padded_ours:.0f}) vs "
           f"padding to 512+512 {baseline:.2f} rows/s ({tokens_naive / t_naive:.0f} real tokens/s): {ours / baseline:.2f}x",
           preset=preset, steps=steps, batch_size=args.batch_size, tokens_per_s_ours=round(tokens_ours / t_ours, 1),
           tokens_per_s_baseline=round(tokens_naive / t_naive, 1))


if __name__ == "__main__":
    main()
