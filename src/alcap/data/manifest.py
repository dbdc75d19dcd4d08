"""The manifest: the one table every `alcap` command reads.

One row per (song, caption) pair. Formats: JSONL (one object per line), CSV (UTF-8, header
row) and Parquet (needs pyarrow). Columns:

    song_id   required  identifies the song; repeats when a song has several captions
    audio     required  path of the audio file, relative to the manifest's folder or absolute
    lyrics    optional  lyrics text; empty for instrumentals
    caption   the human interpretation (needed for training and evaluation rows)
    split     train | val | test

Other columns are kept in `ManifestRow.extra`. Reading never stops at a bad row: rows that
cannot be parsed come back as `RowIssue`s so `alcap data validate` can report them all.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

COLUMNS = ("song_id", "audio", "lyrics", "caption", "split")
REQUIRED_COLUMNS = ("song_id", "audio")
SPLITS = ("train", "val", "test")
FORMATS = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv", ".parquet": "parquet", ".pq": "parquet"}


class ManifestError(Exception):
    """The manifest as a whole cannot be read (missing file, unknown format, missing columns)."""


@dataclass
class RowIssue:
    line: int  # line in the file (1-based); for Parquet the row number
    song_id: str | None
    severity: str  # "error": the row is unusable; "warning": usable, but look at it
    code: str
    message: str


@dataclass
class ManifestRow:
    line: int
    song_id: str
    audio: str  # resolved path
    lyrics: str = ""
    caption: str = ""
    split: str = ""
    extra: dict = field(default_factory=dict)


@dataclass
class Manifest:
    path: Path
    rows: list[ManifestRow]
    issues: list[RowIssue]  # rows that could not be parsed at all

    def __iter__(self) -> Iterator[ManifestRow]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)

    def songs(self) -> dict[str, str]:
        """Distinct song ids with their audio path (first occurrence wins), in manifest order."""
        out: dict[str, str] = {}
        for row in self.rows:
            out.setdefault(row.song_id, row.audio)
        return out

    def conflicting_audio(self) -> dict[str, list[ManifestRow]]:
        """Songs whose rows name different audio files: song id -> the first row of each file."""
        firsts: dict[str, dict[str, ManifestRow]] = {}
        for row in self.rows:
            firsts.setdefault(row.song_id, {}).setdefault(row.audio, row)
        return {sid: list(files.values()) for sid, files in firsts.items() if len(files) > 1}

    def split(self, name: str) -> list[ManifestRow]:
        """The rows of a split, exact duplicates (same song, lyrics and caption) once:
        `alcap data validate` counts them once, and so do training and evaluation."""
        seen, rows = set(), []
        for r in self.rows:
            key = (r.song_id, r.caption, r.lyrics)
            if r.split == name and key not in seen:
                seen.add(key)
                rows.append(r)
        return rows

    def duplicate_rows(self, name: str) -> int:
        return sum(r.split == name for r in self.rows) - len(self.split(name))


def manifest_format(path: Path) -> str:
    try:
        return FORMATS[path.suffix.lower()]
    except KeyError:
        raise ManifestError(f"{path}: unknown manifest format {path.suffix!r}; use .jsonl, .csv or .parquet") from None


def read_manifest(path: str | Path) -> Manifest:
    """Rows of a JSONL, CSV or Parquet manifest (song_id, audio, lyrics, caption, split, any
    extra columns), never raising for a bad row: those are in `Manifest.issues` with their line.
    Audio paths come back absolute (relative ones are relative to the manifest's folder)."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    kind = manifest_format(path)
    reader = {"jsonl": jsonl_records, "csv": _read_csv, "parquet": _read_parquet}[kind]
    rows, issues = [], []
    for line, record, problem in reader(path):
        if problem is not None:
            issues.append(RowIssue(line, _field(record, "song_id") or None, "error", problem[0], problem[1]))
            continue
        row = _to_row(path, line, record, issues)
        if row is not None:
            rows.append(row)
    return Manifest(path, rows, issues)


def write_manifest(path: str | Path, records: list[dict]) -> None:
    """Write dict records as JSONL or CSV (by suffix); columns beyond COLUMNS are kept."""
    path = Path(path)
    kind = manifest_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if kind == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for rec in records:
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    elif kind == "csv":
        names = list(COLUMNS) + sorted({k for rec in records for k in rec} - set(COLUMNS))
        with open(path, "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=names)
            writer.writeheader()
            writer.writerows(records)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(records), path)


def _field(record, name: str) -> str:
    if not isinstance(record, dict):
        return ""
    value = record.get(name)
    return "" if value is None else str(value)


def _to_row(path: Path, line: int, record: dict, issues: list[RowIssue]) -> ManifestRow | None:
    for name, value in record.items():
        problem = text_problem(value) if isinstance(value, str) else None
        if problem:
            issues.append(RowIssue(line, _field(record, "song_id") or None, "error", "bad_encoding",
                                   f"field {name!r} {problem}"))
            return None
    song_id, audio = _field(record, "song_id").strip(), _field(record, "audio").strip()
    if not song_id or not audio:
        missing = " and ".join(n for n, v in (("song_id", song_id), ("audio", audio)) if not v)
        issues.append(RowIssue(line, song_id or None, "error", "missing_field", f"empty or missing {missing}"))
        return None
    audio_path = Path(audio).expanduser()
    if not audio_path.is_absolute():  # made absolute: stores and libraries record it, used from anywhere
        audio_path = Path(os.path.abspath(path.parent / audio_path))
    extra = {k: v for k, v in record.items() if k not in COLUMNS}
    return ManifestRow(
        line=line, song_id=song_id, audio=str(audio_path), lyrics=_field(record, "lyrics"),
        caption=_field(record, "caption").strip(), split=_field(record, "split").strip().lower(), extra=extra,
    )


def text_problem(text: str) -> str | None:
    """Why a text read with errors="surrogateescape" is not usable text, or None."""
    if any("\udc80" <= ch <= "\udcff" for ch in text):
        return "is not valid UTF-8 text (save the file as UTF-8)"
    if "\x00" in text:
        return "contains a NUL character (binary data, or UTF-16 text: save the file as UTF-8)"
    return None


def jsonl_records(path: Path):
    """(line, object, None) per good line of a JSON-lines file, (line, None, (code, message)) per
    bad one; blank lines are skipped and a first-line byte-order mark is fine."""
    with open(path, "rb") as f:
        for line, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
            except UnicodeDecodeError as exc:
                yield line, None, ("bad_encoding", f"not valid UTF-8 (byte {exc.start})")
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as exc:
                yield line, None, ("invalid_json", f"not valid JSON ({exc.msg} at column {exc.colno})")
                continue
            if not isinstance(record, dict):
                yield line, None, ("invalid_json", f"expected a JSON object, got {type(record).__name__}")
                continue
            yield line, record, None


def _read_csv(path: Path):
    # surrogateescape keeps undecodable bytes visible so the row, not the file, is reported.
    with open(path, encoding="utf-8-sig", errors="surrogateescape", newline="") as f:
        reader = csv.reader(f)
        try:
            header = [h.strip() for h in next(reader)]
        except StopIteration:
            raise ManifestError(f"{path}: empty CSV file (no header row)") from None
        _check_columns(path, header)
        start = reader.line_num + 1
        for values in reader:
            line = start
            start = reader.line_num + 1
            if not any(v.strip() for v in values):
                continue
            if len(values) != len(header):
                yield line, None, ("bad_columns", f"{len(values)} fields, the header has {len(header)}")
                continue
            yield line, dict(zip(header, values)), None


def _read_parquet(path: Path):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ManifestError(f"{path}: reading Parquet needs pyarrow (pip install 'alcap[parquet]')") from None
    table = pq.read_table(path)
    _check_columns(path, table.column_names)
    for i, record in enumerate(table.to_pylist(), start=1):
        yield i, record, None


def _check_columns(path: Path, names: list[str]) -> None:
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ManifestError(
            f"{path}: missing required column(s) {', '.join(missing)}; found {', '.join(names) or 'none'}. "
            f"A manifest has the columns {', '.join(COLUMNS)}."
        )
