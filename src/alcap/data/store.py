"""On-disk store of frozen music embeddings: one memory-mapped float16 array plus an index.

Layout of a store directory:
    store.json       what produced the embeddings (extractor identity, weights hash,
                     sample rate, excerpt rule); a writer with other settings is refused
    embeddings.f16   all songs' (L_m, dim) arrays back to back, float16, row-major
    index.jsonl      one line per song: id, first row, number of rows, durations, source file
    failures.jsonl   songs that could not be embedded, with the reason (retried on resume)

Crash safety comes from the write order: a batch's rows are appended to the data file and
fsync'ed before its index lines are. An interrupted run therefore leaves at most rows no
index line points to (truncated by the next writer) or a torn last index line (ignored and
truncated), and loses at most the batch in flight.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from ..utils import nested_differences

STORE_FORMAT = "alcap-embedding-store"
STORE_VERSION = 1
META_FILE, DATA_FILE, INDEX_FILE, FAILURES_FILE, LOCK_FILE = (
    "store.json", "embeddings.f16", "index.jsonl", "failures.jsonl", ".lock",
)
DTYPE = np.dtype("<f2")
# Fields of store.json that must agree before embeddings may be mixed in one store.
IDENTITY_FIELDS = ("format", "version", "dim", "dtype", "sample_rate", "excerpt", "extractor")


class StoreError(Exception):
    pass


class StoreMismatchError(StoreError):
    pass


class NonFiniteEmbeddingError(StoreError):
    pass


@dataclass
class StoreEntry:
    id: str
    offset: int  # first row in embeddings.f16
    length: int  # number of rows, L_m
    duration: float  # seconds of real audio in the excerpt (the rest was zero padding)
    audio: str = ""
    source_duration: float | None = None
    source_sample_rate: int | None = None
    source_channels: int | None = None


def store_meta(extractor_identity: dict, sample_rate: int, excerpt: dict, dim: int, info: dict | None = None) -> dict:
    """store.json content for a new store; `info` holds fields that are recorded, not compared."""
    from .. import __version__

    return {
        "format": STORE_FORMAT, "version": STORE_VERSION, "dim": int(dim), "dtype": "float16",
        "sample_rate": int(sample_rate), "excerpt": dict(excerpt), "extractor": dict(extractor_identity),
        "info": {"alcap_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **(info or {})},
    }


def _read_meta(root: Path) -> dict:
    path = root / META_FILE
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise StoreError(f"{root}: not an embedding store (no {META_FILE}); create one with `alcap embed`") from None
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: unreadable ({exc})") from None
    if meta.get("format") != STORE_FORMAT:
        raise StoreError(f"{path}: not an alcap embedding store (format {meta.get('format')!r})")
    if meta.get("version") != STORE_VERSION:
        raise StoreError(f"{path}: store version {meta.get('version')} is not supported (this alcap reads {STORE_VERSION})")
    return meta


def _read_index(root: Path, dim: int) -> tuple[dict[str, StoreEntry], int, int]:
    """Entries whose rows are fully on disk, plus the byte length of the good index prefix and the row count."""
    data_rows = (root / DATA_FILE).stat().st_size // (dim * DTYPE.itemsize) if (root / DATA_FILE).exists() else 0
    entries: dict[str, StoreEntry] = {}
    good_bytes = used_rows = 0  # songs' rows are appended in index order, so each starts where the last ended
    path = root / INDEX_FILE
    if path.exists():
        with open(path, "rb") as f:
            for raw in f:
                if not raw.endswith(b"\n"):
                    break  # torn last line from an interrupted write
                try:
                    entry = StoreEntry(**json.loads(raw))
                    valid = (isinstance(entry.offset, int) and isinstance(entry.length, int)
                             and entry.offset >= 0 and entry.length >= 1)
                except (json.JSONDecodeError, TypeError) as exc:
                    raise StoreError(f"{path}: corrupt index line {raw[:80]!r} ({exc})") from None
                if valid and entry.offset + entry.length > data_rows:
                    break  # index written without its rows: cannot happen with our write order
                if not valid or entry.offset < used_rows:
                    raise StoreError(f"{path}: corrupt index line {raw[:80]!r} (rows {entry.offset}+{entry.length} "
                                     f"are not after the previous song's, which end at row {used_rows}); the store "
                                     "was edited or damaged: rebuild it with `alcap embed`")
                entries[entry.id] = entry
                good_bytes += len(raw)
                used_rows = entry.offset + entry.length
    return entries, good_bytes, used_rows


class EmbeddingStore:
    """Read access to a store made by `alcap embed`: `EmbeddingStore.open(dir)[song_id]` -> the
    song's (L_m, dim) float16 music embeddings; `get(song_id)` as float32; `meta` says which
    encoder, sample rate and excerpt made them, `failures()` which songs could not be embedded.

    Lookups are O(1): a dict from song id to rows of one memory-mapped array, no copy.
    """

    def __init__(self, root: Path, meta: dict, entries: dict[str, StoreEntry], rows: int):
        self.root, self.meta, self._entries = root, meta, entries
        self.dim = int(meta["dim"])
        self._data = (
            np.memmap(root / DATA_FILE, dtype=DTYPE, mode="r", shape=(rows, self.dim)) if rows
            else np.zeros((0, self.dim), dtype=DTYPE)
        )

    @classmethod
    def open(cls, root: str | Path) -> "EmbeddingStore":
        root = Path(root)
        meta = _read_meta(root)
        entries, _, rows = _read_index(root, int(meta["dim"]))
        return cls(root, meta, entries, rows)

    def __getitem__(self, song_id: str) -> np.ndarray:
        """The song's rows; NaN or infinite values (a damaged file) are refused here, where they
        enter training or evaluation, with the song named."""
        try:
            e = self._entries[str(song_id)]
        except KeyError:
            raise KeyError(f"song {song_id!r} is not in the embedding store {self.root}") from None
        rows = self._data[e.offset : e.offset + e.length]
        if not np.isfinite(rows).all():
            raise NonFiniteEmbeddingError(
                f"song {song_id}: its embedding in {self.root} holds NaN or infinite values (a damaged store); "
                "rebuild the store with `alcap embed` into a new --out")
        return rows

    def require(self, song_ids, what: str) -> None:
        """A StoreError listing how many and which of `song_ids` (`what`, e.g. "songs of split 'test'")
        have no embedding here, before any work on them starts."""
        wanted = list(dict.fromkeys(map(str, song_ids)))
        missing = [s for s in wanted if s not in self._entries]
        if missing:
            shown = ", ".join(missing[:10]) + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
            failed = {f["id"] for f in self.failures()} & set(missing)
            note = f" ({len(failed)} failed to embed: see {self.root / FAILURES_FILE})" if failed else ""
            raise StoreError(f"{self.root}: no embedding for {len(missing)} of the {len(wanted)} {what}: {shown}"
                             f"{note}. Run `alcap embed` on the manifest with --out {self.root} to add them")

    def get(self, song_id: str, dtype=np.float32) -> np.ndarray:
        return np.asarray(self[song_id], dtype=dtype)

    def entry(self, song_id: str) -> StoreEntry:
        return self._entries[str(song_id)]

    def __contains__(self, song_id: object) -> bool:
        return str(song_id) in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    @property
    def song_ids(self) -> list[str]:
        return list(self._entries)

    def failures(self) -> list[dict]:
        """Latest failure per song that is still not in the store."""
        return [f for sid, f in _read_failures(self.root).items() if sid not in self._entries]

    def stats(self) -> dict:
        rows = sum(e.length for e in self._entries.values())
        n = len(self._entries)
        data_bytes = rows * self.dim * DTYPE.itemsize
        lengths = [e.length for e in self._entries.values()]
        return {
            "songs": n, "rows": rows, "dim": self.dim, "data_bytes": data_bytes,
            "bytes_per_song": data_bytes / n if n else 0.0,
            "min_length": min(lengths, default=0), "max_length": max(lengths, default=0),
            "padded_songs": sum(1 for e in self._entries.values() if e.duration < (self.meta["excerpt"].get("seconds") or 0) - 1e-3),
            "failures": len(self.failures()),
        }


def _read_failures(root: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    path = root / FAILURES_FILE
    if path.exists():
        for raw in path.read_bytes().splitlines():
            try:
                rec = json.loads(raw)
            except json.JSONDecodeError:
                continue  # torn line
            out[str(rec.get("id"))] = rec
    return out


class WriterLock:
    """The one-writer-per-store lock: a POSIX record lock (`lockf`) on `.lock`.

    Unlike `flock`, a record lock belongs to the process, not to the open file: children made
    by fork (DataLoader workers) do not hold it, and it is released the moment the writer
    dies, by kill -9 too, so a rerun can resume at once. A record lock does not exclude the
    owning process itself, hence the process-wide set of held stores.
    """

    _held: set[tuple[int, int]] = set()  # (st_dev, st_ino) of lock files this process holds

    def __init__(self, handle, key):
        self._handle, self._key = handle, key

    @classmethod
    def acquire(cls, root: Path, what: str = "store") -> "WriterLock":
        handle = open(root / LOCK_FILE, "a+b")
        stat = os.fstat(handle.fileno())
        key = (stat.st_dev, stat.st_ino)
        try:
            if key in cls._held:
                raise BlockingIOError
            fcntl.lockf(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except (BlockingIOError, PermissionError):
            handle.close()
            raise StoreError(f"{root}: another process is writing to this {what}; wait for it to finish "
                             f"(a killed writer releases the {what} at once)") from None
        cls._held.add(key)
        return cls(handle, key)

    @property
    def closed(self) -> bool:
        return self._handle.closed

    def close(self) -> None:
        if not self._handle.closed:
            self._held.discard(self._key)
            self._handle.close()  # closing releases the record lock


@dataclass
class EmbeddingWriter:
    """Append-only writer holding an exclusive lock on the store directory."""

    root: Path
    meta: dict
    entries: dict[str, StoreEntry] = field(default_factory=dict)
    rows: int = 0

    @classmethod
    def open(cls, root: str | Path, meta: dict) -> "EmbeddingWriter":
        """Create a store, or reopen one for appending after checking it was built the same way."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise StoreError(f"{root}: is a file, not an embedding store directory; choose another --out")
        root.mkdir(parents=True, exist_ok=True)
        writer = cls(root, meta)
        writer._lock = WriterLock.acquire(root)
        if (root / META_FILE).exists():
            existing = _read_meta(root)
            diffs = nested_differences({k: existing.get(k) for k in IDENTITY_FIELDS}, {k: meta.get(k) for k in IDENTITY_FIELDS})
            if diffs:
                writer._lock.close()
                detail = "; ".join(f"{k}: store has {a!r}, this run has {b!r}" for k, a, b in diffs)
                raise StoreMismatchError(
                    f"{root} was built with other settings and embeddings must not be mixed ({detail}). "
                    "Use another --out directory, or the settings the store was built with."
                )
            writer.meta = existing
        else:
            _atomic_write(root / META_FILE, json.dumps(meta, indent=2) + "\n")
        writer._recover()
        writer._data = open(root / DATA_FILE, "ab")
        writer._index = open(root / INDEX_FILE, "ab")
        writer._failures = open(root / FAILURES_FILE, "ab")
        return writer

    def _recover(self) -> None:
        """Drop what an interrupted run left beyond the last complete batch."""
        dim = int(self.meta["dim"])
        self.entries, good_bytes, self.rows = _read_index(self.root, dim)
        index, data = self.root / INDEX_FILE, self.root / DATA_FILE
        if index.exists() and index.stat().st_size != good_bytes:
            os.truncate(index, good_bytes)
        row_bytes = self.rows * dim * DTYPE.itemsize
        if data.exists() and data.stat().st_size != row_bytes:
            os.truncate(data, row_bytes)

    def __contains__(self, song_id: object) -> bool:
        return str(song_id) in self.entries

    def add_batch(self, items: list[tuple[StoreEntry, np.ndarray]]) -> None:
        """Append (entry, (L_m, dim) array) pairs; `entry.offset/length` are filled in here."""
        if not items:
            return
        dim = int(self.meta["dim"])
        chunks, lines = [], []
        offset = self.rows
        for entry, array in items:
            array = np.asarray(array, dtype=DTYPE)
            if array.ndim != 2 or array.shape[1] != dim:
                raise StoreError(f"song {entry.id}: embedding shape {array.shape}, expected (L, {dim})")
            entry.offset, entry.length = offset, array.shape[0]
            offset += array.shape[0]
            chunks.append(np.ascontiguousarray(array).tobytes())
            lines.append(json.dumps(asdict(entry), ensure_ascii=False) + "\n")
        self._data.write(b"".join(chunks))
        _sync(self._data)
        self._index.write("".join(lines).encode("utf-8"))
        _sync(self._index)
        for entry, _ in items:
            self.entries[entry.id] = entry
        self.rows = offset

    def add_failure(self, song_id: str, audio: str, reason: str) -> None:
        rec = {"id": str(song_id), "audio": audio, "reason": reason, "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        self._failures.write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
        self._failures.flush()

    def close(self) -> None:
        """Close every file, the lock last, even when a flush fails (a full disk)."""
        for name in ("_data", "_index", "_failures", "_lock"):
            handle = getattr(self, name, None)
            if handle is not None and not handle.closed:
                try:
                    handle.close()
                except OSError:
                    pass  # whatever did not reach the disk is dropped by the next writer's recovery

    def __enter__(self) -> "EmbeddingWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_stores(out_dir: str | Path, sources: list[str | Path], batch_songs: int = 256) -> dict:
    """Copy the songs of several stores built the same way (e.g. `alcap embed --shard K/N`
    run on different machines) into one store, resumable like `alcap embed`.

    Songs already in the output are kept; a song held by several sources comes from the
    first. Failures are carried over for songs that no source could embed.
    """
    stores = [EmbeddingStore.open(s) for s in sources]
    if not stores:
        raise StoreError("nothing to merge: give at least one source store")
    first = stores[0]
    for other in stores[1:]:
        diffs = nested_differences({k: first.meta.get(k) for k in IDENTITY_FIELDS},
                                   {k: other.meta.get(k) for k in IDENTITY_FIELDS})
        if diffs:
            detail = "; ".join(f"{k}: {first.root} has {a!r}, {other.root} has {b!r}" for k, a, b in diffs)
            raise StoreMismatchError(f"{other.root} was built with other settings than {first.root} and cannot be "
                                     f"merged with it ({detail})")
    summary = {"out": str(out_dir), "sources": [str(s.root) for s in stores], "copied": 0, "already_in_output": 0,
               "duplicates": 0, "failures": 0}
    with EmbeddingWriter.open(out_dir, first.meta) as writer:
        seen: set[str] = set()
        for store in stores:
            pending = []
            for song_id in store:
                if song_id in seen:
                    summary["duplicates"] += 1
                    continue
                seen.add(song_id)
                if song_id in writer:
                    summary["already_in_output"] += 1
                    continue
                pending.append(song_id)
            for start in range(0, len(pending), batch_songs):
                chunk = pending[start:start + batch_songs]
                writer.add_batch([(StoreEntry(**{**asdict(store.entry(sid)), "offset": 0, "length": 0}), store[sid])
                                  for sid in chunk])
                summary["copied"] += len(chunk)
        for store in stores:
            for failure in store.failures():
                if failure["id"] not in seen and failure["id"] not in writer:
                    writer.add_failure(failure["id"], failure.get("audio", ""), failure.get("reason", ""))
                    seen.add(failure["id"])
                    summary["failures"] += 1
        summary["songs"] = len(writer.entries)
    return summary


def _sync(handle) -> None:
    handle.flush()
    os.fsync(handle.fileno())


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
