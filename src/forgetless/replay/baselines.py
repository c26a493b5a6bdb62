"""Reference strategies without a replay memory: ``none`` (lower bound) and ``joint`` (upper bound).

The memory-based baselines (uniform, fixed, loss_triggered, accuracy_triggered) are presets of
``strategy.ReplayStrategy``: a schedule from ``schedules/`` with the uniform sampler.
"""

from __future__ import annotations

from forgetless.replay.base import BaseStrategy, ReplayBatch, StrategyContext, register
from forgetless.replay.strategy import rngs


@register("none")
class NoReplay(BaseStrategy):
    """Plain sequential fine-tuning (the lower-bound reference)."""

    name = "none"


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
        self.rng, _ = rngs(ctx.seed, self.name)
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
