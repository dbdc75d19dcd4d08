"""`alcap evaluate`: caption a split from stored embeddings, score against all references."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .data.manifest import read_manifest
from .data.store import EmbeddingStore
from .inference import Captioner
from .metrics.attributes import AttributeWords, attribute_accuracy
from .metrics.captioning import caption_scores
from .metrics.retrieval import SentenceEncoder, text_to_music_retrieval

PREDICTIONS_FILE, METRICS_FILE, RETRIEVAL_FILE = "predictions.jsonl", "metrics.json", "retrieval.npz"


def evaluate_model(model_dir: str | Path, split: str = "test", manifest: str | None = None, embeddings: str | None = None,
                   out_dir: str | Path | None = None, num_beams: int | None = None, max_new_tokens: int | None = None,
                   limit: int | None = None, progress: bool = True, retrieval: bool = True,
                   retrieval_model: str | None = None, query_seed: int = 0, mixed_precision: str | None = None,
                   batch_size: int | None = None, attribute_words: str | None = None, quantize: str | None = None,
                   compile: bool | None = None) -> dict:
    """One prediction per song of `split`, scored against every caption of that song, and
    text-to-music retrieval over the split (one reference sentence per song as the query).

    Decoding follows the run's generation config; `num_beams`, `max_new_tokens`,
    `mixed_precision`, `batch_size` and `compile` override it; `quantize` ("int8") quantises the
    captioner's linear layers for the CPU.
    """
    model_dir = Path(model_dir)
    captioner = Captioner.from_pretrained(model_dir, quantize=quantize)
    run = captioner.run
    captioner.generation = captioner.generation.with_overrides(
        num_beams=num_beams, max_new_tokens=max_new_tokens, mixed_precision=mixed_precision, batch_size=batch_size,
        compile=compile)
    manifest = manifest or run.data.manifest
    rows = read_manifest(manifest).split(split)
    if not rows:
        raise ValueError(f"no rows in split {split!r} of {manifest}")
    items = songs_with_references(rows)[:limit]
    store = EmbeddingStore.open(embeddings or run.data.embeddings) if captioner.uses_music else None
    if store is not None:
        store.require([s["song_id"] for s in items], f"songs of split {split!r}")
    words = AttributeWords.for_manifest(manifest, attribute_words or run.data.attribute_words)
    predictions, metrics, per_song = caption_and_score(captioner, items, store, progress=progress, words=words)
    metrics.update({"split": split, "model": str(model_dir), "quantize": captioner.quantize})
    out = Path(out_dir or model_dir / f"eval-{split}")
    out.mkdir(parents=True, exist_ok=True)
    if retrieval:
        scores, data = text_to_music_retrieval(predictions, [s["references"] for s in items],
                                               SentenceEncoder(retrieval_model), seed=query_seed)
        metrics["retrieval"] = scores
        np.savez(out / RETRIEVAL_FILE, song_ids=np.array([s["song_id"] for s in items]),
                 queries=np.array(data["queries"]), query_embeddings=data["query_embeddings"],
                 caption_embeddings=data["caption_embeddings"])
    with open(out / PREDICTIONS_FILE, "w", encoding="utf-8") as f:
        for i, (item, pred) in enumerate(zip(items, predictions)):
            f.write(json.dumps({"song_id": item["song_id"], "lyrics": item["lyrics"], "references": item["references"],
                                "prediction": pred, "scores": {k: v[i] for k, v in per_song.items()}},
                               ensure_ascii=False) + "\n")
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
    metrics["output_dir"] = str(out)
    return metrics


def songs_with_references(rows) -> list[dict]:
    """One item per song (in manifest order) with every reference caption it has; songs without any are left out."""
    songs: dict[str, dict] = {}
    for row in rows:
        song = songs.setdefault(row.song_id, {"song_id": row.song_id, "lyrics": row.lyrics, "references": [],
                                              "attributes": {k: str(v) for k, v in row.extra.items()}})
        if row.caption:
            song["references"].append(row.caption)
    return [s for s in songs.values() if s["references"]]


def caption_and_score(captioner: Captioner, items: list[dict], store: EmbeddingStore | None,
                      progress: bool = False, words: AttributeWords | None = None
                      ) -> tuple[list[str], dict, dict[str, list[float]]]:
    """Caption `items` from the store's embeddings and score them: (captions, metrics, each
    song's scores); shared by evaluation and validation. Attributes are scored with `words`
    (the corpus's own, see metrics/attributes.py), or not at all."""
    music = [store.get(s["song_id"]) for s in items] if captioner.uses_music else None
    predictions = captioner.caption_embeddings([s["lyrics"] for s in items], music, progress=progress)
    metrics, per_song = caption_scores(predictions, [s["references"] for s in items])
    generation = captioner.generation
    used = generation.mixed_precision if generation.autocast_dtype(captioner.device) else "no"  # as decoded
    metrics.update({"songs": len(items), "generation": {**generation.kwargs(), "batch_size": generation.batch_size,
                                                        "mixed_precision": used}})
    scored = attribute_accuracy(items, predictions, words)
    if scored:
        metrics["attribute_accuracy"] = scored["accuracy"]
        metrics["attribute_chance"] = scored["chance"]
        metrics["attribute_words"] = words.source
        if "invented" in scored:
            metrics["attribute_invented"] = scored["invented"]
    return predictions, metrics, per_song
