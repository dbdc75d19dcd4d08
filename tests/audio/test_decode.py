import os

import numpy as np
import pytest
import soundfile as sf

from alcap.audio.decode import AudioError, Excerpt, TrackWindows, load_audio

from helpers import tone, write_audio


@pytest.mark.parametrize("ext", ["wav", "flac", "ogg", "mp3"])
def test_every_format_decodes_to_16k_mono_15s(audio_dir, ext):
    path = write_audio(audio_dir / f"song.{ext}", tone(20.0, 44100, channels=2), 44100)
    clip = load_audio(path)
    assert clip.samples.dtype == np.float32 and clip.samples.shape == (240000,)
    assert clip.sample_rate == 16000 and clip.source_sample_rate == 44100 and clip.source_channels == 2
    assert clip.duration == pytest.approx(15.0)
    assert clip.source_duration == pytest.approx(20.0, abs=0.1)
    assert 0.3 < np.abs(clip.samples).max() < 0.6  # the 0.5 sine survives encoding and resampling


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_int_and_float_samples_scale_to_unit_range(audio_dir, subtype):
    data = tone(2.0, 16000, amp=0.5)
    path = write_audio(audio_dir / "song.wav", data, 16000, subtype=subtype)
    clip = load_audio(path, excerpt=Excerpt(seconds=None))
    np.testing.assert_allclose(clip.samples, data[:, 0], atol=1 / 127)  # 8-bit quantisation step


def test_resampling_keeps_pitch_and_is_band_limited(audio_dir):
    # 1 kHz at 48 kHz and at 8 kHz must both land on 1 kHz at 16 kHz.
    for rate in (48000, 8000):
        path = write_audio(audio_dir / f"s{rate}.wav", tone(3.0, rate, freq=1000.0), rate)
        clip = load_audio(path, excerpt=Excerpt(seconds=None))
        assert len(clip.samples) == pytest.approx(48000, abs=2)
        spectrum = np.abs(np.fft.rfft(clip.samples))
        peak_hz = np.argmax(spectrum) * 16000 / len(clip.samples)
        assert peak_hz == pytest.approx(1000.0, abs=2.0)
    # A 7.5 kHz tone at 48 kHz is above the new Nyquist (8 kHz) guard band edge; a proper
    # resampler removes it instead of folding it back as an alias at 8.5 -> 7.5 kHz.
    path = write_audio(audio_dir / "high.wav", tone(2.0, 48000, freq=11000.0), 48000)
    clip = load_audio(path, excerpt=Excerpt(seconds=None))
    assert np.sqrt(np.mean(clip.samples**2)) < 0.02


def test_multichannel_is_averaged(audio_dir):
    data = np.zeros((16000, 6), dtype=np.float32)
    data[:, 0], data[:, 5] = 0.6, 0.3
    clip = load_audio(write_audio(audio_dir / "six.wav", data, 16000, subtype="FLOAT"), excerpt=Excerpt(seconds=None))
    assert clip.source_channels == 6
    np.testing.assert_allclose(clip.samples, 0.15, atol=1e-6)


def test_excerpt_positions(audio_dir):
    ramp = (np.arange(30 * 16000) / (30 * 16000)).astype(np.float32)[:, None]  # value encodes the time
    path = write_audio(audio_dir / "ramp.wav", ramp, 16000, subtype="FLOAT")
    middle = load_audio(path, excerpt=Excerpt(10.0, "middle"))
    start = load_audio(path, excerpt=Excerpt(10.0, "start"))
    offset = load_audio(path, excerpt=Excerpt(10.0, "offset", offset=3.0))
    assert middle.samples[0] == pytest.approx(10 / 30, abs=1e-6)
    assert start.samples[0] == pytest.approx(0.0, abs=1e-6)
    assert offset.samples[0] == pytest.approx(3 / 30, abs=1e-6)
    assert len(middle.samples) == len(start.samples) == len(offset.samples) == 160000
    with pytest.raises(AudioError, match="past the end"):
        load_audio(path, excerpt=Excerpt(10.0, "offset", offset=31.0))


def test_short_clip_is_padded_and_keeps_true_duration(audio_dir):
    clip = load_audio(write_audio(audio_dir / "short.flac", tone(1.0, 22050), 22050))
    assert clip.samples.shape == (240000,)
    assert clip.duration == pytest.approx(1.0, abs=1e-3) and clip.padded
    assert np.all(clip.samples[16100:] == 0)


def test_bad_files_name_the_file_and_the_reason(audio_dir):
    empty = audio_dir / "empty.wav"
    empty.write_bytes(b"")
    garbage = audio_dir / "garbage.mp3"
    garbage.write_bytes(b"this is not audio at all" * 100)
    text_as_wav = audio_dir / "notes.wav"
    text_as_wav.write_text("hello")
    for path, reason in [(empty, "empty"), (garbage, "not a readable audio file"), (text_as_wav, "not a readable audio file"),
                         (audio_dir / "missing.ogg", "not found")]:
        with pytest.raises(AudioError) as info:
            load_audio(path)
        assert str(path) in str(info.value) and reason in str(info.value)


def test_wrong_extension_is_decoded_by_content(audio_dir):
    path = write_audio(audio_dir / "really_a_flac.mp3", tone(2.0, 16000), 16000, ext="flac")
    assert load_audio(path, excerpt=Excerpt(seconds=None)).samples.shape == (32000,)


def test_nan_samples_are_rejected(audio_dir):
    data = tone(1.0, 16000)
    data[100] = np.nan
    path = audio_dir / "nan.wav"
    sf.write(str(path), data, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        load_audio(path)


@pytest.mark.parametrize("ext", ["flac", "mp3"])
def test_whole_tracks_stream_as_windows_equal_to_the_whole_decode(audio_dir, ext, capfd):
    rng = np.random.default_rng(0)
    data = (0.1 * rng.standard_normal((int(40.2 * 44100), 2))).astype(np.float32)
    path = write_audio(audio_dir / f"song.{ext}", data, 44100)
    whole = load_audio(path, excerpt=Excerpt(seconds=None)).samples
    capfd.readouterr()
    track = TrackWindows(path, 16000, 15.0)
    windows = list(track)
    assert "libmpg123" not in capfd.readouterr().err  # block reads of MP3 make it complain; silenced
    n = 240000
    assert len(windows) == track.windows == 3 and all(w.shape == (n,) and w.dtype == np.float32 for w in windows)
    assert track.duration == pytest.approx(len(whole) / 16000)
    np.testing.assert_allclose(windows[0], whole[:n], atol=1e-5)  # the same samples as one whole read
    np.testing.assert_allclose(windows[1], whole[n:2 * n], atol=1e-5)
    np.testing.assert_allclose(windows[2], whole[-n:], atol=1e-5)  # the last partial window: the final full one
    from_bytes = list(TrackWindows(path.read_bytes(), 16000, 15.0))
    with open(path, "rb") as handle:
        from_file = list(TrackWindows(handle, 16000, 15.0))
    assert all(np.array_equal(a, b) and np.array_equal(a, c) for a, b, c in zip(windows, from_bytes, from_file))


def test_a_track_shorter_than_a_window_is_the_padded_excerpt(audio_dir):
    path = write_audio(audio_dir / "short.wav", tone(4.0, 22050), 22050)
    (window,) = TrackWindows(path, 16000, 15.0)
    np.testing.assert_array_equal(window, load_audio(path).samples)


def test_streamed_tracks_hold_about_two_windows_in_memory_whatever_their_length(audio_dir):
    import tracemalloc

    path = audio_dir / "long.flac"
    with sf.SoundFile(str(path), "w", samplerate=44100, channels=1, subtype="PCM_16") as f:
        for minute in range(6):  # 6 minutes: 23 MB at 16 kHz float32, 64 MB as read at 44.1 kHz
            f.write(tone(60.0, 44100, freq=220.0 + 20 * minute))
    tracemalloc.start()
    try:
        count = sum(1 for _ in TrackWindows(path, 16000, 15.0))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert count == 24
    assert peak < 4 * 240000 * 4 + 4 * 5 * 44100 * 4, f"peak {peak / 1e6:.1f} MB"  # windows + decode blocks


def test_streamed_tracks_report_bad_files(audio_dir):
    data = tone(20.0, 16000)
    data[200000] = np.nan
    nan = audio_dir / "nan.wav"
    sf.write(str(nan), data, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match="NaN"):
        list(TrackWindows(nan, 16000, 15.0))
    full = write_audio(audio_dir / "full.flac", tone(20.0, 44100), 44100)
    cut = audio_dir / "cut.flac"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    with pytest.raises(AudioError, match="cut.flac: (truncated or corrupt|decoding failed)"):
        list(TrackWindows(cut, 16000, 15.0))
    with pytest.raises(AudioError, match="not a readable audio file"):
        list(TrackWindows(b"not audio", 16000, 15.0))


def test_mp3_middle_excerpt_equals_the_whole_decode_and_is_silent(audio_dir, capfd):
    # Regression: seeking into an MP3 made libmpg123 lose the bit reservoir, print errors on
    # stderr and garble the excerpt's first frame (15 of the 83 demo MP3s were off by up to 0.38).
    from alcap.data.demo import plan_corpus, synthesize

    spec = plan_corpus(300, seed=0)[51]  # one of those songs: 22.05 kHz mono
    path = write_audio(audio_dir / "song.mp3", synthesize(spec), spec.sample_rate)
    capfd.readouterr()
    excerpt = load_audio(path, sample_rate=spec.sample_rate, excerpt=Excerpt(10.0, "middle"))
    whole = load_audio(path, sample_rate=spec.sample_rate, excerpt=Excerpt(seconds=None))
    assert "libmpg123" not in capfd.readouterr().err
    n = int(10.0 * spec.sample_rate)
    start = (int(round(whole.source_duration * spec.sample_rate)) - n) // 2
    np.testing.assert_array_equal(excerpt.samples, whole.samples[start : start + n])


def test_files_that_are_not_songs_say_why(audio_dir, tmp_path):
    loop = tmp_path / "loop.wav"
    os.symlink(loop, loop)
    dangling = tmp_path / "dangling.wav"
    os.symlink(tmp_path / "gone.wav", dangling)
    fifo = tmp_path / "pipe.wav"
    os.mkfifo(fifo)
    one = write_audio(audio_dir / "one.wav", np.zeros((1, 1), dtype=np.float32), 16000)
    full = write_audio(audio_dir / "full.mp3", tone(20.0, 44100), 44100)
    cut = audio_dir / "cut.mp3"
    cut.write_bytes(full.read_bytes()[: full.stat().st_size * 17 // 100])
    garbage = audio_dir / "garbage.mp3"
    garbage.write_bytes(b"\xff\xfb\x90\x00" + b"garbage" * 300)  # libsndfile: "(possibly a pipe?)"
    expected = {garbage: r"not a readable audio file \(no decodable audio frames: a corrupt file, or not audio",
                loop: "symbolic link loop", dangling: "broken symbolic link", fifo: "is not a regular file",
                one: "only 0.000 s of audio; at least 0.5 s is needed",
                cut: r"truncated or corrupt: the header declares 20.00 s but only 3.\d+ s could be decoded"}
    for path, reason in expected.items():
        for excerpt in (Excerpt(), Excerpt(position="start"), Excerpt(seconds=None)):
            with pytest.raises(AudioError, match=reason):
                load_audio(path, 16000, excerpt)
    assert load_audio(full, 16000, Excerpt(seconds=None)).duration == pytest.approx(20.0, abs=0.05)
