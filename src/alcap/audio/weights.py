"""Public music-encoder weights by name: where they are published, where they are kept here,
and a verified download (`alcap encoder download cnnsa-msd`)."""

from __future__ import annotations

import hashlib
import json
import os
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..utils import alcap_cache, current_umask, file_sha256
from .cnnsa import CheckpointError


@dataclass(frozen=True)
class PublicWeights:
    name: str
    url: str
    filename: str
    # The file's sha256 once it is known; None: verified by loading it strictly as a CNNSA
    # checkpoint (every key and shape of the public layout), its sha256 printed and recorded.
    sha256: str | None
    about: str


PUBLIC_WEIGHTS = {
    "cnnsa-msd": PublicWeights(
        name="cnnsa-msd",
        url="https://github.com/minzwon/sota-music-tagging-models/raw/master/models/msd/attention/best_model.pth",
        filename="best_model.pth",
        sha256=None,
        about="CNNSA (Won et al. 2019) trained on the Million Song Dataset top-50 tags, as ALCAP used; "
              "minzwon/sota-music-tagging-models, MIT licence",
    ),
}
SOURCE_FILE = "source.json"  # beside downloaded weights: where they came from, their sha256, when


class DownloadError(ValueError):
    """Weights that could not be fetched or failed verification; the message says what to do."""


def weights_home() -> Path:
    """Where downloaded encoder weights are kept: encoders/ in alcap's cache ($ALCAP_CACHE, else
    $XDG_CACHE_HOME/alcap, else ~/.cache/alcap)."""
    return alcap_cache() / "encoders"


def downloaded_weights(name: str) -> Path | None:
    """The file `alcap encoder download NAME` keeps, if it is there."""
    path = weights_home() / name / public_weights(name).filename
    return path if path.is_file() else None


def public_weights(name: str) -> PublicWeights:
    if name not in PUBLIC_WEIGHTS:
        raise DownloadError(f"unknown encoder weights {name!r}; known: {', '.join(PUBLIC_WEIGHTS)}")
    return PUBLIC_WEIGHTS[name]


def download_weights(name: str, directory: str | Path | None = None, url: str | None = None,
                     sha256: str | None = None, progress: bool = True, timeout: float = 30.0) -> dict:
    """Fetch public weights into `directory` (default: weights_home()/NAME), verified, atomically.

    Verified twice: the sha256 (`sha256`, else the one recorded for NAME, when there is one) and
    a strict load as a CNNSA checkpoint, so an HTML error page or a truncated file never lands.
    Weights already there and valid are not fetched again. Returns what `source.json` records."""
    from tqdm.auto import tqdm

    from .cnnsa import load_cnnsa

    entry = public_weights(name)
    url = url or entry.url
    expected = (sha256 or entry.sha256 or "").lower() or None
    directory = Path(directory).expanduser() if directory else weights_home() / name
    target = directory / entry.filename
    if target.is_file():
        digest = file_sha256(target)
        if expected is None or digest == expected:
            try:
                load_cnnsa(target)
            except CheckpointError:
                pass  # damaged: fetched again below
            else:
                return {**_read_source(directory), "path": str(target.resolve()), "sha256": digest, "fetched": False}
    directory.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    h = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=f"{name}", disable=not progress) as bar:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    out.write(chunk)
                    h.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
        partial.unlink(missing_ok=True)
        reason = getattr(exc, "reason", exc)
        where = f"HTTP {exc.code}" if isinstance(exc, urllib.error.HTTPError) else f"{reason}"
        raise DownloadError(
            f"cannot fetch {url} ({where}). Without a network: download that file on a machine that has one and "
            f"copy it to {target} (then `--checkpoint {target}`), or use --encoder musicnn-msd, which needs no "
            "download") from None
    digest = h.hexdigest()
    if expected is not None and digest != expected:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url}: sha256 {digest} is not the expected {expected}; the file was discarded "
                            "(a different or damaged file: try again, or check the URL)")
    try:
        model, state_sha256 = load_cnnsa(partial)
    except CheckpointError as exc:
        partial.unlink(missing_ok=True)
        raise DownloadError(f"{url}: not a CNNSA checkpoint in the public layout ({exc}); the file was "
                            "discarded") from None
    os.chmod(partial, 0o666 & ~current_umask())
    os.replace(partial, target)
    record = {"name": name, "url": url, "sha256": digest, "sha256_verified": expected is not None,
              "state_dict_sha256": state_sha256, "tags": model.dense.out_features,
              "downloaded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (directory / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return {**record, "path": str(target.resolve()), "fetched": True}


def _read_source(directory: Path) -> dict:
    try:
        return json.loads((directory / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
