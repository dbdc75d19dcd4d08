"""`alcap caption`: captions of songs, streamed to the screen, a JSONL or a CSV file.

The songs go through `alcap library add`'s pipeline (`alcap.library.build.caption_stream`);
only the destination differs: a file instead of a library.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from .common import add_decoding_speed_args, add_device_arg, check_writable, given_lyrics, positive_int

CSV_COLUMNS = ("file", "song_id", "caption", "captions", "lyrics", "duration", "error")


def add_caption(sub) -> None:
    p = sub.add_parser("caption", help="caption songs: files, directories, globs or manifests (with lyrics, or instrumental)",
                       description="Caption songs: each is decoded (in worker processes, ahead of the model), embedded "
                                   "with the music encoder the model was trained with, and captioned in batches of "
                                   "similar lyric length; results are written as they finish. SOURCE is an audio "
                                   "file, a directory (searched recursively; audio recognised by content), a glob "
                                   "pattern, or a manifest (.jsonl/.csv/.parquet with song_id and audio; its lyrics "
                                   "column is used). Lyrics come from --lyrics, else the manifest, else a .txt or .lrc "
                                   "file beside the audio, else the song is captioned as an instrumental. An output "
                                   "file that exists is continued: songs captioned in it already are skipped.")
    p.add_argument("sources", nargs="+", metavar="SOURCE", help="audio files, directories, glob patterns or manifests")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (best/ of a training run)")
    p.add_argument("--lyrics", metavar="FILE|TEXT", help="lyrics for every song given: a text file or the text itself")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--jsonl", metavar="FILE|-",
                     help='write one JSON object per song, {"file", "song_id", "lyrics", "caption", "duration"} or '
                          '{"file", "error"}, to FILE (continued if it exists) or to stdout with -')
    out.add_argument("--csv", metavar="FILE|-", help=f"the same as CSV with columns {', '.join(CSV_COLUMNS)}")
    group = p.add_argument_group("generation (default: the model's own settings, 4 beams)")
    group.add_argument("--num-beams", type=positive_int, metavar="N", help="beam size; 1 is greedy (fastest)")
    group.add_argument("--max-new-tokens", type=positive_int, metavar="N", help="longest caption in tokens")
    group.add_argument("--sample", action="store_true", help="sample instead of searching (with --top-p, --temperature)")
    group.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling: keep the most probable tokens up to P")
    group.add_argument("--temperature", type=float, metavar="T", help="sampling temperature (default 1.0)")
    group.add_argument("--seed", type=int, help="seed of the sampling: the same seed and songs give the same captions")
    group.add_argument("--num-return-sequences", type=positive_int, metavar="N",
                       help="captions per song (at most --num-beams under beam search); JSONL/CSV then add a "
                            "'captions' list, 'caption' being the first")
    excerpt = p.add_argument_group("what the encoder hears (default: the excerpt the model was trained with)")
    excerpt.add_argument("--full-track", nargs="?", const="pool", choices=("pool", "concat"), metavar="MODE",
                         help="hear the whole track: consecutive windows of the trained excerpt's length (or "
                              "--excerpt-seconds), streamed, made into one music sequence by MODE: pool (the default; "
                              "their mean, step by step: the trained sequence length) or concat (in time order)")
    excerpt.add_argument("--excerpt-seconds", type=float, metavar="S", help="length of the excerpt; 0 is the whole file")
    excerpt.add_argument("--excerpt-position", choices=("middle", "start", "offset"), help="where the excerpt starts")
    excerpt.add_argument("--excerpt-offset", type=float, metavar="S", help="start in seconds, with --excerpt-position offset")
    p.add_argument("--split", nargs="+", metavar="NAME", help="only manifest rows of these splits")
    p.add_argument("--limit", type=positive_int, metavar="N", help="caption at most N songs")
    p.add_argument("--workers", type=int, metavar="N",
                   help="decoding worker processes; 0 decodes in the main process (default: 2, or 0 for a few songs)")
    add_device_arg(p)
    add_decoding_speed_args(p)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_caption)


def cmd_caption(args) -> int:
    import dataclasses

    from tqdm.auto import tqdm

    from ..audio.decode import Excerpt
    from ..inference import Captioner
    from ..library.build import caption_stream, expand_sources

    path = args.jsonl or args.csv
    kind = "jsonl" if args.jsonl else "csv" if args.csv else None
    to_stdout = path == "-"
    if path and not to_stdout:
        check_writable(path, f"--{kind}")  # refused before any work starts
    given = given_lyrics(args.lyrics)
    items, notes = expand_sources(args.sources, args.split)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)
    done = _captioned_files(Path(path), kind) if path and not to_stdout else set()
    pending = [item for item in items if item.path not in done][:args.limit]
    if given is not None:
        pending = [dataclasses.replace(item, lyrics=given) for item in pending]

    captioner = Captioner.from_pretrained(args.model, device=args.device, quantize=args.quantize)
    captioner.generation = captioner.generation.with_overrides(
        mixed_precision=args.mixed_precision, compile=args.compile, batch_size=args.batch_size, num_beams=args.num_beams,
        max_new_tokens=args.max_new_tokens, do_sample=True if args.sample else None, top_p=args.top_p,
        temperature=args.temperature, num_return_sequences=args.num_return_sequences)
    captioner.generation.check()
    if args.full_track and (args.excerpt_position or args.excerpt_offset is not None or args.excerpt_seconds == 0):
        raise ValueError("--full-track hears the whole file in windows; --excerpt-seconds S sets their length, "
                         "--excerpt-position and --excerpt-offset do not apply")
    if any(v is not None for v in (args.excerpt_seconds, args.excerpt_position, args.excerpt_offset)):
        base = captioner.excerpt
        seconds = base.seconds if args.excerpt_seconds is None else (args.excerpt_seconds or None)
        captioner.excerpt = Excerpt(seconds=seconds, position=args.excerpt_position or base.position,
                                    offset=base.offset if args.excerpt_offset is None else args.excerpt_offset)
    if args.seed is not None:
        import torch

        torch.manual_seed(args.seed)
    if not captioner.uses_music:
        print(f"note: {args.model} is a lyrics-only model: its captions do not hear the audio", file=sys.stderr)
    if done:
        print(f"{path}: {len(done)} songs captioned already; continuing with the other {len(pending)}", file=sys.stderr)

    workers = args.workers if args.workers is not None else (2 if len(pending) >= 2 * captioner.generation.batch_size else 0)
    sink = _Sink(path, kind)
    captioned = failed = instrumental = 0
    bar = tqdm(total=len(pending), desc="caption", unit="song", disable=args.quiet or len(pending) < 2, dynamic_ncols=True)
    try:
        for batch in caption_stream(captioner, pending, workers=workers, hash_files=False, full_track=args.full_track):
            for song in batch:
                if song.skipped:  # listed twice
                    continue
                if song.error is not None:
                    failed += 1
                    print(f"error: {song.item.path}: {song.error}", file=sys.stderr)
                    sink.write({"file": song.item.path, "error": song.error})
                    continue
                captioned += 1
                instrumental += not song.lyrics.strip()
                captions = song.caption if isinstance(song.caption, list) else [song.caption]
                record = {"file": song.item.path, **({"song_id": song.song_id} if song.song_id else {}),
                          "lyrics": song.lyrics, "caption": captions[0],
                          **({"captions": captions} if len(captions) > 1 else {}),
                          "duration": round(float(song.duration), 3)}
                sink.write(record) if kind else _print_human(record, captions)
            bar.update(len(batch))
            bar.set_postfix(captioned=captioned, failed=failed)
    finally:
        bar.close()
        sink.close()
    if instrumental:
        print(f"note: {instrumental} of {captioned} songs had no lyrics (none given, in the manifest or in a .txt/.lrc "
              "beside the audio) and were captioned as instrumentals", file=sys.stderr)
    if path:
        where = "stdout" if to_stdout else path
        print(f"{captioned} captions written to {where}" + (f"; {failed} files failed" if failed else ""),
              file=sys.stderr if to_stdout else sys.stdout)
    return 0 if failed == 0 else 1


def _print_human(record: dict, captions: list[str]) -> None:
    if len(captions) == 1:
        print(f"{record['file']}: {captions[0]}", flush=True)
    else:
        print(record["file"] + "".join(f"\n  {i}. {c}" for i, c in enumerate(captions, start=1)), flush=True)


def _captioned_files(path: Path, kind: str) -> set[str]:
    """Files an earlier run wrote a caption for (errors are tried again)."""
    if not path.is_file():
        return set()
    with open(path, encoding="utf-8", newline="") as f:
        if kind == "csv":
            return {row["file"] for row in csv.DictReader(f) if not row.get("error")}  # a caption may be ""
        done = set()
        for line in f:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a kill
            if isinstance(record, dict) and "caption" in record:
                done.add(record["file"])
        return done


class _Sink:
    """Records to a JSONL or CSV file (appended to) or stdout, flushed as they come."""

    def __init__(self, path: str | None, kind: str | None):
        self.kind, self.handle, self.writer, self.owned = kind, None, None, False
        if not path:
            return
        if path == "-":
            self.handle, self.owned = sys.stdout, False
        else:
            fresh = not Path(path).is_file() or Path(path).stat().st_size == 0
            self.handle, self.owned = open(path, "a", encoding="utf-8", newline=""), True
            if kind == "jsonl" and not fresh:
                self._end_last_line(path)
        if kind == "csv":
            self.writer = csv.DictWriter(self.handle, fieldnames=CSV_COLUMNS)
            if path == "-" or fresh:
                self.writer.writeheader()

    def _end_last_line(self, path: str) -> None:
        with open(path, "rb") as f:
            f.seek(-1, 2)
            if f.read(1) != b"\n":  # a run killed mid-line: start the next record on a line of its own
                self.handle.write("\n")

    def write(self, record: dict) -> None:
        if self.handle is None:
            return
        if self.writer is not None:
            row = {**record, "captions": json.dumps(record["captions"], ensure_ascii=False) if "captions" in record else ""}
            self.writer.writerow({k: row.get(k, "") for k in CSV_COLUMNS})
        else:
            self.handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None and self.owned:
            self.handle.close()
