"""`alcap probe`: how much of each attribute a music encoder's embeddings carry.

A linear probe: each song's h_m averaged over time, standardised, and a logistic regression
(scikit-learn) trained to predict a manifest column, scored by stratified k-fold
cross-validation. It compares encoders on the same songs before any captioner is trained:
what a probe cannot read linearly, the fusion block will struggle to learn from a few hundred songs.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .data.manifest import read_manifest
from .data.store import EmbeddingStore


def pooled_embeddings(store: EmbeddingStore, song_ids: list[str]) -> np.ndarray:
    return np.stack([store.get(s).mean(axis=0) for s in song_ids])


def linear_probe(store_dir: str | Path, manifest: str | Path, columns: list[str], splits: list[str] | None = None,
                 folds: int = 5, seed: int = 0) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    store = EmbeddingStore.open(store_dir)
    values: dict[str, dict[str, str]] = {}
    for row in read_manifest(manifest).rows:
        if (not splits or row.split in splits) and row.song_id in store and row.song_id not in values:
            values[row.song_id] = {k: str(v) for k, v in row.extra.items()}
    songs = sorted(values)
    if not songs:
        raise ValueError(f"no songs of {manifest}{' in splits ' + ', '.join(splits) if splits else ''} are in {store_dir}")
    features = pooled_embeddings(store, songs)
    results = {}
    for column in columns:
        labelled = [i for i, s in enumerate(songs) if values[s].get(column, "").strip()]
        if not labelled:
            raise ValueError(f"{manifest}: no song has a value in column {column!r}")
        y = np.array([values[songs[i]][column] for i in labelled])
        counts = Counter(y)
        k = min(folds, min(counts.values()))
        if len(counts) < 2 or k < 2:
            results[column] = {"songs": len(y), "classes": len(counts), "accuracy": None, "note": "too few songs per value"}
            continue
        probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
        scores = cross_val_score(probe, features[labelled], y, cv=StratifiedKFold(k, shuffle=True, random_state=seed))
        results[column] = {"songs": len(y), "classes": len(counts), "folds": k, "accuracy": float(scores.mean()),
                           "std": float(scores.std()), "majority": max(counts.values()) / len(y)}
    return {"store": str(store_dir), "encoder": store.meta["extractor"]["name"],
            "source": store.meta.get("info", {}).get("extractor", {}).get("weights_source", ""),
            "songs": len(songs), "splits": splits or "all", "columns": results}


def format_probe(reports: list[dict]) -> list[str]:
    columns = list(reports[0]["columns"])
    lines = ["| store (encoder) | songs | " + " | ".join(columns) + " |", "| --- | --- |" + " --- |" * len(columns)]
    for r in reports:
        cells = []
        for c in columns:
            res = r["columns"].get(c, {})
            cells.append("n/a" if res.get("accuracy") is None else f"{res['accuracy']:.0%} ± {res['std']:.0%}")
        lines.append(f"| {r['store']} ({r['encoder']}) | {r['songs']} | " + " | ".join(cells) + " |")
    majority = [f"{reports[0]['columns'][c].get('majority', 0):.0%}" for c in columns]
    lines.append("| majority class | | " + " | ".join(majority) + " |")
    return lines
