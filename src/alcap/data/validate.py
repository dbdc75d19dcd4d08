"""`alcap data validate`: a per-row report of what is wrong with a manifest, never a crash."""

from __future__ import annotations

from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field

from tqdm.auto import tqdm

from ..audio.decode import AudioError, Excerpt, audio_info, load_audio
from .manifest import SPLITS, Manifest, RowIssue


@dataclass
class ValidationReport:
    manifest: str
    n_rows: int  # parsed rows plus rows that could not be parsed
    n_usable: int
    n_songs: int
    n_songs_usable: int
    usable_by_split: dict[str, int]
    issues: list[RowIssue] = field(default_factory=list)
    purpose: str = "train"  # train: rows need captions and splits; caption: a catalogue to caption

    @property
    def ok(self) -> bool:
        return self.n_usable > 0

    @property
    def errors(self) -> int:
        return sum(1 for i in self.issues if i.severity == "error")

    def counts(self) -> dict[str, int]:
        return dict(Counter(f"{i.severity}:{i.code}" for i in self.issues))

    def to_dict(self) -> dict:
        return {
            "manifest": self.manifest, "purpose": self.purpose, "rows": self.n_rows, "usable_rows": self.n_usable,
            "songs": self.n_songs, "usable_songs": self.n_songs_usable, "usable_by_split": self.usable_by_split,
            "issue_counts": self.counts(), "issues": [asdict(i) for i in self.issues],
        }

    def format_text(self, max_issues: int = 50) -> str:
        lines = [f"manifest: {self.manifest}"]
        shown = sorted(self.issues, key=lambda i: (i.line, i.severity))
        for issue in shown[:max_issues]:
            song = f" song {issue.song_id}" if issue.song_id else ""
            lines.append(f"  line {issue.line}{song}: {issue.severity}: {issue.message} [{issue.code}]")
        if len(shown) > max_issues:
            lines.append(f"  ... {len(shown) - max_issues} more issues (use --json FILE for all of them)")
        errors = self.errors
        warnings = len(self.issues) - errors
        split_text = ", ".join(f"{k} {v}" for k, v in self.usable_by_split.items()) or "none"
        lines.append(
            f"{self.n_usable} of {self.n_rows} rows usable" + (f" ({split_text})" if self.purpose == "train" else "")
            + f"; {self.n_songs_usable} of {self.n_songs} songs usable; {errors} errors, {warnings} warnings"
        )
        return "\n".join(lines)


def validate_manifest(
    manifest: Manifest,
    check_audio: bool = True,
    decode: bool = False,
    excerpt: Excerpt = Excerpt(),
    workers: int = 4,
    progress: bool = False,
    purpose: str = "train",
) -> ValidationReport:
    """Check rows and their audio files.

    `check_audio` reads each distinct file's header; `decode` also decodes the excerpt, which
    catches files whose header is fine but whose data is corrupt. `purpose`: "train" (rows need
    a caption and a split) or "caption" (a catalogue for `alcap caption` / `library add`: song_id,
    audio and optional lyrics are enough).
    """
    if purpose not in ("train", "caption"):
        raise ValueError(f"purpose must be train or caption, not {purpose!r}")
    training = purpose == "train"
    issues = list(manifest.issues)
    bad_rows: set[int] = set()

    def flag(row, severity: str, code: str, message: str) -> None:
        issues.append(RowIssue(row.line, row.song_id, severity, code, message))
        if severity == "error":
            bad_rows.add(row.line)

    first_audio: dict[str, str] = {}
    first_lyrics: dict[str, str] = {}
    seen: dict[tuple, int] = {}
    song_splits: dict[str, set[str]] = defaultdict(set)
    for row in manifest.rows:
        if training and not row.caption:
            flag(row, "error", "empty_caption", "caption is empty")
        if training and row.split not in SPLITS:
            flag(row, "error", "bad_split", f"split {row.split!r} is not one of {', '.join(SPLITS)}")
        elif row.split in SPLITS:
            song_splits[row.song_id].add(row.split)
        if not row.lyrics.strip():
            flag(row, "warning", "empty_lyrics", "lyrics are empty; the song is treated as instrumental")
        audio = first_audio.setdefault(row.song_id, row.audio)
        if audio != row.audio:
            flag(row, "error", "conflicting_audio", f"audio {row.audio} differs from this song's earlier rows ({audio})")
        lyrics = first_lyrics.setdefault(row.song_id, row.lyrics)
        if lyrics != row.lyrics:
            flag(row, "warning", "conflicting_lyrics", "lyrics differ from this song's earlier rows")
        key = (row.song_id, row.caption, row.lyrics, row.split)
        if key in seen:
            flag(row, "warning", "duplicate_row", f"duplicate of line {seen[key]}; counted once (training and evaluation use it once)")
        else:
            seen[key] = row.line

    for song_id, splits in song_splits.items():
        if len(splits) > 1:
            row = next(r for r in manifest.rows if r.song_id == song_id)
            flag(row, "warning", "split_leak", f"song appears in several splits ({', '.join(sorted(splits))})")

    if check_audio:
        audio_problems = _check_audio_files(sorted(set(first_audio.values())), decode, excerpt, workers, progress)
        for row in manifest.rows:
            for severity, code, message in audio_problems.get(row.audio, ()):
                flag(row, severity, code, message)

    duplicates = {i.line for i in issues if i.code == "duplicate_row"}
    usable = [r for r in manifest.rows if r.line not in bad_rows and r.line not in duplicates]
    by_split = Counter(r.split for r in usable)
    return ValidationReport(
        manifest=str(manifest.path),
        n_rows=len(manifest.rows) + len(manifest.issues),
        n_usable=len(usable),
        n_songs=len({r.song_id for r in manifest.rows}),
        n_songs_usable=len({r.song_id for r in usable}),
        usable_by_split={s: by_split[s] for s in SPLITS if by_split[s]},
        issues=issues,
        purpose=purpose,
    )


def _check_audio_files(paths: list[str], decode: bool, excerpt: Excerpt, workers: int, progress: bool) -> dict[str, list]:
    """Problems per audio file, each file checked once."""

    def check(path: str) -> tuple[str, list]:
        try:
            info = audio_info(path)
            if decode:
                load_audio(path, excerpt=excerpt)
        except AudioError as exc:
            code = "audio_missing" if exc.reason == "file not found" else "audio_unreadable"
            return path, [("error", code, f"audio {exc}")]
        duration = info.frames / info.samplerate
        if excerpt.seconds is not None and duration < excerpt.seconds:
            return path, [("warning", "short_audio",
                           f"audio is {duration:.1f} s, shorter than the {excerpt.seconds:g} s excerpt; it will be zero-padded")]
        return path, []

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        results = pool.map(check, paths)
        if progress:
            results = tqdm(results, total=len(paths), desc="checking audio", unit="file")
        return {path: problems for path, problems in results if problems}
