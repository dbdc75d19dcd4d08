"""`alcap caption`: sources, lyrics, streamed JSONL/CSV output, resume and generation options."""

import csv
import io
import json
import shutil

from alcap.cli import main
from alcap.data.manifest import read_manifest
from alcap.inference import Captioner


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_directories_globs_and_manifests_stream_and_resume(tiny_corpus, tiny_models, tmp_path, capsys):
    manifest = tiny_corpus / "corpus" / "manifest.jsonl"
    rows = {r.song_id: r for r in read_manifest(manifest)}
    folder = tmp_path / "songs"
    folder.mkdir()
    for row in list(rows.values())[:4]:
        shutil.copy(row.audio, folder)
    (folder / "cover.txt").write_text("not audio")  # ignored: audio is recognised by content
    model = tiny_models["music"]

    # a directory (recursive) and a glob: stdout carries JSON only, the note goes to stderr
    suffix = sorted(folder.glob("demo*"))[0].suffix
    code, out, err = run(capsys, "caption", folder, str(tmp_path / "songs" / f"*{suffix}"), "--model", model,
                         "--jsonl", "-", "--quiet", "--device", "cpu")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 0 and len(records) == 4 + len(list(folder.glob(f"*{suffix}"))) > 4
    assert "captions written to stdout" in err and err.count("had no lyrics") == 1
    captioner = Captioner.from_pretrained(model, device="cpu")
    first = records[0]
    assert first["caption"] == captioner.caption(first["file"]) and first["lyrics"] == ""

    # a manifest: its lyrics and ids; an interrupted run (--limit) is continued, nothing twice
    out_file = tmp_path / "captions.jsonl"
    code, out, _ = run(capsys, "caption", manifest, "--model", model, "--jsonl", out_file, "--limit", "3", "--quiet")
    assert code == 0 and "3 captions written" in out
    code, out, err = run(capsys, "caption", manifest, "--model", model, "--jsonl", out_file, "--quiet")
    assert code == 0 and "3 songs captioned already" in err
    records = [json.loads(line) for line in out_file.read_text().splitlines()]
    assert [r["song_id"] for r in records] == list(rows)  # every song once, in manifest order
    for r in records[:2]:
        assert r["lyrics"] == rows[r["song_id"]].lyrics
        assert r["caption"] == captioner.caption(r["file"], r["lyrics"])

    # CSV to a file, continued the same way, with a header once
    out_csv = tmp_path / "captions.csv"
    assert run(capsys, "caption", manifest, "--model", model, "--csv", out_csv, "--limit", "2", "--quiet")[0] == 0
    assert run(capsys, "caption", manifest, "--model", model, "--csv", out_csv, "--quiet")[0] == 0
    table = list(csv.DictReader(io.StringIO(out_csv.read_text())))
    assert [r["song_id"] for r in table] == list(rows) and table[0]["caption"] == records[0]["caption"]


def test_generation_options_and_several_captions_per_song(tiny_corpus, tiny_models, capsys):
    manifest = tiny_corpus / "corpus" / "manifest.jsonl"
    song = next(iter(read_manifest(manifest))).audio
    argv = ["caption", song, "--model", tiny_models["music"], "--jsonl", "-", "--quiet", "--lyrics", "home and the road",
            "--sample", "--top-p", "0.9", "--temperature", "1.5", "--num-return-sequences", "3", "--num-beams", "1",
            "--max-new-tokens", "6"]
    code, out, _ = run(capsys, *argv, "--seed", "7")
    record = json.loads(out)
    assert code == 0 and len(record["captions"]) == 3 and record["caption"] == record["captions"][0]
    assert record["lyrics"] == "home and the road"
    assert json.loads(run(capsys, *argv, "--seed", "7")[1])["captions"] == record["captions"]  # seeded
    assert json.loads(run(capsys, *argv, "--seed", "8")[1])["captions"] != record["captions"]  # and sampled
    code, _, err = run(capsys, "caption", song, "--model", tiny_models["music"], "--num-return-sequences", "5",
                       "--num-beams", "2", "--quiet")
    assert code == 2 and "num_return_sequences must be 1..num_beams (2)" in err


def test_whole_tracks_are_heard_window_by_window_and_deterministically(tiny_corpus, tiny_models, tmp_path, capsys):
    import numpy as np
    import pytest
    import torch

    from alcap.audio.decode import AudioError, TrackWindows
    from alcap.inference import FULL_TRACK_MODES

    rows = list(read_manifest(tiny_corpus / "corpus" / "manifest.jsonl"))
    song, lyrics = rows[0].audio, rows[0].lyrics
    captioner = Captioner.from_pretrained(tiny_models["music"], device="cpu")
    seconds = captioner.excerpt.seconds  # 2 s; the songs are 2-2.5 s: two windows, the second the final one
    windows = np.stack(list(TrackWindows(song, captioner.extractor.sample_rate, seconds)))
    per_window = captioner.extractor.embed(torch.from_numpy(windows)).numpy()  # (2, L_m, 256)
    assert len(windows) == 2
    pooled, duration = captioner.embed_track(song, "pool")
    np.testing.assert_allclose(pooled, per_window.mean(axis=0), rtol=1e-5, atol=1e-5)
    concat, _ = captioner.embed_track(song, "concat", windows_per_batch=1)
    np.testing.assert_allclose(concat, np.concatenate(per_window), rtol=1e-5, atol=1e-5)
    import soundfile as sf

    assert duration == pytest.approx(sf.info(song).duration)

    for mode in FULL_TRACK_MODES:
        h_m = captioner.embed_track(song, mode)[0]
        expected = captioner.caption_embeddings([lyrics], [h_m])[0]
        assert captioner.caption(song, lyrics, full_track=mode) == expected
        assert captioner.caption(song, lyrics, full_track=mode) == expected  # the same file, the same caption
    assert captioner.caption(song, lyrics, full_track=True) == captioner.caption(song, lyrics, full_track="pool")
    with pytest.raises(ValueError, match="full_track must be"):
        captioner.caption(song, lyrics, full_track="mean")
    results = captioner.caption_batch([song, tmp_path / "missing.wav"], [lyrics, ""], errors="skip", full_track=True)
    assert results[0].ok and "file not found" in results[1].error
    with pytest.raises(AudioError, match="file not found"):
        captioner.caption(tmp_path / "missing.wav", full_track=True)

    # the command line: the same captions, through the pipeline, and a bad file costs only itself
    (tmp_path / "bad.wav").write_bytes(b"RIFF not really")
    code, out, err = run(capsys, "caption", song, tmp_path / "bad.wav", "--model", tiny_models["music"], "--lyrics",
                         lyrics, "--full-track", "--jsonl", "-", "--quiet", "--workers", "0")
    records = [json.loads(line) for line in out.splitlines()]
    assert code == 1 and records[0]["caption"] == captioner.caption(song, lyrics, full_track=True)
    assert "error" in records[1] and "bad.wav" in err
    code, out, _ = run(capsys, "caption", song, "--model", tiny_models["music"], "--lyrics", lyrics,
                       "--full-track", "concat", "--jsonl", "-", "--quiet")
    assert json.loads(out)["caption"] == captioner.caption(song, lyrics, full_track="concat")
    code, _, err = run(capsys, "caption", song, "--model", tiny_models["music"], "--full-track",
                       "--excerpt-position", "start")
    assert code == 2 and "--excerpt-position and --excerpt-offset do not apply" in err
