import numpy as np
import pytest
import torch

from alcap.data.dataset import CaptionCollator, CaptionDataset, pad_music
from alcap.data.manifest import ManifestRow
from alcap.data.store import EmbeddingStore, EmbeddingWriter, StoreEntry, store_meta
from alcap.model.backbone import train_bpe_tokenizer

ROWS = [
    ManifestRow(1, "s1", "a.wav", "la la love", "a slow love song", "train"),
    ManifestRow(2, "s1", "a.wav", "la la love", "about being in love, quite a long caption here", "train"),
    ManifestRow(3, "s2", "b.wav", "", "an instrumental", "train"),
    ManifestRow(4, "s3", "c.wav", "x", "", "train"),  # no caption: not a training row
]


@pytest.fixture
def store(tmp_path):
    meta = store_meta({"name": "t", "weights_sha256": "0", "dim": 256}, 16000, {"seconds": 15.0}, 256)
    with EmbeddingWriter.open(tmp_path, meta) as w:
        w.add_batch([(StoreEntry("s1", 0, 0, 15.0), np.ones((5, 256))), (StoreEntry("s2", 0, 0, 15.0), 2 * np.ones((3, 256)))])
    return EmbeddingStore.open(tmp_path)


def test_dataset_joins_rows_and_embeddings(store):
    ds = CaptionDataset(ROWS, store)
    assert len(ds) == 3 and ds[0]["song_index"] == ds[1]["song_index"] != ds[2]["song_index"]
    assert ds[2]["music"].shape == (3, 256)


def test_missing_embeddings_are_named(store):
    rows = ROWS + [ManifestRow(5, "s9", "z.wav", "", "c", "train")]
    from alcap.data.store import StoreError

    with pytest.raises(StoreError, match=r"no embedding for 1 of the \d+ songs of these rows: s9\. Run `alcap embed`"):
        CaptionDataset(rows, store)


def test_collator_pads_to_the_batch_and_masks_labels(store):
    tok = train_bpe_tokenizer([r.lyrics + " " + r.caption for r in ROWS] * 5, vocab_size=300, min_frequency=1)
    batch = CaptionCollator(tok)([CaptionDataset(ROWS, store)[i] for i in range(3)])
    longest_caption = max(len(tok(r.caption)["input_ids"]) for r in ROWS[:3])
    assert batch["labels"].shape == (3, longest_caption)  # dynamic padding, not 512
    assert (batch["labels"] == -100).sum() == (3 * longest_caption - sum(len(tok(r.caption)["input_ids"]) for r in ROWS[:3]))
    assert batch["music"].shape == (3, 5, 256) and batch["music"].dtype == torch.float32
    assert batch["music_mask"].tolist()[2] == [1, 1, 1, 0, 0]
    assert batch["song_ids"].tolist()[0] == batch["song_ids"].tolist()[1]
    truncated = CaptionCollator(tok, max_lyrics_tokens=4, max_caption_tokens=5)([CaptionDataset(ROWS, store)[1]])
    assert truncated["input_ids"].shape[1] <= 4 and truncated["labels"].shape[1] <= 5


def test_pad_music():
    music, mask = pad_music([np.ones((2, 3), np.float16), np.ones((4, 3), np.float16)])
    assert music.shape == (2, 4, 3) and mask.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]] and music[0, 2:].abs().sum() == 0


def test_length_grouped_batches_are_full_similar_and_cover_every_row():
    from alcap.data.dataset import LengthGroupedSampler

    rng = np.random.default_rng(0)
    lengths = rng.integers(10, 2000, size=203).tolist()
    sampler = LengthGroupedSampler(lengths, batch_size=8, seed=3, group_batches=5)
    order = list(sampler)
    assert sorted(order) == list(range(203)) and len(sampler) == 203
    batches = [order[i:i + 8] for i in range(0, 203, 8)]
    assert all(len(b) == 8 for b in batches[:-1]) and len(batches[-1]) == 203 % 8
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches[:-1]])
    random_spread = np.mean([np.ptp(rng.choice(lengths, 8)) for _ in range(200)])
    assert spread < random_spread / 3  # rows of a batch have similar lengths
    # Same (seed, epoch) -> same order; another epoch -> another order.
    assert list(LengthGroupedSampler(lengths, 8, seed=3, group_batches=5)) == order
    sampler.set_epoch(1)
    assert list(sampler) != order
    # Batches are shuffled, not sorted from longest to shortest.
    means = [np.mean([lengths[i] for i in b]) for b in batches[:-1]]
    assert means != sorted(means, reverse=True) and means != sorted(means)


def test_token_lengths_are_what_the_collator_pads_to(store):
    tok = train_bpe_tokenizer([r.lyrics + " " + r.caption for r in ROWS] * 5, vocab_size=300, min_frequency=1)
    ds = CaptionDataset(ROWS, store)
    lengths = ds.token_lengths(tok, max_lyrics_tokens=4, max_caption_tokens=8)
    collate = CaptionCollator(tok, max_lyrics_tokens=4, max_caption_tokens=8)
    for i in range(len(ds)):
        batch = collate([ds[i]])
        assert lengths[i].tolist() == [batch["input_ids"].shape[1], batch["labels"].shape[1]]


def padded_tokens_per_row(sampler, lengths) -> float:
    return sum(len(b) * lengths[b].max(axis=0).sum() for b in sampler.batches()) / len(lengths)


def test_grouping_by_both_lengths_pads_less_than_by_their_sum():
    from alcap.data.dataset import LengthGroupedSampler

    # SI-like: most lyrics truncated at the 512 cap, captions long-tailed.
    rng = np.random.default_rng(0)
    lyrics = np.where(rng.random(2600) < 0.6, 512, rng.integers(100, 400, 2600))
    captions = np.clip(rng.lognormal(np.log(100), 0.7, 2600), 10, 512).astype(int)
    lengths = np.stack([lyrics, captions], axis=1)
    both = padded_tokens_per_row(LengthGroupedSampler(lengths, 26, seed=0), lengths)
    by_sum = padded_tokens_per_row(LengthGroupedSampler(lengths.sum(axis=1), 26, seed=0), lengths)
    unsorted = padded_tokens_per_row(LengthGroupedSampler(np.zeros(2600), 26, seed=0), lengths)
    real = lengths.sum(axis=1).mean()
    assert real < both < 1.15 * real  # padding under 15% of the real tokens
    assert both < 0.9 * by_sum and by_sum < unsorted
    assert sorted(np.concatenate(LengthGroupedSampler(lengths, 26, seed=0).batches()).tolist()) == list(range(2600))
