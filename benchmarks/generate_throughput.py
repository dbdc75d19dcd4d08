"""Caption generation, 4-beam search with the KV cache: batched (the product's path) vs one song at a time.

Random-init model (the training benchmarks' `build_model`), synthetic lyrics of 240-400 tokens
and music; every caption is forced to the same length (min_new_tokens = max_new_tokens) so
both ways do the same decoding work.

    python benchmarks/generate_throughput.py [--quick] [--preset small|bart-base] [--songs N] [--device cuda --bf16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import best_of, report  # noqa: E402
from training import add_bart_vocab_arg, build_model, row, vocabulary  # noqa: E402

from alcap.audio.decode import Excerpt  # noqa: E402
from alcap.config import GenerationConfig, RunConfig  # noqa: E402
from alcap.inference import Captioner  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model, 16 songs, 24 tokens (about a minute)")
    parser.add_argument("--preset", default=None, help="backbone preset (default: small with --quick, else bart-base)")
    parser.add_argument("--songs", type=int, default=None, help="songs to caption (default: 16 quick, 32 full)")
    parser.add_argument("--tokens", type=int, default=None, help="caption length in tokens (default: 24 quick, 64 full)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch of the batched way (default: 16)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cpu or cuda (default: cuda when there is one)")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU), as generation.mixed_precision: bf16")
    add_bart_vocab_arg(parser)
    args = parser.parse_args()
    preset = args.preset or ("small" if args.quick else "bart-base")
    songs = args.songs or (16 if args.quick else 32)
    tokens = args.tokens or (24 if args.quick else 64)
    rng = np.random.default_rng(0)
    rows = [row(i, rng, vocabulary(), int(rng.integers(240, 400)), 20) for i in range(songs)]  # lyrics in tokens
    lyrics, music = [r["lyrics"] for r in rows], [r["music"] for r in rows]
    model, tokenizer = build_model(preset, rows, bart_vocab=args.bart_vocab)
    vocab = model.bart.get_input_embeddings().num_embeddings
    model.eval().to(args.device)
    run = RunConfig()
    run.data.max_lyrics_tokens = 512

    def captioner(batch_size: int) -> Captioner:
        generation = GenerationConfig(num_beams=4, max_new_tokens=tokens, min_new_tokens=tokens, batch_size=batch_size,
                                      mixed_precision="bf16" if args.bf16 else "no")
        return Captioner(model, tokenizer, None, Excerpt(), run, generation, device=args.device)

    batched, single = captioner(args.batch_size), captioner(1)
    batched.caption_embeddings(lyrics[:2], music[:2])  # warm-up
    t_batched = best_of(lambda: batched.caption_embeddings(lyrics, music), 2 if args.quick else 1, args.device)
    t_single = best_of(lambda: single.caption_embeddings(lyrics, music), 1, args.device)
    ours, baseline = songs / t_batched, songs / t_single
    precision = "bf16 autocast" if args.bf16 else "float32"
    report("generate_throughput", ours, baseline, "songs/s",
           f"4-beam generation, {preset}, {args.device} {precision}, {songs} songs x {tokens} tokens: batched (batch {args.batch_size}) "
           f"{ours:.2f} songs/s ({1000 / ours:.0f} ms/song) vs one at a time {baseline:.2f} songs/s "
           f"({1000 / baseline:.0f} ms/song): {ours / baseline:.2f}x",
           preset=preset, vocab=vocab, device=args.device, precision=precision, songs=songs, tokens=tokens, batch_size=args.batch_size,
           ms_per_song_ours=round(1000 / ours, 1), ms_per_song_baseline=round(1000 / baseline, 1))


if __name__ == "__main__":
    main()
