"""A song library on disk: SQLite (WAL) for the songs, failures and identity, a float16 matrix
for the caption vectors.

    LIB/library.sqlite   songs(row, id, path, sha256, duration, lyrics, caption, metadata, added),
                         songs_fts (FTS5 over caption, lyrics, metadata; rowid = row),
                         failures(path, id, reason, time), meta(key, value)
    LIB/vectors.f16      row r of the matrix is the unit-length caption vector of songs.row = r
    LIB/index.faiss      optional approximate index of the matrix rows (index.py), with index.faiss.json

Crash safety comes from the order of writes: a batch's vectors are appended and fsynced first,
then its rows are committed in one transaction. A kill between the two leaves vectors beyond
the last committed row, which the next writer truncates; a committed row always has its vector.
Rows of removed songs stay in the matrix, unused (`info` counts them).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data.store import StoreError, WriterLock, _sync
from ..utils import nested_differences
from .index import INDEX_FILE as INDEX_NAME, VectorIndex, exact_top
from .policy import AUTO_ROWS, POLICIES

DB_FILE = "library.sqlite"
VECTORS_FILE = "vectors.f16"
DTYPE = np.dtype("<f2")
RRF_K = 60  # reciprocal-rank fusion constant (Cormack, Clarke and Buettcher, SIGIR 2009)
MODES = ("hybrid", "dense", "lexical")
LEXICAL_CANDIDATES = 1000  # BM25 hits that take part in the fusion

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS songs (
    row INTEGER PRIMARY KEY, id TEXT NOT NULL UNIQUE, path TEXT NOT NULL, sha256 TEXT, duration REAL,
    lyrics TEXT NOT NULL, caption TEXT NOT NULL, metadata TEXT NOT NULL, added TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS songs_path ON songs (path);
CREATE VIRTUAL TABLE IF NOT EXISTS songs_fts USING fts5 (caption, lyrics, metadata);
CREATE TABLE IF NOT EXISTS failures (path TEXT PRIMARY KEY, id TEXT, reason TEXT NOT NULL, time TEXT NOT NULL);
"""


class LibraryError(StoreError):
    """A library that cannot be opened, written or searched as asked; the message says why."""


class LibraryMismatchError(LibraryError):
    """Adding with another captioning or sentence model than the library was built with."""


@dataclass
class Song:
    """One captioned song, as `add_batch` takes it and `songs()` gives it back."""

    id: str
    path: str
    caption: str
    lyrics: str = ""
    sha256: str | None = None
    duration: float | None = None
    metadata: dict = field(default_factory=dict)
    added: str = ""
    row: int | None = None


@dataclass
class Hit:
    id: str
    path: str
    caption: str
    lyrics: str  # the first 200 characters
    score: float  # cosine (dense), -bm25 (lexical) or the fused reciprocal-rank score (hybrid)
    metadata: dict

    def to_dict(self) -> dict:
        return {"id": self.id, "path": self.path, "score": round(float(self.score), 6), "caption": self.caption,
                "lyrics": self.lyrics, "metadata": self.metadata}


SONG_COLUMNS = "row, id, path, sha256, duration, lyrics, caption, metadata, added"


def _song_of(row) -> Song:
    r, i, p, sha, d, ly, c, m, a = row
    return Song(id=i, path=p, caption=c, lyrics=ly, sha256=sha, duration=d, metadata=json.loads(m), added=a, row=r)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


class Library:
    """A captioned, searchable song library on disk (one directory).

    `Library.add(dir, sources, model=...)` captions new or changed songs into it (created if
    missing); `Library.open(dir)` reads it: `search(text, k, mode)` -> Hit(id, path, caption,
    lyrics excerpt, score, metadata) list, `songs()`, `failures()`, `info()`, `export(path)`;
    `Library.open(dir, write=True)` also removes songs and maintains the index."""

    def __init__(self, root: Path, db: sqlite3.Connection, identity: dict, lock: WriterLock | None):
        self.root, self.db, self.identity, self._lock = root, db, identity, lock
        self.dim = int(identity["sentence_model"]["dim"])
        self._encoder = None
        self._index: VectorIndex | None | bool = False  # False: not loaded yet

    # ------------------------------------------------------------------ opening

    @classmethod
    def open(cls, root: str | Path, identity: dict | None = None, write: bool = False) -> "Library":
        """Open a library. Writing takes the one-writer lock, creates the library when `identity`
        is given and none exists, and refuses an `identity` other than the library's."""
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise LibraryError(f"{root}: is a file, not a library directory")
        exists = (root / DB_FILE).is_file()
        if not exists and not (write and identity is not None):
            raise LibraryError(f"{root}: no library here (no {DB_FILE}); create one with `alcap library add`")
        lock = None
        if write:
            root.mkdir(parents=True, exist_ok=True)
            try:
                lock = WriterLock.acquire(root, "library")
            except StoreError as exc:
                raise LibraryError(str(exc)) from None
        try:
            db = sqlite3.connect(root / DB_FILE, timeout=30.0, isolation_level=None)  # transactions by hand
            db.execute("PRAGMA journal_mode=WAL")  # readers (search) never wait for the writer
            db.execute("PRAGMA synchronous=FULL")
            if write:
                db.executescript(SCHEMA)
            stored = db.execute("SELECT value FROM meta WHERE key = 'identity'").fetchone()
            if stored is None and identity is None:
                raise LibraryError(f"{root}: the library has no identity yet (an interrupted first add?); "
                                   "run `alcap library add` again")
            if stored is None:
                db.execute("INSERT INTO meta VALUES ('identity', ?)", (json.dumps(identity, sort_keys=True),))
            else:
                existing = json.loads(stored[0])
                if identity is not None:
                    _refuse_other_identity(root, existing, identity)
                identity = existing
            library = cls(root, db, identity, lock)
            if write:
                library._drop_uncommitted_vectors()
            return library
        except BaseException:
            if lock is not None:
                lock.close()
            raise

    @classmethod
    def add(cls, root: str | Path, sources: list[str], model: str | Path, **options):
        """Caption the new or changed songs of `sources` into the library at `root` (created if
        missing); `options` as `alcap.library.build.add_songs`. Returns its AddReport."""
        from .build import add_songs

        return add_songs(root, model, [str(s) for s in sources], **options)

    def close(self) -> None:
        self.db.close()
        if self._lock is not None:
            self._lock.close()

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _drop_uncommitted_vectors(self) -> None:
        """Vectors beyond the last committed batch (a writer killed between its two writes) go."""
        committed = int(self._meta("rows", 0))
        path = self.root / VECTORS_FILE
        if path.exists() and path.stat().st_size != committed * self.dim * DTYPE.itemsize:
            os.truncate(path, committed * self.dim * DTYPE.itemsize)

    def _meta(self, key: str, default=None):
        row = self.db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else row[0]

    # ------------------------------------------------------------------ writing

    def known(self) -> dict[str, str]:
        """id -> sha256 of every song in the library (what `add` skips)."""
        return dict(self.db.execute("SELECT id, coalesce(sha256, '') FROM songs"))

    def paths(self) -> dict[str, str]:
        """path -> id, to replace a song whose file changed."""
        return dict(self.db.execute("SELECT path, id FROM songs"))

    def add_batch(self, songs: list[Song], vectors: np.ndarray, replaces: list[str] = ()) -> None:
        """Commit captioned songs with their caption vectors: vectors first (fsynced), then one
        transaction for the rows, the text index, the cleared failures and the removed ids
        (`replaces`: songs whose file changed). Float16 vectors are taken as stored rows (unit
        length already); others are normalised."""
        if self._lock is None:
            raise LibraryError(f"{self.root}: opened for reading; open it with write=True to add songs")
        if vectors.shape != (len(songs), self.dim):
            raise LibraryError(f"{len(songs)} songs but vectors of shape {vectors.shape}; expected ({len(songs)}, {self.dim})")
        if not songs:
            return
        if vectors.dtype != DTYPE:  # float16 rows come from another library as they are stored (merge)
            vectors = np.asarray(vectors, dtype=np.float32)
            vectors = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
        first = int(self._meta("rows", 0))
        with open(self.root / VECTORS_FILE, "ab") as f:
            f.write(np.ascontiguousarray(vectors, dtype=DTYPE).tobytes())
            _sync(f)
        now = _now()
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for song_id in replaces:
                self._delete(song_id)
            for row, song in enumerate(songs, start=first):
                metadata = json.dumps(song.metadata, ensure_ascii=False, sort_keys=True)
                self.db.execute("INSERT INTO songs VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                (row, song.id, song.path, song.sha256, song.duration, song.lyrics, song.caption,
                                 metadata, song.added or now))
                self.db.execute("INSERT INTO songs_fts (rowid, caption, lyrics, metadata) VALUES (?, ?, ?, ?)",
                                (row, song.caption, song.lyrics, _metadata_text(song.metadata)))
                self.db.execute("DELETE FROM failures WHERE path = ?", (song.path,))
            self.db.execute("INSERT OR REPLACE INTO meta VALUES ('rows', ?)", (str(first + len(songs)),))
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def clear_failures(self, paths: list[str]) -> None:
        """Forget the failures of files that are now fine (e.g. a copy of a song already there)."""
        if paths:
            with self.db:
                self.db.executemany("DELETE FROM failures WHERE path = ?", [(p,) for p in paths])

    def index_policy(self) -> str:
        return self._meta("index_policy", "auto")

    def update_index(self, policy: str | None = None, progress: bool = False) -> dict:
        """Bring the approximate index up to date with the committed rows, as `policy` says:
        auto builds it from AUTO_ROWS live songs on, faiss always, exact never (and drops one).
        The index is derived data: a kill here loses nothing, the next add redoes it."""
        if self._lock is None:
            raise LibraryError(f"{self.root}: opened for reading; open it with write=True to index it")
        if policy is not None:
            if policy not in POLICIES:
                raise LibraryError(f"unknown index {policy!r}: one of {', '.join(POLICIES)}")
            with self.db:
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('index_policy', ?)", (policy,))
        policy = self.index_policy()
        live_rows = self._rows(None)
        index = VectorIndex.load(self.root)
        if policy == "exact" or (policy == "auto" and len(live_rows) < AUTO_ROWS and index is None):
            for name in (INDEX_NAME, INDEX_NAME + ".json"):
                (self.root / name).unlink(missing_ok=True)
            self._index = None
        elif len(live_rows):
            matrix = self.vectors()
            if index is None or index.needs_retraining(len(matrix)):
                index = VectorIndex.build(matrix, progress=progress)
                changed = True
            else:
                changed = index.extend(matrix, progress=progress) > 0 or index.meta.get("recall@10") is None
            if changed:  # an unchanged index is not rewritten (at 1M songs it is 800 MB)
                index.tune(matrix, live_rows)
                index.save(self.root)
            self._index = index
        return self._index_info(int(self._meta("rows", 0)))

    def index(self) -> VectorIndex | None:
        """The approximate index, if the library has one (loaded on first use)."""
        if self._index is False:
            self._index = VectorIndex.load(self.root)
        return self._index

    def add_failure(self, path: str, reason: str, song_id: str | None = None) -> None:
        self.db.execute("INSERT OR REPLACE INTO failures VALUES (?, ?, ?, ?)", (path, song_id, reason, _now()))

    def _delete(self, song_id: str) -> bool:
        row = self.db.execute("SELECT row FROM songs WHERE id = ?", (song_id,)).fetchone()
        if row is None:
            return False
        self.db.execute("DELETE FROM songs WHERE row = ?", row)
        self.db.execute("DELETE FROM songs_fts WHERE rowid = ?", row)
        return True

    def remove(self, keys: list[str]) -> list[str]:
        """Remove songs by id or path; returns the ids removed (their vector rows stay unused)."""
        if self._lock is None:
            raise LibraryError(f"{self.root}: opened for reading; open it with write=True to remove songs")
        removed = []
        self.db.execute("BEGIN IMMEDIATE")
        try:
            for key in keys:
                ids = [r[0] for r in self.db.execute("SELECT id FROM songs WHERE id = ? OR path = ?", (key, key))]
                removed += [i for i in ids if self._delete(i)]
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        return removed

    # ------------------------------------------------------------------ reading

    def __len__(self) -> int:
        return self.db.execute("SELECT count(*) FROM songs").fetchone()[0]

    def songs(self, where: list[str] | None = None, offset: int = 0, limit: int | None = None) -> list[Song]:
        """Songs in the order they were added; `offset`/`limit` for a page of them."""
        clause, params = where_clause(where)
        rows = self.db.execute(f"SELECT {SONG_COLUMNS} FROM songs {clause} ORDER BY row LIMIT ? OFFSET ?",
                               (*params, -1 if limit is None else limit, offset))
        return [_song_of(r) for r in rows]

    def song(self, song_id: str) -> Song | None:
        """The song with this id, or None."""
        row = self.db.execute(f"SELECT {SONG_COLUMNS} FROM songs WHERE id = ?", (song_id,)).fetchone()
        return None if row is None else _song_of(row)

    def failures(self) -> list[dict]:
        return [{"path": p, "id": i, "reason": r, "time": t}
                for p, i, r, t in self.db.execute("SELECT path, id, reason, time FROM failures ORDER BY time, path")]

    def vectors(self) -> np.ndarray:
        """The (rows, dim) float16 matrix, memory-mapped; row r belongs to songs.row = r."""
        rows = int(self._meta("rows", 0))
        if rows == 0:
            return np.zeros((0, self.dim), dtype=DTYPE)
        # copy-on-write: torch takes it without a copy (it refuses read-only arrays); the file never changes
        return np.memmap(self.root / VECTORS_FILE, dtype=DTYPE, mode="c", shape=(rows, self.dim))

    def info(self) -> dict:
        rows = int(self._meta("rows", 0))
        songs = len(self)
        return {"library": str(self.root), "songs": songs, "failures": self.db.execute("SELECT count(*) FROM failures").fetchone()[0],
                "vector_rows": rows, "unused_rows": rows - songs, "dim": self.dim,
                "size_bytes": sum(p.stat().st_size for p in self.root.iterdir() if p.is_file()),
                "index": self._index_info(rows), "identity": self.identity}

    def _index_info(self, rows: int) -> dict:
        index = self.index()
        info = {"policy": self.index_policy(), "auto_rows": AUTO_ROWS}
        if index is None:
            return {**info, "kind": "exact"}
        meta = {k: v for k, v in index.meta.items() if k != "rows"}
        return {**info, **meta, "indexed_rows": index.rows, "unindexed_rows": rows - index.rows}

    def export(self, path: str | Path) -> int:
        """Captions, lyrics and metadata of every song to JSONL, CSV or Parquet (by the suffix)."""
        path = Path(path)
        records = [{"song_id": s.id, "audio": s.path, "caption": s.caption, "lyrics": s.lyrics, "sha256": s.sha256,
                    "duration": s.duration, "added": s.added, **s.metadata} for s in self.songs()]
        kind = path.suffix.lower()
        if kind in (".jsonl", ".json"):
            with open(path, "w", encoding="utf-8") as f:
                f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        elif kind == ".csv":
            import csv

            columns = list(dict.fromkeys(k for r in records for k in r)) or ["song_id"]
            with open(path, "w", newline="", encoding="utf-8") as f:
                writer = csv.DictWriter(f, fieldnames=columns)
                writer.writeheader()
                writer.writerows(records)
        elif kind in (".parquet", ".pq"):
            try:
                import pyarrow as pa
                import pyarrow.parquet as pq
            except ImportError:
                raise LibraryError("Parquet export needs pyarrow: pip install 'alcap[parquet]'") from None
            pq.write_table(pa.Table.from_pylist(records), path)
        else:
            raise LibraryError(f"{path}: export to .jsonl, .csv or .parquet (chosen by the file's suffix)")
        return len(records)

    # ------------------------------------------------------------------ search

    def encoder(self):
        """The library's sentence model, loaded on first use."""
        if self._encoder is None:
            from ..metrics.retrieval import SentenceEncoder

            model = self.identity["sentence_model"]
            self._encoder = SentenceEncoder(model.get("path"))
        return self._encoder

    def search(self, text: str | None = None, k: int = 10, mode: str = "hybrid", where: list[str] | None = None,
               like: str | None = None, exact: bool = False, vector: np.ndarray | None = None) -> list[Hit]:
        """The k best songs for a description (`text`) or like another song (`like`, by its caption
        vector: dense only). `where`: filters such as "duration<200" or "genre=rock". `exact`:
        never the approximate index. `vector`: text's sentence vector, when already encoded
        (e.g. a batch of queries encoded at once)."""
        if mode not in MODES:
            raise LibraryError(f"unknown search mode {mode!r}: one of {', '.join(MODES)}")
        if (text is None) == (like is None):
            raise LibraryError("search needs a description or --like SONG_ID (one of the two)")
        if k < 1:
            raise LibraryError(f"k must be at least 1, got {k}")
        if like is not None:
            found = self.db.execute("SELECT row FROM songs WHERE id = ?", (like,)).fetchone()
            if found is None:
                raise LibraryError(f"{self.root}: no song with id {like!r} (`alcap library export` lists them)")
            query = self.vectors()[found[0]].astype(np.float32)
            allowed = self._rows(where) if where else None
            ranked = [(r, s) for r, s in self._dense(query, allowed, k + 1, exact=exact) if r != found[0]]
        else:
            allowed = self._rows(where) if where and mode != "lexical" else None  # lexical filters in its own SQL
            ranked = self._ranked(text, mode, allowed, where=where, depth=k, exact=exact, query=vector)
        return self._hits(ranked[:k])

    def _ranked(self, text: str, mode: str, allowed: np.ndarray | None, where: list[str] | None = None,
                condition: str | None = None, query: np.ndarray | None = None, depth: int = 10,
                exact: bool = False) -> list[tuple[int, float]]:
        """`text`'s best `depth` rows by `mode` (hybrid fuses the best LEXICAL_CANDIDATES of each)
        over the `allowed` rows (dense; None: all) and the rows meeting `where` and a trusted SQL
        `condition` (lexical); `query` is text's sentence vector where known."""
        each = depth if mode != "hybrid" else max(depth, LEXICAL_CANDIDATES)
        dense = []
        if mode != "lexical":
            vector = self.encoder().encode([text])[0] if query is None else query
            dense = self._dense(vector, allowed, each, exact=exact)
        lexical = self._lexical(text, where, condition, limit=each) if mode != "dense" else []
        ranked = dense if mode == "dense" else lexical if mode == "lexical" else fuse_ranks([dense, lexical])
        return ranked[:depth]

    def _rows(self, where: list[str] | None) -> np.ndarray:
        clause, params = where_clause(where)
        return np.array([r for (r,) in self.db.execute(f"SELECT row FROM songs {clause} ORDER BY row", params)],
                        dtype=np.int64)

    def _live(self, rows: list[int]) -> set[int]:
        """Which of `rows` belong to songs (the others are rows of removed songs)."""
        live = set()
        for start in range(0, len(rows), 10000):
            part = rows[start:start + 10000]
            live.update(r for (r,) in self.db.execute(
                f"SELECT row FROM songs WHERE row IN ({','.join('?' * len(part))})", part))
        return live

    def _dense(self, query: np.ndarray, allowed: np.ndarray | None, depth: int,
               exact: bool = False) -> list[tuple[int, float]]:
        """The best `depth` rows by cosine (stored vectors have unit length) among `allowed`
        (None: every song), exactly or through the approximate index when there is one."""
        query = np.asarray(query, dtype=np.float32)
        query = query / max(float(np.linalg.norm(query)), 1e-12)
        matrix = self.vectors()
        if allowed is not None:
            rows, scores = exact_top(matrix, query, depth, allowed)
            return list(zip(rows.tolist(), scores.tolist()))
        index = None if exact else self.index()
        want = depth
        while True:  # rows of removed songs are dropped, so ask for more until `depth` are left
            if index is not None and index.rows:
                candidates = index.search(query[None], min(want, index.rows))[0]
                tail = np.arange(index.rows, len(matrix), dtype=np.int64)  # added since the index was updated
                candidates += exact_top(matrix, query, want, tail)[0].tolist()
                rows, scores = exact_top(matrix, query, want, np.array(sorted(candidates), dtype=np.int64))
            else:
                rows, scores = exact_top(matrix, query, want)
            live = self._live(rows.tolist())
            ranked = [(r, s) for r, s in zip(rows.tolist(), scores.tolist()) if r in live]
            if len(ranked) >= depth or want >= len(matrix):
                return ranked[:depth]
            want = min(len(matrix), want * 4)

    def _lexical(self, text: str, where: list[str] | None, condition: str | None = None,
                 limit: int = LEXICAL_CANDIDATES) -> list[tuple[int, float]]:
        """BM25 over captions, lyrics and metadata (SQLite FTS5); any word of the query may match."""
        words = fts_query(text)
        if not words:
            return []
        clause, params = where_clause(where, prefix="AND")
        clause += f" AND {condition}" if condition else ""
        rows = self.db.execute(
            f"SELECT songs.row, bm25(songs_fts) AS rank FROM songs_fts JOIN songs ON songs.row = songs_fts.rowid "
            f"WHERE songs_fts MATCH ? {clause} ORDER BY rank, songs.row LIMIT ?", (words, *params, limit))
        return [(int(r), -float(rank)) for r, rank in rows]

    def _hits(self, ranked: list[tuple[int, float]]) -> list[Hit]:
        hits = []
        for row, score in ranked:
            i, p, c, ly, m = self.db.execute("SELECT id, path, caption, lyrics, metadata FROM songs WHERE row = ?",
                                             (row,)).fetchone()
            hits.append(Hit(id=i, path=p, caption=c, lyrics=ly[:200], score=score, metadata=json.loads(m)))
        return hits


def fuse_ranks(rankings: list[list[tuple[int, float]]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal-rank fusion: score(row) = sum over rankings of 1 / (k + rank), rank from 1."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, (row, _) in enumerate(ranking, start=1):
            scores[row] = scores.get(row, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: (-item[1], item[0]))


def fts_query(text: str) -> str:
    """The words of `text` as an FTS5 query matching any of them (quoted: no FTS syntax errors)."""
    import re

    words = re.findall(r"\w+", text.lower())
    return " OR ".join(f'"{w}"' for w in dict.fromkeys(words))


def _metadata_text(metadata: dict) -> str:
    return " ".join(f"{k} {v}" for k, v in sorted(metadata.items()) if v not in (None, ""))


_OPERATORS = ("<=", ">=", "!=", "=", "<", ">")


def where_clause(filters: list[str] | None, prefix: str = "WHERE") -> tuple[str, list]:
    """SQL for filters like "duration<200", "genre=rock", "year>=2000" (ANDed); values are bound
    parameters, numbers compare as numbers. Keys: duration, path, id, or a metadata column."""
    if not filters:
        return "", []
    parts, params = [], []
    for text in filters:
        for op in _OPERATORS:
            key, sep, value = text.partition(op)
            if sep and key.strip():
                break
        else:
            raise LibraryError(f"--where {text!r}: expected KEY OP VALUE with OP one of {' '.join(_OPERATORS)}, "
                               "e.g. duration<200 or genre=rock")
        key, value = key.strip(), value.strip()
        if not key.replace("_", "").replace("-", "").isalnum():
            raise LibraryError(f"--where {text!r}: a key is a column name (letters, digits, _ and -)")
        column = key if key in ("duration", "path", "id") else f"json_extract(songs.metadata, '$.\"{key}\"')"
        try:
            params.append(float(value))
        except ValueError:
            params.append(value)
        parts.append(f"{column} {op} ?")
    return f"{prefix} " + " AND ".join(parts), params


def merge_libraries(out: str | Path, sources: list[str | Path], progress: bool = False) -> dict:
    """Copy the songs of `sources` (e.g. the shards of `alcap library add --shard`) into `out`
    (created, or added to). All must have the same identity; a song already in `out` or in an
    earlier source is skipped. Vectors are copied bit for bit, failures carried over unless
    the file was captioned somewhere. Resumable: a rerun skips what was copied."""
    from tqdm.auto import tqdm

    readers = [Library.open(s) for s in sources]
    try:
        identity = readers[0].identity
        for reader in readers[1:]:
            _refuse_other_identity(reader.root, identity, reader.identity)
        summary = {"copied": 0, "duplicates": 0, "already_in_output": 0, "failures": 0}
        with Library.open(out, identity, write=True) as target:
            if target.root.resolve() in [r.root.resolve() for r in readers]:
                raise LibraryError(f"{out}: the output is one of the sources")
            known = target.known()
            at_start = set(known)
            total = sum(len(r) for r in readers)
            bar = tqdm(total=total, desc="library merge", unit="song", disable=not progress)
            for reader in readers:
                songs = reader.songs()
                matrix = reader.vectors()
                for start in range(0, len(songs), 1000):
                    batch = []
                    for song in songs[start:start + 1000]:
                        if song.id in known:
                            summary["already_in_output" if song.id in at_start else "duplicates"] += 1
                        else:
                            known[song.id] = song.sha256 or ""
                            batch.append(song)
                    if batch:
                        target.add_batch(batch, matrix[[s.row for s in batch]])
                        summary["copied"] += len(batch)
                    bar.update(min(1000, len(songs) - start))
            bar.close()
            captioned = set(target.paths())
            for reader in readers:
                for failure in reader.failures():
                    if failure["path"] not in captioned:
                        target.add_failure(failure["path"], failure["reason"], failure["id"])
                        summary["failures"] += 1
            if readers[0].index_policy() != "auto" and target.index_policy() == "auto":
                target.update_index(readers[0].index_policy(), progress=progress)
            else:
                target.update_index(progress=progress)
            summary["songs"] = len(target)
        return summary
    finally:
        for reader in readers:
            reader.close()


def _refuse_other_identity(root: Path, existing: dict, identity: dict) -> None:
    diffs = nested_differences(existing, identity)
    if diffs:
        detail = "; ".join(f"{k}: library has {a!r}, this run has {b!r}" for k, a, b in diffs)
        raise LibraryMismatchError(
            f"{root} was built with other models or settings, and captions must not be mixed ({detail}). "
            "Start a new library, or add with the models the library was built with.")


def evaluate_search(library: Library, song_ids: list[str], references: list[list[str]], seed: int = 0,
                    modes: tuple[str, ...] = MODES) -> dict:
    """Text-to-music retrieval over the library's songs `song_ids` with the paper's queries (one
    seeded sentence of one reference per song, as `alcap evaluate`): per mode R@1/5/10, mean
    rank and MRR. Dense scores every song, so it uses the same tie rule as `alcap evaluate`; for
    lexical and hybrid a song that no query word matches ranks last."""
    from ..metrics.retrieval import DEFAULT_KS, pick_queries, retrieval_metrics

    found = dict(library.db.execute(
        f"SELECT id, row FROM songs WHERE id IN ({','.join('?' * len(song_ids))})", song_ids).fetchall())
    missing = [s for s in song_ids if s not in found]
    if missing:
        raise LibraryError(f"{len(missing)} songs of the pool are not in the library, e.g. {missing[0]!r}")
    rows = np.array([found[s] for s in song_ids], dtype=np.int64)
    queries = pick_queries(references, seed)
    out = {"songs": len(song_ids), "query_seed": seed}
    q = library.encoder().encode(queries)  # once, for dense and hybrid
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
    if "dense" in modes:
        out["dense"] = retrieval_metrics(q @ library.vectors()[rows].astype(np.float32).T)
    ordered = np.sort(rows)
    condition = f"songs.row IN ({','.join(map(str, ordered.tolist()))})"
    for mode in [m for m in modes if m != "dense"]:
        ranks = []
        for i, text in enumerate(queries):
            ranked = [r for r, _ in library._ranked(text, mode, ordered, condition=condition, query=q[i],
                                                    depth=len(ordered))]
            ranks.append(ranked.index(int(rows[i])) + 1 if int(rows[i]) in ranked else len(rows))
        ranks = np.array(ranks, dtype=np.float64)
        metrics = {"songs": len(rows)}
        for k in DEFAULT_KS:
            metrics[f"recall@{k}"] = float((ranks <= k).mean())
            metrics[f"precision@{k}"] = metrics[f"recall@{k}"] / k
        metrics.update({"mean_rank": float(ranks.mean()), "mrr": float((1.0 / ranks).mean())})
        out[mode] = metrics
    return out
