import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from alcap.audio.cnnsa import load_cnnsa, random_cnnsa
from alcap.audio.tagger import TaggerConfig, TagSchema, calibrate_batchnorm, save_tagger, train_tagger
from tests.helpers import write_audio

SR = 16000


def test_schema_binary_and_categorical_columns():
    schema = TagSchema.from_values(["instrument", "drums"], {"instrument": ["piano", "flute", "piano"],
                                                             "drums": ["yes", "no", "no"]})
    assert schema.names == ["flute", "piano", "drums"]
    assert schema.encode({"instrument": "piano", "drums": "yes"}).tolist() == [0, 1, 1]
    assert schema.encode({"instrument": "flute", "drums": "No"}).tolist() == [1, 0, 0]
    with pytest.raises(ValueError, match="instrument='guitar'"):
        schema.encode({"instrument": "guitar", "drums": "no"})
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 1.0, 0.3], [3.0, 0.0, -2.0]])
    targets = torch.tensor([[1.0, 0, 1], [1.0, 0, 0], [1.0, 0, 0]])
    # instrument: rows 0 and 2 right; drums: rows 0 and 2 right (row 1 says 0.3 > 0 but is off)
    assert schema.accuracy(logits, targets) == {"instrument": pytest.approx(2 / 3), "drums": pytest.approx(2 / 3)}


def clips(n: int, seconds: float = 2.0, seed: int = 0):
    """Songs whose timbre (sine or square) and loudness are drawn independently."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    waves, rows = [], []
    for i in range(n):
        timbre, loud = ("sine", "square")[i % 2], ("yes", "no")[(i // 2) % 2]
        f = rng.choice([220.0, 330.0, 440.0])
        x = np.sin(2 * np.pi * f * t) if timbre == "sine" else np.sign(np.sin(2 * np.pi * f * t))
        x = (0.6 if loud == "yes" else 0.03) * x + 0.002 * rng.standard_normal(len(t))
        waves.append(x.astype(np.float32))
        rows.append({"timbre": timbre, "loud": loud})
    return torch.from_numpy(np.stack(waves)), rows


def test_calibrated_batchnorm_normalises_the_calibration_audio():
    model, _ = random_cnnsa(0)
    waves, _ = clips(8)
    calibrate_batchnorm(model, waves)
    assert not model.training
    with torch.no_grad():
        x = model.spec_bn(model.spec(waves).unsqueeze(1))  # eval mode: the stored statistics
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-3)
    assert float(x.var(unbiased=False)) == pytest.approx(1.0, rel=1e-3)
    assert float(model.layer3.bn_1.running_var.mean()) != pytest.approx(1.0)


def test_trained_tagger_learns_the_tags_and_keeps_the_convolutions(tmp_path):
    waves, rows = clips(24)
    schema = TagSchema.from_values(["timbre", "loud"], {c: [r[c] for r in rows] for c in ("timbre", "loud")})
    targets = np.stack([schema.encode(r) for r in rows])
    val_waves, val_rows = clips(8, seed=1)
    config = TaggerConfig(epochs=14, batch_size=8, lr=1e-3, crop_steps=4, calibration_songs=16)
    model, report = train_tagger(waves, targets, schema, val_waves, np.stack([schema.encode(r) for r in val_rows]),
                                 config, progress=False)
    history = report.history
    assert history[-1]["train_loss"] < 0.7 * history[0]["train_loss"]
    best = history[report.best_epoch - 1]
    assert best["val_loss"] == min(h["val_loss"] for h in history)
    assert best["val_accuracy"]["timbre"] == 1.0 and best["val_accuracy"]["loud"] >= 7 / 8  # unseen songs
    # the CNN is the random one (BatchNorm statistics aside); the attention half has been trained
    start, _ = random_cnnsa(0)
    trained, initial = model.state_dict(), start.state_dict()
    assert torch.equal(trained["layer4.conv_2.weight"], initial["layer4.conv_2.weight"])
    assert not torch.equal(trained["layer4.bn_2.running_mean"], initial["layer4.bn_2.running_mean"])
    assert not torch.equal(trained["encoder.layer.1.output.dense.weight"], initial["encoder.layer.1.output.dense.weight"])
    # same data and seeds, same weights; and the caller's RNG is left alone
    before = torch.random.get_rng_state()
    _, again = train_tagger(waves, targets, schema, val_waves, np.stack([schema.encode(r) for r in val_rows]), config,
                            progress=False)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert again.weights_sha256 == report.weights_sha256

    path = save_tagger(model, report, tmp_path / "tagger")
    loaded, digest = load_cnnsa(tmp_path / "tagger")  # the public layout, strict
    assert digest == report.weights_sha256 and loaded.dense.out_features == 3
    assert (tmp_path / "tagger" / "tags.txt").read_text().split() == ["sine", "square", "loud"]
    assert path.name == "best_model.pth"

    # a captioner trained on its embeddings carries it and loads it back (any number of tags)
    from alcap.audio.decode import Excerpt
    from alcap.audio.extractor import CNNSAExtractor
    from alcap.inference import load_music_encoder, save_music_encoder

    save_music_encoder(CNNSAExtractor.from_checkpoint(tmp_path / "tagger", device="cpu"), Excerpt().to_dict(),
                       tmp_path / "captioner")
    extractor, _ = load_music_encoder(tmp_path / "captioner")
    assert extractor.weights_sha256 == report.weights_sha256 and extractor.model.dense.out_features == 3
    assert extractor.tag_names() == ("sine", "square", "loud")  # tags.txt travels with the model


def test_train_tagger_cli_and_tag_names(tmp_path):
    waves, rows = clips(12)
    manifest = tmp_path / "manifest.jsonl"
    with open(manifest, "w") as f:
        for i, (wave, row) in enumerate(zip(waves.numpy(), rows)):
            write_audio(tmp_path / f"s{i}.wav", wave, SR)
            split = "val" if i >= 8 else "train"
            f.write(json.dumps({"song_id": f"s{i}", "audio": f"s{i}.wav", "lyrics": "", "caption": "c", "split": split,
                                **row}) + "\n")
    run = [sys.executable, "-m", "alcap.cli"]
    out = subprocess.run([*run, "train-tagger", str(manifest), "--tags", "timbre", "loud", "--out", str(tmp_path / "t"),
                          "--epochs", "2", "--excerpt-seconds", "2", "--json", "--quiet"],
                         capture_output=True, text=True, check=True)
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    assert summary["tags"] == ["sine", "square", "loud"] and set(summary["val_accuracy"]) == {"timbre", "loud"}
    # A second fresh process on this machine trains the same weights, bit for bit; what that
    # depends on (threads, CPU ISA, versions) is recorded with them.
    again = subprocess.run([*run, "train-tagger", str(manifest), "--tags", "timbre", "loud", "--out", str(tmp_path / "t2"),
                            "--epochs", "2", "--excerpt-seconds", "2", "--json", "--quiet"],
                           capture_output=True, text=True, check=True)
    assert json.loads(again.stdout.strip().splitlines()[-1])["weights_sha256"] == summary["weights_sha256"]
    environment = json.loads((tmp_path / "t" / "tagger.json").read_text())["environment"]
    assert environment["torch_threads"] >= 1 and environment["versions"]["torch"] and environment["cpu_capability"]
    tagged = subprocess.run([*run, "tag", str(tmp_path / "s0.wav"), "--checkpoint", str(tmp_path / "t"), "--top", "3",
                             "--json", "--excerpt-seconds", "2"], capture_output=True, text=True, check=True)
    assert set(json.loads(tagged.stdout)["tags"]) == {"sine", "square", "loud"}

    broken = tmp_path / "broken.jsonl"
    broken.write_text(manifest.read_text().replace('"loud": "yes"', '"loud": ""', 1))
    failed = subprocess.run([*run, "train-tagger", str(broken), "--tags", "timbre", "loud", "--out", str(tmp_path / "u")],
                            capture_output=True, text=True)
    assert failed.returncode != 0 and "line 1: song s0 has no value for loud" in failed.stderr
