import numpy as np
import pytest

from alcap.metrics.retrieval import chance_retrieval, cosine_similarity, pick_queries, retrieval_metrics, split_sentences


def test_hand_made_ranking():
    # Query 0 ranks its song first, query 1 second, query 2 third (of 3 songs).
    sim = np.array([[0.9, 0.1, 0.2],
                    [0.8, 0.5, 0.1],
                    [0.7, 0.6, 0.3]])
    m = retrieval_metrics(sim, ks=(1, 2, 3))
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@2"] == pytest.approx(2 / 3)
    assert m["recall@3"] == pytest.approx(1.0)
    assert m["precision@1"] == pytest.approx(1 / 3)
    assert m["precision@2"] == pytest.approx(1 / 3)  # (2/3) / 2
    assert m["precision@3"] == pytest.approx(1 / 3)
    assert m["mean_rank"] == pytest.approx(2.0)
    assert m["mrr"] == pytest.approx((1 + 1 / 2 + 1 / 3) / 3)


def test_ties_count_by_their_probability():
    # Identical captions: all 4 songs score the same for every query; the relevant one is
    # equally likely to be at any of the 4 positions.
    m = retrieval_metrics(np.ones((4, 4)), ks=(1, 2, 4))
    assert m["recall@1"] == pytest.approx(1 / 4)
    assert m["recall@2"] == pytest.approx(2 / 4)
    assert m["recall@4"] == pytest.approx(1.0)
    assert m["mean_rank"] == pytest.approx(2.5)
    assert m["mrr"] == pytest.approx(np.mean([1, 1 / 2, 1 / 3, 1 / 4]))
    # One better song, then a tie of the relevant song with one other: positions 2 or 3.
    sim = np.array([[0.5, 0.9, 0.5], [0, 1, 0], [0, 0, 1]], dtype=float)
    assert retrieval_metrics(sim, ks=(1, 2))["recall@2"] == pytest.approx((0.5 + 1 + 1) / 3)


def test_chance_levels_are_a_random_ranking_in_expectation():
    m = chance_retrieval(45)
    assert m["recall@1"] == pytest.approx(1 / 45) and m["recall@10"] == pytest.approx(10 / 45)
    assert m["precision@5"] == pytest.approx(1 / 45) and m["mean_rank"] == pytest.approx(23.0)
    assert chance_retrieval(3, ks=(5,))["recall@5"] == 1.0  # k past the pool: every song is in the top k
    rng = np.random.default_rng(0)  # random rankings average to it
    draws = [retrieval_metrics(rng.random((45, 45)))["recall@10"] for _ in range(400)]
    assert np.mean(draws) == pytest.approx(m["recall@10"], abs=0.01)


def test_metrics_do_not_depend_on_the_pool_order():
    rng = np.random.default_rng(0)
    sim = rng.normal(size=(12, 12)).round(1)  # rounding makes ties
    perm = rng.permutation(12)
    assert retrieval_metrics(sim) == retrieval_metrics(sim[perm][:, perm])


def test_cosine_similarity_and_shape_check():
    q = np.array([[1.0, 0.0], [0.0, 2.0]])
    np.testing.assert_allclose(cosine_similarity(q, np.array([[3.0, 0.0], [1.0, 1.0]])),
                               [[1.0, 1 / np.sqrt(2)], [0.0, 1 / np.sqrt(2)]])
    with pytest.raises(ValueError, match="square"):
        retrieval_metrics(np.zeros((2, 3)))


def test_sentences_and_seeded_queries():
    text = "A slow song. Is it sad?  Yes!\nIt is about loss... Really."
    assert split_sentences(text) == ["A slow song.", "Is it sad?", "Yes!", "It is about loss...", "Really."]
    refs = [["One. Two.", "Three."], ["Four! Five?"], "Six."]
    a, b = pick_queries(refs, seed=3), pick_queries(refs, seed=3)
    assert a == b and a[0] in {"One.", "Two.", "Three."} and a[1] in {"Four!", "Five?"} and a[2] == "Six."
    assert len({tuple(pick_queries(refs, seed=s)) for s in range(20)}) > 1
    with pytest.raises(ValueError, match="song 1"):
        pick_queries([["x."], []])
