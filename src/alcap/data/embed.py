"""Extract frozen music embeddings for every distinct song of a manifest into a store.

Decoding and resampling run in DataLoader worker processes; the encoder runs in batches in
the main process. Songs already in the store are skipped, so an interrupted run resumes
where it stopped; a file that cannot be decoded is recorded with its reason and the rest of
its batch is embedded as usual.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..audio.decode import AudioError, Clip, Excerpt, load_audio
from ..audio.extractor import MusicExtractor
from ..utils import die_with_parent
from .store import EmbeddingWriter, StoreEntry, store_meta


@dataclass
class EmbedReport:
    store: str
    songs: int  # distinct songs asked for
    already_done: int
    embedded: int
    failures: list[dict] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def songs_per_second(self) -> float:
        return self.embedded / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {
            "store": self.store, "songs": self.songs, "already_done": self.already_done, "embedded": self.embedded,
            "failed": len(self.failures), "seconds": round(self.seconds, 3),
            "songs_per_second": round(self.songs_per_second, 3), "failures": self.failures,
        }


class _SongAudio(Dataset):
    """(song_id, path) -> (song_id, path, Clip or None, error or None); never raises on bad audio."""

    def __init__(self, songs: list[tuple[str, str]], sample_rate: int, excerpt: Excerpt):
        self.songs, self.sample_rate, self.excerpt = songs, sample_rate, excerpt

    def __len__(self) -> int:
        return len(self.songs)

    def __getitem__(self, i: int):
        song_id, path = self.songs[i]
        try:
            return song_id, path, load_audio(path, self.sample_rate, self.excerpt), None
        except AudioError as exc:
            return song_id, path, None, exc.reason
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the library
            return song_id, path, None, f"unexpected {type(exc).__name__}: {exc}"


def shard_of(song_ids, shard: int, num_shards: int) -> list[str]:
    """The songs of shard `shard` (0-based) of `num_shards`: every num_shards-th id in sorted
    order, so shards are disjoint, cover every song and differ in size by at most one, on
    any machine that reads the same manifest."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} of {num_shards} does not exist: shards are numbered 0..N-1 (e.g. --shard 0/4)")
    return sorted(set(map(str, song_ids)))[shard::num_shards]


def _decoding_worker(_: int) -> None:
    die_with_parent()  # a killed `alcap embed` must not leave workers behind
    torch.set_num_threads(1)  # decoding workers must not compete with the encoder's threads


def embed_songs(
    songs: dict[str, str],
    extractor: MusicExtractor,
    out_dir,
    excerpt: Excerpt = Excerpt(),
    batch_size: int = 16,
    workers: int = 2,
    progress: bool = True,
) -> EmbedReport:
    """Embed `songs` ({song_id: audio path}) into the store at `out_dir`, resuming if it exists."""
    meta = store_meta(extractor.identity(), extractor.sample_rate, excerpt.to_dict(), extractor.dim,
                      info={"extractor": extractor.describe()})
    started = time.perf_counter()
    with EmbeddingWriter.open(out_dir, meta) as writer:
        pending = [(str(sid), path) for sid, path in songs.items() if str(sid) not in writer]
        report = EmbedReport(store=str(out_dir), songs=len(songs), already_done=len(songs) - len(pending), embedded=0)
        if not pending:
            return report
        loader = DataLoader(
            _SongAudio(pending, extractor.sample_rate, excerpt), batch_size=batch_size, shuffle=False,
            num_workers=workers, collate_fn=list, worker_init_fn=_decoding_worker if workers else None,
        )
        bar = tqdm(total=len(pending), desc="embedding", unit="song", disable=not progress, dynamic_ncols=True)
        try:
            for batch in loader:
                good = []
                for song_id, path, clip, error in batch:
                    if error is None:
                        good.append((song_id, path, clip))
                    else:
                        writer.add_failure(song_id, path, error)
                        report.failures.append({"id": song_id, "audio": path, "reason": error})
                items = _embed_batch(extractor, good, report, writer)
                writer.add_batch(items)
                report.embedded += len(items)
                bar.update(len(batch))
                bar.set_postfix(failed=len(report.failures))
        finally:
            bar.close()
            report.seconds = time.perf_counter() - started
    return report


def _embed_batch(extractor: MusicExtractor, good: list[tuple[str, str, Clip]], report: EmbedReport, writer) -> list:
    items = []
    # Equal-length clips (the usual fixed excerpt) go through the encoder together.
    by_length: dict[int, list] = {}
    for entry in good:
        by_length.setdefault(len(entry[2].samples), []).append(entry)
    for group in by_length.values():
        waves = torch.from_numpy(np.stack([clip.samples for _, _, clip in group]))
        sequences = extractor.embed(waves).numpy()  # (B, L_m, dim)
        for (song_id, path, clip), seq in zip(group, sequences):
            if not np.isfinite(seq.astype(np.float16)).all():
                reason = "the encoder produced non-finite values"
                writer.add_failure(song_id, path, reason)
                report.failures.append({"id": song_id, "audio": path, "reason": reason})
                continue
            items.append((StoreEntry(
                id=song_id, offset=0, length=0, duration=round(clip.duration, 4), audio=path,
                source_duration=round(clip.source_duration, 4), source_sample_rate=clip.source_sample_rate,
                source_channels=clip.source_channels,
            ), seq))
    return items
