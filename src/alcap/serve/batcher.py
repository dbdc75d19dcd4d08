"""Micro-batching: one worker thread per model, many waiting requests.

Requests put their payload on a bounded queue and wait on a future. The worker takes the
first waiting job, gathers more for up to `max_wait_ms` or until `max_batch` are there, and
runs the model once for all of them, as inference servers do: N concurrent caption uploads
cost one batched generation instead of N, and N concurrent searches one sentence-model call.
A full queue refuses new work (the caller answers 503 with Retry-After) rather than growing
without bound. One thread per model also keeps its memory from growing with the number of
request threads.
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
    payload: object
    future: Future = field(default_factory=Future)


@dataclass
class BatcherStats:
    batches: int = 0
    items: int = 0
    largest_batch: int = 0
    failed: int = 0

    def to_dict(self) -> dict:
        return {"batches": self.batches, "songs": self.items, "largest_batch": self.largest_batch,
                "failed": self.failed}


class MicroBatcher:
    """Run `process(payloads) -> results` (one result, or an Exception, per payload) on one
    worker thread over batches of waiting jobs; `submit(payload)` returns the job's Future."""

    def __init__(self, process, max_batch: int = 8, max_wait_ms: float = 20.0, queue_size: int = 64,
                 name: str = "alcap-batcher"):
        if max_batch < 1 or queue_size < 1 or max_wait_ms < 0:
            raise ValueError("max_batch and queue_size must be >= 1 and max_wait_ms >= 0")
        self.process, self.max_batch, self.max_wait = process, max_batch, max_wait_ms / 1000.0
        self.stats = BatcherStats()
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=queue_size)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    @property
    def waiting(self) -> int:
        return self._queue.qsize()

    def submit(self, payload) -> Future:
        job = _Job(payload)
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
            try:
                results = self.process([job.payload for job in jobs])
            except Exception as exc:  # noqa: BLE001 - a failed batch answers its requests, the worker goes on
                results = [exc] * len(jobs)
            failed = sum(isinstance(r, Exception) for r in results)
            self.stats.batches += 1
            self.stats.items += len(jobs) - failed
            self.stats.failed += failed
            self.stats.largest_batch = max(self.stats.largest_batch, len(jobs))
            for job, result in zip(jobs, results):
                if isinstance(result, Exception):
                    job.future.set_exception(result)
                else:
                    job.future.set_result(result)
            if stop:
                return


def caption_process(captioner):
    """The caption worker's batch function: (samples, lyrics) pairs -> captions, one encoder and
    one generation call for the batch; a song whose h_m is not finite gets a ValueError."""
    def process(payloads: list[tuple[np.ndarray | None, str]]) -> list:
        results: list = [None] * len(payloads)
        good = list(range(len(payloads)))
        music = None
        if captioner.uses_music:
            waves = {i: samples for i, (samples, _) in enumerate(payloads)}
            if captioner.device.type == "cuda":
                embedded = captioner.embed_music(waves)
            else:  # on a CPU the music encoder is no faster batched (musicnn: 1.6x slower at 8), generation is
                embedded = {i: captioner.embed_music({i: wave})[i] for i, wave in waves.items()}
            good = [i for i in good if np.isfinite(embedded[i]).all()]
            for i in set(range(len(payloads))) - set(good):
                results[i] = ValueError("the music encoder produced non-finite values")
            music = [embedded[i] for i in good]
        captions = captioner.caption_embeddings([payloads[i][1] or "" for i in good], music) if good else []
        for i, caption in zip(good, captions):
            results[i] = caption
        return results

    return process


def query_process(encoder):
    """The query worker's batch function: search texts -> their sentence vectors, encoded together."""
    def process(texts: list[str]) -> list:
        return list(encoder.encode(texts))

    return process
