"""MSSR schedules: retention-driven (default) and the geometric plan of expanding gaps.

``replay.mssr.schedule`` picks one (docs/mssr.md §2):

- ``retention``: replay when the memory model predicts that retention has fallen below a line;
  the volume follows the time-decaying ratio (its own pacing rule: an allowance that accrues with
  the ratio); what has not accrued into an event by the task's end is underspend.
  Reviews raise strength and lower k, so the gaps expand by themselves when reviews succeed.
- ``geometric``: events at offsets 0, gap0, gap0 + gap0*growth, ... fixed at task start; volumes
  decay with the ratio and are rescaled to the budget once (MSSR as first published here).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from forgetless.replay.schedules.baselines import Schedule

HORIZON = 100_000  # steps planned for a task of unknown length (unbudgeted)


def _round_half_up(x) -> np.ndarray:
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


def decaying_ratio(s, ratio0: float, ratio_floor: float, decay: str, half_life: float) -> np.ndarray:
    """``max(ratio_floor, ratio0 * 2^(-s/half_life))`` ("exp") or ``ratio0 / (1 + s/half_life)``."""
    s = np.asarray(s, dtype=np.float64)
    r = ratio0 * (2.0 ** (-s / half_life) if decay == "exp" else 1.0 / (1.0 + s / half_life))
    return np.maximum(ratio_floor, r)


class MSSRScheduler:
    """The geometric plan: when to replay after a task switch and how much (docs/mssr.md §2.2).

    Events at offsets ``e_0 = 0, e_{j+1} = e_j + gap_j`` (offset = steps since the task's first
    step), ``gap_j = max(1, round(gap0 * growth**j))``; volume ``ratio(e_j) * batch_size``. With a
    budget the volumes are rescaled once, at task start, so they sum to the budget.
    """

    def __init__(self, gap0: int = 1, growth: float = 1.5, ratio0: float = 1.0, ratio_floor: float = 0.1,
                 decay: str = "exp", half_life: float = 50.0, max_gap: int | None = None):
        if gap0 < 1 or growth <= 1 or ratio0 <= 0 or ratio_floor < 0 or half_life <= 0:
            raise ValueError("need gap0 >= 1, growth > 1, ratio0 > 0, ratio_floor >= 0, half_life > 0")
        if decay not in ("exp", "inverse"):
            raise ValueError(f"unknown decay {decay!r}")
        self.gap0, self.growth, self.ratio0, self.ratio_floor = int(gap0), float(growth), float(ratio0), float(ratio_floor)
        self.decay, self.half_life = decay, float(half_life)
        if max_gap is not None and max_gap < 1:
            raise ValueError("need max_gap >= 1")
        self.max_gap = None if max_gap is None else int(max_gap)
        self.start_step = 0
        self.n_steps: int | None = None
        self.budget: int | None = None
        self.offsets = np.empty(0, dtype=np.int64)
        self.unscaled = np.empty(0, dtype=np.float64)
        self.volumes = np.empty(0, dtype=np.int64)
        self._at: dict[int, int] = {}

    # ---- closed-form pieces -----------------------------------------------------------------
    def gaps(self, n: int) -> np.ndarray:
        g = np.maximum(1, _round_half_up(self.gap0 * self.growth ** np.arange(n, dtype=np.float64)))
        return g if self.max_gap is None else np.minimum(g, self.max_gap)

    def event_offsets(self, n_steps: int) -> np.ndarray:
        """Event offsets in ``[0, n_steps)``."""
        if n_steps <= 0:
            return np.empty(0, dtype=np.int64)
        # gaps >= gap0 * growth**j / 2 (rounding), so this many gaps surely pass n_steps
        n = int(np.ceil(np.log(2 * n_steps / self.gap0 + 1) / np.log(self.growth))) + 2
        if self.max_gap is not None:  # capped gaps: up to n_steps / min gap more events
            n += n_steps
        n = min(n, n_steps + 1)  # gaps are >= 1
        e = np.concatenate([[0], np.cumsum(self.gaps(n))])
        return e[e < n_steps].astype(np.int64)

    def ratio(self, s) -> np.ndarray:
        return decaying_ratio(s, self.ratio0, self.ratio_floor, self.decay, self.half_life)

    @staticmethod
    def scale_to_budget(v: np.ndarray, budget: int, cap: int | None = None) -> np.ndarray:
        """Integers ``n_j <= cap`` proportional to ``v`` with ``sum n_j = budget`` (as close as caps allow).

        Water-filling finds ``c`` with ``sum min(cap, c v_j) = budget``; largest remainders round.
        """
        v = np.asarray(v, dtype=np.float64)
        budget = int(budget)
        if len(v) == 0 or budget <= 0 or v.sum() <= 0:
            return np.zeros(len(v), dtype=np.int64)
        if cap is not None and cap * len(v) <= budget:
            return np.full(len(v), cap, dtype=np.int64)
        capped = np.zeros(len(v), dtype=bool)
        while True:
            free = ~capped
            c = (budget - (cap or 0) * capped.sum()) / v[free].sum()
            over = free & (c * v > cap) if cap is not None else np.zeros_like(capped)
            if not over.any():
                break
            capped |= over
        q = np.where(capped, float(cap or 0), c * v)
        n = np.floor(q + 1e-9).astype(np.int64)
        rest = budget - int(n.sum())
        if rest > 0:
            frac = q - n
            order = np.argsort(-frac, kind="stable")[:rest]
            n[order] += 1
        if cap is not None:
            n = np.minimum(n, cap)
        return n

    def plan(self, n_steps: int, batch_size: int, budget: int | None = None, cap: int | None = None):
        """``(offsets, unscaled volumes, volumes)`` for one task of ``n_steps`` steps."""
        off = self.event_offsets(n_steps)
        unscaled = self.ratio(off) * batch_size
        if budget is None:
            vol = _round_half_up(unscaled)
            if cap is not None:
                vol = np.minimum(vol, cap)
        else:
            vol = self.scale_to_budget(unscaled, budget, cap)
        return off, unscaled, vol

    # ---- the current task -------------------------------------------------------------------
    def start(self, start_step: int, n_steps: int, batch_size: int, budget: int | None = None,
              cap: int | None = None) -> None:
        self.start_step, self.n_steps, self.budget = int(start_step), int(n_steps), budget
        self.offsets, self.unscaled, self.volumes = self.plan(n_steps, batch_size, budget, cap)
        self._index()

    def _index(self) -> None:
        self._at = {int(o): int(v) for o, v in zip(self.offsets, self.volumes)}

    def volume(self, step: int) -> int:
        """Samples to replay at global ``step`` (0 when it is not an event)."""
        return self._at.get(int(step) - self.start_step, 0)

    def state_dict(self) -> dict:
        return {"start_step": self.start_step, "n_steps": self.n_steps, "budget": self.budget,
                "offsets": self.offsets.copy(), "unscaled": self.unscaled.copy(), "volumes": self.volumes.copy()}

    def load_state_dict(self, d: dict) -> None:
        self.start_step, self.n_steps, self.budget = int(d["start_step"]), d["n_steps"], d["budget"]
        self.offsets = np.asarray(d["offsets"], dtype=np.int64)
        self.unscaled = np.asarray(d["unscaled"], dtype=np.float64)
        self.volumes = np.asarray(d["volumes"], dtype=np.int64)
        self._index()


def _task_length(host, task_index: int) -> tuple[int, int | None]:
    """(steps, budget) of the task; an unknown length plans ``HORIZON`` steps, unbudgeted."""
    spt = host.ctx.steps_per_task
    n = int(spt[task_index]) if task_index < len(spt) else 0
    return (HORIZON, None) if n <= 0 else (n, host.budget.total)


class GeometricSchedule(Schedule):
    """``replay.mssr.schedule: geometric``: the plan of ``MSSRScheduler``, fixed at task start.

    Step convention: ``start`` receives the global index of the task's first optimizer step and
    ``volume`` is then called with that same index first.
    """

    name = "mssr"
    kind = "geometric"

    def __init__(self, host):
        super().__init__(host)
        g, v = host.rcfg.mssr.geometric, host.rcfg.mssr.volume
        self.plan = MSSRScheduler(g.gap0, g.growth, v.ratio0, v.ratio_floor, v.decay, v.half_life, g.max_gap)

    def start(self, task_index: int, step: int) -> None:
        n_steps, budget = _task_length(self.host, task_index)
        self.plan.start(step, n_steps, self.host.batch_size(), budget, cap=len(self.host.memory))

    def volume(self, i: int, step: int, batch_size: int) -> int:
        return self.plan.volume(step)

    def describe(self) -> dict[str, Any]:
        s = self.plan
        return {"schedule": "geometric", "start_step": s.start_step, "n_steps": s.n_steps, "budget": s.budget,
                "event_steps": [int(s.start_step + o) for o in s.offsets], "volumes": [int(v) for v in s.volumes],
                "unscaled_volumes": [float(v) for v in s.unscaled], "planned_total": int(s.volumes.sum())}

    def state_dict(self) -> dict:
        return {"plan": self.plan.state_dict()}

    def load_state_dict(self, d: dict) -> None:
        self.plan.load_state_dict(d["plan"])


class RetentionSchedule(Schedule):
    """``replay.mssr.schedule: retention``: replay where predicted retention has fallen.

    Each step (offset ``s`` since the task's first step) the allowance bucket ``b`` grows by
    ``a_s = R * ratio(s) / sum_{u<n} ratio(u)`` (budget ``R`` over ``n`` steps; the time-decaying
    ratio shapes it), and the memory model's predicted retention ``r(t)`` is read: the mean
    strength (``signal: mean``) or the share of memories with strength >= ``theta``
    (``signal: share``). The step replays ``floor(b)`` samples when ``r(t) < line`` or when the
    bucket holds a full event (``b >= cap``, ``cap = max(ratio0 * batch_size, max_s a_s)``), so
    no stretch longer than ``cap / a_s`` steps goes without replay. Nothing is flushed at the
    task's end: what is left in the bucket (less than ``cap``) is the task's underspend, reported
    by the run's ``ReplayBudget``, which grants every volume. Unbudgeted, a step with
    ``r(t) < line`` replays ``round(ratio(s) * batch_size)``.
    """

    name = "mssr"
    kind = "retention"
    needs_strength = True

    def __init__(self, host):
        super().__init__(host)
        self.mc = host.rcfg.mssr.volume  # the volume profile
        self.rc = host.rcfg.mssr.retention  # the signal
        self.start_step, self.n_steps, self.budget = 0, 0, None
        self.accrual = np.empty(0, dtype=np.float64)
        self.bucket, self.cap = 0.0, 1.0
        self.n_events, self.spent = 0, 0

    def ratio(self, s) -> np.ndarray:
        mc = self.mc
        return decaying_ratio(s, mc.ratio0, mc.ratio_floor, mc.decay, mc.half_life)

    def start(self, task_index: int, step: int) -> None:
        h = self.host
        self.start_step = int(step)
        self.n_steps, self.budget = _task_length(h, task_index)
        self.bucket, self.n_events, self.spent = 0.0, 0, 0
        self.accrual = np.empty(0, dtype=np.float64)
        self.cap = max(1.0, self.mc.ratio0 * h.batch_size())
        if self.budget is not None:
            w = self.ratio(np.arange(self.n_steps))
            self.accrual = self.budget * w / w.sum()
            self.cap = max(self.cap, float(self.accrual.max()))
            h.warn_unmet(self.n_steps * len(h.memory))

    def retention(self) -> float:
        m = self.host.strength.strength()
        if len(m) == 0:
            return 1.0
        return float(m.mean()) if self.rc.signal == "mean" else float((m >= self.rc.theta).mean())

    def volume(self, i: int, step: int, batch_size: int) -> int:
        s = int(step) - self.start_step
        low = self.retention() < self.rc.line
        if self.budget is None:
            n = int(_round_half_up(self.ratio(s) * batch_size)) if low else 0
        else:
            if 0 <= s < self.n_steps:
                self.bucket += float(self.accrual[s])
            if not (low or self.bucket >= self.cap - 1e-9):
                return 0
            n = math.floor(self.bucket + 1e-9)
            n = min(n, len(self.host.memory))  # what the memory cannot serve now stays in the bucket
            self.bucket -= n
        if n > 0:
            self.n_events += 1
            self.spent += n
        return n

    def describe(self) -> dict[str, Any]:
        return {"schedule": "retention", "start_step": self.start_step, "n_steps": self.n_steps, "budget": self.budget,
                "events": self.n_events, "spent": self.spent, "bucket": self.bucket, "cap": self.cap}

    def state_dict(self) -> dict:
        return {"start_step": self.start_step, "n_steps": self.n_steps, "budget": self.budget,
                "accrual": self.accrual.copy(), "bucket": self.bucket, "cap": self.cap,
                "n_events": self.n_events, "spent": self.spent}

    def load_state_dict(self, d: dict) -> None:
        self.start_step, self.n_steps = int(d["start_step"]), int(d["n_steps"])
        self.budget = None if d["budget"] is None else int(d["budget"])
        self.accrual = np.asarray(d["accrual"], dtype=np.float64)
        self.bucket, self.cap = float(d["bucket"]), float(d["cap"])
        self.n_events, self.spent = int(d["n_events"]), int(d["spent"])


def MSSRSchedule(host) -> Schedule:
    """The ``mssr`` schedule named by ``replay.mssr.schedule``."""
    return (RetentionSchedule if host.rcfg.mssr.schedule == "retention" else GeometricSchedule)(host)


