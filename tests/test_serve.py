"""`alcap serve`: every endpoint and error, micro-batching, and the page in a real browser."""

import io
import os
import shutil
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

from alcap.inference import Captioner
from alcap.library import Library
from alcap.serve.app import ServeSettings, create_app

ARTIFACTS = Path(os.environ.get("ALCAP_TEST_ARTIFACTS", Path(__file__).resolve().parents[1] / "test-artifacts"))


@pytest.fixture(scope="module")
def served(tiny_corpus, tiny_models, tmp_path_factory):
    """A library of the tiny corpus's songs captioned by the tiny music model: (library, model, songs).
    With ALCAP_SERVE_DEMO=runs/demo (after `make demo`), the demo's library and ALCAP model instead:
    how the README's screenshot is made (`ALCAP_SERVE_DEMO=runs/demo pytest tests/test_serve.py -k browser`)."""
    import yaml

    demo = os.environ.get("ALCAP_SERVE_DEMO")
    if demo:
        lib = Path(demo).resolve() / "library"
        with Library.open(lib) as library:
            songs = [Path(s.path) for s in library.songs()[:12]]
        return lib, Path(demo).resolve() / "alcap" / "seed-2020" / "best", songs

    from alcap.library.build import add_songs

    root = tmp_path_factory.mktemp("serve")
    model = root / "model"  # the tiny model, made to say at least a few words (one epoch alone says nothing)
    shutil.copytree(tiny_models["music"], model)
    config = yaml.safe_load((model / "run_config.yaml").read_text())
    config["generation"].update(min_new_tokens=6, max_new_tokens=10, no_repeat_ngram_size=2)
    (model / "run_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    lib = root / "lib"
    add_songs(lib, model, [str(tiny_corpus / "corpus" / "manifest.jsonl")], device="cpu", workers=0, progress=False)
    songs = sorted(p for p in (tiny_corpus / "corpus" / "audio").iterdir() if p.suffix in (".wav", ".mp3", ".flac"))
    return lib, model, songs  # (other tests leave lyrics sidecars beside the shared corpus's audio)


def client_for(lib, model, **options) -> TestClient:
    return TestClient(create_app(ServeSettings(library=lib, model=str(model), device="cpu", **options),
                                 load_in_background=False))


def test_reading_endpoints(served):
    lib, model, _ = served
    with Library.open(lib) as library:
        first = library.songs()[0]
        total = len(library)
    with client_for(lib, model) as client:
        health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["songs"] == total and health["writable"] is False

        page = client.get("/api/songs", params={"offset": 2, "limit": 3}).json()
        assert page["total"] == total and [s["id"] for s in page["songs"]] == [s.id for s in Library.open(lib).songs()[2:5]]
        song = client.get(f"/api/songs/{first.id}").json()
        assert song["caption"] == first.caption and song["lyrics"] == first.lyrics
        assert song["audio"] == f"/api/songs/{first.id}/audio"

        found = client.get("/api/search", params={"q": first.caption, "k": 3, "mode": "dense"}).json()["results"]
        assert len(found) == 3 and found[0]["caption"] == first.caption and found[0]["score"] == pytest.approx(1, abs=1e-3)
        with Library.open(lib) as library:  # the API ranks as the library does
            assert [r["id"] for r in client.get("/api/search", params={"q": "piano night", "k": 5}).json()["results"]] \
                == [h.id for h in library.search("piano night", k=5)]
        similar = client.get(f"/api/songs/{first.id}/similar", params={"k": 4}).json()["results"]
        assert len(similar) == 4 and first.id not in [s["id"] for s in similar]

        whole = client.get(f"/api/songs/{first.id}/audio")
        assert whole.status_code == 200 and whole.content == Path(first.path).read_bytes()
        part = client.get(f"/api/songs/{first.id}/audio", headers={"Range": "bytes=10-109"})
        assert part.status_code == 206 and part.content == Path(first.path).read_bytes()[10:110]
        assert part.headers["content-range"].startswith("bytes 10-109/")

        for path, params, status, message in [
                ("/api/songs/nope", {}, 404, "no song with id 'nope'"),
                ("/api/songs/nope/audio", {}, 404, "no song with id 'nope'"),
                ("/api/songs/nope/similar", {}, 404, "no song"),
                ("/api/search", {"q": "x", "mode": "fuzzy"}, 400, "mode"),
                ("/api/search", {"q": "x", "k": 0}, 400, "k"),
                ("/api/search", {}, 400, "q"),
                ("/api/songs", {"limit": 1000}, 400, "limit"),
                ("/api/songs/../../etc/passwd/audio", {}, 404, "")]:
            response = client.get(path, params=params)
            assert response.status_code == status, (path, response.text)
            assert message in response.json()["error"] and "Traceback" not in response.text
        assert client.get("/docs").status_code == 200 and "/api/caption" in client.get("/openapi.json").json()["paths"]


def test_captioning_and_its_errors(served, tmp_path):
    lib, model, songs = served
    song = songs[0]
    expected = Captioner.from_pretrained(model, device="cpu").caption(str(song), "the road home")
    with client_for(lib, model, max_upload_mb=0.05) as client:
        response = client.post("/api/caption", files={"file": (song.name, song.read_bytes())},
                               data={"lyrics": "the road home"})
        body = response.json()
        assert response.status_code == 200 and body["caption"] == expected
        assert body["duration"] == pytest.approx(sf.info(str(song)).duration, abs=0.05) and body["seconds"] > 0

        short = io.BytesIO()
        sf.write(short, np.zeros(1600, dtype=np.float32), 16000, format="WAV")
        cases = [((song.name, b"not audio at all"), 415, "not a readable audio file"),
                 (("short.wav", short.getvalue()), 422, "only 0.100 s of audio"),
                 (("empty.wav", b""), 422, "empty"),
                 (("big.wav", b"RIFF" + bytes(80_000)), 413, "upload too large")]
        for upload, status, message in cases:
            response = client.post("/api/caption", files={"file": upload})
            assert response.status_code == status and message in response.json()["error"], response.text
        assert client.post("/api/caption").status_code == 400  # no file
        # adding needs writing switched on
        response = client.post("/api/caption?add=true", files={"file": (song.name, song.read_bytes())})
        assert response.status_code == 403 and "--write-token" in response.json()["error"]


def test_write_token_guards_adding_and_removing(served, tmp_path):
    lib, model, songs = served
    own = tmp_path / "lib"
    shutil.copytree(lib, own)
    upload = songs[1]
    with client_for(own, model, write_token="s3cret") as client:
        assert client.get("/healthz").json()["writable"] is True
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "s3cret"}):
            response = client.post("/api/caption?add=true", files={"file": ("mine.flac", upload.read_bytes())},
                                   headers=headers)
            assert response.status_code == 401 and "write token" in response.json()["error"]
        token = {"Authorization": "Bearer s3cret"}
        added = client.post("/api/caption?add=true", files={"file": ("mine.flac", upload.read_bytes())},
                            data={"lyrics": "my own words"}, headers=token).json()
        song = client.get(f"/api/songs/{added['id']}").json()
        assert song["caption"] == added["caption"] and song["lyrics"] == "my own words"
        assert client.get(f"/api/songs/{added['id']}/audio").content == upload.read_bytes()  # kept in uploads/
        assert (own / "uploads").is_dir()
        hits = client.get("/api/search", params={"q": added["caption"], "mode": "dense", "k": 50}).json()["results"]
        best = {h["id"] for h in hits if h["score"] >= hits[0]["score"] - 1e-6}  # the tiny model repeats captions
        assert added["id"] in best  # searchable at once
        assert client.delete(f"/api/songs/{added['id']}").status_code == 401
        assert client.delete(f"/api/songs/{added['id']}", headers=token).json() == {"removed": [added["id"]]}
        assert client.get(f"/api/songs/{added['id']}").status_code == 404
        assert client.delete("/api/songs/nope", headers=token).status_code == 404


def test_requests_wait_for_the_model_and_a_full_queue_says_retry(served, monkeypatch):
    from alcap.serve import app as serve_app

    lib, model, songs = served
    gate = threading.Event()
    original = serve_app.Service.load

    def slow_load(self):
        gate.wait(60)
        original(self)

    monkeypatch.setattr(serve_app.Service, "load", slow_load)
    app = create_app(ServeSettings(library=lib, model=str(model), device="cpu", max_batch=1, queue_size=1))
    with TestClient(app) as client:
        assert client.get("/healthz").json()["status"] == "loading"
        response = client.post("/api/caption", files={"file": (songs[0].name, songs[0].read_bytes())})
        assert response.status_code == 503 and response.headers["retry-after"] and "loading" in response.json()["error"]
        assert client.get("/api/search", params={"q": "piano", "mode": "lexical"}).status_code == 200  # no model needed
        gate.set()
        service = app.state.service
        assert service.ready.wait(120) and client.get("/healthz").json()["status"] == "ok"

        release = threading.Event()
        busy = threading.Event()
        generate = service.captioner.caption_embeddings

        def held(*args, **kwargs):
            busy.set()
            release.wait(60)
            return generate(*args, **kwargs)

        service.captioner.caption_embeddings = held
        upload = {"file": (songs[0].name, songs[0].read_bytes())}
        with ThreadPoolExecutor(2) as pool:
            first = pool.submit(client.post, "/api/caption", files=upload)
            assert busy.wait(60)  # the worker holds the first song
            second = pool.submit(client.post, "/api/caption", files=upload)
            deadline = time.monotonic() + 30
            while service.batcher.waiting < 1 and time.monotonic() < deadline:
                time.sleep(0.01)
            refused = client.post("/api/caption", files=upload)
            assert refused.status_code == 503 and refused.headers["retry-after"] == "2"
            assert "too many songs are waiting" in refused.json()["error"]
            release.set()
            assert first.result().status_code == 200 and second.result().status_code == 200


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live_server(served):
    """A real uvicorn server on 127.0.0.1 (a free port) in this process, stopped after the test."""
    import uvicorn

    servers = []

    def start(lib=None, **options):
        lib = lib or served[0]
        app = create_app(ServeSettings(library=lib, model=str(served[1]), device="cpu", **options),
                         load_in_background=False)
        port = free_port()
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 120
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        assert server.started, "the server did not start"
        servers.append((server, thread))
        return f"http://127.0.0.1:{port}", app

    yield start
    for server, thread in servers:
        server.should_exit = True
        thread.join(timeout=30)


def test_concurrent_uploads_are_captioned_in_fewer_batches(served, live_server):
    import httpx

    lib, model, songs = served
    base, app = live_server(max_batch=8, max_wait_ms=300)
    uploads = [songs[i % len(songs)] for i in range(16)]
    captioner = Captioner.from_pretrained(model, device="cpu")
    expected = [captioner.caption(str(s), "") for s in uploads]

    def send(song):
        with httpx.Client(timeout=120) as http:
            return http.post(f"{base}/api/caption", files={"file": (song.name, song.read_bytes())})

    with ThreadPoolExecutor(16) as pool:
        responses = list(pool.map(send, uploads))
    assert [r.status_code for r in responses] == [200] * 16
    assert [r.json()["caption"] for r in responses] == expected  # batched, each song still gets its own caption
    stats = httpx.get(f"{base}/healthz").json()["captioning"]
    assert stats["songs"] == 16 and stats["batches"] < 16 and stats["largest_batch"] > 1


def chromium_driver():
    """Headless Debian chromium through its chromedriver, or the reason there is none."""
    binary, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (binary and driver):
        reason = ("Debian's chromium and chromium-driver are not installed (make's set-up installs them: "
                  "scripts/install-chromium.sh)")
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(reason)
        pytest.skip(reason)
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--mute-audio",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=1280,900"):
        options.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=options)


def test_the_page_in_a_real_browser(served, live_server, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    lib, model, songs = served
    own = tmp_path / "lib"
    shutil.copytree(lib, own)
    base, _ = live_server(lib=own, write_token="s3cret")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    browser = chromium_driver()
    try:
        wait = WebDriverWait(browser, 60)
        browser.get(base + "/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "health"), "model ready"))

        # upload a song with its lyrics, see the caption
        song = next(s for s in songs if s.suffix == ".wav")
        expected = Captioner.from_pretrained(model, device="cpu").caption(str(song), "Hold on, the night is almost over")
        browser.find_element(By.ID, "file").send_keys(str(song))
        browser.find_element(By.ID, "lyrics").send_keys("Hold on, the night is almost over")
        browser.find_element(By.ID, "caption-button").click()
        wait.until(EC.visibility_of_element_located((By.ID, "caption-result")))
        assert browser.find_element(By.ID, "caption-result").text == expected

        # search with the keyboard, see results with players, play one
        box = browser.find_element(By.ID, "query")
        box.send_keys("piano night\n")
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .song")) > 0)
        cards = browser.find_elements(By.CSS_SELECTOR, "#results .song")
        assert cards[0].find_element(By.CSS_SELECTOR, ".caption").text and cards[0].find_element(By.TAG_NAME, "audio")
        browser.save_screenshot(str(ARTIFACTS / "serve-desktop.png"))
        state = browser.execute_async_script("""
            const done = arguments[arguments.length - 1];
            const audio = document.querySelector('#results audio');
            audio.preload = 'auto'; audio.muted = true;
            audio.play().catch(() => {});
            const start = Date.now();
            (function check() {
              if (audio.currentTime > 0.05 || audio.readyState >= 4) done({t: audio.currentTime, ready: audio.readyState});
              else if (Date.now() - start > 20000) done({t: audio.currentTime, ready: audio.readyState, error: String(audio.error && audio.error.code)});
              else setTimeout(check, 100);
            })();""")
        assert state["t"] > 0.05 or state["ready"] >= 4, state  # HAVE_ENOUGH_DATA or playing

        # the song page: caption and similar songs; the library page with paging
        cards[0].find_element(By.CSS_SELECTOR, "h3 a").click()
        wait.until(lambda b: "Similar songs" in b.find_element(By.ID, "view-song").text)
        assert browser.find_elements(By.CSS_SELECTOR, "#view-song .song")
        browser.get(base + "/#/library")
        wait.until(lambda b: "Library:" in b.find_element(By.ID, "view-library").text)
        assert len(browser.find_elements(By.CSS_SELECTOR, "#view-library .song")) > 0

        # phone width: one column, nothing wider than the screen
        browser.set_window_size(390, 844)
        browser.get(base + "/")
        wait.until(EC.text_to_be_present_in_element((By.ID, "health"), "model ready"))
        browser.find_element(By.ID, "query").send_keys("piano night\n")
        wait.until(lambda b: len(b.find_elements(By.CSS_SELECTOR, "#results .song")) > 0)
        overflow = browser.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, f"the page is {overflow} px wider than a phone screen"
        browser.save_screenshot(str(ARTIFACTS / "serve-phone.png"))
    finally:
        browser.quit()
    assert (ARTIFACTS / "serve-desktop.png").stat().st_size > 10_000 and (ARTIFACTS / "serve-phone.png").is_file()
