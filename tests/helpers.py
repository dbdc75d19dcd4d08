"""Helpers that write test audio (tests import them as `from helpers import ...`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

SUBTYPE = {"wav": "PCM_16", "flac": "PCM_16", "ogg": "VORBIS", "mp3": "MPEG_LAYER_III"}
FORMAT = {"wav": "WAV", "flac": "FLAC", "ogg": "OGG", "mp3": "MP3"}


def tone(seconds: float, sample_rate: int, freq: float = 440.0, channels: int = 1, amp: float = 0.5) -> np.ndarray:
    """A sine with a little noise, (frames, channels) float32."""
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    x = amp * np.sin(2 * np.pi * freq * t) + 0.01 * np.random.default_rng(0).standard_normal(len(t))
    return np.repeat(x[:, None], channels, axis=1).astype(np.float32)


def write_audio(path: Path, data: np.ndarray, sample_rate: int, ext: str | None = None, subtype: str | None = None) -> Path:
    ext = ext or path.suffix.lstrip(".")
    sf.write(str(path), data, sample_rate, format=FORMAT[ext], subtype=subtype or SUBTYPE[ext])
    return path


def require_wordnet() -> None:
    """Skip a METEOR check where WordNet is missing, except in CI, where that fails the test:
    METEOR checks must not vanish silently."""
    import pytest

    from alcap.metrics.wordnet import wordnet_required, wordnet_status

    ok, reason = wordnet_status()
    if not ok:
        if wordnet_required():
            pytest.fail(f"CI must have WordNet for METEOR: {reason}")
        pytest.skip(f"METEOR needs WordNet (`make` sets it up): {reason}")
