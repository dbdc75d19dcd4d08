"""Song-library search latency: exact search vs the FAISS index, at 10k, 100k and 1M songs.

Synthetic caption vectors with the structure of real ones: 2,000 template captions ("a slow
minor piano ballad about leaving home", ...) are encoded with the library's default sentence
model (all-MiniLM-L6-v2, 384-d), and each song's vector is a random mixture of three of them
plus noise. Queries are fresh mixtures of the same kind, so they are not stored vectors. Each
query is timed alone (one user, one query: what a search box sees) through `Library.search`
with its sentence vector given, so the query embedding time is reported separately. Recall@10
is the share of the exact top 10 that the index returns. Also timed at up to 100k: the exact
search of the previous version (float32 copy of every row, full sort).

    python benchmarks/search_latency.py [--quick] [--sizes 10000 100000 1000000] [--queries 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402

from alcap.library import Library, Song  # noqa: E402
from alcap.metrics.retrieval import SentenceEncoder  # noqa: E402

WORDS = {
    "tempo": ["slow", "mid-tempo", "fast", "driving", "laid-back"],
    "mode": ["minor", "major", "dark", "bright", "bittersweet"],
    "instrument": ["piano", "acoustic guitar", "synth", "strings", "electric guitar", "brass", "organ"],
    "kind": ["ballad", "anthem", "lullaby", "dance track", "folk song", "rock song"],
    "theme": ["leaving home", "lost love", "a summer night", "freedom", "growing old", "a new city",
              "hope after loss", "a broken promise"],
}


def template_captions(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    pick = {k: rng.integers(0, len(v), n) for k, v in WORDS.items()}
    return [f"a {WORDS['tempo'][pick['tempo'][i]]} {WORDS['mode'][pick['mode'][i]]} "
            f"{WORDS['instrument'][pick['instrument'][i]]} {WORDS['kind'][pick['kind'][i]]} about "
            f"{WORDS['theme'][pick['theme'][i]]}" for i in range(n)]


def mixtures(basis: np.ndarray, n: int, rng: np.random.Generator, noise: float = 0.15) -> np.ndarray:
    parts = rng.integers(0, len(basis), (n, 3))
    weights = rng.dirichlet(np.ones(3), n).astype(np.float32)
    vectors = np.einsum("nk,nkd->nd", weights, basis[parts])
    vectors += noise * rng.standard_normal(vectors.shape).astype(np.float32) / np.sqrt(basis.shape[1])
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def build_library(root: Path, basis: np.ndarray, n: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    identity = {"captioning_model": {"weights_sha256": "synthetic", "music_encoder_sha256": None},
                "generation": {}, "sentence_model": {"name": "all-MiniLM-L6-v2 (packaged)", "path": None,
                                                      "dim": basis.shape[1]}}
    with Library.open(root, identity, write=True) as library:
        for start in range(0, n, 20000):
            size = min(20000, n - start)
            songs = [Song(id=f"s{start + i}", path=f"/catalogue/s{start + i}.mp3", caption="synthetic caption")
                     for i in range(size)]
            library.add_batch(songs, mixtures(basis, size, rng))


def old_exact(matrix: np.ndarray, query: np.ndarray, k: int) -> np.ndarray:
    """The previous version's exact search: float32 copies in 64k-row slices, then a full sort."""
    rows = np.arange(len(matrix))
    scores = np.empty(len(rows), dtype=np.float32)
    for start in range(0, len(rows), 65536):
        scores[start:start + 65536] = matrix[start:start + 65536].astype(np.float32) @ query
    return rows[np.lexsort((rows, -scores))][:k]


def timed(fn, queries: np.ndarray) -> tuple[np.ndarray, list]:
    fn(queries[0])  # warm caches and lazy loads
    times, results = [], []
    for q in queries:
        start = time.perf_counter()
        results.append(fn(q))
        times.append(time.perf_counter() - start)
    return np.array(times) * 1000, results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--quick", action="store_true", help="2k and 10k songs, 30 queries (a smoke test)")
    parser.add_argument("--workdir", default=None, help="where the synthetic libraries are written (default: a temp dir)")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.queries = [2000, 10000], 30
    encoder = SentenceEncoder(None)
    basis = encoder.encode(template_captions(2000, 0)).astype(np.float32)
    texts = template_captions(args.queries, 1)
    embed_ms, _ = timed(lambda t: encoder.encode([t]), np.array(texts, dtype=object))
    queries = mixtures(basis, args.queries, np.random.default_rng(99))
    rows = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for n in args.sizes:
            root = Path(tmp) / f"lib-{n}"
            started = time.perf_counter()
            build_library(root, basis, n, seed=n)
            with Library.open(root, write=True) as library:
                fill_seconds = time.perf_counter() - started
                started = time.perf_counter()
                state = library.update_index("faiss")
                index_seconds = time.perf_counter() - started
            with Library.open(root) as library:
                exact_ms, exact_hits = timed(lambda q: library.search("q", k=10, mode="dense", vector=q, exact=True),
                                             queries)
                faiss_ms, faiss_hits = timed(lambda q: library.search("q", k=10, mode="dense", vector=q), queries)
                recall = np.mean([len({h.id for h in a} & {h.id for h in b}) / 10
                                  for a, b in zip(exact_hits, faiss_hits)])
                old_ms = None
                if n <= 100_000:
                    matrix = library.vectors()
                    old_ms, _ = timed(lambda q: old_exact(matrix, q, 10), queries[:50])
            row = {"songs": n, "exact_p50_ms": float(np.median(exact_ms)), "exact_p99_ms": float(np.percentile(exact_ms, 99)),
                   "faiss_p50_ms": float(np.median(faiss_ms)), "faiss_p99_ms": float(np.percentile(faiss_ms, 99)),
                   "faiss_recall@10": float(recall), "tuned_recall@10": state["recall@10"], "nlist": state["nlist"],
                   "nprobe": state["nprobe"], "index_build_s": round(index_seconds, 1),
                   "library_fill_s": round(fill_seconds, 1),
                   "previous_exact_p50_ms": None if old_ms is None else float(np.median(old_ms))}
            rows.append(row)
            print(f"{n:>9,} songs: exact p50 {row['exact_p50_ms']:.2f} ms p99 {row['exact_p99_ms']:.2f} ms | faiss "
                  f"p50 {row['faiss_p50_ms']:.2f} ms p99 {row['faiss_p99_ms']:.2f} ms recall@10 {recall:.3f} "
                  f"(nlist {state['nlist']}, nprobe {state['nprobe']}, built in {index_seconds:.1f} s)"
                  + (f" | previous exact p50 {row['previous_exact_p50_ms']:.1f} ms" if old_ms is not None else ""),
                  flush=True)
    print("| songs | exact p50 / p99 (ms) | FAISS p50 / p99 (ms) | FAISS recall@10 | index build (s) |")
    print("| --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['songs']:,} | {r['exact_p50_ms']:.2f} / {r['exact_p99_ms']:.2f} | {r['faiss_p50_ms']:.2f} / "
              f"{r['faiss_p99_ms']:.2f} | {r['faiss_recall@10']:.3f} | {r['index_build_s']} |")
    print(f"query embedding (all-MiniLM-L6-v2, one query): p50 {np.median(embed_ms):.1f} ms")
    big = rows[-1]
    report("search_latency", 1000 / big["faiss_p50_ms"], 1000 / big["exact_p50_ms"], "queries/s",
           f"at {big['songs']:,} songs FAISS answers in {big['faiss_p50_ms']:.2f} ms (p50) vs exact "
           f"{big['exact_p50_ms']:.2f} ms: {big['exact_p50_ms'] / big['faiss_p50_ms']:.1f}x, recall@10 "
           f"{big['faiss_recall@10']:.3f}", sizes=rows, query_embedding_p50_ms=float(np.median(embed_ms)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
