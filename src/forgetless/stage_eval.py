"""What ``forgetless run`` measures at each stage (the start and after every task): every task's test
score, the perplexity of the general texts, the knowledge probe and the lm-evaluation-harness tasks;
and the two evaluations strategies may ask for while training (a task's dev score, per-sample losses).

Scores are sharded over processes and summed (forgetless.evaluate.evaluate_sharded), so every process
gets the same numbers. The scoring itself lives in forgetless.evaluate; this module decides what a
stage evaluates, on which model, at which precision, and counts the work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from forgetless.config import Config
from forgetless.data.task import Task, TaskStream
from forgetless.replay.base import WorkCounters


@dataclass
class StageScores:
    row: list[float]  # each task's test score
    ppl: float | None  # perplexity of the general texts (None: none configured)
    probe: float | None  # knowledge-probe accuracy (None: no probe)
    harness: dict[str, float] | None  # lm-eval scores (None: not run at this stage)


class StageEvaluator:
    """Evaluates the unwrapped (PEFT) ``model`` under the accelerator's autocast, the precision it
    trains at. ``general``: the perplexity texts; ``probe``: the knowledge-probe task or None."""

    def __init__(self, cfg: Config, accelerator, model, tokenizer, stream: TaskStream, chat: bool,
                 counters: WorkCounters, general: list[str], probe: Task | None):
        self.cfg, self.accelerator, self.model, self.tokenizer = cfg, accelerator, model, tokenizer
        self.stream, self.chat, self.counters, self.general, self.probe = stream, chat, counters, general, probe

    def examples(self, task_index: int, examples, task: Task | None = None) -> float:
        """Score of ``examples`` of task ``task_index`` (or of ``task``)."""
        from forgetless.evaluate import evaluate_sharded

        task = task if task is not None else self.stream.tasks[task_index]
        with self.accelerator.autocast():  # evaluated at the precision it is trained at
            score, tokens = evaluate_sharded(self.accelerator, self.model, self.tokenizer, task,
                                             examples, self.cfg, chat=self.chat)
        self.counters.eval_tokens += tokens
        return score

    def probe_accuracy(self, task_index: int, examples) -> float:
        """StrategyContext.evaluate: a strategy's probe during training (accuracy_triggered)."""
        t0 = time.perf_counter()
        a = self.examples(task_index, list(examples))  # evaluate_task restores train mode
        self.counters.time_eval_s += time.perf_counter() - t0
        return a

    @torch.no_grad()
    def sample_losses(self, samples) -> np.ndarray:
        """StrategyContext.sample_losses: each sample's mean token loss, in eval mode."""
        from forgetless.losses import sample_means, token_losses
        from forgetless.train import collate

        m = self.model
        was_training = m.training
        m.eval()
        batch = {k: v.to(self.accelerator.device) for k, v in collate(samples, self.tokenizer.pad_token_id).items()}
        with self.accelerator.autocast():
            out = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        tl, mask = token_losses(out.logits, batch["labels"])
        self.counters.extra_forward_tokens += int(batch["attention_mask"].sum())
        m.train(was_training)
        return sample_means(tl, mask).float().cpu().numpy()

    def evaluate(self, k: int) -> StageScores:
        """Everything stage ``k`` measures."""
        from forgetless.evaluate import general_perplexity, sum_over_processes

        t0 = time.perf_counter()
        row = [self.examples(j, t.test) for j, t in enumerate(self.stream.tasks)]
        ppl = None
        if self.general:
            acc = self.accelerator
            shard = self.general[acc.process_index :: acc.num_processes]
            nll, tokens = 0.0, 0
            if shard:
                with acc.autocast():
                    p, tokens = general_perplexity(self.model, self.tokenizer, shard,
                                                   device=acc.device, batch_size=self.cfg.eval.batch_size)
                nll = float(np.log(p)) * tokens
            nll, tokens = sum_over_processes(acc, nll, tokens)
            self.counters.eval_tokens += int(tokens)
            ppl = float(np.exp(nll / max(tokens, 1)))
        probe = self.examples(-1, self.probe.test, self.probe) if self.probe else None
        self.counters.time_eval_s += time.perf_counter() - t0
        return StageScores(row, ppl, probe, self.general_tasks(k))

    def general_tasks(self, k: int) -> dict[str, float] | None:
        """lm-evaluation-harness scores at stage k when configured for it (every process runs it)."""
        from forgetless.harness import run_general_tasks

        e = self.cfg.eval
        stages = e.general_stages if e.general_stages is not None else [0, len(self.stream)]
        if not e.general_tasks or k not in stages:
            return None
        t0 = time.perf_counter()
        out = run_general_tasks(self.model, self.tokenizer, e.general_tasks, task_dir=e.general_task_dir,
                                limit=e.general_limit, batch_size=e.batch_size, device=self.accelerator.device)
        self.counters.time_eval_s += time.perf_counter() - t0
        return out
