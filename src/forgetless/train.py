"""The continual loop for one task: batches, merged replay, one forward, per-sample losses.

Per-sample losses come from the training forward pass itself (token losses averaged per sample), so
memory-strength bookkeeping costs no extra forward pass. Replay decisions are made identically on
every process (same seed, same state); each process trains on its slice of the merged batch and the
per-sample losses are gathered so every process observes the whole batch.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from forgetless.config import TrainConfig
from forgetless.data.task import Sample
from forgetless.losses import sample_means, token_losses
from forgetless.replay.base import Strategy, WorkCounters


# the loop RNG (task batches, merge order) is default_rng([seed, LOOP_RNG_TAG]) in forgetless run and
# in the Trainer integration alike, so both make the same draws
LOOP_RNG_TAG = 7


def collate(samples: list[Sample], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest sample; labels -100 on padding."""
    n = len(samples)
    width = max(s.n_tokens for s in samples)
    input_ids = torch.full((n, width), pad_id, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    attention = torch.zeros((n, width), dtype=torch.long)
    for i, s in enumerate(samples):
        L = s.n_tokens
        input_ids[i, :L] = torch.from_numpy(s.input_ids)
        labels[i, :L] = torch.from_numpy(s.labels)
        attention[i, :L] = 1
    ids = torch.tensor([s.sample_id for s in samples], dtype=torch.long)
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels, "sample_ids": ids}


def micro_batches(samples: list[Sample], accum: int) -> list[tuple[list[Sample], int]]:
    """Split a step's samples into forward passes: task and general (GeRe, id < 0) samples apart,
    each group into ``accum`` chunks. Returns (chunk, number of chunks of its group).

    Keeping the groups apart avoids padding 20-token task samples to 563-token general samples
    (measured: the GeRe demo run was 4.3x slower than uniform with one padded batch). The loss is
    a token sum over the whole step either way, so the gradient is the same.
    """
    out = []
    for group in ([s for s in samples if s.sample_id >= 0], [s for s in samples if s.sample_id < 0]):
        parts = [group[i::accum] for i in range(accum) if group[i::accum]]
        out += [(p, len(parts)) for p in parts]
    return out


def steps_for_task(cfg: TrainConfig, n_train: int) -> int:
    if cfg.steps_per_task is not None:
        return cfg.steps_per_task
    return max(1, math.ceil(cfg.epochs * n_train / cfg.batch_size))


class BatchSampler:
    """Draws current-task batches from seeded epoch permutations; a partial batch at the end of an
    epoch continues into the next permutation, so every step has exactly ``batch_size`` samples."""

    def __init__(self, n: int, batch_size: int, rng: np.random.Generator):
        self.n, self.batch_size, self.rng = n, batch_size, rng
        self.perm = rng.permutation(n)
        self.pos = 0

    def next(self) -> np.ndarray:
        out = []
        need = self.batch_size
        while need > 0:
            if self.pos >= self.n:
                self.perm = self.rng.permutation(self.n)
                self.pos = 0
            take = min(need, self.n - self.pos)
            out.append(self.perm[self.pos : self.pos + take])
            self.pos += take
            need -= take
        return np.concatenate(out)


def lr_factor(cfg: TrainConfig, steps: int, step: int) -> float:
    """This task's lr / base lr at its ``step`` (0-based): linear warmup, then constant or cosine to 0."""
    warm = cfg.warmup_steps
    if warm and step < warm:
        return (step + 1) / warm
    if cfg.schedule == "cosine":
        progress = (step - warm) / max(1, steps - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return 1.0


class Optimization:
    """The run's one AdamW, prepared once, and each task's learning-rate schedule.

    Accelerate keeps every optimizer it prepares (``Accelerator._optimizers``), so one per task would
    leak its state; here each task clears the moments instead (a fresh start per task, as before).
    The lr is set here once per optimizer step: a scheduler passed to ``accelerator.prepare`` is
    stepped ``num_processes`` times per step (AcceleratedScheduler without ``split_batches``), which
    ran a cosine schedule to 0 after 1/N of each task on N processes.
    """

    def __init__(self, model, accelerator, cfg: TrainConfig):
        params = [p for p in model.parameters() if p.requires_grad]
        self.cfg = cfg
        self.opt = accelerator.prepare_optimizer(torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay))
        self.steps, self.pos = 1, 0

    def start_task(self, steps: int) -> None:
        getattr(self.opt, "optimizer", self.opt).state.clear()
        self.steps, self.pos = steps, 0
        self._set_lr()

    @property
    def lr(self) -> float:
        return float(self.opt.param_groups[0]["lr"])

    def _set_lr(self) -> None:
        for g in self.opt.param_groups:
            g["lr"] = self.cfg.lr * lr_factor(self.cfg, self.steps, self.pos)

    def step(self) -> None:
        self.opt.step()
        if not getattr(self.opt, "step_was_skipped", False):  # fp16 overflow: no step, no schedule advance
            self.pos += 1
            self._set_lr()
        self.opt.zero_grad(set_to_none=True)


@dataclass
class StepLog:
    step: int
    task: int
    loss: float
    new_loss: float
    replay_samples: int
    replay_share: float
    tokens: int
    tokens_per_s: float
    lr: float  # the lr this step trained with
    extra_loss: float | None = None


@dataclass
class TaskLoop:
    """Trains one task. ``accelerator`` is a Hugging Face Accelerator (one or many processes)."""

    model: Any  # prepared by the accelerator
    accelerator: Any
    optim: Optimization  # the run's optimizer: one per run, not per task
    strategy: Strategy
    counters: WorkCounters
    cfg: TrainConfig
    pad_id: int
    rng: np.random.Generator  # loop RNG: task batches and merge order; identical on every process
    replay_events: list[dict] = field(default_factory=list)
    on_step: Callable[[StepLog], None] | None = None
    lr_factor: float = 1.0  # this step's lr / base lr (MSSR's "lr" interference reads it)

    def run(self, task_index: int, samples: list[Sample], steps: int, global_step: int) -> int:
        self.optim.start_task(steps)
        sampler = BatchSampler(len(samples), self.cfg.batch_size, self.rng)
        self.model.train()
        for _ in range(steps):
            global_step += 1
            t0 = time.perf_counter()
            new, replay, merged = compose_step(samples, sampler, self.strategy, global_step, self.cfg.batch_size, self.rng)
            t1 = time.perf_counter()
            lr = self.optim.lr
            self.lr_factor = lr / self.cfg.lr
            if replay:
                self.replay_events.append({"step": global_step, "task": task_index, "n_samples": len(replay),
                                           "n_tokens": sum(s.n_tokens for s in replay)})
            log = self._train_step(merged)
            t2 = time.perf_counter()
            self.strategy.observe(log["ids"], log["losses"], global_step)
            t3 = time.perf_counter()

            n_new_tok = sum(s.n_tokens for s in new)
            n_rep_tok = sum(s.n_tokens for s in replay)
            c = self.counters
            c.optimizer_steps += 1
            c.new_task_tokens += n_new_tok
            c.replay_tokens += n_rep_tok
            c.replay_samples += len(replay)
            c.time_train_s += t2 - t1
            c.time_replay_bookkeeping_s += (t1 - t0) + (t3 - t2)
            if self.on_step is not None:
                new_mask = np.isin(log["ids"], [s.sample_id for s in new])
                self.on_step(StepLog(
                    step=global_step, task=task_index, loss=log["loss"],
                    new_loss=float(log["losses"][new_mask].mean()),
                    replay_samples=len(replay), replay_share=len(replay) / len(merged),
                    tokens=n_new_tok + n_rep_tok, tokens_per_s=(n_new_tok + n_rep_tok) / max(t3 - t0, 1e-9),
                    lr=lr, extra_loss=log["extra"],
                ))
        return global_step

    def _train_step(self, merged: list[Sample]) -> dict:
        acc = self.accelerator
        world, rank = acc.num_processes, acc.process_index
        local = merged[rank::world]
        total_tokens = sum(int((s.labels[1:] != -100).sum()) for s in merged)
        total_general = sum(s.sample_id < 0 for s in merged)
        chunks = micro_batches(local, self.cfg.grad_accum)
        ids_out, losses_out = [], []
        loss_sum, extra_sum = 0.0, None
        need_hidden = bool(getattr(self.strategy, "needs_hidden_states", False))
        for ci, (chunk, _) in enumerate(chunks):
            batch = {k: v.to(acc.device) for k, v in collate(chunk, self.pad_id).items()}
            sync = ci == len(chunks) - 1
            ctx = acc.no_sync(self.model) if not sync and world > 1 else nullcontext()
            with ctx, acc.autocast():
                loss, tok_sum, extra, per_sample = step_loss(self.model, batch, self.strategy, need_hidden,
                                                             world, total_tokens, total_general)
            if extra is not None:
                extra_sum = (extra_sum or 0.0) + extra
            acc.backward(loss)
            ids_out.append(batch["sample_ids"])
            losses_out.append(per_sample)
            loss_sum += tok_sum
        if self.cfg.max_grad_norm is not None:
            acc.clip_grad_norm_([p for p in self.model.parameters() if p.requires_grad], self.cfg.max_grad_norm)
        self.optim.step()
        ids = torch.cat(ids_out)
        losses = torch.cat(losses_out)
        if world > 1:
            ids, losses, loss_sum = _gather_all(acc, ids, losses, loss_sum, len(merged))
        ids_np, losses_np = in_merged_order(merged, ids, losses)
        return {"ids": ids_np, "losses": losses_np, "loss": loss_sum / max(total_tokens, 1), "extra": extra_sum}


def compose_step(samples: list[Sample], sampler: "BatchSampler", strategy: Strategy, step: int, batch_size: int,
                 rng: np.random.Generator) -> tuple[list[Sample], list[Sample], list[Sample]]:
    """One step's new-task samples, the strategy's replay samples and their merged, shuffled order
    (every position possible). Shared by the loop and the Trainer integration, so both make the same
    draws from the same RNG."""
    new = [samples[i] for i in sampler.next()]
    rb = strategy.replay_batch(step, batch_size)
    replay = list(rb.samples) if rb is not None else []
    merged = new + replay
    merged = [merged[i] for i in rng.permutation(len(merged))]
    return new, replay, merged


def process_sum(acc, accum: int):
    """The context's ``reduce_sum`` for a run on ``acc`` with ``accum`` micro-batches per step: a sum
    over processes when there are several and each holds one micro-batch (every process then makes one
    forward, and one such call, per step); None otherwise (one process, or micro-batches, for which a
    step-wide count would need every micro-batch's forward before the first backward)."""
    if acc.num_processes < 2 or accum > 1:
        return None
    return lambda t: acc.reduce(t, reduction="sum")


def step_loss(model, batch: dict[str, torch.Tensor], strategy: Strategy, need_hidden: bool, world: int,
              total_tokens: int, total_general: int):
    """One micro-batch's forward: (loss to backward, its token-loss sum, the extra loss's share as a float or
    None, per-sample mean losses). The loss is this chunk's token sum over the whole step's label count (times
    ``world``: DDP's gradient mean then gives exactly the token mean over the merged batch), plus the strategy's
    extra loss (a mean over this chunk's general rows, sample id < 0, as GeRe's) weighted by those rows' share
    of the step's ``total_general`` general rows, times ``world`` likewise: the extra term is then a row mean
    over the whole step whatever the number of processes or micro-batches (with unequal shares a plain mean
    per process weighed GeRe's loss by the share of processes that drew general samples)."""
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=need_hidden,
                use_cache=False)  # training builds no KV cache (nor conflicts with gradient checkpointing)
    tl, mask = token_losses(out.logits, batch["labels"])
    tok_sum = (tl * mask).sum()
    loss = tok_sum * world / max(total_tokens, 1)
    extra = strategy.extra_loss(batch, out)
    extra_f = None
    if extra is not None:
        if getattr(strategy, "extra_loss_is_share", False):  # already this process's share of the step's term
            w = world
        else:
            w = world * int((batch["sample_ids"] < 0).sum()) / max(total_general, 1)
        loss = loss + extra * w
        extra_f = float(extra.detach()) * w / world
    return loss, float(tok_sum.detach()), extra_f, sample_means(tl, mask).detach().float()


def in_merged_order(merged: list[Sample], ids: torch.Tensor, losses: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Observed ids and losses in merged-batch order, whatever the process count or accumulation."""
    ids_np, losses_np = ids.cpu().numpy(), losses.cpu().numpy()
    pos = {int(s.sample_id): i for i, s in enumerate(merged)}
    order = np.argsort([pos[int(i)] for i in ids_np], kind="stable")
    return ids_np[order], losses_np[order]


def _gather_all(acc, ids: torch.Tensor, losses: torch.Tensor, loss_sum: float, n_total: int):
    """Every process gets every sample's loss, in the merged-batch order (ids are unique)."""
    width = math.ceil(n_total / acc.num_processes)
    pad = width - ids.shape[0]
    ids_p = torch.cat([ids, torch.full((pad,), torch.iinfo(torch.long).min, device=ids.device, dtype=ids.dtype)])
    losses_p = torch.cat([losses, torch.zeros(pad, device=losses.device, dtype=losses.dtype)])
    all_ids = acc.gather(ids_p)
    all_losses = acc.gather(losses_p)
    all_sum = acc.gather(torch.tensor([loss_sum], device=acc.device, dtype=torch.float64)).sum().item()
    keep = all_ids != torch.iinfo(torch.long).min
    return all_ids[keep], all_losses[keep], all_sum
