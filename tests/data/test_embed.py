import numpy as np
import pytest
import soundfile as sf
import torch

from alcap.audio.decode import Excerpt
from alcap.audio.extractor import CNNSAExtractor, MusicExtractor
from alcap.data.embed import embed_songs
from alcap.data.store import EmbeddingStore

from helpers import tone, write_audio


class FramesExtractor(MusicExtractor):
    """A cheap stand-in encoder: per-0.1 s frame mean and RMS, tiled to `dim`."""

    name, sample_rate, dim = "frames", 16000, 4

    def __init__(self, fail_after_batches: int | None = None):
        self.calls = 0
        self.fail_after_batches = fail_after_batches

    def identity(self) -> dict:
        return {"name": self.name, "weights_sha256": "none", "dim": self.dim}

    def embed(self, waves: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.fail_after_batches is not None and self.calls > self.fail_after_batches:
            raise KeyboardInterrupt  # the user presses Ctrl-C while a batch is in flight
        frames = waves.view(waves.shape[0], -1, 1600)
        feats = torch.stack([frames.mean(-1), frames.pow(2).mean(-1).sqrt()], dim=-1)
        return torch.cat([feats, feats], dim=-1)


@pytest.fixture
def bad_and_good(audio_dir):
    """The awkward inputs of issue 2: bad files beside good ones of every shape."""
    files = {
        "mono": write_audio(audio_dir / "mono.wav", tone(20.0, 16000), 16000),
        "six_channels": write_audio(audio_dir / "six.flac", tone(16.0, 44100, channels=6), 44100),
        "8k": write_audio(audio_dir / "low.wav", tone(16.0, 8000), 8000),
        "48k": write_audio(audio_dir / "high.ogg", tone(16.0, 48000, channels=2), 48000),
        "one_second": write_audio(audio_dir / "short.mp3", tone(1.0, 22050), 22050),
        "silence": write_audio(audio_dir / "silence.wav", np.zeros((16000 * 16, 1), np.float32), 16000),
        "wrong_extension": write_audio(audio_dir / "flac_named.ogg", tone(16.0, 16000), 16000, ext="flac"),
    }
    (audio_dir / "empty.wav").write_bytes(b"")
    (audio_dir / "corrupt.mp3").write_bytes(b"\xff\xfb\x90\x00" + b"garbage" * 300)
    files["zero_length"] = audio_dir / "empty.wav"
    files["corrupt"] = audio_dir / "corrupt.mp3"
    files["missing"] = audio_dir / "missing.wav"
    return {k: str(v) for k, v in files.items()}


BAD = {"zero_length", "corrupt", "missing"}


def test_real_encoder_on_awkward_inputs(tmp_path, bad_and_good):
    extractor = CNNSAExtractor.random_init(0, device="cpu")
    report = embed_songs(bad_and_good, extractor, tmp_path / "store", batch_size=4, workers=0, progress=False)
    assert report.embedded == len(bad_and_good) - len(BAD)
    failed = {f["id"]: f["reason"] for f in report.failures}
    assert set(failed) == BAD
    assert "empty" in failed["zero_length"] and "not found" in failed["missing"]
    store = EmbeddingStore.open(tmp_path / "store")
    for song_id in set(bad_and_good) - BAD:
        emb = store.get(song_id)
        assert emb.shape == (119, 256) and np.isfinite(emb).all(), song_id
    assert store.entry("one_second").duration == pytest.approx(1.0, abs=0.01)
    assert store.entry("six_channels").source_channels == 6
    assert {f["id"] for f in store.failures()} == BAD
    # Stored float16 values equal the encoder's output for the same excerpt.
    from alcap.audio.decode import load_audio

    direct = extractor.embed(torch.from_numpy(load_audio(bad_and_good["48k"]).samples)[None])[0].numpy()
    np.testing.assert_allclose(store.get("48k"), direct, atol=2e-3, rtol=2e-3)


def test_workers_and_batches_do_not_change_the_result(tmp_path, bad_and_good):
    a = embed_songs(bad_and_good, FramesExtractor(), tmp_path / "a", batch_size=3, workers=2, progress=False)
    b = embed_songs(bad_and_good, FramesExtractor(), tmp_path / "b", batch_size=10, workers=0, progress=False)
    assert a.embedded == b.embedded == len(bad_and_good) - len(BAD)
    sa, sb = EmbeddingStore.open(tmp_path / "a"), EmbeddingStore.open(tmp_path / "b")
    assert set(sa) == set(sb)
    for song_id in sa:
        np.testing.assert_array_equal(sa[song_id], sb[song_id])


def test_interrupted_run_resumes_without_redoing_work(tmp_path, audio_dir):
    songs = {f"s{i}": str(write_audio(audio_dir / f"s{i}.wav", tone(15.0, 16000, freq=200 + 50 * i), 16000))
             for i in range(7)}
    with pytest.raises(KeyboardInterrupt):
        embed_songs(songs, FramesExtractor(fail_after_batches=2), tmp_path / "s", batch_size=2, workers=0, progress=False)
    assert EmbeddingStore.open(tmp_path / "s").song_ids == ["s0", "s1", "s2", "s3"]  # two whole batches kept
    extractor = FramesExtractor()
    report = embed_songs(songs, extractor, tmp_path / "s", batch_size=2, workers=0, progress=False)
    assert report.already_done == 4 and report.embedded == 3 and extractor.calls == 2
    store = EmbeddingStore.open(tmp_path / "s")
    assert store.song_ids == [f"s{i}" for i in range(7)]
    fresh = embed_songs(songs, FramesExtractor(), tmp_path / "fresh", batch_size=7, workers=0, progress=False)
    assert fresh.embedded == 7
    for song_id in songs:
        np.testing.assert_array_equal(store[song_id], EmbeddingStore.open(tmp_path / "fresh")[song_id])


def test_whole_file_excerpts_of_different_lengths(tmp_path, audio_dir):
    songs = {"a": str(write_audio(audio_dir / "a.wav", tone(2.0, 16000), 16000)),
             "b": str(write_audio(audio_dir / "b.wav", tone(3.0, 16000), 16000))}
    embed_songs(songs, FramesExtractor(), tmp_path / "s", excerpt=Excerpt(seconds=None), workers=0, progress=False)
    store = EmbeddingStore.open(tmp_path / "s")
    assert store["a"].shape == (20, 4) and store["b"].shape == (30, 4)
    assert store.meta["excerpt"] == {"seconds": None, "position": "middle", "offset": 0.0}


def test_a_file_fixed_after_a_failure_is_retried(tmp_path, audio_dir):
    path = audio_dir / "later.wav"
    path.write_bytes(b"")
    assert embed_songs({"x": str(path)}, FramesExtractor(), tmp_path / "s", workers=0, progress=False).failures
    sf.write(str(path), tone(15.0, 16000), 16000)
    report = embed_songs({"x": str(path)}, FramesExtractor(), tmp_path / "s", workers=0, progress=False)
    assert report.embedded == 1 and not EmbeddingStore.open(tmp_path / "s").failures()
