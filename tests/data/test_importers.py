import csv
import json
import os
import pickle

import pytest

from alcap.cli import main
from alcap.data.importers import DataImportError, import_si, import_table, read_si_pickle
from alcap.data.manifest import read_manifest
from si_fixture_types import MusicData


def write_csv(path, rows, header=("music4all_id", "lyrics", "comment")):
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(("", *header))  # pandas' to_csv writes an unnamed index column first
        for i, row in enumerate(rows):
            w.writerow((i, *row))


@pytest.fixture
def si_csv(tmp_path):
    d = tmp_path / "si"
    d.mkdir()
    write_csv(d / "df_full_train.csv", [("a1", "line one\nline two", "About love."), ("a1", "line one\nline two", "Sad."),
                                        ("b2", "la la", "A dance song.")])
    write_csv(d / "df_full_val.csv", [("c3", "hey", "Hope.")])
    write_csv(d / "df_positive_train.csv", [("a1", "line one\nline two", "About love.")])
    write_csv(d / "df_positive_val.csv", [("c3", "hey", "Hope.")])
    write_csv(d / "df_test.csv", [("t9", "test lyrics", "The test interpretation."), ("t9", "test lyrics", "")])
    audio = tmp_path / "music4all" / "audios"
    audio.mkdir(parents=True)
    for song in ("a1", "b2", "c3"):
        (audio / f"{song}.mp3").write_bytes(b"")
    return d, audio


def rows_of(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_si_csv_layout_to_manifest(si_csv, tmp_path):
    d, audio = si_csv
    counts = import_si(tmp_path / "full.jsonl", audio, csv_dir=d, variant="full")
    rows = rows_of(tmp_path / "full.jsonl")
    assert [(r["song_id"], r["split"], r["caption"]) for r in rows] == [
        ("a1", "train", "About love."), ("a1", "train", "Sad."), ("b2", "train", "A dance song."),
        ("c3", "val", "Hope."), ("t9", "test", "The test interpretation.")]
    assert rows[0]["lyrics"] == "line one\nline two"
    assert rows[0]["audio"] == str((audio / "a1.mp3").resolve())
    assert counts["rows"] == 5 and counts["songs"] == 4 and counts["empty_captions_dropped"] == 1
    assert counts["missing_audio"] == 1  # t9.mp3 is not in the audio folder
    # The variant picks other train/val files and shares the test split.
    import_si(tmp_path / "pos.jsonl", audio, csv_dir=d, variant="voting>0")
    pos = rows_of(tmp_path / "pos.jsonl")
    assert [(r["song_id"], r["split"]) for r in pos] == [("a1", "train"), ("c3", "val"), ("t9", "test")]
    assert len(read_manifest(tmp_path / "pos.jsonl").rows) == 3
    with pytest.raises(DataImportError, match="df_not_negative_train.csv"):
        import_si(tmp_path / "x.jsonl", audio, csv_dir=d, variant="not_negative")


def test_si_pickle_with_voted_comments_and_variants(tmp_path):
    records = [MusicData("s1", "words", comments=[("Great love song.", 3), ("Meh.", -2), ("Unvoted.", 0)]),
               MusicData("s2", "more words", comment="About leaving home.")]
    test = [MusicData("t1", "test words", comments=[("Kept although downvoted.", -5)])]
    for name, data in (("train.pkl", records), ("test.pkl", test)):
        for protocol in (0, pickle.HIGHEST_PROTOCOL):
            (tmp_path / f"p{protocol}-{name}").write_bytes(pickle.dumps(data, protocol=protocol))
    for protocol in (0, pickle.HIGHEST_PROTOCOL):
        files = {"train": str(tmp_path / f"p{protocol}-train.pkl"), "test": str(tmp_path / f"p{protocol}-test.pkl")}
        import_si(tmp_path / "full.jsonl", tmp_path, pickles=files, variant="full")
        assert [(r["song_id"], r["caption"], r.get("votes")) for r in rows_of(tmp_path / "full.jsonl")] == [
            ("s1", "Great love song.", 3), ("s1", "Meh.", -2), ("s1", "Unvoted.", 0), ("s2", "About leaving home.", None),
            ("t1", "Kept although downvoted.", -5)]
        import_si(tmp_path / "nn.jsonl", tmp_path, pickles=files, variant="not_negative")
        assert [r["caption"] for r in rows_of(tmp_path / "nn.jsonl")] == [
            "Great love song.", "Unvoted.", "Kept although downvoted."]
        import_si(tmp_path / "pos.jsonl", tmp_path, pickles=files, variant="positive")
        assert [r["caption"] for r in rows_of(tmp_path / "pos.jsonl")] == ["Great love song.", "Kept although downvoted."]


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_code(tmp_path):
    bad = tmp_path / "bad.pkl"
    bad.write_bytes(pickle.dumps([Evil()]))
    with pytest.raises(DataImportError, match=r"bad.pkl: refusing to load (posix|os)\.system"):
        read_si_pickle(bad)
    other = tmp_path / "other.pkl"
    other.write_bytes(pickle.dumps({"not": "a list"}))
    with pytest.raises(DataImportError, match="expected a list of MusicData"):
        read_si_pickle(other)


def test_si_json_records_with_renamed_fields(tmp_path):
    (tmp_path / "train.json").write_text(json.dumps([{"id": "j1", "text": "lyr", "interpretation": "A song."}]))
    (tmp_path / "test.jsonl").write_text(json.dumps({"id": "j2", "text": "lyr2", "interpretation": "Test."}) + "\n")
    import_si(tmp_path / "m.jsonl", tmp_path, jsons={"train": str(tmp_path / "train.json"),
                                                    "test": str(tmp_path / "test.jsonl")},
              id_field="id", lyrics_field="text", caption_field="interpretation")
    assert [(r["song_id"], r["lyrics"], r["caption"], r["split"]) for r in rows_of(tmp_path / "m.jsonl")] == [
        ("j1", "lyr", "A song.", "train"), ("j2", "lyr2", "Test.", "test")]
    with pytest.raises(DataImportError, match=r"train.json record 1: no 'music4all_id'"):
        import_si(tmp_path / "m.jsonl", tmp_path, jsons={"train": str(tmp_path / "train.json")})


def test_table_import_splits_by_song_with_a_seed(tmp_path):
    rows = [(f"song{i}", f"lyrics {i}", f"review {i}.{j}", f"clips/song{i}.wav") for i in range(40) for j in range(2)]
    write_csv(tmp_path / "ncm.csv", rows, header=("song_id", "lyrics", "review", "audio"))
    counts = import_table(tmp_path / "ncm.csv", tmp_path / "a.jsonl", seed=7)
    import_table(tmp_path / "ncm.csv", tmp_path / "b.jsonl", seed=7)
    a = rows_of(tmp_path / "a.jsonl")
    assert a == rows_of(tmp_path / "b.jsonl")
    split_of = {}
    for r in a:
        assert split_of.setdefault(r["song_id"], r["split"]) == r["split"]  # no song in two splits
    assert sorted(split_of.values()).count("train") == 28 and list(split_of.values()).count("test") == 6
    assert counts["rows"] == 80 and a[0]["audio"] == str((tmp_path / "clips" / f"{a[0]['song_id']}.wav").resolve())
    import_table(tmp_path / "ncm.csv", tmp_path / "c.jsonl", seed=8)
    assert {r["song_id"]: r["split"] for r in rows_of(tmp_path / "c.jsonl")} != split_of
    with pytest.raises(DataImportError, match=r"ncm.csv:2: no field 'comment'"):
        import_table(tmp_path / "ncm.csv", tmp_path / "d.jsonl", caption_field="comment")
    with pytest.raises(DataImportError, match="sum"):
        import_table(tmp_path / "ncm.csv", tmp_path / "d.jsonl", ratios=(0.5, 0.5, 0.5))


def test_import_commands(si_csv, tmp_path, capsys):
    d, audio = si_csv
    assert main(["data", "import-si", "--csv-dir", str(d), "--audio-dir", str(audio), "--variant", "positive",
                 "--out", str(tmp_path / "si.jsonl")]) == 0
    assert "3 rows" in capsys.readouterr().out and (tmp_path / "si.jsonl").exists()
    write_csv(tmp_path / "mine.csv", [("x", "l", "r", "")], header=("song_id", "lyrics", "review", "audio"))
    assert main(["data", "import-ncm", str(tmp_path / "mine.csv"), "--audio-dir", str(audio),
                 "--ratios", "1", "0", "0", "--out", str(tmp_path / "ncm.jsonl")]) == 0
    assert rows_of(tmp_path / "ncm.jsonl")[0]["audio"] == str((audio / "x.mp3").resolve())
    assert main(["data", "import-si", "--csv-dir", str(tmp_path / "nope"), "--audio-dir", str(audio),
                 "--out", str(tmp_path / "z.jsonl")]) == 2
    assert "missing" in capsys.readouterr().err
