"""`alcap library add` end to end vs the sum of its stages one after another, and its memory.

The pipeline: decoding (hash + decode + resample) in DataLoader worker processes, ahead of the
main process, which runs the music encoder, caption generation and the sentence model and
commits each batch. The baseline runs the same stages over the same songs one after another in
one process (decode everything, then encode, generate, embed, commit): the ratio is what the
overlap gains. Then peak RSS of `library add` at --rss-songs (default 100 and 1,000) songs,
each in a fresh process: the main process, and the largest decoding worker. A library's
memory must not grow with its size.

Songs: the demo corpus's kind (15-30 s, WAV/FLAC/OGG/MP3, synthesised offline). Model: --model
(e.g. the demo's runs/demo/alcap/seed-2020/best, musicnn-msd encoder); without it a tiny model
with a random CNNSA encoder is trained for the run (cheap stages: the overlap matters less).

    python benchmarks/library_add.py [--quick] [--model DIR] [--songs 100] [--rss-songs 100 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

RSS_SCRIPT = """
import json, resource, sys
from alcap.library.build import add_songs
r = add_songs(sys.argv[1], sys.argv[2], [sys.argv[3]], device="cpu", batch_size=16, workers=int(sys.argv[4]),
              limit=int(sys.argv[5]), progress=False)
print(json.dumps({"added": r.added, "seconds": r.seconds,
                  "main_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "worker_peak_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


def tiny_model(workdir: Path, corpus: Path) -> Path:
    """A tiny captioning model on a random-init CNNSA encoder, trained one epoch on `corpus`."""
    from alcap.audio.extractor import CNNSAExtractor
    from alcap.config import load_config
    from alcap.data.embed import embed_songs
    from alcap.data.manifest import read_manifest
    from alcap.train.loop import train

    rows = [json.loads(line) for line in open(corpus / "manifest.jsonl", encoding="utf-8")]
    chosen = sorted({r["song_id"] for r in rows if r["split"] in ("train", "val")})[:60]
    manifest = workdir / "tiny-train.jsonl"  # a small part of the corpus is enough for a tiny model
    with open(manifest, "w", encoding="utf-8") as f:
        for r in rows:
            if r["song_id"] in chosen:
                f.write(json.dumps({**r, "audio": str(corpus / r["audio"])}) + "\n")
    songs = {r.song_id: r.audio for r in read_manifest(manifest).rows}
    embed_songs(songs, CNNSAExtractor.random_init(0, device="cpu"), workdir / "store", workers=0, progress=False)
    sets = [f"data.manifest={manifest}", f"data.embeddings={workdir / 'store'}", "model.backbone=tiny",
            "model.tokenizer_vocab_size=400", "model.alcap.fusion_layers=[1, 2]", "train.epochs=1",
            "train.batch_size=8", "train.eval_generate=false", "generation.max_new_tokens=16",
            "generation.num_beams=2", f"output_dir={workdir / 'model'}"]
    train(load_config(None, sets), progress=False)
    return workdir / "model" / "best"


def sequential(model: Path, manifest: Path, n: int, root: Path) -> dict[str, float]:
    """Every stage over all `n` songs, one stage after another, in this process."""
    from alcap.inference import Captioner
    from alcap.library.build import _Songs, expand_sources, library_identity
    from alcap.library.store import Library, Song
    from alcap.metrics.retrieval import SentenceEncoder

    items = expand_sources([str(manifest)])[0][:n]
    captioner = Captioner.from_pretrained(model, device="cpu")
    captioner.generation = captioner.generation.with_overrides(batch_size=16)
    encoder = SentenceEncoder(None)
    rate = captioner.extractor.sample_rate if captioner.extractor is not None else 16000
    times = {}
    start = time.perf_counter()
    dataset = _Songs(items, {}, rate, captioner.excerpt)
    decoded = [dataset[i] for i in range(len(items))]
    times["decode"] = time.perf_counter() - start
    good = [d for d in decoded if d[0] == "ok"]
    start = time.perf_counter()
    music = None
    if captioner.uses_music:
        music = []
        for first in range(0, len(good), 16):
            batch = good[first:first + 16]
            embedded = captioner.embed_music({i: d[4][1] for i, d in enumerate(batch)})
            music += [embedded[i] for i in range(len(batch))]
    times["music encoder"] = time.perf_counter() - start
    start = time.perf_counter()
    captions = []
    for first in range(0, len(good), 16):  # batch by batch, as the pipeline generates
        captions += captioner.caption_embeddings([d[4][0] for d in good[first:first + 16]],
                                                 None if music is None else music[first:first + 16])
    times["generation"] = time.perf_counter() - start
    start = time.perf_counter()
    vectors = np.concatenate([encoder.encode(captions[f:f + 16]) for f in range(0, len(captions), 16)])
    times["sentence model"] = time.perf_counter() - start
    identity = library_identity(captioner, model, None, vectors.shape[1])
    start = time.perf_counter()
    with Library.open(root, identity, write=True) as library:
        for first in range(0, len(good), 16):
            songs = [Song(id=d[2], path=d[1].path, caption=c, lyrics=d[4][0], sha256=d[3], duration=float(d[4][2]),
                          metadata=d[1].metadata) for d, c in zip(good[first:first + 16], captions[first:first + 16])]
            library.add_batch(songs, vectors[first:first + 16])
    times["commit"] = time.perf_counter() - start
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="captioning model directory (default: a tiny one trained for the run)")
    parser.add_argument("--songs", type=int, default=100, help="songs for the overlap measurement (default: 100)")
    parser.add_argument("--rss-songs", type=int, nargs="+", default=[100, 1000], metavar="N",
                        help="library sizes whose peak RSS is compared (default: 100 1000)")
    parser.add_argument("--workers", type=int, default=2, help="decoding workers of the pipeline (default: 2)")
    parser.add_argument("--quick", action="store_true", help="12 songs, RSS at 6 and 12 (a smoke test)")
    parser.add_argument("--workdir", help="where the corpus and libraries go (default: a temp dir)")
    args = parser.parse_args()
    if args.quick:
        args.songs, args.rss_songs = 12, [6, 12]
    from alcap.data.demo import make_demo_corpus
    from alcap.library.build import add_songs

    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        total = max([args.songs, *args.rss_songs])
        seconds = (2.0, 3.0) if args.quick else (15.0, 30.0)
        print(f"synthesising {total} demo songs ...", file=sys.stderr, flush=True)
        make_demo_corpus(tmp / "corpus", n_songs=total, seed=11, min_seconds=seconds[0], max_seconds=seconds[1],
                         captions_per_song=1, progress=False)
        manifest = tmp / "corpus" / "manifest.jsonl"
        model = Path(args.model) if args.model else tiny_model(tmp, tmp / "corpus")

        stages = sequential(model, manifest, args.songs, tmp / "sequential")
        pipelined = add_songs(tmp / "pipelined", model, [str(manifest)], device="cpu", batch_size=16,
                              workers=args.workers, limit=args.songs, progress=False)
        stage_sum = sum(stages.values())
        print("stage seconds one after another: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items())
              + f" (sum {stage_sum:.1f})")
        print(f"library add, {args.workers} decoding workers: {pipelined.seconds:.1f} s for {pipelined.added} songs")

        rss = {}
        for n in args.rss_songs:
            done = subprocess.run([sys.executable, "-c", RSS_SCRIPT, str(tmp / f"rss-{n}"), str(model), str(manifest),
                                   str(args.workers), str(n)], capture_output=True, text=True, check=True)
            rss[n] = json.loads(done.stdout.strip().splitlines()[-1])
            print(f"peak RSS at {n} songs: main process {rss[n]['main_peak_mib']:.0f} MiB, largest worker "
                  f"{rss[n]['worker_peak_mib']:.0f} MiB ({rss[n]['added']} songs in {rss[n]['seconds']:.0f} s)")
        small, large = rss[min(rss)], rss[max(rss)]
        growth = large["main_peak_mib"] / small["main_peak_mib"]
        print(f"| songs | main peak RSS (MiB) | largest worker (MiB) |\n| --- | --- | --- |")
        for n, r in rss.items():
            print(f"| {n:,} | {r['main_peak_mib']:.0f} | {r['worker_peak_mib']:.0f} |")
    n = pipelined.added
    report("library_add", n / pipelined.seconds, n / stage_sum, "songs/s",
           f"library add: {n / pipelined.seconds:.2f} songs/s pipelined vs {n / stage_sum:.2f} songs/s with the "
           f"stages one after another: {stage_sum / pipelined.seconds:.2f}x; peak RSS {max(rss):,} vs {min(rss):,} "
           f"songs: {growth:.3f}x", stages=stages, rss=rss, rss_growth=growth, model=str(model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
