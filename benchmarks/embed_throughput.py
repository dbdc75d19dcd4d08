"""Music embedding extraction, the whole pipeline (decode -> resample -> mel -> CNNSA):
decoding in parallel DataLoader workers (the product's default, 2) vs in the main process.
Also timed alone: the decoding stage with and without the workers, and the encoder (mel +
CNNSA, all threads), which bound what the workers can give: they overlap decoding with the
encoder, so the pipeline cannot beat the slower of the two stages.

Synthetic 30 s stereo songs at 44.1 kHz (half WAV, half MP3), random-init CNNSA (same cost
as the trained one), 15 s excerpts, batch 16.

    python benchmarks/embed_throughput.py [--quick] [--songs N] [--workers N] [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

from alcap.audio.extractor import CNNSAExtractor  # noqa: E402
from alcap.audio.decode import Excerpt  # noqa: E402
from alcap.data.embed import _SongAudio, _decoding_worker, embed_songs  # noqa: E402


def write_songs(folder: Path, n: int) -> dict[str, str]:
    rng = np.random.default_rng(0)
    sr, seconds = 44100, 30
    t = np.arange(sr * seconds) / sr
    songs = {}
    for i in range(n):
        freq = 110 * 2 ** (rng.integers(0, 24) / 12)
        tone = 0.3 * np.sin(2 * np.pi * freq * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))
        audio = np.stack([tone + 0.05 * rng.standard_normal(len(t)), tone + 0.05 * rng.standard_normal(len(t))], 1)
        path = folder / (f"song{i:03d}.mp3" if i % 2 else f"song{i:03d}.wav")
        sf.write(path, audio.astype(np.float32), sr, **({"format": "MP3"} if i % 2 else {"subtype": "PCM_16"}))
        songs[f"song{i:03d}"] = str(path)
    return songs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="24 songs (about a minute)")
    parser.add_argument("--songs", type=int, default=None, help="songs (default: 24 quick, 96 full)")
    parser.add_argument("--workers", type=int, default=2, help="decoding workers of the parallel way (default: 2)")
    parser.add_argument("--device", default="cpu",
                        help="device of the encoder: cpu (default) or cuda, where decoding becomes the limit")
    args = parser.parse_args()
    n = args.songs or (24 if args.quick else 96)
    extractor = CNNSAExtractor.random_init(0, device=args.device)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        songs = write_songs(tmp, n)
        embed_songs(dict(list(songs.items())[:4]), extractor, tmp / "warm", workers=0, progress=False)
        timings = {}
        for label, workers in (("parallel", args.workers), ("single", 0)):
            start = time.perf_counter()
            embed_songs(songs, extractor, tmp / label, workers=workers, progress=False)
            timings[label] = time.perf_counter() - start
        stage = {}
        for label, workers in (("decode_parallel", args.workers), ("decode_single", 0)):
            data = _SongAudio(list(songs.items()), extractor.sample_rate, Excerpt())
            loader = DataLoader(data, batch_size=16, num_workers=workers, collate_fn=list,
                                worker_init_fn=_decoding_worker if workers else None)
            start = time.perf_counter()
            clips = [clip for batch in loader for _, _, clip, _ in batch]
            stage[label] = time.perf_counter() - start
        waves = torch.from_numpy(np.stack([c.samples for c in clips[:16]]))
        start = time.perf_counter()
        extractor.embed(waves)
        stage["encode"] = (time.perf_counter() - start) * n / len(waves)
    ours, baseline = n / timings["parallel"], n / timings["single"]
    rates = {k: n / v for k, v in stage.items()}
    report("embed_throughput", ours, baseline, "songs/s",
           f"embedding {n} songs (30 s, 44.1 kHz stereo, WAV+MP3), encoder on {args.device}: {args.workers} decoding workers {ours:.2f} songs/s "
           f"vs in-process decoding {baseline:.2f} songs/s (stages alone: decoding {rates['decode_single']:.1f} songs/s, "
           f"{rates['decode_parallel']:.1f} with {args.workers} workers; encoder {rates['encode']:.2f} songs/s): "
           f"{ours / baseline:.2f}x",
           songs=n, workers=args.workers, cores=os.cpu_count(), device=args.device,
           **{f"{k}_songs_per_s": round(v, 2) for k, v in rates.items()})


if __name__ == "__main__":
    main()
