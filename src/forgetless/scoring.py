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


# ---- final answers of math solutions (GSM8K, MATH) ----------------------------------------------

# lm-evaluation-harness gsm8k.yaml, "flexible-extract": a run of digits, '$', '.' and ','
_GSM8K_NUMBER = re.compile(r"-?[$0-9.,]{2,}|-?[0-9]+")


def gsm8k_answer(text: str) -> str:
    """The final answer of a GSM8K solution: the first number after the last ``####`` (the
    dataset's answer line), else the last number in the text (lm-eval's strict-match, then its
    flexible-extract). Normalised as lm-eval's gsm8k exact match (commas, ``$`` and a trailing
    ``.`` removed), and a decimal's trailing zeros dropped ("18.00" -> "18"). "" when none."""
    head, sep, tail = text.rpartition("####")
    nums = _GSM8K_NUMBER.findall(tail) if sep else _GSM8K_NUMBER.findall(text)
    if not nums:
        return ""
    ans = (nums[0] if sep else nums[-1]).replace(",", "").replace("$", "").rstrip(".")
    if re.fullmatch(r"-?\d+\.\d+", ans):
        ans = ans.rstrip("0").rstrip(".")
    return "0" if ans in ("-0", "") else ans


def gsm8k_exact_match(pred: str, ref: str) -> float:
    """1 when the final answers (:func:`gsm8k_answer`) are equal; a prediction without a number
    scores 0."""
    a = gsm8k_answer(pred)
    return float(a != "" and a == gsm8k_answer(ref))


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` (braces balanced), ``\\boxed x`` or ``\\fbox{...}``
    in ``text``; None when there is none or its braces do not close (the MATH paper's
    ``last_boxed_only_string`` + ``remove_boxed``)."""
    i = text.rfind("\\boxed")
    if i < 0:
        i = text.rfind("\\fbox")
        if i < 0:
            return None
    rest = text[i:]
    if rest.startswith("\\boxed "):
        return rest[len("\\boxed "):].split("$")[0].strip()
    start = rest.find("{")
    if start < 0:
        return None
    depth = 0
    for j in range(start, len(rest)):
        depth += {"{": 1, "}": -1}.get(rest[j], 0)
        if depth == 0:
            return rest[start + 1 : j]
    return None


def _fix_fracs(s: str) -> str:
    """\\frac12 -> \\frac{1}{2}, \\frac1{72} -> \\frac{1}{72}."""
    parts = s.split("\\frac")
    out = parts[0]
    for p in parts[1:]:
        out += "\\frac"
        if p[:1] == "{" or len(p) < 2:
            out += p
        elif p[1] == "{":
            out += "{" + p[0] + "}" + p[1:]
        else:
            out += "{" + p[0] + "}{" + p[1] + "}" + p[2:]
    return out


def _fix_sqrt(s: str) -> str:
    """\\sqrt3 -> \\sqrt{3}."""
    return re.sub(r"\\sqrt([^{\\s])", r"\\sqrt{\1}", s)


def math_normalize(s: str) -> str:
    """The MATH paper's answer normalisation (Hendrycks et al. 2021, ``strip_string`` in its
    ``math_equivalence.py``, as lm-eval's ``hendrycks_math`` uses it): drop line breaks, ``\\!``,
    ``\\left``/``\\right``, degrees, ``\\$``, a trailing ``\\text{ unit}``, ``\\%`` and spaces;
    ``tfrac``/``dfrac`` -> ``frac``; ``.5`` -> ``0.5``; a short ``x =`` prefix removed; shorthand
    ``\\frac12`` / ``\\sqrt3`` braced; ``0.5`` -> ``\\frac{1}{2}``; ``a/b`` of integers ->
    ``\\frac{a}{b}``."""
    s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = s.replace("^{\\circ}", "").replace("^\\circ", "").replace("\\$", "")
    s = s.split("\\text{ ")[0] if s.count("\\text{ ") == 1 else s  # units on the right
    s = s.replace("\\%", "")
    s = s.replace(" .", " 0.").replace("{.", "{0.")
    if s.startswith("."):
        s = "0" + s
    lhs = s.split("=")
    if len(lhs) == 2 and len(lhs[0]) <= 2:
        s = lhs[1]
    s = _fix_sqrt(s).replace(" ", "")
    s = _fix_fracs(s)
    if s == "0.5":
        s = "\\frac{1}{2}"
    m = re.fullmatch(r"(\d+)/(\d+)", s)
    if m:
        s = f"\\frac{{{int(m[1])}}}{{{int(m[2])}}}"
    return s


def math_exact_match(pred: str, ref: str) -> float:
    """1 when the last boxed answers of prediction and reference are equal after
    :func:`math_normalize`; a prediction without a boxed answer scores 0."""
    a, b = last_boxed(pred), last_boxed(ref)
    return float(a is not None and b is not None and math_normalize(a) == math_normalize(b))


SCORERS: dict[str, Callable[[str, str], float]] = {
    "exact_match": exact_match,
    "f1": token_f1,
    "rouge_l": rouge_l,
    "edit_similarity": edit_similarity,
    "gsm8k_exact_match": gsm8k_exact_match,
    "math_exact_match": math_exact_match,
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
