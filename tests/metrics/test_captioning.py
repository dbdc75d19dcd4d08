import pytest

from alcap.metrics.captioning import (
    bootstrap_interval, caption_metrics, caption_scores, meteor, rouge, tokenizer_for_meteor,
)
from alcap.metrics.wordnet import install_from_debian, lexnames_text

from helpers import require_wordnet

REF = "the cat sat on the mat"


def test_rouge_by_hand():
    # "the cat sat" vs the reference: 3 of 6 unigrams, 2 of 5 bigrams, LCS 3.
    m = rouge(["the cat sat"], [REF])
    assert m["rouge1_recall"] == pytest.approx(3 / 6) and m["rouge1_precision"] == pytest.approx(1.0)
    assert m["rouge1_f1"] == pytest.approx(2 * 0.5 / 1.5)
    assert m["rouge2_recall"] == pytest.approx(2 / 5) and m["rougeL_recall"] == pytest.approx(3 / 6)
    assert m["rouge1_recall_ci95"] == [pytest.approx(0.5), pytest.approx(0.5)]


def test_rouge_takes_the_best_reference_and_averages():
    m = rouge(["the cat sat", "a dog"], [["a bird flew", REF], "a dog"])
    assert m["rouge1_recall"] == pytest.approx((0.5 + 1.0) / 2)
    # The best reference is the one with the highest F1, and its recall is reported (rouge-score's
    # score_multi): "a dog" vs "dog" has R 1, F1 2/3; vs "a dog barked" R 2/3, F1 0.8, which wins.
    m = rouge(["a dog"], [["dog", "a dog barked"]])
    assert m["rouge1_recall"] == pytest.approx(2 / 3) and m["rouge1_f1"] == pytest.approx(0.8)


def test_rouge_is_the_papers_no_stemming_and_tokenises_like_rouge_score():
    """Stemming would match cats~cat, songs~song and sings~sing (recall 3/5 instead of 1/5)."""
    m = rouge(["the cats sang songs"], ["the cat sings a song"])
    assert m["rouge1_recall"] == pytest.approx(1 / 5) and m["rouge1_precision"] == pytest.approx(1 / 4)
    # Lower-cased, split on anything that is not a letter or digit: punctuation and case never count.
    m = rouge(["Piano-driven, SLOW!"], ["a slow piano driven ballad"])
    assert m["rouge1_recall"] == pytest.approx(3 / 5) and m["rouge2_recall"] == pytest.approx(1 / 4)
    assert m["rougeL_recall"] == pytest.approx(2 / 5)  # LCS "piano driven" (slow comes first in the reference)


def test_per_song_scores_come_with_the_metrics():
    predictions, references = ["the cat sat", "a dog"], [["a bird flew", REF], "a dog"]
    metrics, per_song = caption_scores(predictions, references)
    assert metrics == caption_metrics(predictions, references)
    assert per_song["rouge1_recall"] == [pytest.approx(3 / 6), pytest.approx(1.0)]  # best reference each
    assert per_song["rouge2_recall"] == [pytest.approx(2 / 5), pytest.approx(1.0)]
    require_wordnet()
    assert sum(per_song["meteor"]) / 2 == pytest.approx(metrics["meteor"])
    assert per_song["meteor"][1] == pytest.approx(1 - 0.5 * (1 / 2) ** 3, abs=1e-6)  # identical: one chunk of 2


def test_bootstrap_interval_brackets_the_mean_and_shrinks_with_more_songs():
    import numpy as np

    rng = np.random.default_rng(1)
    few, many = rng.random(20), rng.random(2000)
    low, high = bootstrap_interval(few)
    assert low < few.mean() < high
    assert bootstrap_interval(many)[1] - bootstrap_interval(many)[0] < (high - low) / 5
    assert bootstrap_interval(np.full(10, 0.3)) == (pytest.approx(0.3), pytest.approx(0.3))


def test_meteor_by_hand():
    require_wordnet()
    # Identical: P = R = 1, one chunk of 6 matches: 1 - 0.5 * (1/6)^3.
    assert meteor([REF], [REF])["meteor"] == pytest.approx(1 - 0.5 * (1 / 6) ** 3, abs=1e-6)
    # "a cat" vs "a cat sat on the mat": P = 1, R = 2/6, Fmean = PR / (0.9 P + 0.1 R),
    # one chunk of 2 matches: penalty 0.5 * (1/2)^3.
    p, r = 1.0, 2 / 6
    fmean = p * r / (0.9 * p + 0.1 * r)
    assert meteor(["a cat"], ["a cat sat on the mat"])["meteor"] == pytest.approx(fmean * (1 - 0.5 * 0.5**3), abs=1e-6)
    # NLTK aligns a repeated word to its last occurrence: "the" -> the second "the" of REF,
    # so "the cat" makes 2 chunks and the penalty is 0.5 * (2/2)^3. This is the paper's metric.
    assert meteor(["the cat"], [REF])["meteor"] == pytest.approx(fmean * 0.5, abs=1e-6)
    # WordNet synonyms count ("quick" ~ "fast": one chunk of 3 matches). NLTK looks synonyms
    # up after stemming the reference, so "film" ~ "movie" (stem "movi") does not match.
    assert meteor(["a good quick"], ["a good fast"])["meteor"] == pytest.approx(1 - 0.5 * (1 / 3) ** 3, abs=1e-6)


def test_metrics_have_the_documented_keys_in_range():
    m = caption_metrics(["a slow piano song about love", "fast synth"], ["a slow piano ballad about love", "a fast synth track"])
    for key in ("rouge1_recall", "rouge2_recall", "rougeL_recall", "rouge1_f1", "rouge2_f1", "rougeL_f1"):
        assert 0 <= m[key] <= 1
    require_wordnet()
    assert 0 < m["meteor"] < 1 and m["meteor_tokenizer"]


def test_without_wordnet_meteor_is_unavailable_with_the_reason_never_zero(monkeypatch):
    import alcap.metrics.wordnet as wordnet

    monkeypatch.setattr(wordnet, "wordnet_status", lambda: (False, "NLTK cannot find WordNet; run make"))
    m = caption_metrics(["a slow piano song"], ["a slow piano ballad"])
    assert m["meteor"] is None and m["meteor_unavailable"] == "NLTK cannot find WordNet; run make"
    assert m["rouge1_recall"] == pytest.approx(3 / 4)


def test_ci_fails_where_wordnet_is_missing(monkeypatch, capsys):
    import alcap.metrics.wordnet as wordnet

    monkeypatch.setattr(wordnet, "wordnet_status", lambda: (False, "no WordNet"))
    monkeypatch.setattr(wordnet, "DEBIAN_DIR", wordnet.Path("/nonexistent"))
    monkeypatch.setenv("CI", "true")
    assert wordnet.setup() == 1 and "CI needs WordNet" in capsys.readouterr().err
    monkeypatch.setenv("CI", "")
    assert wordnet.setup() == 0  # a user without root still gets a working install, without METEOR


def test_fallback_tokenizer_splits_sentences_like_word_tokenize():
    tokenize, name = tokenizer_for_meteor()
    assert tokenize("It's slow. The lyrics are sad!") == ["It", "'s", "slow", ".", "The", "lyrics", "are", "sad", "!"]
    assert name


def test_wordnet_install_layout(tmp_path):
    src = tmp_path / "debian"
    src.mkdir()
    (src / "data.noun").write_text("x")
    target = install_from_debian(src, tmp_path / "nltk_data")
    assert (target / "data.noun").read_text() == "x" and not (target / "data.noun").is_symlink()
    lines = lexnames_text().splitlines()
    assert len(lines) == 45 and lines[0] == "00\tadj.all\t3" and lines[3] == "03\tnoun.Tops\t1" and lines[44] == "44\tadj.ppl\t3"
    with pytest.raises(FileNotFoundError, match="apt-get install wordnet-base"):
        install_from_debian(tmp_path / "nowhere", tmp_path / "x")


def test_offline_meteor_tokenizer_is_word_tokenizes_own():
    """Without punkt the fallback must split words exactly as nltk.word_tokenize does (its
    NLTKWordTokenizer); the plain Treebank tokenizer differs on curly quotes, ellipses, dashes."""
    import nltk
    from nltk.tokenize import TreebankWordTokenizer

    from alcap.metrics.captioning import tokenizer_for_meteor

    tokenize, name = tokenizer_for_meteor()
    texts = ["She sings \u201cstay with me\u201d\u2026 and it\u2019s over", "A slow song -- mostly piano\u2014and strings",
             "Don't stop... the 'city' never sleeps"]
    differs = 0
    for text in texts:
        assert tokenize(text) == nltk.word_tokenize(text, preserve_line=True), text
        differs += TreebankWordTokenizer().tokenize(text) != tokenize(text)
    assert differs >= 2  # the texts exercise what the two tokenizers disagree on
    two = "It is slow. Then it\u2019s fast\u2026 really."
    assert tokenize(two) == [t for s in ("It is slow.", "Then it\u2019s fast\u2026 really.")
                             for t in nltk.word_tokenize(s, preserve_line=True)] or "punkt" in name


def test_meteor_scores_with_alcaps_wordnet_equal_nltks_own():
    """The reader that skips NLTK's mapping of WordNet 3.0 onto itself scores exactly as
    nltk.corpus.wordnet does, synonyms included (stage 3 of METEOR's matching)."""
    require_wordnet()
    from nltk.corpus import wordnet as nltk_wordnet
    from nltk.translate.meteor_score import meteor_score

    from alcap.metrics.wordnet import wordnet_reader

    ours = wordnet_reader()
    assert ours is wordnet_reader()  # loaded once per process
    pairs = [("a quick sad song about a lost love", "a fast melancholy tune about love that was lost"),
             ("the singer runs home through the big city", "the vocalist is running to his house in a large town"),
             ("gentle piano, minor key, slow", "soft keyboard in a minor mode played slowly")]
    for hypothesis, reference in pairs:
        args = ([reference.split()], hypothesis.split())
        expected = meteor_score(*args, alpha=0.9, beta=3, gamma=0.5, wordnet=nltk_wordnet)
        assert meteor_score(*args, alpha=0.9, beta=3, gamma=0.5, wordnet=ours) == expected
    assert {s.name() for s in ours.synsets("fast")} == {s.name() for s in nltk_wordnet.synsets("fast")}
    assert ours.get_version() == nltk_wordnet.get_version() == "3.0"
