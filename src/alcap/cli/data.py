"""`alcap data validate | make-demo | import-si | import-ncm`: manifests and corpora."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import add_excerpt_args, excerpt_from


def add_data(sub) -> None:
    data = sub.add_parser("data", help="manifests and corpora: validate, make-demo, import-si, import-ncm",
                          description="Work with manifests and corpora.").add_subparsers(dest="data_command", metavar="COMMAND", required=True)
    p = data.add_parser("validate", help="report per row what is wrong with a manifest",
                        description="Check every row of a manifest: unreadable rows and bad encodings, missing or "
                                    "unreadable audio, empty captions, bad splits, duplicates, conflicting rows of "
                                    "one song. Prints a report; the exit code is non-zero only when no usable row "
                                    "remains (with --strict: on any error).")
    p.add_argument("manifest", metavar="MANIFEST", help="manifest file (.jsonl, .csv or .parquet)")
    p.add_argument("--no-audio", action="store_true", help="do not open the audio files")
    p.add_argument("--decode", action="store_true", help="decode each file's excerpt too (slower; catches corrupt audio data)")
    p.add_argument("--json", metavar="FILE",
                   help="also write the full report as JSON to FILE ('-': to stdout, and the text report to stderr)")
    p.add_argument("--strict", action="store_true", help="exit 1 on any error, not only when no usable row remains")
    p.add_argument("--for", dest="purpose", choices=("train", "caption"), default="train",
                   help="train: rows need a caption and a split (training, evaluation); caption: a catalogue for "
                        "`alcap caption` or `alcap library add`, where song_id and audio are enough (default: train)")
    p.add_argument("--max-issues", type=int, default=50, metavar="N", help="issues to print (default: 50)")
    p.add_argument("--workers", type=int, default=4, metavar="N", help="threads checking audio files (default: 4)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    add_excerpt_args(p)
    p.set_defaults(func=cmd_validate)

    p = data.add_parser("make-demo", help="synthesise the embedded demo corpus (offline)",
                        description="Synthesise a corpus of songs with controlled audio attributes (tempo, instrument, "
                                    "mode, energy, drums), lyrics from a handful of themes and captions that state both; "
                                    "writes audio files (WAV/FLAC/OGG/MP3), manifest.jsonl and corpus.json.")
    p.add_argument("out", metavar="OUT", help="output directory")
    p.add_argument("--songs", type=int, default=300, metavar="N", help="number of songs (default: 300)")
    p.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives the same corpus (default: 0)")
    p.add_argument("--captions-per-song", type=int, default=3, help="captions per song (default: 3)")
    p.add_argument("--min-seconds", type=float, default=15.0, help="shortest song in seconds (default: 15)")
    p.add_argument("--max-seconds", type=float, default=30.0, help="longest song in seconds (default: 30)")
    p.add_argument("--alignment", type=float, default=0.6, metavar="P",
                   help="how loosely music follows the lyrics: each of a song's mode, tempo and energy takes its "
                        "theme's preferred value (heartbreak/loss: minor, slow; love/home: major, mid-tempo, gentle; "
                        "hope/freedom: major, fast, energetic) with probability P, else a uniform draw. 0 gives the "
                        "independent corpus of version 2 (default: 0.6)")
    p.add_argument("--instrumental-share", type=float, default=None, metavar="F",
                   help="share of songs that are instrumentals: no lyrics, captions about the music alone "
                        "(default: 0.15, or 0 with --alignment 0)")
    p.add_argument("--workers", type=int, default=None, metavar="N", help="synthesis processes (default: one per CPU core)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_make_demo)

    p = data.add_parser("import-si", help="Song Interpretation data set (CSV, pickle or JSON layout) -> manifest",
                        description="Convert the Song Interpretation data set to a manifest. Layouts: the CSV files "
                                    "df_{full|not_negative|positive}_{train|val}.csv + df_test.csv (--csv-dir), pickles "
                                    "of MusicData records (--pickle SPLIT=FILE, read by a restricted unpickler that "
                                    "builds nothing else), or JSON/JSONL copies of the records (--json SPLIT=FILE). "
                                    "Audio is <audio dir>/<music4all_id>.mp3. The variants share the test split.")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--csv-dir", metavar="DIR", help="folder with the df_*.csv files")
    source.add_argument("--pickle", action="append", metavar="SPLIT=FILE", help="a pickle for a split (repeat per split)")
    source.add_argument("--json", action="append", metavar="SPLIT=FILE", help="a JSON/JSONL file for a split (repeat)")
    p.add_argument("--audio-dir", required=True, metavar="DIR", help="Music4All audio folder (<id>.mp3 files)")
    p.add_argument("--out", required=True, metavar="MANIFEST", help="manifest to write (.jsonl)")
    p.add_argument("--variant", default="full",
                   help="full (SI-Full), not_negative (votes >= 0) or positive (votes > 0); default: full")
    p.add_argument("--id-field", default="music4all_id", help="record field with the song id (default: music4all_id)")
    p.add_argument("--lyrics-field", default="lyrics", help="record field with the lyrics (default: lyrics)")
    p.add_argument("--caption-field", default="comment", help="field with one interpretation (default: comment)")
    p.add_argument("--comments-field", default="comments",
                   help="field with [(text, votes), ...] interpretations (default: comments)")
    p.add_argument("--audio-ext", default=".mp3", help="audio file extension (default: .mp3)")
    p.set_defaults(func=cmd_import_si)

    p = data.add_parser("import-ncm", help="NCM reviews or any CSV/JSONL corpus -> manifest with a seeded split",
                        description="Convert a table of (song id, lyrics, review/caption, audio) to a manifest and split "
                                    "it at random by song (no song in two splits), reproducibly from --seed. Audio: the "
                                    "audio column relative to --audio-dir (or the table's folder), else "
                                    "<audio dir>/<song id><ext>.")
    p.add_argument("table", metavar="TABLE", help="CSV or JSONL file")
    p.add_argument("--out", required=True, metavar="MANIFEST", help="manifest to write (.jsonl)")
    p.add_argument("--audio-dir", metavar="DIR", help="folder the audio paths are relative to")
    p.add_argument("--id-field", default="song_id", help="column with the song id (default: song_id)")
    p.add_argument("--lyrics-field", default="lyrics", help="column with the lyrics (default: lyrics)")
    p.add_argument("--caption-field", default="review", help="column with the review or caption (default: review)")
    p.add_argument("--audio-field", default="audio", help="column with the audio path; '' for none (default: audio)")
    p.add_argument("--audio-ext", default=".mp3", help="extension when the path comes from the id (default: .mp3)")
    p.add_argument("--ratios", type=float, nargs=3, default=[0.7, 0.15, 0.15], metavar=("TRAIN", "VAL", "TEST"),
                   help="split ratios by song (default: 0.7 0.15 0.15)")
    p.add_argument("--seed", type=int, default=2020, help="seed of the random split (default: 2020)")
    p.set_defaults(func=cmd_import_table)


def cmd_validate(args) -> int:
    from ..data.manifest import read_manifest
    from ..data.validate import validate_manifest

    report = validate_manifest(read_manifest(args.manifest), check_audio=not args.no_audio, decode=args.decode,
                               excerpt=excerpt_from(args), workers=args.workers, progress=not args.quiet,
                               purpose=args.purpose)
    human = sys.stderr if args.json == "-" else sys.stdout  # stdout carries the JSON alone then
    print(report.format_text(max_issues=args.max_issues), file=human)
    if args.json:
        text = json.dumps(report.to_dict(), indent=2, ensure_ascii=False)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n", encoding="utf-8")
            print(f"full report: {args.json}")
    return 0 if report.ok and not (args.strict and report.errors) else 1


def cmd_make_demo(args) -> int:
    from ..data.demo import make_demo_corpus

    summary = make_demo_corpus(args.out, n_songs=args.songs, seed=args.seed, captions_per_song=args.captions_per_song,
                               min_seconds=args.min_seconds, max_seconds=args.max_seconds, workers=args.workers,
                               progress=not args.quiet, alignment=args.alignment,
                               instrumental_share=args.instrumental_share)
    if summary.get("reused"):
        print(f"reusing the corpus already in {args.out} (same parameters); delete it to regenerate")
    print(f"demo corpus: {summary['songs']} songs ({summary['seconds_of_audio'] / 60:.1f} min of audio), "
          f"{summary['rows']} captions, splits {summary['splits']}, formats {summary['formats']}, "
          f"made in {summary['generation_seconds']} s")
    shares = ", ".join(f"{k} {v:.0%}" for k, v in summary["preferred_character_share"].items() if v is not None)
    print(f"music-lyrics alignment {summary['alignment']} (songs with their theme's preferred {shares}); "
          f"{summary['attributes']['theme'].get('instrumental', 0)} instrumentals")
    print(f"manifest: {summary['manifest']}")
    return 0


def _split_files(values: list[str] | None, flag: str) -> dict[str, str] | None:
    """["train=a.pkl", "test=b.pkl"] -> {"train": "a.pkl", "test": "b.pkl"}."""
    if not values:
        return None
    out = {}
    for value in values:
        split, sep, file = value.partition("=")
        if not sep or not file:
            raise ValueError(f"{flag} {value!r}: write SPLIT=FILE, e.g. {flag} train=si_train.pkl")
        out[split] = file
    return out


def _print_import(counts: dict, out: str) -> None:
    splits = ", ".join(f"{s} {counts[s]}" for s in ("train", "val", "test") if counts.get(s))
    print(f"wrote {out}: {counts['rows']} rows ({splits}), {counts['songs']} songs")
    if counts["empty_captions_dropped"]:
        print(f"left out {counts['empty_captions_dropped']} rows with an empty interpretation")
    if counts["missing_audio"]:
        print(f"warning: {counts['missing_audio']} songs have no audio file where expected; "
              f"`alcap data validate {out}` lists them", file=sys.stderr)
    skipped = counts.get("skipped_rows", [])
    for row in skipped[:10]:
        print(f"skipped {row['file']}:{row['line']}: {row['reason']}", file=sys.stderr)
    if len(skipped) > 10:
        print(f"... and {len(skipped) - 10} more skipped rows", file=sys.stderr)


def cmd_import_si(args) -> int:
    from ..data.importers import import_si

    counts = import_si(args.out, args.audio_dir, csv_dir=args.csv_dir, pickles=_split_files(args.pickle, "--pickle"),
                       jsons=_split_files(args.json, "--json"), variant=args.variant, id_field=args.id_field,
                       lyrics_field=args.lyrics_field, caption_field=args.caption_field,
                       comments_field=args.comments_field, audio_ext=args.audio_ext)
    print(f"Song Interpretation, variant {counts['variant']}")
    _print_import(counts, args.out)
    return 0


def cmd_import_table(args) -> int:
    from ..data.importers import import_table

    counts = import_table(args.table, args.out, audio_dir=args.audio_dir, id_field=args.id_field,
                          lyrics_field=args.lyrics_field, caption_field=args.caption_field,
                          audio_field=args.audio_field or None, audio_ext=args.audio_ext, ratios=tuple(args.ratios),
                          seed=args.seed)
    _print_import(counts, args.out)
    return 0
