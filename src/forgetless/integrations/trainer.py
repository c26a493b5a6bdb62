"""A Trainer mixin that runs a task stream with a forgetless strategy, inside the Trainer's own loop.

One ``train()`` call covers the whole stream (one global step counter, so ``checkpoint-N`` names are
unique and ``resume_from_checkpoint`` works anywhere in it). The Trainer's dataloader only ticks;
each optimizer step's samples come from ``get_batch_samples``, which draws them exactly as
``forgetless run`` does (``train.compose_step``: the same BatchSampler, the same replay call, the same
shuffle from the same RNG) and splits them into the Trainer's micro-batches with ``train.micro_batches``.
``compute_loss`` runs the forward itself (``train.step_loss``: the loop's loss, normalised over the whole
step so gradient accumulation is exact) and keeps the per-sample losses, which are handed to
``observe`` once the optimizer step is done. Task ends, evaluation and checkpoints hang on a callback.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint

from forgetless.config import Config, TrainConfig, from_dict, load_config
from forgetless.data.task import Sample, Task, TaskStream
from forgetless.errors import InputError
from forgetless.replay.base import Strategy, StrategyContext, WorkCounters
from forgetless.state import atomic_write_text, load_state, save_state
from forgetless.train import LOOP_RNG_TAG, BatchSampler, _gather_all, collate, compose_step, in_merged_order, micro_batches, \
    process_sum, step_loss, steps_for_task

STATE_DIR = "forgetless"  # inside each checkpoint-N folder: the stream's and the strategy's state


def _as_config(config: Config | dict | str | os.PathLike | None) -> Config:
    if config is None:
        return Config()
    if isinstance(config, Config):
        return config.model_copy(deep=True)
    if isinstance(config, dict):
        return from_dict(config, "config")
    return load_config(config)


class _StreamCallback(TrainerCallback):
    """Observe after each optimizer step, close tasks, and evaluate before the Trainer saves."""

    def __init__(self, trainer: "ReplayMixin"):
        self.trainer = trainer

    def on_train_begin(self, args, state, control, **kwargs):
        self.trainer._begin_stream()

    def on_step_end(self, args, state, control, **kwargs):
        self.trainer._end_step()


class ReplayMixin:
    """Put before a Trainer class: ``class MyTrainer(ReplayMixin, SFTTrainer)``.

    ``strategy``: a forgetless strategy name (``"mssr"``, ``"gere+mssr"``, a list of names), a factory
    ``ctx -> Strategy`` (a strategy class works) or a strategy object keeping its context as ``.ctx``.
    ``config``: a forgetless config (dict, YAML path or ``Config``) whose ``replay``, ``eval`` and
    ``data`` sections apply. Batch size, learning rate, seed,
    steps and precision come from the TrainingArguments: the new-task batch of one optimizer step is
    ``per_device_train_batch_size * gradient_accumulation_steps * world_size`` samples.
    """

    def __init__(self, *args, strategy: str | list[str] | Callable[[StrategyContext], Any] | None = None,
                 config: Config | dict | str | os.PathLike | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        cfg = _as_config(config)
        if isinstance(strategy, (str, list)):  # validated as a config value: one line, not pydantic's dump
            raw = cfg.model_dump(mode="json")
            raw["replay"]["strategy"] = strategy
            cfg = from_dict(raw, "strategy")
        cfg.seed = int(self.args.seed)
        self.fl_config = cfg
        from forgetless.data.tokenize import use_chat_template

        # data.chat_template as `forgetless run` reads it (for tasks given as names, files or Tasks;
        # datasets arrive tokenized)
        self._chat = use_chat_template(cfg.data.chat_template, self.processing_class,
                                       getattr(getattr(self.model, "config", None), "_name_or_path", ""))
        # compute_loss divides by the step's whole label count itself, so the Trainer must not rescale
        self.loss_is_scaled_for_ga = True
        self._steps_arg = self.args.max_steps  # steps per task when > 0 (train() sets the stream's total)
        self.counters = WorkCounters()
        self.strategy_context = StrategyContext(
            config=cfg, stream=TaskStream(tasks=[]), seed=cfg.seed, counters=self.counters,
            model=self.model, tokenizer=self.processing_class, device=self.args.device,
            run_dir=Path(self.args.output_dir) / STATE_DIR, evaluate=self._probe_accuracy,
            sample_losses=self._sample_losses,
            reduce_sum=process_sum(self.accelerator, self.args.gradient_accumulation_steps),
        )
        if isinstance(strategy, Strategy) and not isinstance(strategy, type):
            self.strategy = strategy
            self._adopt_context(strategy)
        elif callable(strategy) and not isinstance(strategy, (str, list)):
            self.strategy = strategy(self.strategy_context)
        else:
            from forgetless.replay.compose import build_strategy

            self.strategy = build_strategy(self.strategy_context)
        self.strategy_context.extras["lr_scale"] = lambda step: self._lr_factor
        self._stream: TaskStream | None = None
        self._steps: list[int] = []
        self._has_eval = False
        self._reset_progress()
        self.add_callback(_StreamCallback(self))

    def _adopt_context(self, strategy) -> None:
        """A strategy object built on its own StrategyContext keeps it (its config and seed included); the
        trainer fills in what only it knows (model, tokenizer, counters, evaluation), and the stream later."""
        ctx = getattr(strategy, "ctx", None)
        if not isinstance(ctx, StrategyContext):
            raise TypeError("a strategy object must keep its StrategyContext as .ctx; or pass a factory ctx -> Strategy")
        mine = self.strategy_context
        ctx.counters, ctx.model, ctx.tokenizer, ctx.device = mine.counters, mine.model, mine.tokenizer, mine.device
        ctx.run_dir, ctx.evaluate, ctx.sample_losses = mine.run_dir, mine.evaluate, mine.sample_losses
        self.strategy_context = ctx
        if ctx.seed != self.fl_config.seed:
            raise InputError(f"the strategy object was built with seed {ctx.seed}, the TrainingArguments say "
                             f"{self.fl_config.seed}", field="seed")

    # ---- the stream --------------------------------------------------------------------------
    def _reset_progress(self) -> None:
        self._task = -1  # task of the last composed step
        self._ended = -1  # last task whose on_task_end ran
        self._sampler: BatchSampler | None = None
        self._rng = np.random.default_rng([self.fl_config.seed, LOOP_RNG_TAG])
        self.baseline: list[float] | None = None
        self.acc_rows: list[list[float]] = []
        self.replay_events: list[dict] = []
        self.counters.load(WorkCounters().as_dict())
        self._pending: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        self._merged: list[Sample] = []
        self._lr_factor = 1.0

    @property
    def batch_size(self) -> int:
        a = self.args
        return a.per_device_train_batch_size * a.gradient_accumulation_steps * max(1, a.world_size)

    def set_stream(self, tasks, eval_tasks=None) -> TaskStream:
        """Tasks in training order: built-in task names or task files (tokenized as ``forgetless run``
        does, their test split evaluated), forgetless ``Task`` objects, or ``datasets.Dataset``s
        tokenized the way this trainer expects (``input_ids``/``labels``; text, prompt/completion or
        messages for TRL's SFTTrainer). A dict maps task names to tasks. ``eval_tasks`` (same order):
        a name, a ``Task``, or records with prompt/target (or question/choices/answer) per task."""
        from forgetless.data import load_task
        from forgetless.data.tokenize import tokenize_stream

        cfg = self.fl_config
        names = list(tasks) if isinstance(tasks, dict) else [None] * len(tasks)
        specs = list(tasks.values()) if isinstance(tasks, dict) else list(tasks)
        if not specs:
            raise InputError("no tasks given", field="tasks")
        if eval_tasks is not None and len(eval_tasks) != len(specs):
            raise InputError(f"eval_tasks has {len(eval_tasks)} entries for {len(specs)} tasks", field="eval_tasks")
        stream = TaskStream(tasks=[])
        offset = 0
        for t, spec in enumerate(specs):
            if isinstance(spec, (str, os.PathLike)):
                spec = load_task(str(spec))
            if isinstance(spec, Task):
                # a copy keeping every field (metric, dev, files), only the splits cut to the config's sizes
                task = dataclasses.replace(spec, train=spec.train[: cfg.data.n_train],
                                           test=spec.test[: cfg.data.n_test])
                samples = tokenize_stream(TaskStream(tasks=[task]), self.processing_class, cfg.data.max_length,
                                          cfg.data.prompt_template, self._chat).samples[0]
            else:
                task = Task(names[t] or f"task_{t}", "generation", [], [], "dataset")
                samples = self._dataset_samples(spec, task.name)[: cfg.data.n_train]
            for i, s in enumerate(samples):
                s.sample_id, s.task_id = offset + i, t
            if eval_tasks is not None and eval_tasks[t] is not None:
                kind, task.test, metric = self._eval_examples(eval_tasks[t], task.name)
                # an eval Task brings its own metric; eval records keep the task's when the kind is the same
                task.metric = metric if metric or kind != task.kind else task.metric
                task.kind = kind
            if not samples:
                raise InputError(f"task '{task.name}' has no training samples", field="tasks")
            task.name = names[t] or task.name
            stream.tasks.append(task)
            stream.samples.append(samples)
            offset += len(samples)
        if len(set(stream.names)) != len(stream.names):
            raise InputError(f"duplicate task names {stream.names}; name them with a dict", field="tasks")
        self._stream = stream
        self._has_eval = all(t.test for t in stream.tasks)
        if not self._has_eval:
            warnings.warn("forgetless: not every task has an eval set, so no accuracy matrix is computed",
                          stacklevel=2)
        per_task = self._steps_arg if self._steps_arg and self._steps_arg > 0 else None
        tc = TrainConfig(steps_per_task=per_task, epochs=float(self.args.num_train_epochs), batch_size=self.batch_size)
        self._steps = [steps_for_task(tc, len(s)) for s in stream.samples]
        ctx = self.strategy_context
        ctx.stream, ctx.steps_per_task, ctx.batch_size = stream, list(self._steps), self.batch_size
        ctx.config.train.batch_size = self.batch_size
        return stream

    def _dataset_samples(self, ds, name: str) -> list[Sample]:
        cols = list(getattr(ds, "column_names", None) or [])
        if "labels" not in cols and hasattr(self, "_prepare_dataset"):
            # TRL's SFTTrainer tokenizes its way and turns completion / assistant masks into labels
            ds = self._prepare_dataset(ds, self.processing_class, self.args, False, None, name)
            cols = list(ds.column_names)
        if "input_ids" not in cols:
            raise InputError(f"task '{name}': the dataset needs an 'input_ids' column (and optionally 'labels'), "
                             f"has {cols}", field="input_ids")
        out = []
        for i, row in enumerate(ds):
            ids = np.asarray(row["input_ids"], dtype=np.int64)
            labels = np.asarray(row["labels"], dtype=np.int64) if row.get("labels") is not None else ids.copy()
            if labels.shape != ids.shape:
                raise InputError(f"task '{name}', row {i + 1}: labels and input_ids differ in length", field="labels")
            out.append(Sample(sample_id=i, task_id=0, input_ids=ids, labels=labels))
        return out

    def _eval_examples(self, spec, name: str):
        from forgetless.data import load_task
        from forgetless.data.loaders import infer_kind, to_example

        if isinstance(spec, (str, os.PathLike)):
            spec = load_task(str(spec))
        if isinstance(spec, Task):
            return spec.kind, list(spec.test[: self.fl_config.data.n_test]), spec.metric
        records = [dict(r) for r in spec]
        if not records:
            raise InputError(f"task '{name}': empty eval set", field="eval_tasks")
        kind = infer_kind(records[0])
        examples = [to_example(r, kind, f"eval_tasks[{name}]", None, i) for i, r in enumerate(records, 1)]
        return kind, examples[: self.fl_config.data.n_test], None

    def train_stream(self, tasks, eval_tasks=None, resume_from_checkpoint: str | bool | None = None, **kwargs):
        """Train every task in order with replay; evaluate every task after each one. Returns the
        results dict (also ``output_dir/results.json``)."""
        self.set_stream(tasks, eval_tasks)
        self.train(resume_from_checkpoint=resume_from_checkpoint, **kwargs)
        return self.results()

    # ---- Trainer hooks -----------------------------------------------------------------------
    def train(self, resume_from_checkpoint: str | bool | None = None, **kwargs):
        if self._stream is None:  # plain Trainer use: one task, the train_dataset
            if self.train_dataset is None:
                raise ValueError("give a train_dataset or call train_stream(tasks)")
            self.set_stream([self.train_dataset])
        if resume_from_checkpoint is True:
            resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"no checkpoint found in {self.args.output_dir}")
        self._reset_progress()
        if resume_from_checkpoint:
            self._load_stream_state(resume_from_checkpoint)
        saved = self.args.max_steps
        self.args.max_steps = sum(self._steps)
        try:
            return super().train(resume_from_checkpoint=resume_from_checkpoint or None, **kwargs)
        finally:
            self.args.max_steps = saved

    def get_train_dataloader(self):
        """Ticks only (one per micro-batch); the samples come from ``get_batch_samples``."""
        n = sum(self._steps) * self.args.gradient_accumulation_steps
        return torch.utils.data.DataLoader(range(n), batch_size=1, collate_fn=lambda b: b)

    def _task_of(self, step: int) -> int:
        return int(np.searchsorted(np.cumsum(self._steps), step))  # steps are 1-based

    def get_batch_samples(self, epoch_iterator, num_batches: int, device):
        for _ in range(num_batches):
            next(epoch_iterator, None)
        step = self.state.global_step + 1
        t = self._task_of(step)
        if t != self._task:
            self._start_task(t, step)
        new, replay, merged = compose_step(self._stream.samples[t], self._sampler, self.strategy, step,
                                           self.batch_size, self._rng)
        self._lr_factor = float(self._get_learning_rate()) / self.args.learning_rate
        if replay:
            self.replay_events.append({"step": step, "task": t, "n_samples": len(replay),
                                       "n_tokens": sum(s.n_tokens for s in replay)})
        c = self.counters
        c.new_task_tokens += sum(s.n_tokens for s in new)
        c.replay_tokens += sum(s.n_tokens for s in replay)
        c.replay_samples += len(replay)
        self._merged, self._pending = merged, []
        acc = self.accelerator
        local = merged[acc.process_index :: acc.num_processes]
        total = sum(int((s.labels[1:] != -100).sum()) for s in merged)
        n_general = sum(s.sample_id < 0 for s in merged)
        chunks = micro_batches(local, num_batches)
        task = [(c, n) for c, n in chunks if c[0].sample_id >= 0]
        general = [(c, n) for c, n in chunks if c[0].sample_id < 0]
        if len(task) != num_batches:
            raise RuntimeError(f"{len(local)} samples on this process cannot fill {num_batches} micro-batches")
        pad = self._pad_id()
        batches = []
        for i, (chunk, _) in enumerate(task):
            parts = [chunk] + ([general[i][0]] if i < len(general) else [])
            # one forward and backward per micro-batch under DeepSpeed and FSDP: their forwards are
            # collectives, and processes may hold different numbers of general samples
            if (self.is_deepspeed_enabled or self.is_fsdp_enabled) and len(parts) > 1:
                parts = [parts[0] + parts[1]]
            b = [{**collate(c, pad), "fl_general": n_general, "fl_total": total} for c in parts]
            batches.append({**b[0], "fl_more": b[1:]})
        return batches, None

    def compute_loss(self, model, inputs, return_outputs: bool = False, num_items_in_batch=None):
        """The loop's loss (``train.step_loss``) on this micro-batch; per-sample losses are kept for
        ``observe``. General (GeRe) samples come as a second part with its own forward, so task samples
        are not padded to their length; the first part's backward runs here, without gradient sync."""
        if not model.training or "fl_total" not in inputs:  # evaluation through Trainer.evaluate
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        parts = [inputs] + list(inputs.pop("fl_more"))
        need_hidden = bool(getattr(self.strategy, "needs_hidden_states", False))
        world = self.accelerator.num_processes
        out_loss = None
        shown = 0.0
        for i, part in enumerate(parts):
            n_general, total = part.pop("fl_general"), part.pop("fl_total")
            last = i == len(parts) - 1
            with nullcontext() if last else self.accelerator.no_sync(model):
                loss, tok_sum, extra, per_sample = step_loss(model, part, self.strategy, need_hidden, world,
                                                             total, n_general)
                if not last:
                    self.accelerator.backward(loss)
            self._pending.append((part["sample_ids"], per_sample, tok_sum))
            if last:
                out_loss = loss
            else:
                shown += float(loss.detach())
        if shown:
            out_loss = out_loss + shown  # the logged loss covers every part; the constant adds no gradient
        return (out_loss, None) if return_outputs else out_loss

    def _end_step(self) -> None:
        """After the optimizer step: every sample's loss to ``observe`` (merged order, all processes)."""
        step = self.state.global_step
        ids = torch.cat([p[0] for p in self._pending])
        losses = torch.cat([p[1] for p in self._pending])
        acc = self.accelerator
        if acc.num_processes > 1:
            ids, losses, _ = _gather_all(acc, ids, losses, 0.0, len(self._merged))
        ids_np, losses_np = in_merged_order(self._merged, ids, losses)
        self.strategy.observe(ids_np, losses_np, step)
        self.counters.optimizer_steps += 1
        self._pending = []
        if step == int(np.cumsum(self._steps)[self._task]):
            self._end_task(self._task, step)

    def _start_task(self, t: int, step: int) -> None:
        if self._ended < t - 1:
            raise RuntimeError(f"task {t} starts before task {t - 1} ended")
        self.strategy.on_task_start(self._stream.tasks[t], t, step)
        self._task = t
        self._sampler = BatchSampler(len(self._stream.samples[t]), self.batch_size, self._rng)
        if t > 0 and self.optimizer is not None and not self.is_deepspeed_enabled:
            # fresh optimizer moments per task, as forgetless run (DeepSpeed owns its optimizer state)
            getattr(self.optimizer, "optimizer", self.optimizer).state.clear()

    def _end_task(self, t: int, step: int) -> None:
        self.strategy.on_task_end(self._stream.tasks[t], t, step)
        self._ended = t
        if not self._has_eval:
            return
        self.acc_rows.append(self._evaluate_row())
        result = self.results()
        logs = {f"forgetless/acc_{name}": v for name, v in zip(self._stream.names, self.acc_rows[-1])}
        m = result["metrics_so_far"]
        logs.update({f"forgetless/{k}": m[k] for k in ("ap", "bwt", "fwt", "forgetting") if m.get(k) is not None})
        logs["forgetless/task"] = t
        self.log(logs)
        if self.args.should_save:
            self._write_results(result, final=len(self.acc_rows) == len(self._stream))

    def _begin_stream(self) -> None:
        if self.baseline is None and self._has_eval:
            self.baseline = self._evaluate_row()

    # ---- evaluation --------------------------------------------------------------------------
    def _pad_id(self) -> int:
        tok = self.processing_class
        return tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    def _accuracy(self, j: int, examples) -> float:
        from forgetless.evaluate import evaluate_sharded

        score, tokens = evaluate_sharded(self.accelerator, self.model, self.processing_class, self._stream.tasks[j],
                                         examples, self.fl_config, device=self.args.device, chat=self._chat)
        self.counters.eval_tokens += tokens
        return score

    def _evaluate_row(self) -> list[float]:
        return [self._accuracy(j, t.test) for j, t in enumerate(self._stream.tasks)]

    def _probe_accuracy(self, task_index: int, examples) -> float:
        return self._accuracy(task_index, examples)

    @torch.no_grad()
    def _sample_losses(self, samples) -> np.ndarray:
        from forgetless.losses import sample_means, token_losses

        m = self.model
        was_training = m.training
        m.eval()
        batch = {k: v.to(self.args.device) for k, v in collate(samples, self._pad_id()).items()}
        out = m(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        tl, mask = token_losses(out.logits, batch["labels"])
        self.counters.extra_forward_tokens += int(batch["attention_mask"].sum())
        m.train(was_training)
        return sample_means(tl, mask).float().cpu().numpy()

    # ---- results -----------------------------------------------------------------------------
    def results(self) -> dict:
        """Accuracy matrix so far (rows: after each finished task), forgetless metrics, replay events."""
        from forgetless import metrics
        from forgetless.experiment import to_jsonable

        names = self._stream.names if self._stream is not None else []
        out: dict[str, Any] = {
            "name": Path(self.args.output_dir).name, "tasks": names,
            "task_kinds": [t.kind for t in self._stream.tasks] if self._stream else [],
            "acc": self.acc_rows, "baseline_acc": self.baseline, "metrics": None, "metrics_so_far": None,
            "general_ppl": [None], "counters": self.counters.as_dict(), "replay_events": self.replay_events,
            "steps_per_task": self._steps, "strategy": getattr(self.strategy, "name", type(self.strategy).__name__),
            "seed": self.fl_config.seed, "model": str(getattr(getattr(self.model, "config", None), "_name_or_path", "")),
            "trainer": type(self).__name__, "n_processes": self.accelerator.num_processes,
        }
        k = len(self.acc_rows)
        if k and self.baseline is not None:
            a = np.asarray(self.acc_rows)[:, :k]
            out["metrics_so_far"] = to_jsonable(metrics.compute(a, np.asarray(self.baseline)[:k]))
            if k == len(names):
                out["metrics"] = out["metrics_so_far"]
        from forgetless.report import replay_volume

        out["replay_report"] = self.strategy.report() if hasattr(self.strategy, "report") else {}
        out["replay_volume"] = replay_volume(out)  # per task and quarter, with the budget's ledger
        return out

    def _write_results(self, result: dict, final: bool) -> None:
        out = Path(self.args.output_dir)
        if final:
            from forgetless.report import write_outputs

            write_outputs(out, result)
        else:
            atomic_write_text(out / "results.json", json.dumps(result, indent=1))

    # ---- checkpoints -------------------------------------------------------------------------
    def _stream_state(self) -> dict:
        s = self._sampler
        return {
            "global_step": int(self.state.global_step), "task": self._task, "ended": self._ended,
            "task_names": self._stream.names, "steps": self._steps,
            "strategy": self.strategy.state_dict(), "rng": self._rng.bit_generator.state,
            "sampler": None if s is None else {"perm": s.perm.copy(), "pos": int(s.pos)},
            "baseline": self.baseline, "acc_rows": self.acc_rows, "replay_events": self.replay_events,
            "counters": self.counters.as_dict(),
        }

    def _load_stream_state(self, checkpoint: str | os.PathLike) -> None:
        d = Path(checkpoint) / STATE_DIR
        if not Path(checkpoint).is_dir():
            raise InputError("checkpoint directory does not exist", file=str(checkpoint))
        if not (d / "stream.json").is_file():
            raise InputError("checkpoint has no forgetless state (was it saved by a ReplayTrainer?)", file=str(d))
        st = load_state(d, "stream")
        if st["task_names"] != self._stream.names or list(st["steps"]) != self._steps:
            raise InputError(f"checkpoint was saved for tasks {st['task_names']} with steps {st['steps']}, "
                             f"this stream has {self._stream.names} with {self._steps}", file=str(d))
        self.strategy.load_state_dict(st["strategy"])
        self._task, self._ended = int(st["task"]), int(st["ended"])
        if st["sampler"] is not None:
            self._sampler = BatchSampler(len(self._stream.samples[self._task]), self.batch_size, self._rng)
            self._sampler.perm = np.asarray(st["sampler"]["perm"], dtype=np.int64)
            self._sampler.pos = int(st["sampler"]["pos"])
        self._rng.bit_generator.state = st["rng"]  # after the sampler's construction drew from it
        self.baseline = st["baseline"]
        self.acc_rows = [list(r) for r in st["acc_rows"]]
        self.replay_events = list(st["replay_events"])
        self.counters.load(st["counters"])

    def _save_checkpoint(self, model, trial) -> None:
        # written before the Trainer's files, so any checkpoint with a trainer_state.json has it
        out = Path(self._get_output_dir(trial=trial)) / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        state = self._stream_state()
        if self.args.should_save:
            save_state(state, out / STATE_DIR, "stream")
        super()._save_checkpoint(model, trial)


class ReplayTrainer(ReplayMixin, Trainer):
    """``transformers.Trainer`` with a forgetless replay strategy and a task stream."""
