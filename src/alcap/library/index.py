"""Nearest caption vectors: exact over the float16 matrix, or an approximate FAISS index.

Exact search reads the memory-mapped matrix with one float16 matrix-vector product (torch's CPU
kernel, 6 ms per 100k rows on 2 cores), then re-scores the best candidates in float32 so that
the order is the float32 cosine order. From `policy.AUTO_ROWS` songs on (or when asked)
`alcap library add` builds an inverted-file index (FAISS IVF, vectors stored as float16, inner product on the unit
vectors), persisted as LIB/index.faiss. Its centroids are trained once; later adds only assign
the new rows to lists, and the index is retrained when the library has grown 4x since. Its
`nprobe` is the smallest that finds >= 95% of the exact top 10 for library vectors used as
queries, and that recall is stored and shown by `alcap library info`.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np

INDEX_FILE = "index.faiss"
TARGET_RECALL = 0.95
NPROBES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
RETRAIN_GROWTH = 4  # retrain the centroids once the library has 4x the rows they were trained on
CHUNK = 65536


def exact_top(matrix: np.ndarray, query: np.ndarray, k: int, rows: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The `k` best `rows` of `matrix` (all rows when None) for `query` by cosine, best first,
    ties by row. Screened in float16, then the candidates re-scored in float32."""
    import torch

    n = len(matrix) if rows is None else len(rows)
    if n == 0 or k <= 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.float32)
    query = np.asarray(query, dtype=np.float32)
    q16 = torch.from_numpy(query.astype(np.float16))
    coarse = np.empty(n, dtype=np.float32)
    for start in range(0, n, CHUNK):  # bounded memory: a gathered slice at a time when rows are given
        part = matrix[start:start + CHUNK] if rows is None else matrix[rows[start:start + CHUNK]]
        coarse[start:start + len(part)] = torch.mv(torch.from_numpy(np.asarray(part)), q16).float().numpy()
    depth = min(n, k + max(k, 64))  # float16 errors are ~1e-4; the margin keeps every true top-k row
    candidates = np.argpartition(-coarse, depth - 1)[:depth] if depth < n else np.arange(n)
    picked = np.sort(candidates if rows is None else rows[candidates])  # sorted: memmap reads in file order
    scores = np.asarray(matrix[picked], dtype=np.float32) @ query
    order = np.lexsort((picked, -scores))[:k]
    return picked[order].astype(np.int64), scores[order]


class VectorIndex:
    """A FAISS IVF index over the first `ntotal` rows of a library's matrix (ids = rows)."""

    def __init__(self, index, meta: dict):
        self.index, self.meta = index, meta

    @property
    def rows(self) -> int:
        return int(self.index.ntotal)

    # ------------------------------------------------------------------ building

    @classmethod
    def build(cls, matrix: np.ndarray, seed: int = 0, progress: bool = False) -> "VectorIndex":
        faiss = _faiss()
        n, dim = matrix.shape
        # FAISS's guidelines: 4..16 sqrt(N) lists, and k-means wants >= 39 training points per list
        nlist = max(1, min(65536, int(4 * math.sqrt(n)), n // 39))
        train_rows = min(n, 64 * nlist)
        sample = np.sort(np.random.default_rng(seed).choice(n, size=train_rows, replace=False))
        quantizer = faiss.IndexFlatIP(dim)
        index = faiss.IndexIVFScalarQuantizer(quantizer, dim, nlist, faiss.ScalarQuantizer.QT_fp16,
                                              faiss.METRIC_INNER_PRODUCT)
        index.cp.seed = seed
        started = time.perf_counter()
        index.train(np.asarray(matrix[sample], dtype=np.float32))
        built = cls(index, {"kind": "faiss-ivf-fp16", "nlist": nlist, "trained_rows": int(train_rows),
                            "trained_on_rows": int(n), "seed": seed, "nprobe": 1})
        built.extend(matrix, progress=progress)
        built.meta["build_seconds"] = round(time.perf_counter() - started, 2)
        return built

    def extend(self, matrix: np.ndarray, progress: bool = False) -> int:
        """Add the matrix rows the index does not hold yet; returns how many."""
        from tqdm.auto import tqdm

        start, n = self.rows, len(matrix)
        bar = tqdm(total=n - start, unit="vec", desc="index", disable=not progress or n - start < CHUNK)
        for first in range(start, n, CHUNK):
            part = np.asarray(matrix[first:first + CHUNK], dtype=np.float32)
            self.index.add_with_ids(part, np.arange(first, first + len(part), dtype=np.int64))
            bar.update(len(part))
        bar.close()
        return n - start

    def needs_retraining(self, rows: int) -> bool:
        """Whether a matrix of `rows` rows has outgrown the centroids (trained on far fewer)."""
        return rows >= RETRAIN_GROWTH * int(self.meta["trained_on_rows"])

    def tune(self, matrix: np.ndarray, live_rows: np.ndarray, k: int = 10, queries: int = 200, seed: int = 0) -> dict:
        """Pick the smallest nprobe whose recall@k against exact search is >= TARGET_RECALL, on
        library vectors as queries (each query's own row excluded), and record it."""
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(live_rows, size=min(queries, len(live_rows)), replace=False))
        live = np.zeros(len(matrix), dtype=bool)
        live[live_rows] = True
        vectors = np.asarray(matrix[picked], dtype=np.float32)
        among = None if len(live_rows) == len(matrix) else live_rows  # None: no gathered copy of every row
        truth = [[r for r in exact_top(matrix, v, k + 1, among)[0].tolist() if r != row][:k]
                 for v, row in zip(vectors, picked.tolist())]
        for nprobe in NPROBES:
            if nprobe > self.meta["nlist"]:
                break
            found = self.search(vectors, k + 1, nprobe=nprobe, live=live)
            hits = sum(len(set(t) & set(f)) for t, f in zip(truth, found))
            recall = hits / max(1, sum(len(t) for t in truth))
            self.meta.update({"nprobe": nprobe, f"recall@{k}": round(recall, 4), "recall_queries": len(picked)})
            if recall >= TARGET_RECALL:
                break
        return self.meta

    def search(self, queries: np.ndarray, k: int, nprobe: int | None = None, live: np.ndarray | None = None) -> list[list[int]]:
        """Row ids of the approximate `k` best rows per query, best first; rows where the boolean
        mask `live` is False (removed songs) are skipped."""
        faiss = _faiss()
        params = faiss.SearchParametersIVF(nprobe=nprobe or int(self.meta["nprobe"]))
        want = min(k, self.rows)
        while True:
            _, ids = self.index.search(np.ascontiguousarray(queries, dtype=np.float32), want, params=params)
            out = [[int(i) for i in row if i >= 0 and (live is None or live[i])][:k] for row in ids]
            if live is None or all(len(o) == k for o in out) or want >= self.rows:
                return out
            want = min(self.rows, want * 4)

    # ------------------------------------------------------------------ storage

    def save(self, root: Path) -> None:
        """Atomically: a reader sees the old index or the new one, never half of one."""
        faiss = _faiss()
        tmp = Path(root) / (INDEX_FILE + ".tmp")
        faiss.write_index(self.index, str(tmp))
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, Path(root) / INDEX_FILE)
        meta = Path(root) / (INDEX_FILE + ".json.tmp")
        meta.write_text(json.dumps({**self.meta, "rows": self.rows}, indent=2) + "\n")
        os.replace(meta, Path(root) / (INDEX_FILE + ".json"))

    @classmethod
    def load(cls, root: Path) -> "VectorIndex | None":
        path = Path(root) / INDEX_FILE
        if not path.is_file():
            return None
        faiss = _faiss()
        index = faiss.read_index(str(path))
        meta_path = Path(root) / (INDEX_FILE + ".json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        if meta.get("rows") != index.ntotal:  # killed between the two writes: the numbers are the old index's
            meta = {**meta, "nprobe": meta.get("nprobe", 32), "recall@10": None}
        meta.setdefault("trained_on_rows", index.ntotal)
        return cls(index, {**meta, "nlist": int(index.nlist)})


def _faiss():
    try:
        import faiss
    except ImportError:
        raise ImportError("an approximate index needs faiss: pip install faiss-cpu") from None
    return faiss
