"""Caption generation, 4-beam search with the KV cache: alcap's batched path vs a baseline.

Random-init model (the training benchmarks' `build_model`), synthetic lyrics of 240-400 tokens
and music; every caption is forced to the same length (min_new_tokens = max_new_tokens) so
both ways do the same decoding work.

Baselines (`--baseline`):
- `original` (default): what the original evaluation ran: batches of 12 songs (`--original-batch`;
  BART-fusion used 8) in the given order, lyrics padded to 512 tokens, HF's stock SDPA attention
  and encoder-decoder cache;
- `stock-cache`: alcap's batches and lengths, HF's stock attention and cache: what alcap's
  BeamCache alone is worth;
- `single`: alcap's path, one song at a time;
- `eager`: alcap's path at the same batch without compilation (with `--compile`).
Both ways run the same number of times, alternating, and the line gives the best and the range.
`--compile` decodes with generation.compile (static KV cache, compiled decoding step; add
`--compile-mode reduce-overhead` for CUDA graphs): every shape is compiled in an untimed first
pass over all songs, whose extra time is reported as the compile time.

    python benchmarks/generate_throughput.py [--quick] [--preset small|bart-base]
        [--baseline original|stock-cache|single|eager] [--compile [--compile-mode MODE]]
        [--songs N] [--repeats N] [--device cuda --bf16]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import time  # noqa: E402

from common import report, synchronize  # noqa: E402
from training import add_bart_vocab_arg, build_model, row, vocabulary  # noqa: E402

from alcap.audio.decode import Excerpt  # noqa: E402
from alcap.config import GenerationConfig, RunConfig  # noqa: E402
from alcap.data.dataset import pad_music  # noqa: E402
from alcap.inference import Captioner  # noqa: E402
from alcap.model.beam import BEAM_SDPA  # noqa: E402


@torch.no_grad()
def stock_generate(model, tokenizer, lyrics, music, batch_size, tokens, device, padded, autocast):
    """Captions through HF's stock SDPA attention and encoder-decoder cache; `padded`: the
    original's way (songs in the given order, lyrics padded to 512), else alcap's length-sorted
    batches padded to their longest."""
    from transformers import DynamicCache, EncoderDecoderCache

    order = list(range(len(lyrics)))
    if not padded:
        lengths = [len(ids) for ids in tokenizer(lyrics, truncation=True, max_length=512)["input_ids"]]
        order.sort(key=lambda i: -lengths[i])
    model.bart.set_attn_implementation("sdpa")
    try:
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            enc = tokenizer([lyrics[i] for i in rows], truncation=True, max_length=512, return_tensors="pt",
                            padding="max_length" if padded else True).to(device)
            m, mask = pad_music([np.asarray(music[i]) for i in rows])
            config = model.bart.config.get_text_config(decoder=True)
            cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
            with torch.autocast(torch.device(device).type, dtype=autocast, enabled=autocast is not None):
                model.generate(enc["input_ids"], enc["attention_mask"], music=m.to(device), music_mask=mask.to(device),
                               cache=cache, num_beams=4, max_new_tokens=tokens, min_new_tokens=tokens)
    finally:
        model.bart.set_attn_implementation(BEAM_SDPA)


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
    parser.add_argument("--baseline", choices=("original", "stock-cache", "single", "eager"), default="original",
                        help="what alcap's path is compared with (default: original; see above)")
    parser.add_argument("--compile", action="store_true",
                        help="alcap's path decodes with generation.compile (static KV cache, compiled step)")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode with --compile, e.g. reduce-overhead")
    parser.add_argument("--original-batch", type=int, default=12,
                        help="batch of the original's evaluation (default: 12; BART-fusion's was 8)")
    parser.add_argument("--repeats", type=int, default=None, help="runs of each way, alternating (default: 2)")
    add_bart_vocab_arg(parser)
    args = parser.parse_args()
    args.repeats = args.repeats or 2
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

    def captioner(batch_size: int, compile: bool = False) -> Captioner:
        generation = GenerationConfig(num_beams=4, max_new_tokens=tokens, min_new_tokens=tokens, batch_size=batch_size,
                                      mixed_precision="bf16" if args.bf16 else "no", compile=compile,
                                      compile_mode=args.compile_mode)
        return Captioner(model, tokenizer, None, Excerpt(), run, generation, device=args.device)

    if args.baseline == "eager" and not args.compile:
        parser.error("--baseline eager compares --compile with the same path uncompiled: add --compile")
    batched = captioner(args.batch_size, args.compile)
    autocast = torch.bfloat16 if args.bf16 and torch.device(args.device).type == "cuda" else None
    if args.baseline == "single":
        single = captioner(1)
        baseline_fn = lambda n=songs: single.caption_embeddings(lyrics[:n], music[:n])  # noqa: E731
        described = "one at a time"
    elif args.baseline == "eager":
        eager = captioner(args.batch_size)
        baseline_fn = lambda n=songs: eager.caption_embeddings(lyrics[:n], music[:n])  # noqa: E731
        described = f"the same path uncompiled (batch {args.batch_size})"
    else:
        padded = args.baseline == "original"
        size = args.original_batch if padded else args.batch_size
        baseline_fn = lambda n=songs: stock_generate(model, tokenizer, lyrics[:n], music[:n], size,  # noqa: E731
                                                     tokens, args.device, padded, autocast)
        described = (f"the original's way (batch {size}, lyrics padded to 512, HF's stock attention and cache)"
                     if padded else f"HF's stock attention and cache (batch {size}, alcap's lengths)")
    batched.caption_embeddings(lyrics[:2], music[:2])  # warm-up of both ways (first calls pay one-off costs)
    baseline_fn(2)
    first_pass = None
    if args.compile:  # every batch shape compiles here, untimed
        synchronize(args.device)
        start = time.perf_counter()
        batched.caption_embeddings(lyrics, music)
        synchronize(args.device)
        first_pass = time.perf_counter() - start
    ways = {"ours": lambda: batched.caption_embeddings(lyrics, music), "baseline": baseline_fn}
    rates: dict[str, list[float]] = {"ours": [], "baseline": []}
    for repeat in range(args.repeats):
        for name in (("ours", "baseline") if repeat % 2 == 0 else ("baseline", "ours")):
            synchronize(args.device)
            start = time.perf_counter()
            ways[name]()
            synchronize(args.device)
            rates[name].append(songs / (time.perf_counter() - start))
    ours, baseline = max(rates["ours"]), max(rates["baseline"])
    precision = "bf16 autocast" if args.bf16 else "float32"
    compiled, compile_seconds = "", None
    if args.compile:
        compile_seconds = round(first_pass - songs / ours, 1)
        compiled = f", compiled ({args.compile_mode or 'default'} mode; compiling took {compile_seconds:.1f} s more)"
    report("generate_throughput", ours, baseline, "songs/s",
           f"4-beam generation, {preset}, {args.device} {precision}, {songs} songs x {tokens} tokens: alcap batched "
           f"(batch {args.batch_size}, BeamCache{compiled}) {ours:.2f} songs/s ({1000 / ours:.0f} ms/song) vs {described} "
           f"{baseline:.2f} songs/s ({1000 / baseline:.0f} ms/song): {ours / baseline:.2f}x (ranges over "
           f"{args.repeats} runs: {min(rates['ours']):.2f}-{ours:.2f} vs {min(rates['baseline']):.2f}-{baseline:.2f})",
           preset=preset, vocab=vocab, device=args.device, precision=precision, songs=songs, tokens=tokens,
           batch_size=args.batch_size, baseline_kind=args.baseline, runs=rates, compile=args.compile,
           compile_mode=args.compile_mode, compile_seconds=compile_seconds,
           ms_per_song_ours=round(1000 / ours, 1), ms_per_song_baseline=round(1000 / baseline, 1))

if __name__ == "__main__":
    main()
