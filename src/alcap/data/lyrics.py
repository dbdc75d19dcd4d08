"""Lyrics files: UTF-8 text read with a clear error, and the sidecar beside an audio file."""

from __future__ import annotations

import re
from pathlib import Path

from .manifest import text_problem


def sidecar_lyrics(audio: Path) -> str:
    """A .txt or .lrc file next to the audio (LRC time tags dropped); "" when there is none."""
    for suffix in (".txt", ".lrc"):
        sidecar = audio.with_suffix(suffix)
        if sidecar.is_file():
            text = read_text_file(sidecar, "lyrics file")
            if suffix == ".lrc":  # drop [mm:ss.xx] time tags and [ar:...] headers
                text = "\n".join(re.sub(r"\[[^\]]*\]", "", line).strip() for line in text.splitlines())
            return text.strip()
    return ""


def read_text_file(path: Path, what: str) -> str:
    """A UTF-8 text file (a byte-order mark is fine), or a ValueError naming it and the problem."""
    try:
        text = path.read_bytes().decode("utf-8-sig", errors="surrogateescape")
    except OSError as exc:
        raise ValueError(f"{what} {path}: cannot be read ({exc.strerror})") from None
    problem = text_problem(text)
    if problem:
        raise ValueError(f"{what} {path} {problem}")
    return text
