import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from alcap.audio.tags import MSD_TOP50_TAGS
from alcap.cli import build_parser, main
from alcap.data.demo import make_demo_corpus
from alcap.data.store import EmbeddingStore

from helpers import tone, write_audio


def run(capsys, *argv) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_tag_json_lists_top_k_tags_per_file(capsys, cnnsa_checkpoint, audio_dir):
    a = write_audio(audio_dir / "a.mp3", tone(20.0, 44100, channels=2), 44100)
    b = write_audio(audio_dir / "b.wav", tone(5.0, 8000, freq=220), 8000)
    bad = audio_dir / "bad.flac"
    bad.write_bytes(b"nope")
    code, out, err = run(capsys, "tag", a, bad, b, "--checkpoint", cnnsa_checkpoint, "--json", "--top", "50")
    lines = [json.loads(line) for line in out.splitlines()]
    assert code == 1  # one file failed; the others were still tagged
    assert [line["file"] for line in lines] == [str(a), str(bad), str(b)]
    assert "not a readable audio file" in lines[1]["error"] and str(bad) in err
    for line in (lines[0], lines[2]):
        tags = line["tags"]
        assert set(tags) == set(MSD_TOP50_TAGS)
        values = list(tags.values())
        assert values == sorted(values, reverse=True) and all(0 <= v <= 1 for v in values)
    code, out, _ = run(capsys, "tag", a, "--checkpoint", cnnsa_checkpoint.parent, "--json", "--top", "3")
    assert code == 0 and len(json.loads(out)["tags"]) == 3


def test_tag_text_and_full_track(capsys, cnnsa_checkpoint, audio_dir):
    a = write_audio(audio_dir / "long.ogg", tone(40.0, 22050), 22050)
    code, out, _ = run(capsys, "tag", a, "--checkpoint", cnnsa_checkpoint, "--full-track", "--top", "2")
    assert code == 0 and out.splitlines()[0] == str(a) and len(out.splitlines()) == 3


def test_tag_with_a_broken_checkpoint_explains(capsys, tmp_path, audio_dir):
    a = write_audio(audio_dir / "a.wav", tone(2.0, 16000), 16000)
    code, _, err = run(capsys, "tag", a, "--checkpoint", tmp_path / "missing.pth")
    assert code == 2 and "missing.pth: checkpoint not found" in err


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli_demo")
    make_demo_corpus(out, n_songs=6, seed=1, min_seconds=2.0, max_seconds=3.0, workers=1, progress=False)
    return out


def test_embed_then_resume_then_refuse_other_weights(capsys, small_demo, tmp_path, cnnsa_checkpoint):
    manifest = small_demo / "manifest.jsonl"
    store_dir = tmp_path / "store"
    code, out, _ = run(capsys, "embed", manifest, "--out", store_dir, "--random-init", "0", "--json", "--quiet",
                       "--excerpt-seconds", "2", "--workers", "1")
    summary = json.loads(out)
    assert code == 0 and summary["embedded"] == 6 and summary["failed"] == 0
    assert summary["bytes_per_song"] == 17 * 256 * 2  # 2 s -> 126 frames -> 16 steps + CLS
    code, out, _ = run(capsys, "embed", manifest, "--out", store_dir, "--random-init", "0", "--quiet",
                       "--excerpt-seconds", "2")
    assert code == 0 and "embedded 0 songs (6 already in the store, 0 failed)" in out
    code, _, err = run(capsys, "embed", manifest, "--out", store_dir, "--checkpoint", cnnsa_checkpoint, "--quiet",
                       "--excerpt-seconds", "2")
    assert code == 2 and "extractor.weights_sha256" in err and "another --out directory" in err
    code, out, _ = run(capsys, "store", "info", store_dir)
    assert code == 0 and "songs: 6" in out and "random-init (seed 0)" in out
    store = EmbeddingStore.open(store_dir)
    assert store["demo0000"].shape == (17, 256)


def test_embed_only_some_splits(capsys, small_demo, tmp_path):
    code, out, _ = run(capsys, "embed", small_demo / "manifest.jsonl", "--out", tmp_path / "s", "--random-init", "0",
                       "--split", "train", "--json", "--quiet", "--excerpt-seconds", "1", "--workers", "0")
    rows = [json.loads(line) for line in (small_demo / "manifest.jsonl").read_text().splitlines()]
    assert json.loads(out)["songs"] == len({r["song_id"] for r in rows if r["split"] == "train"})


def test_sharded_embedding_merges_to_the_single_run_store(capsys, small_demo, tmp_path, cnnsa_checkpoint):
    manifest = small_demo / "manifest.jsonl"
    common = ["--random-init", "0", "--quiet", "--excerpt-seconds", "1", "--workers", "0", "--json"]
    code, out, _ = run(capsys, "embed", manifest, "--out", tmp_path / "whole", *common)
    assert code == 0
    shard_songs = []
    for k in range(3):
        code, out, _ = run(capsys, "embed", manifest, "--out", tmp_path / f"shard{k}", "--shard", f"{k}/3", *common)
        assert code == 0
        shard_songs.append(set(EmbeddingStore.open(tmp_path / f"shard{k}")))
    assert [len(s) for s in shard_songs] == [2, 2, 2] and len(set.union(*shard_songs)) == 6  # disjoint, complete
    code, out, _ = run(capsys, "store", "merge", tmp_path / "merged", *(tmp_path / f"shard{k}" for k in range(3)), "--json")
    assert code == 0 and json.loads(out)["copied"] == 6 and json.loads(out)["songs"] == 6
    whole, merged = EmbeddingStore.open(tmp_path / "whole"), EmbeddingStore.open(tmp_path / "merged")
    assert set(merged) == set(whole)
    for song_id in whole:
        np.testing.assert_array_equal(merged[song_id], whole[song_id])
        assert merged.entry(song_id).duration == whole.entry(song_id).duration
    code, out, _ = run(capsys, "store", "merge", tmp_path / "merged", tmp_path / "shard0", tmp_path / "whole")
    assert code == 0 and "0 copied, 6 already there, 2 duplicates skipped" in out  # merging again is a no-op
    code, _, err = run(capsys, "embed", manifest, "--out", tmp_path / "x", "--shard", "3/3", *common)
    assert code == 2 and "shards are numbered 0..N-1" in err
    other = tmp_path / "other"
    run(capsys, "embed", manifest, "--out", other, "--checkpoint", cnnsa_checkpoint, "--quiet", "--excerpt-seconds", "1",
        "--workers", "0")
    code, _, err = run(capsys, "store", "merge", tmp_path / "m2", tmp_path / "shard0", other)
    assert code == 2 and "cannot be merged" in err and "weights_sha256" in err


def test_validate_exit_codes_and_json(capsys, small_demo, tmp_path):
    report_path = tmp_path / "report.json"
    code, out, _ = run(capsys, "data", "validate", small_demo / "manifest.jsonl", "--json", report_path, "--quiet")
    assert code == 0 and "18 of 18 rows usable" in out
    assert json.loads(report_path.read_text())["usable_rows"] == 18
    broken = tmp_path / "broken.csv"
    broken.write_text("song_id,audio,lyrics,caption,split\n1,nowhere.wav,,,train\n")
    code, out, _ = run(capsys, "data", "validate", broken, "--quiet")
    assert code == 1 and "file not found" in out and "caption is empty" in out


def test_make_demo_command(capsys, tmp_path):
    code, out, _ = run(capsys, "data", "make-demo", tmp_path / "d", "--songs", "3", "--min-seconds", "1",
                       "--max-seconds", "2", "--quiet", "--workers", "1")
    assert code == 0 and "3 songs" in out and (tmp_path / "d" / "manifest.jsonl").exists()


def all_subparsers(parser, prefix=()):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield prefix + (name,), sub
                yield from all_subparsers(sub, prefix + (name,))


def test_every_option_is_explained():
    for path, sub in all_subparsers(build_parser()):
        for action in sub._actions:
            if action.option_strings and action.dest != "help":
                assert action.help, f"alcap {' '.join(path)} {action.option_strings[0]} has no help"


def test_every_help_page_renders_its_text_as_written():
    for path, sub in all_subparsers(build_parser()):
        text = sub.format_help()  # argparse does not %-format a description: "%%" would print as is
        assert "%%" not in text, f"alcap {' '.join(path)} --help prints '%%'"
    experiment = dict(all_subparsers(build_parser()))[("experiment",)]
    assert "bootstrap 95% interval" in " ".join(experiment.format_help().split())


def test_console_script_is_installed():
    exe = Path(sys.executable).with_name("alcap")
    out = subprocess.run([str(exe), "embed", "--help"], capture_output=True, text=True, check=True).stdout
    assert "--checkpoint" in out and "--random-init" in out and "--excerpt-seconds" in out


def test_jobs_must_be_a_whole_number_of_at_least_one(capsys):
    for bad in ("0", "-2", "two"):
        with pytest.raises(SystemExit) as exit_info:
            main(["experiment", "configs/demo.yaml", "--jobs", bad])
        assert exit_info.value.code == 2
        assert f"--jobs: expected a whole number of at least 1, got '{bad}'" in capsys.readouterr().err


def test_help_of_every_command_imports_no_torch():
    """`alcap --help` and each command's --help answer at once: no torch, transformers or numpy import."""
    paths = [" ".join(path) for path, _ in all_subparsers(build_parser())]
    script = ("import sys\nfrom alcap.cli import main\nfor argv in sys.argv[1:]:\n"
              "    try:\n        main([*argv.split(), '--help'] if argv else ['--help'])\n"
              "    except SystemExit:\n        pass\n"
              "heavy = sorted(m for m in ('torch', 'transformers', 'numpy', 'sentence_transformers') if m in sys.modules)\n"
              "print('HEAVY', heavy, file=sys.stderr)\n")
    done = subprocess.run([sys.executable, "-c", script, "", *paths], capture_output=True, text=True, check=True)
    assert "HEAVY []" in done.stderr
    assert done.stdout.count("usage: alcap") == len(paths) + 1


def test_validate_for_captioning_strict_and_json_alone_on_stdout(tiny_corpus, tmp_path, capsys):
    rows = [json.loads(line) for line in open(tiny_corpus / "corpus" / "manifest.jsonl")]
    audio = tiny_corpus / "corpus" / rows[0]["audio"]
    catalogue = tmp_path / "catalogue.jsonl"  # what a platform has: ids and audio, lyrics for some
    catalogue.write_text(json.dumps({"song_id": "a", "audio": str(audio), "lyrics": "la la"}) + "\n"
                         + json.dumps({"song_id": "b", "audio": str(audio)}) + "\n"
                         + json.dumps({"song_id": "c", "audio": str(tmp_path / "gone.mp3")}) + "\n")
    code, out, _ = run(capsys, "data", "validate", catalogue, "--for", "caption")
    assert code == 0 and "2 of 3 rows usable; 2 of 3 songs usable; 1 errors" in out
    assert "caption is empty" not in out and "split" not in out
    assert run(capsys, "data", "validate", catalogue, "--for", "caption", "--strict")[0] == 1  # the missing file
    code, out, _ = run(capsys, "data", "validate", catalogue)  # for training every row lacks a caption and a split
    assert code == 1 and "caption is empty [empty_caption]" in out
    code, out, err = run(capsys, "data", "validate", catalogue, "--for", "caption", "--json", "-")
    report = json.loads(out)  # stdout is the JSON alone; the text report went to stderr
    assert report["purpose"] == "caption" and report["usable_rows"] == 2 and "rows usable" in err


def test_public_api_is_documented():
    """help(alcap) lists the exports; the main classes say what goes in and out; no docstring
    points users at a file they do not have (the project's SPEC)."""
    import inspect
    import pydoc

    import alcap

    text = pydoc.render_doc(alcap)
    assert all(name in text for name in alcap.__all__ if name != "__version__")
    for name in ("AlcapModel", "Captioner", "MusicExtractor", "read_manifest", "EmbeddingStore", "info_nce", "Library"):
        doc = inspect.getdoc(getattr(alcap, name)) or ""
        assert len(doc) > 120, f"{name} has no docstring saying what goes in and out"
    sources = Path(alcap.__file__).parent.rglob("*.py")
    assert not [p for p in sources if re.search(r"\bSPEC\b(?!IAL)", p.read_text())]
    assert (Path(alcap.__file__).parent / "py.typed").is_file()


def test_long_lyrics_text_is_taken_as_the_text_not_a_file_name():
    # Regression: Path(text).is_file() raised "File name too long" for a whole song's lyrics.
    from alcap.cli.common import given_lyrics

    text = "the night is long and the road is longer\n" * 40
    assert given_lyrics(text) == text
