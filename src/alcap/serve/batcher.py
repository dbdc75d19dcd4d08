"""Micro-batching of caption requests: one model worker, many waiting requests.

Requests put (samples, lyrics) on a bounded queue and wait on a future. The worker thread
takes the first waiting job, gathers more for up to `max_wait_ms` or until `max_batch` are
there, and runs the music encoder and generation once for all of them, as inference servers
do: N concurrent uploads cost one batched generation instead of N. A full queue refuses new
work (the caller answers 503 with Retry-After) rather than growing without bound.
"""

from __future__ import annotations

import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np


class QueueFull(Exception):
    """The caption queue is full; try again shortly."""


@dataclass
class _Job:
    samples: np.ndarray | None
    lyrics: str
    future: Future = field(default_factory=Future)


@dataclass
class BatcherStats:
    batches: int = 0
    songs: int = 0
    largest_batch: int = 0
    failed: int = 0

    def to_dict(self) -> dict:
        return {"batches": self.batches, "songs": self.songs, "largest_batch": self.largest_batch,
                "failed": self.failed}


class CaptionBatcher:
    """Caption (samples, lyrics) jobs in batches on one worker thread; `submit` returns a Future
    whose result is the caption (or whose exception says why not)."""

    def __init__(self, captioner, max_batch: int = 8, max_wait_ms: float = 20.0, queue_size: int = 64):
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait_ms >= 0")
        self.captioner, self.max_batch, self.max_wait = captioner, max_batch, max_wait_ms / 1000.0
        captioner.generation = captioner.generation.with_overrides(
            batch_size=max(max_batch, captioner.generation.batch_size), num_return_sequences=1)
        self.stats = BatcherStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name="alcap-caption-worker", daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def submit(self, samples: np.ndarray | None, lyrics: str) -> Future:
        job = _Job(samples, lyrics or "")
        try:
            self._queue.put_nowait(job)
        except queue.Full:
            raise QueueFull from None
        return job.future

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    def _gather(self, first: _Job) -> tuple[list[_Job], bool]:
        jobs, deadline = [first], time.monotonic() + self.max_wait
        while len(jobs) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if job is None:
                return jobs, True
            jobs.append(job)
        return jobs, False

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            jobs, stop = self._gather(first)
            self._caption(jobs)
            if stop:
                return

    def _caption(self, jobs: list[_Job]) -> None:
        captioner = self.captioner
        try:
            music = None
            if captioner.uses_music:
                embedded = captioner.embed_music({i: job.samples for i, job in enumerate(jobs)})
                good = []
                for i, job in enumerate(jobs):
                    if np.isfinite(embedded[i]).all():
                        good.append(i)
                    else:
                        job.future.set_exception(ValueError("the music encoder produced non-finite values"))
                        self.stats.failed += 1
                music = [embedded[i] for i in good]
            else:
                good = list(range(len(jobs)))
            captions = captioner.caption_embeddings([jobs[i].lyrics for i in good], music) if good else []
        except Exception as exc:  # noqa: BLE001 - one failed batch answers its requests, the worker goes on
            for job in jobs:
                if not job.future.done():
                    job.future.set_exception(exc)
            self.stats.failed += len(jobs)
            return
        self.stats.batches += 1
        self.stats.songs += len(good)
        self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
        for i, caption in zip(good, captions):
            jobs[i].future.set_result(caption)
