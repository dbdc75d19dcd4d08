"""`alcap serve`: the song library and the captioning model over HTTP, and the web page.

FastAPI on uvicorn. The model loads in the background (requests that need it answer 503 until
it is there); caption requests are decoded in the thread pool, then micro-batched on one model
worker (batcher.py); searches and library reads run in the thread pool beside it, each thread
with its own read-only view of the library (SQLite in WAL mode: readers never wait for a
writer). Writes (adding an uploaded song, removing one) need the write token.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import mimetypes
import threading
import time
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI, File, Form, Header, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from .batcher import MicroBatcher, QueueFull, caption_process, query_process

logger = logging.getLogger("alcap.serve")
UPLOADS_DIR = "uploads"  # inside the library: uploaded songs added with ?add=true
AUDIO_TYPES = {".mp3": "audio/mpeg", ".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg",
               ".oga": "audio/ogg", ".aiff": "audio/aiff", ".aif": "audio/aiff"}
WRITE_TOKEN_ENV = "ALCAP_WRITE_TOKEN"


@dataclass
class ServeSettings:
    library: Path
    model: str
    device: str = "auto"
    write_token: str | None = None
    max_upload_mb: float = 50.0
    max_batch: int = 8
    max_wait_ms: float = 20.0
    queue_size: int = 64
    quantize: str = "none"  # the library's own setting (its identity says which)


class Service:
    """What the endpoints share: the model (loaded in the background), the caption batcher,
    the sentence model, and one read-only library connection per thread."""

    def __init__(self, settings: ServeSettings):
        self.settings = settings
        self.ready = threading.Event()
        self.load_error: str | None = None
        self.captioner = self.batcher = self.queries = self.encoder = None
        self.add_refused: str | None = None  # why songs cannot be added (another model than the library's)
        self.started = time.time()
        self._local = threading.local()
        self._write_lock = threading.Lock()
        from ..library import Library

        with Library.open(settings.library) as library:  # fail at start, not at the first request
            self.sentence_model = library.identity["sentence_model"].get("path")

    def load(self) -> None:
        try:
            from ..inference import Captioner
            from ..library.build import library_identity
            from ..library.store import LibraryMismatchError, _refuse_other_identity
            from ..metrics.retrieval import SentenceEncoder

            captioner = Captioner.from_pretrained(self.settings.model, device=self.settings.device,
                                                  quantize=self.settings.quantize)
            self.encoder = SentenceEncoder(self.sentence_model, device=str(captioner.device))
            dim = int(self.encoder.model.get_embedding_dimension())
            self.identity = library_identity(captioner, self.settings.model, self.sentence_model, dim)
            try:
                _refuse_other_identity(self.settings.library, self.library().identity, self.identity)
            except LibraryMismatchError as exc:
                self.add_refused = str(exc)
            captioner.generation = captioner.generation.with_overrides(
                batch_size=max(self.settings.max_batch, captioner.generation.batch_size), num_return_sequences=1)
            self.batcher = MicroBatcher(caption_process(captioner), self.settings.max_batch, self.settings.max_wait_ms,
                                        self.settings.queue_size, name="alcap-caption-worker")
            # Searches get their own worker: they never wait behind captioning.
            self.queries = MicroBatcher(query_process(self.encoder), 32, 2.0, 1024, name="alcap-query-worker")
            self.captioner = captioner
        except Exception as exc:  # noqa: BLE001 - reported by /healthz and every request that needs the model
            logger.error("the model could not be loaded: %s", exc)
            self.load_error = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        finally:
            self.ready.set()

    def library(self):
        """This thread's read-only view of the library."""
        from ..library import Library

        library = getattr(self._local, "library", None)
        if library is None:
            library = Library.open(self.settings.library)
            self._local.library = library
        if self.encoder is not None:
            library._encoder = self.encoder
        return library

    def require_model(self) -> None:
        if not self.ready.is_set():
            raise HTTPException(503, "the model is still loading; try again in a few seconds",
                                headers={"Retry-After": "5"})
        if self.captioner is None:
            raise HTTPException(503, f"the model could not be loaded: {self.load_error}")

    def require_writer(self, authorization: str | None) -> None:
        token = self.settings.write_token
        if not token:
            raise HTTPException(403, "writing is off: start `alcap serve` with --write-token (or "
                                     f"{WRITE_TOKEN_ENV}) to add or remove songs")
        given = (authorization or "").removeprefix("Bearer ").strip()
        if not authorization or not authorization.startswith("Bearer ") or not hmac.compare_digest(given, token):
            raise HTTPException(401, "this needs the write token: send `Authorization: Bearer TOKEN`",
                                headers={"WWW-Authenticate": "Bearer"})


def create_app(settings: ServeSettings, load_in_background: bool = True) -> FastAPI:
    """The app for `settings`; the model loads on a thread when the app starts."""
    service = Service(settings)

    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        loader = threading.Thread(target=service.load, name="alcap-model-loader", daemon=True)
        loader.start()
        if not load_in_background:
            await run_in_threadpool(loader.join)
        yield
        for batcher in (service.batcher, service.queries):
            if batcher is not None:
                await run_in_threadpool(batcher.close)

    app = FastAPI(title="alcap", version=_version(), lifespan=lifespan,
                  description="Caption songs from their audio and lyrics, and search a captioned song library by "
                              "description. Errors are JSON: {\"error\": \"what went wrong\"}.")
    app.state.service = service
    limit = int(settings.max_upload_mb * 1024 * 1024)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError):
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'][1:]) or e['loc'][0]}: {e['msg']}"
                             for e in exc.errors())
        return JSONResponse({"error": f"bad request: {problems}"}, status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception):
        logger.exception("unexpected error on %s", request.url.path)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server log has the details"},
                            status_code=500)

    @app.middleware("http")
    async def refuse_large_uploads(request: Request, call_next):
        length = request.headers.get("content-length")
        if request.method == "POST" and length and length.isdigit() and int(length) > limit + 64 * 1024:
            return JSONResponse({"error": f"upload too large: {int(length) / 2**20:.1f} MB, the limit is "
                                          f"{settings.max_upload_mb:g} MB (--max-upload-mb)"}, status_code=413)
        return await call_next(request)

    @app.get("/healthz", tags=["service"], summary="whether the model and the library are loaded")
    def healthz():
        library = service.library()
        status = "ok" if service.captioner is not None else ("loading" if not service.ready.is_set() else "error")
        body = {"status": status, "model": settings.model, "model_loaded": service.captioner is not None,
                "library": str(settings.library), "songs": len(library), "writable": bool(settings.write_token),
                "uptime_seconds": round(time.time() - service.started, 1)}
        if service.load_error:
            body["error"] = service.load_error
        if service.add_refused:
            body["add_refused"] = service.add_refused
        if service.batcher is not None:
            body["captioning"] = {**service.batcher.stats.to_dict(), "waiting": service.batcher.waiting,
                                  "max_batch": settings.max_batch, "max_wait_ms": settings.max_wait_ms}
            queries = service.queries.stats
            body["search_encoding"] = {"batches": queries.batches, "queries": queries.items,
                                       "largest_batch": queries.largest_batch}
        return JSONResponse(body, status_code=200 if status != "error" else 503)

    @app.post("/api/caption", tags=["captioning"], summary="caption an uploaded song")
    async def caption(file: UploadFile = File(..., description="the audio file: WAV, FLAC, OGG or MP3"),
                      lyrics: str = Form("", description="the song's lyrics; empty for an instrumental"),
                      add: bool = Query(False, description="also add the song to the library (needs the write token)"),
                      authorization: str | None = Header(None)):
        """The song's caption: `{caption, duration, model, seconds}` (and `id` when added)."""
        started = time.perf_counter()
        if add:
            service.require_writer(authorization)
        service.require_model()
        if add and service.add_refused:
            raise HTTPException(409, f"songs cannot be added with this model: {service.add_refused}")
        data = await file.read(limit + 1)
        if len(data) > limit:
            raise HTTPException(413, f"upload too large: the limit is {settings.max_upload_mb:g} MB (--max-upload-mb)")
        if not data:
            raise HTTPException(422, "the uploaded file is empty")
        captioner = service.captioner
        from ..audio.decode import AudioError, load_audio

        rate = captioner.extractor.sample_rate if captioner.extractor is not None else 16000
        try:
            clip = await run_in_threadpool(load_audio, data, rate, captioner.excerpt)
        except AudioError as exc:
            raise HTTPException(415 if "not a readable audio file" in exc.reason else 422,
                                f"{file.filename or 'the upload'}: {exc.reason}") from None
        try:
            future = service.batcher.submit((clip.samples if captioner.uses_music else None, lyrics))
        except QueueFull:
            raise HTTPException(503, "too many songs are waiting to be captioned; try again shortly",
                                headers={"Retry-After": "2"}) from None
        try:
            text = await asyncio.wrap_future(future)
        except ValueError as exc:
            raise HTTPException(422, f"{file.filename or 'the upload'}: {exc}") from None
        body = {"caption": text, "duration": round(clip.source_duration, 3), "model": settings.model,
                "seconds": round(time.perf_counter() - started, 3)}
        if add:
            body["id"] = await run_in_threadpool(_add_upload, service, data, file.filename or "", lyrics, text,
                                                 clip.source_duration)
        return body

    @app.get("/api/search", tags=["library"], summary="songs that match a description")
    async def search(q: str = Query(..., min_length=1, max_length=500, description="what the songs should be like"),
                     k: int = Query(10, ge=1, le=100), mode: str = Query("hybrid", pattern="^(hybrid|dense|lexical)$")):
        """The k best songs: `{query, mode, results: [{id, score, caption, lyrics, metadata, name, audio}]}`."""
        vector = None
        if mode != "lexical":
            service.require_model()
            try:
                vector = await asyncio.wrap_future(service.queries.submit(q))
            except QueueFull:
                raise HTTPException(503, "too many searches are waiting; try again shortly",
                                    headers={"Retry-After": "1"}) from None
        hits = await run_in_threadpool(lambda: service.library().search(q, k=k, mode=mode, vector=vector))
        return {"query": q, "mode": mode, "results": [_hit(h) for h in hits]}

    @app.get("/api/songs", tags=["library"], summary="the library's songs, a page at a time")
    def songs(offset: int = Query(0, ge=0), limit: int = Query(20, ge=1, le=100)):
        library = service.library()
        return {"total": len(library), "offset": offset, "limit": limit,
                "songs": [_song(s) for s in library.songs(offset=offset, limit=limit)]}

    @app.get("/api/songs/{song_id}", tags=["library"], summary="one song: metadata, lyrics, caption")
    def song(song_id: str):
        found = service.library().song(song_id)
        if found is None:
            raise HTTPException(404, f"no song with id {song_id!r} in the library")
        return {**_song(found), "lyrics": found.lyrics}

    @app.get("/api/songs/{song_id}/similar", tags=["library"], summary="songs whose captions are like this one's")
    def similar(song_id: str, k: int = Query(10, ge=1, le=100)):
        library = service.library()
        if library.song(song_id) is None:
            raise HTTPException(404, f"no song with id {song_id!r} in the library")
        return {"id": song_id, "results": [_hit(h) for h in library.search(like=song_id, k=k)]}

    @app.get("/api/songs/{song_id}/audio", tags=["library"], summary="the song's audio file (range requests work)")
    def audio(song_id: str):
        """Only files of songs in the library, by id: never a path from the request."""
        found = service.library().song(song_id)
        if found is None:
            raise HTTPException(404, f"no song with id {song_id!r} in the library")
        path = Path(found.path)
        if not path.is_file():
            raise HTTPException(404, f"the audio file of {song_id!r} is no longer at {path.name}")
        kind = AUDIO_TYPES.get(path.suffix.lower()) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
        return FileResponse(path, media_type=kind, filename=path.name, content_disposition_type="inline")

    @app.delete("/api/songs/{song_id}", tags=["library"], summary="remove a song (needs the write token)")
    def remove(song_id: str, authorization: str | None = Header(None)):
        service.require_writer(authorization)
        from ..library import Library

        with service._write_lock, Library.open(settings.library, write=True) as library:
            removed = library.remove([song_id])
        if not removed:
            raise HTTPException(404, f"no song with id {song_id!r} in the library")
        return {"removed": removed}

    static = files("alcap.serve").joinpath("static")
    app.mount("/static", StaticFiles(directory=str(static)), name="static")

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(str(static.joinpath("index.html")), media_type="text/html")

    return app


def _song(song) -> dict:
    return {"id": song.id, "caption": song.caption, "duration": song.duration, "metadata": song.metadata,
            "added": song.added, "name": Path(song.path).name, "audio": f"/api/songs/{song.id}/audio"}


def _hit(hit) -> dict:
    return {"id": hit.id, "score": round(float(hit.score), 6), "caption": hit.caption, "lyrics": hit.lyrics,
            "metadata": hit.metadata, "name": Path(hit.path).name, "audio": f"/api/songs/{hit.id}/audio"}


def _add_upload(service: Service, data: bytes, filename: str, lyrics: str, caption: str, duration: float) -> str:
    """Keep the upload in the library's uploads/ (named by its sha256) and add it as a song."""
    from ..library import Library
    from ..library.store import Song

    sha = hashlib.sha256(data).hexdigest()
    suffix = Path(filename).suffix.lower()
    uploads = service.settings.library / UPLOADS_DIR
    uploads.mkdir(exist_ok=True)
    path = uploads / f"{sha}{suffix if suffix in AUDIO_TYPES else '.audio'}"
    if not path.exists():
        partial = path.with_name(path.name + ".part")
        partial.write_bytes(data)
        partial.replace(path)
    vector = service.encoder.encode([caption])
    song = Song(id=sha, path=str(path.resolve()), caption=caption, lyrics=lyrics, sha256=sha,
                duration=round(float(duration), 3), metadata={"uploaded": filename} if filename else {})
    with service._write_lock, Library.open(service.settings.library, service.identity, write=True) as library:
        library.add_batch([song], vector, replaces=[sha] if sha in library.known() else [])
    return sha


def _version() -> str:
    from .. import __version__

    return __version__
