"""Per-example scores of a prediction against its reference, one function per metric.

Every score lies in [0, 1] so a task's mean is a cell of the score matrix (``metrics.compute``).
Which metric a task uses: ``Task.metric``, else the default of its kind (``DEFAULT_METRIC``).
Formulas and sources: ``docs/metrics.md``.
"""

from __future__ import annotations

import collections
import difflib
import re
import string
from functools import lru_cache
from typing import Callable, Sequence

from forgetless.config import DEFAULT_METRIC, METRICS_FOR_KIND

_WS = re.compile(r"\s+")
_TRAILING_PUNCT = ".,;:!?"
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Canonical form for exact match: strip, collapse whitespace runs to one space, lowercase,
    drop trailing ``.,;:!?`` (and any whitespace left before them)."""
    s = _WS.sub(" ", s.strip()).lower()
    return s.rstrip(_TRAILING_PUNCT).rstrip()


def exact_match(pred: str, ref: str) -> float:
    return float(normalize_answer(pred) == normalize_answer(ref))


def squad_normalize(s: str) -> str:
    """SQuAD v1.1's normalisation: lowercase, drop punctuation, drop articles a/an/the,
    collapse whitespace (the official evaluate-v1.1.py)."""
    s = "".join(ch for ch in s.lower() if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def token_f1(pred: str, ref: str) -> float:
    """SQuAD token-level F1 of the normalised tokens (bag-of-tokens overlap). Two empty
    answers score 1, one empty answer 0."""
    p, r = squad_normalize(pred).split(), squad_normalize(ref).split()
    if not p or not r:
        return float(p == r)
    common = sum((collections.Counter(p) & collections.Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


@lru_cache(maxsize=1)
def _rouge_scorer():
    from rouge_score import rouge_scorer

    # as Super-NaturalInstructions' compute_metrics.py: ROUGE-L F-measure with the Porter stemmer
    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure from the ``rouge-score`` package (longest common subsequence of tokens)."""
    return float(_rouge_scorer().score(ref, pred)["rougeL"].fmeasure)


def edit_similarity(pred: str, ref: str) -> float:
    """Character-level similarity 2 * matches / (len(pred) + len(ref)) from ``difflib``: what
    ``fuzzywuzzy.fuzz.ratio`` (TRACE's and CodeXGLUE's "edit similarity" for code) returns / 100
    in its pure-Python form. Two empty strings score 1."""
    return difflib.SequenceMatcher(None, pred, ref, autojunk=False).ratio()


SCORERS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "f1": token_f1,
    "rouge_l": rouge_l,
    "edit_similarity": edit_similarity,
}


def metric_for(kind: str, metric: str | None) -> str:
    """The metric a task of ``kind`` is scored with: ``metric`` if given, else the kind's default.
    ValueError when the metric does not fit the kind (``accuracy`` is for multiple choice only)."""
    m = metric or DEFAULT_METRIC[kind]
    if m not in METRICS_FOR_KIND[kind]:
        raise ValueError(f"metric {m!r} does not apply to {kind} tasks; use one of {METRICS_FOR_KIND[kind]}")
    return m


def score_texts(metric: str, preds: Sequence[str], refs: Sequence[str | Sequence[str]]) -> list[float]:
    """Per-example scores of generated texts. A reference may be a list of acceptable answers:
    the best score over them counts (SQuAD's and SuperNI's ``metric_max_over_ground_truths``)."""
    if metric not in SCORERS:
        raise ValueError(f"unknown text metric {metric!r}; use one of {list(SCORERS)}")
    f = SCORERS[metric]
    return [f(p, r) if isinstance(r, str) else max(f(p, x) for x in r) for p, r in zip(preds, refs)]
