"""`alcap serve` under load: search QPS and latency, micro-batched captioning, memory.

Starts `alcap serve` on 127.0.0.1 (a free port) as its own process and drives it with
concurrent HTTP clients (httpx, asyncio), every phase bounded in requests and time:

- search: `--searches` requests (hybrid mode, queries from the library's own captions) at 8
  and at 64 concurrent clients: queries per second, p50 and p99 latency;
- captioning: `--uploads` uploads of library songs at 16 concurrent clients, against this
  server (micro-batching: --max-batch 8) and a second one started with --max-batch 1: songs
  per second, and the ratio (the line's ours vs baseline);
- memory: the server's RSS once every kind of request has run, and after `--leak-searches`
  (2,000) more searches at 64 clients: a leak grows it;
- errors: every response must be 200; any other makes the script fail.

    python benchmarks/serve_load.py [--library runs/demo/library --model runs/demo/alcap/seed-2020/best] [--quick]

Without --library/--model it uses the demo's (after `make demo`); --quick builds a tiny library
for a smoke test.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import report  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """`alcap serve` in a child process on 127.0.0.1."""

    def __init__(self, library: Path, model: Path, *extra: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "alcap.cli", "serve", str(library), "--model", str(model),
                                         "--port", str(self.port), "--device", "cpu", "--log-level", "warning", *extra],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)

    def wait_ready(self, timeout: float = 300.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"alcap serve exited: {self.process.stderr.read()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=2).json().get("status") == "ok":
                    return
            except (httpx.HTTPError, ValueError):
                pass
            time.sleep(0.25)
        raise RuntimeError("alcap serve did not become ready")

    def rss_mib(self) -> float:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


async def drive(requests: list, concurrency: int, deadline_s: float) -> tuple[list[float], list[int], float]:
    """Send `requests` (coroutine factories taking a client) with `concurrency` at a time; stop
    starting new ones after `deadline_s`. Returns latencies, status codes, wall seconds."""
    import httpx

    latencies, statuses = [], []
    queue = list(reversed(requests))
    started = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:
        async def worker():
            while queue and time.perf_counter() - started < deadline_s:
                send = queue.pop()
                t = time.perf_counter()
                response = await send(client)
                latencies.append(time.perf_counter() - t)
                statuses.append(response.status_code)
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, statuses, time.perf_counter() - started


def searches(url: str, queries: list[str], n: int) -> list:
    return [lambda c, q=queries[i % len(queries)]: c.get(f"{url}/api/search", params={"q": q, "k": 10})
            for i in range(n)]


def uploads(url: str, files: list[Path], n: int) -> list:
    blobs = [(f.name, f.read_bytes()) for f in files]
    return [lambda c, b=blobs[i % len(blobs)]: c.post(f"{url}/api/caption", files={"file": b}) for i in range(n)]


def tiny_library(workdir: Path) -> tuple[Path, Path]:
    """--quick: a tiny model and a library of 24 short demo songs."""
    from library_add import tiny_model

    from alcap.data.demo import make_demo_corpus
    from alcap.library.build import add_songs

    make_demo_corpus(workdir / "corpus", n_songs=24, seed=11, min_seconds=2.0, max_seconds=3.0, captions_per_song=1,
                     progress=False)
    model = tiny_model(workdir, workdir / "corpus")
    add_songs(workdir / "lib", model, [str(workdir / "corpus" / "manifest.jsonl")], device="cpu", workers=0,
              progress=False)
    return workdir / "lib", model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--library", default="runs/demo/library", help="library to serve (default: the demo's)")
    parser.add_argument("--model", default="runs/demo/alcap/seed-2020/best", help="model (default: the demo's ALCAP)")
    parser.add_argument("--searches", type=int, default=1000, help="search requests per concurrency level")
    parser.add_argument("--uploads", type=int, default=48, help="caption uploads per server (16 at a time)")
    parser.add_argument("--leak-searches", type=int, default=2000, help="searches between the two RSS readings")
    parser.add_argument("--max-seconds", type=float, default=120.0, help="time bound of each phase")
    parser.add_argument("--quick", action="store_true", help="a tiny library and few requests (a smoke test)")
    args = parser.parse_args()
    from alcap.library import Library

    with tempfile.TemporaryDirectory() as tmp:
        if args.quick:
            args.searches, args.uploads, args.leak_searches = 40, 16, 100
            library, model = tiny_library(Path(tmp))
        else:
            library, model = Path(args.library), Path(args.model)
            if not (library / "library.sqlite").is_file() or not model.is_dir():
                print(f"no library at {library} or no model at {model}: run `make demo` first, or give --library and "
                      "--model", file=sys.stderr)
                return 2
        with Library.open(library) as lib:
            songs = lib.songs()
        queries = [s.caption.split(".")[0] or "a song" for s in songs]
        files = [Path(s.path) for s in songs if Path(s.path).is_file()][:16]
        results, errors = {}, 0

        batched = Server(library, model, "--max-batch", "8", "--max-wait-ms", "20")
        single = None
        try:
            batched.wait_ready()
            rss_before = batched.rss_mib()
            for concurrency in (8, 64):
                lat, codes, wall = asyncio.run(drive(searches(batched.url, queries, args.searches), concurrency,
                                                     args.max_seconds))
                errors += sum(c != 200 for c in codes)
                results[f"search_c{concurrency}"] = {
                    "requests": len(codes), "qps": len(codes) / wall, "p50_ms": 1000 * float(np.percentile(lat, 50)),
                    "p99_ms": 1000 * float(np.percentile(lat, 99))}
            lat, codes, wall = asyncio.run(drive(uploads(batched.url, files, args.uploads), 16, args.max_seconds))
            errors += sum(c != 200 for c in codes)
            stats = json.loads(http_get(f"{batched.url}/healthz"))["captioning"]
            results["caption_batched"] = {"songs": len(codes), "songs_per_s": len(codes) / wall,
                                          "p50_ms": 1000 * float(np.percentile(lat, 50)), **stats}
            warm = batched.rss_mib()  # after every kind of request has run: allocator pools and threads exist
            lat, codes, _ = asyncio.run(drive(searches(batched.url, queries, args.leak_searches), 64, 4 * args.max_seconds))
            errors += sum(c != 200 for c in codes)
            rss_after = batched.rss_mib()
            results["rss"] = {"cold_mib": rss_before, "before_mib": warm, "after_mib": rss_after, "searches": len(codes),
                              "growth": rss_after / warm}
            batched.stop()

            single = Server(library, model, "--max-batch", "1")
            single.wait_ready()
            lat, codes, wall = asyncio.run(drive(uploads(single.url, files, args.uploads), 16, args.max_seconds))
            errors += sum(c != 200 for c in codes)
            results["caption_single"] = {"songs": len(codes), "songs_per_s": len(codes) / wall,
                                         "p50_ms": 1000 * float(np.percentile(lat, 50))}
        finally:
            batched.stop()
            if single is not None:
                single.stop()

    for name in ("search_c8", "search_c64"):
        r = results[name]
        print(f"search, {name[8:]} concurrent clients: {r['qps']:.0f} queries/s, p50 {r['p50_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms ({r['requests']} requests)")
    b, s = results["caption_batched"], results["caption_single"]
    print(f"captioning, 16 concurrent uploads: {b['songs_per_s']:.2f} songs/s micro-batched ({b['batches']} batches for "
          f"{b['songs']} songs, largest {b['largest_batch']}) vs {s['songs_per_s']:.2f} songs/s with --max-batch 1")
    r = results["rss"]
    print(f"server RSS {r['cold_mib']:.0f} MiB started, {r['before_mib']:.0f} MiB after the runs above, "
          f"{r['after_mib']:.0f} MiB after {r['searches']} more searches ({r['growth']:.3f}x); errors: {errors}")
    if errors:
        print(f"error: {errors} responses were not 200", file=sys.stderr)
        return 1
    report("serve_load", b["songs_per_s"], s["songs_per_s"], "songs/s",
           f"alcap serve: captioning {b['songs_per_s']:.2f} vs {s['songs_per_s']:.2f} songs/s "
           f"(micro-batching vs --max-batch 1): {b['songs_per_s'] / s['songs_per_s']:.2f}x; search "
           f"{results['search_c8']['qps']:.0f} / {results['search_c64']['qps']:.0f} queries/s at 8 / 64 clients",
           results=results, errors=errors, library=str(library), model=str(model), cpus=os.cpu_count())
    return 0


def http_get(url: str) -> str:
    import httpx

    return httpx.get(url, timeout=30).text


if __name__ == "__main__":
    sys.exit(main())
