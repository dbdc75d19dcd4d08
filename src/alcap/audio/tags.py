"""Names of the 50 Million Song Dataset tags, in the order of the CNNSA tagging head."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

TAG_NAMES_FILE = "tags.txt"  # beside a checkpoint trained with `alcap train-tagger`


def _read_tags() -> tuple[str, ...]:
    text = files("alcap.audio").joinpath("msd_top50_tags.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip())


MSD_TOP50_TAGS: tuple[str, ...] = _read_tags()


def top_tags(probs, k: int = 5, names: tuple[str, ...] = MSD_TOP50_TAGS) -> dict[str, float]:
    """The k most probable tags as {name: probability}, most probable first."""
    probs = [float(p) for p in probs]
    if len(probs) != len(names):
        raise ValueError(f"{len(probs)} tag probabilities but {len(names)} tag names")
    order = sorted(range(len(probs)), key=lambda i: -probs[i])[: max(0, k)]
    return {names[i]: round(probs[i], 4) for i in order}


def tag_names(checkpoint: str | Path, n_tags: int) -> tuple[str, ...]:
    """Names for a checkpoint's tag head: `tags.txt` beside it (a tagger trained with
    `alcap train-tagger`), else the MSD top-50 for a 50-tag head, else tag0, tag1, ..."""
    path = Path(checkpoint)
    listing = (path if path.is_dir() else path.parent) / TAG_NAMES_FILE
    if listing.is_file():
        names = tuple(line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip())
        if len(names) == n_tags:
            return names
    return default_tag_names(n_tags)


def default_tag_names(n_tags: int) -> tuple[str, ...]:
    """The MSD top-50 for a 50-tag head (the public checkpoint's), else tag0, tag1, ..."""
    if n_tags == len(MSD_TOP50_TAGS):
        return MSD_TOP50_TAGS
    return tuple(f"tag{i}" for i in range(n_tags))
