"""CPU captioning settings, speed and quality: int8 quantisation and greedy decoding against
today's float32 4-beam batched captioning.

Speed: a random-init model (the training benchmarks' `build_model`) captions synthetic lyrics
of 240-400 tokens with music, every caption forced to the same length, batch 16; each setting
is timed the same number of times, the order alternating between repeats; the line gives the
best and the spread. Quality (`--model DIR`, a trained model directory such as the demo's
runs/demo/alcap/seed-2020/best): the same settings caption that model's test split from its
embedding store, and ROUGE-L F1 and METEOR are compared with float32 4-beam.

    python benchmarks/cpu_captioning.py [--quick] [--preset bart-base] [--bart-vocab] [--model DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402
from training import add_bart_vocab_arg, build_model, row, vocabulary  # noqa: E402

from alcap.audio.decode import Excerpt  # noqa: E402
from alcap.config import GenerationConfig, RunConfig  # noqa: E402
from alcap.inference import Captioner  # noqa: E402

# (name, quantize, beams); the first is the baseline.
SETTINGS = [("float32 4-beam", "none", 4), ("int8 4-beam", "int8", 4), ("float32 2-beam", "none", 2),
            ("int8 2-beam", "int8", 2), ("float32 greedy", "none", 1), ("int8 greedy", "int8", 1)]


def speed(args) -> dict[str, list[float]]:
    """songs/s of each setting, one value per repeat."""
    preset = args.preset or ("small" if args.quick else "bart-base")
    songs, tokens = args.songs or (16 if args.quick else 32), args.tokens or (24 if args.quick else 64)
    rng = np.random.default_rng(0)
    rows = [row(i, rng, vocabulary(), int(rng.integers(240, 400)), 20) for i in range(songs)]
    lyrics, music = [r["lyrics"] for r in rows], [r["music"] for r in rows]
    model, tokenizer = build_model(preset, rows, bart_vocab=args.bart_vocab)
    run = RunConfig()
    run.data.max_lyrics_tokens = 512
    captioners = {}
    for name, quantize, beams in SETTINGS:
        generation = GenerationConfig(num_beams=beams, max_new_tokens=tokens, min_new_tokens=tokens, batch_size=16)
        captioners[name] = Captioner(model, tokenizer, None, Excerpt(), run, generation, "cpu", quantize)
        captioners[name].caption_embeddings(lyrics[:2], music[:2])  # warm-up
    rates: dict[str, list[float]] = {name: [] for name, _, _ in SETTINGS}
    for repeat in range(args.repeats):
        for name, _, _ in SETTINGS if repeat % 2 == 0 else reversed(SETTINGS):
            start = time.perf_counter()
            captioners[name].caption_embeddings(lyrics, music)
            rates[name].append(songs / (time.perf_counter() - start))
    args.detail = f"{preset}, vocabulary {model.bart.get_input_embeddings().num_embeddings}, {songs} songs x {tokens} tokens"
    return rates


def quality(model_dir: str) -> dict[str, dict]:
    """ROUGE-L F1 and METEOR (x100) of each setting on the model's test split."""
    from alcap.data.manifest import read_manifest
    from alcap.data.store import EmbeddingStore
    from alcap.evaluate import caption_and_score, songs_with_references

    out, reference = {}, None
    for name, quantize, beams in SETTINGS:
        captioner = Captioner.from_pretrained(model_dir, device="cpu", quantize=quantize)
        captioner.generation = dataclasses.replace(captioner.generation, num_beams=beams, num_return_sequences=1)
        items = songs_with_references(read_manifest(captioner.run.data.manifest).split("test"))
        store = EmbeddingStore.open(captioner.run.data.embeddings) if captioner.uses_music else None
        predictions, metrics, _ = caption_and_score(captioner, items, store)
        reference = reference or predictions
        out[name] = {"rougeL_f1": 100 * metrics["rougeL_f1"], "meteor": 100 * (metrics["meteor"] or float("nan")),
                     "songs": len(items), "same_caption": sum(a == b for a, b in zip(reference, predictions))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small model, 16 songs, 24 tokens")
    parser.add_argument("--preset", default=None, help="backbone preset (default: small with --quick, else bart-base)")
    parser.add_argument("--songs", type=int, default=None, help="songs per timed call (default: 16 quick, 32 full)")
    parser.add_argument("--tokens", type=int, default=None, help="caption length in tokens (default: 24 quick, 64 full)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per setting, alternating order (default: 2)")
    parser.add_argument("--model", metavar="DIR", help="trained model directory whose test split scores each setting")
    add_bart_vocab_arg(parser)
    args = parser.parse_args()
    rates = speed(args)
    scores = quality(args.model) if args.model else {}
    base_name = SETTINGS[0][0]
    base = max(rates[base_name])
    for name, quantize, beams in SETTINGS[1:]:
        ours = max(rates[name])
        spread = f"{min(rates[name]):.2f}-{ours:.2f} vs {min(rates[base_name]):.2f}-{base:.2f}"
        line = (f"CPU captioning, {args.detail}: {name} {ours:.2f} songs/s vs {base_name} {base:.2f} songs/s: "
                f"{ours / base:.2f}x (range over {args.repeats} repeats: {spread})")
        extra = {}
        if scores:
            q, b = scores[name], scores[base_name]
            delta = {"rougeL_f1": round(q["rougeL_f1"] - b["rougeL_f1"], 2), "meteor": round(q["meteor"] - b["meteor"], 2)}
            line += (f"; on {args.model}'s test split ({q['songs']} songs): ROUGE-L F1 {q['rougeL_f1']:.2f} "
                     f"({delta['rougeL_f1']:+.2f}), METEOR {q['meteor']:.2f} ({delta['meteor']:+.2f}), "
                     f"{q['same_caption']} captions unchanged")
            extra = {"quality": q, "quality_baseline": b, "quality_change": delta}
        report("cpu_captioning", ours, base, "songs/s", line, setting=name, quantize=quantize, num_beams=beams,
               detail=args.detail, repeats=[round(r, 3) for r in rates[name]],
               baseline_repeats=[round(r, 3) for r in rates[base_name]], **extra)


if __name__ == "__main__":
    main()
