"""`alcap library`: add, resume after kill -9, identity, failures, search, export and remove."""

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

from alcap.cli import main
from alcap.library import Library, LibraryError, LibraryMismatchError
from alcap.library.store import fuse_ranks, fts_query, where_clause


@pytest.fixture(scope="module")
def songs_dir(tmp_path_factory):
    """30 one-second demo songs (4 formats) with lyrics sidecars for some; (folder, manifest)."""
    from alcap.data.demo import make_demo_corpus
    from alcap.data.manifest import read_manifest

    root = tmp_path_factory.mktemp("library-songs")
    make_demo_corpus(root / "corpus", n_songs=30, seed=3, min_seconds=1.0, max_seconds=1.2, workers=1, progress=False)
    manifest = read_manifest(root / "corpus" / "manifest.jsonl")
    folder = root / "folder"
    folder.mkdir()
    for row in {r.song_id: r for r in manifest}.values():
        shutil.copy(row.audio, folder)
    (folder / "notes.txt").write_text("not audio\n")
    first = audio_files(folder)[0]
    first.with_suffix(".lrc").write_text("[00:01.00]the city lights\n[00:02.00]keep me awake\n")
    return folder, root / "corpus" / "manifest.jsonl"


def audio_files(folder):
    return [f for f in sorted(folder.glob("demo*")) if f.suffix != ".lrc"]


def add(capsys, lib, model, *sources, extra=()):
    code = main(["library", "add", str(lib), *map(str, sources), "--model", str(model), "--device", "cpu",
                 "--workers", "0", "--quiet", "--json", *extra])
    out = capsys.readouterr().out
    return code, json.loads(out[out.index("{"):])


def test_add_skips_what_is_there_and_search_finds_songs(songs_dir, tiny_models, tmp_path, capsys):
    folder, manifest = songs_dir
    lib = tmp_path / "lib"
    code, report = add(capsys, lib, tiny_models["music"], folder)
    assert code == 0 and report["added"] == 30 and report["failed"] == 0  # notes.txt and the .lrc are not audio
    with Library.open(lib) as library:
        songs = library.songs()
        assert len(songs) == 30 and len(library.vectors()) == 30
        by_name = {os.path.basename(s.path): s for s in songs}
        first = sorted(by_name)[0]
        assert by_name[first].lyrics == "the city lights\nkeep me awake"  # LRC time tags dropped
        assert all(len(s.id) == 64 and s.id == s.sha256 for s in songs)  # no manifest: the file's hash
        assert np.allclose(np.linalg.norm(library.vectors().astype(np.float32), axis=1), 1.0, atol=1e-2)
    # Again, and through a copy of one file elsewhere: nothing is captioned twice.
    shutil.copy(folder / first, tmp_path / "moved.wav")
    code, report = add(capsys, lib, tiny_models["music"], folder, tmp_path / "moved.wav")
    assert (report["added"], report["skipped"]) == (0, 31)

    assert main(["library", "search", str(lib), "a song", "--top", "5", "--json"]) == 0
    hits = json.loads(capsys.readouterr().out)
    assert len(hits) == 5 and all({"id", "path", "caption", "score", "lyrics", "metadata"} <= set(h) for h in hits)
    scores = [h["score"] for h in hits]
    assert scores == sorted(scores, reverse=True)
    # several queries in one command: one JSON line each, the same hits as one at a time
    assert main(["library", "search", str(lib), "a song", "city lights", "--top", "5", "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [line["query"] for line in lines] == ["a song", "city lights"]
    assert [h["id"] for h in lines[0]["hits"]] == [h["id"] for h in hits]
    assert lines[0]["hits"][0]["score"] == pytest.approx(hits[0]["score"], abs=1e-6)
    assert main(["library", "search", str(lib), "a song", "--like", hits[0]["id"]]) == 2
    assert "not both" in capsys.readouterr().err
    with Library.open(lib) as library:
        dense = library.search("a slow song", k=30, mode="dense")
        # Dense scores are the cosine of the query's and the captions' sentence vectors.
        query = library.encoder().encode(["a slow song"])[0]
        captions = library.encoder().encode([h.caption for h in dense])
        expected = captions @ query / np.linalg.norm(captions, axis=1) / np.linalg.norm(query)
        assert [h.score for h in dense] == pytest.approx(expected, abs=2e-3)  # float16 vectors
        like = library.search(like=dense[0].id, k=3, mode="dense")
        assert dense[0].id not in [h.id for h in like] and len(like) == 3
        with pytest.raises(LibraryError, match="no song with id 'nope'"):
            library.search(like="nope")


def test_manifest_metadata_filters_export_and_remove(songs_dir, tiny_models, tmp_path, capsys):
    folder, manifest = songs_dir
    lib = tmp_path / "lib"
    code, report = add(capsys, lib, tiny_models["lyrics"], manifest, extra=["--limit", "12"])
    assert code == 0 and report["added"] == 12
    with Library.open(lib) as library:
        songs = {s.id: s for s in library.songs()}
        assert all(s.id.startswith("demo") for s in songs.values())  # manifest ids
        some = next(iter(songs.values()))
        assert {"tempo", "instrument", "theme"} <= set(some.metadata)
        fast = library.search("song", k=12, mode="dense", where=["tempo=fast"])
        assert fast and all(h.metadata["tempo"] == "fast" for h in fast)
        assert len(fast) == sum(s.metadata["tempo"] == "fast" for s in songs.values())
        short = library.search("song", k=12, mode="dense", where=["duration<1.1"])
        assert all(songs[h.id].duration < 1.1 for h in short)
        word = some.metadata["instrument"]
        lexical = library.search(word, k=12, mode="lexical")
        assert lexical and all(word in (h.caption + json.dumps(h.metadata)).lower() for h in lexical)
    out = tmp_path / "songs.csv"
    assert main(["library", "export", str(lib), str(out)]) == 0
    header = out.read_text().splitlines()[0].split(",")
    assert header[:3] == ["song_id", "audio", "caption"] and "tempo" in header
    assert main(["library", "remove", str(lib), some.id]) == 0
    with Library.open(lib) as library:
        assert len(library) == 11 and library.info()["unused_rows"] == 1
        assert some.id not in [h.id for h in library.search(some.caption, k=12, mode="lexical")]


def test_a_changed_file_is_captioned_again_and_failures_are_retried(songs_dir, tiny_models, tmp_path, capsys):
    folder, _ = songs_dir
    work = tmp_path / "songs"
    work.mkdir()
    files = audio_files(folder)[:3]
    for f in files:
        shutil.copy(f, work)
    bad = work / "broken.wav"
    bad.write_bytes(b"RIFF" + os.urandom(200))  # looks like audio, does not decode
    lib = tmp_path / "lib"
    code, report = add(capsys, lib, tiny_models["music"], work)
    assert code == 1 and (report["added"], report["failed"]) == (3, 1)
    assert main(["library", "failures", str(lib), "--json"]) == 0
    failures = json.loads(capsys.readouterr().out)
    assert [f["path"] for f in failures] == [str(bad)] and "not a readable audio file" in failures[0]["reason"]
    # Fixed and changed: the broken file is retried, the changed one replaces its old song.
    shutil.copy(audio_files(folder)[7], bad)
    shutil.copy(audio_files(folder)[5], work / files[1].name)
    code, report = add(capsys, lib, tiny_models["music"], work)
    assert code == 0 and (report["added"], report["skipped"]) == (2, 2)
    with Library.open(lib) as library:
        assert library.failures() == [] and len(library) == 4
        paths = [s.path for s in library.songs()]
        assert sorted(paths) == sorted(str(p) for p in work.iterdir())  # one song per file
    # A failed file that becomes a copy of a song already there is no longer a failure.
    again = work / "again.wav"
    again.write_bytes(b"RIFF" + os.urandom(100))
    assert add(capsys, lib, tiny_models["music"], again)[1]["failed"] == 1
    shutil.copy(files[2], again)
    assert add(capsys, lib, tiny_models["music"], again)[1]["skipped"] == 1
    with Library.open(lib) as library:
        assert library.failures() == [] and len(library) == 4


def test_another_model_is_refused_with_the_differences(songs_dir, tiny_models, tmp_path, capsys):
    folder, _ = songs_dir
    lib = tmp_path / "lib"
    add(capsys, lib, tiny_models["music"], audio_files(folder)[0])
    from alcap.library.build import add_songs

    with pytest.raises(LibraryMismatchError, match="captioning_model.weights_sha256: library has '[0-9a-f]+'"):
        add_songs(lib, tiny_models["lyrics"], [str(folder)], device="cpu", workers=0, progress=False)
    assert main(["library", "add", str(lib), str(folder), "--model", str(tiny_models["lyrics"]), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "was built with other models or settings" in err and "uses_music: library has True, this run has False" in err
    with Library.open(lib) as library:
        assert len(library) == 1  # nothing of the refused run was written


def test_a_whole_track_library_records_it_and_refuses_excerpts(songs_dir, tiny_models, tmp_path, capsys):
    from alcap.inference import Captioner

    folder, _ = songs_dir
    lib, song = tmp_path / "lib", audio_files(folder)[1]
    code, report = add(capsys, lib, tiny_models["music"], song, extra=["--full-track"])
    assert code == 0 and report["added"] == 1
    with Library.open(lib) as library:
        assert library.identity["captioning_model"]["full_track"] == "pool"
        (stored,) = library.songs()
    captioner = Captioner.from_pretrained(tiny_models["music"], device="cpu")
    assert stored.caption == captioner.caption(str(song), stored.lyrics, full_track="pool")
    assert main(["library", "add", str(lib), str(audio_files(folder)[2]), "--model", str(tiny_models["music"]),
                 "--quiet"]) == 2
    assert "captioning_model.full_track: library has 'pool', this run has None" in capsys.readouterr().err


def test_a_second_writer_is_refused_while_readers_search(songs_dir, tiny_models, tmp_path, capsys):
    folder, _ = songs_dir
    lib = tmp_path / "lib"
    add(capsys, lib, tiny_models["lyrics"], *audio_files(folder)[:2])
    with Library.open(lib, write=True):
        with pytest.raises(LibraryError, match="another process is writing to this library"):
            Library.open(lib, write=True)
        with Library.open(lib) as reader:
            assert len(reader.search("song", k=2, mode="lexical")) <= 2 and len(reader) == 2


def test_vectors_of_an_uncommitted_batch_are_dropped_on_reopen(songs_dir, tiny_models, tmp_path, capsys):
    folder, _ = songs_dir
    lib = tmp_path / "lib"
    add(capsys, lib, tiny_models["lyrics"], *audio_files(folder)[:2])
    with open(lib / "vectors.f16", "ab") as f:  # a writer killed after its vectors, before its commit
        f.write(np.ones((3, 384), dtype="<f2").tobytes())
    with Library.open(lib, write=True) as library:
        assert (lib / "vectors.f16").stat().st_size == 2 * 384 * 2 and len(library.vectors()) == 2


def test_kill_9_of_a_two_worker_add_resumes_to_the_uninterrupted_result(songs_dir, tiny_models, tmp_path, capsys):
    folder, _ = songs_dir
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    # Batches of one everywhere: a sentence vector depends on its batch's padding in the last bits.
    add(capsys, whole, tiny_models["music"], folder, extra=["--batch-size", "1"])
    command = [sys.executable, "-m", "alcap", "library", "add", str(killed), str(folder), "--model",
               str(tiny_models["music"]), "--device", "cpu", "--workers", "2", "--batch-size", "1", "--quiet"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline, count = time.monotonic() + 120, 0
    try:
        while time.monotonic() < deadline and process.poll() is None:
            if (killed / "library.sqlite").exists():
                try:
                    with sqlite3.connect(killed / "library.sqlite", timeout=1) as db:
                        count = db.execute("SELECT count(*) FROM songs").fetchone()[0]
                except sqlite3.OperationalError:
                    count = 0  # the schema is not there yet
                if count >= 3:
                    break
            time.sleep(0.02)
        assert process.poll() is None, "the add finished before it could be killed"
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
    assert 3 <= count < 30
    code, report = add(capsys, killed, tiny_models["music"], folder, extra=["--batch-size", "1"])
    assert code == 0 and report["added"] + report["skipped"] == 30 and report["skipped"] >= 3
    with Library.open(whole) as a, Library.open(killed) as b:
        songs_a, songs_b = {s.id: s for s in a.songs()}, {s.id: s for s in b.songs()}
        assert songs_a.keys() == songs_b.keys() and len(songs_b) == 30  # no song twice, none lost
        assert all(songs_a[i].caption == songs_b[i].caption for i in songs_a)
        va, vb = a.vectors(), b.vectors()
        assert len(vb) == 30  # every row has its vector and every vector its row
        for i in songs_a:
            assert np.array_equal(va[songs_a[i].row], vb[songs_b[i].row]), i


def test_search_helpers():
    assert fts_query('a "slow" song, AND (piano)') == '"a" OR "slow" OR "song" OR "and" OR "piano"'
    assert fuse_ranks([[(1, 0.9), (2, 0.8)], [(2, 5.0), (3, 4.0)]]) == [(2, 1 / 62 + 1 / 61), (1, 1 / 61), (3, 1 / 62)]
    clause, params = where_clause(["duration<=200", "genre=rock"])
    assert clause == "WHERE duration <= ? AND json_extract(songs.metadata, '$.\"genre\"') = ?" and params == [200.0, "rock"]
    with pytest.raises(LibraryError, match="expected KEY OP VALUE"):
        where_clause(["rock"])
    with pytest.raises(LibraryError, match="a key is a column name"):
        where_clause(["x') OR 1=1 --=1"])


def test_dense_search_retrieval_equals_alcap_evaluates_on_the_same_captions(songs_dir, tiny_models, tmp_path, capsys):
    from alcap.data.manifest import read_manifest
    from alcap.evaluate import songs_with_references
    from alcap.metrics.retrieval import SentenceEncoder, retrieval_metrics, text_to_music_retrieval

    folder, manifest = songs_dir
    lib = tmp_path / "lib"
    add(capsys, lib, tiny_models["music"], manifest)
    assert main(["library", "evaluate", str(lib), "--manifest", str(manifest), "--split", "train", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    pool = songs_with_references(read_manifest(manifest).split("train"))
    with Library.open(lib) as library:
        captions = {s.id: s.caption for s in library.songs()}
    evaluated, data = text_to_music_retrieval([captions[s["song_id"]] for s in pool], [s["references"] for s in pool],
                                              SentenceEncoder(), seed=0)
    # The same queries, pool, tie rule and caption vectors as `alcap evaluate`; the library keeps
    # the vectors in float16, so the expected numbers are evaluate's similarity with them rounded.
    # (Not evaluate's float32 numbers themselves: a batch's padding moves identical captions'
    # float32 vectors apart in the last bits, which breaks the ties evaluate's rule is meant for.)
    c = data["caption_embeddings"]
    c16 = (c / np.linalg.norm(c, axis=1, keepdims=True)).astype(np.float16).astype(np.float32)
    q = data["query_embeddings"]
    expected = retrieval_metrics((q / np.linalg.norm(q, axis=1, keepdims=True)) @ c16.T)
    assert result["songs"] == len(pool) > 10
    for key in ("recall@1", "recall@5", "recall@10", "mrr", "mean_rank"):
        assert result["dense"][key] == pytest.approx(expected[key], abs=1e-9), key
    for mode in ("lexical", "hybrid"):
        assert 0 <= result[mode]["recall@1"] <= result[mode]["recall@5"] <= result[mode]["recall@10"] <= 1
        assert 1 <= result[mode]["mean_rank"] <= len(pool)


def test_shards_split_the_sources_into_disjoint_parts_that_cover_them(songs_dir, tiny_models, tmp_path, capsys):
    folder, _ = songs_dir
    ids = []
    for k in range(3):
        code, report = add(capsys, tmp_path / f"lib-{k}", tiny_models["lyrics"], folder, extra=["--shard", f"{k}/3"])
        assert code == 0 and report["added"] == 10
        with Library.open(tmp_path / f"lib-{k}") as library:
            ids += [s.path for s in library.songs()]
    assert sorted(ids) == sorted(str(f) for f in audio_files(folder))  # each file in exactly one shard


def library_state(root):
    """id -> (caption, vector bytes): what must survive a merge or equal another build."""
    with Library.open(root) as library:
        matrix = library.vectors()
        return {s.id: (s.caption, s.lyrics, matrix[s.row].tobytes()) for s in library.songs()}


def test_merged_shards_equal_one_library_and_other_models_are_refused(songs_dir, tiny_models, tmp_path, capsys):
    folder, _ = songs_dir
    for k in range(2):
        assert add(capsys, tmp_path / f"shard-{k}", tiny_models["lyrics"], folder, extra=["--shard", f"{k}/2"])[0] == 0
    assert add(capsys, tmp_path / "whole", tiny_models["lyrics"], folder)[0] == 0
    out = tmp_path / "merged"
    code = main(["library", "merge", str(out), str(tmp_path / "shard-0"), str(tmp_path / "shard-1"), "--json", "--quiet"])
    summary = json.loads(capsys.readouterr().out)
    assert code == 0 and summary == {"copied": 30, "duplicates": 0, "already_in_output": 0, "failures": 0, "songs": 30}
    assert library_state(out) == library_state(tmp_path / "whole")  # same captions, vectors bit for bit
    code = main(["library", "merge", str(out), str(tmp_path / "shard-1"), "--json", "--quiet"])
    assert code == 0 and json.loads(capsys.readouterr().out)["already_in_output"] == 15

    add(capsys, tmp_path / "music", tiny_models["music"], audio_files(folder)[0])
    code = main(["library", "merge", str(out), str(tmp_path / "music"), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "was built with other models or settings" in err and "uses_music" in err
    assert len(library_state(out)) == 30


def test_recaption_redoes_every_song_with_the_new_model(songs_dir, tiny_models, tmp_path, capsys):
    folder, _ = songs_dir
    files = audio_files(folder)[:6]
    lib, direct = tmp_path / "lib", tmp_path / "direct"
    add(capsys, lib, tiny_models["lyrics"], *files)
    add(capsys, direct, tiny_models["music"], *files)
    before = library_state(lib)
    with Library.open(lib) as library:
        old_identity = library.identity
    lib.rename(tmp_path / "lib.replaced")  # as if killed while swapping the directories: recaption recovers
    code = main(["library", "recaption", str(lib), "--model", str(tiny_models["music"]), "--device", "cpu",
                 "--workers", "0", "--quiet", "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["added"] == 6
    after = library_state(lib)
    assert after == library_state(direct) and after.keys() == before.keys()
    with Library.open(lib) as library, Library.open(direct) as other:
        assert library.identity == other.identity != old_identity  # built with the music model now
    assert sorted(p.name for p in tmp_path.iterdir()) == ["direct", "lib"]  # nothing left beside it


def test_stored_music_embeddings_replace_decoding_when_they_match_the_model(tiny_corpus, tiny_models, tmp_path, capsys):
    from alcap.data.store import EmbeddingStore
    from alcap.inference import Captioner

    store_dir = tiny_corpus / "store"
    splits = ["val", "test"]
    rows = [json.loads(line) for line in open(tiny_corpus / "corpus" / "manifest.jsonl")]
    wanted = list(dict.fromkeys(r["song_id"] for r in rows if r["split"] in splits))
    # The songs' audio replaced by bytes no decoder reads: only the stored h_m can caption them.
    manifest = tmp_path / "manifest.jsonl"
    with open(manifest, "w") as f:
        for r in rows:
            (tmp_path / f"{r['song_id']}.bin").write_bytes(b"not audio " + r["song_id"].encode())
            f.write(json.dumps({**r, "audio": str(tmp_path / f"{r['song_id']}.bin")}) + "\n")
    code, report = add(capsys, tmp_path / "decoded", tiny_models["music"], manifest, extra=["--split", *splits])
    assert code == 1 and report["failed"] == len(wanted) and report["added"] == 0
    lib = tmp_path / "lib"
    code, report = add(capsys, lib, tiny_models["music"], manifest, extra=["--split", *splits, "--embeddings", str(store_dir)])
    assert code == 0 and report["added"] == len(wanted) > 0
    store = EmbeddingStore.open(store_dir)
    captioner = Captioner.from_pretrained(tiny_models["music"], device="cpu")
    with Library.open(lib) as library:
        songs = library.songs()
    assert [s.id for s in songs] == wanted
    assert [s.duration for s in songs] == [round(store.entry(s.id).source_duration, 3) for s in songs]
    # the captions are those of the stored h_m (as `alcap evaluate` makes them), not of a new decoding
    expected = captioner.caption_embeddings([s.lyrics for s in songs], [store.get(s.id) for s in songs])
    assert [s.caption for s in songs] == expected

    other = tmp_path / "other-store"
    shutil.copytree(store_dir, other)
    meta = json.loads((other / "store.json").read_text())
    meta["extractor"]["weights_sha256"] = "0" * 64
    (other / "store.json").write_text(json.dumps(meta))
    code = main(["library", "add", str(tmp_path / "lib2"), str(manifest), "--model", str(tiny_models["music"]),
                 "--embeddings", str(other), "--quiet", "--workers", "0"])
    err = capsys.readouterr().err
    assert code == 2 and "made with another music encoder or excerpt than the model's" in err
    assert "extractor.weights_sha256: store has '0000" in err


def test_one_song_by_id_and_pages_of_songs(tmp_path):
    from alcap.library.store import Song

    identity = {"sentence_model": {"name": "test", "path": None, "dim": 4}}
    songs = [Song(id=i, path=f"/songs/{i}.wav", caption=f"caption {i}") for i in ("007", "7", "b", "c")]
    vectors = np.eye(4, dtype=np.float32)
    with Library.open(tmp_path / "lib", identity, write=True) as library:
        library.add_batch(songs, vectors)
    with Library.open(tmp_path / "lib") as library:
        assert library.song("007").caption == "caption 007" and library.song("7").path == "/songs/7.wav"  # ids as text
        assert library.song("nope") is None
        assert [s.id for s in library.songs(offset=1, limit=2)] == ["7", "b"]
        assert [s.id for s in library.songs(offset=3)] == ["c"]
