"""The ``gere`` strategy: merges general samples into every step of every task and adds the
auxiliary loss against the starting model's reference activations."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from forgetless.data.task import Sample
from forgetless.errors import InputError
from forgetless.losses import token_losses
from forgetless.replay.base import BaseStrategy, ReplayBatch, StrategyContext, register
from forgetless.replay.gere.losses import aux_weight, kl_loss, l1_loss, l2_loss, tm_loss
from forgetless.replay.gere.reference import ReferenceStore, cache_key, compute_references, model_fingerprint
from forgetless.replay.gere.samples import RNG_SALT, build_general_samples, general_row, read_texts


def _align(t: torch.Tensor, rows: torch.Tensor, offsets: torch.Tensor, length: int) -> torch.Tensor:
    """``t[rows, off:off+length]`` per row (rows of a right- or left-padded merged batch)."""
    if bool((offsets == 0).all()):
        return t[rows, :length]
    pos = offsets[:, None] + torch.arange(length, device=t.device)[None, :]
    sub = t[rows]
    if sub.dim() == 2:
        return sub.gather(1, pos)
    return sub.gather(1, pos[..., None].expand(-1, -1, sub.shape[-1]))


@register("gere")
class GeRe(BaseStrategy):
    """General sample replay with a TM (or KL / L1 / L2) loss on the last-layer hidden states.

    Replays during every task, including the first; ``replay.budget`` does not apply (the general
    samples are not task replay).
    """

    name = "gere"
    needs_hidden_states = True

    def __init__(self, ctx: StrategyContext):
        super().__init__(ctx)
        self.cfg = ctx.config.replay.gere
        self.rng = np.random.default_rng([ctx.seed, RNG_SALT])
        self.samples: list[Sample] | None = None
        self.store: ReferenceStore | None = None
        self.cache_key: str | None = None
        self._resumed_key: str | None = None
        # the references belong to the starting model: its identity is taken now, before a resumed
        # run loads trained weights, so a resume finds the same cache entry with LoRA or full FT
        self._base_fp = model_fingerprint(ctx.model) if ctx.model is not None else ""
        if ctx.model is not None and ctx.tokenizer is not None:
            self._ensure_samples()  # a bad general-text source fails before the run writes anything
            # now, while the weights are the starting model's (with full fine-tuning the only moment),
            # and outside the run's timers: the cost is charged from the cache entry instead
            self._ensure_references()
        self.perm = np.zeros(0, dtype=np.int64)
        self.pos = 0
        self._tau: tuple[torch.Tensor, torch.Tensor] | None = None
        self.last: dict[str, torch.Tensor] = {}  # detached aux / weight of the last step, for logging

    # -- setup --------------------------------------------------------------------------------
    def _ensure_samples(self) -> list[Sample]:
        if self.samples is None:
            if self.cfg.source is None:
                from forgetless.data.general import general_texts

                texts, source = general_texts("train"), "general_texts('train')"
            else:
                texts, source = read_texts(self.cfg.source), self.cfg.source
            self.samples = build_general_samples(texts, self.ctx.tokenizer, self.cfg.n_samples,
                                                 self.cfg.seq_len, self.ctx.seed, source)
        return self.samples

    def _parts(self) -> list[str]:
        if self.cfg.loss in ("tm", "l1", "l2"):
            return ["hidden"]
        if self.cfg.loss == "kl":
            return [f"topk{self.cfg.kl_top_k}"]
        return []

    def cache_dir(self) -> Path:
        base = Path(self.ctx.run_dir).parent if self.ctx.run_dir is not None else Path(tempfile.gettempdir())
        return base / ".cache" / "gere"

    def _ensure_references(self) -> None:
        if self.store is not None or self.cfg.loss == "ce":
            return
        samples = self._ensure_samples()
        mcfg = self.ctx.config.model
        name = f"{mcfg.name}@{mcfg.revision}:{mcfg.dtype}"
        fp = self._base_fp or model_fingerprint(self.ctx.model)
        self.cache_key = cache_key(name, samples, self._parts(), fp)
        directory = self.cache_dir() / self.cache_key
        self._check_resumed_key()
        self.store, _ = compute_references(
            self.ctx.model, samples, directory, store_hidden=self.cfg.loss in ("tm", "l1", "l2"),
            top_k=self.cfg.kl_top_k if self.cfg.loss == "kl" else None,
            batch_size=self.cfg.ref_batch_size, device=self.ctx.device)
        # charged to every run that uses the references, whether this one computed them or found them
        # cached (runs sharing an output directory share the cache): set, not added, so a resume agrees
        self.ctx.counters.reference_tokens = len(samples) * samples[0].n_tokens
        self.ctx.counters.time_reference_s = float(self.store.meta.get("time_s", 0.0))

    def _check_resumed_key(self) -> None:
        if self._resumed_key is not None and self.cache_key is not None and self._resumed_key != self.cache_key:
            raise InputError(f"GeRe: the run's reference activations ({self._resumed_key}) are not those of "
                             f"this starting model and general samples ({self.cache_key}); resume with the same "
                             "model and replay.gere settings", field="model.name")

    def thresholds(self) -> tuple[torch.Tensor, torch.Tensor]:
        tp, tn = self.store.stats.thresholds(self.cfg.k)
        return torch.as_tensor(tp, dtype=torch.float32), torch.as_tensor(tn, dtype=torch.float32)

    # -- contract -----------------------------------------------------------------------------
    def on_task_start(self, task, task_index: int, step: int) -> None:
        self._ensure_samples()
        self._ensure_references()

    def _take(self, count: int) -> np.ndarray:
        """Next ``count`` indices from successive seeded permutations; at a permutation boundary the
        group continues into the next one, skipping indices already in the group when possible."""
        n = len(self._ensure_samples())
        group: list[int] = []
        while len(group) < count:
            if self.pos >= self.perm.shape[0]:
                p = self.rng.permutation(n)
                if group and n >= count:  # move repeats of this group's indices behind the ones it needs
                    fresh = [int(i) for i in p if int(i) not in group]
                    need = count - len(group)
                    p = np.asarray(fresh[:need] + [int(i) for i in p if int(i) in group] + fresh[need:],
                                   dtype=np.int64)
                self.perm, self.pos = p, 0
            take = min(count - len(group), self.perm.shape[0] - self.pos)
            group += [int(i) for i in self.perm[self.pos:self.pos + take]]
            self.pos += take
        return np.asarray(group, dtype=np.int64)

    def n_general(self, batch_size: int) -> int:
        """General samples to merge this step."""
        if self.cfg.mixing == "interpolate":
            return self.cfg.per_batch
        whole = int(np.floor(self.cfg.ratio))
        return whole * batch_size + int(self.rng.binomial(batch_size, self.cfg.ratio - whole))

    def replay_batch(self, step: int, batch_size: int) -> ReplayBatch | None:
        count = self.n_general(batch_size)
        if count <= 0:
            return None
        samples = self._ensure_samples()
        return ReplayBatch([samples[i] for i in self._take(count)])

    @property
    def extra_loss_is_share(self) -> bool:
        """TM on several processes: extra_loss is this process's share of the step's TM loss (normalised
        by the step's violating-element count summed over processes), not a mean over its rows."""
        return self.cfg.loss == "tm" and self.ctx.reduce_sum is not None

    def extra_loss(self, batch: dict[str, torch.Tensor], outputs: Any) -> torch.Tensor | None:
        if self.cfg.loss == "ce":
            return None
        ids = batch["sample_ids"]
        rows = torch.nonzero(ids < 0).flatten()
        if rows.numel() == 0:
            if self.extra_loss_is_share:  # every process takes part in the step's count
                self.ctx.reduce_sum(torch.zeros((), dtype=torch.long, device=ids.device))
            return None
        self._ensure_references()
        ref_rows = general_row(ids[rows].cpu().numpy())
        length = self.samples[0].n_tokens
        am = batch["attention_mask"]
        if am.shape[1] < length:
            raise RuntimeError(f"GeRe: merged batch has {am.shape[1]} positions, general samples have {length}; "
                               "data.max_length must not truncate them")
        offsets = am[rows].long().argmax(dim=1)  # first real token: 0 when right-padded
        mask = _align(am, rows, offsets, length).bool() & (_align(batch["labels"], rows, offsets, length) != -100)
        dev = am.device
        if self.cfg.loss == "kl":
            logits = _align(outputs.logits, rows, offsets, length)
            idx = torch.as_tensor(self.store.rows("topk_idx", ref_rows), device=dev)
            val = torch.as_tensor(self.store.rows("topk_val", ref_rows), device=dev)
            aux = kl_loss(logits, idx, val, self.cfg.kl_temperature, mask)
        else:
            h = _align(outputs.hidden_states[-1], rows, offsets, length)
            ref = torch.as_tensor(self.store.rows("hidden", ref_rows), device=dev)
            if self.cfg.loss == "tm":
                if self._tau is None or self._tau[0].device != h.device:
                    self._tau = tuple(t.to(h.device) for t in self.thresholds())
                aux = tm_loss(h, ref, *self._tau, mask=mask, count=self.ctx.reduce_sum)
            elif self.cfg.loss == "l1":
                aux = l1_loss(h, ref, mask)
            else:
                aux = l2_loss(h, ref, mask)
        ce = None
        if self.cfg.weight == "dynamic":
            with torch.no_grad():
                tl, has_label = token_losses(_align(outputs.logits, rows, offsets, length),
                                             _align(batch["labels"], rows, offsets, length))
                ce = (tl * has_label).sum() / has_label.sum()  # token mean, as the loop's CE
        w = aux_weight(self.cfg.weight, ce, aux)
        self.last = {"aux": aux.detach(), "weight": w}
        return w * aux

    def state_dict(self) -> dict:
        return {"perm": self.perm.copy(), "pos": int(self.pos), "rng": self.rng.bit_generator.state,
                "cache_key": self.cache_key}

    def load_state_dict(self, d: dict) -> None:
        self.perm = np.asarray(d["perm"], dtype=np.int64)
        self.pos = int(d["pos"])
        self.rng.bit_generator.state = d["rng"]
        self._resumed_key = d.get("cache_key")
        self._check_resumed_key()
