"""Importers from published data-set layouts to the project's manifest (JSONL).

Song Interpretation (SI: Music4All audio with user interpretations) comes in three layouts, all read here:
  - CSV files `df_{full|not_negative|positive}_{train|val}.csv` and `df_test.csv`
    with columns `music4all_id, lyrics, comment`;
  - pickles holding a list of `MusicData` records (`music4all_id`, `lyrics`, and `comment`
    or `comments` = [(text, votes), ...]), read through a restricted unpickler;
  - JSON / JSONL copies of the same records.
The variants differ only in their training and validation rows: SI-Full keeps every
interpretation, "not_negative" those with votes >= 0, "positive" those with votes > 0. All
three share the one test split. Audio is `<music4all audio dir>/<music4all_id>.mp3`.

Other corpora (NCM, a user's own) are CSV/JSONL tables with named columns, split at random by
song with a seed.
"""

from __future__ import annotations

import csv
import json
import pickle
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .manifest import jsonl_records, text_problem

SI_VARIANTS = {"full": None, "not_negative": 0, "positive": 1}  # minimum votes kept (None: all)
SI_VARIANT_ALIASES = {"si-full": "full", "full": "full", "voting>=0": "not_negative", "not_negative": "not_negative",
                      "voting>0": "positive", "positive": "positive"}
SPLITS = ("train", "val", "test")


class DataImportError(ValueError):
    """A source file cannot be imported; the message names the file (and row) and what to do."""


@dataclass
class Record:
    song_id: str
    lyrics: str
    caption: str
    votes: int | None = None
    audio: str | None = None  # audio path given by the source table, if any


def si_variant(name: str) -> str:
    try:
        return SI_VARIANT_ALIASES[name.lower()]
    except KeyError:
        raise DataImportError(f"unknown SI variant {name!r}; choose from full, not_negative (votes >= 0), "
                           "positive (votes > 0)") from None


# ---------------------------------------------------------------------------- SI: CSV

def read_si_csv_dir(directory: str | Path, variant: str = "full", skipped: list | None = None) -> dict[str, list[Record]]:
    """{"train": [...], "val": [...], "test": [...]} from the CSV layout."""
    directory, variant = Path(directory), si_variant(variant)
    files = {"train": directory / f"df_{variant}_train.csv", "val": directory / f"df_{variant}_val.csv",
             "test": directory / "df_test.csv"}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise DataImportError(f"SI CSV layout incomplete in {directory}: missing {', '.join(missing)}")
    return {split: _read_table(path, "music4all_id", "lyrics", "comment", None, skipped=skipped)
            for split, path in files.items()}


class SkippedRows(list):
    """Rows left out of an import, each {"file", "line", "reason"}; the rest imports."""

    def add(self, path, line, reason: str) -> None:
        self.append({"file": str(path), "line": line, "reason": reason})


def _read_table(path: Path, id_field: str, lyrics_field: str, caption_field: str, votes_field: str | None,
                audio_field: str | None = None, skipped: list | None = None) -> list[Record]:
    """Rows of a CSV or JSONL table as Records. A bad row (undecodable, missing a field, empty
    id) is left out and noted in `skipped`; when no row at all is good, the first problem is
    raised, since then the field flags or the file are wrong."""
    skipped = SkippedRows() if skipped is None else skipped
    before = len(skipped)
    records = []
    for line, row in _table_rows(path, skipped):
        missing = [f for f in (id_field, lyrics_field, caption_field) if f not in row]
        if missing:
            skipped.add(path, line, f"no field {', '.join(map(repr, missing))} (fields: {', '.join(map(repr, row))}); "
                                    "name the right ones with the field flags")
            continue
        song_id = str(row[id_field] if row[id_field] is not None else "").strip()
        if not song_id:
            skipped.add(path, line, f"empty {id_field!r}")
            continue
        try:
            votes = _parse_votes(row.get(votes_field)) if votes_field else None
        except ValueError as exc:
            skipped.add(path, line, str(exc))
            continue
        records.append(Record(song_id, _text(row[lyrics_field]), _text(row[caption_field]), votes,
                              _text(row.get(audio_field)) or None if audio_field else None))
    if not records and len(skipped) > before:
        first = skipped[before]
        raise DataImportError(f"{first['file']}:{first['line']}: {first['reason']} "
                              f"({len(skipped) - before} rows like it, none imported)")
    return records


def _table_rows(path: Path, skipped: SkippedRows) -> Iterable[tuple[int, dict]]:
    if not path.is_file():
        raise DataImportError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        # utf-8-sig: spreadsheet programs start CSV files with a byte-order mark. surrogateescape
        # keeps an undecodable row readable, so that row alone is reported.
        with open(path, newline="", encoding="utf-8-sig", errors="surrogateescape") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames:
                reader.fieldnames = [name.strip() for name in reader.fieldnames]
            for row in reader:
                problem = next((f"field {k!r} {p}" for k, v in row.items()
                                if isinstance(v, str) and (p := text_problem(v))), None)
                if problem:
                    skipped.add(path, reader.line_num, problem)
                    continue
                yield reader.line_num, row
    elif suffix in (".jsonl", ".json"):
        yield from _json_rows(path, skipped)
    else:
        raise DataImportError(f"{path}: unknown table format {suffix!r} (use .csv, .jsonl or .json)")


def _json_rows(path: Path, skipped: SkippedRows | None = None) -> Iterable[tuple[int, dict]]:
    """A JSON array of objects, or JSON lines; yields (line or index + 1, object). A bad line
    is noted in `skipped` (or raised without it); a bad JSON array is an error of the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)  # enough to tell an array from JSON lines
    except FileNotFoundError:
        raise DataImportError(f"{path}: no such file") from None
    except OSError as exc:
        raise DataImportError(f"{path}: cannot read ({exc.strerror})") from None

    def bad(line_no, reason):
        if skipped is None:
            raise DataImportError(f"{path}:{line_no}: {reason}")
        skipped.add(path, line_no, reason)

    if head.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"["):
        try:
            data = json.loads(path.read_bytes().decode("utf-8-sig"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise DataImportError(f"{path}: not valid JSON ({err})") from None
        for i, obj in enumerate(data, start=1):
            if not isinstance(obj, dict):
                raise DataImportError(f"{path}: record {i} is not an object")
            yield i, obj
        return
    for line_no, obj, problem in jsonl_records(path):
        if problem is not None:
            bad(line_no, problem[1])
            continue
        yield line_no, obj


def _text(value) -> str:
    return "" if value is None or (isinstance(value, float) and np.isnan(value)) else str(value).strip()


def _parse_votes(value) -> int | None:
    if value in (None, ""):
        return None
    try:
        return int(float(value))
    except (TypeError, ValueError):
        raise ValueError(f"votes {value!r} is not a number") from None


def _votes(value, path, line) -> int | None:
    try:
        return _parse_votes(value)
    except ValueError as exc:
        raise DataImportError(f"{path}:{line}: {exc}") from None


# ---------------------------------------------------------------------------- SI: pickle and JSON records

class MusicData:
    """Stand-in for the original `MusicData` class: a plain attribute bag, nothing else runs."""

    def __setstate__(self, state):
        if isinstance(state, tuple):  # (dict, slots) from objects with __slots__
            state = {**(state[0] or {}), **(state[1] or {})}
        if not isinstance(state, dict):
            raise pickle.UnpicklingError("MusicData state is not a dict of attributes")
        self.__dict__.update(state)


class RestrictedUnpickler(pickle.Unpickler):
    """Builds MusicData records (from any module) and plain builtin containers; refuses all else."""

    SAFE_BUILTINS = {"list", "dict", "tuple", "set", "frozenset", "str", "bytes", "int", "float", "bool",
                     "complex", "object"}

    def find_class(self, module: str, name: str):
        if name == "MusicData":
            return MusicData
        if module in ("builtins", "__builtin__") and name in self.SAFE_BUILTINS:
            return getattr(__import__("builtins"), name)
        if module in ("copyreg", "copy_reg") and name == "_reconstructor":  # protocol 0/1; builds only allowed classes
            import copyreg
            return copyreg._reconstructor
        raise pickle.UnpicklingError(
            f"refusing to load {module}.{name}: an SI pickle holds only MusicData records and builtins, and "
            "unpickling anything else could run code")


def read_si_pickle(path: str | Path) -> list[dict]:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = RestrictedUnpickler(f).load()
    except FileNotFoundError:
        raise DataImportError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataImportError(f"{path}: is a directory; give the pickle file itself") from None
    except pickle.UnpicklingError as err:
        raise DataImportError(f"{path}: {err}") from None
    except (EOFError, ValueError, TypeError, AttributeError) as err:
        raise DataImportError(f"{path}: not a readable pickle ({err})") from None
    if not isinstance(data, (list, tuple)):
        raise DataImportError(f"{path}: expected a list of MusicData records, found {type(data).__name__}")
    out = []
    for i, item in enumerate(data, start=1):
        if not isinstance(item, MusicData):
            raise DataImportError(f"{path}: record {i} is a {type(item).__name__}, not MusicData")
        out.append(dict(item.__dict__))
    return out


def records_from_objects(objects: Iterable[tuple[int, dict]], source: str, id_field: str = "music4all_id",
                         lyrics_field: str = "lyrics", caption_field: str = "comment",
                         comments_field: str = "comments") -> list[Record]:
    """One Record per interpretation: `comment` (one text) or `comments` ([(text, votes)] or [text])."""
    records = []
    for where, obj in objects:
        if id_field not in obj:
            raise DataImportError(f"{source} record {where}: no {id_field!r} (fields: {', '.join(map(str, obj))}); "
                               "name the right one with --id-field")
        song_id, lyrics = _text(obj[id_field]), _text(obj.get(lyrics_field))
        if not song_id:
            raise DataImportError(f"{source} record {where}: empty {id_field!r}")
        if obj.get(comments_field) is not None:
            for entry in obj[comments_field]:
                if isinstance(entry, (list, tuple)):
                    if len(entry) != 2:
                        raise DataImportError(f"{source} record {where}: a {comments_field!r} entry should be "
                                           f"(text, votes), got {len(entry)} items")
                    records.append(Record(song_id, lyrics, _text(entry[0]), _votes(entry[1], source, where)))
                elif isinstance(entry, dict):
                    records.append(Record(song_id, lyrics, _text(entry.get("text", entry.get(caption_field))),
                                          _votes(entry.get("votes"), source, where)))
                else:
                    records.append(Record(song_id, lyrics, _text(entry)))
        elif caption_field in obj:
            records.append(Record(song_id, lyrics, _text(obj[caption_field]), _votes(obj.get("votes"), source, where)))
        else:
            raise DataImportError(f"{source} record {where}: neither {caption_field!r} nor {comments_field!r}; "
                               "name the caption field with --caption-field")
    return records


def keep_variant(records: list[Record], variant: str) -> list[Record]:
    """Training/validation rows of a variant: all, votes >= 0 or votes > 0 (rows without votes are kept
    only by `full`, since their votes are unknown)."""
    minimum = SI_VARIANTS[si_variant(variant)]
    if minimum is None:
        return records
    return [r for r in records if r.votes is not None and r.votes >= minimum]


# ---------------------------------------------------------------------------- writing

def write_manifest(splits: dict[str, list[Record]], out: str | Path, audio_for) -> dict:
    """Write a JSONL manifest; returns counts (rows, songs, empty captions, missing audio)."""
    out = Path(out)
    _make_parent(out)
    counts = {"rows": 0, "songs": 0, "empty_captions_dropped": 0, "missing_audio": 0}
    songs: set[str] = set()
    missing: set[str] = set()
    tmp = out.with_name(out.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for split in SPLITS:
            for r in splits.get(split, []):
                if not r.caption:
                    counts["empty_captions_dropped"] += 1
                    continue
                audio = audio_for(r)
                if r.song_id not in songs and not Path(audio).exists():
                    missing.add(r.song_id)
                songs.add(r.song_id)
                row = {"song_id": r.song_id, "audio": str(audio), "lyrics": r.lyrics, "caption": r.caption,
                       "split": split}
                if r.votes is not None:
                    row["votes"] = r.votes
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                counts["rows"] += 1
                counts[split] = counts.get(split, 0) + 1
    tmp.replace(out)
    counts["songs"], counts["missing_audio"] = len(songs), len(missing)
    return counts


def _make_parent(out: Path) -> None:
    if out.is_dir():
        raise DataImportError(f"--out {out}: is a directory; give the manifest file to write, e.g. {out}/manifest.jsonl")
    blocker = next((p for p in out.parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise DataImportError(f"--out {out}: cannot create it, {blocker} is a file, not a folder")
    out.parent.mkdir(parents=True, exist_ok=True)


def import_si(out: str | Path, audio_dir: str | Path, csv_dir: str | Path | None = None,
              pickles: dict[str, str] | None = None, jsons: dict[str, str] | None = None, variant: str = "full",
              id_field: str = "music4all_id", lyrics_field: str = "lyrics", caption_field: str = "comment",
              comments_field: str = "comments", audio_ext: str = ".mp3") -> dict:
    """SI in any of its layouts -> manifest. `pickles`/`jsons` map a split name to a file."""
    sources = [s for s in (csv_dir, pickles, jsons) if s]
    if len(sources) != 1:
        raise DataImportError("give exactly one source layout: a CSV directory, pickle files or JSON files")
    variant = si_variant(variant)
    skipped = SkippedRows()
    if csv_dir:
        splits = read_si_csv_dir(csv_dir, variant, skipped)
    else:
        splits = {}
        for split, file in (pickles or jsons).items():
            if split not in SPLITS:
                raise DataImportError(f"unknown split {split!r} for {file}; use train, val or test")
            objects = enumerate(read_si_pickle(file), start=1) if pickles else _json_rows(Path(file), skipped)
            records = records_from_objects(objects, str(file), id_field, lyrics_field, caption_field, comments_field)
            splits[split] = records if split == "test" else keep_variant(records, variant)
    audio_dir = Path(audio_dir).resolve()
    counts = write_manifest(splits, out, lambda r: audio_dir / f"{r.song_id}{audio_ext}")
    counts["variant"], counts["skipped_rows"] = variant, list(skipped)
    return counts


def import_table(table: str | Path, out: str | Path, audio_dir: str | Path | None = None,
                 id_field: str = "song_id", lyrics_field: str = "lyrics", caption_field: str = "review",
                 audio_field: str | None = "audio", audio_ext: str = ".mp3",
                 ratios: tuple[float, float, float] = (0.7, 0.15, 0.15), seed: int = 2020) -> dict:
    """NCM or a user corpus: a CSV/JSONL table -> manifest, split at random *by song* (no song in two splits).

    Audio: the `audio_field` column (relative to `audio_dir` or the table's folder), else
    `<audio_dir>/<song_id><audio_ext>`.
    """
    table = Path(table)
    if len(ratios) != 3 or any(r < 0 for r in ratios) or not np.isclose(sum(ratios), 1.0):
        raise DataImportError(f"split ratios {list(ratios)} must be three non-negative numbers summing to 1")
    skipped = SkippedRows()
    records = _read_table(table, id_field, lyrics_field, caption_field, None, audio_field, skipped)
    song_ids = list(dict.fromkeys(r.song_id for r in records))
    order = np.random.default_rng(seed).permutation(len(song_ids))
    n_train = int(round(ratios[0] * len(song_ids)))
    n_val = int(round(ratios[1] * len(song_ids)))
    split_of = {}
    for rank, index in enumerate(order):
        split_of[song_ids[index]] = "train" if rank < n_train else "val" if rank < n_train + n_val else "test"
    splits: dict[str, list[Record]] = {s: [] for s in SPLITS}
    for r in records:
        splits[split_of[r.song_id]].append(r)
    base = Path(audio_dir).resolve() if audio_dir else table.parent.resolve()

    def audio_for(r: Record):
        return base / r.audio if r.audio else base / f"{r.song_id}{audio_ext}"

    counts = write_manifest(splits, out, audio_for)
    counts["seed"], counts["ratios"], counts["skipped_rows"] = seed, list(ratios), list(skipped)
    return counts
