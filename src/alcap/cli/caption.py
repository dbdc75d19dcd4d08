"""`alcap caption`: captions of audio files."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from .common import add_decoding_speed_args, add_device_arg, check_writable, given_lyrics


def add_caption(sub) -> None:
    p = sub.add_parser("caption", help="caption audio files (with lyrics, or instrumental)",
                       description="Caption songs: decode each file, embed it with the music encoder the model was "
                                   "trained with, and generate. Lyrics come from --lyrics, else from a .txt or .lrc "
                                   "file next to the audio, else the song is treated as instrumental.")
    p.add_argument("audio", nargs="+", metavar="AUDIO", help="audio files")
    p.add_argument("--model", required=True, metavar="DIR", help="model directory (best/ of a training run)")
    p.add_argument("--lyrics", metavar="FILE|TEXT", help="lyrics for every file given: a text file or the text itself")
    p.add_argument("--jsonl", metavar="FILE", help='write {"file", "lyrics", "caption"} lines to FILE instead of printing')
    add_device_arg(p)
    add_decoding_speed_args(p)
    p.set_defaults(func=cmd_caption)


def cmd_caption(args) -> int:
    from ..data.lyrics import sidecar_lyrics
    from ..inference import Captioner

    check_writable(args.jsonl, "--jsonl")  # refused before any work starts
    given = given_lyrics(args.lyrics)
    captioner = Captioner.from_pretrained(args.model, device=args.device)
    captioner.generation = captioner.generation.with_overrides(mixed_precision=args.mixed_precision,
                                                               batch_size=args.batch_size)
    if not captioner.uses_music:
        print(f"note: {args.model} is a lyrics-only model: its captions do not hear the audio", file=sys.stderr)
    lyrics, failed = {}, {}
    for audio in args.audio:
        try:
            lyrics[audio] = given if given is not None else sidecar_lyrics(Path(audio))
        except ValueError as exc:
            failed[audio] = str(exc)
    good = [a for a in args.audio if a in lyrics]
    results = {r.source: r for r in captioner.caption_batch(good, [lyrics[a] for a in good], errors="skip")}
    # The output file is replaced only now, so a run that fails to start keeps an earlier one.
    out = open(args.jsonl, "w", encoding="utf-8") if args.jsonl else None
    captioned = 0
    for audio in args.audio:
        result = results.get(str(audio))
        error = failed.get(audio) or (result.error if result else None)
        if error:
            print(f"error: {audio}: {error}", file=sys.stderr)
            record = {"file": str(audio), "error": error}
        else:
            captioned += 1
            record = {"file": str(audio), "lyrics": result.lyrics, "caption": result.caption}
            if not out:
                print(f"{audio}: {result.caption}")
        if out:
            out.write(json.dumps(record, ensure_ascii=False) + "\n")
            out.flush()
    if out:
        out.close()
        print(f"{captioned} captions written to {args.jsonl}" +
              (f"; {len(args.audio) - captioned} files failed" if captioned < len(args.audio) else ""))
    return 0 if captioned == len(args.audio) else 1
