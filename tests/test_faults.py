"""The command line against bad inputs and faults, as a user meets them.

Each case builds its bad input (files, manifests, configs, checkpoints, model directories,
stores) or fault (a full disk, a kill), runs `alcap`, and the table asserts for every case:
the exit code, one line on stderr that names the item and says what is wrong, no traceback;
each case's own check then asserts that the good items of the batch were done and that
nothing already computed was lost.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch

from alcap.cli import main
from alcap.data.store import EmbeddingStore

from helpers import tone, write_audio


@dataclass
class Fault:
    argv: list
    code: int
    message: str  # regex that one stderr line must match (the item's name and the reason)
    check: Callable[[str, str], None] | None = None  # (stdout, stderr) -> asserts on what was done or kept
    run: Callable[[], tuple[int, str, str]] | None = None  # instead of main(argv): e.g. a killed subprocess


CASES: list[Callable] = []


def case(fn):
    CASES.append(fn)
    return fn


@pytest.fixture(scope="module")
def env(tiny_corpus, tiny_models, tmp_path_factory, cnnsa_checkpoint):
    root = tmp_path_factory.mktemp("faults")
    good = [write_audio(root / "good1.wav", tone(3.0, 16000), 16000),
            write_audio(root / "good2.ogg", tone(3.0, 22050, freq=330), 22050)]
    return {"root": root, "good": good, "corpus": tiny_corpus / "corpus", "manifest": tiny_corpus / "corpus" / "manifest.jsonl",
            "store": tiny_corpus / "store", "music": tiny_models["music"], "lyrics": tiny_models["lyrics"],
            "checkpoint": cnnsa_checkpoint}


def jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def copy_model(env, tmp_path, kind="music") -> Path:
    target = tmp_path / "model"
    shutil.copytree(env[kind], target)
    return target


def partial_store(env, target: Path, songs: int) -> Path:
    """A copy of the test store holding only its first `songs` songs."""
    from dataclasses import asdict

    from alcap.data.store import EmbeddingWriter, StoreEntry

    store = EmbeddingStore.open(env["store"])
    with EmbeddingWriter.open(target, store.meta) as writer:
        writer.add_batch([(StoreEntry(**{**asdict(store.entry(s)), "offset": 0, "length": 0}), store[s])
                          for s in store.song_ids[:songs]])
    return target


def nan_wav(path: Path) -> Path:
    data = tone(3.0, 16000)
    data[len(data) // 2:len(data) // 2 + 10] = np.nan  # in every excerpt
    import soundfile as sf

    sf.write(str(path), data, 16000, subtype="FLOAT")
    return path


def captions_of_good_files(env, out_file: Path, n_good: int = 2):
    def check(out, err):
        lines = jsonl(out_file)
        done = [line for line in lines if "caption" in line]
        assert [line["file"] for line in done] == [str(p) for p in env["good"][:n_good]]
        assert all(isinstance(line["caption"], str) for line in done)
        assert [set(line) for line in lines if "error" in line] == [{"file", "error"}] * (len(lines) - len(done))
    return check


# ----------------------------------------------------------------------------- caption: audio


@case
def caption_batch_with_nan_samples(env, tmp_path, monkeypatch):
    bad, out = nan_wav(tmp_path / "nan_samples.wav"), tmp_path / "c.jsonl"
    return Fault(["caption", *env["good"], bad, "--model", env["music"], "--jsonl", out, "--device", "cpu"], 1,
                 r"nan_samples\.wav: contains NaN or infinite samples", captions_of_good_files(env, out))


@case
def caption_lyrics_only_model_missing_file(env, tmp_path, monkeypatch):
    out = tmp_path / "c.jsonl"
    def check(out_text, err):
        captions_of_good_files(env, out, 1)(out_text, err)
        assert err.count("is a lyrics-only model: its captions do not hear the audio") == 1
    return Fault(["caption", env["good"][0], tmp_path / "nope.wav", "--model", env["lyrics"], "--jsonl", out], 1,
                 r"nope\.wav: file not found", check)


@case
def caption_only_bad_files(env, tmp_path, monkeypatch):
    out = tmp_path / "c.jsonl"

    def check(out_text, err):
        assert jsonl(out) == [{"file": str(tmp_path / "a.wav"), "error": "file not found"},
                              {"file": str(tmp_path / "b.wav"), "error": "file not found"}]
        assert "0 captions written" in out_text and "2 files failed" in out_text
    return Fault(["caption", tmp_path / "a.wav", tmp_path / "b.wav", "--model", env["music"], "--jsonl", out], 1,
                 r"b\.wav: file not found", check)


@case
def caption_unwritable_jsonl_refused_before_work(env, tmp_path, monkeypatch):
    out = tmp_path / "no" / "such" / "dir" / "c.jsonl"
    return Fault(["caption", *env["good"], "--model", env["music"], "--jsonl", out], 2,
                 r"--jsonl .*c\.jsonl: cannot be written", lambda o, e: "captions written" not in o)


@case
def caption_sidecar_lyrics_not_utf8(env, tmp_path, monkeypatch):
    song = shutil.copy(env["good"][1], tmp_path / "latin1.ogg")
    (tmp_path / "latin1.txt").write_bytes("Coração, canção".encode("latin-1"))
    out = tmp_path / "c.jsonl"
    return Fault(["caption", env["good"][0], song, "--model", env["music"], "--jsonl", out], 1,
                 r"lyrics file .*latin1\.txt is not valid UTF-8", captions_of_good_files(env, out, 1))


@case
def caption_truncated_mp3(env, tmp_path, monkeypatch):
    full = write_audio(tmp_path / "full.mp3", tone(20.0, 44100), 44100)
    bad = tmp_path / "truncated.mp3"
    bad.write_bytes(full.read_bytes()[: full.stat().st_size * 17 // 100])
    out = tmp_path / "c.jsonl"
    return Fault(["caption", *env["good"], bad, "--model", env["music"], "--jsonl", out], 1,
                 r"truncated\.mp3: truncated or corrupt: the header declares 20\.00 s but only 3\.\d+ s",
                 captions_of_good_files(env, out))


@case
def caption_one_sample_file(env, tmp_path, monkeypatch):
    bad = write_audio(tmp_path / "one_sample.wav", np.zeros((1, 1), dtype=np.float32), 16000)
    out = tmp_path / "c.jsonl"
    return Fault(["caption", *env["good"], bad, "--model", env["music"], "--jsonl", out], 1,
                 r"one_sample\.wav: only 0\.000 s of audio; at least 0\.5 s", captions_of_good_files(env, out))


@case
def caption_directory_as_file(env, tmp_path, monkeypatch):
    out = tmp_path / "c.jsonl"
    return Fault(["caption", *env["good"], tmp_path, "--model", env["music"], "--jsonl", out], 1,
                 rf"{re.escape(str(tmp_path))}: is a directory", captions_of_good_files(env, out))


@case
def caption_symlink_loop(env, tmp_path, monkeypatch):
    loop = tmp_path / "loop.wav"
    os.symlink(loop, loop)
    out = tmp_path / "c.jsonl"
    return Fault(["caption", *env["good"], loop, "--model", env["music"], "--jsonl", out], 1,
                 r"loop\.wav: symbolic link loop", captions_of_good_files(env, out))


@case
def caption_empty_and_garbage_files(env, tmp_path, monkeypatch):
    (tmp_path / "empty.flac").write_bytes(b"")
    (tmp_path / "text.mp3").write_text("not audio at all")
    out = tmp_path / "c.jsonl"
    def check(out_text, err):
        captions_of_good_files(env, out)(out_text, err)
        assert re.search(r"text\.mp3: not a readable audio file", err)
    return Fault(["caption", *env["good"], tmp_path / "empty.flac", tmp_path / "text.mp3", "--model", env["music"],
                  "--jsonl", out], 1, r"empty\.flac: file is empty", check)


# ----------------------------------------------------------------------------- caption: model directories


@case
def model_without_weights(env, tmp_path, monkeypatch):
    model = copy_model(env, tmp_path)
    (model / "model.safetensors").unlink()
    earlier = tmp_path / "captions.jsonl"  # a previous run's output must survive a failed start
    earlier.write_text('{"file": "a.wav", "caption": "kept"}\n')
    return Fault(["caption", *env["good"], "--model", model, "--jsonl", earlier], 2, r"model\.safetensors: missing",
                 lambda o, e: earlier.read_text() == '{"file": "a.wav", "caption": "kept"}\n')


@case
def model_with_truncated_weights(env, tmp_path, monkeypatch):
    model = copy_model(env, tmp_path)
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:5000])
    return Fault(["caption", *env["good"], "--model", model], 2, r"model\.safetensors: truncated or damaged")


@case
def model_without_alcap_config(env, tmp_path, monkeypatch):
    model = copy_model(env, tmp_path)
    (model / "alcap_config.json").unlink()
    return Fault(["evaluate", model, "--no-retrieval", "--quiet"], 2,
                 r"model: not an alcap model directory \(no alcap_config\.json\)")


@case
def model_without_music_encoder(env, tmp_path, monkeypatch):
    model = copy_model(env, tmp_path)
    shutil.rmtree(model / "music_encoder")
    return Fault(["caption", *env["good"], "--model", model], 2, r"music_encoder: missing")


@case
def run_directory_given_as_model(env, tmp_path, monkeypatch):
    return Fault(["caption", *env["good"], "--model", env["music"].parent], 2,
                 r"not an alcap model directory .*it is a run directory: use its best/ or last/")


@case
def evaluate_with_a_store_missing_songs(env, tmp_path, monkeypatch):
    partial = partial_store(env, tmp_path / "partial", 4)
    return Fault(["evaluate", env["music"], "--embeddings", partial, "--no-retrieval", "--quiet", "--out", tmp_path / "e"],
                 2, r"partial: no embedding for \d+ of the \d+ songs of split 'test': demo\d+",
                 lambda o, e: not (tmp_path / "e").exists())


# ----------------------------------------------------------------------------- configs and training


def train_argv(env, out, *sets):
    base = [f"data.manifest={env['manifest']}", f"data.embeddings={env['store']}", "model.backbone=tiny",
            "model.tokenizer_vocab_size=400", "model.alcap.fusion_layers=[1, 2]", "train.epochs=1",
            "train.batch_size=8", "train.optimizer=adamw", "train.eval_generate=false", "data.max_caption_tokens=48"]
    return ["train", "configs/demo-alcap.yaml", "--output-dir", out, "--quiet",
            *[a for s in (*base, *sets) for a in ("--set", s)]]


@case
def config_file_missing(env, tmp_path, monkeypatch):
    return Fault(["train", tmp_path / "nope.yaml"], 2, r"nope\.yaml: config file not found")


@case
def config_file_malformed(env, tmp_path, monkeypatch):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  epochs: 3\n lr: [1e-4\n")
    return Fault(["train", bad], 2, r"bad\.yaml: line \d+, column \d+: not valid YAML")


def refused_setting(setting, message):
    def make(env, tmp_path, monkeypatch):
        return Fault(train_argv(env, tmp_path / "run", setting), 2, message,
                     lambda o, e: not (tmp_path / "run").exists())
    make.__name__ = "config_" + re.sub(r"\W+", "_", setting.replace("[", "list_")).strip("_")
    return case(make)


refused_setting("train.epochs=three", r"train\.epochs: 'three' is not a whole number")
refused_setting("train.epochs=2.5", r"train\.epochs: 2\.5 is not a whole number")
refused_setting("model.alcap.fusion_layers=7", r"model\.alcap\.fusion_layers: 7 is not a list")
refused_setting("model.alcap.fusion_layers=[7]", r"fusion_layers: \[7\] has \[7\], outside the 3 encoder layers")
refused_setting("data.length_grouping=maybe", r"data\.length_grouping: 'maybe' is not true or false")


@case
def train_output_dir_under_a_file(env, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    return Fault(train_argv(env, tmp_path / "afile" / "run"), 2, r"afile/run: .*a part of this path is a file")


@case
def train_from_a_store_recording_a_relative_encoder_path(env, tmp_path, monkeypatch):
    store = tmp_path / "store"
    shutil.copytree(env["store"], store)
    meta = json.loads((store / "store.json").read_text())
    meta["info"]["extractor"]["weights_source"] = "models/msd/attention/best_model.pth"  # as older alcap wrote it
    (store / "store.json").write_text(json.dumps(meta))
    return Fault(train_argv(env, tmp_path / "run", f"data.embeddings={store}"), 2,
                 r"store/store\.json records that its embeddings came from the music encoder "
                 r"'models/msd/attention/best_model\.pth', which cannot be loaded \(a relative path",
                 lambda o, e: not (tmp_path / "run").exists())


@case
def train_with_a_store_missing_songs(env, tmp_path, monkeypatch):
    partial = partial_store(env, tmp_path / "partial", 3)
    return Fault(train_argv(env, tmp_path / "run", f"data.embeddings={partial}"), 2,
                 r"partial: no embedding for \d+ of the \d+ songs of these rows: demo\d+",
                 lambda o, e: not (tmp_path / "run").exists())


@case
def train_on_a_store_full_of_nan(env, tmp_path, monkeypatch):
    store = tmp_path / "nan-store"
    shutil.copytree(env["store"], store)
    data = np.memmap(store / "embeddings.f16", dtype="<f2", mode="r+")
    data[:] = np.nan
    data.flush()
    args = train_argv(env, tmp_path / "run", f"data.embeddings={store}")
    return Fault(args, 2, r"song demo\d+: its embedding in .*nan-store holds NaN or infinite values",
                 lambda o, e: not (tmp_path / "run").exists())


@case
def train_resume_with_a_hostile_optimizer_state(env, tmp_path, monkeypatch):
    import pickle

    from alcap.train.loop import write_checksums

    run, marker = tmp_path / "run", tmp_path / "pwned"
    assert main([str(a) for a in train_argv(env, run, "train.max_steps=1")]) == 0
    state = run / "states" / (run / "states" / "latest").read_text()

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    (state / "optimizer.bin").write_bytes(pickle.dumps({"state": Exploit()}))
    write_checksums(state)
    return Fault(train_argv(env, run), 2, r"step_\d+: cannot load this resume state \(holds Python objects other "
                 r"than tensors, which alcap does not load", lambda o, e: not marker.exists() and "weights_only" not in e)


@case
def train_disk_full_while_saving(env, tmp_path, monkeypatch):
    import accelerate

    def full_disk(self, output_dir=None, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(output_dir))

    monkeypatch.setattr(accelerate.Accelerator, "save_state", full_disk)
    return Fault(train_argv(env, tmp_path / "run"), 2,
                 r"no space left on device while writing .*step_\d+; no resume state had been saved yet\. Free some")


# ----------------------------------------------------------------------------- importers


@case
def import_si_missing_pickle(env, tmp_path, monkeypatch):
    return Fault(["data", "import-si", "--pickle", f"train={tmp_path / 'si_train.pkl'}", "--audio-dir", tmp_path,
                  "--out", tmp_path / "m.jsonl"], 2, r"si_train\.pkl: no such file")


@case
def import_si_missing_json(env, tmp_path, monkeypatch):
    return Fault(["data", "import-si", "--json", f"test={tmp_path / 'si_test.json'}", "--audio-dir", tmp_path,
                  "--out", tmp_path / "m.jsonl"], 2, r"si_test\.json: no such file")


def write_ncm(path: Path, rows: list[str], bom: bool = False) -> Path:
    text = "song_id,lyrics,review,audio\n" + "".join(r + "\n" for r in rows)
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + text.encode("utf-8"))
    return path


@case
def import_ncm_csv_with_a_bom_and_a_latin1_row(env, tmp_path, monkeypatch):
    table = write_ncm(tmp_path / "ncm.csv", [f"s{i},lyrics {i},review {i},s{i}.mp3" for i in range(5)], bom=True)
    with open(table, "ab") as f:
        f.write("s9,Coração,bonita canção,s9.mp3\n".encode("latin-1"))

    def check(out, err):
        rows = jsonl(tmp_path / "m.jsonl")
        assert sorted(r["song_id"] for r in rows) == [f"s{i}" for i in range(5)]  # the BOM did not eat song_id
        assert "wrote" in out
    return Fault(["data", "import-ncm", table, "--out", tmp_path / "m.jsonl"], 0,
                 r"skipped .*ncm\.csv:7: field 'lyrics' is not valid UTF-8", check)


@case
def import_ncm_jsonl_with_a_broken_line(env, tmp_path, monkeypatch):
    table = tmp_path / "ncm.jsonl"
    table.write_text("\n".join([json.dumps({"song_id": "a", "lyrics": "l", "review": "r"}), "{oops",
                                json.dumps({"song_id": "b", "lyrics": "l", "review": "r"})]) + "\n")
    return Fault(["data", "import-ncm", table, "--out", tmp_path / "m.jsonl"], 0,
                 r"skipped .*ncm\.jsonl:2: not valid JSON",
                 lambda o, e: [r["song_id"] for r in jsonl(tmp_path / "m.jsonl")] in (["a", "b"], ["b", "a"]))


@case
def import_out_under_a_file(env, tmp_path, monkeypatch):
    table = write_ncm(tmp_path / "ncm.csv", ["s1,l,r,s1.mp3"])
    (tmp_path / "afile").write_text("x")
    return Fault(["data", "import-ncm", table, "--out", tmp_path / "afile" / "m.jsonl"], 2,
                 r"--out .*afile/m\.jsonl: cannot create it, .*afile is a file")


# ----------------------------------------------------------------------------- embedding and stores


@case
def embed_out_under_a_file(env, tmp_path, monkeypatch):
    (tmp_path / "afile").write_text("x")
    return Fault(["embed", env["manifest"], "--out", tmp_path / "afile" / "store", "--random-init", "0", "--quiet"], 2,
                 r"afile/store: .*a part of this path is a file")


@case
def embed_with_a_pickled_module_checkpoint(env, tmp_path, monkeypatch):
    from alcap.audio.cnnsa import CNNSA

    torch.save(CNNSA(), tmp_path / "whole_model.pth")  # the module, not its state dict

    def check(out, err):
        assert "weights_only" not in err and not (tmp_path / "store").exists()
    return Fault(["embed", env["manifest"], "--out", tmp_path / "store", "--checkpoint", tmp_path / "whole_model.pth"],
                 2, r"whole_model\.pth: holds Python objects other than tensors", check)


@case
def embed_with_a_truncated_checkpoint(env, tmp_path, monkeypatch):
    bad = tmp_path / "best_model.pth"
    bad.write_bytes(env["checkpoint"].read_bytes()[:10000])
    return Fault(["embed", env["manifest"], "--out", tmp_path / "store", "--checkpoint", bad], 2,
                 r"best_model\.pth: cannot read checkpoint")


@case
def embed_notes_conflicting_audio_of_one_song(env, tmp_path, monkeypatch):
    a, b = env["good"]
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in [
        {"song_id": "x", "audio": str(a), "caption": "c", "split": "train"},
        {"song_id": "x", "audio": str(b), "caption": "d", "split": "train"}]) + "\n")
    return Fault(["embed", manifest, "--out", tmp_path / "store", "--random-init", "0", "--quiet", "--workers", "0"], 0,
                 rf"song x has rows with different audio files; embedding .*good1\.wav \(line 1\), not .*good2\.ogg \(line 2\)",
                 lambda o, e: len(EmbeddingStore.open(tmp_path / "store")) == 1)


@case
def embed_disk_full_keeps_finished_batches(env, tmp_path, monkeypatch):
    from alcap.data.store import EmbeddingWriter

    add_batch = EmbeddingWriter.add_batch
    calls = {"n": 0}

    def filling_up(self, items):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(self.root / "embeddings.f16"))
        add_batch(self, items)

    monkeypatch.setattr(EmbeddingWriter, "add_batch", filling_up)
    store = tmp_path / "store"
    args = ["embed", env["manifest"], "--out", store, "--random-init", "0", "--quiet", "--workers", "0",
            "--batch-size", "2", "--excerpt-seconds", "2"]

    def check(out, err):
        assert len(EmbeddingStore.open(store)) == 4  # the two batches before the full disk
        monkeypatch.setattr(EmbeddingWriter, "add_batch", add_batch)
        assert main([str(a) for a in args]) == 0 and len(EmbeddingStore.open(store)) == 12
    return Fault(args, 2, r"no space left on device while writing .*embeddings\.f16\. 4 songs are safely in", check)


@case
def store_index_with_a_negative_offset(env, tmp_path, monkeypatch):
    store = tmp_path / "store"
    shutil.copytree(env["store"], store)
    lines = (store / "index.jsonl").read_text().splitlines()
    second = json.loads(lines[1])
    second["offset"] = -5
    lines[1] = json.dumps(second)
    (store / "index.jsonl").write_text("\n".join(lines) + "\n")
    return Fault(["store", "info", store], 2, r"index\.jsonl: corrupt index line .*rows -5\+17 are not after")


@case
def validate_decode_reports_a_truncated_mp3(env, tmp_path, monkeypatch):
    full = write_audio(tmp_path / "full.mp3", tone(20.0, 44100), 44100)
    (tmp_path / "cut.mp3").write_bytes(full.read_bytes()[: full.stat().st_size // 5])
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps({"song_id": s, "audio": f, "caption": "c", "split": "train"})
                                  for s, f in (("ok", "full.mp3"), ("cut", "cut.mp3"))) + "\n")

    return Fault(["data", "validate", manifest, "--decode", "--quiet"], 0,
                 r"song cut: error: audio .*cut\.mp3: truncated or corrupt: the header declares 20\.00 s",
                 lambda o, e: "1 of 2 rows usable" in o)


# ----------------------------------------------------------------------------- kills


def alcap(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "alcap", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_rows(store: Path, at_least: int, timeout: float = 120.0) -> None:
    index = store / "index.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if index.exists() and index.read_bytes().count(b"\n") >= at_least:
            return
        time.sleep(0.05)
    pytest.fail(f"no {at_least} songs in {store} after {timeout} s")


@pytest.fixture(scope="module")
def many_songs(env):
    """A manifest of 40 songs, slow enough to kill an embedding run in the middle."""
    root = env["root"] / "many"
    root.mkdir()
    rows = []
    for i in range(40):
        write_audio(root / f"s{i:02d}.wav", tone(4.0, 44100, freq=200 + 10 * i), 44100)
        rows.append({"song_id": f"s{i:02d}", "audio": f"s{i:02d}.wav", "caption": "c", "split": "train"})
    (root / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "m.jsonl"


def killed_embed(sig):
    def make(env, tmp_path, monkeypatch):
        manifest = env["root"] / "many" / "m.jsonl"
        store = tmp_path / "store"
        args = ["embed", manifest, "--out", store, "--random-init", "0", "--workers", "2", "--batch-size", "4",
                "--quiet", "--device", "cpu"]

        def run():
            import psutil

            job = alcap(*args)
            wait_for_rows(store, 4)
            workers = psutil.Process(job.pid).children(recursive=True)
            assert workers, "the run had no decoding workers"
            job.send_signal(sig)
            code = job.wait(timeout=60)
            done = len(EmbeddingStore.open(store))
            for worker in workers:  # workers die with their parent, so nothing holds the store
                try:
                    worker.wait(timeout=10)
                except psutil.NoSuchProcess:
                    pass
            assert not any(w.is_running() and w.status() != psutil.STATUS_ZOMBIE for w in workers)
            rerun = alcap(*args, "--json")  # at once: no stale lock refuses it
            out, err = rerun.communicate(timeout=300)
            summary = json.loads(out)
            assert summary["already_done"] == done >= 4 and summary["embedded"] == 40 - done
            assert len(EmbeddingStore.open(store)) == 40
            if sig == signal.SIGTERM:  # the signal ends the run the way Ctrl-C does, with a word
                assert code == 130
                first = job.stderr.read()
                assert "songs are safely in" in first and "Traceback" not in first
                return rerun.returncode, out, err + first
            assert code == -signal.SIGKILL
            return rerun.returncode, out, err + f"\nkilled with {done} songs done, resumed\n"

        return Fault(args, 0, r"killed with \d+ songs done, resumed" if sig == signal.SIGKILL else
                     r"interrupted: \d+ songs are safely in .*store; run the same command again to resume", run=run)
    make.__name__ = f"embed_killed_with_{signal.Signals(sig).name}"
    return case(make)


killed_embed(signal.SIGKILL)
killed_embed(signal.SIGTERM)


# ----------------------------------------------------------------------------- music encoders


@case
def embed_musicnn_given_a_cnnsa_checkpoint(env, tmp_path, monkeypatch):
    return Fault(["embed", env["manifest"], "--out", tmp_path / "s", "--encoder", "musicnn-msd",
                  "--checkpoint", env["checkpoint"]], 2, r"--encoder musicnn-msd uses the pretrained weights.*cnnsa",
                 check=lambda out, err: not (tmp_path / "s").exists())


@case
def embed_cnnsa_without_weights(env, tmp_path, monkeypatch):
    return Fault(["embed", env["manifest"], "--out", tmp_path / "s"], 2,
                 r"--encoder cnnsa needs its weights: --checkpoint PATH.*musicnn-msd")


@case
def embed_musicnn_without_the_musicnn_package(env, tmp_path, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "musicnn" else find_spec(name, *a))
    monkeypatch.setenv("ALCAP_CACHE", str(tmp_path / "cache"))
    return Fault(["tag", env["good"][0], "--encoder", "musicnn-msd"], 2,
                 r"musicnn package is not installed: install it with `pip install --no-deps musicnn==0.1.0`")


# ----------------------------------------------------------------------------- the table


@pytest.mark.parametrize("make", CASES, ids=lambda f: f.__name__)
def test_bad_input_or_fault(make, env, many_songs, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(Path(__file__).parent.parent)  # the repository: configs/ is found
    fault = make(env, tmp_path, monkeypatch)
    if fault.run is not None:
        code, out, err = fault.run()
    else:
        code = main([str(a) for a in fault.argv])
        out, err = capsys.readouterr()
    assert code == fault.code, f"exit {code}, expected {fault.code}\nstdout:\n{out}\nstderr:\n{err}"
    assert "Traceback" not in out + err
    matches = [line for line in (err + out).splitlines() if re.search(fault.message, line)]
    assert matches, f"no line matches {fault.message!r}\nstdout:\n{out}\nstderr:\n{err}"
    if fault.check is not None:
        assert fault.check(out, err) is not False
    print(f"{make.__name__}: exit {code}: {matches[0].strip()}")  # the table, with `pytest -rP`


def test_the_table_covers_at_least_thirty_cases():
    assert len(CASES) >= 30
