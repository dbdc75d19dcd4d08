"""Models and weights from where users keep them: the Hub cache offline, a verified encoder
download, one music-encoder copy per run, permissions as the umask says, tag names."""

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
from helpers import tone, write_audio

from alcap.audio.tags import MSD_TOP50_TAGS
from alcap.audio.weights import DownloadError, download_weights
from alcap.cli import main
from alcap.data.manifest import read_manifest
from alcap.inference import SHARED_ENCODERS_DIR, Captioner, load_music_encoder
from alcap.model.captioner import ModelDirError, model_directory
from alcap.utils import current_umask


@pytest.fixture
def http_server(tmp_path):
    """A file server on 127.0.0.1 (a free port) for tmp_path/www, counting the requests it serves."""
    root = tmp_path / "www"
    root.mkdir()
    requests = []

    class Handler(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            requests.append(self.path)

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}", requests
    server.shutdown()
    server.server_close()


def test_encoder_download_is_verified_kept_and_found_by_name(http_server, cnnsa_checkpoint, tmp_path, monkeypatch,
                                                            capsys):
    root, base, requests = http_server
    shutil.copy(cnnsa_checkpoint, root / "best_model.pth")
    (root / "error.html").write_text("<html>rate limited</html>")
    digest = hashlib.sha256(cnnsa_checkpoint.read_bytes()).hexdigest()
    monkeypatch.setenv("ALCAP_CACHE", str(tmp_path / "cache"))
    old_umask = os.umask(0o027)
    try:
        code = main(["encoder", "download", "cnnsa-msd", "--url", f"{base}/best_model.pth", "--sha256", digest,
                     "--json", "--quiet"])
    finally:
        os.umask(old_umask)
    result = json.loads(capsys.readouterr().out)
    kept = tmp_path / "cache" / "encoders" / "cnnsa-msd" / "best_model.pth"
    assert code == 0 and result["fetched"] and result["sha256"] == digest and result["sha256_verified"]
    assert result["path"] == str(kept) and kept.read_bytes() == cnnsa_checkpoint.read_bytes()
    assert oct(kept.stat().st_mode & 0o777) == oct(0o640)  # 0666 minus the umask, not a temp file's 0600
    assert json.loads((kept.parent / "source.json").read_text())["url"] == f"{base}/best_model.pth"
    served = len(requests)

    # kept: not fetched again; `--checkpoint cnnsa-msd` finds it and tags with the MSD names
    assert main(["encoder", "download", "cnnsa-msd", "--url", f"{base}/best_model.pth", "--quiet"]) == 0
    assert "already there" in capsys.readouterr().out and len(requests) == served
    song = tmp_path / "song.wav"
    write_audio(song, tone(3.0, 16000), 16000)
    assert main(["tag", str(song), "--checkpoint", "cnnsa-msd", "--json", "--excerpt-seconds", "2"]) == 0
    assert set(json.loads(capsys.readouterr().out)["tags"]) <= set(MSD_TOP50_TAGS)

    # a wrong hash, a page that is not a checkpoint, no server: refused, nothing left behind
    other = tmp_path / "other"
    with pytest.raises(DownloadError, match="sha256 .* is not the expected 00"):
        download_weights("cnnsa-msd", other, url=f"{base}/best_model.pth", sha256="00" * 32, progress=False)
    with pytest.raises(DownloadError, match="not a CNNSA checkpoint"):
        download_weights("cnnsa-msd", other, url=f"{base}/error.html", progress=False)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download_weights("cnnsa-msd", other, url=f"{base}/missing.pth", progress=False)
    assert list(other.iterdir()) == []
    closed = base.rsplit(":", 1)[0] + ":9"  # the discard port: nothing listens
    assert main(["encoder", "download", "cnnsa-msd", "--dir", str(other), "--url", f"{closed}/x.pth"]) == 2
    err = capsys.readouterr().err
    assert "Without a network: download that file on a machine that has one" in err and "musicnn-msd" in err


def test_checkpoint_by_name_before_download_says_what_to_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("ALCAP_CACHE", str(tmp_path))
    song = tmp_path / "song.wav"
    write_audio(song, tone(1.0, 16000), 16000)
    assert main(["tag", str(song), "--checkpoint", "cnnsa-msd"]) == 2
    assert "run `alcap encoder download cnnsa-msd` first" in capsys.readouterr().err


def _hub_cache(tmp_path, model, repo="acme/alcap-tiny", commit="0123456789abcdef0123456789abcdef01234567"):
    """A Hugging Face cache holding `model` as revision main of `repo`, laid out as `hf download` leaves it."""
    owner, name = repo.split("/")
    entry = tmp_path / "hub" / f"models--{owner}--{name}"
    shutil.copytree(model, entry / "snapshots" / commit)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(commit)
    return tmp_path / "hub", commit


def test_a_hub_repo_id_is_read_from_the_cache_offline(tiny_corpus, tiny_models, tmp_path, monkeypatch, capsys):
    cache, commit = _hub_cache(tmp_path, tiny_models["music"])
    song = next(iter(read_manifest(tiny_corpus / "corpus" / "manifest.jsonl"))).audio
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    run = [sys.executable, "-m", "alcap.cli", "caption", song, "--lyrics", "home and the road", "--jsonl", "-",
           "--quiet", "--device", "cpu"]
    out = subprocess.run([*run, "--model", "acme/alcap-tiny"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    local = Captioner.from_pretrained(tiny_models["music"], device="cpu").caption(song, "home and the road")
    assert json.loads(out.stdout)["caption"] == local

    # in this process (HF_HUB_OFFLINE as huggingface_hub read it): a repo not cached says what to
    # do, a revision pins the snapshot, and a path that exists is never a repo id
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    assert main(["caption", str(song), "--model", "acme/not-cached"]) == 2
    err = capsys.readouterr().err
    assert "HF_HUB_OFFLINE is set: run `hf download acme/not-cached`" in err and "Traceback" not in err
    assert model_directory(f"acme/alcap-tiny@{commit}") == cache / "models--acme--alcap-tiny" / "snapshots" / commit
    with pytest.raises(ModelDirError, match="no revision|not in the Hugging Face cache"):
        model_directory("acme/alcap-tiny@v9")
    monkeypatch.chdir(tiny_models["music"].parents[1])
    assert model_directory("music/best").resolve() == tiny_models["music"]


def test_one_music_encoder_copy_per_run_shared_by_its_models(tiny_models, tmp_path, capsys):
    run = tiny_models["music"].parent
    blobs = list((run / SHARED_ENCODERS_DIR).iterdir())
    extractor, _ = load_music_encoder(run / "best")
    assert [b.name for b in blobs] == [f"{extractor.weights_sha256}.safetensors"]
    copies = [run / d / "music_encoder" / "model.safetensors" for d in ("best", "last")]
    assert {c.stat().st_ino for c in copies} == {blobs[0].stat().st_ino}  # one file on disk, hard-linked
    expected = 0o666 & ~current_umask()
    for path in [*copies, run / "best" / "model.safetensors"]:
        assert path.stat().st_mode & 0o777 == expected, path  # safetensors alone writes 0600

    # a copied model directory is complete on its own
    moved = tmp_path / "moved"
    shutil.copytree(run / "best", moved)
    assert load_music_encoder(moved)[0].weights_sha256 == extractor.weights_sha256

    # `alcap tag --checkpoint MODEL/music_encoder` tags with the encoder the model was trained on, by name
    song = tmp_path / "song.wav"
    write_audio(song, tone(3.0, 16000), 16000)
    assert main(["tag", str(song), "--checkpoint", str(run / "best" / "music_encoder"), "--json", "--top", "50",
                 "--excerpt-seconds", "2"]) == 0
    assert set(json.loads(capsys.readouterr().out)["tags"]) == set(MSD_TOP50_TAGS) == set(extractor.tag_names())
