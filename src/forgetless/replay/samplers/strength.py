"""MSSR memory strength: per-sample decaying strength stored as memory columns (docs/mssr.md §1).

Sample i has ``m_i(t) = m_i(t_i) * exp(-k_i * (G(t) - G(t_i)))`` where ``G`` is the running integral
of a global interference rate ``g``; only ``G`` is advanced per step (one scalar), each row stores
``G(t_i)``. A review (the row was trained on) resets ``m`` and moves ``log k`` with the loss it had.
Used by the mssr sampler (weights) and by the retention-driven mssr schedule (the trigger).
"""

from __future__ import annotations

import numpy as np

from forgetless.replay.memory import ReplayMemory

REF_STEPS = 5  # "loss" interference: reference = mean new-task loss of the task's first REF_STEPS steps
G_MAX = 10.0  # clip of one step's interference rate (a loss spike must not wipe the whole memory)


class MemoryStrength:
    """Columns ``strength`` (m right after the last review), ``G_at_review``, ``k``, ``last_review``.

    ``G`` is the one scalar advanced per step; strengths are computed on demand, O(N) per call,
    O(1) per reviewed or admitted row.
    """

    def __init__(self, memory: ReplayMemory, k0=1.0, k_min=0.05, k_max=10.0, loss_ref=1.0, k_lr=0.5,
                 temperature=1.0, floor=0.01, interference: str = "constant", lr_scale=None):
        self.memory = memory
        self.k0, self.k_min, self.k_max = float(k0), float(k_min), float(k_max)
        self.loss_ref, self.k_lr = float(loss_ref), float(k_lr)
        self.temperature, self.floor = float(temperature), float(floor)
        self.interference = interference
        self.lr_scale = lr_scale  # () -> callable(step) -> lr / base lr, or None ("lr" interference)
        self.G = 0.0
        self.ref_sum, self.ref_n, self.last_g = 0.0, 0, 1.0  # "loss" interference reference
        memory.add_column("strength", 1.0, np.float64)
        memory.add_column("G_at_review", 0.0, np.float64)
        memory.add_column("k", self.k0, np.float64)
        memory.add_column("last_review", -1, np.int64)

    @classmethod
    def from_config(cls, memory: ReplayMemory, mc, extras: dict) -> "MemoryStrength":
        return cls(memory, mc.k0, mc.k_min, mc.k_max, mc.loss_ref, mc.k_lr, mc.temperature, mc.floor,
                   mc.interference, lambda: extras.get("lr_scale"))

    # ---- the model ----------------------------------------------------------------------------
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

    # ---- one training step ----------------------------------------------------------------------
    def start_task(self) -> None:
        self.ref_sum, self.ref_n = 0.0, 0

    def observe(self, ids: np.ndarray, losses: np.ndarray, slots: np.ndarray, new: np.ndarray, step: int) -> None:
        """Advance G by this step's interference, then review the memory rows that were trained on."""
        self.advance(self._interference(losses[new], step))
        hit = slots >= 0
        if hit.any():
            self.review(slots[hit], losses[hit], step)

    def _interference(self, new_losses: np.ndarray, step: int) -> float:
        kind = self.interference
        if kind == "constant":
            g = 1.0
        elif kind == "lr":
            scale = self.lr_scale() if self.lr_scale is not None else None
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

    # ---- sampling -------------------------------------------------------------------------------
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

    # ---- state (the columns live in the memory's state) ------------------------------------------
    def state_dict(self) -> dict:
        return {"G": self.G, "ref_sum": self.ref_sum, "ref_n": self.ref_n, "last_g": self.last_g}

    def load_state_dict(self, d: dict) -> None:
        self.G = float(d["G"])
        self.ref_sum, self.ref_n, self.last_g = float(d["ref_sum"]), int(d["ref_n"]), float(d["last_g"])
