"""`alcap library add --engine ray`: the Ray Data pipeline makes the local job's library, and resumes it."""

import json
import shutil

import numpy as np
import pytest

from alcap.cli import main
from alcap.library import Library

ray = pytest.importorskip("ray")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def songs(tmp_path_factory):
    """12 one-second demo songs, one with a lyrics sidecar, and one file that is not decodable audio."""
    from alcap.data.demo import make_demo_corpus
    from alcap.data.manifest import read_manifest

    root = tmp_path_factory.mktemp("ray-songs")
    make_demo_corpus(root / "corpus", n_songs=12, seed=4, min_seconds=1.0, max_seconds=1.2, workers=1, progress=False)
    folder = root / "folder"
    folder.mkdir()
    for path in read_manifest(root / "corpus" / "manifest.jsonl").songs().values():
        shutil.copy(path, folder)
    first = sorted(folder.iterdir())[0]
    first.with_suffix(".txt").write_text("lights of the city\n")
    (folder / "broken.wav").write_bytes(b"RIFF" + b"\0" * 60)  # a WAV header and nothing playable
    return folder


def add(capsys, lib, model, source, *extra):
    code = main(["library", "add", str(lib), str(source), "--model", str(model), "--device", "cpu", "--workers", "0",
                 "--quiet", "--json", *extra])
    out = capsys.readouterr().out
    report = json.loads(out[out.index("{"):])
    assert code == (1 if report["failed"] else 0)  # 1: some files failed (listed by `library failures`)
    return code, report


def contents(lib):
    with Library.open(lib) as library:
        songs = {s.id: (s.path, s.caption, s.lyrics, s.duration, s.sha256) for s in library.songs()}
        vectors = {s.id: np.asarray(library.vectors()[s.row], dtype=np.float32) for s in library.songs()}
        failures = sorted((f["path"], f["id"], f["reason"]) for f in library.failures())
        return songs, vectors, failures, library.identity


def test_the_ray_pipeline_makes_the_local_library_and_resumes_it(local_ray, songs, tiny_models, tmp_path, capsys):
    model = tiny_models["music"]
    _, local = add(capsys, tmp_path / "local", model, songs)
    assert local["added"] == 12 and local["failed"] == 1
    _, first = add(capsys, tmp_path / "ray", model, songs, "--engine", "ray", "--limit", "5")
    assert first["added"] + first["failed"] == 5 and first["failed"] == 1  # broken.wav comes first
    _, rest = add(capsys, tmp_path / "ray", model, songs, "--engine", "ray", "--ray-actors", "2", "--ray-actor-cpus",
                  "0.5", "--batch-size", "4")
    assert rest["skipped"] == first["added"]  # committed songs are not captioned again
    assert first["added"] + rest["added"] == 12 and rest["failed"] == 1
    ours, theirs = contents(tmp_path / "ray"), contents(tmp_path / "local")
    assert ours[0] == theirs[0]  # the same songs, paths, captions, lyrics, durations and hashes
    for song_id, vector in theirs[1].items():  # float16 vectors; other batches round a few entries another way
        np.testing.assert_allclose(ours[1][song_id], vector, atol=2e-4)
    assert ours[2] == theirs[2] and "broken.wav" in ours[2][0][0]  # the bad file is a failure, once
    assert ours[3] == theirs[3]  # one identity: either engine may continue the other's library
    _, again = add(capsys, tmp_path / "local", model, songs, "--engine", "ray")
    assert again["added"] == 0 and again["skipped"] == 12 and again["failed"] == 1  # the ray engine resumes a local job


def test_actors_that_would_leave_no_cpu_for_decoding_are_refused(local_ray, songs, tiny_models, tmp_path, capsys):
    assert main(["library", "add", str(tmp_path / "lib"), str(songs), "--model", str(tiny_models["music"]),
                 "--engine", "ray", "--ray-actors", "2", "--quiet"]) == 2  # 2 CPUs, both for the actors
    assert "the Ray cluster has 2 CPUs: 2 captioning actors of 1 CPUs each leave none for decoding" in \
        capsys.readouterr().err


def test_ray_missing_is_one_line_that_says_what_to_install(monkeypatch, songs, tiny_models, tmp_path, capsys):
    import builtins

    real_import = builtins.__import__

    def no_ray(name, *args, **kwargs):
        if name == "ray" or name.startswith("ray."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray)
    assert main(["library", "add", str(tmp_path / "lib"), str(songs), "--model", str(tiny_models["music"]),
                 "--engine", "ray", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "pip install 'alcap[ray]'" in err and len(err.splitlines()) == 1
