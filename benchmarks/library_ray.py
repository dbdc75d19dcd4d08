"""`alcap library add --engine ray` vs the local pipeline, and with 1 vs 2 captioning actors.

One local Ray instance on this machine, started once (as a cluster is, before jobs come);
each job starts its own Ray Data pipeline and actors, which load the model, inside the timed
call. Every way builds a fresh library of the same songs; the ways alternate, each run the same
number of times, and the line gives the best and the range. Two rates per way: the whole job
of N songs (start-up included: Ray starts a process per actor, which imports torch and loads
the model), and the marginal rate, (N - N/4) / (time of N songs - time of N/4 songs), which is
what a large catalogue sees once the start-up is paid. (Commit times cannot give it: Ray hands
finished rows back in bursts.) The local pipeline: 2 decoding
workers beside the main process (2 torch threads). Ray: decoding tasks, and one actor of 2 CPUs
(2 torch threads) or two actors of 1 CPU each; the instance has one more logical CPU than the
machine so the decoding tasks have room beside the actors, as the local workers have.

Songs: the demo corpus's kind (15-30 s, WAV/FLAC/OGG/MP3). Model: --model (the demo's
runs/demo/alcap/seed-2020/best, musicnn-msd) or, without it, a tiny model trained for the run.

    python benchmarks/library_ray.py [--quick] [--model DIR] [--songs 192] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402
from library_add import tiny_model  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="captioning model directory (default: a tiny one trained for the run)")
    parser.add_argument("--songs", type=int, default=192,
                        help="songs per library (default: 192; with 64, four batches, filling and draining the "
                             "pipeline weighs as much as the rate)")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each way, alternating (default: 2)")
    parser.add_argument("--quick", action="store_true", help="16 short songs, one run each (a smoke test)")
    parser.add_argument("--workdir", help="where the corpus and libraries go (default: a temp dir)")
    args = parser.parse_args()
    if args.quick:
        args.songs, args.repeats = 16, 1
    import ray

    from alcap.data.demo import make_demo_corpus
    from alcap.library.build import add_songs


    cpus = os.cpu_count() or 2
    ways = {"local": {"engine": "local", "workers": 2},
            "ray, 1 actor": {"engine": "ray", "ray_actors": 1, "ray_actor_cpus": float(cpus)},
            "ray, 2 actors": {"engine": "ray", "ray_actors": 2, "ray_actor_cpus": cpus / 2}}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = Path(tmp)
        seconds = (2.0, 3.0) if args.quick else (15.0, 30.0)
        print(f"synthesising {args.songs} demo songs ...", file=sys.stderr, flush=True)
        make_demo_corpus(tmp / "corpus", n_songs=args.songs, seed=11, min_seconds=seconds[0], max_seconds=seconds[1],
                         captions_per_song=1, progress=False)
        manifest = tmp / "corpus" / "manifest.jsonl"
        model = Path(args.model) if args.model else tiny_model(tmp, tmp / "corpus")
        ray.init(num_cpus=cpus + 1, include_dashboard=False, logging_level="ERROR", log_to_driver=False)
        rates: dict[str, list[float]] = {name: [] for name in ways}
        steady: dict[str, list[float]] = {name: [] for name in ways}
        try:
            for repeat in range(args.repeats):
                for name in ways if repeat % 2 == 0 else reversed(list(ways)):
                    took = {}
                    for n in (args.songs // 4, args.songs):
                        start = time.perf_counter()
                        done = add_songs(tmp / f"lib-{len(rates[name])}-{n}-{name}", model, [str(manifest)],
                                         device="cpu", batch_size=16, limit=n, progress=False, **ways[name])
                        took[n] = time.perf_counter() - start
                        assert done.added == n, f"{name}: {done.added} of {n} songs added"
                    rates[name].append(args.songs / took[args.songs])
                    steady[name].append((args.songs - args.songs // 4) / (took[args.songs] - took[args.songs // 4]))
                    print(f"{name}: {rates[name][-1]:.2f} songs/s for the job, {steady[name][-1]:.2f} songs/s marginal "
                          f"({done.added} songs)", file=sys.stderr, flush=True)
        finally:
            ray.shutdown()
    best = {name: max(r) for name, r in steady.items()}
    job = {name: max(r) for name, r in rates.items()}
    spread = {name: f"{min(r):.2f}-{max(r):.2f}" for name, r in steady.items()}
    overhead = 1 - best["ray, 1 actor"] / best["local"]
    report("library_ray", best["ray, 1 actor"], best["local"], "songs/s",
           f"library add of {args.songs} demo songs ({model}), marginal rate: Ray Data, 1 actor "
           f"{best['ray, 1 actor']:.2f} songs/s vs the local pipeline {best['local']:.2f} songs/s: "
           f"{best['ray, 1 actor'] / best['local']:.2f}x (overhead {overhead:.0%}); 2 actors "
           f"{best['ray, 2 actors']:.2f} songs/s, {best['ray, 2 actors'] / best['ray, 1 actor']:.2f}x of 1 actor "
           f"(ranges over {args.repeats} runs: " + ", ".join(f"{k} {v}" for k, v in spread.items()) + "); whole job "
           "with its start-up: " + ", ".join(f"{k} {v:.2f}" for k, v in job.items()) + " songs/s",
           overhead=round(overhead, 4), two_actors=round(best["ray, 2 actors"], 3), steady=steady, job=rates,
           songs=args.songs, model=str(model))
    return 0


if __name__ == "__main__":
    sys.exit(main())
