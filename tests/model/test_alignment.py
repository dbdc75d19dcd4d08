import math

import pytest
import torch

from alcap.model.alignment import AlignmentHead, info_nce, masked_mean


def hand_info_nce(m, t, ids, temperature, symmetric):
    """Row by row, with explicit sums: the definition, not the vectorised code."""
    n = len(m)

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    def one_way(anchors, others):
        total = 0.0
        for i in range(n):
            pos = math.exp(cos(anchors[i], others[i]) / temperature)
            neg = sum(math.exp(cos(anchors[i], others[j]) / temperature) for j in range(n) if j != i and ids[j] != ids[i])
            total += -math.log(pos / (pos + neg))
        return total / n

    loss = one_way(m, t)
    return (loss + one_way(t, m)) / 2 if symmetric else loss


@pytest.mark.parametrize("symmetric", [False, True])
def test_info_nce_equals_the_hand_computation_with_duplicate_songs(symmetric):
    torch.manual_seed(0)
    m, t = torch.randn(5, 4), torch.randn(5, 4)
    ids = ["a", "b", "a", "c", "b"]  # rows 0 and 2, 1 and 4 are the same song
    got = info_nce(m, t, ids, temperature=0.3, symmetric=symmetric)
    assert got.item() == pytest.approx(hand_info_nce(m, t, ids, 0.3, symmetric), rel=1e-5)
    distinct = info_nce(m, t, None, temperature=0.3, symmetric=symmetric)
    assert distinct.item() == pytest.approx(hand_info_nce(m, t, list(range(5)), 0.3, symmetric), rel=1e-5)
    assert got.item() < distinct.item()  # fewer negatives, lower loss


def test_info_nce_small_worked_example():
    # Two songs, orthogonal unit vectors, perfectly aligned: loss = log(1 + e^{(0 - 1) / T}).
    m = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert info_nce(m, m.clone(), temperature=0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)
    # Only copies of one song: no negatives at all, the loss is 0.
    assert info_nce(m, m.clone(), song_ids=[7, 7]).item() == pytest.approx(0.0, abs=1e-7)
    # Scale does not matter: cosine similarity.
    assert info_nce(3 * m, m, temperature=0.5).item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-6)


def test_info_nce_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="two \\(N, D\\) tensors"):
        info_nce(torch.zeros(3, 4), torch.zeros(3, 5))


def test_masked_mean_ignores_padding():
    x = torch.tensor([[[1.0], [3.0], [100.0]]])
    assert masked_mean(x, torch.tensor([[1, 1, 0]])).item() == 2.0
    head = AlignmentHead(d_model=1, music_dim=2)
    z_m, z_t = head(x, torch.tensor([[1, 1, 0]]), torch.ones(1, 4, 2))
    z_m2, z_t2 = head(x[:, :2], torch.tensor([[1, 1]]), torch.ones(1, 4, 2))
    assert torch.equal(z_t, z_t2) and torch.equal(z_m, z_m2) and z_t.shape == (1, 2)


def test_public_api():
    import alcap

    assert alcap.info_nce is info_nce
    assert {"EmbeddingStore", "Captioner", "load_config", "AlcapModel"} <= set(alcap.__all__)


def test_the_bound_counts_the_candidates_each_row_really_had():
    import math

    from alcap.model.alignment import info_nce_log_candidates

    # a, b, a, c: rows 0 and 2 are one song, so each is scored against 3 columns, rows 1 and 3 against 4.
    ids = torch.tensor([0, 1, 0, 2])
    assert float(info_nce_log_candidates(ids)) == pytest.approx((2 * math.log(3) + 2 * math.log(4)) / 4)
    assert float(info_nce_log_candidates(torch.arange(5))) == pytest.approx(math.log(5))  # all distinct: log N
    assert float(info_nce_log_candidates(torch.zeros(4, dtype=torch.long))) == 0.0  # one song: no negatives
