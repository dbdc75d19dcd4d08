"""Shared fixtures: every audio file and checkpoint a test needs is generated here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

@pytest.fixture
def audio_dir(tmp_path: Path) -> Path:
    d = tmp_path / "audio"
    d.mkdir()
    return d


@pytest.fixture(scope="session")
def cnnsa_checkpoint(tmp_path_factory) -> Path:
    """A random CNNSA saved the way the public checkpoints are: a plain state dict with a
    `module.` prefix (nn.DataParallel) and the torchaudio front-end buffers."""
    from alcap.audio.cnnsa import CNNSA

    torch.manual_seed(123)
    model = CNNSA()
    for m in model.modules():  # non-trivial BatchNorm statistics, as a trained model has
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    state["module.spec.spectrogram.window"] = torch.hann_window(512)
    state["module.spec.mel_scale.fb"] = torch.zeros(257, 128)
    path = tmp_path_factory.mktemp("ckpt") / "msd" / "attention" / "best_model.pth"
    path.parent.mkdir(parents=True)
    torch.save(state, path)
    return path
