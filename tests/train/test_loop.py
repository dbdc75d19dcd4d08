import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from alcap.config import apply_override, load_config
from alcap.model.captioner import AlcapModel
from alcap.train.loop import step_lr_factor, train


def tiny_config(root, out, **sets):
    overrides = [f"data.manifest={root / 'corpus' / 'manifest.jsonl'}", f"data.embeddings={root / 'store'}",
                 "model.backbone=tiny", "model.tokenizer_vocab_size=400", "model.alcap.fusion_layers=[1, 2]",
                 "train.epochs=2", "train.batch_size=8", "train.optimizer=adamw", "train.lr=1e-3",
                 "train.log_every_steps=1", "data.max_caption_tokens=48", "generation.max_new_tokens=24",
                 f"output_dir={out}"]
    overrides += [f"{k}={v}" for k, v in sets.items()]
    return load_config(None, overrides)


def batches_per_epoch(root, batch_size=8):
    from alcap.data.manifest import read_manifest

    return math.ceil(len(read_manifest(root / "corpus" / "manifest.jsonl").split("train")) / batch_size)


def test_training_writes_a_run_directory(tiny_corpus, tmp_path):
    summary = train(tiny_config(tiny_corpus, tmp_path / "run"), progress=False)
    run = tmp_path / "run"
    per_epoch = batches_per_epoch(tiny_corpus)
    assert summary["epochs"] == 2 and summary["global_step"] == 2 * per_epoch
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    steps = [r for r in records if "train/loss" in r]
    assert len(steps) == 2 * per_epoch and all("train/contrast_loss" in r and "train/info_nce_bound" in r for r in steps)
    assert steps[-1]["train/caption_loss"] < steps[0]["train/caption_loss"]
    # The mutual-information bound is mean log K - L_contrast; K <= 8 rows, fewer with a song's
    # several captions in one batch (they are no candidates of each other); the exact value is
    # checked in tests/model.
    for step in steps:
        assert step["train/info_nce_bound"] <= math.log(8) - step["train/contrast_loss"] + 1e-6
    evals = [r for r in records if "val/loss" in r]
    assert [r["epoch"] for r in evals] == [1, 2]
    for name in ("best", "last"):
        files = {p.name for p in (run / name).iterdir()}
        assert {"config.json", "alcap_config.json", "model.safetensors", "run_config.yaml", "tokenizer.json"} <= files
    assert AlcapModel.from_pretrained(run / "best").config.alpha == 0.02
    assert (run / "config.yaml").exists() and (run / "states" / "latest").exists()


def test_validation_captions_the_val_songs_and_selects_on_a_caption_metric(tiny_corpus, tmp_path):
    config = tiny_config(tiny_corpus, tmp_path / "run", **{"train.select_metric": "val/rougeL_f1",
                                                          "train.eval_num_beams": 1, "train.epochs": 3})
    summary = train(config, progress=False)
    evals = [r for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines()) if "val/loss" in r]
    assert len(evals) == 3
    for record in evals:
        for key in ("rouge1_recall", "rouge2_recall", "rougeL_recall", "rouge1_f1", "rougeL_f1", "meteor",
                    "stated_instrument", "stated_theme"):
            assert 0.0 <= record[f"val/{key}"] <= 1.0, key
    # Higher is better for a caption metric (auto mode): best/ holds the maximum seen.
    assert summary["best"]["val/rougeL_f1"] == max(r["val/rougeL_f1"] for r in evals)
    assert config.train.selects_lower() is False and tiny_config(tiny_corpus, tmp_path).train.selects_lower()


def test_validation_generation_can_be_switched_off(tiny_corpus, tmp_path):
    train(tiny_config(tiny_corpus, tmp_path / "run", **{"train.eval_generate": "false", "train.epochs": 1}),
          progress=False)
    evals = [r for r in map(json.loads, (tmp_path / "run" / "log.jsonl").read_text().splitlines()) if "val/loss" in r]
    assert evals and not any(key.startswith("val/rouge") for key in evals[0])


def test_resume_after_a_kill_gives_the_same_model(tiny_corpus, tmp_path):
    train(tiny_config(tiny_corpus, tmp_path / "straight"), progress=False)
    # "Kill" in the middle of the second epoch, then run the same command again.
    per_epoch = batches_per_epoch(tiny_corpus)
    train(tiny_config(tiny_corpus, tmp_path / "resumed", **{"train.max_steps": per_epoch + 1}), progress=False)
    summary = train(tiny_config(tiny_corpus, tmp_path / "resumed"), progress=False)
    assert summary["global_step"] == 2 * per_epoch
    a = load_file(tmp_path / "straight" / "last" / "model.safetensors")
    b = load_file(tmp_path / "resumed" / "last" / "model.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_a_changed_config_does_not_resume_an_old_run(tiny_corpus, tmp_path):
    train(tiny_config(tiny_corpus, tmp_path / "r", **{"train.max_steps": 1}), progress=False)
    with pytest.raises(ValueError, match=r"another configuration \(model.alcap.alpha: 0.02 -> 0.5\)"):
        train(tiny_config(tiny_corpus, tmp_path / "r", **{"model.alcap.alpha": 0.5}), progress=False)


def test_lyrics_only_baseline_trains_without_a_store(tiny_corpus, tmp_path):
    config = tiny_config(tiny_corpus, tmp_path / "bart", **{"model.alcap.use_music": "false", "data.embeddings": "null"})
    summary = train(config, progress=False)
    records = [json.loads(line) for line in (tmp_path / "bart" / "log.jsonl").read_text().splitlines()]
    assert summary["global_step"] == 2 * batches_per_epoch(tiny_corpus) and not any("train/contrast_loss" in r for r in records)


def test_step_lr_is_a_pure_function_of_the_step():
    assert [step_lr_factor(s, 10, 2, 0.1) for s in (0, 19, 20, 39, 40)] == [1.0, 1.0, 0.1, 0.1, pytest.approx(0.01)]
    assert [step_lr_factor(s, 10, 2, 0.1, warmup_steps=4) for s in (0, 1, 3, 25)] == [0.25, 0.5, 1.0, 0.1]


def test_overrides_are_typed_and_checked():
    config = load_config(None, ["train.lr=1", "model.alcap.fusion_layers=[0]", "generation.top_p=0.92"])
    assert config.train.lr == 1.0 and isinstance(config.train.lr, float)
    assert config.model.alcap.fusion_layers == [0] and config.generation.top_p == 0.92
    with pytest.raises(ValueError, match="unknown key 'lrr'"):
        apply_override(config, "train.lrr=1")
    with pytest.raises(ValueError, match="no section 'trian'"):
        apply_override(config, "trian.lr=1")


@pytest.mark.parametrize("setting, message", [
    ("generation.mixed_precision=half", "generation.mixed_precision: 'half' is not one of 'no', 'bf16', 'fp16'"),
    ("train.select_mode=lowest", "train.select_mode: 'lowest' is not one of 'auto', 'min', 'max'"),
    ("train.epochs=three", "train.epochs: 'three' is not a whole number"),
    ("train.epochs=2.5", "train.epochs: 2.5 is not a whole number"),
    ("data.length_grouping=maybe", "data.length_grouping: 'maybe' is not true or false"),
    ("model.alcap.fusion_layers=7", r"model.alcap.fusion_layers: 7 is not a list"),
    ("model.alcap.fusion_layers=[1, 7]", r"fusion_layers: \[1, 7\] has \[7\], outside the 3 encoder layers of tiny"),
    ("train.batch_size=0", r"train.batch_size: 0 is out of range \(expected >= 1\)"),
    ("train.lr=-1e-3", r"train.lr: -0.001 is out of range \(expected > 0\)"),
])
def test_a_wrong_setting_is_refused_when_the_config_is_loaded(tiny_corpus, tmp_path, setting, message):
    """Settings read late (at the first evaluation) or deep inside training fail at load time,
    naming the key, the value and what is expected; no run directory is made."""
    key, value = setting.split("=")
    with pytest.raises(ValueError, match=message):
        tiny_config(tiny_corpus, tmp_path / "run", **{key: value})
    config = tiny_config(tiny_corpus, tmp_path / "run")
    config.generation.mixed_precision = "half"  # set in Python, past the loader: train() checks again
    with pytest.raises(ValueError, match="generation.mixed_precision"):
        train(config, progress=False)
    assert not (tmp_path / "run").exists()  # nothing was trained


def test_music_statistics_match_numpy(tiny_corpus):
    import numpy as np

    from alcap.data.store import EmbeddingStore
    from alcap.train.loop import music_statistics

    store = EmbeddingStore.open(tiny_corpus / "store")
    songs = set(store.song_ids[:5])
    rows = np.concatenate([store.get(s, dtype=np.float64) for s in sorted(songs)])
    mean, std = music_statistics(store, songs)
    np.testing.assert_allclose(mean.numpy(), rows.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(std.numpy(), rows.std(0), rtol=1e-4, atol=1e-6)


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted(Path(__file__).resolve().parents[2].joinpath("configs").glob("*.yaml"))
    assert configs
    from alcap.experiment import load_experiment

    for path in configs:
        if "methods" in path.read_text():  # an experiment file: check every method's run config
            experiment = load_experiment(path)
            runs = [experiment.run_config(m, 2020) for m in experiment.methods]
        else:
            runs = [load_config(path)]
        for config in runs:
            assert config.model.backbone and config.data.manifest, path


def test_new_modules_can_have_their_own_learning_rate():
    from transformers import BartForConditionalGeneration

    from alcap.config import TrainConfig
    from alcap.model.captioner import AlcapConfig, bart_config
    from alcap.train.loop import build_optimizer

    model = AlcapModel(AlcapConfig(fusion_layers=[1, 2]), BartForConditionalGeneration(bart_config("tiny", 100)))
    backbone, new = build_optimizer(model, TrainConfig(optimizer="adamw", lr=1e-4, new_modules_lr=2e-3)).param_groups
    assert (backbone["lr"], new["lr"]) == (1e-4, 2e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)].split(".")[0] for p in new["params"]} == {"fusion", "alignment"}
    assert len(backbone["params"]) + len(new["params"]) == len(list(model.parameters()))
    groups = build_optimizer(model, TrainConfig(optimizer="adafactor", lr=5e-5)).param_groups
    assert [g["lr"] for g in groups] == [5e-5, 5e-5]


def test_compiled_training_matches_eager_and_saves_plain_weights(tiny_corpus, tmp_path):
    sets = {"train.max_steps": 3, "train.epochs": 1, "train.eval_generate": "false"}
    train(tiny_config(tiny_corpus, tmp_path / "eager", **sets), progress=False)
    # aot_eager runs the whole torch.compile path (Dynamo graph capture, AOT autograd) without a C++ build.
    from torch._dynamo.utils import counters

    counters.clear()
    train(tiny_config(tiny_corpus, tmp_path / "compiled", **sets, **{"train.compile": "true",
                                                                      "train.compile_backend": "aot_eager"}),
          progress=False)
    assert counters["stats"]["unique_graphs"] >= 1  # the model really went through Dynamo
    losses = {}
    for name in ("eager", "compiled"):
        records = map(json.loads, (tmp_path / name / "log.jsonl").read_text().splitlines())
        losses[name] = [r["train/loss"] for r in records if "train/loss" in r]
    assert len(losses["eager"]) == 3
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-4)
    weights = load_file(tmp_path / "compiled" / "last" / "model.safetensors")
    assert not any("_orig_mod" in key for key in weights)
    assert AlcapModel.from_pretrained(tmp_path / "compiled" / "last").config.alpha == 0.02


def test_each_run_in_one_process_gets_its_own_accelerate_settings(tiny_corpus, tmp_path):
    # `alcap experiment` trains many models in one process; Accelerate keeps process-wide state,
    # which must neither refuse nor silently ignore the next run's precision, compilation, accumulation.
    sets = {"train.epochs": 1, "train.eval_generate": "false"}
    per_epoch = batches_per_epoch(tiny_corpus)
    assert train(tiny_config(tiny_corpus, tmp_path / "a", **sets), progress=False)["global_step"] == per_epoch
    summary = train(tiny_config(tiny_corpus, tmp_path / "b", **sets, **{"train.grad_accum_steps": 2,
                                                                          "train.mixed_precision": "bf16"}), progress=False)
    assert summary["global_step"] == math.ceil(per_epoch / 2)
    records = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["train/loss"]) for r in records if "train/loss" in r)


def test_torchrun_with_two_cpu_processes_trains_one_model(tiny_corpus, tmp_path):
    # Without being told, Accelerate ran torchrun's CPU processes as two independent trainings
    # racing over one run directory; and only the main process had the validation captions'
    # scores, so selecting on them left the processes disagreeing.
    import subprocess
    import sys
    from pathlib import Path

    from alcap.config import save_config

    config = tiny_config(tiny_corpus, tmp_path / "run", **{"train.select_metric": "val/rouge1_recall",
                                                          "train.eval_num_beams": 1})
    save_config(config, tmp_path / "config.yaml")
    torchrun = Path(sys.executable).parent / "torchrun"
    done = subprocess.run([str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "alcap.cli", "train",
                           str(tmp_path / "config.yaml"), "--quiet"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("trained 2 epochs") == 1  # one summary, from the main process
    per_epoch = batches_per_epoch(tiny_corpus, batch_size=16)  # 8 rows on each of 2 processes
    records = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert len([r for r in records if "train/loss" in r]) == 2 * per_epoch  # logged once per step, not per process
    evals = [r for r in records if "val/rouge1_recall" in r]
    assert [r["epoch"] for r in evals] == [1, 2]
    best = max(evals, key=lambda r: r["val/rouge1_recall"])["val/rouge1_recall"]
    assert json.loads(done.stdout.splitlines()[0].split("best val/rouge1_recall ")[1].split()[0]) == pytest.approx(best, abs=1e-4)
    assert AlcapModel.from_pretrained(tmp_path / "run" / "best").config.alpha == 0.02


def _same_weights(a_dir, b_dir):
    a, b = load_file(a_dir / "model.safetensors"), load_file(b_dir / "model.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)


def test_a_damaged_resume_state_falls_back_to_the_previous_one_loudly(tiny_corpus, tmp_path, caplog):
    """Accelerate skips a truncated random_states_0.pkl without a word, so the resumed run drew
    other random numbers; the checksums written with each state catch it."""
    train(tiny_config(tiny_corpus, tmp_path / "straight", **{"train.epochs": 3}), progress=False)
    train(tiny_config(tiny_corpus, tmp_path / "resumed"), progress=False)  # 2 epochs: a state at each end
    states = tmp_path / "resumed" / "states"
    newest = states / (states / "latest").read_text()
    rng = newest / "random_states_0.pkl"
    rng.write_bytes(rng.read_bytes()[:100])
    with caplog.at_level("WARNING", logger="alcap.train"):
        summary = train(tiny_config(tiny_corpus, tmp_path / "resumed", **{"train.epochs": 3}), progress=False)
    assert "random_states_0.pkl has 100 bytes" in caplog.text and "resuming from the older" in caplog.text
    assert summary["global_step"] == 3 * batches_per_epoch(tiny_corpus)
    _same_weights(tmp_path / "straight" / "last", tmp_path / "resumed" / "last")


def test_latest_must_name_a_state_inside_the_run(tiny_corpus, tmp_path):
    config = tiny_config(tiny_corpus, tmp_path / "run", **{"train.max_steps": 1})
    train(config, progress=False)
    (tmp_path / "run" / "states" / "latest").write_text("../../elsewhere")
    with pytest.raises(ValueError, match=r"names '../../elsewhere', which is not a resume state"):
        train(tiny_config(tiny_corpus, tmp_path / "run"), progress=False)
    (tmp_path / "run" / "states" / "latest").write_text("step_00000001")
    for sums in (tmp_path / "run" / "states").glob("step_*/checksums.json"):
        sums.unlink()  # no state can be verified: refuse rather than load unverified files
    with pytest.raises(ValueError, match="damaged resume state .*no checksums.json.* no older complete state"):
        train(tiny_config(tiny_corpus, tmp_path / "run"), progress=False)


def test_a_hostile_optimizer_state_is_refused_and_never_run(tiny_corpus, tmp_path):
    import pickle

    from alcap.train.loop import write_checksums

    train(tiny_config(tiny_corpus, tmp_path / "run", **{"train.max_steps": 1}), progress=False)
    state = tmp_path / "run" / "states" / (tmp_path / "run" / "states" / "latest").read_text()
    marker = tmp_path / "pwned"

    class Exploit:
        def __reduce__(self):
            import os
            return os.system, (f"touch {marker}",)

    (state / "optimizer.bin").write_bytes(pickle.dumps({"state": Exploit()}))
    write_checksums(state)  # whoever planted it could rewrite the checksums too
    with pytest.raises(ValueError, match="cannot load this resume state"):
        train(tiny_config(tiny_corpus, tmp_path / "run"), progress=False)
    assert not marker.exists()


def _poison_store(source, target):
    import shutil

    import numpy as np

    shutil.copytree(source, target)
    data = np.memmap(target / "embeddings.f16", dtype="<f2", mode="r+")
    data[:] = np.nan
    data.flush()


def test_non_finite_embeddings_stop_training_with_the_song_named(tiny_corpus, tmp_path):
    _poison_store(tiny_corpus / "store", tmp_path / "nan-store")
    config = tiny_config(tiny_corpus, tmp_path / "run", **{"data.embeddings": str(tmp_path / "nan-store")})
    from alcap.data.store import StoreError

    with pytest.raises(StoreError, match=r"song demo\d+: its embedding in .*nan-store holds NaN or infinite values"):
        train(config, progress=False)
    assert not (tmp_path / "run").exists()


def test_a_non_finite_loss_stops_the_run_and_nothing_is_exported(tiny_corpus, tmp_path, monkeypatch):
    from alcap.model.captioner import AlcapModel

    forward = AlcapModel.forward
    calls = {"n": 0}

    def diverging(self, *args, **kwargs):  # the loss of the third training batch is NaN
        out = forward(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 3:
                out.loss = out.loss * float("nan")
        return out

    monkeypatch.setattr(AlcapModel, "forward", diverging)
    with pytest.raises(ValueError, match=r"non-finite loss \(loss nan.*at epoch 1, batch 3 \(step 2\); songs demo\d+, .*no resume state was saved yet"):
        train(tiny_config(tiny_corpus, tmp_path / "stop"), progress=False)
    run = tmp_path / "stop"
    assert not (run / "last").exists()
    for line in (run / "log.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda c: pytest.fail(f"bare {c} in log.jsonl"))

    calls["n"] = 0
    summary = train(tiny_config(tiny_corpus, tmp_path / "skip", **{"train.nonfinite_loss": "skip"}), progress=False)
    records = [json.loads(line) for line in (tmp_path / "skip" / "log.jsonl").read_text().splitlines()]
    assert [r["train/skipped_steps"] for r in records if "train/skipped_steps" in r] == [1]
    assert summary["global_step"] == 2 * batches_per_epoch(tiny_corpus) - 1  # one batch had no optimiser step
    weights = load_file(tmp_path / "skip" / "last" / "model.safetensors")
    assert all(torch.isfinite(t).all() for t in weights.values())


def test_the_log_stays_strict_json_when_a_value_is_not_finite(tmp_path):
    from alcap.train.loop import RunLog

    log = RunLog(tmp_path / "log.jsonl", enabled=True)
    log.write({"step": 1, "val/loss": float("nan"), "train/loss": float("inf"), "lr": 1e-3})
    assert json.loads((tmp_path / "log.jsonl").read_text()) == {"step": 1, "val/loss": None, "train/loss": None,
                                                                "lr": 1e-3}


def _train_cli(tiny_corpus, out, *sets):
    import subprocess
    import sys

    base = [f"data.manifest={tiny_corpus / 'corpus' / 'manifest.jsonl'}", f"data.embeddings={tiny_corpus / 'store'}",
            "model.backbone=tiny", "model.tokenizer_vocab_size=400", "model.alcap.fusion_layers=[1, 2]",
            "train.epochs=3", "train.batch_size=8", "train.optimizer=adamw", "train.lr=1e-3", "train.log_every_steps=1",
            "data.max_caption_tokens=48", "generation.max_new_tokens=12", "generation.num_beams=1",
            "train.eval_generate_songs=3", "train.early_stop_patience=5",
            "train.select_metric=val/rougeL_f1", *sets]
    args = [sys.executable, "-m", "alcap", "train", "configs/demo-alcap.yaml", "--output-dir", str(out), "--quiet"]
    return subprocess.Popen(args + [a for s in base for a in ("--set", s)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _final_state(run):
    states = run / "states"
    return json.loads((states / (states / "latest").read_text() / "trainer_state.json").read_text())


@pytest.mark.parametrize("kill_at", ["mid-epoch", "epoch-end"])
def test_a_real_kill_minus_9_resumes_to_the_uninterrupted_run(tiny_corpus, tmp_path, kill_at):
    """SIGKILL of `alcap train` (no clean stop: no evaluation or selection runs at the kill),
    then the same command again: last/, best/, the log and the selection state are those of a
    run that was never killed."""
    import signal
    import time

    per_epoch = batches_per_epoch(tiny_corpus)
    straight = _train_cli(tiny_corpus, tmp_path / "straight")
    killed = _train_cli(tiny_corpus, tmp_path / "killed")
    log = tmp_path / "killed" / "log.jsonl"

    def reached() -> bool:  # states are saved at epoch ends only, so the log runs ahead of them
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        if kill_at == "mid-epoch":  # the second step of epoch 2: one logged step past the last state
            return any(r.get("step") == per_epoch + 2 for r in records)
        return any("val/loss" in r for r in records)  # epoch 1's evaluation, around its state's save

    deadline = time.monotonic() + 240
    while not reached():
        assert killed.poll() is None, killed.stderr.read()
        assert time.monotonic() < deadline, "the run never reached the moment to kill at"
        time.sleep(0.005)
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(timeout=30) == -signal.SIGKILL
    assert straight.wait(timeout=300) == 0, straight.stderr.read()
    resumed = _train_cli(tiny_corpus, tmp_path / "killed")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0 and "resumed from" in err, err

    a, b = tmp_path / "straight", tmp_path / "killed"
    _same_weights(a / "last", b / "last")
    _same_weights(a / "best", b / "best")
    # Validation history included; every value but the clock of the training lines (wall time).
    log_a, log_b = _log_without_clock(a / "log.jsonl"), _log_without_clock(b / "log.jsonl")
    assert log_a == log_b and len(log_a) > 4
    sa, sb = _final_state(a), _final_state(b)
    for key in ("epoch", "global_step", "best_value", "evals_without_improvement", "history"):
        assert sa[key] == sb[key], key
    starts = [json.loads(line) for line in (b / "environment.jsonl").read_text().splitlines()]
    assert len(starts) == 2 and starts[0]["torch_threads"] == starts[1]["torch_threads"] >= 1  # one line per start


def _log_without_clock(path: Path) -> list[dict]:
    """The records of a log.jsonl with their `seconds` (the loop's clock) checked and removed."""
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record in records:
        if "train/loss" in record:
            assert record.pop("seconds") >= 0
    return records


def test_paths_a_run_records_are_absolute_so_its_models_work_from_any_directory(tiny_corpus, tmp_path, monkeypatch):
    import shutil

    from alcap.cli import main
    from alcap.config import load_run_config
    from alcap.data.manifest import read_manifest

    work = tmp_path / "work"
    shutil.copytree(tiny_corpus / "corpus", work / "corpus")
    shutil.copytree(tiny_corpus / "store", work / "store")
    monkeypatch.chdir(work)  # everything given relative to here
    relative = ["data.manifest=corpus/manifest.jsonl", "data.embeddings=store", "model.backbone=tiny",
                "model.tokenizer_vocab_size=400", "model.alcap.fusion_layers=[1, 2]", "train.epochs=1",
                "train.batch_size=8", "train.eval_generate=false", "output_dir=run"]
    train(load_config(None, relative), progress=False)
    assert read_manifest("corpus/manifest.jsonl").rows[0].audio.startswith(str(work))  # audio resolved too
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    saved = load_run_config(work / "run" / "best")
    assert saved.data.manifest == str(work / "corpus" / "manifest.jsonl") and saved.data.embeddings == str(work / "store")
    assert main(["evaluate", str(work / "run" / "best"), "--limit", "2", "--no-retrieval", "--quiet",
                 "--out", str(elsewhere / "eval")]) == 0
    monkeypatch.chdir(work)  # the same relative config is still the same run (resumed, not refused)
    assert train(load_config(None, relative), progress=False)["epochs"] == 1


def test_tensorboard_gets_the_numbers_of_log_jsonl(tiny_corpus, tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard is tested where it is installed: pip install 'alcap[tensorboard]'")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = tiny_config(tiny_corpus, tmp_path / "run", **{"train.epochs": 1, "train.eval_generate": "false",
                                                           "train.log_with": "[tensorboard]"})
    train(config, progress=False)
    logged = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    board = EventAccumulator(str(tmp_path / "run" / "trackers" / "run"))  # trackers/<run name>/
    board.Reload()
    steps = [r for r in logged if "train/loss" in r]
    assert [(e.step, round(e.value, 5)) for e in board.Scalars("train/loss")] == \
        [(r["step"], round(r["train/loss"], 5)) for r in steps]
    assert [e.step for e in board.Scalars("val/caption_loss")] == [r["step"] for r in logged if "val/caption_loss" in r]


def test_freed_memory_is_kept_for_reuse_unless_switched_off_which_a_resume_allows(tiny_corpus, tmp_path, monkeypatch):
    from alcap.train import loop

    calls = []
    monkeypatch.setattr(loop, "reuse_freed_memory", lambda: calls.append(1) or True)
    train(tiny_config(tiny_corpus, tmp_path / "run", **{"train.max_steps": 1}), progress=False)
    assert calls == [1]  # on by default
    # Switching it off, the remedy where memory is tight, resumes the same run: it changes no result.
    summary = train(tiny_config(tiny_corpus, tmp_path / "run", **{"train.reuse_freed_memory": "false"}),
                    progress=False)
    assert calls == [1] and summary["global_step"] == 2 * batches_per_epoch(tiny_corpus)
