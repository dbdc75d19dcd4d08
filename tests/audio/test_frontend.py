import librosa
import numpy as np
import pytest
import torch

from alcap.audio.frontend import MelFrontEnd, mel_filterbank


def music_like(seconds: float, seed: int) -> np.ndarray:
    """Harmonic notes, a decaying percussive burst, quiet noise and a silent gap: a wide dB range."""
    rng = np.random.default_rng(seed)
    sr = 16000
    t = np.arange(int(seconds * sr)) / sr
    x = np.zeros_like(t)
    for f0 in rng.uniform(80, 900, size=4):
        x += sum(0.3 / k * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6)) for k in range(1, 8) if k * f0 < 7900)
    x += 0.4 * rng.standard_normal(len(t)) * np.exp(-((t % 0.5) * 20))
    x += 1e-3 * rng.standard_normal(len(t))
    x[int(0.4 * len(t)) : int(0.45 * len(t))] = 0.0  # digital silence hits the 1e-10 floor
    return (0.5 * x / np.abs(x).max()).astype(np.float32)


def librosa_db(wave: np.ndarray) -> np.ndarray:
    mel = librosa.feature.melspectrogram(
        y=wave.astype(np.float64), sr=16000, n_fft=512, hop_length=256, n_mels=128, fmin=0, fmax=8000,
        htk=True, norm=None, power=2.0, center=True, pad_mode="reflect", window="hann",
    )
    return 10 * np.log10(np.maximum(mel, 1e-10))


@pytest.mark.parametrize("seed", [0, 1])
def test_matches_librosa_to_a_thousandth_of_a_db(seed):
    wave = music_like(15.0, seed)
    ours = MelFrontEnd()(torch.from_numpy(wave)[None])[0].numpy()
    ref = librosa_db(wave)
    assert ours.shape == ref.shape == (128, 938)  # 15 s at 16 kHz: 938 frames, as SPEC section 3
    assert np.abs(ours - ref).max() <= 1e-3


def test_filterbank_equals_librosa_htk_unnormalised():
    ours = mel_filterbank(257, 0.0, 8000.0, 128, 16000).numpy()
    ref = librosa.filters.mel(sr=16000, n_fft=512, n_mels=128, fmin=0, fmax=8000, htk=True, norm=None).T
    np.testing.assert_allclose(ours, ref, atol=1e-6)


def test_batch_rows_are_independent_and_silence_hits_the_floor():
    waves = torch.from_numpy(np.stack([music_like(3.0, 0), np.zeros(48000, np.float32)]))
    out = MelFrontEnd()(waves)
    single = MelFrontEnd()(waves[:1])
    assert torch.equal(out[:1], single)
    assert torch.all(out[1] == -100.0)


def test_front_end_has_no_state_to_load():
    assert MelFrontEnd().state_dict() == {}
