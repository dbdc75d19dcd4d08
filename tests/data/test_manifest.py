import json

import pytest

from alcap.data.manifest import ManifestError, read_manifest, write_manifest
from alcap.data.validate import validate_manifest

from helpers import tone, write_audio

ROWS = [
    {"song_id": "1", "audio": "audio/a.wav", "lyrics": "la la", "caption": "a happy song", "split": "train"},
    {"song_id": "1", "audio": "audio/a.wav", "lyrics": "la la", "caption": "joyful tune", "split": "train"},
    {"song_id": "2", "audio": "audio/b.flac", "lyrics": "", "caption": "an instrumental", "split": "test"},
]


@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "audio").mkdir()
    write_audio(tmp_path / "audio" / "a.wav", tone(20.0, 16000), 16000)
    write_audio(tmp_path / "audio" / "b.flac", tone(3.0, 22050), 22050)
    return tmp_path


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_formats_read_the_same(corpus, suffix):
    path = corpus / f"manifest{suffix}"
    write_manifest(path, [{**r, "mood": "x"} for r in ROWS])
    m = read_manifest(path)
    assert [r.song_id for r in m] == ["1", "1", "2"]
    assert m.rows[0].audio == str(corpus / "audio" / "a.wav")  # relative to the manifest's folder
    assert m.rows[2].lyrics == "" and m.rows[2].split == "test" and m.rows[0].extra == {"mood": "x"}
    assert m.songs() == {"1": str(corpus / "audio" / "a.wav"), "2": str(corpus / "audio" / "b.flac")}
    assert m.issues == []


def test_csv_keeps_multiline_lyrics_and_reports_line_numbers(corpus):
    path = corpus / "m.csv"
    path.write_bytes(
        b"song_id,audio,lyrics,caption,split\n"
        b'1,audio/a.wav,"line one\nline two",fine,train\n'
        b"2,audio/b.flac,caf\xe9 latin-1,bad bytes,train\n"
        b"3,audio/b.flac,x,too,many,fields\n"
        b"4,audio/b.flac,,,train\n"
    )
    m = read_manifest(path)
    assert m.rows[0].lyrics == "line one\nline two"
    problems = {(i.line, i.code) for i in m.issues}
    assert problems == {(4, "bad_encoding"), (5, "bad_columns")}
    assert [r.line for r in m.rows] == [2, 6]


def test_jsonl_bad_lines_are_reported_not_fatal(corpus):
    path = corpus / "m.jsonl"
    path.write_bytes(
        (json.dumps(ROWS[0]) + "\n").encode()
        + b'{"song_id": "9", "audio": "x.wav", "caption": "caf\xe9"}\n'
        + b"{not json\n"
        + b"[1, 2]\n"
        + b'{"song_id": "", "audio": "x.wav"}\n'
    )
    m = read_manifest(path)
    assert len(m.rows) == 1
    assert [(i.line, i.code) for i in m.issues] == [(2, "bad_encoding"), (3, "invalid_json"), (4, "invalid_json"),
                                                     (5, "missing_field")]


def test_missing_columns_and_unknown_formats_are_fatal_with_advice(tmp_path):
    (tmp_path / "m.csv").write_text("id,file\n1,a.wav\n")
    with pytest.raises(ManifestError, match="missing required column.*song_id, audio"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ManifestError, match="unknown manifest format"):
        read_manifest(tmp_path / "m.txt")
    with pytest.raises(ManifestError, match="not found"):
        read_manifest(tmp_path / "nope.jsonl")


def test_validation_reports_every_problem_per_row(corpus):
    (corpus / "audio" / "empty.mp3").write_bytes(b"")
    (corpus / "audio" / "corrupt.ogg").write_bytes(b"OggS" + b"\x00" * 500)
    rows = ROWS + [
        {"song_id": "3", "audio": "audio/missing.wav", "lyrics": "x", "caption": "c", "split": "train"},
        {"song_id": "4", "audio": "audio/empty.mp3", "lyrics": "x", "caption": "c", "split": "train"},
        {"song_id": "5", "audio": "audio/corrupt.ogg", "lyrics": "x", "caption": "c", "split": "val"},
        {"song_id": "1", "audio": "audio/a.wav", "lyrics": "la la", "caption": "", "split": "train"},
        {"song_id": "1", "audio": "audio/a.wav", "lyrics": "la la", "caption": "a happy song", "split": "train"},
        {"song_id": "2", "audio": "audio/a.wav", "lyrics": "", "caption": "other file", "split": "dev"},
    ]
    path = corpus / "m.jsonl"
    write_manifest(path, rows)
    report = validate_manifest(read_manifest(path))
    codes = {(i.line, i.code) for i in report.issues}
    assert {(3, "empty_lyrics"), (3, "short_audio"), (4, "audio_missing"), (5, "audio_unreadable"),
            (6, "audio_unreadable"), (7, "empty_caption"), (8, "duplicate_row"), (9, "conflicting_audio"),
            (9, "bad_split")} <= codes
    messages = {i.line: i.message for i in report.issues if i.code.startswith("audio_")}
    assert "missing.wav: file not found" in messages[4] and "empty" in messages[5]
    assert report.n_rows == 9 and report.n_usable == 3 and report.usable_by_split == {"train": 2, "test": 1}
    assert report.ok
    text = report.format_text()
    assert "line 4 song 3: error: audio" in text and "3 of 9 rows usable" in text


def test_nothing_usable_is_not_ok(tmp_path):
    path = tmp_path / "m.jsonl"
    write_manifest(path, [{"song_id": "1", "audio": "gone.wav", "lyrics": "", "caption": "c", "split": "train"}])
    assert not validate_manifest(read_manifest(path)).ok


def test_binary_and_misencoded_fields_are_told_apart(corpus):
    path = corpus / "m.csv"
    path.write_bytes(b"song_id,audio,lyrics,caption,split\n"
                     b"1,audio/a.wav,la\x00la,c,train\n"
                     b"2,audio/a.wav,cora\xe7\xe3o,c,train\n"
                     b"3,audio/a.wav,fine,c,train\n")
    m = read_manifest(path)
    assert [r.song_id for r in m] == ["3"]
    assert [(i.line, i.message) for i in m.issues] == [
        (2, "field 'lyrics' contains a NUL character (binary data, or UTF-16 text: save the file as UTF-8)"),
        (3, "field 'lyrics' is not valid UTF-8 text (save the file as UTF-8)")]
    assert m.conflicting_audio() == {}


def test_exact_duplicates_are_used_once_as_validate_reports(tmp_path):
    rows = [{"song_id": "1", "audio": "a.wav", "lyrics": "la", "caption": "a happy song", "split": "train"},
            {"song_id": "1", "audio": "a.wav", "lyrics": "la", "caption": "a happy song", "split": "train"},
            {"song_id": "1", "audio": "a.wav", "lyrics": "la", "caption": "another caption", "split": "train"},
            {"song_id": "1", "audio": "a.wav", "lyrics": "la", "caption": "a happy song", "split": "val"}]
    write_manifest(tmp_path / "m.jsonl", rows)
    manifest = read_manifest(tmp_path / "m.jsonl")
    assert [r.line for r in manifest.split("train")] == [1, 3] and manifest.duplicate_rows("train") == 1
    assert len(manifest.split("val")) == 1 and manifest.duplicate_rows("val") == 0
    report = validate_manifest(manifest, check_audio=False)
    assert [(i.line, i.code) for i in report.issues if i.code == "duplicate_row"] == [(2, "duplicate_row")]
    assert "training and evaluation use it once" in next(i.message for i in report.issues if i.code == "duplicate_row")
