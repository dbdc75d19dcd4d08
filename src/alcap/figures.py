"""What the music side learned, drawn: fusion attention maps (the paper's Figure 3) and the
music-lyrics alignment diagnostics (similarity matrix and the retrieval accuracy it implies)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import load_run_config
from .data.dataset import pad_music
from .data.manifest import read_manifest
from .data.store import EmbeddingStore
from .evaluate import songs_with_references
from .metrics.retrieval import cosine_similarity, retrieval_metrics
from .model.captioner import AlcapModel
from .style import method_colour


@dataclass
class Inspected:
    name: str
    song_ids: list[str]
    tokens: list[list[str]]  # per song, the lyric tokens shown (specials dropped)
    attentions: list[np.ndarray]  # per song, (tokens, music steps) of the chosen fusion layer
    z_music: np.ndarray  # (songs, music_dim)
    z_lyrics: np.ndarray  # (songs, music_dim)
    # The music axis in seconds: each step's length, and whether step 0 is a CLS summary, not
    # a moment (CNNSA's sequence starts with one); None: steps only (the excerpt's length unknown).
    step_seconds: list[float | None] | None = None
    leading_cls: bool = False


def model_name(model_dir: Path) -> str:
    """runs/demo/alcap/best -> "alcap"; runs/x/alcap/seed-2020/best -> "alcap seed-2020"."""
    parts = [p for p in model_dir.resolve().parts if p not in ("best", "last")]
    return f"{parts[-2]} {parts[-1]}" if parts[-1].startswith("seed-") else parts[-1]


@torch.no_grad()
def inspect_model(model_dir: str | Path, split: str = "test", songs: int | None = None, song_ids: list[str] | None = None,
                  layer: int = -1, batch_size: int = 32, with_lyrics: bool = False) -> Inspected:
    """Run the encoder of a music model over a split's songs from its embedding store.
    `with_lyrics`: only songs that have lyrics (attention maps have a row per lyric token, so
    an instrumental has none); a song named in `song_ids` without lyrics is refused."""
    from transformers import AutoTokenizer

    model_dir = Path(model_dir)
    run = load_run_config(model_dir)
    model = AlcapModel.from_pretrained(model_dir)
    if not model.config.use_music:
        raise ValueError(f"{model_dir} is a lyrics-only model: it has no fusion attention or alignment head")
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    store = EmbeddingStore.open(run.data.embeddings)
    items = [(s["song_id"], s["lyrics"]) for s in songs_with_references(read_manifest(run.data.manifest).split(split))]
    if not items:
        raise ValueError(f"no songs in split {split!r} of {run.data.manifest}")
    if song_ids:
        lyrics_of = dict(items)
        missing = [s for s in song_ids if s not in lyrics_of]
        if missing:
            raise ValueError(f"song(s) {', '.join(missing)} not in split {split!r} of {run.data.manifest}")
        items = [(s, lyrics_of[s]) for s in song_ids]
        instrumentals = [s for s, lyrics in items if with_lyrics and not lyrics.strip()]
        if instrumentals:
            raise ValueError(f"song(s) {', '.join(instrumentals)} have no lyrics, so no attention map (one row per "
                             "lyric token); pick songs with lyrics")
    elif with_lyrics:
        items = [(s, lyrics) for s, lyrics in items if lyrics.strip()]
        if not items:
            raise ValueError(f"no song of split {split!r} of {run.data.manifest} has lyrics: attention maps need them")
    items = items[:songs]
    store.require([s for s, _ in items], f"songs of split {split!r}")
    excerpt_seconds = (store.meta.get("excerpt") or {}).get("seconds")
    leading_cls = store.meta["extractor"]["name"] == "cnnsa"
    tokens, attentions, z_m, z_t, step_seconds = [], [], [], [], []
    for start in range(0, len(items), batch_size):
        chunk = items[start:start + batch_size]
        enc = tokenizer([lyr for _, lyr in chunk], padding=True, truncation=True, max_length=run.data.max_lyrics_tokens,
                        return_tensors="pt")
        music, mask = pad_music([store.get(s) for s, _ in chunk])
        maps, zm, zt = model.inspect(enc["input_ids"], enc["attention_mask"], music, mask)
        z_m.append(zm.numpy())
        z_t.append(zt.numpy())
        chosen = maps[layer]
        for i, ids in enumerate(enc["input_ids"]):
            keep = [j for j, t in enumerate(ids.tolist()) if enc["attention_mask"][i, j] and t not in tokenizer.all_special_ids]
            n_music = int(mask[i].sum())
            tokens.append([_clean(t) for t in tokenizer.convert_ids_to_tokens(ids[keep].tolist())])
            attentions.append(chosen[i][keep][:, :n_music].numpy())
            moments = n_music - leading_cls
            step_seconds.append(excerpt_seconds / moments if excerpt_seconds and moments > 0 else None)
    return Inspected(model_name(model_dir), [s for s, _ in items], tokens, attentions,
                     np.concatenate(z_m), np.concatenate(z_t), step_seconds, leading_cls)


def _clean(token: str) -> str:
    """Byte-level BPE marks a leading space with Ġ and a newline with Ċ."""
    return token.replace("Ġ", " ").replace("Ċ", "\\n").strip() or "·"


def attention_figure(models: list[Inspected], out: str | Path, max_tokens: int = 40) -> str:
    """One row per model, one column per song: lyric tokens (y) x music time in seconds (x).
    Every panel shares one colour scale (0 to the largest weight shown), with one labelled
    colour bar, so maps compare across models and songs; row titles are in the method's colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_songs = len(models[0].song_ids)
    shown = [[m.attentions[c][:max_tokens] for c in range(n_songs)] for m in models]
    top = max(float(w.max()) for row in shown for w in row)
    fig, axes = plt.subplots(len(models), n_songs, figsize=(4.2 * n_songs + 0.8, 0.16 * max_tokens * len(models) + 1.4),
                             dpi=110, squeeze=False)
    image = None
    for r, inspected in enumerate(models):
        for c in range(n_songs):
            ax, weights = axes[r][c], shown[r][c]
            step = (inspected.step_seconds or [None] * n_songs)[c]
            cls = int(inspected.leading_cls)
            if step:  # columns as time: a CLS column sits left of 0 s
                extent = (-cls * step, (weights.shape[1] - cls) * step, len(weights) - 0.5, -0.5)
                ax.set_xlabel("music time (s)" + (" · CLS left of 0" if cls else ""), fontsize=7)
            else:
                extent = (-0.5, weights.shape[1] - 0.5, len(weights) - 0.5, -0.5)
                ax.set_xlabel("music time step", fontsize=7)
            image = ax.imshow(weights, aspect="auto", cmap="viridis", interpolation="nearest", vmin=0.0, vmax=top,
                              extent=extent)
            ax.set_yticks(range(len(weights)))
            ax.set_yticklabels(inspected.tokens[c][:max_tokens], fontsize=5)
            ax.tick_params(axis="x", labelsize=6)
            ax.set_title(f"{inspected.name} | {inspected.song_ids[c]}", fontsize=8, color=method_colour(inspected.name),
                         fontweight="bold")
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
    bar.set_label("attention weight (each token's weights sum to 1; one scale for all panels)", fontsize=7)
    bar.ax.tick_params(labelsize=6)
    # Just above the panels (their titles included): matplotlib's default height for a title
    # leaves a band of ~12% of a tall figure empty.
    panels_top = max(ax.get_position().y1 for ax in axes.ravel())
    fig.suptitle("fusion cross-attention: lyric tokens attending over the music", fontsize=9,
                 y=panels_top + 0.4 / fig.get_figheight(), va="bottom")
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return str(out)


def alignment_diagnostics(inspected: Inspected) -> tuple[np.ndarray, dict]:
    """The songs x songs cosine similarity of z_m (rows) and z_t (columns), and music->lyrics
    retrieval over it (recall@k, mean rank, MRR; chance recall@1 is 1 / songs)."""
    similarity = cosine_similarity(inspected.z_music, inspected.z_lyrics)
    metrics = retrieval_metrics(similarity, ks=(1, 5, 10))
    metrics["chance_recall@1"] = 1.0 / len(similarity)
    metrics["diagonal_minus_off_diagonal"] = float(np.diag(similarity).mean() -
                                                   similarity[~np.eye(len(similarity), dtype=bool)].mean())
    return similarity, metrics


def alignment_figure(results: list[tuple[Inspected, np.ndarray, dict]], out: str | Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.2 * len(results) + 0.8, 4.8), dpi=110, squeeze=False)
    low = min(float(similarity.min()) for _, similarity, _ in results)
    high = max(float(similarity.max()) for _, similarity, _ in results)
    image = None
    for ax, (inspected, similarity, metrics) in zip(axes[0], results):
        image = ax.imshow(similarity, cmap="magma", interpolation="nearest", vmin=low, vmax=high)
        ax.set_title(f"{inspected.name}: music->lyrics R@1 {metrics['recall@1']:.2f} "
                     f"(chance {metrics['chance_recall@1']:.2f})", fontsize=8, color=method_colour(inspected.name),
                     fontweight="bold")
        ax.set_xlabel("lyrics of song j (z_t)", fontsize=7)
        ax.set_ylabel("music of song i (z_m)", fontsize=7)
    bar = fig.colorbar(image, ax=axes.ravel().tolist(), fraction=0.03, pad=0.02)
    bar.set_label("cosine similarity (one scale for all panels)", fontsize=7)
    fig.suptitle("alignment head: cosine similarity, matching pairs on the diagonal", fontsize=9)
    fig.savefig(out, bbox_inches="tight")
    plt.close(fig)
    return str(out)


def save_inspection(inspected: Inspected, similarity: np.ndarray, metrics: dict, out_dir: Path) -> None:
    """The numbers behind the figures, for scripting: JSON metrics and an .npz of the arrays."""
    stem = inspected.name.replace(" ", "_")
    np.savez(out_dir / f"{stem}.npz", song_ids=np.array(inspected.song_ids), z_music=inspected.z_music,
             z_lyrics=inspected.z_lyrics, similarity=similarity)
    (out_dir / f"{stem}.json").write_text(json.dumps({"model": inspected.name, **metrics}, indent=2) + "\n")
