"""`alcap library add`: caption songs into a library, a batch at a time, resumable.

Worker processes hash and decode the files (DataLoader), ahead of the main process, which runs
the music encoder, caption generation (length-grouped batches) and the sentence model, then
commits the batch. Memory holds a few batches at a time, whatever the library's size.

A song's identity is its manifest `song_id`, else the sha256 of its file's bytes: a moved or
duplicated file is not captioned twice, and a changed file is captioned again (replacing the
song its path had).
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..audio.decode import AudioError, audio_info, load_audio
from ..data.embed import _decoding_worker, shard_of
from ..data.lyrics import sidecar_lyrics
from ..data.manifest import FORMATS, ManifestError, read_manifest
from ..utils import file_sha256, nested_differences
from .store import Library, LibraryError, Song

# First bytes of the audio formats the decoder reads: WAV, AIFF, FLAC, Ogg, MP3 (ID3 tag or a frame).
_MAGIC = (b"RIFF", b"FORM", b"fLaC", b"OggS", b"ID3")


def looks_like_audio(path: Path) -> bool:
    """Audio recognised by content, not by name (a directory may hold lyrics, covers, notes)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError:
        return False
    return head.startswith(_MAGIC) or (len(head) >= 2 and head[0] == 0xFF and head[1] & 0xE0 == 0xE0)


@dataclass
class SourceItem:
    path: str
    song_id: str | None = None  # from a manifest; else the file's sha256
    lyrics: str | None = None  # from a manifest; else the sidecar .txt/.lrc
    metadata: dict = field(default_factory=dict)
    problem: str | None = None  # why this source gives no song (a directory without audio)


def expand_sources(sources: list[str | SourceItem], splits: list[str] | None = None) -> tuple[list[SourceItem], list[str]]:
    """Audio files, directories (recursive, audio by content) and manifests -> items, plus
    one-line notes on what was left out (bad manifest rows). Items pass through as they are.
    `splits`: only manifest rows of these splits."""
    import glob

    items, notes = [], []
    for source in sources:
        if isinstance(source, SourceItem):
            items.append(source)
            continue
        path = Path(source)
        if not path.exists() and glob.has_magic(str(source)):  # a pattern the shell did not expand
            matches = sorted(glob.glob(str(source), recursive=True))
            if matches:
                more, more_notes = expand_sources(matches, splits)
                items, notes = items + more, notes + more_notes
                continue
        if path.is_dir():
            found = [SourceItem(str(f)) for f in sorted(path.rglob("*")) if f.is_file() and looks_like_audio(f)]
            items += found or [SourceItem(str(path), problem="is a directory with no audio files in it")]
        elif path.suffix.lower() in FORMATS and not looks_like_audio(path):
            try:
                manifest = read_manifest(path)
            except ManifestError as exc:
                raise ValueError(str(exc)) from None
            notes += [f"{path}:{issue.line}: {issue.message}" for issue in manifest.issues]
            seen = set()
            for row in manifest:
                if splits and row.split not in splits:
                    continue
                if row.song_id not in seen:  # a song with several captions has several rows
                    seen.add(row.song_id)
                    items.append(SourceItem(row.audio, row.song_id, row.lyrics or None, dict(row.extra)))
        else:
            items.append(SourceItem(str(path)))  # a bad file is that file's failure, not the run's
    return items, notes


ENGINES = ("local", "ray")  # who runs the stages: this machine's processes, or a Ray cluster (ray_engine.py)
WHOLE_TRACK = "whole track"  # in place of samples: the main process streams the file


class _Songs:
    """item -> ("skip" | "fail" | "ok", item, song_id, sha256, detail); never raises on a bad file."""

    def __init__(self, items: list[SourceItem], known: dict[str, str], sample_rate: int, excerpt,
                 precomputed: dict[str, float] | None = None, hash_files: bool = True, whole_tracks: bool = False):
        self.items, self.known, self.sample_rate, self.excerpt = items, known, sample_rate, excerpt
        self.precomputed = precomputed or {}  # song id -> duration, for songs whose h_m a store holds
        self.hash_files = hash_files  # a library needs each file's sha256; a caption file does not
        # Whole tracks are streamed by the main process, window by window (Captioner.embed_track):
        # workers check the header only, so no worker holds a whole track in memory.
        self.whole_tracks = whole_tracks

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        song_id, sha = item.song_id, None
        if item.problem:
            return "fail", item, song_id, sha, item.problem
        try:
            sha = file_sha256(item.path) if self.hash_files else None
            song_id = song_id or sha
            if sha is not None and self.known.get(song_id) == sha:
                return "skip", item, song_id, sha, None
            lyrics = item.lyrics if item.lyrics is not None else sidecar_lyrics(Path(item.path))
            if song_id in self.precomputed:  # the music encoder's output is in the store: no decoding
                return "ok", item, song_id, sha, (lyrics, None, self.precomputed[song_id])
            if self.whole_tracks:
                return "ok", item, song_id, sha, (lyrics, WHOLE_TRACK, audio_info(item.path).duration)
            clip = load_audio(item.path, self.sample_rate, self.excerpt)
            return "ok", item, song_id, sha, (lyrics, clip.samples, clip.source_duration)
        except AudioError as exc:
            return "fail", item, song_id, sha, exc.reason
        except (OSError, ValueError) as exc:  # unreadable file or lyrics sidecar
            return "fail", item, song_id, sha, str(exc)
        except Exception as exc:  # noqa: BLE001 - one bad file must not stop the library
            return "fail", item, song_id, sha, f"unexpected {type(exc).__name__}: {exc}"


@dataclass
class AddReport:
    library: str
    sources: int
    added: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)
    index: dict = field(default_factory=dict)  # how the library is searched after the run (`info`'s "index")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "songs_per_second": round(self.added / self.seconds, 3) if self.seconds else 0.0}


def library_identity(captioner, model_dir: str | Path, sentence_model: str | None, dim: int,
                     full_track: str | None = None) -> dict:
    """What the library's captions and vectors depend on; adding with anything else is refused."""
    from ..model.captioner import model_directory

    weights = model_directory(model_dir) / "model.safetensors"
    generation = {k: v for k, v in dataclasses.asdict(captioner.generation).items() if k != "batch_size"}
    encoder = captioner.extractor.identity()["weights_sha256"] if captioner.extractor is not None else None
    heard = {"full_track": full_track} if full_track and captioner.uses_music else {}  # absent: the excerpt
    held = {"quantize": captioner.quantize} if captioner.quantize != "none" else {}  # absent: float weights
    return {
        "captioning_model": {"weights_sha256": file_sha256(weights), "music_encoder_sha256": encoder,
                             "uses_music": captioner.uses_music, "excerpt": captioner.excerpt.to_dict(), **heard,
                             **held},
        "generation": generation,
        # The packaged default is named, not located: its path differs from one environment to the next.
        "sentence_model": {"name": sentence_model or "all-MiniLM-L6-v2 (packaged)", "path": sentence_model, "dim": dim},
    }


def add_songs(root: str | Path, model_dir: str | Path, sources: list[str | SourceItem], sentence_model: str | None = None,
              device: str = "auto", batch_size: int = 16, workers: int = 2, limit: int | None = None,
              shard: tuple[int, int] | None = None, index: str | None = None, splits: list[str] | None = None,
              embeddings: str | Path | None = None, full_track: str | None = None, quantize: str | None = None,
              engine: str = "local", ray_address: str | None = None, ray_actors: int = 1, ray_actor_cpus: float = 1.0,
              progress: bool = True) -> AddReport:
    """Caption every new or changed song of `sources` into the library at `root` (created if
    missing), then bring its vector index up to date (`index`: auto, exact or faiss; None keeps
    the library's choice, auto for a new one). `embeddings`: an embedding store made by
    `alcap embed` with the model's music encoder and excerpt, whose h_m of a manifest's songs
    (by song_id) are used instead of decoding and encoding their audio again. `full_track`: hear
    whole tracks (a mode of FULL_TRACK_MODES), and `quantize` ("int8": the captioner's linear
    layers for the CPU), both recorded in the library's identity. `engine` "ray" runs the
    stages on a Ray cluster (ray_engine.py: `ray_address`, else $RAY_ADDRESS, else a local
    instance; `ray_actors` captioners of `ray_actor_cpus` CPUs each, or a GPU each where the
    cluster has GPUs); this process still commits, so either engine resumes the other's job."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    from tqdm.auto import tqdm

    from ..inference import Captioner
    from ..metrics.retrieval import SentenceEncoder
    from ..model.captioner import model_directory

    items, notes = expand_sources(sources, splits)
    if shard is not None:
        chosen = set(shard_of([item.path for item in items], *shard))
        items = [item for item in items if item.path in chosen]
    items = items[:limit] if limit else items
    # A library records absolute paths: its songs are searched and served from anywhere.
    items = [dataclasses.replace(item, path=os.path.abspath(item.path)) for item in items]
    # With Ray the actors caption; this process only needs the model's identity, on the CPU.
    captioner = Captioner.from_pretrained(model_dir, device="cpu" if engine == "ray" else device, quantize=quantize)
    captioner.generation = captioner.generation.with_overrides(batch_size=batch_size, num_return_sequences=1)
    encoder = SentenceEncoder(sentence_model, device=str(captioner.device))
    dim = int(encoder.model.get_embedding_dimension())
    identity = library_identity(captioner, model_dir, sentence_model, dim, full_track)
    if embeddings and full_track:
        raise ValueError("--embeddings holds one excerpt per song; it cannot be used with --full-track")
    store = _matching_store(embeddings, captioner) if embeddings else None
    precomputed = {} if store is None else {
        item.song_id: store.entry(item.song_id).source_duration or store.entry(item.song_id).duration
        for item in items if item.song_id is not None and item.song_id in store}
    report = AddReport(library=str(root), sources=len(items), notes=notes)
    started = time.perf_counter()
    ray_started = False
    if engine == "ray":
        from .ray_engine import connect

        ray_started = connect(ray_address)
    with Library.open(root, identity, write=True) as library:
        library._encoder = encoder
        known, by_path = library.known(), library.paths()
        failed_before = {f["path"] for f in library.failures()}
        bar = tqdm(total=len(items), desc="library add", unit="song", disable=not progress, dynamic_ncols=True)
        if engine == "ray":
            from .ray_engine import ray_caption_stream

            songs = song_reader(captioner, items, known, precomputed, full_track=full_track)
            stream = ray_caption_stream(items, songs, str(model_directory(model_dir)), device, quantize,
                                        captioner.generation.batch_size, str(embeddings) if embeddings else None,
                                        full_track, ray_actors, ray_actor_cpus, decoders=workers)
        else:
            stream = caption_stream(captioner, items, workers=workers, known=known, precomputed=precomputed,
                                    store=store, full_track=full_track)
        try:
            for batch in stream:
                for song in batch:
                    if song.error is not None:
                        library.add_failure(song.item.path, song.error, song.song_id)
                        report.failed += 1
                    elif song.skipped:
                        report.skipped += 1
                library.clear_failures([s.item.path for s in batch if s.skipped and s.item.path in failed_before])
                report.added += _commit(library, encoder, [s for s in batch if s.caption is not None], known, by_path)
                bar.update(len(batch))
                bar.set_postfix(added=report.added, failed=report.failed)
            bar.close()
            report.index = library.update_index(index, progress=progress)
        finally:
            bar.close()
            report.seconds = round(time.perf_counter() - started, 3)
            if ray_started:
                import ray

                ray.shutdown()
    return report


def _matching_store(path: str | Path, captioner):
    """The embedding store at `path`, if its h_m are what the captioner's music encoder makes."""
    from ..data.store import EmbeddingStore

    if captioner.extractor is None:
        raise ValueError(f"--embeddings {path}: the model is lyrics-only; it uses no music embeddings")
    store = EmbeddingStore.open(path)
    ours = {"extractor": captioner.extractor.identity(), "sample_rate": captioner.extractor.sample_rate,
            "excerpt": captioner.excerpt.to_dict()}
    diffs = nested_differences({k: store.meta[k] for k in ours}, ours)
    if diffs:
        detail = "; ".join(f"{k}: store has {a!r}, the model has {b!r}" for k, a, b in diffs[:4])
        raise ValueError(f"--embeddings {path}: made with another music encoder or excerpt than the model's ({detail})")
    return store


@dataclass
class Captioned:
    """One source item after the pipeline: its caption, or why not, or skipped (already done)."""

    item: SourceItem
    song_id: str | None
    sha256: str | None
    lyrics: str = ""
    duration: float | None = None
    caption: str | list[str] | None = None  # a list with generation.num_return_sequences > 1
    error: str | None = None
    skipped: bool = False


def caption_stream(captioner, items: list[SourceItem], workers: int = 2, known: dict[str, str] | None = None,
                   precomputed: dict[str, float] | None = None, store=None, hash_files: bool = True,
                   full_track: str | None = None):
    """The streaming pipeline of `library add` and `alcap caption`: worker processes hash and
    decode the files ahead of this one, which runs the music encoder and caption generation
    (length-grouped batches of `captioner.generation.batch_size`). Yields each batch's
    Captioned items in input order. `known`: id -> sha256 of songs to skip; a song met twice
    is captioned once. `full_track`: a mode of FULL_TRACK_MODES to hear whole tracks, not the
    trained excerpt."""
    from torch.utils.data import DataLoader

    songs = song_reader(captioner, items, known or {}, precomputed, hash_files, full_track)
    loader = DataLoader(songs, batch_size=captioner.generation.batch_size, shuffle=False, num_workers=workers,
                        collate_fn=list, worker_init_fn=_decoding_worker if workers else None)
    seen: set[str] = set()  # ids captioned or queued in this run (a file listed twice)
    for batch in loader:
        results, good = [], []
        for status, item, song_id, sha, detail in batch:
            song = Captioned(item, song_id, sha)
            if status == "skip" or (song_id is not None and song_id in seen):
                song.skipped = True
            elif status == "fail":
                song.error = detail
            else:
                song.lyrics, samples, song.duration = detail
                good.append((song, samples))
                if song_id is not None:
                    seen.add(song_id)
            results.append(song)
        _generate(captioner, good, store, full_track)
        yield results


def song_reader(captioner, items: list[SourceItem], known: dict[str, str], precomputed: dict[str, float] | None,
                hash_files: bool = True, full_track: str | None = None) -> _Songs:
    """The decoding stage of either engine, for `captioner`'s music encoder and excerpt."""
    whole = full_track is not None and captioner.uses_music
    if whole and precomputed:
        raise ValueError("whole tracks cannot come from an embedding store, which holds one excerpt per song")
    rate = captioner.extractor.sample_rate if captioner.extractor is not None else 16000
    return _Songs(items, known, rate, captioner.excerpt, precomputed, hash_files, whole_tracks=whole)


def _generate(captioner, good: list[tuple[Captioned, np.ndarray | str | None]], store, full_track=None) -> None:
    """Captions for decoded songs (samples None: h_m from the store; WHOLE_TRACK: streamed from
    the file here); a file that fails while streamed, or non-finite h_m, is the song's error."""
    music = None
    if captioner.uses_music:
        excerpts = {i: samples for i, (_, samples) in enumerate(good) if isinstance(samples, np.ndarray)}
        embedded = captioner.embed_music(excerpts)
        embedded.update({i: store.get(song.song_id) for i, (song, samples) in enumerate(good) if samples is None})
        for i, (song, samples) in enumerate(good):
            if isinstance(samples, str):
                try:
                    embedded[i] = captioner.embed_track(song.item.path, full_track)[0]
                except AudioError as exc:
                    song.error = exc.reason
        for i, (song, _) in enumerate(good):
            if song.error is None and not np.isfinite(embedded[i]).all():
                song.error = "the music encoder produced non-finite values"
        keep = [i for i in range(len(good)) if good[i][0].error is None]
        good, music = [good[i] for i in keep], [embedded[i] for i in keep]
    if good:
        for (song, _), caption in zip(good, captioner.caption_embeddings([s.lyrics for s, _ in good], music)):
            song.caption = caption


def _commit(library: Library, encoder, captioned: list[Captioned], known: dict, by_path: dict) -> int:
    """The batch's captions with their sentence vectors, in one commit; songs whose file changed replaced."""
    if not captioned:
        return 0
    vectors = encoder.encode([s.caption for s in captioned])
    songs, replaces = [], []
    for c in captioned:
        songs.append(Song(id=c.song_id, path=c.item.path, caption=c.caption, lyrics=c.lyrics, sha256=c.sha256,
                          duration=round(float(c.duration), 3), metadata=c.item.metadata))
        if c.song_id in known:  # the same id, another file's bytes (a manifest id whose file changed)
            replaces.append(c.song_id)
        old = by_path.get(c.item.path)
        if old is not None and old != c.song_id:  # the file at this path changed
            replaces.append(old)
    library.add_batch(songs, vectors, replaces=list(dict.fromkeys(replaces)))
    for song in songs:
        known[song.id] = song.sha256
        by_path[song.path] = song.id
    return len(songs)


def recaption(root: str | Path, model_dir: str | Path, sentence_model: str | None = None, device: str = "auto",
              batch_size: int = 16, workers: int = 2, progress: bool = True) -> AddReport:
    """Caption every song of the library again with another model (and sentence model), into a
    new library beside it (LIB.recaption, resumable), which replaces LIB only once every song is
    in it. Songs keep their ids, paths, lyrics and metadata; the library is locked meanwhile."""
    import os
    import shutil

    root = Path(root)
    fresh, old = root.with_name(root.name + ".recaption"), root.with_name(root.name + ".replaced")
    if old.is_dir():  # a run killed while swapping the two directories
        if (root / "library.sqlite").is_file():
            shutil.rmtree(old)  # the swap was done; only the clean-up was not
        else:
            os.replace(old, root)  # back to the original; the redone songs are still in `fresh`
    with Library.open(root, write=True) as library:  # held to the end: no add meanwhile
        policy = library.index_policy()
        heard = library.identity["captioning_model"]
        full_track, quantize = heard.get("full_track"), heard.get("quantize")  # heard and held as before
        items = [SourceItem(s.path, s.id, s.lyrics, s.metadata) for s in library.songs()]
        report = add_songs(fresh, model_dir, items, sentence_model=sentence_model, device=device,
                           batch_size=batch_size, workers=workers, index=policy, full_track=full_track,
                           quantize=quantize, progress=progress)
        with Library.open(fresh) as done:
            wanted = {item.song_id for item in items}
            stale = [s.id for s in done.songs() if s.id not in wanted]  # removed from LIB since an earlier run
        if stale:
            with Library.open(fresh, write=True) as done:
                done.remove(stale)
        with Library.open(fresh) as done:
            missing = len(wanted) - len(done)
            if missing:
                raise LibraryError(
                    f"{missing} of the {len(items)} songs could not be captioned again (`alcap library failures "
                    f"{fresh}` lists why); {root} is unchanged. Fix them, or `alcap library remove {root}` them, "
                    "then run the same command again: the songs already redone are kept")
        os.replace(root, old)
        os.replace(fresh, root)
    shutil.rmtree(old)
    report.library = str(root)
    report.notes.append(f"every song of {root} was captioned again with {model_dir}")
    return report
