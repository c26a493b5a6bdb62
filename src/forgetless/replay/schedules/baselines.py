"""Baseline schedules: every step, fixed interval, loss-triggered, accuracy-triggered.

Budget: the host passes every volume through the run's one ``ReplayBudget`` (replay/base.py),
which grants at most what remains of the task's budget (``host.budget.total`` samples) and
reports what is left as underspend. Each schedule's own rule says how it spends: ``every_step``
and ``fixed`` spread the budget evenly over their steps / events (the budget, not the ratio, then
sets the volume, so they spend it all); the triggered schedules replay ``ratio * batch_size`` on
the steps they trigger and nothing else, so a trigger that never fires spends nothing. A budget
larger than the memory can serve is logged as a warning and shows as underspend.
"""

from __future__ import annotations

import math

import numpy as np


class Carry:
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


class Schedule:
    """Shared plumbing: the host, a carry for fractional volumes, no-op hooks."""

    name = "schedule"
    needs_strength = False

    def __init__(self, host):
        self.host = host
        self.carry = Carry()

    def start(self, task_index: int, step: int) -> None:
        self.carry = Carry()

    def volume(self, i: int, step: int, batch_size: int) -> int:
        raise NotImplementedError

    def observe(self, ids: np.ndarray, losses: np.ndarray, new: np.ndarray, step: int) -> None:
        pass

    def on_task_end(self, task_index: int, step: int) -> None:
        pass

    def describe(self) -> dict:
        return {}

    def state_dict(self) -> dict:
        return {"carry": self.carry.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.carry.load_state_dict(d["carry"])


class _Rated(Schedule):
    """A budget sets the volume per replay (``rate``) at task start."""

    rate: float | None = None

    def state_dict(self) -> dict:
        return {**super().state_dict(), "rate": self.rate}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.rate = d["rate"]


class EveryStepSchedule(_Rated):
    """Every step, ``replay.uniform.ratio`` * batch_size samples (or budget / steps with a budget).

    Fractional volumes are carried over, so the total over n steps is floor(n * volume).
    """

    name = "every_step"

    def start(self, task_index: int, step: int) -> None:
        super().start(task_index, step)
        h = self.host
        self.rate = None
        if h.budget.total is not None:  # spread evenly: budget / steps a step
            steps = h.steps()
            self.rate = h.budget.total / steps if steps else 0.0
            h.warn_unmet(steps * len(h.memory))

    def volume(self, i: int, step: int, batch_size: int) -> int:
        rate = self.host.rcfg.uniform.ratio * batch_size if self.rate is None else self.rate
        return self.carry.take(rate)


class FixedSchedule(_Rated):
    """Fixed interleaved replay: ``replay.fixed.ratio`` * batch_size samples every ``interval`` steps.

    Events fall on calls 0, K, 2K, ... of each task (so every task with a step replays at least
    once and a budget can always be spent); with a budget the per-event volume is
    budget / ceil(steps / K), carried over so the task's total equals the budget.
    """

    name = "fixed"

    def start(self, task_index: int, step: int) -> None:
        super().start(task_index, step)
        h = self.host
        self.rate = None
        if h.budget.total is not None:  # spread evenly over the task's events
            events = math.ceil(h.steps() / h.rcfg.fixed.interval)
            self.rate = h.budget.total / events if events else 0.0
            h.warn_unmet(events * len(h.memory))

    def volume(self, i: int, step: int, batch_size: int) -> int:
        cfg = self.host.rcfg.fixed
        if i % cfg.interval:
            return 0
        rate = cfg.ratio * batch_size if self.rate is None else self.rate
        return self.carry.take(rate)


class _Triggered(Schedule):
    """A trigger decides when; ``ratio * batch_size`` samples on each triggered step, nothing else."""

    ratio = 1.0

    def start(self, task_index: int, step: int) -> None:
        super().start(task_index, step)
        h = self.host
        if h.budget.total is not None:
            h.warn_unmet(h.steps() * len(h.memory))


class LossTriggeredSchedule(_Triggered):
    """Loss-based replay: replay ratio * batch_size memory samples when the loss crosses a threshold.

    Training-loss mode (default): the step loss is the mean observed loss of the step's new-task
    samples (ids >= 0 and not in memory). ``observe`` runs after ``replay_batch`` of the same step,
    so a crossing measured at step t makes step t+1 replay (one step per crossing).
    ``absolute``: loss > threshold. ``running``: loss > mean + c * std of the previous ``window``
    step losses of this task, only once ``window`` losses are collected (the history restarts at
    each task, whose loss has its own scale); a 1e-9 relative tolerance keeps a flat loss silent.

    Probe mode (``probe: true``): at calls 0, P, 2P, ... of a task, the schedule scores a probe
    subset of ``probe_size`` memory samples (fixed for the task, so the probe loss moves with the
    model, not with the draw) with ``ctx.sample_losses`` (forward-only; it counts its own tokens),
    applies the same threshold test to their mean (``running``: over the last ``window`` probes), and
    if it fires replays on that step and the next P - 1 ones, until the next probe.
    """

    name = "loss_triggered"

    def __init__(self, host):
        super().__init__(host)
        self.cfg = host.rcfg.loss_triggered
        self.ratio = self.cfg.ratio
        if self.cfg.probe and host.ctx.sample_losses is None:
            raise ValueError("loss_triggered with probe: true needs ctx.sample_losses")
        self.history: list[float] = []
        self.triggered = False
        self.probe_slots: list[int] = []
        self.n_triggers = 0  # crossings over the run
        self.n_probes = 0

    def start(self, task_index: int, step: int) -> None:
        super().start(task_index, step)
        h = self.host
        self.history, self.triggered = [], False
        n = min(self.cfg.probe_size, len(h.memory))
        self.probe_slots = sorted(int(s) for s in h.rng.choice(len(h.memory), n, replace=False)) \
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

    def volume(self, i: int, step: int, batch_size: int) -> int:
        h = self.host
        if self.cfg.probe and i % self.cfg.probe_every == 0:
            self.triggered = False
            if self.probe_slots:
                losses = np.asarray(h.ctx.sample_losses(h.memory.get(self.probe_slots)), dtype=np.float64)
                self.n_probes += 1
                self.triggered = self._crosses(float(losses.mean()))
        want = self.carry.take(self.ratio * batch_size) if self.triggered else 0
        if not self.cfg.probe:
            self.triggered = False  # a training-loss crossing buys one step
        return want

    def observe(self, ids, losses, new, step: int) -> None:
        if self.cfg.probe:
            return
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


class AccuracyTriggeredSchedule(_Triggered):
    """Accuracy-based replay: replay for ``window`` steps after a held-out accuracy drop.

    At the end of task j (all but the last) its probe set, ``tasks[j].dev[:probe_size]``, is
    scored with ``ctx.evaluate(j, examples)`` (it counts its own tokens) as the reference. During a
    later task, at the start of calls E, 2E, ... (i.e. after E, 2E, ... optimizer steps of the task)
    every earlier task's probe set is scored again; if any is more than ``delta`` below its
    reference, that step and the next ``window - 1`` replay ratio * batch_size memory samples (a
    new drop restarts the window). It probes dev, never test: the test split only fills the accuracy
    matrix, so no training decision is taken from it.
    """

    name = "accuracy_triggered"

    def __init__(self, host):
        super().__init__(host)
        self.cfg = host.rcfg.accuracy_triggered
        self.ratio = self.cfg.ratio
        if host.ctx.evaluate is None:
            raise ValueError("accuracy_triggered needs ctx.evaluate")
        self.refs: dict[int, float] = {}
        self.left = 0  # replay steps left in the current window
        self.n_triggers = 0
        self.n_evals = 0  # probe-set evaluations over the run

    def _eval(self, j: int) -> float:
        self.n_evals += 1
        ctx = self.host.ctx
        return float(ctx.evaluate(j, ctx.stream.tasks[j].dev[: self.cfg.probe_size]))

    def start(self, task_index: int, step: int) -> None:
        super().start(task_index, step)
        self.left = 0

    def on_task_end(self, task_index: int, step: int) -> None:
        tasks = self.host.ctx.stream.tasks
        if task_index < len(tasks) - 1 and tasks[task_index].dev:
            self.refs[task_index] = self._eval(task_index)

    def volume(self, i: int, step: int, batch_size: int) -> int:
        if i > 0 and i % self.cfg.every == 0:
            accs = {j: self._eval(j) for j in sorted(self.refs) if j < self.host.task_index}
            if any(self.refs[j] - a > self.cfg.delta + 1e-9 for j, a in accs.items()):
                self.left = self.cfg.window
                self.n_triggers += 1
        want = 0
        if self.left > 0:
            want = self.carry.take(self.ratio * batch_size)
            self.left -= 1
        return want

    def state_dict(self) -> dict:
        return {**super().state_dict(), "refs": [[j, a] for j, a in sorted(self.refs.items())],
                "left": self.left, "n_triggers": self.n_triggers, "n_evals": self.n_evals}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.refs = {int(j): float(a) for j, a in d["refs"]}
        self.left, self.n_triggers, self.n_evals = int(d["left"]), int(d["n_triggers"]), int(d["n_evals"])
