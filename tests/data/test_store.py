import json
import os
import time

import numpy as np
import pytest

from alcap.data.store import (
    DATA_FILE, INDEX_FILE, EmbeddingStore, EmbeddingWriter, StoreEntry, StoreError, StoreMismatchError, store_meta,
)

META = store_meta({"name": "fake", "weights_sha256": "abc", "dim": 8}, 16000, {"seconds": 15.0, "position": "middle", "offset": 0.0}, 8)


def entry(song_id: str) -> StoreEntry:
    return StoreEntry(id=song_id, offset=0, length=0, duration=15.0, audio=f"{song_id}.wav")


def arrays(n: int, length: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((length + i, 8)).astype(np.float32) for i in range(n)]


def test_round_trip_with_random_access(tmp_path):
    data = arrays(5)
    with EmbeddingWriter.open(tmp_path, META) as w:
        w.add_batch([(entry(f"s{i}"), a) for i, a in enumerate(data[:3])])
        w.add_batch([(entry(f"s{i}"), a) for i, a in enumerate(data[3:], start=3)])
    store = EmbeddingStore.open(tmp_path)
    assert len(store) == 5 and store.song_ids == [f"s{i}" for i in range(5)]
    for i in (4, 0, 2):
        got = store[f"s{i}"]
        assert got.dtype == np.float16 and got.shape == (5 + i, 8)
        np.testing.assert_array_equal(got, data[i].astype(np.float16))
    assert store.get("s1").dtype == np.float32
    assert "s3" in store and "nope" not in store
    with pytest.raises(KeyError, match="'nope' is not in the embedding store"):
        store["nope"]
    stats = store.stats()
    assert stats["rows"] == sum(len(a) for a in data) and stats["bytes_per_song"] == stats["rows"] * 8 * 2 / 5


def test_store_built_with_other_settings_is_refused(tmp_path):
    with EmbeddingWriter.open(tmp_path, META) as w:
        w.add_batch([(entry("a"), arrays(1)[0])])
    other = json.loads(json.dumps(META))
    other["extractor"]["weights_sha256"] = "def"
    other["excerpt"]["seconds"] = 10.0
    with pytest.raises(StoreMismatchError) as info:
        EmbeddingWriter.open(tmp_path, other)
    assert "extractor.weights_sha256: store has 'abc', this run has 'def'" in str(info.value)
    assert "excerpt.seconds" in str(info.value)
    # Informational fields (creation time, version) do not block appending.
    again = json.loads(json.dumps(META))
    again["info"]["created"] = "later"
    EmbeddingWriter.open(tmp_path, again).close()


def test_second_writer_is_locked_out(tmp_path):
    with EmbeddingWriter.open(tmp_path, META):
        with pytest.raises(StoreError, match="another process is writing"):
            EmbeddingWriter.open(tmp_path, META)


def test_interrupted_batch_is_dropped_and_the_rest_kept(tmp_path):
    data = arrays(3)
    with EmbeddingWriter.open(tmp_path, META) as w:
        w.add_batch([(entry("a"), data[0]), (entry("b"), data[1])])
    # A crash in the middle of the next batch: its rows reached the data file, and half an
    # index line was written.
    with open(tmp_path / DATA_FILE, "ab") as f:
        f.write(data[2].astype(np.float16).tobytes())
    with open(tmp_path / INDEX_FILE, "ab") as f:
        f.write(b'{"id": "c", "offset": 11, "len')
    store = EmbeddingStore.open(tmp_path)  # readers ignore the torn tail
    assert store.song_ids == ["a", "b"]
    np.testing.assert_array_equal(store["b"], data[1].astype(np.float16))
    with EmbeddingWriter.open(tmp_path, META) as w:  # the next writer truncates it and goes on
        assert "c" not in w
        w.add_batch([(entry("c"), data[2])])
    store = EmbeddingStore.open(tmp_path)
    assert store.song_ids == ["a", "b", "c"]
    np.testing.assert_array_equal(store["c"], data[2].astype(np.float16))
    assert os.path.getsize(tmp_path / DATA_FILE) == sum(len(a) for a in data) * 8 * 2


def test_index_lines_without_their_rows_are_ignored(tmp_path):
    with EmbeddingWriter.open(tmp_path, META) as w:
        w.add_batch([(entry("a"), arrays(1)[0])])
    with open(tmp_path / INDEX_FILE, "ab") as f:
        f.write((json.dumps({"id": "ghost", "offset": 5, "length": 5, "duration": 1.0}) + "\n").encode())
    assert EmbeddingStore.open(tmp_path).song_ids == ["a"]


def test_failures_are_recorded_until_the_song_succeeds(tmp_path):
    with EmbeddingWriter.open(tmp_path, META) as w:
        w.add_failure("x", "x.mp3", "file is empty (0 bytes)")
        w.add_failure("y", "y.mp3", "not a readable audio file")
    assert {f["id"] for f in EmbeddingStore.open(tmp_path).failures()} == {"x", "y"}
    with EmbeddingWriter.open(tmp_path, META) as w:
        w.add_batch([(entry("x"), arrays(1)[0])])
    assert [f["id"] for f in EmbeddingStore.open(tmp_path).failures()] == ["y"]


def test_opening_something_else_says_what_to_do(tmp_path):
    with pytest.raises(StoreError, match="not an embedding store.*alcap embed"):
        EmbeddingStore.open(tmp_path)


def test_wrong_embedding_width_is_an_error(tmp_path):
    with EmbeddingWriter.open(tmp_path, META) as w:
        with pytest.raises(StoreError, match=r"song a: embedding shape \(3, 4\)"):
            w.add_batch([(entry("a"), np.zeros((3, 4)))])


def test_a_killed_writer_frees_the_store_even_while_its_forked_children_live(tmp_path):
    """flock belonged to the open file, so DataLoader workers forked by a killed `alcap embed`
    kept the store locked; the writer's record lock dies with the writer."""
    import signal
    import subprocess
    import sys
    import textwrap

    script = textwrap.dedent(f"""
        import os, sys, time
        from alcap.data.store import EmbeddingWriter, store_meta
        meta = store_meta({{"name": "fake", "weights_sha256": "abc", "dim": 8}}, 16000,
                          {{"seconds": 15.0, "position": "middle", "offset": 0.0}}, 8)
        writer = EmbeddingWriter.open({str(tmp_path)!r}, meta)
        child = os.fork()
        if child == 0:
            time.sleep(60)  # a worker that outlives its parent
            os._exit(0)
        print(child, flush=True)
        time.sleep(60)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    try:
        with pytest.raises(StoreError, match="another process is writing"):
            EmbeddingWriter.open(tmp_path, META)
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=10)
        os.kill(child, 0)  # the forked child still lives ...
        with EmbeddingWriter.open(tmp_path, META) as w:  # ... and the store is free at once
            w.add_batch([(entry("a"), arrays(1)[0])])
    finally:
        os.kill(child, signal.SIGKILL)
    assert EmbeddingStore.open(tmp_path).song_ids == ["a"]


WRITER = """
import os, sys
import numpy as np
from alcap.data import store as s

meta = s.store_meta({"name": "fake", "weights_sha256": "abc", "dim": 8}, 16000,
                    {"seconds": 15.0, "position": "middle", "offset": 0.0}, 8)
crash_after_syncs = int(sys.argv[3])
if crash_after_syncs:  # a crash right after the n-th durable write, before anything else runs
    real_sync, count = s._sync, [0]
    def sync(handle):
        real_sync(handle)
        count[0] += 1
        if count[0] == crash_after_syncs:
            os._exit(9)
    s._sync = sync
with s.EmbeddingWriter.open(sys.argv[1], meta) as w:
    print("ready", flush=True)
    todo = [i for i in range(int(sys.argv[2])) if f"s{i}" not in w]
    for start in range(0, len(todo), 3):
        w.add_batch([(s.StoreEntry(id=f"s{i}", offset=0, length=0, duration=1.0), song_rows(i))
                     for i in todo[start:start + 3]])
"""


def song_rows(i: int) -> np.ndarray:
    """Song i's embedding: 1-5 rows that say which song and row they are."""
    return (np.arange(1 + i % 5)[:, None] * 0.25 + (i % 64) + np.zeros((1, 8))).astype(np.float16)


def run_writer(store, songs: int, crash_after_syncs: int = 0):
    import inspect
    import subprocess
    import sys

    code = "import numpy as np\n" + inspect.getsource(song_rows) + WRITER
    return subprocess.Popen([sys.executable, "-c", code, str(store), str(songs), str(crash_after_syncs)],
                            stdout=subprocess.PIPE, text=True)


def assert_consistent(store_dir, songs: int) -> int:
    store = EmbeddingStore.open(store_dir)
    for song_id in store:
        np.testing.assert_array_equal(store[song_id], song_rows(int(song_id[1:])), err_msg=song_id)
    assert set(store) <= {f"s{i}" for i in range(songs)}
    return len(store)


def test_kill_minus_9_at_random_moments_never_corrupts_the_store(tmp_path):
    """The write order (rows fsync'ed before their index lines) and the recovery, through real kills."""
    import random
    import signal

    rng, songs, done = random.Random(0), 20000, []
    for _ in range(12):
        writer = run_writer(tmp_path, songs)
        assert writer.stdout.readline().strip() == "ready"
        time.sleep(rng.uniform(0.0, 0.1))
        writer.send_signal(signal.SIGKILL)
        writer.wait(timeout=30)
        done.append(assert_consistent(tmp_path, songs))  # what a reader sees right after the kill
    assert done == sorted(done) and done[-1] < songs  # nothing lost, and the kills landed mid-run
    writer = run_writer(tmp_path, songs)
    assert writer.wait(timeout=120) == 0
    assert assert_consistent(tmp_path, songs) == songs


@pytest.mark.parametrize("crash_after_syncs", [1, 2, 3])
def test_a_crash_between_the_two_writes_leaves_no_index_line_without_its_rows(tmp_path, crash_after_syncs):
    """A batch's rows are durable before any index line names them: after a crash right after
    the first fsync of a batch, the index on disk does not mention it (what a power cut keeps)."""
    writer = run_writer(tmp_path, 30, crash_after_syncs=crash_after_syncs)
    assert writer.wait(timeout=30) == 9
    indexed = [json.loads(line)["id"] for line in (tmp_path / INDEX_FILE).read_text().splitlines()]
    rows_on_disk = os.path.getsize(tmp_path / DATA_FILE) // (8 * 2)
    assert indexed == [f"s{i}" for i in range(3 * (crash_after_syncs // 2))]  # whole batches only
    assert sum(len(song_rows(i)) for i in range(len(indexed))) <= rows_on_disk
    assert assert_consistent(tmp_path, 30) == len(indexed)
