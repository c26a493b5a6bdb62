"""Baseline replay strategies: none, joint, uniform, fixed, loss_triggered, accuracy_triggered.

Rules shared by all of them:

- Memory: a ``ReplayMemory`` admits ``ctx.stream.samples[task_index]`` at each task end, so a draw
  during task t only ever sees tasks < t. Draws are uniform without replacement (no duplicates in a
  batch) and capped by the memory's size.
- Randomness: one ``np.random.Generator`` per strategy seeded from (config seed, strategy name), so
  every process makes identical decisions given identical (all-gathered) observed losses.
- Steps: a strategy counts the ``replay_batch`` calls of the current task itself (call i = 0, 1, ...
  after ``on_task_start``), so it does not depend on how the loop numbers its steps.
- Budget: ``ctx.replay_budget(t)`` caps the samples replayed during task t. ``uniform`` and ``fixed``
  turn it into a per-step / per-event volume at task start (the budget, not the ratio, then sets the
  volume); the triggered strategies ask a ``BudgetPacer`` each step. A budget larger than the memory
  can serve in the task's steps is logged as a warning and shows in ``task_log`` (``replayed`` below
  ``budget``): it is reported, not met. ``joint`` ignores budget and memory.
"""

from __future__ import annotations

import logging
import math
import zlib

import numpy as np

from forgetless.replay.base import BaseStrategy, BudgetPacer, ReplayBatch, StrategyContext, register
from forgetless.replay.memory import ReplayMemory

log = logging.getLogger(__name__)


def _rngs(seed: int, name: str) -> tuple[np.random.Generator, int]:
    """Strategy RNG and memory seed, both derived from the run seed and the strategy name."""
    a, b = np.random.SeedSequence([int(seed), zlib.crc32(name.encode())]).spawn(2)
    return np.random.default_rng(a), int(b.generate_state(1)[0])


def _np(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x).ravel()


class _Carry:
    """Rounds a fractional per-call volume so the running total stays floor(sum of rates)."""

    def __init__(self) -> None:
        self.target = 0.0
        self.given = 0

    def take(self, rate: float) -> int:
        self.target += rate
        n = max(0, math.floor(self.target + 1e-6) - self.given)  # 1e-6: float sums of 0.1s stay exact
        self.given += n
        return n

    def state_dict(self) -> dict:
        return {"target": self.target, "given": self.given}

    def load_state_dict(self, d: dict) -> None:
        self.target, self.given = float(d["target"]), int(d["given"])


@register("none")
class NoReplay(BaseStrategy):
    """Plain sequential fine-tuning (the lower-bound reference)."""

    name = "none"


class _MemoryStrategy(BaseStrategy):
    """Memory, RNG, per-task call counter and budget bookkeeping shared by the replaying baselines."""

    def __init__(self, ctx: StrategyContext):
        super().__init__(ctx)
        self.rcfg = ctx.config.replay
        self.rng, mem_seed = _rngs(ctx.seed, self.name)
        self.memory = ReplayMemory(self.rcfg.memory.size, self.rcfg.memory.policy, seed=mem_seed)
        self.task_index = -1
        self.i = 0  # replay_batch calls in the current task
        self.replayed = 0  # samples replayed in the current task
        self.budget: int | None = None
        self.carry = _Carry()
        self.task_log: list[dict] = []  # per finished task: budget and samples actually replayed

    # ---- helpers -------------------------------------------------------------------------
    def _steps(self) -> int:
        steps = self.ctx.steps_per_task
        if self.task_index >= len(steps):
            raise ValueError(f"{self.name}: ctx.steps_per_task has no entry for task {self.task_index}")
        return int(steps[self.task_index])

    def _batch_size(self) -> int:
        return self.ctx.batch_size or self.ctx.config.train.batch_size

    def _warn_unmet(self, servable: int) -> None:
        if self.budget is not None and self.budget > servable:
            log.warning("%s: replay budget %d for task %d exceeds what the memory (%d samples) can serve "
                        "(%d); replaying at most that", self.name, self.budget, self.task_index,
                        len(self.memory), servable)

    def _draw(self, n: int) -> ReplayBatch | None:
        n = min(int(n), len(self.memory))
        if n <= 0:
            return None
        slots = self.rng.choice(len(self.memory), size=n, replace=False)
        self.replayed += n
        return ReplayBatch(self.memory.get(slots))

    # ---- contract ------------------------------------------------------------------------
    def on_task_start(self, task, task_index: int, step: int) -> None:
        self.task_index, self.i, self.replayed = task_index, 0, 0
        self.budget = self.ctx.replay_budget(task_index)
        self.carry = _Carry()
        self._plan()

    def _plan(self) -> None:
        pass

    def replay_batch(self, step: int, batch_size: int) -> ReplayBatch | None:
        rb = self._replay(self.i, batch_size)
        self.i += 1
        return rb

    def _replay(self, i: int, batch_size: int) -> ReplayBatch | None:
        raise NotImplementedError

    def on_task_end(self, task, task_index: int, step: int) -> None:
        self.task_log.append({"task": task_index, "budget": self.budget, "replayed": self.replayed})
        self.memory.admit(self.ctx.stream.samples[task_index])

    def state_dict(self) -> dict:
        return {
            "memory": self.memory.state_dict(),
            "rng": self.rng.bit_generator.state,
            "task_index": self.task_index,
            "i": self.i,
            "replayed": self.replayed,
            "budget": self.budget,
            "carry": self.carry.state_dict(),
            "task_log": [dict(e) for e in self.task_log],
        }

    def load_state_dict(self, d: dict) -> None:
        by_id = {s.sample_id: s for task in self.ctx.stream.samples for s in task}
        self.memory.load_state_dict(d["memory"], by_id.__getitem__)
        self.rng.bit_generator.state = d["rng"]
        self.task_index, self.i, self.replayed = int(d["task_index"]), int(d["i"]), int(d["replayed"])
        self.budget = None if d["budget"] is None else int(d["budget"])
        self.carry.load_state_dict(d["carry"])
        self.task_log = [dict(e) for e in d["task_log"]]


@register("joint")
class JointReplay(BaseStrategy):
    """Multi-task training on every task seen so far: the upper-bound reference.

    With k tasks seen (the current one is the k-th), each step adds (k-1) * batch_size samples drawn
    uniformly without replacement from the union of the k-1 earlier tasks' full training sets. The
    merged batch of k * batch_size is then a multi-task batch over all seen tasks: the current task
    has a 1/k share and the earlier ones share the rest in proportion to their size (1/k each for
    equal-sized tasks), i.e. joint training on the union, presented in task order. No memory bound,
    and ``replay.budget`` is ignored.
    """

    name = "joint"

    def __init__(self, ctx: StrategyContext):
        super().__init__(ctx)
        self.rng, _ = _rngs(ctx.seed, self.name)
        self.task_index = -1
        self.pool: list = []

    def on_task_start(self, task, task_index: int, step: int) -> None:
        self.task_index = task_index
        self.pool = [s for t in self.ctx.stream.samples[:task_index] for s in t]

    def replay_batch(self, step: int, batch_size: int) -> ReplayBatch | None:
        n = min(max(0, self.task_index) * batch_size, len(self.pool))
        if n <= 0:
            return None
        idx = self.rng.choice(len(self.pool), size=n, replace=False)
        return ReplayBatch([self.pool[int(j)] for j in idx])

    def state_dict(self) -> dict:
        return {"rng": self.rng.bit_generator.state, "task_index": self.task_index}

    def load_state_dict(self, d: dict) -> None:
        self.rng.bit_generator.state = d["rng"]
        self.task_index = int(d["task_index"])
        self.pool = [s for t in self.ctx.stream.samples[: max(0, self.task_index)] for s in t]


class _Scheduled(_MemoryStrategy):
    """Replays on a fixed pattern; a budget sets the volume per replay (``rate``) at task start."""

    rate: float | None = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rate": self.rate}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.rate = d["rate"]


@register("uniform")
class UniformReplay(_Scheduled):
    """Every step, ratio * batch_size memory samples (or budget / steps with a budget).

    Fractional volumes are carried over, so the total over n steps is floor(n * volume).
    """

    name = "uniform"

    def _plan(self) -> None:
        self.rate = None
        if self.budget is not None:
            steps = self._steps()
            self.rate = self.budget / steps if steps else 0.0
            self._warn_unmet(steps * len(self.memory))

    def _replay(self, i: int, batch_size: int) -> ReplayBatch | None:
        rate = self.rcfg.uniform.ratio * batch_size if self.rate is None else self.rate
        return self._draw(self.carry.take(rate))


@register("fixed")
class FixedReplay(_Scheduled):
    """Fixed interleaved replay: ratio * batch_size memory samples on every ``interval``-th step.

    Events fall on calls 0, K, 2K, ... of each task (so every task with a step replays at least
    once and a budget can always be spent); with a budget the per-event volume is
    budget / ceil(steps / K), carried over so the task's total equals the budget.
    """

    name = "fixed"

    def _plan(self) -> None:
        self.rate = None
        if self.budget is not None:
            events = math.ceil(self._steps() / self.rcfg.fixed.interval)
            self.rate = self.budget / events if events else 0.0
            self._warn_unmet(events * len(self.memory))

    def _replay(self, i: int, batch_size: int) -> ReplayBatch | None:
        if i % self.rcfg.fixed.interval:
            return None
        rate = self.rcfg.fixed.ratio * batch_size if self.rate is None else self.rate
        return self._draw(self.carry.take(rate))


class _Triggered(_MemoryStrategy):
    """A trigger decides when; a ``BudgetPacer`` caps (and if needed forces) how much."""

    ratio = 1.0

    def __init__(self, ctx: StrategyContext):
        super().__init__(ctx)
        self.pacer = BudgetPacer(None, 0, 1)

    def _plan(self) -> None:
        steps = self._steps() if self.budget is not None else 0
        want = math.ceil(self.ratio * self._batch_size())
        need = math.ceil(self.budget / steps) if self.budget and steps else 0
        # the pacer's cap is the most one step may replay: enough for the budget, never above the memory
        self.pacer = BudgetPacer(self.budget, steps, max(1, min(len(self.memory), max(want, need))))
        self._warn_unmet(steps * len(self.memory))

    def _paced(self, wanted: int) -> ReplayBatch | None:
        return self._draw(self.pacer.grant(wanted))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "pacer": self.pacer.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.pacer = BudgetPacer(None, 0, 1)
        self.pacer.load_state_dict(d["pacer"])


@register("loss_triggered")
class LossTriggeredReplay(_Triggered):
    """Loss-based replay: replay ratio * batch_size memory samples when the loss crosses a threshold.

    Training-loss mode (default): the step loss is the mean observed loss of the step's new-task
    samples (ids >= 0 and not in memory). ``observe`` runs after ``replay_batch`` of the same step,
    so a crossing measured at step t makes step t+1 replay (one step per crossing).
    ``absolute``: loss > threshold. ``running``: loss > mean + c * std of the previous ``window``
    step losses of this task, only once ``window`` losses are collected (the history restarts at
    each task, whose loss has its own scale); a 1e-9 relative tolerance keeps a flat loss silent.

    Probe mode (``probe: true``): at calls 0, P, 2P, ... of a task, the strategy scores a probe
    subset of ``probe_size`` memory samples (fixed for the task, so the probe loss moves with the
    model, not with the draw) with ``ctx.sample_losses`` (forward-only; it counts its own tokens),
    applies the same threshold test to their mean (``running``: over the last ``window`` probes), and
    if it fires replays on that step and the next P - 1 ones, until the next probe.
    """

    name = "loss_triggered"

    def __init__(self, ctx: StrategyContext):
        super().__init__(ctx)
        self.cfg = self.rcfg.loss_triggered
        self.ratio = self.cfg.ratio
        if self.cfg.probe and ctx.sample_losses is None:
            raise ValueError("loss_triggered with probe: true needs ctx.sample_losses")
        self.history: list[float] = []
        self.triggered = False
        self.probe_slots: list[int] = []
        self.n_triggers = 0  # crossings over the run
        self.n_probes = 0

    def _plan(self) -> None:
        super()._plan()
        self.history, self.triggered = [], False
        n = min(self.cfg.probe_size, len(self.memory))
        self.probe_slots = sorted(int(s) for s in self.rng.choice(len(self.memory), n, replace=False)) \
            if self.cfg.probe and n else []

    def _crosses(self, x: float) -> bool:
        cfg = self.cfg
        if cfg.mode == "absolute":
            fire = x > cfg.threshold
        else:
            h = np.asarray(self.history, dtype=np.float64)
            fire = len(h) >= cfg.window and x > h.mean() + cfg.c * h.std() + 1e-9 * max(1.0, abs(h.mean()))
            self.history = (self.history + [x])[-cfg.window :]
        self.n_triggers += int(fire)
        return bool(fire)

    def _replay(self, i: int, batch_size: int) -> ReplayBatch | None:
        if self.cfg.probe and i % self.cfg.probe_every == 0:
            self.triggered = False
            if self.probe_slots:
                losses = np.asarray(self.ctx.sample_losses(self.memory.get(self.probe_slots)), dtype=np.float64)
                self.n_probes += 1
                self.triggered = self._crosses(float(losses.mean()))
        want = self.carry.take(self.ratio * batch_size) if self.triggered else 0
        if not self.cfg.probe:
            self.triggered = False  # a training-loss crossing buys one step
        return self._paced(want)

    def observe(self, sample_ids, losses, step: int) -> None:
        if self.cfg.probe:
            return
        ids, losses = _np(sample_ids).astype(np.int64), _np(losses).astype(np.float64)
        new = (ids >= 0) & (self.memory.slots_of(ids) < 0)
        if new.any():
            self.triggered = self._crosses(float(losses[new].mean()))

    def state_dict(self) -> dict:
        return {**super().state_dict(), "history": list(self.history), "triggered": self.triggered,
                "probe_slots": list(self.probe_slots), "n_triggers": self.n_triggers, "n_probes": self.n_probes}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.history = [float(x) for x in d["history"]]
        self.triggered = bool(d["triggered"])
        self.probe_slots = [int(s) for s in d["probe_slots"]]
        self.n_triggers, self.n_probes = int(d["n_triggers"]), int(d["n_probes"])


@register("accuracy_triggered")
class AccuracyTriggeredReplay(_Triggered):
    """Accuracy-based replay: replay for ``window`` steps after a held-out accuracy drop.

    At the end of task j (all but the last) its probe set, ``tasks[j].test[:probe_size]``, is
    scored with ``ctx.evaluate(j, examples)`` (it counts its own tokens) as the reference. During a
    later task, at the start of calls E, 2E, ... (inside ``replay_batch``, i.e. after E, 2E, ...
    optimizer steps of the task) every earlier task's probe set is scored again; if any is more
    than ``delta`` below its reference, that step and the next ``window - 1`` replay
    ratio * batch_size memory samples (a new drop restarts the window).
    """

    name = "accuracy_triggered"

    def __init__(self, ctx: StrategyContext):
        super().__init__(ctx)
        self.cfg = self.rcfg.accuracy_triggered
        self.ratio = self.cfg.ratio
        if ctx.evaluate is None:
            raise ValueError("accuracy_triggered needs ctx.evaluate")
        self.refs: dict[int, float] = {}
        self.left = 0  # replay steps left in the current window
        self.n_triggers = 0
        self.n_evals = 0  # probe-set evaluations over the run

    def _eval(self, j: int) -> float:
        self.n_evals += 1
        return float(self.ctx.evaluate(j, self.ctx.stream.tasks[j].test[: self.cfg.probe_size]))

    def _plan(self) -> None:
        super()._plan()
        self.left = 0

    def on_task_end(self, task, task_index: int, step: int) -> None:
        super().on_task_end(task, task_index, step)
        if task_index < len(self.ctx.stream.tasks) - 1 and self.ctx.stream.tasks[task_index].test:
            self.refs[task_index] = self._eval(task_index)

    def _replay(self, i: int, batch_size: int) -> ReplayBatch | None:
        if i > 0 and i % self.cfg.every == 0:
            accs = {j: self._eval(j) for j in sorted(self.refs) if j < self.task_index}
            if any(self.refs[j] - a > self.cfg.delta + 1e-9 for j, a in accs.items()):
                self.left = self.cfg.window
                self.n_triggers += 1
        want = 0
        if self.left > 0:
            want = self.carry.take(self.ratio * batch_size)
            self.left -= 1
        return self._paced(want)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "refs": [[j, a] for j, a in sorted(self.refs.items())],
                "left": self.left, "n_triggers": self.n_triggers, "n_evals": self.n_evals}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.refs = {int(j): float(a) for j, a in d["refs"]}
        self.left, self.n_triggers, self.n_evals = int(d["left"]), int(d["n_triggers"]), int(d["n_evals"])
