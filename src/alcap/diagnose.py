"""`alcap diagnose swap`: does each attribute a caption states follow the music or the lyrics?

Every song of a split is captioned twice: with its own music, and with its own lyrics but
another song's music (a fixed random derangement). For each attribute the corpus has words
for (metrics/attributes.py), it reports how often the own caption is right and, over the
pairs whose two songs differ in that attribute, how often the swapped caption states the
music song's value and how often the lyrics song's. A model that reads both states the
instrument from the music and the theme from the lyrics.

It also measures, per fusion layer, how much the fusion moves the lyric states: the norm of
the residual update against that of the states entering the block, the change made by the
block's LayerNorm alone (zero update), and the change of the block as a whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .data.dataset import pad_music
from .data.manifest import read_manifest
from .data.store import EmbeddingStore
from .evaluate import songs_with_references
from .inference import Captioner
from .metrics.attributes import AttributeWords

SWAP_FILE, SWAP_CAPTIONS_FILE = "swap.json", "swap.jsonl"


def derangement(n: int, seed: int = 0) -> list[int]:
    """A random permutation without fixed points: song i gets song partner[i]'s music."""
    if n < 2:
        raise ValueError("swapping music needs at least 2 songs")
    order = np.random.default_rng(seed).permutation(n)
    partner = [0] * n
    for k in range(n):  # a random cycle through all songs
        partner[int(order[k])] = int(order[(k + 1) % n])
    return partner


def swap_table(items: list[dict], own: list[str], swapped: list[str], partner: list[int],
               words: AttributeWords) -> dict[str, dict]:
    """Per attribute: own captions right, and whether swapped captions follow music or lyrics."""
    table = {}
    for attribute, values in words.words.items():
        truth = [it["attributes"].get(attribute) for it in items]
        valid = [i for i, t in enumerate(truth) if t in values]
        if not valid:
            continue
        own_right = [words.is_right(attribute, words.stated(own[i])[attribute], truth[i]) for i in valid]
        pairs = [i for i in valid if truth[partner[i]] in values and truth[partner[i]] != truth[i]]
        stated = {i: words.stated(swapped[i])[attribute] for i in pairs}
        music = sum(words.is_right(attribute, stated[i], truth[partner[i]]) for i in pairs)
        lyrics = sum(words.is_right(attribute, stated[i], truth[i]) for i in pairs)
        table[attribute] = {
            "songs": len(valid), "own_right": sum(own_right) / len(valid), "pairs": len(pairs),
            "follows_music": music / len(pairs) if pairs else None,
            "follows_lyrics": lyrics / len(pairs) if pairs else None,
            "neither": (len(pairs) - music - lyrics) / len(pairs) if pairs else None,
        }
    return table


@torch.no_grad()
def fusion_update_norms(captioner: Captioner, lyrics: list[str], music: list[np.ndarray], batch_size: int = 16) -> list[dict]:
    """Per fusion layer, means over real lyric tokens of ||update|| / ||h||, ||LN(h) - h|| / ||h||
    (the original block's LayerNorm alone; 0 for fusion_norm "update", which leaves h to BART)
    and ||block(h) - h|| / ||h||, h being the lyric states entering the block."""
    model, calls = captioner.model, []

    def hook(block, args, output):
        text, music_states, music_mask = args[0], args[1], args[2]
        update, _ = block.update(text, music_states, music_mask)
        calls.append((block, text, update, output[0]))

    handles = [block.register_forward_hook(hook) for block in model.fusion]
    sums = np.zeros((len(model.config.fusion_layers), 3))
    tokens = 0
    try:
        for start in range(0, len(lyrics), batch_size):
            enc = captioner.tokenizer(lyrics[start:start + batch_size], truncation=True, padding=True,
                                      max_length=captioner.max_lyrics_tokens, return_tensors="pt").to(captioner.device)
            m, mask = pad_music([np.asarray(x) for x in music[start:start + batch_size]])
            calls.clear()
            model.encode(enc["input_ids"], enc["attention_mask"], model._prepare_music(m.to(captioner.device)),
                         mask.to(captioner.device))
            real = enc["attention_mask"].bool()
            for k, (block, text, update, fused) in enumerate(calls):
                h, norm = text[real], text[real].norm(dim=-1)
                # Only the original ("post") block puts the lyric states through its LayerNorm.
                alone = (block.layer_norm(text)[real] - h).norm(dim=-1) / norm if block.norm == "post" else norm * 0
                sums[k] += [float((update[real].norm(dim=-1) / norm).sum()), float(alone.sum()),
                            float(((fused[real] - h).norm(dim=-1) / norm).sum())]
            tokens += int(real.sum())
    finally:
        for handle in handles:
            handle.remove()
    means = sums / max(tokens, 1)
    return [{"layer": layer, "update_over_states": round(float(u), 4), "layernorm_alone": round(float(ln), 4),
             "block_change": round(float(c), 4)} for layer, (u, ln, c) in zip(model.config.fusion_layers, means)]


def swap_diagnostic(model_dir: str | Path, split: str = "test", manifest: str | None = None,
                    embeddings: str | None = None, attribute_words: str | None = None, seed: int = 0,
                    limit: int | None = None, num_beams: int | None = None, out_dir: str | Path | None = None,
                    progress: bool = False) -> dict:
    captioner = Captioner.from_pretrained(model_dir)
    captioner.generation = captioner.generation.with_overrides(num_beams=num_beams)
    run = captioner.run
    manifest = manifest or run.data.manifest
    words = AttributeWords.for_manifest(manifest, attribute_words or run.data.attribute_words)
    if words is None:
        raise ValueError(f"{manifest}: no attributes.json beside it says which words state each attribute value; "
                         "give one with --attributes FILE (format: README, 'Attribute words')")
    items = songs_with_references(read_manifest(manifest).split(split))[:limit]
    if len(items) < 2:
        raise ValueError(f"split {split!r} of {manifest} has {len(items)} songs with captions; the swap needs 2 or more")
    partner = derangement(len(items), seed)
    lyrics = [it["lyrics"] for it in items]
    music = None
    if captioner.uses_music:
        store = EmbeddingStore.open(embeddings or run.data.embeddings)
        store.require([it["song_id"] for it in items], f"songs of split {split!r}")
        music = [store.get(it["song_id"]) for it in items]
    own = captioner.caption_embeddings(lyrics, music, progress=progress)
    swapped = captioner.caption_embeddings(lyrics, [music[j] for j in partner], progress=progress) if music else own
    report = {
        "model": str(model_dir), "split": split, "songs": len(items), "seed": seed, "attribute_words": words.source,
        "uses_music": captioner.uses_music, "attributes": swap_table(items, own, swapped, partner, words),
        "fusion": fusion_update_norms(captioner, lyrics, music) if music else [],
    }
    out = Path(out_dir or Path(model_dir) / f"diagnose-swap-{split}")
    out.mkdir(parents=True, exist_ok=True)
    (out / SWAP_FILE).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    with open(out / SWAP_CAPTIONS_FILE, "w", encoding="utf-8") as f:
        for i, item in enumerate(items):
            f.write(json.dumps({"song_id": item["song_id"], "music_of": items[partner[i]]["song_id"],
                                "own": own[i], "swapped": swapped[i]}, ensure_ascii=False) + "\n")
    report["output_dir"] = str(out)
    return report


def format_swap_report(report: dict) -> list[str]:
    def pct(x):
        return "   -" if x is None else f"{x:4.0%}"

    lines = [f"{report['model']} ({report['split']}, {report['songs']} songs; swapped music from another song)",
             "  attribute    own right   pairs   follows music   follows lyrics   neither"]
    for name, row in report["attributes"].items():
        lines.append(f"  {name:<12} {pct(row['own_right']):>9} {row['pairs']:>7} {pct(row['follows_music']):>15} "
                     f"{pct(row['follows_lyrics']):>16} {pct(row['neither']):>9}")
    for layer in report["fusion"]:
        lines.append(f"  fusion after layer {layer['layer']}: update / lyric states {layer['update_over_states']:.3f}; "
                     f"LayerNorm alone moves them {layer['layernorm_alone']:.3f}; the block {layer['block_change']:.3f}")
    if not report["uses_music"]:
        lines.append("  (a lyrics-only model: swapping the music changes nothing)")
    return lines
