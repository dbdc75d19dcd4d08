"""Whole-track captioning: the trained excerpt vs the whole file, its windows concatenated or pooled.

A model is trained on h_m of one excerpt per song (ALCAP: 15 s from the middle). With
`--full-track` the encoder hears consecutive windows of that length across the whole file and
the caption is generated from one music sequence made of them: the windows' h_m concatenated
in time order ("concat"), or their step-by-step mean ("pool", the trained sequence length).
This script captions a manifest split's full-length files all three ways and scores each
against the references (ROUGE-L, METEOR, and the share of attributes stated right where the
manifest has attributes.json), checks that a whole-track caption is deterministic, and times
them. The ratio line: the better whole-track mode's ROUGE-L over the excerpt's.

    python benchmarks/full_track.py --model runs/demo/alcap/seed-2020/best \\
        --manifest demo/corpus/manifest.jsonl --split val test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import machine, report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory (a music model)")
    parser.add_argument("--manifest", required=True, help="manifest with references (and attributes.json beside it)")
    parser.add_argument("--split", nargs="+", default=["test"], help="manifest splits (default: test)")
    parser.add_argument("--limit", type=int, help="only the first N songs")
    parser.add_argument("--out", help="also write the table as JSON here")
    args = parser.parse_args()

    from alcap.data.manifest import read_manifest
    from alcap.evaluate import songs_with_references
    from alcap.inference import DEFAULT_FULL_TRACK, FULL_TRACK_MODES, Captioner
    from alcap.metrics.attributes import AttributeWords, attribute_accuracy
    from alcap.metrics.captioning import caption_metrics

    rows = [r for r in read_manifest(args.manifest) if r.split in args.split]
    items = songs_with_references(rows)[: args.limit]
    audio = {r.song_id: r.audio for r in rows}
    words = AttributeWords.for_manifest(args.manifest)
    captioner = Captioner.from_pretrained(args.model, device="cpu")
    import soundfile as sf

    lengths = np.array([sf.info(audio[s["song_id"]]).duration for s in items])
    print(f"{len(items)} songs of {args.manifest} ({' '.join(args.split)}; {lengths.min():.1f}-{lengths.max():.1f} s, "
          f"median {np.median(lengths):.1f}), model {args.model}, excerpt {captioner.excerpt.describe()}; {machine()}")

    table, captions = {}, {}
    for mode in (None, *FULL_TRACK_MODES):
        started = time.perf_counter()
        results = captioner.caption_batch([audio[s["song_id"]] for s in items], [s["lyrics"] for s in items],
                                          full_track=mode or False)
        seconds = time.perf_counter() - started
        predictions = [r.caption for r in results]
        metrics = caption_metrics(predictions, [s["references"] for s in items])
        scored = attribute_accuracy(items, predictions, words)
        accuracy = scored.get("accuracy", {})
        name = mode or "excerpt"
        captions[name] = predictions
        table[name] = {"rougeL_f": metrics["rougeL_f1"], "rougeL_recall": metrics["rougeL_recall"],
                       "meteor": metrics["meteor"],
                       "attributes_right": float(np.mean(list(accuracy.values()))) if accuracy else None,
                       **{f"right_{k}": v for k, v in accuracy.items()}, "songs_per_second": len(items) / seconds}
    again = captioner.caption_batch([audio[items[0]["song_id"]]], [items[0]["lyrics"]], full_track=True)[0].caption
    deterministic = again == captions[DEFAULT_FULL_TRACK][0]
    same = {m: sum(a == b for a, b in zip(captions[m], captions["excerpt"])) for m in FULL_TRACK_MODES}

    print(f"{'':10} {'ROUGE-L F':>10} {'METEOR':>8} {'attributes':>10} {'songs/s':>8} {'= excerpt':>10}")
    for name, row in table.items():
        attributes = f"{row['attributes_right']:.3f}" if row["attributes_right"] is not None else "-"
        print(f"{name:10} {row['rougeL_f']:10.4f} {row['meteor']:8.4f} {attributes:>10} {row['songs_per_second']:8.2f} "
              f"{same.get(name, len(items)):>6}/{len(items)}")
    print(f"deterministic (the same file twice gives the same caption): {deterministic}")
    if args.out:
        Path(args.out).write_text(json.dumps({"table": table, "same_as_excerpt": same, "deterministic": deterministic,
                                              "songs": len(items)}, indent=2) + "\n")
    best = max(FULL_TRACK_MODES, key=lambda m: (table[m]["rougeL_f"] + table[m]["meteor"]))
    report("full_track_rougeL", table[best]["rougeL_f"], table["excerpt"]["rougeL_f"], "ROUGE-L F",
           f"whole track ({best}) vs the trained excerpt: ROUGE-L F {table[best]['rougeL_f']:.4f} vs "
           f"{table['excerpt']['rougeL_f']:.4f}", best_mode=best, table=table, deterministic=deterministic)


if __name__ == "__main__":
    main()
