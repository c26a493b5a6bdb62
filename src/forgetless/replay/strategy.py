"""Task replay = one memory + a schedule (when, how many) + a sampler (which), under one budget.

Presets name a (schedule, sampler) pair; ``replay.schedule`` / ``replay.sampler`` override the pair
of whatever preset is configured (docs/mssr.md, "Schedule x sampler"):

| preset | schedule | sampler |
|---|---|---|
| uniform | every_step | uniform |
| fixed | fixed | uniform |
| loss_triggered | loss_triggered | uniform |
| accuracy_triggered | accuracy_triggered | uniform |
| mssr | mssr | mssr |
| mssr_sampler | fixed | mssr |
| mssr_schedule | mssr | uniform |

Rules shared by all of them:

- Memory: a ``ReplayMemory`` admits ``ctx.stream.samples[task_index]`` at each task end, so a draw
  during task t only ever sees tasks < t. Draws are without replacement (no duplicates in a
  batch) and capped by the memory's size.
- Randomness: one ``np.random.Generator`` per strategy seeded from (config seed, preset name), so
  every process makes identical decisions given identical (all-gathered) observed losses. ``mssr``
  keeps its own seeding (``[seed, "MSSR"]``, memory seeded with the run seed), so its numbers
  are those it had before the split.
- Steps: the host counts the ``replay_batch`` calls of the current task itself (call i = 0, 1, ...
  after ``on_task_start``); the mssr schedules use the global step the loop passes.
- Memory strength (samplers/strength.py) is kept only when the schedule or the sampler needs it.
- Budget: the schedule asks for a volume, the host caps it by the memory and passes it through
  the one ``ReplayBudget`` (replay/base.py), which grants at most what remains of the task's
  budget. What is not spent is the task's underspend (``report()["budget"]``), never replayed later.
"""

from __future__ import annotations

import logging
import math
import zlib
from typing import Any

import numpy as np

from forgetless.replay.base import BaseStrategy, ReplayBatch, ReplayBudget, StrategyContext, register
from forgetless.replay.calibration import CANDIDATES, CalibrationProbe, forward_losses
from forgetless.replay.memory import ReplayMemory
from forgetless.replay.samplers import SAMPLERS
from forgetless.replay.samplers.strength import MemoryStrength
from forgetless.replay.schedules import SCHEDULES

log = logging.getLogger(__name__)

# preset -> (schedule, sampler)
PRESETS = {
    "uniform": ("every_step", "uniform"),
    "fixed": ("fixed", "uniform"),
    "loss_triggered": ("loss_triggered", "uniform"),
    "accuracy_triggered": ("accuracy_triggered", "uniform"),
    "mssr": ("mssr", "mssr"),
    "mssr_sampler": ("fixed", "mssr"),
    "mssr_schedule": ("mssr", "uniform"),
}
_MSSR_SEED_TAG = 0x4D535352  # "MSSR": the mssr preset's RNG stream, as before the split


def rngs(seed: int, name: str) -> tuple[np.random.Generator, int]:
    """Strategy RNG and memory seed, both derived from the run seed and the strategy name."""
    a, b = np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).spawn(2)
    return np.random.default_rng(a), int(b.generate_state(1)[0])


def as_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: keep the bookkeeping out of the graph
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x).reshape(-1)


class ReplayStrategy(BaseStrategy):
    """The host: memory, RNG, per-task call counter and budget grants; the schedule and sampler do the rest."""

    def __init__(self, ctx: StrategyContext, name: str):
        super().__init__(ctx)
        self.name = name
        self.rcfg = ctx.config.replay
        schedule, sampler = PRESETS[name]
        self.schedule_name = self.rcfg.schedule or schedule
        self.sampler_name = self.rcfg.sampler or sampler
        if name == "mssr":
            self.rng, mem_seed = np.random.default_rng([int(ctx.seed), _MSSR_SEED_TAG]), int(ctx.seed)
        else:
            self.rng, mem_seed = rngs(ctx.seed, name)
        self.memory = ReplayMemory(self.rcfg.memory.size, self.rcfg.memory.policy, seed=mem_seed)
        self.schedule = SCHEDULES[self.schedule_name](self)
        self.sampler = SAMPLERS[self.sampler_name](self)
        self.strength: MemoryStrength | None = None
        self.shadows: dict[str, MemoryStrength] = {}  # other memory models, scored by the calibration probe
        self.calibration: CalibrationProbe | None = None
        mc = self.rcfg.mssr
        if self.schedule.needs_strength or self.sampler.needs_strength:
            self.strength = MemoryStrength.from_config(self.memory, mc, ctx)
            if mc.calibration.enabled:
                want = list(mc.calibration.compare)
                if not hasattr(self.strength, "task_sxy") and "task" not in want:
                    want.append("task")  # a fitted model keeps the rows' stored losses
                for c in want:
                    rc = mc.retention.model_copy(update=CANDIDATES[c])
                    self.shadows[c] = MemoryStrength.from_config(self.memory, mc, ctx, rc, prefix=f"cal_{c}_")
                self.calibration = CalibrationProbe(self, {"model": self.strength, **self.shadows})
        self.concentration: list[dict] = []  # sampler weight mass on the top 10% of rows, mid-task
        self.task_index = -1
        self.i = 0  # replay_batch calls in the current task
        self.replayed = 0  # samples replayed in the current task
        self.budget = ReplayBudget()  # every volume goes through it; a composite shares one (compose.py)
        self.task_log: list[dict] = []  # per finished task: budget and samples actually replayed
        self.trace_steps: list[int] = []  # predicted mean retention per step (memory strength only)
        self.trace_retention: list[float] = []

    # ---- for schedules ---------------------------------------------------------------------
    def steps(self) -> int:
        steps = self.ctx.steps_per_task
        if self.task_index >= len(steps):
            raise ValueError(f"{self.name}: ctx.steps_per_task has no entry for task {self.task_index}")
        return int(steps[self.task_index])

    def batch_size(self) -> int:
        return self.ctx.batch_size or self.ctx.config.train.batch_size

    def warn_unmet(self, servable: int) -> None:
        if self.budget.total is not None and self.budget.total > servable:
            log.warning("%s: replay budget %d for task %d exceeds what the memory (%d samples) can serve "
                        "(%d); replaying at most that", self.name, self.budget.total, self.task_index,
                        len(self.memory), servable)

    # ---- contract ------------------------------------------------------------------------
    def on_task_start(self, task, task_index: int, step: int) -> None:
        self.task_index, self.i, self.replayed = int(task_index), 0, 0
        self.budget.open(self.ctx, task_index)
        for m in self.models():
            m.start_task(task_index)
        self.schedule.start(task_index, step)

    def replay_batch(self, step: int, batch_size: int) -> ReplayBatch | None:
        if self.strength is not None and len(self.memory):
            self.trace_steps.append(int(step))
            self.trace_retention.append(float(self.strength.strength().mean()))
            spt = self.ctx.steps_per_task
            if self.task_index < len(spt) and self.i == int(spt[self.task_index]) // 2:
                w = np.sort(self.strength.weights())[::-1]
                top = w[: max(1, math.ceil(0.1 * len(w)))].sum()
                self.concentration.append({"task": self.task_index, "step": int(step), "top10_mass": float(top)})
        n = self.schedule.volume(self.i, step, batch_size)  # the schedule asks
        self.i += 1
        n = self.budget.grant(min(int(n), len(self.memory)))  # the budget grants
        if n <= 0:
            return None
        slots = self.sampler.draw(n)
        self.replayed += n
        return ReplayBatch(self.memory.get(slots))

    def observe(self, sample_ids, losses, step: int) -> None:
        ids = as_numpy(sample_ids).astype(np.int64)
        losses = as_numpy(losses).astype(np.float64)
        slots = self.memory.slots_of(ids)
        new = (ids >= 0) & (slots < 0)
        for m in self.models():
            m.observe(ids, losses, slots, new, step)
        self.schedule.observe(ids, losses, new, step)

    def on_task_end(self, task, task_index: int, step: int) -> None:
        self.task_log.append({"task": task_index, "budget": self.budget.total, "replayed": self.replayed})
        self.budget.close(task_index)
        rows = self.memory.admit(self.ctx.stream.samples[task_index])
        stored = None  # the fitted model's reference: each admitted row's loss now, at the end of its task
        if any(hasattr(m, "task_sxy") for m in self.models()) and self.ctx.sample_losses is not None:
            # evaluation work when only the calibration probe's shadow model needs them
            stored = forward_losses(self.ctx, self.memory.get(rows), as_eval=not hasattr(self.strength, "task_sxy"))
        for m in self.models():
            m.admit(rows, step, stored)
        self.schedule.on_task_end(task_index, step)

    def models(self) -> list[MemoryStrength]:
        """The memory model and its shadows: all see the same observations."""
        return ([self.strength] if self.strength is not None else []) + list(self.shadows.values())

    def calibrate(self, step: int) -> dict | None:
        """The run loop's hook after each step: the calibration probe, when it is due."""
        return self.calibration.probe(step) if self.calibration is not None else None

    # ---- reporting -------------------------------------------------------------------------
    def strengths(self) -> np.ndarray:
        """Current m of the live memory rows (row order of ``self.memory``)."""
        if self.strength is None:
            raise ValueError(f"{self.name}: no memory strength is kept for this schedule and sampler")
        return self.strength.strength()

    def describe_schedule(self) -> dict[str, Any]:
        return {"task_index": self.task_index, "memory_size": len(self.memory), **self.schedule.describe()}

    def report(self) -> dict[str, Any]:
        """What a run's results.json keeps of this strategy (the retention plot reads ``retention``)."""
        out: dict[str, Any] = {"schedule": self.schedule_name, "sampler": self.sampler_name,
                               "task_log": [dict(e) for e in self.task_log],
                               "budget": [dict(e) for e in self.budget.ledger]}
        if self.strength is not None:
            out["retention"] = {"step": list(self.trace_steps), "mean": list(self.trace_retention)}
            out["concentration"] = [dict(e) for e in self.concentration]
        if self.calibration is not None:
            out["calibration"] = self.calibration.report()
        return out

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        d = {
            "memory": self.memory.state_dict(),
            "rng": self.rng.bit_generator.state,
            "task_index": self.task_index,
            "i": self.i,
            "replayed": self.replayed,
            "replay_budget": self.budget.state_dict(),
            "task_log": [dict(e) for e in self.task_log],
            "schedule": self.schedule.state_dict(),
            "trace_steps": np.asarray(self.trace_steps, dtype=np.int64),
            "trace_retention": np.asarray(self.trace_retention, dtype=np.float64),
        }
        if self.strength is not None:
            d["strength"] = self.strength.state_dict()
            d["concentration"] = [dict(e) for e in self.concentration]
        if self.calibration is not None:
            d["shadows"] = {k: m.state_dict() for k, m in self.shadows.items()}
            d["calibration"] = self.calibration.state_dict()
        return d

    def load_state_dict(self, d: dict) -> None:
        by_id = {s.sample_id: s for task in self.ctx.stream.samples for s in task}
        self.memory.load_state_dict(d["memory"], by_id.__getitem__)
        self.rng.bit_generator.state = d["rng"]
        self.task_index, self.i, self.replayed = int(d["task_index"]), int(d["i"]), int(d["replayed"])
        self.budget.load_state_dict(d["replay_budget"])
        self.task_log = [dict(e) for e in d["task_log"]]
        self.schedule.load_state_dict(d["schedule"])
        self.trace_steps = [int(x) for x in np.asarray(d["trace_steps"]).reshape(-1)]
        self.trace_retention = [float(x) for x in np.asarray(d["trace_retention"]).reshape(-1)]
        if self.strength is not None:
            self.strength.load_state_dict(d["strength"])
            self.concentration = [dict(e) for e in d.get("concentration", [])]
        if self.calibration is not None:
            for k, m in self.shadows.items():
                m.load_state_dict(d["shadows"][k])
            self.calibration.load_state_dict(d["calibration"])


def _preset(name: str):
    def factory(ctx: StrategyContext) -> ReplayStrategy:
        return ReplayStrategy(ctx, name)

    factory.__name__ = f"preset_{name}"
    return factory


for _name in PRESETS:
    register(_name)(_preset(_name))
