"""GeRe's auxiliary losses on the last-layer hidden states (TM, L1, L2) or logits (KL), the TM
loss's per-dimension thresholds (from RunningStats over the reference activations) and the loss weight."""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F


class RunningStats:
    """Streaming per-dimension mean / variance in float64 (Chan et al.'s parallel merge).

    Each batch is reduced exactly (two-pass) and merged into the running moments, so the result
    does not suffer the cancellation of sum / sum-of-squares formulas when |mean| >> std.
    """

    def __init__(self, dim: int):
        self.count = 0
        self.mean = np.zeros(dim, dtype=np.float64)
        self.m2 = np.zeros(dim, dtype=np.float64)

    def update(self, x) -> None:
        """Add rows of ``x`` (n, dim)."""
        x = np.asarray(x, dtype=np.float64).reshape(-1, self.mean.shape[0])
        if x.shape[0] == 0:
            return
        other = RunningStats(x.shape[1])
        other.count = x.shape[0]
        other.mean = x.mean(axis=0)
        other.m2 = ((x - other.mean) ** 2).sum(axis=0)
        self.merge(other)

    def merge(self, other: "RunningStats") -> None:
        if other.count == 0:
            return
        n = self.count + other.count
        delta = other.mean - self.mean
        self.mean = self.mean + delta * (other.count / n)
        self.m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        self.count = n

    @property
    def var(self) -> np.ndarray:
        """Population variance (ddof = 0)."""
        return self.m2 / max(self.count, 1)

    @property
    def std(self) -> np.ndarray:
        return np.sqrt(self.var)

    def thresholds(self, k: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        s = self.std
        return self.mean + k * s, self.mean - k * s

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean.copy(), "m2": self.m2.copy()}

    def load_state_dict(self, d: dict) -> None:
        self.count = int(d["count"])
        self.mean = np.asarray(d["mean"], dtype=np.float64)
        self.m2 = np.asarray(d["m2"], dtype=np.float64)


def margin_thresholds(hidden: torch.Tensor, mask: torch.Tensor, k: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """tau+ = mean + k*std, tau- = mean - k*std per dimension over the real tokens (population std)."""
    h = hidden.reshape(-1, hidden.shape[-1])[mask.reshape(-1).bool()].double()
    mean = h.mean(dim=0)
    std = h.var(dim=0, correction=0).sqrt()
    return (mean + k * std).to(hidden.dtype), (mean - k * std).to(hidden.dtype)


def _mask3(mask: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if mask is None else mask.to(like.dtype).unsqueeze(-1)


def tm_loss(hidden: torch.Tensor, ref_hidden: torch.Tensor, tau_pos: torch.Tensor, tau_neg: torch.Tensor,
            mask: torch.Tensor | None = None, count: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Threshold-based margin loss: keep each activation on the reference's side of the band.

    States come from the reference: > tau+ positive, < tau- negative, otherwise neutral.
    Sum of element losses over the masked tokens / (number of nonzero element losses + 1e-8).
    ``count`` maps this forward's number of nonzero element losses to the whole step's (a sum over
    processes): the result is then this forward's share of the step's TM loss, so that the shares of
    all processes add up to the TM loss of the merged batch.
    """
    h = hidden.float()
    ref = ref_hidden.float()
    tp, tn = tau_pos.float(), tau_neg.float()
    pos = ref > tp
    neg = ref < tn
    neutral_loss = F.relu(h - tp) + F.relu(tn - h)
    elem = torch.where(pos, F.relu(tp - h), torch.where(neg, F.relu(h - tn), neutral_loss))
    m = _mask3(mask, elem)
    if m is not None:
        elem = elem * m
    n_nonzero = (elem.detach() > 0).sum()
    if count is not None:
        n_nonzero = count(n_nonzero)
    return elem.sum() / (n_nonzero + 1e-8)


def _masked_mean_tokens(per_token: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over tokens of a (n, L) tensor, counting only masked tokens."""
    if mask is None:
        return per_token.mean()
    m = mask.to(per_token.dtype)
    return (per_token * m).sum() / m.sum().clamp_min(1.0)


def l1_loss(hidden: torch.Tensor, ref_hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute difference per element over the masked tokens."""
    d = (hidden.float() - ref_hidden.float()).abs().mean(dim=-1)
    return _masked_mean_tokens(d, mask)


def l2_loss(hidden: torch.Tensor, ref_hidden: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared difference per element over the masked tokens."""
    d = (hidden.float() - ref_hidden.float()).pow(2).mean(dim=-1)
    return _masked_mean_tokens(d, mask)


def reference_topk(logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices and values of the k largest logits per token (what GeRe stores for KL)."""
    vals, idx = logits.float().topk(min(k, logits.shape[-1]), dim=-1)
    return idx, vals


def kl_loss(logits: torch.Tensor, ref_idx: torch.Tensor, ref_val: torch.Tensor, temperature: float = 2.0,
            mask: torch.Tensor | None = None) -> torch.Tensor:
    """T^2 * KL(p_ref || p_model) at temperature T over the reference's top-k support.

    Both distributions are softmaxes over the same k stored token ids (renormalised on that
    support), so storage is k ids + k values per token instead of the whole vocabulary.
    """
    t = float(temperature)
    student = logits.float().gather(-1, ref_idx.long()) / t
    teacher = ref_val.float() / t
    log_p_ref = F.log_softmax(teacher, dim=-1)
    log_p = F.log_softmax(student, dim=-1)
    kl = (log_p_ref.exp() * (log_p_ref - log_p)).sum(dim=-1)
    return _masked_mean_tokens(kl, mask) * t * t


def aux_weight(mode: str | float, ce: torch.Tensor | float | None, aux: torch.Tensor) -> torch.Tensor:
    """Weight of the auxiliary loss: a number (the paper's 1 or 100), or "dynamic" = CE / aux with
    no gradient through it."""
    if mode == "dynamic":
        a = aux.detach()
        c = torch.as_tensor(ce, dtype=a.dtype, device=a.device).detach()
        return torch.where(a > 0, c / torch.where(a > 0, a, torch.ones_like(a)), torch.zeros_like(a))
    try:
        return aux.new_tensor(float(mode))
    except (TypeError, ValueError):
        raise ValueError(f"unknown GeRe weight {mode!r}; expected a number or 'dynamic'") from None
