"""How cost grows: training-step time vs lyric length (128, 256, 512 tokens) and vs batch size,
and music-embedding extraction time vs number of songs. Prints Markdown tables (the README's
Performance section quotes them) and, last, a JSON line whose ratio is the step-time growth
from 128- to 512-token lyrics (4x the tokens).

Rows have exact token lengths (captions fixed at 128 tokens); ALCAP, random init, AdamW.

    python benchmarks/cost_growth.py [--quick] [--preset small|bart-base] [--out FILE.md]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, machine, report  # noqa: E402
from embed_throughput import write_songs  # noqa: E402
from training import build_model, row, run_steps, synthetic_rows, vocabulary  # noqa: E402

from alcap.audio.extractor import CNNSAExtractor  # noqa: E402
from alcap.data.dataset import CaptionCollator  # noqa: E402
from alcap.data.embed import embed_songs  # noqa: E402

CAPTION_TOKENS = 128


def fixed_batch(tokenizer, batch_size: int, lyrics_tokens: int, seed: int = 0) -> dict:
    """A batch whose every row has exactly `lyrics_tokens` lyrics and CAPTION_TOKENS caption tokens."""
    rng = np.random.default_rng(seed)
    rows = [row(i, rng, vocabulary(), lyrics_tokens, CAPTION_TOKENS) for i in range(batch_size)]
    batch = CaptionCollator(tokenizer, lyrics_tokens, CAPTION_TOKENS)(rows)  # truncated to exactly these lengths
    assert batch["input_ids"].shape[1] == lyrics_tokens and batch["labels"].shape[1] == CAPTION_TOKENS
    return batch


def step_seconds(model, optimizer, batch, repeats: int) -> float:
    run_steps(model, optimizer, [batch])  # warm-up at this shape
    return best_of(lambda: run_steps(model, optimizer, [batch]), repeats)


def table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(str(c) for c in r) + " |" for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer points and one timed repeat (about 2 minutes)")
    parser.add_argument("--preset", default="small",
                        help="backbone preset (default: small; bart-base takes minutes per step on 2 CPU cores)")
    parser.add_argument("--batch-size", type=int, default=26, help="batch of the lyric-length table (default: 26)")
    parser.add_argument("--batch-sizes", type=int, nargs="+", metavar="N",
                        help="batch sizes of the second table (default: 1 8 26 52; 1 8 26 with --quick)")
    parser.add_argument("--song-counts", type=int, nargs="+", metavar="N",
                        help="numbers of songs of the third table (default: 12 24 48; 6 12 24 with --quick)")
    parser.add_argument("--out", metavar="FILE.md", help="also write the tables to this Markdown file")
    args = parser.parse_args()
    repeats = 1 if args.quick else 2
    batch_sizes = args.batch_sizes or ([1, 8, 26] if args.quick else [1, 8, 26, 52])
    song_counts = args.song_counts or ([6, 12, 24] if args.quick else [12, 24, 48])

    model, tokenizer = build_model(args.preset, synthetic_rows(300))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    by_length = {}
    for tokens in (128, 256, 512):
        by_length[tokens] = step_seconds(model, optimizer, fixed_batch(tokenizer, args.batch_size, tokens), repeats)
    by_batch = {}
    for size in batch_sizes:
        by_batch[size] = step_seconds(model, optimizer, fixed_batch(tokenizer, size, 512), repeats)
    extractor = CNNSAExtractor.random_init(0, device="cpu")
    by_songs = {}
    with tempfile.TemporaryDirectory() as tmp:
        songs = write_songs(Path(tmp), max(song_counts))
        embed_songs(dict(list(songs.items())[:2]), extractor, Path(tmp) / "warm", workers=0, progress=False)
        for n in song_counts:
            start = time.perf_counter()
            embed_songs(dict(list(songs.items())[:n]), extractor, Path(tmp) / f"store{n}", progress=False)
            by_songs[n] = time.perf_counter() - start

    base = by_length[128]
    tables = "\n\n".join([
        f"Training step ({args.preset}, batch {args.batch_size}, captions {CAPTION_TOKENS} tokens) vs lyric length:\n\n"
        + table(["lyric tokens", "s/step", "rows/s", "vs 128"],
                [[t, f"{s:.3f}", f"{args.batch_size / s:.1f}", f"{s / base:.2f}x"] for t, s in by_length.items()]),
        f"Training step ({args.preset}, lyrics 512 + captions {CAPTION_TOKENS} tokens) vs batch size:\n\n"
        + table(["batch", "s/step", "rows/s"], [[b, f"{s:.3f}", f"{b / s:.1f}"] for b, s in by_batch.items()]),
        "Music embedding extraction (30 s 44.1 kHz stereo WAV/MP3, 15 s excerpts, 2 decoding workers) vs songs:\n\n"
        + table(["songs", "seconds", "songs/s"], [[n, f"{s:.1f}", f"{n / s:.2f}"] for n, s in by_songs.items()]),
        f"Measured on: {machine()}",
    ])
    print(tables)
    if args.out:
        Path(args.out).write_text(tables + "\n", encoding="utf-8")
    report("cost_growth", by_length[512], base, "s/step",
           f"step time grows {by_length[512] / base:.2f}x from 128- to 512-token lyrics (4x the lyric tokens); "
           f"embedding {max(song_counts)} songs takes {by_songs[max(song_counts)] / by_songs[min(song_counts)]:.2f}x "
           f"the time of {min(song_counts)}",
           preset=args.preset, batch_size=args.batch_size,
           step_seconds_by_lyric_tokens={str(k): round(v, 4) for k, v in by_length.items()},
           step_seconds_by_batch={str(k): round(v, 4) for k, v in by_batch.items()},
           embed_seconds_by_songs={str(k): round(v, 2) for k, v in by_songs.items()})


if __name__ == "__main__":
    main()
