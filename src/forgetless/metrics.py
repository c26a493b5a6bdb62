"""Continual-learning metrics from the accuracy matrix (pure numpy).

``acc[i, j]`` is the accuracy on task ``j`` after training task ``i`` (rows: training stages,
columns: tasks, both in stream order). Formulas and references: ``docs/metrics.md``.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def _check_matrix(acc: Any) -> np.ndarray:
    a = np.asarray(acc, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] == 0:
        raise ValueError(f"accuracy matrix must be square T x T with T >= 1, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError("accuracy matrix contains NaN or inf")
    if a.min() < 0.0 or a.max() > 1.0:
        raise ValueError(f"accuracies must lie in [0, 1], got values in [{a.min():g}, {a.max():g}]")
    return a


def _check_baseline(baseline: Any, T: int) -> np.ndarray:
    b = np.asarray(baseline, dtype=np.float64)
    if b.shape != (T,):
        raise ValueError(f"baseline must have length T={T}, got shape {b.shape}")
    if not np.all(np.isfinite(b)) or b.min() < 0.0 or b.max() > 1.0:
        raise ValueError("baseline accuracies must be finite and lie in [0, 1]")
    return b


def compute(acc: Any, baseline: Any = None) -> dict[str, Any]:
    """AP, BWT, FWT, forgetting and learning accuracy of a T x T accuracy matrix.

    Quantities that need an earlier task (``bwt``, ``forgetting``, ``fwt``) are ``None`` when
    T = 1 rather than 0, so "undefined" never reads as "no forgetting". ``fwt`` is also ``None``
    without ``baseline`` (accuracies of the untrained model). All values are plain Python floats
    so the dict goes straight into JSON.
    """
    a = _check_matrix(acc)
    T = a.shape[0]
    last = a[T - 1]
    diag = np.diag(a)
    out: dict[str, Any] = {
        "n_tasks": T,
        "ap": float(last.mean()),
        "learning_accuracy": float(diag.mean()),
        "bwt": None,
        "fwt": None,
        "forgetting": None,
        "forgetting_per_task": [],
        "bwt_per_task": [],
        "fwt_per_task": [],
    }
    if T > 1:
        bwt_j = last[: T - 1] - diag[: T - 1]
        # Chaudhry et al.: largest drop from any earlier row (0..T-2) to the last row.
        forget_j = a[: T - 1, : T - 1].max(axis=0) - last[: T - 1]
        out.update(
            bwt=float(bwt_j.mean()),
            bwt_per_task=[float(x) for x in bwt_j],
            forgetting=float(forget_j.mean()),
            forgetting_per_task=[float(x) for x in forget_j],
        )
    if baseline is not None:
        b = _check_baseline(baseline, T)
        if T > 1:
            fwt_j = np.array([a[j - 1, j] - b[j] for j in range(1, T)])
            out.update(fwt=float(fwt_j.mean()), fwt_per_task=[float(x) for x in fwt_j])
    return out


def normalized_score(acc: Any, reference: Any = None) -> dict[str, Any]:
    """Average normalised score: the mean over tasks of final score / reference score.

    ``reference`` is each task's score right after training on it (the diagonal, the default) or
    any other per-task reference, e.g. the final row of a ``joint`` run. A task whose reference is
    0 has no defined ratio and is left out of the mean (``excluded`` lists them); ``value`` is
    ``None`` when every task is left out. Ratios are not capped: above 1 means the task ended
    better than its reference.
    """
    a = _check_matrix(acc)
    T = a.shape[0]
    ref = np.diag(a) if reference is None else _check_baseline(reference, T)
    keep = [j for j in range(T) if ref[j] > 0]
    per_task = [float(a[T - 1, j] / ref[j]) if ref[j] > 0 else None for j in range(T)]
    value = float(np.mean([per_task[j] for j in keep])) if keep else None
    return {"value": value, "per_task": per_task, "excluded": [j for j in range(T) if ref[j] <= 0]}


def harmonic_mean(a: float, b: float) -> float:
    """GeRe's balance of general ability and AP: 2ab / (a + b), 0 if either is 0."""
    a, b = float(a), float(b)
    if not (np.isfinite(a) and np.isfinite(b)) or a < 0 or b < 0:
        raise ValueError(f"harmonic_mean needs finite non-negative values, got {a!r}, {b!r}")
    if a == 0.0 or b == 0.0:
        return 0.0
    return 2.0 * a * b / (a + b)


def general_ability(ppl_start: float, ppl_end: float) -> float:
    """Share of the starting model's general-text likelihood kept: ppl_start / ppl_end, capped at 1.

    ppl_start / ppl_end = exp(mean token log-likelihood now - at the start), i.e. the ratio of the
    geometric-mean probabilities the model gives held-out general tokens (1: nothing lost).
    """
    if not (ppl_start > 0 and ppl_end > 0):
        raise ValueError(f"perplexities must be positive, got {ppl_start!r}, {ppl_end!r}")
    return min(1.0, float(ppl_start) / float(ppl_end))
