"""Calibration probe: does the memory model predict which rows the model is forgetting?

Every ``every`` steps a forward-only pass over a fixed, seeded slice of the replay memory measures
each row's current loss; its **loss increase** (current loss - loss when stored) is ranked against
the predicted forgottenness ``1 - m`` of the memory model (and of any shadow models in
``replay.mssr.calibration.compare``), against the fitted model's predicted loss increase
``stored * (1/m - 1)`` (``increase``), against **recency** (steps since the row was last trained)
and against a **constant** (no ranking: its correlation is undefined and reported as None).
The pass is evaluation work (its tokens go to ``eval_tokens``, its time to ``time_eval_s``) and
takes no replay decision. docs/mssr.md §6.
"""

from __future__ import annotations

import math
import time

import numpy as np

# the candidates of issue 20 point 2, as overrides of replay.mssr.retention
CANDIDATES = {
    "legacy": {"model": "legacy"},
    "steps": {"model": "fitted", "clock": "steps"},
    "task": {"model": "fitted", "clock": "task"},
    "interference": {"model": "fitted", "clock": "interference"},
    "absolute": {"model": "fitted", "reference": "absolute"},
    "per_task": {"model": "fitted", "fit": "task"},
}
N_BINS = 10  # calibration plot: predicted retention in [0, 1] in this many equal bins
_MIX = np.uint64(0x9E3779B97F4A7C15)


def rank(x) -> np.ndarray:
    """Ranks 1..n, ties get their mean rank."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="stable")
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    _, inv, cnt = np.unique(x, return_inverse=True, return_counts=True)
    sums = np.bincount(inv, weights=r)
    return (sums / cnt)[inv]


def spearman(a, b) -> float | None:
    """Spearman's rank correlation (Pearson of mean ranks); None when either side is constant."""
    ra, rb = rank(a), rank(b)
    ra -= ra.mean()
    rb -= rb.mean()
    den = math.sqrt(float((ra * ra).sum()) * float((rb * rb).sum()))
    return None if den == 0 else float((ra * rb).sum() / den)


def forward_losses(ctx, samples, as_eval: bool = False) -> np.ndarray:
    """``ctx.sample_losses`` in chunks of ``eval.batch_size``; its tokens count as a strategy's
    ``extra_forward_tokens``, or, for a diagnostic (``as_eval``), as ``eval_tokens``."""
    c = ctx.counters
    before = c.extra_forward_tokens
    bs = ctx.config.eval.batch_size
    parts = [np.asarray(ctx.sample_losses(samples[i:i + bs]), dtype=np.float64) for i in range(0, len(samples), bs)]
    if as_eval:
        moved = c.extra_forward_tokens - before
        c.extra_forward_tokens -= moved
        c.eval_tokens += moved
    return np.concatenate(parts) if parts else np.empty(0)


def slice_rows(sample_ids: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Rows of the ``n`` ids with the smallest seeded hash: the same rows while they stay in memory."""
    with np.errstate(over="ignore"):
        h = (np.asarray(sample_ids).astype(np.uint64) + np.uint64(seed & 0xFFFFFFFF)) * _MIX
        h ^= h >> np.uint64(29)
        h *= _MIX
    return np.sort(np.argsort(h, kind="stable")[:n])


class CalibrationProbe:
    """Kept by a strategy with memory strength; the run loop calls ``probe(step)`` after each step."""

    def __init__(self, host, models: dict):
        """``models``: name -> memory model (``"model"`` is the one that drives replay)."""
        self.host, self.models = host, models
        self.cfg = host.rcfg.mssr.calibration
        self.ref = next(m for m in models.values() if hasattr(m, "task_sxy"))  # a fitted model: stored losses
        self.records: list[dict] = []
        self.bin_sum = np.zeros(N_BINS)
        self.bin_n = np.zeros(N_BINS, dtype=np.int64)

    def every(self) -> int:
        """Steps between probes: ``rows`` forward passes <= ``share`` of a step's ~3 x batch forward-equivalents."""
        c = self.cfg
        return c.every or max(1, math.ceil(c.rows / (3.0 * c.share * self.host.batch_size())))

    def probe(self, step: int) -> dict | None:
        mem, ctx = self.host.memory, self.host.ctx
        if not self.cfg.enabled or len(mem) < 2 or ctx.sample_losses is None or step % self.every():
            return None
        t0 = time.perf_counter()
        n = len(mem)
        rows = slice_rows(mem.column("sample_id")[:n], self.cfg.rows, int(ctx.seed))
        samples = mem.get(rows)
        loss = forward_losses(ctx, samples, as_eval=True)  # a diagnostic: evaluation work
        rec = self.record(step, rows, loss)
        ctx.counters.time_eval_s += time.perf_counter() - t0
        return rec

    def record(self, step: int, rows: np.ndarray, loss: np.ndarray) -> dict:
        """Score every predictor against the measured loss increase of ``rows`` (pure bookkeeping)."""
        stored = self.ref.col("loss_stored")[rows]
        increase = loss - stored
        ok = np.isfinite(increase)
        rows, increase, stored = rows[ok], increase[ok], stored[ok]
        preds = {name: 1.0 - m.strength()[rows] for name, m in self.models.items()}
        # the fitted model's own prediction of the measured quantity: loss = stored / m
        preds["increase"] = stored * (1.0 / np.maximum(self.ref.strength()[rows], 1e-300) - 1.0)
        preds["recency"] = step - self.ref.col("last_review")[rows].astype(np.float64)
        preds["constant"] = np.zeros(len(rows))
        rho = {name: spearman(p, increase) for name, p in preds.items()}
        m = 1.0 - preds["model"]
        b = np.clip((m * N_BINS).astype(np.int64), 0, N_BINS - 1)
        self.bin_sum += np.bincount(b, weights=increase, minlength=N_BINS)
        self.bin_n += np.bincount(b, minlength=N_BINS)
        rec = {"step": int(step), "task": int(self.host.task_index), "rows": int(len(rows)),
               "mean_increase": float(increase.mean()) if len(rows) else None, "spearman": rho}
        self.records.append(rec)
        return rec

    def report(self) -> dict:
        names = list(self.records[0]["spearman"]) if self.records else []
        mean = {}
        for k in names:
            v = [r["spearman"][k] for r in self.records if r["spearman"][k] is not None]
            mean[k] = float(np.mean(v)) if v else None
        pair = [(r["spearman"]["model"], r["spearman"]["recency"]) for r in self.records
                if r["spearman"]["model"] is not None and r["spearman"]["recency"] is not None]
        return {"every": self.every(), "rows": self.cfg.rows, "probes": len(self.records), "spearman_mean": mean,
                "model_beats_recency": sum(a > b for a, b in pair), "paired_probes": len(pair),
                "bins": {"edges": np.linspace(0, 1, N_BINS + 1).tolist(), "n": self.bin_n.tolist(),
                         "mean_increase": [float(s / k) if k else None for s, k in zip(self.bin_sum, self.bin_n)]},
                "records": [dict(r) for r in self.records]}

    def state_dict(self) -> dict:
        return {"bin_sum": self.bin_sum.copy(), "bin_n": self.bin_n.copy(), "records": [dict(r) for r in self.records]}

    def load_state_dict(self, d: dict) -> None:
        self.bin_sum = np.asarray(d["bin_sum"], dtype=np.float64)
        self.bin_n = np.asarray(d["bin_n"], dtype=np.int64)
        self.records = [dict(r) for r in d["records"]]
