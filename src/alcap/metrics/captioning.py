"""Captioning metrics as the paper computed them (HF `evaluate` defaults, as the original code called them).

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


def _rouge_scores(predictions: Sequence[str], refs: list[list[str]]) -> list[dict]:
    """Each prediction's rouge-score Scores against its best reference."""
    from rouge_score import rouge_scorer

    if len(refs) != len(predictions):
        raise ValueError(f"{len(predictions)} predictions but {len(refs)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=False)
    return [scorer.score_multi(ref, pred) for pred, ref in zip(predictions, refs)]


def _aggregate_rouge(scores: list[dict], bootstrap_samples: int = 1000, seed: int = 0) -> dict:
    from rouge_score import scoring

    aggregator = scoring.BootstrapAggregator(n_samples=bootstrap_samples)
    for score in scores:
        aggregator.add_scores(score)
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


def rouge(predictions: Sequence[str], references: Sequence, bootstrap_samples: int = 1000, seed: int = 0) -> dict:
    """{rouge1_recall, rouge1_f1, rouge1_precision, ..., rouge1_recall_ci95: [low, high], ...}."""
    return _aggregate_rouge(_rouge_scores(predictions, _as_reference_lists(references)), bootstrap_samples, seed)


def tokenizer_for_meteor():
    """NLTK's word_tokenize where its punkt_tab model is installed; otherwise word_tokenize's own
    word tokeniser (NLTKWordTokenizer, which unlike the plain Treebank one splits curly quotes,
    ellipses and dashes) after a regex sentence split (offline), named so results say which."""
    import nltk
    from nltk.tokenize import NLTKWordTokenizer

    try:
        nltk.data.find("tokenizers/punkt_tab/english/")
        return nltk.word_tokenize, "nltk.word_tokenize (punkt_tab)"
    except LookupError:
        words = NLTKWordTokenizer()

        def tokenize(text: str) -> list[str]:
            sentences = re.split(r"(?<=[.!?])\s+", text.strip())
            return [tok for sent in sentences if sent for tok in words.tokenize(sent)]

        return tokenize, "regex sentence split + NLTKWordTokenizer (NLTK punkt_tab not installed)"


def meteor(predictions: Sequence[str], references: Sequence) -> dict:
    """{"meteor": mean score} or {"meteor": None, "meteor_unavailable": reason} without WordNet."""
    return _meteor(predictions, _as_reference_lists(references))[0]


def _meteor(predictions: Sequence[str], refs: list[list[str]]) -> tuple[dict, list[float] | None]:
    """The METEOR metrics and each prediction's score against its best reference (None without WordNet)."""
    from nltk.translate.meteor_score import meteor_score

    from .wordnet import wordnet_reader, wordnet_status

    ok, reason = wordnet_status()
    if not ok:
        return {"meteor": None, "meteor_unavailable": reason}, None
    tokenize, tokenizer_name = tokenizer_for_meteor()
    wordnet = wordnet_reader()
    scores = [float(meteor_score([tokenize(r) for r in ref], tokenize(pred), alpha=0.9, beta=3, gamma=0.5,
                                 wordnet=wordnet))
              for pred, ref in zip(predictions, refs)]
    return {"meteor": float(np.mean(scores)) if scores else 0.0, "meteor_tokenizer": tokenizer_name}, scores


def caption_metrics(predictions: Sequence[str], references: Sequence, seed: int = 0) -> dict:
    return caption_scores(predictions, references, seed)[0]


def caption_scores(predictions: Sequence[str], references: Sequence, seed: int = 0) -> tuple[dict, dict[str, list[float]]]:
    """The corpus metrics (as `caption_metrics`) and, from the same scoring pass, each
    prediction's ROUGE recalls and METEOR (for intervals over songs and paired tests)."""
    refs = _as_reference_lists(references)
    rouge_scores = _rouge_scores(predictions, refs)
    meteor_metrics, meteor_scores = _meteor(predictions, refs)
    per_song = {f"{name}_recall": [float(s[name].recall) for s in rouge_scores] for name in ROUGE_TYPES}
    if meteor_scores is not None:
        per_song["meteor"] = meteor_scores
    return {**_aggregate_rouge(rouge_scores, seed=seed), **meteor_metrics}, per_song


def bootstrap_interval(values: np.ndarray, samples: int = 1000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean over the given items (e.g. test songs)."""
    values = np.asarray(values, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(samples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))
