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
