"""Log-mel front end of CNNSA in plain torch.

Equals torchaudio's `MelSpectrogram(sample_rate=16000, n_fft=512, f_min=0, f_max=8000,
n_mels=128)` followed by `AmplitudeToDB()` with their defaults: periodic Hann window, hop
n_fft // 2, centred reflect padding, power 2, HTK mel scale without filter normalisation,
10 * log10(max(x, 1e-10)) and no top-dB clipping. torchaudio itself is not used because its
wheels do not pair with our pinned torch.
"""

from __future__ import annotations

import torch
from torch import nn


def hz_to_mel(hz: torch.Tensor | float) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + torch.as_tensor(hz, dtype=torch.float64) / 700.0)


def mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(n_freqs: int, f_min: float, f_max: float, n_mels: int, sample_rate: int) -> torch.Tensor:
    """Triangular HTK filters without area normalisation: (n_freqs, n_mels), float64."""
    fft_freqs = torch.linspace(0, sample_rate // 2, n_freqs, dtype=torch.float64)
    mel_pts = torch.linspace(float(hz_to_mel(f_min)), float(hz_to_mel(f_max)), n_mels + 2, dtype=torch.float64)
    hz_pts = mel_to_hz(mel_pts)
    widths = hz_pts[1:] - hz_pts[:-1]  # (n_mels + 1,)
    slopes = hz_pts.unsqueeze(0) - fft_freqs.unsqueeze(1)  # (n_freqs, n_mels + 2)
    rising = -slopes[:, :-2] / widths[:-1]
    falling = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(rising, falling), min=0.0)


class MelFrontEnd(nn.Module):
    """Waveform (B, N) -> log-mel power in dB (B, n_mels, T), T = N // hop + 1.

    The STFT and the filter bank run in float64: the dB of quiet mel bands is then exact to
    well under 1e-3 dB, where float32 FFT round-off would dominate. It is a small share of
    the encoder's cost. The buffers are not persistent: the front end is fixed, not learned.
    """

    def __init__(
        self,
        sample_rate: int = 16000,
        n_fft: int = 512,
        hop_length: int | None = None,
        n_mels: int = 128,
        f_min: float = 0.0,
        f_max: float = 8000.0,
        amin: float = 1e-10,
    ):
        super().__init__()
        self.sample_rate, self.n_fft, self.n_mels = sample_rate, n_fft, n_mels
        self.hop_length = hop_length or n_fft // 2
        self.f_min, self.f_max = f_min, f_max
        self.amin = amin
        self.register_buffer("window", torch.hann_window(n_fft, periodic=True, dtype=torch.float64), persistent=False)
        self.register_buffer("filters", mel_filterbank(n_fft // 2 + 1, f_min, f_max, n_mels, sample_rate), persistent=False)

    def config(self) -> dict:
        return {
            "sample_rate": self.sample_rate, "n_fft": self.n_fft, "hop_length": self.hop_length,
            "n_mels": self.n_mels, "f_min": self.f_min, "f_max": self.f_max, "amin": self.amin,
            "window": "hann-periodic", "center": True, "pad_mode": "reflect", "mel_scale": "htk", "norm": None,
        }

    def num_frames(self, num_samples: int) -> int:
        return num_samples // self.hop_length + 1

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(wave.shape)}")
        if wave.shape[-1] <= self.n_fft // 2:  # reflect padding needs more samples than the pad
            wave = nn.functional.pad(wave, (0, self.n_fft // 2 + 1 - wave.shape[-1]))
        spec = torch.stft(
            wave.to(torch.float64), n_fft=self.n_fft, hop_length=self.hop_length, win_length=self.n_fft,
            window=self.window, center=True, pad_mode="reflect", normalized=False, return_complex=True,
        )
        power = spec.real.square() + spec.imag.square()  # (B, n_freqs, T)
        mel = torch.matmul(self.filters.transpose(0, 1), power)  # (B, n_mels, T)
        return (10.0 * torch.log10(torch.clamp(mel, min=self.amin))).to(torch.float32)
