"""Training rows -> tensors: the dataset joins manifest rows with stored music embeddings,
the collator tokenises and pads each batch to its own longest row (no padding to 512)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from .manifest import ManifestRow
from .store import EmbeddingStore


class CaptionDataset(Dataset):
    """One item per (song, caption) row: lyrics, caption, the song's h_m and an integer song index.

    The song index is the same for every row of a song (and in every process), so the
    contrastive loss can tell copies of one song apart from negatives.
    """

    def __init__(self, rows: list[ManifestRow], store: EmbeddingStore | None = None):
        self.rows = [r for r in rows if r.caption]
        self.store = store
        songs = sorted({r.song_id for r in self.rows})
        self.song_index = {s: i for i, s in enumerate(songs)}
        if store is not None:
            store.require(songs, "songs of these rows")
            for song_id in songs:  # one pass over the rows now, so a damaged song fails before training
                store[song_id]

    def __len__(self) -> int:
        return len(self.rows)

    def token_lengths(self, tokenizer, max_lyrics_tokens: int, max_caption_tokens: int) -> np.ndarray:
        """(rows, 2): lyrics and caption tokens per row as the collator will truncate them; each
        distinct lyric is tokenised once (a song's lyrics repeat in all its rows)."""
        def lengths(texts: list[str], cap: int) -> list[int]:
            return list(map(len, tokenizer(texts, truncation=True, max_length=cap)["input_ids"])) if texts else []

        lyrics = sorted({r.lyrics for r in self.rows})
        counts = dict(zip(lyrics, lengths(lyrics, max_lyrics_tokens)))
        captions = lengths([r.caption for r in self.rows], max_caption_tokens)
        return np.array([[counts[r.lyrics], c] for r, c in zip(self.rows, captions)], dtype=np.int64).reshape(-1, 2)

    def __getitem__(self, i: int) -> dict:
        row = self.rows[i]
        item = {"song_id": row.song_id, "song_index": self.song_index[row.song_id], "lyrics": row.lyrics,
                "caption": row.caption}
        if self.store is not None:
            item["music"] = self.store[row.song_id]  # (L_m, 256) float16 view, copied by the collator
        return item


@dataclass
class CaptionCollator:
    tokenizer: object
    max_lyrics_tokens: int = 512
    max_caption_tokens: int = 512
    pad_to_multiple_of: int | None = None  # length buckets, for compiled steps (data.pad_to_multiple_of)

    def __call__(self, items: list[dict]) -> dict:
        lyrics = self.tokenizer([it["lyrics"] for it in items], padding=True, truncation=True,
                                max_length=self.max_lyrics_tokens, pad_to_multiple_of=self.pad_to_multiple_of,
                                return_tensors="pt")
        captions = self.tokenizer([it["caption"] for it in items], padding=True, truncation=True,
                                  max_length=self.max_caption_tokens, pad_to_multiple_of=self.pad_to_multiple_of,
                                  return_tensors="pt")
        labels = captions["input_ids"].masked_fill(captions["attention_mask"] == 0, -100)
        batch = {"input_ids": lyrics["input_ids"], "attention_mask": lyrics["attention_mask"], "labels": labels,
                 "song_ids": torch.tensor([it["song_index"] for it in items])}
        if "music" in items[0]:
            batch["music"], batch["music_mask"] = pad_music([it["music"] for it in items])
        return batch


def pad_music(arrays: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
    """(L_i, D) arrays -> (B, max L, D) float32 and a (B, max L) mask with 1 at real steps."""
    longest = max(a.shape[0] for a in arrays)
    out = np.zeros((len(arrays), longest, arrays[0].shape[1]), dtype=np.float32)
    mask = np.zeros((len(arrays), longest), dtype=np.int64)
    for i, a in enumerate(arrays):
        out[i, : len(a)] = a
        mask[i, : len(a)] = 1
    return torch.from_numpy(out), torch.from_numpy(mask)


class LengthGroupedSampler(Sampler[int]):
    """Random batches of rows of similar length, so dynamic padding pads little.

    `lengths` are (lyrics, caption) token counts per row, already capped at the truncation
    lengths (or one number per row). A batch costs its longest lyrics plus its longest caption,
    so rows are ordered by lyrics length in bins of `lyrics_bin` tokens and, within a bin, by
    caption length: lyrics at the cap, common in real data, then share batches with captions of
    their length. On SI-like lengths this pads far less than sorting by the summed length
    (`tests/data/test_dataset.py` checks it; `benchmarks/train_throughput.py` reports it).

    Each epoch: shuffle all rows, cut them into groups of `batch_size * group_batches`, order
    each group as above, cut it into batches, and shuffle the order of all batches (the one
    short batch, if any, goes last so every other batch stays full). The order depends only on
    (seed, epoch): `set_epoch` is called by the trainer, so a resumed run sees the same batches.
    """

    def __init__(self, lengths, batch_size: int, seed: int = 0, group_batches: int = 100, lyrics_bin: int = 128):
        lengths = np.asarray(lengths)
        self.lengths = lengths if lengths.ndim == 2 else np.stack([np.zeros_like(lengths), lengths], axis=1)
        self.batch_size, self.seed, self.group_batches, self.lyrics_bin = batch_size, seed, group_batches, lyrics_bin
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def batches(self) -> list[np.ndarray]:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        group = self.batch_size * self.group_batches
        batches = []
        for start in range(0, len(order), group):
            chunk = order[start:start + group]
            lyrics, caption = self.lengths[chunk, 0] // self.lyrics_bin, self.lengths[chunk, 1]
            chunk = chunk[np.lexsort((-caption, -lyrics))]
            batches += [chunk[i:i + self.batch_size] for i in range(0, len(chunk), self.batch_size)]
        short = [b for b in batches if len(b) < self.batch_size]
        full = [b for b in batches if len(b) == self.batch_size]
        return [full[i] for i in rng.permutation(len(full))] + short

    def __iter__(self):
        for batch in self.batches():
            yield from batch.tolist()

    def __len__(self) -> int:
        return len(self.lengths)
