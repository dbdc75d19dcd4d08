"""musicnn (Pons & Serra 2019) in torch, with the pretrained MSD and MTT weights of its PyPI wheel.

Written from the model's published description and its checkpoint's variable names and
shapes. One 187-frame log-mel patch (about 3 s) goes through

- a batch-normalised input;
- a front end of timbral convolutions (7 frames x 38 and x 67 mel bands, 204 filters each)
  and temporal ones (128, 64 and 32 frames x 1 band, 51 filters each), every map max-pooled
  over frequency: 561 channels per frame;
- a mid end of three 64-filter 1-D convolutions (7 frames) with residual connections, whose
  outputs are concatenated with the front end's (dense connections): 753 channels per frame;
- a back end of temporal max and mean pooling, a 200-unit dense layer and the 50 tag logits.

Every layer is convolution -> ReLU -> BatchNorm (TensorFlow's order), BatchNorm with
TensorFlow's epsilon 1e-3. tests/audio/test_musicnn.py checks this port against outputs of
the original TensorFlow code (tests/fixtures/musicnn/).

The weights come from the installed `musicnn` package's TensorFlow checkpoint, read by
`tfcheckpoint.TFCheckpoint` and converted once into a safetensors file in the cache.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from .tfcheckpoint import TFCheckpoint, TFCheckpointError

SAMPLE_RATE = 16000
N_FFT, HOP, N_MELS = 512, 256, 96
PATCH_FRAMES = 187  # librosa.time_to_frames(3 s) + 1, the length the models were trained on
BN_EPS = 1e-3  # tf.compat.v1.layers.batch_normalization's default
TIMBRAL_BANDS = (38, 67)  # int(0.4 * 96), int(0.7 * 96)
TEMPORAL_FRAMES = (128, 64, 32)
FRONT_FILTERS_TIMBRAL, FRONT_FILTERS_TEMPORAL = 204, 51  # int(1.6 * 128), int(1.6 * 32)
MIDEND_FILTERS, BACKEND_UNITS = 64, 200
FRAME_CHANNELS = len(TIMBRAL_BANDS) * FRONT_FILTERS_TIMBRAL + len(TEMPORAL_FRAMES) * FRONT_FILTERS_TEMPORAL + 3 * MIDEND_FILTERS
# The sequence a store keeps: the mid end's 753 channels averaged over windows of 17 frames
# (0.272 s), 11 windows per patch: 3.68 steps per second, 55 x 753 for a 15 s excerpt. Per
# frame (62.5 Hz) it would be 935 x 753, seventeen times the store and the fusion cost.
POOL_FRAMES = 17
VARIANTS = {"musicnn-msd": "MSD_musicnn", "musicnn-mtt": "MTT_musicnn"}
LABEL_LISTS = {"MSD_musicnn": "MSD_LABELS", "MTT_musicnn": "MTT_LABELS"}
PACKAGE_HINT = ("install it with `pip install --no-deps musicnn==0.1.0` (make demo / make test do it; --no-deps "
                "because it pins an ancient numpy, and only its checkpoint files are used)")


class MusicnnError(Exception):
    """The musicnn weights cannot be found or read."""


# ----------------------------------------------------------------------------- front end


def _hz_to_mel_slaney(hz: torch.Tensor) -> torch.Tensor:
    linear = hz / (200.0 / 3)  # 3 mels per 200 Hz below 1 kHz, log-spaced above
    log_step = torch.log(torch.tensor(6.4, dtype=torch.float64)) / 27.0
    return torch.where(hz >= 1000.0, 15.0 + torch.log(torch.clamp(hz, min=1e-10) / 1000.0) / log_step, linear)


def _mel_to_hz_slaney(mel: torch.Tensor) -> torch.Tensor:
    log_step = torch.log(torch.tensor(6.4, dtype=torch.float64)) / 27.0
    return torch.where(mel >= 15.0, 1000.0 * torch.exp(log_step * (mel - 15.0)), mel * (200.0 / 3))


def slaney_mel_filterbank(sample_rate: int = SAMPLE_RATE, n_fft: int = N_FFT, n_mels: int = N_MELS) -> torch.Tensor:
    """Triangular filters on the Slaney mel scale, each scaled to unit area ("slaney" norm),
    from 0 Hz to Nyquist: (n_fft // 2 + 1, n_mels), float64. librosa.filters.mel's default."""
    fft_freqs = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    top = _hz_to_mel_slaney(torch.tensor(sample_rate / 2, dtype=torch.float64))
    edges = _mel_to_hz_slaney(torch.linspace(0.0, float(top), n_mels + 2, dtype=torch.float64))
    widths = edges[1:] - edges[:-1]
    ramps = edges.unsqueeze(1) - fft_freqs.unsqueeze(0)  # (n_mels + 2, n_freqs)
    lower = -ramps[:-2] / widths[:-1].unsqueeze(1)
    upper = ramps[2:] / widths[1:].unsqueeze(1)
    weights = torch.clamp(torch.minimum(lower, upper), min=0.0)
    weights *= (2.0 / (edges[2:] - edges[:-2])).unsqueeze(1)
    return weights.transpose(0, 1)


class MusicnnFrontEnd(nn.Module):
    """Waveform (B, N) at 16 kHz -> musicnn's log-mel (B, T, 96), T = N // 256 + 1.

    As musicnn's `batch_data`: power STFT (512-point periodic Hann, hop 256, centred frames
    zero-padded), 96 Slaney mel bands, rounded to float16, then log10(10000 x + 1) in float32.
    The STFT and filter bank run in float64; only at float16 rounding ties can a value differ
    from librosa's float32 arithmetic, by one float16 step (tested against the original).
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("window", torch.hann_window(N_FFT, periodic=True, dtype=torch.float64), persistent=False)
        self.register_buffer("filters", slaney_mel_filterbank(), persistent=False)

    @staticmethod
    def config() -> dict:
        return {"sample_rate": SAMPLE_RATE, "n_fft": N_FFT, "hop_length": HOP, "n_mels": N_MELS, "window": "hann-periodic",
                "center": True, "pad_mode": "constant", "mel_scale": "slaney", "norm": "slaney",
                "compression": "log10(10000 * float16(mel) + 1)"}

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        if wave.dim() != 2:
            raise ValueError(f"expected a (batch, samples) waveform, got shape {tuple(wave.shape)}")
        spec = torch.stft(wave.to(torch.float64), n_fft=N_FFT, hop_length=HOP, window=self.window, center=True,
                          pad_mode="constant", return_complex=True)
        power = spec.real.square() + spec.imag.square()  # (B, n_freqs, T)
        mel = torch.matmul(power.transpose(1, 2), self.filters)  # (B, T, 96)
        mel = mel.to(torch.float32).to(torch.float16).to(torch.float32)
        return torch.log10(10000.0 * mel + 1.0)


def patches(mel: torch.Tensor) -> torch.Tensor:
    """(B, T, 96) -> (B, P, 187, 96): non-overlapping patches, a partial last one dropped
    (musicnn's input_overlap=False). Shorter than one patch: the frames are repeated to fill
    it, as musicnn's training did for short songs ("repeat-pad"); the original cannot tag those."""
    frames = mel.shape[1]
    if frames < PATCH_FRAMES:
        mel = mel.repeat(1, -(-PATCH_FRAMES // frames), 1)[:, :PATCH_FRAMES]
        frames = PATCH_FRAMES
    count = frames // PATCH_FRAMES
    return mel[:, : count * PATCH_FRAMES].reshape(mel.shape[0], count, PATCH_FRAMES, N_MELS)


# ----------------------------------------------------------------------------- model


def _same_pad(kernel: int) -> tuple[int, int]:
    """TensorFlow's 'same' padding for stride 1: the odd extra frame goes after."""
    return (kernel - 1) // 2, kernel - 1 - (kernel - 1) // 2


class FrontEndBlock(nn.Module):
    """conv -> ReLU -> BatchNorm -> max over frequency: one front-end filter shape."""

    def __init__(self, filters: int, frames: int, bands: int):
        super().__init__()
        self.conv = nn.Conv2d(1, filters, (frames, bands))
        self.bn = nn.BatchNorm2d(filters, eps=BN_EPS)
        self.time_pad = (3, 3) if bands > 1 else _same_pad(frames)  # timbral: 7 frames, centred

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, T, 96) -> (B, filters, T)
        x = F.pad(x, (0, 0, *self.time_pad))
        if self.training:
            return self.bn(F.relu(self.conv(x))).amax(dim=3)
        # The same in eval mode, 1.4x faster: BatchNorm is then a per-channel affine map a x + b,
        # and it and the ReLU are monotonic, so the maximum over frequency is taken first (the
        # minimum where a < 0) and both are applied to the pooled map, 96 times smaller.
        y = self.conv(x.contiguous(memory_format=torch.channels_last))
        scale = self.bn.weight / torch.sqrt(self.bn.running_var + self.bn.eps)
        pooled = torch.where((scale >= 0)[:, None], y.amax(dim=3), y.amin(dim=3))
        return F.batch_norm(F.relu(pooled), self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias,
                            False, 0.0, self.bn.eps)


@dataclass
class MusicnnOutput:
    frames: torch.Tensor  # (P, 187, 753) mid-end output per frame (front end, cnn1, cnn2, cnn3)
    mean_pool: torch.Tensor  # (P, 753)
    max_pool: torch.Tensor  # (P, 753)
    penultimate: torch.Tensor  # (P, 200)
    tag_logits: torch.Tensor  # (P, n_tags): one taggram row per patch

    @property
    def cnn3(self) -> torch.Tensor:
        return self.frames[..., -MIDEND_FILTERS:]


class Musicnn(nn.Module):
    def __init__(self, n_tags: int = 50):
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1, eps=BN_EPS)
        self.timbral = nn.ModuleList(FrontEndBlock(FRONT_FILTERS_TIMBRAL, 7, b) for b in TIMBRAL_BANDS)
        self.temporal = nn.ModuleList(FrontEndBlock(FRONT_FILTERS_TEMPORAL, f, 1) for f in TEMPORAL_FRAMES)
        front = FRAME_CHANNELS - 3 * MIDEND_FILTERS
        self.midend = nn.ModuleList(nn.Conv1d(c, MIDEND_FILTERS, 7, padding=3) for c in (front, MIDEND_FILTERS, MIDEND_FILTERS))
        self.midend_bn = nn.ModuleList(nn.BatchNorm1d(MIDEND_FILTERS, eps=BN_EPS) for _ in range(3))
        self.pool_bn = nn.BatchNorm1d(2 * FRAME_CHANNELS, eps=BN_EPS)
        self.penultimate = nn.Linear(2 * FRAME_CHANNELS, BACKEND_UNITS)
        self.penultimate_bn = nn.BatchNorm1d(BACKEND_UNITS, eps=BN_EPS)
        self.tags = nn.Linear(BACKEND_UNITS, n_tags)

    def frame_features(self, patch: torch.Tensor) -> torch.Tensor:
        """(P, 187, 96) log-mel patches -> (P, 753, 187) mid-end features."""
        x = self.input_bn(patch.unsqueeze(1))
        front = torch.cat([block(x) for block in (*self.timbral, *self.temporal)], dim=1)  # (P, 561, T)
        layers, h = [front], front
        for i, (conv, bn) in enumerate(zip(self.midend, self.midend_bn)):
            out = bn(F.relu(conv(h)))
            h = out if i == 0 else out + h  # layers 2 and 3 are residual
            layers.append(h)
        return torch.cat(layers, dim=1)

    def forward(self, patch: torch.Tensor) -> MusicnnOutput:
        frames = self.frame_features(patch)
        max_pool, mean_pool = frames.amax(dim=2), frames.mean(dim=2)
        # TensorFlow flattened the (753, 2) stack of [max, mean]: channels interleave.
        pooled = torch.stack([max_pool, mean_pool], dim=2).flatten(1)
        penultimate = self.penultimate_bn(F.relu(self.penultimate(self.pool_bn(pooled))))
        return MusicnnOutput(frames.transpose(1, 2), mean_pool, max_pool, penultimate, self.tags(penultimate))


# ----------------------------------------------------------------------------- weights


def _tf_names() -> dict[str, str]:
    """torch parameter name -> TensorFlow variable (layers are numbered in creation order)."""
    names, bn = {}, iter(range(11))

    def batchnorm(prefix: str) -> None:
        i = next(bn)
        tf = "batch_normalization" + (f"_{i}" if i else "")
        for ours, theirs in (("weight", "gamma"), ("bias", "beta"), ("running_mean", "moving_mean"),
                             ("running_var", "moving_variance")):
            names[f"{prefix}.{ours}"] = f"{tf}/{theirs}"

    batchnorm("input_bn")
    for conv, block in enumerate([f"timbral.{i}" for i in range(2)] + [f"temporal.{i}" for i in range(3)]):
        names[f"{block}.conv.weight"] = "conv2d" + (f"_{conv}" if conv else "") + "/kernel"
        names[f"{block}.conv.bias"] = "conv2d" + (f"_{conv}" if conv else "") + "/bias"
        batchnorm(f"{block}.bn")
    for i in range(3):
        names[f"midend.{i}.weight"], names[f"midend.{i}.bias"] = f"conv2d_{5 + i}/kernel", f"conv2d_{5 + i}/bias"
        batchnorm(f"midend_bn.{i}")
    batchnorm("pool_bn")
    names["penultimate.weight"], names["penultimate.bias"] = "dense/kernel", "dense/bias"
    batchnorm("penultimate_bn")
    names["tags.weight"], names["tags.bias"] = "dense_1/kernel", "dense_1/bias"
    return names


def _to_torch_layout(name: str, value: torch.Tensor) -> torch.Tensor:
    if name.endswith("weight") and value.dim() == 4:  # TF conv kernel (kh, kw, in, out)
        if name.startswith("midend"):  # a (7, C, 1, 64) kernel over all channels is a 1-D conv
            return value.squeeze(2).permute(2, 1, 0)
        return value.permute(3, 2, 0, 1)
    if name.endswith("weight") and value.dim() == 2:  # TF dense kernel (in, out)
        return value.t()
    return value


def state_from_tf_checkpoint(prefix: str | Path) -> dict[str, torch.Tensor]:
    checkpoint = TFCheckpoint(prefix)
    state = {}
    for ours, theirs in _tf_names().items():
        state[ours] = _to_torch_layout(ours, torch.from_numpy(checkpoint.read(theirs))).contiguous()
    return state


def package_dir() -> Path:
    """The installed musicnn package's directory, found without importing it (it imports TensorFlow)."""
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise MusicnnError(f"the musicnn package is not installed: {PACKAGE_HINT}")
    return Path(list(spec.submodule_search_locations)[0])


def labels(variant: str) -> tuple[str, ...]:
    """The tag names of `MSD_musicnn` / `MTT_musicnn`, read from musicnn/configuration.py as data."""
    source = package_dir() / "configuration.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError) as exc:
        raise MusicnnError(f"{source}: cannot read the tag names ({exc})") from None
    wanted = LABEL_LISTS[variant]
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == wanted for t in node.targets):
            return tuple(ast.literal_eval(node.value))
    raise MusicnnError(f"{source}: no {wanted} list")


def cache_dir() -> Path:
    from ..utils import alcap_cache

    return alcap_cache() / "musicnn"


def converted_weights(variant: str) -> tuple[Path, str]:
    """The safetensors file converted from the installed checkpoint (made on first use) and
    the sha256 of the checkpoint data it came from."""
    from safetensors.torch import save_file

    prefix = f"{package_dir() / variant}{os.sep}"  # the wheel's checkpoint files are named ".index", ".data-..."
    data = Path(f"{prefix}.data-00000-of-00001")
    try:
        digest = hashlib.sha256(data.read_bytes()).hexdigest()
    except OSError as exc:
        raise MusicnnError(f"{data}: cannot read the {variant} checkpoint ({exc.strerror or exc}); "
                           f"reinstall musicnn: {PACKAGE_HINT}") from None
    target = cache_dir() / f"{variant}-{digest[:16]}.safetensors"
    if not target.is_file():
        try:
            state = state_from_tf_checkpoint(prefix)
        except TFCheckpointError as exc:
            raise MusicnnError(f"{exc}; reinstall musicnn: {PACKAGE_HINT}") from None
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".tmp-{os.getpid()}")
        save_file(state, str(partial), metadata={"source": str(prefix), "checkpoint_sha256": digest})
        os.replace(partial, target)  # concurrent first uses each write a whole file
    return target, digest


def load_musicnn(variant: str) -> tuple[Musicnn, str]:
    """The model in eval mode and the sha256 of the checkpoint data it was converted from."""
    from safetensors.torch import load_file

    if variant not in LABEL_LISTS:
        raise MusicnnError(f"unknown musicnn model {variant!r}: one of {', '.join(LABEL_LISTS)}")
    path, checkpoint_sha256 = converted_weights(variant)
    model = Musicnn(n_tags=len(labels(variant)))
    state = load_file(str(path))
    model.load_state_dict({**model.state_dict(), **state}, strict=True)  # num_batches_tracked stays 0
    return model.eval(), checkpoint_sha256
