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
    """The legacy memory model (``retention.model: legacy``, docs/mssr.md §1.4).

    Columns ``strength`` (m right after the last review), ``G_at_review``, ``k``, ``last_review``.
    ``G`` is the one scalar advanced per step; strengths are computed on demand, O(N) per call,
    O(1) per reviewed or admitted row. ``prefix`` names the columns of a shadow model (the
    calibration probe's ``compare``) so several models can share one memory.
    """

    def __init__(self, memory: ReplayMemory, k0=1.0, k_min=0.05, k_max=10.0, loss_ref=1.0, k_lr=0.5,
                 temperature=1.0, floor=0.01, interference: str = "constant", lr_scale=None,
                 standardize: bool = False, prefix: str = ""):
        self.memory, self.prefix = memory, prefix
        self.k0, self.k_min, self.k_max = float(k0), float(k_min), float(k_max)
        self.loss_ref, self.k_lr = float(loss_ref), float(k_lr)
        self.temperature, self.floor, self.standardize = float(temperature), float(floor), bool(standardize)
        self.interference = interference
        self.lr_scale = lr_scale  # () -> callable(step) -> lr / base lr, or None ("lr" interference)
        self.G = 0.0
        self.ref_sum, self.ref_n, self.last_g = 0.0, 0, 1.0  # "loss" interference reference
        self._columns()

    def _columns(self) -> None:
        self.memory.add_column(self.prefix + "strength", 1.0, np.float64)
        self.memory.add_column(self.prefix + "G_at_review", 0.0, np.float64)
        self.memory.add_column(self.prefix + "k", self.k0, np.float64)
        self.memory.add_column(self.prefix + "last_review", -1, np.int64)

    def col(self, name: str) -> np.ndarray:
        return self.memory.column(self.prefix + name)

    @staticmethod
    def from_config(memory: ReplayMemory, mc, ctx, retention=None, prefix: str = "") -> "MemoryStrength":
        """The model ``mc.retention`` (or ``retention``, a shadow's) names, drawing by ``mc.sampler``."""
        rc, sc = retention or mc.retention, mc.sampler
        common = dict(temperature=sc.temperature, floor=sc.floor, interference=rc.interference,
                      lr_scale=lambda: ctx.extras.get("lr_scale"), standardize=sc.standardize, prefix=prefix)
        if rc.model == "legacy":
            return MemoryStrength(memory, rc.k0, rc.k_min, rc.k_max, rc.loss_ref, rc.k_lr, **common)
        return FittedStrength(memory, rc.k0, rc.prior, rc.shrink, rc.clock, rc.reference, rc.fit,
                              rc.loss_ref, lambda: ctx.steps_per_task, sc.score, **common)

    # ---- the model ----------------------------------------------------------------------------
    def advance(self, g: float) -> None:
        self.G += max(0.0, float(g))

    def admit(self, rows: np.ndarray, step: int, losses=None) -> None:
        self.col("strength")[rows] = 1.0
        self.col("G_at_review")[rows] = self.G
        self.col("k")[rows] = self.k0
        self.col("last_review")[rows] = step

    def review(self, slots: np.ndarray, losses: np.ndarray, step: int) -> None:
        """Trained on now: reset m to 1, move log k by ``k_lr * tanh(loss / loss_ref - 1)``."""
        z = np.tanh(np.asarray(losses, dtype=np.float64) / self.loss_ref - 1.0)
        k = self.col("k")
        k[slots] = np.clip(k[slots] * np.exp(self.k_lr * z), self.k_min, self.k_max)
        self.col("strength")[slots] = 1.0
        self.col("G_at_review")[slots] = self.G
        self.col("last_review")[slots] = step

    def strength(self) -> np.ndarray:
        n = len(self.memory)
        m = np.subtract(self.G, self.col("G_at_review")[:n])
        m *= self.col("k")[:n]
        np.negative(m, out=m)
        np.exp(m, out=m)
        m *= self.col("strength")[:n]
        return m

    # ---- one training step ----------------------------------------------------------------------
    def start_task(self, task_index: int = 0) -> None:
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
    def score(self) -> np.ndarray:
        """What the draw favours, shifted so its maximum is 0: forgottenness ``1 - m`` as ``min m - m``."""
        m = self.strength()
        if len(m):
            np.subtract(m.min(), m, out=m)
        return m

    def weights(self) -> np.ndarray:
        """``(1 - floor) * softmax(f / T) + floor / N`` over the score ``f`` (forgottenness; in standard
        deviations of the memory when ``standardize``); sums to 1."""
        m = self.score()
        n = len(m)
        if n == 0:
            return m
        # softmax(f/T) == softmax((f - max f)/T): score() shifts, so every exponent is <= 0
        sd = float(m.std()) if self.standardize else 1.0
        m /= self.temperature * (sd if sd > 0 else 1.0)
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


def fit_k(sxy, sxx, prior_k, prior_w) -> np.ndarray:
    """Least squares through the origin of ``z = k dtau`` with a prior: ``k = (Σ dtau z + w k0) / (Σ dtau² + w)``,
    clipped at 0 (``z = log(loss / reference)`` is -log retention)."""
    return np.maximum(0.0, (np.asarray(sxy) + prior_w * prior_k) / (np.asarray(sxx) + prior_w))


class FittedStrength(MemoryStrength):
    """``retention.model: fitted`` (docs/mssr.md §1): ``m_i(t) = exp(-k_i (tau(t) - tau_i))``.

    Retention is the loss ratio ``reference / loss`` (``reference``: the row's loss when it was stored,
    i.e. at its last training in its own task, or ``loss_ref``), so every replayed row's loss is an observation
    ``z = log(loss / reference) = k dtau`` after a known elapsed clock time ``dtau``. ``k`` is the
    least-squares slope through the origin: pooled over all tasks (prior ``k0``, weight ``prior``),
    per task shrunk to the pooled one (weight ``prior``); a row's k averages its latest observed
    rate ``z / dtau`` with its task's k (weight ``shrink``): a review renews the memory trace, so a
    row strengthened by reviews (low losses after long gaps) decays more slowly from then on. ``G`` is the clock ``tau``:
    +1 per step (``steps``), +1/n per step of an n-step task (``task``), or the legacy interference
    rate (``interference``). The clock advances after the step's reviews, so a row trained at
    step s and again at s' has ``dtau`` = the clock of steps s..s'-1.
    """

    def __init__(self, memory, k0=1.0, prior=1.0, shrink=1.0, clock="task", reference="row", fit="row",
                 loss_ref=1.0, steps_per_task=None, score="increase", **common):
        self.score_kind = score
        self.prior, self.shrink, self.clock, self.reference, self.fit = float(prior), float(shrink), clock, reference, fit
        self.steps_per_task = steps_per_task  # () -> list of steps per task, or None
        self.task_sxy: dict[int, float] = {}
        self.task_sxx: dict[int, float] = {}
        self.task_n: dict[int, int] = {}
        self.seen: dict[int, tuple[float, float, int]] = {}  # new-task id -> (last loss, clock, step), this task
        self.tick = 1.0
        super().__init__(memory, k0=k0, loss_ref=loss_ref, **common)

    def _columns(self) -> None:
        for name, default, dtype in (("G_at_review", 0.0, np.float64), ("last_review", -1, np.int64),
                                     ("loss_stored", np.nan, np.float64),
                                     ("sxy", 0.0, np.float64), ("sxx", 0.0, np.float64)):
            self.memory.add_column(self.prefix + name, default, dtype)

    def start_task(self, task_index: int = 0) -> None:
        super().start_task(task_index)
        spt = self.steps_per_task() if self.steps_per_task is not None else None
        n = int(spt[task_index]) if spt is not None and task_index < len(spt) else 0
        self.tick = 1.0 / n if self.clock == "task" and n > 0 else 1.0
        self.seen = {}

    def k(self) -> np.ndarray:
        """Each live row's decay rate per clock unit."""
        n = len(self.memory)
        task = self.memory.column("task_id")[:n]
        top = int(task.max()) + 1 if n else 0
        sxy, sxx = np.zeros(top), np.zeros(top)
        for t in self.task_sxy:
            if t < top:
                sxy[t], sxx[t] = self.task_sxy[t], self.task_sxx[t]
        # pooled over every task's evidence -> per task -> per row; k0 only before any evidence
        kg = fit_k(sum(self.task_sxy.values()), sum(self.task_sxx.values()), self.k0, self.prior)
        kt = fit_k(sxy, sxx, kg, self.prior)[task]
        if self.fit == "task":
            return kt
        # the row's last observed rate z / dtau, averaged with its task's k (weight ``shrink``)
        rx, rxx = self.col("sxy")[:n], self.col("sxx")[:n]
        return np.where(rxx > 0, fit_k(rx, rxx, kt, self.shrink * np.maximum(rxx, 1e-300)), kt)

    def strength(self) -> np.ndarray:
        n = len(self.memory)
        return np.exp(-self.k() * (self.G - self.col("G_at_review")[:n]))

    def score(self) -> np.ndarray:
        """``score: increase``: the predicted loss increase ``stored (1/m - 1)`` instead of ``1 - m``."""
        if self.score_kind != "increase":
            return super().score()
        n = len(self.memory)
        f = np.nan_to_num(self.col("loss_stored")[:n] * np.expm1(self.k() * (self.G - self.col("G_at_review")[:n])))
        return f - f.max() if n else f

    def admit(self, rows: np.ndarray, step: int, losses=None) -> None:
        """Stored with its loss at the end of its task (``losses``, a forward pass over the admitted
        rows), or, where the host cannot run one, the loss (clock, step) of its last training."""
        rows = np.asarray(rows, dtype=np.int64)
        if losses is not None:
            self.seen = {int(i): (float(l), self.G, step) for i, l in zip(self.memory.column("sample_id")[rows], losses)}
        known = [v[0] for v in self.seen.values()]
        fill = (float(np.mean(known)) if known else self.loss_ref, self.G, step)  # never trained: now, the mean
        got = np.array([self.seen.get(int(i), fill) for i in self.memory.column("sample_id")[rows]],
                       dtype=np.float64).reshape(-1, 3)
        loss, clock, last = got.T
        self.col("loss_stored")[rows] = loss
        self.col("G_at_review")[rows] = clock
        self.col("last_review")[rows] = last
        self.col("sxy")[rows] = 0.0
        self.col("sxx")[rows] = 0.0
        self.seen = {}

    def review(self, slots: np.ndarray, losses: np.ndarray, step: int) -> None:
        """One observation per row: ``z = log(loss / reference)`` after ``dtau``; then the row is fresh."""
        losses = np.maximum(np.asarray(losses, dtype=np.float64), 1e-8)
        ref = self.col("loss_stored")[slots] if self.reference == "row" else self.loss_ref
        ok = np.isfinite(ref) & np.isfinite(losses)
        dt = self.G - self.col("G_at_review")[slots]
        z = np.log(losses / np.maximum(ref, 1e-8))
        z, dt, sl = z[ok], dt[ok], slots[ok]
        self.col("sxy")[sl] = dt * z  # a review renews the trace: the row keeps its latest evidence
        self.col("sxx")[sl] = dt * dt
        task = self.memory.column("task_id")[sl]
        for t in np.unique(task):
            i = task == t
            t = int(t)
            self.task_sxy[t] = self.task_sxy.get(t, 0.0) + float((dt[i] * z[i]).sum())
            self.task_sxx[t] = self.task_sxx.get(t, 0.0) + float((dt[i] * dt[i]).sum())
            self.task_n[t] = self.task_n.get(t, 0) + int(i.sum())
        self.col("G_at_review")[slots] = self.G
        self.col("last_review")[slots] = step

    def observe(self, ids, losses, slots, new, step) -> None:
        """Review the rows trained on now, note the new-task rows' losses, then advance the clock."""
        hit = slots >= 0
        if hit.any():
            self.review(slots[hit], losses[hit], step)
        for i, l in zip(ids[new].tolist(), losses[new].tolist()):
            self.seen[i] = (l, self.G, step)
        g = self._interference(losses[new], step) if self.clock == "interference" else self.tick
        self.advance(g)

    def state_dict(self) -> dict:
        keys = sorted(self.task_sxy)
        seen = sorted(self.seen)
        return {**super().state_dict(), "tick": self.tick, "task": np.asarray(keys, dtype=np.int64),
                "task_sxy": np.asarray([self.task_sxy[t] for t in keys]), "task_sxx": np.asarray([self.task_sxx[t] for t in keys]),
                "task_n": np.asarray([self.task_n[t] for t in keys], dtype=np.int64),
                "seen_id": np.asarray(seen, dtype=np.int64), "seen": np.asarray([self.seen[i] for i in seen]).reshape(-1, 3)}

    def load_state_dict(self, d: dict) -> None:
        super().load_state_dict(d)
        self.tick = float(d["tick"])
        keys = [int(t) for t in np.asarray(d["task"]).reshape(-1)]
        self.task_sxy = dict(zip(keys, map(float, np.asarray(d["task_sxy"]).reshape(-1))))
        self.task_sxx = dict(zip(keys, map(float, np.asarray(d["task_sxx"]).reshape(-1))))
        self.task_n = dict(zip(keys, map(int, np.asarray(d["task_n"]).reshape(-1))))
        seen = np.asarray(d["seen"], dtype=np.float64).reshape(-1, 3)
        self.seen = {int(i): (float(a), float(b), int(c)) for i, (a, b, c) in zip(np.asarray(d["seen_id"]).reshape(-1), seen)}
