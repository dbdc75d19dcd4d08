"""The library's vector search: exact over the float16 matrix, and the approximate FAISS index."""

import json

import numpy as np

from alcap.cli import main
from alcap.library import Library, Song
from alcap.library.index import INDEX_FILE, exact_top

DIM = 32
IDENTITY = {"captioning_model": {"weights_sha256": "test", "music_encoder_sha256": None}, "generation": {},
            "sentence_model": {"name": "synthetic", "path": None, "dim": DIM}}


def clustered(n: int, seed: int, centres: int = 40) -> np.ndarray:
    """Unit vectors around a few centres, like captions that fall into kinds of songs."""
    rng = np.random.default_rng(seed)
    middle = rng.standard_normal((centres, DIM))
    vectors = middle[rng.integers(0, centres, n)] + 0.6 * rng.standard_normal((n, DIM))
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


def fill(library: Library, vectors: np.ndarray, first: int = 0) -> None:
    songs = [Song(id=f"s{first + i}", path=f"/music/s{first + i}.mp3", caption=f"song {first + i}",
                  metadata={"decade": 1990 + 10 * ((first + i) % 3)}) for i in range(len(vectors))]
    for start in range(0, len(songs), 1000):
        library.add_batch(songs[start:start + 1000], vectors[start:start + 1000])


def exact_order(matrix: np.ndarray, query: np.ndarray, rows: np.ndarray) -> list[int]:
    scores = matrix[rows].astype(np.float32) @ query
    return rows[np.lexsort((rows, -scores))].tolist()


def test_exact_top_is_the_float32_cosine_order_with_ties_by_row():
    rng = np.random.default_rng(0)
    matrix = clustered(3000, 1).astype(np.float16)
    matrix[2500] = matrix[10]  # an exact tie: the earlier row first
    query = matrix[10].astype(np.float32) + 0.01 * rng.standard_normal(DIM).astype(np.float32)
    rows, scores = exact_top(matrix, query, 50)
    everything = exact_order(matrix, query, np.arange(3000))
    assert rows.tolist() == everything[:50]
    assert rows.tolist().index(10) < rows.tolist().index(2500)
    np.testing.assert_allclose(scores, matrix[rows].astype(np.float32) @ query, rtol=0, atol=1e-6)
    subset = np.sort(rng.choice(3000, 700, replace=False))
    assert exact_top(matrix, query, 20, subset)[0].tolist() == exact_order(matrix, query, subset)[:20]
    assert exact_top(matrix, query, 10, np.zeros(0, dtype=np.int64))[0].size == 0


def test_faiss_index_recall_tail_removals_filters_and_retraining(tmp_path, capsys):
    root = tmp_path / "lib"
    vectors = clustered(6000, 2)
    with Library.open(root, IDENTITY, write=True) as library:
        fill(library, vectors)
        assert library.update_index()["kind"] == "exact"  # auto: far below AUTO_ROWS
        assert not (root / INDEX_FILE).exists()
        state = library.update_index("faiss")
    assert state["kind"] == "faiss-ivf-fp16" and state["indexed_rows"] == 6000 and state["policy"] == "faiss"
    assert state["recall@10"] >= 0.95 and state["recall_queries"] == 200 and state["nlist"] == min(int(4 * 6000 ** 0.5), 6000 // 39)

    with Library.open(root) as library:
        matrix = np.asarray(library.vectors())
        # the recall `info` reports is what the index does for such queries
        queries = np.random.default_rng(5).choice(6000, 100, replace=False)
        found = sum(len({h.id for h in library.search(like=f"s{q}", k=10)} &
                        {h.id for h in library.search(like=f"s{q}", k=10, exact=True)}) for q in queries)
        assert found / 1000 >= 0.9
        assert library.info()["index"]["recall@10"] == state["recall@10"]

    # rows added after the index was built are searched exactly; removed songs never come back
    extra = clustered(50, 3)
    with Library.open(root, IDENTITY, write=True) as library:
        fill(library, extra, first=6000)
        assert library.remove(["s17"]) == ["s17"]
        near_17 = library.search(like="s18", k=6000, exact=True)
        query = matrix[17].astype(np.float32)
        assert 17 not in [r for r, _ in library._dense(query, None, 20)]
        assert all(h.id != "s17" for h in near_17)
        tail = library._dense(extra[7], None, 1)
        assert tail[0][0] == 6007  # a row the index does not hold, found by the exact pass over the tail
        # a filter searches exactly over the rows it allows
        filtered = library.search(like="s3", k=10, where=["decade=2000"])
        assert all(h.metadata["decade"] == 2000 for h in filtered) and len(filtered) == 10
        state = library.update_index()  # the library keeps its policy (faiss): the new rows are assigned
        assert state["indexed_rows"] == 6050 and state["unindexed_rows"] == 0
        assert state["trained_on_rows"] == 6000
        written = (root / INDEX_FILE).stat().st_mtime_ns
        assert library.update_index() == state and (root / INDEX_FILE).stat().st_mtime_ns == written  # nothing new

        fill(library, clustered(18000, 4), first=6050)  # 4x the rows the centroids were trained on
        state = library.update_index()
        assert state["trained_on_rows"] == 24050 and state["nlist"] == min(int(4 * 24050 ** 0.5), 24050 // 39)
        assert state["recall@10"] >= 0.95

    code = main(["library", "info", str(root), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert code == 0 and info["index"]["indexed_rows"] == 24050
    code = main(["library", "info", str(root)])
    text = capsys.readouterr().out
    assert f"recall@10 {state['recall@10']:.3f} against exact search on 200 library vectors" in text
    code = main(["library", "index", str(root), "exact", "--json", "--quiet"])
    assert code == 0 and json.loads(capsys.readouterr().out)["kind"] == "exact"
    assert not (root / INDEX_FILE).exists()
    with Library.open(root) as library:
        assert library.index() is None and library.index_policy() == "exact"
        assert [h.id for h in library.search(like="s5", k=3)] == [h.id for h in library.search(like="s5", k=3, exact=True)]


def test_a_reader_keeps_searching_while_the_index_is_replaced(tmp_path):
    root = tmp_path / "lib"
    first = clustered(3000, 6)
    with Library.open(root, IDENTITY, write=True) as writer:
        fill(writer, first)
        writer.update_index("faiss")
        reader = Library.open(root)
        assert reader.search(like="s1", k=1)  # the reader loads the 3000-row index
        second = clustered(3000, 7)
        second[123] = first[1]  # a copy of s1 among the new songs
        fill(writer, second, first=3000)
        writer.update_index()
        assert reader.index().rows == 3000  # the reader still holds the index it loaded ...
        assert reader.search(like="s1", k=1)[0].id == "s3123"  # ... and finds the newer rows exactly
        reader.close()
        with Library.open(root) as fresh:
            assert fresh.index().rows == 6000
            assert fresh.search(like="s1", k=1)[0].id == "s3123"
