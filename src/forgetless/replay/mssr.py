"""MSSR: memory-strength replay sampler + expanding-interval replay scheduler.

Model, derivations and every knob: docs/mssr.md. In short, sample i in memory has strength
``m_i(t) = m_i(t_i) * exp(-k_i * (G(t) - G(t_i)))`` where ``G`` is the running integral of a global
interference rate ``g``; only ``G`` is advanced per step (one scalar), each row stores ``G(t_i)``.
Replay weights grow with forgottenness ``1 - m``; a review (the row was trained on) resets ``m``
and moves ``log k`` with the loss it had. Replay happens at expanding intervals after a task
switch with a decaying volume; a per-task budget rescales the whole plan at task start.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from forgetless.replay.base import BaseStrategy, ReplayBatch, StrategyContext, register
from forgetless.replay.memory import ReplayMemory

REF_STEPS = 5  # "loss" interference: reference = mean new-task loss of the task's first REF_STEPS steps
G_MAX = 10.0  # clip of one step's interference rate (a loss spike must not wipe the whole memory)
_SEED_TAG = 0x4D535352  # "MSSR": separates this strategy's RNG stream from others seeded alike


def _round_half_up(x) -> np.ndarray:
    return np.floor(np.asarray(x, dtype=np.float64) + 0.5).astype(np.int64)


# ---------------------------------------------------------------------------------------------
# scheduler (pure numpy)
# ---------------------------------------------------------------------------------------------
class MSSRScheduler:
    """When to replay after a task switch and how much (see docs/mssr.md, "Scheduler").

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
        s = np.asarray(s, dtype=np.float64)
        r = self.ratio0 * (2.0 ** (-s / self.half_life) if self.decay == "exp" else 1.0 / (1.0 + s / self.half_life))
        return np.maximum(self.ratio_floor, r)

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


# ---------------------------------------------------------------------------------------------
# sampler: per-sample memory strength, stored as memory columns
# ---------------------------------------------------------------------------------------------
class MemoryStrength:
    """Columns ``strength`` (m right after the last review), ``G_at_review``, ``k``, ``last_review``.

    ``G`` is the one scalar advanced per step; strengths are computed on demand, O(N) per replay
    event, O(1) per reviewed or admitted row.
    """

    def __init__(self, memory: ReplayMemory, k0=1.0, k_min=0.05, k_max=10.0, loss_ref=1.0, k_lr=0.5,
                 temperature=1.0, floor=0.01):
        self.memory = memory
        self.k0, self.k_min, self.k_max = float(k0), float(k_min), float(k_max)
        self.loss_ref, self.k_lr = float(loss_ref), float(k_lr)
        self.temperature, self.floor = float(temperature), float(floor)
        self.G = 0.0
        memory.add_column("strength", 1.0, np.float64)
        memory.add_column("G_at_review", 0.0, np.float64)
        memory.add_column("k", self.k0, np.float64)
        memory.add_column("last_review", -1, np.int64)

    def advance(self, g: float) -> None:
        self.G += max(0.0, float(g))

    def admit(self, rows: np.ndarray, step: int) -> None:
        c = self.memory.column
        c("strength")[rows] = 1.0
        c("G_at_review")[rows] = self.G
        c("k")[rows] = self.k0
        c("last_review")[rows] = step

    def review(self, slots: np.ndarray, losses: np.ndarray, step: int) -> None:
        """Trained on now: reset m to 1, move log k by ``k_lr * tanh(loss / loss_ref - 1)``."""
        c = self.memory.column
        z = np.tanh(np.asarray(losses, dtype=np.float64) / self.loss_ref - 1.0)
        c("k")[slots] = np.clip(c("k")[slots] * np.exp(self.k_lr * z), self.k_min, self.k_max)
        c("strength")[slots] = 1.0
        c("G_at_review")[slots] = self.G
        c("last_review")[slots] = step

    def strength(self) -> np.ndarray:
        n = len(self.memory)
        c = self.memory.column
        m = np.subtract(self.G, c("G_at_review")[:n])
        m *= c("k")[:n]
        np.negative(m, out=m)
        np.exp(m, out=m)
        m *= c("strength")[:n]
        return m

    def weights(self) -> np.ndarray:
        """``(1 - floor) * softmax((1 - m) / T) + floor / N``; sums to 1."""
        m = self.strength()
        n = len(m)
        if n == 0:
            return m
        lo = m.min()
        # softmax((1-m)/T) == softmax((lo-m)/T): the shift keeps every exponent <= 0
        np.subtract(lo, m, out=m)
        m /= self.temperature
        np.exp(m, out=m)
        m *= (1.0 - self.floor) / m.sum()
        m += self.floor / n
        return m

    def draw(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` distinct rows, successive sampling by weight (exponential race: k smallest E_i / w_i)."""
        size = len(self.memory)
        n = min(int(n), size)
        if n <= 0:
            return np.empty(0, dtype=np.int64)
        w = self.weights()
        key = rng.standard_exponential(size)
        key /= w
        if n == size:
            return np.argsort(key, kind="stable").astype(np.int64)
        top = np.argpartition(key, n - 1)[:n]
        return top[np.argsort(key[top], kind="stable")].astype(np.int64)


# ---------------------------------------------------------------------------------------------
# the strategy
# ---------------------------------------------------------------------------------------------
def _numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor: keep the bookkeeping out of the graph
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


@register("mssr")
class MSSR(BaseStrategy):
    """Replay the weakest memories at expanding intervals after each task switch.

    Step convention: ``on_task_start(..., step)`` receives the global index of the task's first
    optimizer step and ``replay_batch(step)`` is then called with that same index first.
    For ``interference="lr"`` the loop may put ``ctx.extras["lr_scale"]`` (global step -> lr / base
    lr); without it g = 1.
    """

    name = "mssr"

    def __init__(self, ctx: StrategyContext):
        super().__init__(ctx)
        cfg = ctx.config.replay
        mc = cfg.mssr
        self.cfg = mc
        self.memory = ReplayMemory(cfg.memory.size, cfg.memory.policy, ctx.seed)
        self.sampler = MemoryStrength(self.memory, mc.k0, mc.k_min, mc.k_max, mc.loss_ref, mc.k_lr,
                                      mc.temperature, mc.floor)
        self.scheduler = MSSRScheduler(mc.gap0, mc.growth, mc.ratio0, mc.ratio_floor, mc.decay, mc.half_life,
                                       mc.max_gap)
        self.rng = np.random.default_rng([int(ctx.seed), _SEED_TAG])
        self.task_index = -1
        self.ref_sum = 0.0  # new-task loss over the first REF_STEPS steps of the task
        self.ref_n = 0
        self.last_g = 1.0

    # ---- contract ---------------------------------------------------------------------------
    def on_task_start(self, task, task_index: int, step: int) -> None:
        self.task_index = int(task_index)
        self.ref_sum, self.ref_n = 0.0, 0
        ctx = self.ctx
        spt = ctx.steps_per_task
        n_steps = int(spt[task_index]) if task_index < len(spt) else 0
        if n_steps <= 0:  # unknown length: plan a long horizon, unbudgeted
            n_steps, budget = 100_000, None
        else:
            budget = ctx.replay_budget(task_index)
        bs = ctx.batch_size or ctx.config.train.batch_size
        self.scheduler.start(step, n_steps, bs, budget, cap=len(self.memory))

    def replay_batch(self, step: int, batch_size: int) -> ReplayBatch | None:
        n = min(self.scheduler.volume(step), len(self.memory))
        if n <= 0:
            return None
        slots = self.sampler.draw(n, self.rng)
        return ReplayBatch(self.memory.get(slots))

    def observe(self, sample_ids, losses, step: int) -> None:
        ids = _numpy(sample_ids).astype(np.int64).reshape(-1)
        losses = _numpy(losses).astype(np.float64).reshape(-1)
        slots = self.memory.slots_of(ids)
        new = (slots < 0) & (ids >= 0)
        self.sampler.advance(self._interference(losses[new], step))
        hit = slots >= 0
        if hit.any():
            self.sampler.review(slots[hit], losses[hit], step)

    def on_task_end(self, task, task_index: int, step: int) -> None:
        rows = self.memory.admit(self.ctx.stream.samples[task_index])
        self.sampler.admit(rows, step)

    # ---- interference -----------------------------------------------------------------------
    def _interference(self, new_losses: np.ndarray, step: int) -> float:
        kind = self.cfg.interference
        if kind == "constant":
            g = 1.0
        elif kind == "lr":
            scale = self.ctx.extras.get("lr_scale")
            g = float(scale(step)) if scale is not None else 1.0
        else:  # "loss": relative to the loss at the task start (docs/mssr.md says why)
            if len(new_losses) == 0 or not np.all(np.isfinite(new_losses)):
                return self.last_g
            loss = float(new_losses.mean())
            if self.ref_n < REF_STEPS:
                self.ref_sum += loss
                self.ref_n += 1
            ref = self.ref_sum / self.ref_n
            g = loss / ref if ref > 0 else 1.0
        g = float(np.clip(g, 0.0, G_MAX))
        self.last_g = g
        return g

    # ---- reporting --------------------------------------------------------------------------
    def describe_schedule(self) -> dict[str, Any]:
        s = self.scheduler
        return {
            "task_index": self.task_index,
            "start_step": s.start_step,
            "n_steps": s.n_steps,
            "budget": s.budget,
            "event_steps": [int(s.start_step + o) for o in s.offsets],
            "volumes": [int(v) for v in s.volumes],
            "unscaled_volumes": [float(v) for v in s.unscaled],
            "planned_total": int(s.volumes.sum()),
            "memory_size": len(self.memory),
        }

    def strengths(self) -> np.ndarray:
        """Current m of the live memory rows (row order of ``self.memory``)."""
        return self.sampler.strength()

    # ---- state ------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {
            "memory": self.memory.state_dict(),
            "G": self.sampler.G,
            "scheduler": self.scheduler.state_dict(),
            "rng": self.rng.bit_generator.state,
            "task_index": self.task_index,
            "ref_sum": self.ref_sum,
            "ref_n": self.ref_n,
            "last_g": self.last_g,
        }

    def load_state_dict(self, d: dict) -> None:
        by_id = {s.sample_id: s for task in self.ctx.stream.samples for s in task}
        self.memory.load_state_dict(d["memory"], by_id.__getitem__)
        self.sampler.G = float(d["G"])
        self.scheduler.load_state_dict(d["scheduler"])
        self.rng.bit_generator.state = d["rng"]
        self.task_index = int(d["task_index"])
        self.ref_sum, self.ref_n, self.last_g = float(d["ref_sum"]), int(d["ref_n"]), float(d["last_g"])
