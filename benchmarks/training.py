"""Shared set-up of the training benchmarks: SI-like synthetic rows, the two data paths, the model."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
from common import synchronize  # a sibling script: the benchmarks put their folder on sys.path

from alcap.data.dataset import CaptionCollator, LengthGroupedSampler
from alcap.model.backbone import load_backbone
from alcap.model.captioner import AlcapConfig, AlcapModel

MAX_TOKENS = 512
BART_VOCAB = 50265  # facebook/bart-base's vocabulary: its output layer is a real share of a step


def vocabulary(n: int = 300) -> list[str]:
    """Letters-only words ("baa", "bab", ...): the byte-level BPE makes each one token (digits
    would be split off), so word counts are token counts."""
    return ["".join(chr(97 + (i // 26 ** k) % 26) for k in (2, 1, 0)) for i in range(26 * 26, 26 * 26 + n)]


def synthetic_rows(n: int, seed: int = 0) -> list[dict]:
    """Token lengths: lyrics 60% at or past the 512 cap, the rest 100-400; captions log-normal,
    median ~100, at most 512."""
    rng = np.random.default_rng(seed)
    words = vocabulary()
    rows = []
    for i in range(n):
        n_lyrics = int(rng.integers(480, 700)) if rng.random() < 0.6 else int(rng.integers(100, 400))
        n_caption = int(np.clip(rng.lognormal(np.log(100), 0.7), 10, MAX_TOKENS - 2))
        rows.append(row(i, rng, words, n_lyrics, n_caption))
    return rows


def row(i: int, rng: np.random.Generator, words: list[str], n_lyrics: int, n_caption: int) -> dict:
    return {"song_id": f"s{i // 3}", "song_index": i // 3, "lyrics": " ".join(rng.choice(words, n_lyrics)),
            "caption": " ".join(rng.choice(words, n_caption)),
            "music": rng.standard_normal((119, 256)).astype(np.float16)}


class PadToMax(CaptionCollator):
    """The original's naive data path: every batch padded to the maximum lengths."""

    def __call__(self, items):
        lyr = self.tokenizer([it["lyrics"] for it in items], padding="max_length", truncation=True,
                             max_length=self.max_lyrics_tokens, return_tensors="pt")
        cap = self.tokenizer([it["caption"] for it in items], padding="max_length", truncation=True,
                             max_length=self.max_caption_tokens, return_tensors="pt")
        labels = cap["input_ids"].masked_fill(cap["attention_mask"] == 0, -100)
        music = torch.from_numpy(np.stack([it["music"] for it in items]).astype(np.float32))
        return {"input_ids": lyr["input_ids"], "attention_mask": lyr["attention_mask"], "labels": labels,
                "music": music, "music_mask": torch.ones(music.shape[:2], dtype=torch.long),
                "song_ids": torch.tensor([it["song_index"] for it in items])}


def add_bart_vocab_arg(parser) -> None:
    parser.add_argument("--bart-vocab", action="store_true",
                        help="embeddings and LM head with BART's 50,265 rows, as a real bart-base (default: the "
                             "synthetic tokenizer's, about 700)")


def build_model(preset: str, rows: list[dict], seed: int = 0, bart_vocab: bool = False):
    """ALCAP (random init, fusion on the last two encoder layers) and its tokenizer.

    The tokenizer is a small BPE trained on the synthetic words (about 700 tokens). `bart_vocab`
    gives the embeddings and the LM head BART's 50,265 rows, so the output layer and its
    softmax cost what they cost a real user (the padded path's batch-26 step then needs more
    than 24 GiB on a CPU: logits and their gradients alone are 26 x 512 x 50,265 floats each)."""
    torch.manual_seed(seed)
    bart, tokenizer = load_backbone(preset, [r["lyrics"] for r in rows[:200]] + [r["caption"] for r in rows[:200]],
                                    vocab_size=1000)
    if bart_vocab:
        bart.resize_token_embeddings(BART_VOCAB, mean_resizing=False)
    layers = bart.config.encoder_layers
    return AlcapModel(AlcapConfig(fusion_layers=[layers - 2, layers - 1]), bart).train(), tokenizer


def ours_batches(rows: list[dict], tokenizer, batch_size: int, steps: int, pad_to_multiple_of: int | None = None) -> list[dict]:
    """alcap's data path: length-grouped batches, each padded to its own longest row.

    A few timed steps must stand for a whole epoch, whose batches range from short to full
    length, so the `steps` batches are a stratified sample: those at the quantiles
    (i + 0.5) / steps of the epoch's batches ordered by padded size. `pad_to_multiple_of`:
    lengths rounded up to buckets, as data.pad_to_multiple_of does for compiled steps."""
    collate = CaptionCollator(tokenizer, MAX_TOKENS, MAX_TOKENS, pad_to_multiple_of)
    return [collate([rows[i] for i in b]) for b in stratified_batches(rows, tokenizer, batch_size, steps)]


def stratified_batches(rows: list[dict], tokenizer, batch_size: int, steps: int) -> list[np.ndarray]:
    """Row indices of `steps` of alcap's length-grouped batches of an epoch over `rows`: those at
    the quantiles (i + 0.5) / steps of the epoch's full batches ordered by padded size."""
    lengths = token_lengths(rows, tokenizer)
    batches = [b for b in LengthGroupedSampler(lengths, batch_size, seed=0).batches() if len(b) == batch_size]
    by_size = sorted(batches, key=lambda b: lengths[b].max(axis=0).sum())
    return [by_size[int((i + 0.5) / steps * len(by_size))] for i in range(steps)]


def token_lengths(rows: list[dict], tokenizer) -> np.ndarray:
    """(rows, 2) lyrics and caption tokens, capped as the collator truncates."""
    def lengths(texts: list[str]) -> list[int]:
        return list(map(len, tokenizer(texts, truncation=True, max_length=MAX_TOKENS)["input_ids"]))

    return np.array([lengths([r["lyrics"] for r in rows]), lengths([r["caption"] for r in rows])]).T


def naive_batches(rows: list[dict], tokenizer, batch_size: int, steps: int) -> list[dict]:
    """The original's: random batches, every lyric and caption padded to 512 tokens."""
    collate = PadToMax(tokenizer, MAX_TOKENS, MAX_TOKENS)
    order = np.random.default_rng(0).permutation(len(rows))
    return [collate([rows[i] for i in order[k * batch_size:(k + 1) * batch_size]]) for k in range(steps)]


def epoch_padding(rows: list[dict], tokenizer, batch_size: int, multiple: int | None = None) -> tuple[float, float]:
    """Over a whole epoch of alcap's batches: mean tokens per row as padded (to `multiple`s,
    if given), and real ones (the naive path pads every row to 512 + 512 = 1024)."""
    lengths = token_lengths(rows, tokenizer)
    sampler = LengthGroupedSampler(lengths, batch_size, seed=0)
    step = multiple or 1
    padded = sum(len(b) * (-(-lengths[b].max(axis=0) // step) * step).sum() for b in sampler.batches())
    return padded / len(rows), lengths.sum() / len(rows)


def run_steps(model, optimizer, batches, device: str = "cpu", autocast: torch.dtype | None = None,
              full_logits: bool = False) -> tuple[float, int, int]:
    """Seconds for the training steps (forward, backward, update), rows and real (non-padding)
    tokens; `autocast` e.g. torch.bfloat16 on a GPU, as `train.mixed_precision: bf16` does.
    alcap's step computes the caption loss on the labelled positions only (`alcap train`'s);
    `full_logits`: HF's loss over logits at every position, padding included (the original's)."""
    rows = tokens = 0
    device_type = torch.device(device).type
    synchronize(device)
    start = time.perf_counter()
    for batch in batches:
        batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device_type, dtype=autocast, enabled=autocast is not None):
            output = model(**batch, return_logits=full_logits)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        rows += batch["input_ids"].shape[0]
        tokens += real_tokens(batch)
    synchronize(device)
    return time.perf_counter() - start, rows, tokens


def real_tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum() + (batch["labels"] != -100).sum())


def padded_tokens(batch: dict) -> int:
    return batch["input_ids"].numel() + batch["labels"].numel()


def write_data(root: Path, rows: list[dict]) -> tuple[Path, Path]:
    """The rows as a manifest and an embedding store, as `alcap train` reads them (the store
    says a random-init CNNSA made it, so the exported models carry an encoder)."""
    from alcap.audio.decode import Excerpt
    from alcap.audio.extractor import CNNSAExtractor
    from alcap.data.store import EmbeddingWriter, StoreEntry, store_meta

    manifest = root / "manifest.jsonl"
    with open(manifest, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps({"song_id": r["song_id"], "audio": f"{r['song_id']}.wav", "lyrics": r["lyrics"],
                                "caption": r["caption"], "split": "train"}) + "\n")
    extractor = CNNSAExtractor.random_init(0, device="cpu")
    meta = store_meta(extractor.identity(), extractor.sample_rate, Excerpt().to_dict(), extractor.dim,
                      info={"extractor": extractor.describe()})
    songs = {r["song_id"]: r["music"][:, :extractor.dim] for r in rows}
    with EmbeddingWriter.open(root / "store", meta) as writer:
        writer.add_batch([(StoreEntry(id=s, offset=0, length=0, duration=15.0, audio=f"{s}.wav"), m)
                          for s, m in songs.items()])
    return manifest, root / "store"
