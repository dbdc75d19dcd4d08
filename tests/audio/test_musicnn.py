"""The torch port of musicnn against the original TensorFlow code's outputs (tests/fixtures/musicnn/,
made by make_reference.py there), and the TensorFlow checkpoint reader it loads weights with."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from alcap.audio import musicnn
from alcap.audio.extractor import MusicnnExtractor
from alcap.audio.tfcheckpoint import TFCheckpoint, TFCheckpointError, crc32c

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "musicnn"
CLIPS = ("chord", "beat", "quiet")


@pytest.fixture(scope="module")
def reference():
    return np.load(FIXTURES / "reference.npz")


@pytest.fixture(scope="module")
def models():
    return {v: musicnn.load_musicnn(v)[0] for v in ("MSD_musicnn", "MTT_musicnn")}


def clip(name: str) -> torch.Tensor:
    wave, rate = sf.read(FIXTURES / f"{name}.flac", dtype="float32")
    assert rate == musicnn.SAMPLE_RATE
    return torch.from_numpy(wave)[None]


def test_crc32c_known_answer():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_reader_lists_the_wheels_variables_with_their_shapes():
    checkpoint = TFCheckpoint(f"{musicnn.package_dir() / 'MSD_musicnn'}/")
    assert checkpoint.entries["conv2d/kernel"].shape == (7, 38, 1, 204)
    assert checkpoint.entries["conv2d_5/kernel"].shape == (7, 561, 1, 64)
    assert checkpoint.entries["dense_1/kernel"].shape == (200, 50)
    assert checkpoint.read("batch_normalization_9/moving_variance").shape == (1506,)
    # The port uses every model variable; the rest are Adam's slots and its two power accumulators.
    used = set(musicnn._tf_names().values())
    assert len(used) == 64 and used <= set(checkpoint.entries)
    assert {n for n in set(checkpoint.entries) - used if not n.endswith(("/Adam", "/Adam_1"))} == {"beta1_power", "beta2_power"}


def test_reader_refuses_damaged_data_and_index(tmp_path):
    source = musicnn.package_dir() / "MSD_musicnn"
    for name in (".index", ".data-00000-of-00001"):
        shutil.copy(source / name, tmp_path / name)
    checkpoint = TFCheckpoint(f"{tmp_path}/")
    entry = checkpoint.entries["dense_1/kernel"]
    data = bytearray((tmp_path / ".data-00000-of-00001").read_bytes())
    data[entry.offset + 10] ^= 0xFF
    (tmp_path / ".data-00000-of-00001").write_bytes(bytes(data))
    with pytest.raises(TFCheckpointError, match="CRC32C mismatch"):
        TFCheckpoint(f"{tmp_path}/").read("dense_1/kernel")
    (tmp_path / ".data-00000-of-00001").write_bytes(bytes(data[: entry.offset]))
    with pytest.raises(TFCheckpointError, match="truncated"):
        TFCheckpoint(f"{tmp_path}/").read("dense_1/kernel")
    (tmp_path / ".index").write_bytes((source / ".index").read_bytes()[:-10])
    with pytest.raises(TFCheckpointError, match="not a TensorFlow V2 checkpoint"):
        TFCheckpoint(f"{tmp_path}/")


def test_weights_are_converted_once_into_the_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("ALCAP_CACHE", str(tmp_path))
    path, digest = musicnn.converted_weights("MTT_musicnn")
    assert path.parent == tmp_path / "musicnn" and digest[:16] in path.name
    calls = []
    monkeypatch.setattr(musicnn, "state_from_tf_checkpoint", lambda prefix: calls.append(prefix))
    assert musicnn.converted_weights("MTT_musicnn")[0] == path and not calls


@pytest.mark.parametrize("name", CLIPS)
def test_front_end_matches_musicnn_preprocessing(reference, name):
    ours = musicnn.MusicnnFrontEnd()(clip(name))[0].numpy()
    theirs = reference[f"{name}/mel"]
    assert ours.shape == theirs.shape
    # Values agree but where float32 and float64 STFTs round to neighbouring float16 values:
    # one float16 step of the mel power, at most 2.1e-4 after log10(10000 x + 1).
    assert np.abs(ours - theirs).max() <= 4e-4
    assert (ours == theirs).mean() > 0.85


def test_front_end_matches_librosa():
    librosa = pytest.importorskip("librosa")
    wave = clip("beat")[0].numpy()
    mel = librosa.feature.melspectrogram(y=wave, sr=16000, hop_length=256, n_fft=512, n_mels=96).T
    expected = np.log10(10000 * mel.astype(np.float16).astype(np.float32) + 1)
    ours = musicnn.MusicnnFrontEnd()(torch.from_numpy(wave)[None])[0].numpy()
    assert np.abs(ours - expected).max() <= 4e-4


@pytest.mark.parametrize("name", CLIPS)
@pytest.mark.parametrize("variant", ("MSD_musicnn", "MTT_musicnn"))
def test_taggram_matches_the_original(reference, models, name, variant):
    with torch.no_grad():
        from_their_mel = models[variant](musicnn.patches(torch.from_numpy(reference[f"{name}/mel"])[None])[0])
        from_our_mel = models[variant](musicnn.patches(musicnn.MusicnnFrontEnd()(clip(name)))[0])
    theirs = reference[f"{name}/{variant}/taggram"]
    assert np.abs(torch.sigmoid(from_their_mel.tag_logits).numpy() - theirs).max() <= 1e-4
    assert np.abs(torch.sigmoid(from_our_mel.tag_logits).numpy() - theirs).max() <= 1e-4


@pytest.mark.parametrize("name", CLIPS)
def test_features_match_the_original(reference, models, name):
    with torch.no_grad():
        out = models["MSD_musicnn"](musicnn.patches(torch.from_numpy(reference[f"{name}/mel"])[None])[0])

    def relative(ours, theirs):
        return np.abs(ours - theirs).max() / np.abs(theirs).max()

    key = f"{name}/MSD_musicnn"
    assert relative(out.mean_pool.numpy(), reference[f"{key}/mean_pool"]) <= 1e-3
    assert relative(out.max_pool.numpy(), reference[f"{key}/max_pool"]) <= 1e-3
    # The original extractor returns the first patch's cnn1-3 and penultimate for every later
    # patch (it concatenates the first batch's arrays again), so only patch 1 is comparable.
    assert relative(out.cnn3[0].numpy(), reference[f"{key}/cnn3"][: musicnn.PATCH_FRAMES]) <= 1e-3
    assert relative(out.penultimate[0].numpy(), reference[f"{key}/penultimate"][0]) <= 1e-3


def test_extractor_sequence_and_tags(reference):
    extractor = MusicnnExtractor.from_package("musicnn-msd", device="cpu")
    wave = clip("beat")  # 6.2 s: 2 patches
    sequence = extractor.embed(wave)
    assert sequence.shape == (1, 2 * 11, 753)
    with torch.no_grad():
        frames = extractor.model.frame_features(musicnn.patches(extractor.frontend(wave))[0])  # (2, 753, 187)
    assert torch.allclose(sequence[0, 11], frames[1, :, :17].mean(dim=1), atol=1e-6)  # patch 2, window 1
    probs = extractor.tag(wave)[0].numpy()
    assert np.abs(probs - reference["beat/MSD_musicnn/taggram"].mean(axis=0)).max() <= 1e-4
    assert len(extractor.tag_names()) == 50 and extractor.tag_names()[0] == "rock"
    assert extractor.embed(torch.zeros(1, 16000 * 15)).shape == (1, 55, 753)  # a 15 s excerpt
    assert extractor.embed(torch.zeros(2, 16000)).shape == (2, 11, 753)  # under 3 s: frames repeated to one patch


def test_fast_front_end_pooling_is_the_literal_maths(models):
    """Pooling before the BatchNorm (eval mode) equals BN -> ReLU -> max as the original orders them,
    for channels whose BatchNorm scale is negative too."""
    from torch.nn import functional as F

    model = models["MSD_musicnn"]
    x = model.input_bn(musicnn.patches(musicnn.MusicnnFrontEnd()(clip("beat")))[0].unsqueeze(1))
    for block in (*model.timbral, *model.temporal):
        literal = block.bn(F.relu(block.conv(F.pad(x, (0, 0, *block.time_pad))))).amax(dim=3)
        torch.testing.assert_close(block(x), literal, rtol=1e-5, atol=1e-5)
    assert any((b.bn.weight < 0).any() for b in (*model.timbral, *model.temporal))  # the min branch is exercised
