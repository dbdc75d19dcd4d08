"""Audio decoding: any file libsndfile reads -> mono float32 excerpt at the encoder's rate.

Only the frames the excerpt needs are read from disk, so a 30 s clip costs a 15 s decode.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

EXCERPT_POSITIONS = ("middle", "start", "offset")


class AudioError(Exception):
    """A file that cannot be turned into audio; the message names the file and the reason."""

    def __init__(self, path: str | Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


@dataclass(frozen=True)
class Excerpt:
    """Which part of a song the music encoder hears.

    `seconds=None` takes the whole file. The default matches ALCAP: 15 s from the middle.
    """

    seconds: float | None = 15.0
    position: str = "middle"
    offset: float = 0.0

    def __post_init__(self):
        if self.position not in EXCERPT_POSITIONS:
            raise ValueError(f"excerpt position must be one of {EXCERPT_POSITIONS}, got {self.position!r}")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"excerpt length must be positive, got {self.seconds}")
        if self.offset < 0:
            raise ValueError(f"excerpt offset must be >= 0, got {self.offset}")

    def to_dict(self) -> dict:
        return asdict(self)

    def describe(self) -> str:
        if self.seconds is None:
            return "whole file"
        where = {"middle": "from the middle", "start": "from the start"}.get(self.position, f"from {self.offset:g} s")
        return f"{self.seconds:g} s {where}"

    def start_frame(self, total_frames: int, sample_rate: int) -> int:
        if self.seconds is None or self.position == "start":
            return 0
        if self.position == "offset":
            return int(round(self.offset * sample_rate))
        length = int(round(self.seconds * sample_rate))
        return max(0, (total_frames - length) // 2)


@dataclass
class Clip:
    """A decoded excerpt. `duration` counts real audio only; the rest of `samples` is zero padding."""

    samples: np.ndarray  # (N,) float32 mono at sample_rate
    sample_rate: int
    duration: float
    source_duration: float
    source_sample_rate: int
    source_channels: int

    @property
    def padded(self) -> bool:
        return self.duration * self.sample_rate < len(self.samples) - 0.5


MIN_AUDIO_SECONDS = 0.5  # shorter files are no song: the encoder would hear mostly padding
# A file may decode a little shorter than its header says (MP3 frame padding, encoder delay);
# more than this is a truncated file whose excerpt would be mostly silence.
TRUNCATION_TOLERANCE_SECONDS = 0.5


def audio_info(path: str | Path) -> sf._SoundFileInfo:
    """Header-only check that a file is decodable audio; raises AudioError otherwise."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as exc:
        raise AudioError(path, _os_reason(path, exc)) from None
    if path.is_dir():
        raise AudioError(path, "is a directory, not an audio file")
    if not path.is_file():
        raise AudioError(path, "is not a regular file (a pipe, socket or device); give an audio file")
    if stat.st_size == 0:
        raise AudioError(path, "file is empty (0 bytes)")
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, TypeError) as exc:
        raise AudioError(path, f"not a readable audio file ({_libsndfile_reason(exc)})") from None
    except OSError as exc:
        raise AudioError(path, _os_reason(path, exc)) from None
    if info.frames <= 0 or info.samplerate <= 0:
        raise AudioError(path, "contains no audio samples")
    if info.frames < MIN_AUDIO_SECONDS * info.samplerate:
        raise AudioError(path, f"only {info.frames / info.samplerate:.3f} s of audio; at least "
                               f"{MIN_AUDIO_SECONDS:g} s is needed")
    return info


def _os_reason(path: Path, exc: OSError) -> str:
    """What an OS error means for an input file, in words (a dangling link is not a loop)."""
    import errno

    if exc.errno == errno.ELOOP:
        return "symbolic link loop (the link points back at itself); fix or remove the link"
    if exc.errno == errno.ENOENT:
        return "broken symbolic link (its target does not exist)" if path.is_symlink() else "file not found"
    if exc.errno == errno.EACCES:
        return "permission denied (the file is not readable by this user)"
    if exc.errno == errno.ENOTDIR:
        return "file not found (a folder in its path is a file)"
    return exc.strerror or str(exc)


def source_name(audio) -> str:
    """How an audio input is named in results and errors: its path, else what kind of input it is."""
    if isinstance(audio, (str, Path)):
        return str(audio)
    if isinstance(audio, (bytes, bytearray, memoryview)):
        return "<audio bytes>"
    if hasattr(audio, "read"):
        name = getattr(audio, "name", None)
        return name if isinstance(name, str) else "<audio file object>"
    return "<no audio>" if audio is None else "<waveform>"


def load_audio(path, sample_rate: int = 16000, excerpt: Excerpt = Excerpt()) -> Clip:
    """Decode, downmix to mono, resample (soxr, band-limited) and cut/pad the excerpt.

    `path`: a file path, the file's bytes, or a binary file object (an upload, an open file)."""
    if isinstance(path, (bytes, bytearray, memoryview)):
        import io

        return _load(io.BytesIO(bytes(path)), source_name(path), sample_rate, excerpt)
    return _load(path, source_name(path) if hasattr(path, "read") else path, sample_rate, excerpt)


def load_waveform(wave, source_rate: int, sample_rate: int = 16000, excerpt: Excerpt = Excerpt(),
                  name: str = "<waveform>") -> Clip:
    """A waveform in memory as `load_audio` would give its file: (samples,) or (channels,
    samples) as numpy or torch, floats in [-1, 1] (integers are scaled from their type's range)."""
    if hasattr(wave, "detach"):  # a torch tensor
        wave = wave.detach().cpu().numpy()
    wave = np.asarray(wave)
    if wave.ndim not in (1, 2) or wave.size == 0:
        raise AudioError(name, f"a waveform is (samples,) or (channels, samples); got shape {wave.shape}")
    if np.issubdtype(wave.dtype, np.integer):
        wave = wave.astype(np.float32) / float(np.iinfo(wave.dtype).max)
    if not np.issubdtype(wave.dtype, np.floating):
        raise AudioError(name, f"a waveform holds numbers; got {wave.dtype}")
    if not isinstance(source_rate, (int, np.integer)) or source_rate <= 0:
        raise AudioError(name, f"sample rate must be a positive whole number of Hz, got {source_rate!r}")
    data = np.asarray(wave, dtype=np.float32).reshape(1, -1) if wave.ndim == 1 else np.asarray(wave, np.float32)
    data = data.T  # (frames, channels), as soundfile reads
    total = data.shape[0]
    if total < MIN_AUDIO_SECONDS * source_rate:
        raise AudioError(name, f"only {total / source_rate:.3f} s of audio; at least {MIN_AUDIO_SECONDS:g} s is needed")
    start = excerpt.start_frame(total, int(source_rate))
    if start >= total:
        raise AudioError(name, f"excerpt offset {excerpt.offset:g} s is past the end of the audio ({total / source_rate:.2f} s)")
    frames = total - start if excerpt.seconds is None else min(total - start, int(round(excerpt.seconds * source_rate)))
    return _to_clip(name, data[start:start + frames], int(source_rate), total, sample_rate, excerpt)


def _load(source, name, sample_rate: int, excerpt: Excerpt) -> Clip:
    if isinstance(source, (str, Path)):
        info = audio_info(source)
        read_from = str(source)
    else:
        try:
            info = sf.info(source)
            source.seek(0)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise AudioError(name, f"not a readable audio file ({_libsndfile_reason(exc)})") from None
        if info.frames <= 0 or info.samplerate <= 0:
            raise AudioError(name, "contains no audio samples")
        if info.frames < MIN_AUDIO_SECONDS * info.samplerate:
            raise AudioError(name, f"only {info.frames / info.samplerate:.3f} s of audio; at least "
                                   f"{MIN_AUDIO_SECONDS:g} s is needed")
        read_from = source
    path = name
    src_rate, total = info.samplerate, info.frames
    start = excerpt.start_frame(total, src_rate)
    if start >= total:
        raise AudioError(path, f"excerpt offset {excerpt.offset:g} s is past the end of the audio ({total / src_rate:.2f} s)")
    frames = total - start if excerpt.seconds is None else min(total - start, int(round(excerpt.seconds * src_rate)))
    # MPEG audio cannot be entered mid-stream cleanly (the first frame after a seek lacks its
    # bit reservoir and libmpg123 reports an error), so MP3 is decoded from the start; it is cheap.
    lead = start if info.format in ("MP3", "MPEG") else 0
    try:
        data, _ = sf.read(read_from, start=start - lead, frames=frames + lead, dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
        raise AudioError(path, f"decoding failed ({_short(exc)})") from None
    except OSError as exc:
        raise AudioError(path, _os_reason(Path(path), exc)) from None
    if frames + lead - data.shape[0] > TRUNCATION_TOLERANCE_SECONDS * src_rate:
        decodable = (start - lead + data.shape[0]) / src_rate
        raise AudioError(path, f"truncated or corrupt: the header declares {total / src_rate:.2f} s but only "
                               f"{decodable:.2f} s could be decoded")
    return _to_clip(path, data[lead:], src_rate, total, sample_rate, excerpt)


def _to_clip(path, data: np.ndarray, src_rate: int, total: int, sample_rate: int, excerpt: Excerpt) -> Clip:
    """(frames, channels) float32 of the excerpt -> mono at `sample_rate`, cut or padded."""
    if data.shape[0] == 0:
        raise AudioError(path, "decoded no samples (truncated or corrupt file)")
    if not np.isfinite(data).all():
        raise AudioError(path, "contains NaN or infinite samples")

    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if src_rate != sample_rate:
        mono = soxr.resample(mono, src_rate, sample_rate, quality="HQ").astype(np.float32, copy=False)
    real = len(mono)
    if excerpt.seconds is not None:
        target = int(round(excerpt.seconds * sample_rate))
        if real >= target:
            mono, real = mono[:target], target
        else:
            mono = np.concatenate([mono, np.zeros(target - real, dtype=np.float32)])
    return Clip(
        samples=np.ascontiguousarray(mono, dtype=np.float32),
        sample_rate=sample_rate,
        duration=real / sample_rate,
        source_duration=total / src_rate,
        source_sample_rate=src_rate,
        source_channels=data.shape[1],
    )


class TrackWindows:
    """A whole track as consecutive windows of `window_seconds` at `sample_rate`, decoded and
    resampled block by block (soxr's streaming resampler), so memory holds about two windows
    whatever the track's length. Each window is (window,) float32 mono.

    Every second is heard once, and no window is mostly silence: a track shorter than one
    window gives one zero-padded window (as a short excerpt is padded); otherwise the last,
    partial window is replaced by the track's final full window, which overlaps the one before.
    Iterate it once; `duration` and `windows` are set by then. Raises AudioError as load_audio."""

    BLOCK_SECONDS = 5.0

    def __init__(self, audio, sample_rate: int = 16000, window_seconds: float = 15.0):
        if window_seconds <= 0:
            raise ValueError(f"window length must be positive, got {window_seconds}")
        self.audio, self.sample_rate, self.window_seconds = audio, sample_rate, window_seconds
        self.name = "<waveform>" if isinstance(audio, np.ndarray) else source_name(audio)
        self.window = int(round(window_seconds * sample_rate))
        self.duration = 0.0  # seconds of real audio at sample_rate
        self.source_duration = 0.0
        self.windows = 0

    def _open(self):
        if isinstance(self.audio, (str, Path)):
            info = audio_info(self.audio)
            return sf.SoundFile(str(self.audio)), info
        source = io.BytesIO(bytes(self.audio)) if isinstance(self.audio, (bytes, bytearray, memoryview)) else self.audio
        try:
            info = sf.info(source)
            source.seek(0)
            handle = sf.SoundFile(source)
        except (sf.LibsndfileError, RuntimeError, TypeError, ValueError) as exc:
            raise AudioError(self.name, f"not a readable audio file ({_libsndfile_reason(exc)})") from None
        if info.frames < MIN_AUDIO_SECONDS * max(info.samplerate, 1):
            raise AudioError(self.name, f"only {info.frames / max(info.samplerate, 1):.3f} s of audio; at least "
                                        f"{MIN_AUDIO_SECONDS:g} s is needed")
        return handle, info

    def _resampled_blocks(self):
        if isinstance(self.audio, np.ndarray):  # already mono at sample_rate (a waveform in memory)
            self.source_duration = len(self.audio) / self.sample_rate
            yield np.asarray(self.audio, dtype=np.float32)
            return
        handle, info = self._open()
        self.source_duration = info.frames / info.samplerate
        resampler = (soxr.ResampleStream(info.samplerate, self.sample_rate, 1, dtype="float32", quality="HQ")
                     if info.samplerate != self.sample_rate else None)
        decoded = 0
        block = max(1, int(self.BLOCK_SECONDS * info.samplerate))
        mpeg = info.format in ("MP3", "MPEG")
        try:
            with handle:
                while True:
                    try:
                        with _quiet_native_stderr(mpeg):
                            data = handle.read(block, dtype="float32", always_2d=True)
                    except (sf.LibsndfileError, RuntimeError, ValueError) as exc:
                        raise AudioError(self.name, f"decoding failed ({_short(exc)})") from None
                    last = data.shape[0] < block
                    if not np.isfinite(data).all():
                        raise AudioError(self.name, "contains NaN or infinite samples")
                    decoded += data.shape[0]
                    mono = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
                    out = resampler.resample_chunk(mono, last=last) if resampler is not None else mono
                    yield np.asarray(out, dtype=np.float32)
                    if last:
                        break
        except OSError as exc:
            raise AudioError(self.name, _os_reason(Path(self.name), exc)) from None
        if info.frames - decoded > TRUNCATION_TOLERANCE_SECONDS * info.samplerate:
            raise AudioError(self.name, f"truncated or corrupt: the header declares {info.frames / info.samplerate:.2f}"
                                        f" s but only {decoded / info.samplerate:.2f} s could be decoded")
        if decoded == 0:
            raise AudioError(self.name, "decoded no samples (truncated or corrupt file)")

    def __iter__(self):
        w = self.window
        pending = np.zeros(0, dtype=np.float32)
        previous = None  # the last full window given out
        total = 0
        for chunk in self._resampled_blocks():
            total += len(chunk)
            pending = np.concatenate([pending, chunk]) if len(pending) else chunk
            while len(pending) >= w:
                previous, pending = np.ascontiguousarray(pending[:w]), pending[w:]
                self.windows += 1
                yield previous
        self.duration = total / self.sample_rate
        if len(pending):
            if previous is None:  # shorter than one window: padded, as an excerpt is
                tail = np.concatenate([pending, np.zeros(w - len(pending), dtype=np.float32)])
            else:  # the track's final full window
                tail = np.concatenate([previous[len(pending):], pending])
            self.windows += 1
            yield tail


@contextlib.contextmanager
def _quiet_native_stderr(active: bool = True):
    """Silence what C code writes to file descriptor 2 meanwhile. libmpg123, under libsndfile,
    prints "part2_3_length ... too large for available bit count" when an MP3 is read in
    blocks, although the samples are those of one whole read (to float rounding); libsndfile
    gives no way to make it quiet."""
    if not active:
        yield
        return
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _libsndfile_reason(exc: Exception) -> str:
    """libsndfile's reason without the path it repeats; its "does not exist or is not a regular
    file (possibly a pipe?)" is said of regular files with no decodable frames too."""
    text = _short(exc)
    if text.startswith("Error opening "):
        text = text.split(": ", 1)[-1]
    if "possibly a pipe" in text:
        return "no decodable audio frames: a corrupt file, or not audio at all"
    return text.rstrip(".")


def _short(exc: Exception) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return text[:200]
