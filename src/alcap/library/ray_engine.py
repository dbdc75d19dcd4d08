"""`alcap library add --engine ray`: the library job's stages as a Ray Data pipeline.

For catalogues that outgrow one machine. The stages are the local job's (build.py), spread
over a Ray cluster:

- hashing, the skip check, lyrics and decoding the excerpt: Ray tasks on CPUs (`_Songs`);
- the music encoder and caption generation: a pool of actors, each holding one Captioner (a
  GPU each where the cluster has GPUs);
- the sentence model and the commit: this process, the library's one writer, a batch at a
  time, so a killed job resumes as the local one does (committed songs are skipped).

Songs come back in whatever order the actors finish them; a library does not depend on it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import numpy as np

from .build import WHOLE_TRACK, Captioned, SourceItem, _generate, _Songs

DECODE_CPUS = 0.25  # a decoding task waits on the disk as much as it computes; leave the CPUs to the actors


class RayUnavailableError(ValueError):
    pass


def import_ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RayUnavailableError("--engine ray needs Ray Data: pip install 'alcap[ray]' (or 'ray[data]')") from None
    return ray


def connect(address: str | None) -> bool:
    """Join the cluster at `address` (else $RAY_ADDRESS, else an already started instance,
    else a new local one); True when this call started Ray (and should shut it down)."""
    ray = import_ray()
    import logging

    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan and timing lines; the job has its own bar
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    ray.init(address=address, include_dashboard=False, logging_level="WARNING", log_to_driver=False,
             configure_logging=False)
    return True


class _Decode:
    """A row index -> the decoded row (run in Ray tasks): what the decoding stage found, as JSON
    (columns of optional strings do not survive Arrow's type inference), and the audio as
    float32 bytes."""

    def __init__(self, songs: _Songs):
        self.songs = songs

    def __call__(self, row: dict) -> dict:
        i = int(row["i"])
        status, item, song_id, sha, detail = self.songs[i]
        found = {"status": status, "path": item.path, "song_id": song_id, "sha256": sha, "error": None,
                 "lyrics": "", "kind": None, "duration": None}
        samples = b""
        if status == "fail":
            found["error"] = detail
        elif status == "ok":
            lyrics, audio, duration = detail
            found.update(lyrics=lyrics or "", duration=float(duration) if duration is not None else None)
            if isinstance(audio, np.ndarray):
                found["kind"], samples = "samples", np.ascontiguousarray(audio, dtype=np.float32).tobytes()
            else:
                found["kind"] = "store" if audio is None else "whole"
        return {"i": i, "found": json.dumps(found), "samples": samples}


class _Caption:
    """A Ray actor holding one Captioner: a batch of decoded rows -> each row's index and its
    Captioned fields as JSON (the audio stays here)."""

    def __init__(self, model_dir: str, device: str, quantize: str | None, batch_size: int, store: str | None,
                 full_track: str | None, threads: int):
        import torch

        from ..data.store import EmbeddingStore
        from ..inference import Captioner

        torch.set_num_threads(max(1, threads))
        self.captioner = Captioner.from_pretrained(model_dir, device=device, quantize=quantize)
        self.captioner.generation = self.captioner.generation.with_overrides(batch_size=batch_size,
                                                                             num_return_sequences=1)
        self.store = EmbeddingStore.open(store) if store else None
        self.full_track = full_track

    def __call__(self, batch: dict) -> dict:
        found = [json.loads(text) for text in batch["found"]]
        songs, good = [], []
        for f, samples in zip(found, batch["samples"]):
            song = Captioned(SourceItem(f["path"], f["song_id"]), f["song_id"], f["sha256"], lyrics=f["lyrics"],
                             duration=f["duration"], error=f["error"], skipped=f["status"] == "skip")
            songs.append(song)
            if f["status"] == "ok":
                audio = (np.frombuffer(samples, dtype=np.float32) if f["kind"] == "samples"
                         else WHOLE_TRACK if f["kind"] == "whole" else None)
                good.append((song, audio))
        _generate(self.captioner, good, self.store, self.full_track)
        fields = ("song_id", "sha256", "lyrics", "duration", "caption", "error", "skipped")
        return {"i": np.asarray(batch["i"]),
                "captioned": [json.dumps({k: getattr(s, k) for k in fields}) for s in songs]}


def ray_caption_stream(items: list[SourceItem], songs: _Songs, model_dir: str, device: str, quantize: str | None,
                       batch_size: int, store: str | None, full_track: str | None, actors: int = 1,
                       actor_cpus: float = 1.0, decoders: int = 2) -> Iterator[list[Captioned]]:
    """`caption_stream`'s batches of Captioned items, made on the Ray cluster (the caller commits
    them). At most `decoders` decoding tasks run at once: each task's worker process imports
    the decoding code once, and more of them than the actors can use only compete with them
    for the CPUs. A song met twice is captioned once per actor that meets it, and committed once."""
    ray = import_ray()
    on_gpu = (device == "auto" or device.startswith("cuda")) and quantize in (None, "none")  # int8 is CPU-only
    gpus = ray.cluster_resources().get("GPU", 0) if on_gpu else 0
    if device.startswith("cuda") and not gpus:
        raise ValueError(f"--device {device}: the Ray cluster has no GPUs")
    cpus = ray.cluster_resources().get("CPU", 0)
    if actors * actor_cpus + DECODE_CPUS > cpus:  # Ray would wait for free CPUs for ever
        raise ValueError(f"the Ray cluster has {cpus:g} CPUs: {actors} captioning actors of {actor_cpus:g} CPUs each "
                         f"leave none for decoding; lower --ray-actors or --ray-actor-cpus (e.g. 0.5)")
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # the job's own bar counts songs
    ctx.execution_options.preserve_order = False
    rows = ray.data.from_items([{"i": i} for i in range(len(items))],
                               override_num_blocks=max(1, min(len(items) // batch_size + 1, 64)))
    decode = ray.data.TaskPoolStrategy(size=max(1, decoders))
    captioned = rows.map(_Decode(songs), compute=decode, num_cpus=DECODE_CPUS).map_batches(
        _Caption, batch_size=batch_size, compute=ray.data.ActorPoolStrategy(size=actors), batch_format="numpy",
        num_gpus=1 if gpus else 0, num_cpus=actor_cpus,
        fn_constructor_kwargs={"model_dir": str(model_dir), "device": "cuda" if gpus else "cpu", "quantize": quantize,
                               "batch_size": batch_size, "store": store, "full_track": full_track,
                               "threads": max(1, int(actor_cpus))})
    seen: set[str] = set()
    batch: list[Captioned] = []
    for row in captioned.iter_rows():
        song = Captioned(items[int(row["i"])], **json.loads(row["captioned"]))
        song_id = song.song_id
        if song.caption is not None and song_id in seen:
            song.caption, song.skipped = None, True  # listed twice: committed once
        if song.caption is not None:
            seen.add(song_id)
        batch.append(song)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch
