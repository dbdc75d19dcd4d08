"""Captioning metrics as the paper computed them (HF `evaluate` defaults, SPEC section 5).

ROUGE: Google's `rouge-score`, no stemming, best reference per prediction (`score_multi`),
bootstrap aggregation (mid estimate and 95% interval); recall is the paper-comparable number,
F1 is reported beside it. METEOR: NLTK's `meteor_score` (alpha 0.9, beta 3, gamma 0.5,
WordNet synonyms), best reference per prediction, averaged over predictions.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def _as_reference_lists(references: Sequence) -> list[list[str]]:
    return [[r] if isinstance(r, str) else list(r) for r in references]


def rouge(predictions: Sequence[str], references: Sequence, bootstrap_samples: int = 1000, seed: int = 0) -> dict:
    """{rouge1_recall, rouge1_f1, rouge1_precision, ..., rouge1_recall_ci95: [low, high], ...}."""
    from rouge_score import rouge_scorer, scoring

    refs = _as_reference_lists(references)
    if len(refs) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(refs)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    aggregator = scoring.BootstrapAggregator(n_samples=bootstrap_samples)
    for pred, ref in zip(predictions, refs):
        aggregator.add_scores(scorer.score_multi(ref, pred))
    state = np.random.get_state()
    np.random.seed(seed)  # rouge-score resamples with numpy's global RNG
    try:
        result = aggregator.aggregate()
    finally:
        np.random.set_state(state)
    out = {}
    for name in ROUGE_TYPES:
        low, mid, high = result[name].low, result[name].mid, result[name].high
        out[f"{name}_recall"] = float(mid.recall)
        out[f"{name}_precision"] = float(mid.precision)
        out[f"{name}_f1"] = float(mid.fmeasure)
        out[f"{name}_recall_ci95"] = [float(low.recall), float(high.recall)]
        out[f"{name}_f1_ci95"] = [float(low.fmeasure), float(high.fmeasure)]
    return out


def tokenizer_for_meteor():
    """NLTK's word_tokenize where its punkt_tab model is installed; otherwise the same Treebank
    word tokeniser after a regex sentence split (offline), named so results say which was used."""
    import nltk
    from nltk.tokenize import TreebankWordTokenizer

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return nltk.word_tokenize, "nltk.word_tokenize (punkt_tab)"
    except LookupError:
        treebank = TreebankWordTokenizer()

        def tokenize(text: str) -> list[str]:
            sentences = re.split(r"(?<=[.!?])\s+", text.strip())
            return [tok for sent in sentences if sent for tok in treebank.tokenize(sent)]

        return tokenize, "regex sentence split + Treebank words (NLTK punkt_tab not installed)"


def meteor(predictions: Sequence[str], references: Sequence) -> dict:
    """{"meteor": mean score} or {"meteor": None, "meteor_unavailable": reason} without WordNet."""
    from .wordnet import wordnet_status

    ok, reason = wordnet_status()
    if not ok:
        return {"meteor": None, "meteor_unavailable": reason}
    scores, tokenizer_name = _meteor_scores(predictions, _as_reference_lists(references))
    return {"meteor": float(np.mean(scores)) if scores else 0.0, "meteor_tokenizer": tokenizer_name}


def _meteor_scores(predictions: Sequence[str], refs: list[list[str]]) -> tuple[list[float], str]:
    """Per-prediction METEOR against its best reference (WordNet must be available)."""
    from nltk.translate.meteor_score import meteor_score

    tokenize, tokenizer_name = tokenizer_for_meteor()
    return [meteor_score([tokenize(r) for r in ref], tokenize(pred), alpha=0.9, beta=3, gamma=0.5)
            for pred, ref in zip(predictions, refs)], tokenizer_name


def caption_metrics(predictions: Sequence[str], references: Sequence, seed: int = 0) -> dict:
    return {**rouge(predictions, references, seed=seed), **meteor(predictions, references)}


PER_SONG_KEYS = ("rouge1_recall", "rouge2_recall", "rougeL_recall", "meteor")


def per_song_scores(predictions: Sequence[str], references: Sequence) -> dict[str, np.ndarray]:
    """Each song's ROUGE recalls (best reference) and METEOR, for intervals over songs and paired tests."""
    from rouge_score import rouge_scorer

    refs = _as_reference_lists(references)
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    scores = [scorer.score_multi(ref, pred) for pred, ref in zip(predictions, refs)]
    out = {f"{name}_recall": np.array([s[name].recall for s in scores]) for name in ROUGE_TYPES}
    from .wordnet import wordnet_status

    if wordnet_status()[0]:
        out["meteor"] = np.array(_meteor_scores(predictions, refs)[0])
    return out


def bootstrap_interval(values: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over the given items (e.g. test songs)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))
