"""GeRe: General Sample Replay (Zhang et al., arXiv 2508.04676). See docs/gere.md.

A fixed set of general texts, cut into ``seq_len``-token samples, is replayed during every task.
Besides their next-token loss (already in the loop's main loss), an auxiliary loss keeps the
model's last-layer hidden states (the LM-head input) close to those of the frozen starting model:
the threshold-based margin (TM) loss, or KL / L1 / L2 imitation for comparison.

samples.py: the general samples; reference.py: the starting model's activations on them, cached on
disk; losses.py: the auxiliary losses and their statistics; strategy.py: the ``gere`` strategy.
"""

from forgetless.replay.gere.losses import (RunningStats, aux_weight, kl_loss, l1_loss, l2_loss, margin_thresholds,
                                           reference_topk, tm_loss)
from forgetless.replay.gere.reference import (CACHE_VERSION, ReferenceStore, cache_key, compute_references,
                                              model_fingerprint)
from forgetless.replay.gere.samples import build_general_samples, check_source, general_row, read_texts
from forgetless.replay.gere.strategy import GeRe

__all__ = ["CACHE_VERSION", "GeRe", "ReferenceStore", "RunningStats", "aux_weight", "build_general_samples",
           "cache_key", "check_source", "compute_references", "general_row", "kl_loss", "l1_loss", "l2_loss",
           "margin_thresholds", "model_fingerprint", "read_texts", "reference_topk", "tm_loss"]
