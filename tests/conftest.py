"""Shared fixtures: every audio file and checkpoint a test needs is generated here."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory):
    """Converted musicnn weights go to a cache of the test session's own, not the user's."""
    import os

    os.environ["ALCAP_CACHE"] = str(tmp_path_factory.mktemp("alcap-cache"))


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


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory):
    """12 short demo songs and their random-init CNNSA embeddings (2 s excerpts)."""
    from alcap.audio.decode import Excerpt
    from alcap.audio.extractor import CNNSAExtractor
    from alcap.data.demo import make_demo_corpus
    from alcap.data.embed import embed_songs

    root = tmp_path_factory.mktemp("train")
    make_demo_corpus(root / "corpus", n_songs=12, seed=5, min_seconds=2.0, max_seconds=2.5, workers=1, progress=False)
    from alcap.data.manifest import read_manifest

    songs = read_manifest(root / "corpus" / "manifest.jsonl").songs()
    embed_songs(songs, CNNSAExtractor.random_init(0, device="cpu"), root / "store", excerpt=Excerpt(seconds=2.0),
                workers=0, progress=False)
    return root


@pytest.fixture(scope="session")
def tiny_models(tiny_corpus, tmp_path_factory):
    """A music model and a lyrics-only model trained one epoch on `tiny_corpus`: {"music", "lyrics"} -> best/."""
    from alcap.config import load_config
    from alcap.train.loop import train

    root = tmp_path_factory.mktemp("models")
    common = [f"data.manifest={tiny_corpus / 'corpus' / 'manifest.jsonl'}", "model.backbone=tiny",
              "model.tokenizer_vocab_size=400", "model.alcap.fusion_layers=[1, 2]", "train.epochs=1",
              "train.batch_size=8", "train.optimizer=adamw", "train.lr=1e-3", "train.eval_generate=false",
              "data.max_caption_tokens=48", "generation.max_new_tokens=12", "generation.num_beams=1"]
    models = {}
    for name, sets in (("music", [f"data.embeddings={tiny_corpus / 'store'}"]),
                       ("lyrics", ["model.alcap.use_music=false"])):
        train(load_config(None, common + sets + [f"output_dir={root / name}"]), progress=False)
        models[name] = root / name / "best"
    return models
