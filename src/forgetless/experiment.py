"""One run: a task stream x a strategy x a model -> a run directory with results; resumable.

Run directory (DESIGN.md): config.yaml, log.jsonl, stages/<k>/ (k=0 is the start, k=t+1 is after
task t: trainable weights, strategy state, loop state, the accuracy row), results.json,
accuracy_matrix.csv, report.md, plots/. A stage directory appears only once complete and is never
rewritten (stages.py), so a killed run resumes from its last finished stage and ends with the same
results as an uninterrupted one. What a stage measures is stage_eval.py; this module sets a run up
and drives it: stream, model, strategy, the task loop (train.py), stages, results.

A run never lies and never gets stuck (rundir.py): it records fingerprints of its config and task
data that ``--resume`` and the bench's reuse compare; one writer holds the directory's lock; each
stage records the sha256 of its files, and resume falls back past a damaged stage; everything
checkable is checked before anything is written.
"""

from __future__ import annotations

import json
import math
import platform
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from forgetless import __version__
from forgetless.config import Config, dump_config
from forgetless.errors import InputError, Interrupted
from forgetless.replay.base import StrategyContext, WorkCounters
from forgetless.rundir import FINGERPRINTS, RunLock, check_same_run, check_writable, fingerprints, load_results
from forgetless.stage_eval import StageEvaluator, StageScores
from forgetless.stages import StageStore
from forgetless.state import atomic_write_text
from forgetless.train import process_sum


def run_dir_for(cfg: Config, output_dir: str | Path | None = None) -> Path:
    # ~ expanded here, where the path is used, as model.name's is ('~/runs' is not a folder named '~')
    return Path(output_dir if output_dir is not None else cfg.output_dir).expanduser() / cfg.name


def is_finished(run_dir: Path) -> bool:
    return (Path(run_dir) / "results.json").is_file()


class RunInterrupted(Interrupted):
    """Ctrl-C during a run; ``stage`` is the last stage on disk (-1: none)."""

    def __init__(self, run_dir: Path, stage: int, hint: str = "continue with --resume"):
        where = f"after stage {stage}" if stage >= 0 else "before the first stage"
        super().__init__(f"interrupted {where}; {hint}")
        self.run_dir, self.stage = run_dir, stage


def _versions() -> dict[str, str]:
    import peft
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__, "forgetless": __version__}


def _precision(cfg: Config) -> str:
    p = cfg.train.precision
    if p == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return "bf16"
        return "no"
    if p == "fp16" and not torch.cuda.is_available():
        raise InputError("train.precision=fp16 needs a GPU; use 'bf16', 'auto' or 'no' on CPU")
    return p  # bf16 on CPU: torch's CPU autocast, fast where the CPU has AMX / AVX512-BF16


def check_engine(accelerator) -> None:
    """``forgetless run`` trains with DDP (or one process); FSDP and DeepSpeed would run wrong, not fail:
    its optimizer is prepared apart from the model, and evaluation and saving read the unwrapped model."""
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM"):
        raise InputError(f"forgetless run does not support {kind} (docs/performance.md); launch without it (DDP), "
                         "or use forgetless.integrations.ReplayTrainer on transformers.Trainer")


class Run:
    """Holds everything one run needs; ``execute`` does the work."""

    def __init__(self, cfg: Config, run_dir: Path, *, resume: bool = False, fresh: bool = False,
                 progress: bool = True, on_stage: Callable[[int], None] | None = None):
        self.cfg, self.run_dir, self.resume, self.show_progress = cfg, Path(run_dir), resume and not fresh, progress
        self.fresh = fresh  # start over: the directory's old contents go once the lock is held
        self.on_stage = on_stage  # test hook: called after each stage is saved
        self.lock = RunLock(self.run_dir)
        self.saved_stage = -1  # the last stage on disk (for the Ctrl-C message)

    # ---- set-up ----------------------------------------------------------------------------
    def _prepare_dir(self) -> None:
        """Refuse an existing run unless resuming the same config and data (or starting fresh)."""
        d = self.run_dir
        if (d / "config.yaml").is_file() and not self.fresh:
            if not self.resume:
                raise InputError(f"run directory {d} exists; pass --resume to continue it, --fresh to start "
                                 "over, or choose another name")
            check_same_run(self.cfg, d, self.stream)

    def _write_config(self) -> None:
        """Written once everything loaded, so a bad model name or task file leaves no run directory.
        The lock is taken here, and the checks repeated under it (another writer may have run)."""
        acc = self.accelerator
        refused = None
        if acc.is_main_process:
            try:
                self.lock.acquire()
                self._prepare_dir()
            except InputError as e:
                refused = e
            else:
                if self.fresh:
                    self.lock.clear()
                path = self.run_dir / "config.yaml"
                if not path.is_file():
                    atomic_write_text(self.run_dir / FINGERPRINTS,
                                      json.dumps(fingerprints(self.cfg, self.stream), indent=1))
                    atomic_write_text(path, dump_config(self.cfg))
        if acc.num_processes > 1:  # every process stops, none waits for a main process that refused
            from accelerate.utils import broadcast_object_list

            msg = broadcast_object_list([str(refused) if refused is not None else None])[0]
            if msg is not None and refused is None:
                refused = InputError(msg)
        if refused is not None:
            raise refused
        acc.wait_for_everyone()

    def _setup(self) -> None:
        from accelerate import Accelerator
        from accelerate.state import AcceleratorState
        from accelerate.utils import set_seed

        from forgetless.data import load_stream
        from forgetless.data.general import knowledge_probe, perplexity_texts
        from forgetless.data.tokenize import tokenize_stream, use_chat_template
        from forgetless.model import load_model
        from forgetless.replay.compose import build_strategy, check_names
        from forgetless.replay.gere import check_source
        from forgetless.tracking import Tracking, accelerator_kwargs
        from forgetless.train import LOOP_RNG_TAG, steps_for_task

        cfg = self.cfg
        check_names(cfg.replay.strategies)
        # Accelerate keeps its settings in a per-process singleton that refuses a second precision; one
        # process may run several configs (bench --jobs 1, a notebook), so each run starts it afresh.
        # The process group (PartialState) is kept.
        AcceleratorState._reset_state()
        self.accelerator = Accelerator(mixed_precision=_precision(cfg), cpu=not torch.cuda.is_available(),
                                       **accelerator_kwargs(cfg, self.run_dir))
        check_engine(self.accelerator)
        set_seed(cfg.seed)
        if self.accelerator.device.type == "cpu":
            torch.set_num_threads(cfg.train.cpu_threads)
        if self.accelerator.num_processes > 1 and cfg.train.batch_size < self.accelerator.num_processes:
            raise InputError("train.batch_size must be at least the number of processes")
        check_writable(self.run_dir)
        check_source(cfg.replay.gere.source, ["+".join(cfg.replay.strategies)])
        self.stream = load_stream(cfg.data)
        bad = sorted(set(cfg.eval.general_stages or []) - set(range(len(self.stream) + 1)))
        if bad:
            raise InputError(f"stages {bad} do not exist (0: start, 1..{len(self.stream)}: after each task)",
                             field="eval.general_stages")
        self._prepare_dir()
        model, self.tokenizer = load_model(cfg.model, device=self.accelerator.device)
        self.base_model = model  # unwrapped (PEFT) model: saved, evaluated, handed to strategies
        self.chat = use_chat_template(cfg.data.chat_template, self.tokenizer, cfg.model.name)
        tokenize_stream(self.stream, self.tokenizer, cfg.data.max_length, cfg.data.prompt_template, self.chat)
        if self.stream.truncated and self.accelerator.is_main_process:
            n = sum(len(s) for s in self.stream.samples)
            print(f"warning: {self.stream.truncated} of {n} training samples were cut to data.max_length="
                  f"{cfg.data.max_length} tokens", file=sys.stderr)
        self.steps = [steps_for_task(cfg.train, len(s)) for s in self.stream.samples]
        self.general_source, self.general = perplexity_texts(cfg.data.general_source, cfg.model.name,
                                                             cfg.data.general_texts)
        self.probe = knowledge_probe(cfg.data.general_probe) if cfg.data.general_probe else None
        self.counters = WorkCounters()
        self.evaluator = StageEvaluator(cfg, self.accelerator, model, self.tokenizer, self.stream, self.chat,
                                        self.counters, self.general, self.probe)
        self.stages = StageStore(self.run_dir, self.accelerator)
        self.ctx = StrategyContext(
            config=cfg, stream=self.stream, seed=cfg.seed, counters=self.counters, model=model,
            tokenizer=self.tokenizer, device=self.accelerator.device, run_dir=self.run_dir,
            evaluate=self.evaluator.probe_accuracy, sample_losses=self.evaluator.sample_losses,
            steps_per_task=self.steps, batch_size=cfg.train.batch_size,
            reduce_sum=process_sum(self.accelerator, cfg.train.grad_accum),
        )
        self.strategy = build_strategy(self.ctx)
        self.model = self.accelerator.prepare(model)
        self._write_config()
        self.tracking = Tracking(self.accelerator, cfg, self.run_dir)  # after the config: nothing on bad input
        self.rng = np.random.default_rng([cfg.seed, LOOP_RNG_TAG])
        self.baseline: list[float] | None = None  # stage 0's scores
        self.acc_rows: list[list[float]] = []  # after each task
        self.ppl: list[float | None] = []  # per stage, as the three below
        self.harness: list[dict[str, float] | None] = []  # lm-eval scores (None: not run)
        self.probe_acc: list[float | None] = []
        self.replay_events: list[dict] = []
        self.global_step = 0

    # ---- stages: what a stage holds (stages.StageStore writes and reads it) ----------------------
    def _save_stage(self, k: int, scores: StageScores) -> None:
        acc = self.accelerator
        strategy_state = self.strategy.state_dict()  # every process computes it (same state)
        loop = {
            "stage": k, "global_step": self.global_step, "row": scores.row, "general_ppl": scores.ppl,
            "general_tasks": scores.harness, "general_probe": scores.probe,
            "counters": self.counters.as_dict(), "replay_events": self.replay_events,
            "rng": self.rng.bit_generator.state, "torch_rng": torch.get_rng_state().numpy(),
        }
        if torch.cuda.is_available():
            loop["cuda_rng"] = torch.cuda.get_rng_state().numpy()
        self.stages.save(k, self.base_model, strategy_state, loop)
        self.saved_stage = k
        acc.wait_for_everyone()
        self.tracking.stage(k, self.stream.names, scores.row, scores.ppl, self.global_step, scores.harness)
        if self.on_stage is not None:
            self.on_stage(k)

    def _record(self, k: int, scores: StageScores) -> None:
        """Stage k's scores into the run's lists (stage 0's row is the baseline)."""
        if k == 0:
            self.baseline = scores.row
        else:
            self.acc_rows.append(scores.row)
        self.ppl.append(scores.ppl)
        self.harness.append(scores.harness)
        self.probe_acc.append(scores.probe)

    def _restore(self, k: int) -> None:
        loops = self.stages.load(k, self.base_model, self.strategy)
        for j, loop_j in enumerate(loops):
            self._record(j, StageScores(loop_j["row"], loop_j["general_ppl"], loop_j.get("general_probe"),
                                     loop_j.get("general_tasks")))
        loop = loops[-1]
        self.global_step = int(loop["global_step"])
        self.counters.load(loop["counters"])
        self.replay_events = list(loop["replay_events"])
        self.rng.bit_generator.state = loop["rng"]
        torch.set_rng_state(torch.from_numpy(np.asarray(loop["torch_rng"], dtype=np.uint8)))
        if "cuda_rng" in loop and torch.cuda.is_available():
            torch.cuda.set_rng_state(torch.from_numpy(np.asarray(loop["cuda_rng"], dtype=np.uint8)))
        self.stages.truncate_log(self.global_step)

    # ---- the run ---------------------------------------------------------------------------
    def execute(self) -> dict:
        try:
            self._setup()
            return self._execute()
        finally:
            self.lock.release()

    def _execute(self) -> dict:
        from forgetless.train import Optimization, TaskLoop

        acc = self.accelerator
        start = self.stages.last_intact() if self.resume else -1
        if start >= 0:
            self._restore(start)
            self.saved_stage = start
        else:
            self.stages.truncate_log(0)
            scores = self.evaluator.evaluate(0)
            self._record(0, scores)
            self._save_stage(0, scores)
            start = 0

        optim = Optimization(self.model, acc, self.cfg.train)  # one per run; each task resets it
        log_file = open(self.run_dir / "log.jsonl", "a") if acc.is_main_process else None
        progress = _progress(self.show_progress and acc.is_main_process)
        try:
            with progress:
                for t in range(start, len(self.stream)):
                    task = self.stream.tasks[t]
                    bar = progress.add_task(f"{t + 1}/{len(self.stream)} {task.name}", total=self.steps[t],
                                            loss=float("nan"), share=0.0, tps=0.0) if progress else None

                    def on_step(s, bar=bar, t=t, task=task):
                        bad = next((v for v in (s.loss, s.extra_loss) if v is not None and not math.isfinite(v)), None)
                        if bad is not None:
                            raise InputError(f"non-finite loss ({bad}) at step {s.step}, task {t + 1} '{task.name}'; "
                                             f"stages up to {self.saved_stage} are intact: lower train.lr (or check "
                                             "the data), then rerun with --fresh")
                        if log_file is not None:
                            log_file.write(json.dumps(s.__dict__) + "\n")
                        self.tracking.step(s)
                        for part in getattr(self.strategy, "parts", [self.strategy]):  # MSSR's calibration probe
                            if hasattr(part, "calibrate"):
                                part.calibrate(s.step)
                        if progress:
                            progress.update(bar, advance=1, loss=s.loss, share=s.replay_share, tps=s.tokens_per_s)

                    t0 = time.perf_counter()
                    self.strategy.on_task_start(task, t, self.global_step + 1)  # the step index of its first step
                    self.counters.time_replay_bookkeeping_s += time.perf_counter() - t0
                    loop = TaskLoop(self.model, acc, optim, self.strategy, self.counters, self.cfg.train,
                                    self.tokenizer.pad_token_id, self.rng, self.replay_events, on_step)
                    self.ctx.extras["lr_scale"] = lambda step, loop=loop: loop.lr_factor
                    self.global_step = loop.run(t, self.stream.samples[t], self.steps[t], self.global_step)
                    t0 = time.perf_counter()
                    self.strategy.on_task_end(task, t, self.global_step)
                    self.counters.time_replay_bookkeeping_s += time.perf_counter() - t0
                    if log_file is not None:
                        log_file.flush()
                    scores = self.evaluator.evaluate(t + 1)
                    self._record(t + 1, scores)
                    self._save_stage(t + 1, scores)
            return self._finish()
        finally:
            if log_file is not None:
                log_file.close()
            self.tracking.end()

    def _finish(self) -> dict:
        from forgetless import metrics
        from forgetless.report import replay_volume, write_outputs

        acc = np.asarray(self.acc_rows, dtype=float)
        base = np.asarray(self.baseline, dtype=float)
        names = self.stream.names
        ga = metrics.general_ability(self.ppl[0], self.ppl[-1]) if self.ppl and self.ppl[0] else None
        result: dict[str, Any] = {
            "name": self.cfg.name,
            "tasks": names,
            "task_kinds": [t.kind for t in self.stream.tasks],
            "task_metrics": [t.metric for t in self.stream.tasks],
            "acc": acc.tolist(),  # the score matrix: each task's own metric (docs/metrics.md)
            "baseline_acc": base.tolist(),
            "metrics": to_jsonable(metrics.compute(acc, base)),
            "normalized_score": metrics.normalized_score(acc),
            "general_ppl": self.ppl,
            "general_source": self.general_source,  # the perplexity text (data.general_source resolved)
            "general_tasks": [{"stage": k, "scores": h} for k, h in enumerate(self.harness) if h is not None],
            "general_ability": ga,
            "general_probe_acc": self.probe_acc if self.probe else None,  # per stage, 0 = start
            "hm_ga_ap": metrics.harmonic_mean(ga, float(acc[-1].mean())) if ga is not None else None,
            "counters": self.counters.as_dict(),
            "replay_events": self.replay_events,
            # optional Strategy.report(): schedule, sampler, per-task budget use, predicted retention trace
            "replay_report": self.strategy.report() if hasattr(self.strategy, "report") else {},
            "steps_per_task": self.steps,
            "strategy": "+".join(self.cfg.replay.strategies),
            "seed": self.cfg.seed,
            "model": self.cfg.model.name,
            "n_processes": self.accelerator.num_processes,
            "truncated_samples": self.stream.truncated,
            "chat_template": self.chat,
            "versions": _versions(),
        }
        result["replay_volume"] = replay_volume(result)  # per task and quarter, with the budget's ledger
        self.tracking.final(result, self.global_step)
        if self.accelerator.is_main_process:
            write_outputs(self.run_dir, result)
        self.accelerator.wait_for_everyone()
        return result


def to_jsonable(x):
    """numpy arrays and scalars to lists and numbers, recursively (results and states as JSON)."""
    if isinstance(x, dict):
        return {k: to_jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [to_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


def _progress(enabled: bool):
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn("{task.description:<24}", markup=False), BarColumn(), MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]:.3f}"), TextColumn("replay {task.fields[share]:.0%}"),
        TextColumn("{task.fields[tps]:.0f} tok/s"), TimeElapsedColumn(),
    )


class _NoProgress(nullcontext):
    def __bool__(self) -> bool:
        return False


def run(cfg: Config, output_dir: str | Path | None = None, *, resume: bool = False, fresh: bool = False,
        progress: bool = True, on_stage: Callable[[int], None] | None = None) -> dict:
    """Run (or resume) one experiment; returns the results dict also written to results.json.

    Resuming a finished run returns its results once its config and task data are checked to be
    this run's. ``fresh`` deletes an existing run of that name (after every check passed)."""
    run_dir = run_dir_for(cfg, output_dir)
    if resume and not fresh and is_finished(run_dir):
        check_same_run(cfg, run_dir)
        return load_results(run_dir)
    r = Run(cfg, run_dir, resume=resume, fresh=fresh, progress=progress, on_stage=on_stage)
    try:
        return r.execute()
    except KeyboardInterrupt:
        raise RunInterrupted(run_dir, r.saved_stage) from None
