"""Next-token losses shared by training, evaluation and replay strategies (one definition)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def token_losses(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token cross-entropy per position (B, L-1) and the mask of positions with a label."""
    shift_logits = logits[:, :-1, :].float()
    shift_labels = labels[:, 1:]
    loss = F.cross_entropy(
        shift_logits.reshape(-1, shift_logits.shape[-1]), shift_labels.reshape(-1),
        ignore_index=-100, reduction="none",
    ).view(shift_labels.shape)
    return loss, shift_labels != -100


def sample_means(loss: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Each sample's mean token loss (B,): what memory strengths and probes observe."""
    return (loss * mask).sum(1) / mask.sum(1).clamp(min=1)
