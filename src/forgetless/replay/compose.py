"""Build the configured strategy; several names compose into one (e.g. ``gere+mssr``)."""

from __future__ import annotations

import numpy as np

from forgetless.errors import InputError
from forgetless.replay.base import REGISTRY, BaseStrategy, ReplayBatch, ReplayBudget, StrategyContext
from forgetless.replay.strategy import PRESETS


def _load_registry() -> None:
    # importing the modules registers their strategies
    from forgetless.replay import baselines, gere, strategy  # noqa: F401


def available() -> list[str]:
    _load_registry()
    return sorted(REGISTRY)


class Composite(BaseStrategy):
    """Runs several strategies side by side: replay batches are concatenated, extra losses summed,
    every call is forwarded to every part. General replay (GeRe) keeps general ability while a task
    replay strategy (MSSR) keeps earlier tasks.

    Task-replay parts (``uniform+mssr``) share one ``ReplayBudget``: together they replay at most
    ``replay.budget`` samples per task, the earlier-named part asking first at each step."""

    def __init__(self, ctx: StrategyContext, parts: list):
        super().__init__(ctx)
        self.parts = parts
        budgeted = [p for p in parts if isinstance(getattr(p, "budget", None), ReplayBudget)]
        self.budget = budgeted[0].budget if budgeted else None
        for p in budgeted[1:]:
            p.budget = self.budget
        self.name = "+".join(p.name for p in parts)
        self.needs_hidden_states = any(getattr(p, "needs_hidden_states", False) for p in parts)

    def on_task_start(self, task, task_index, step):
        for p in self.parts:
            p.on_task_start(task, task_index, step)

    def replay_batch(self, step, batch_size):
        samples = []
        for p in self.parts:
            rb = p.replay_batch(step, batch_size)
            if rb is not None:
                samples.extend(rb.samples)
        return ReplayBatch(samples) if samples else None

    def observe(self, sample_ids: np.ndarray, losses: np.ndarray, step: int) -> None:
        for p in self.parts:
            p.observe(sample_ids, losses, step)

    @property
    def extra_loss_is_share(self) -> bool:
        return any(getattr(p, "extra_loss_is_share", False) for p in self.parts)

    def extra_loss(self, batch, outputs):
        total = None
        for p in self.parts:
            e = p.extra_loss(batch, outputs)
            if e is not None:
                total = e if total is None else total + e
        return total

    def on_task_end(self, task, task_index, step):
        for p in self.parts:
            p.on_task_end(task, task_index, step)

    def report(self) -> dict:
        out = {p.name: p.report() for p in self.parts if hasattr(p, "report")}
        if self.budget is not None:  # the shared budget's ledger, once for the whole composite
            out["budget"] = [dict(e) for e in self.budget.ledger]
        return out

    def state_dict(self) -> dict:
        return {p.name: p.state_dict() for p in self.parts}

    def load_state_dict(self, d: dict) -> None:
        for p in self.parts:
            p.load_state_dict(d[p.name])


def check_names(names: list[str]) -> None:
    """Fail fast, before any model is loaded, on an unknown or repeated strategy name."""
    _load_registry()
    if not names:
        raise InputError("field 'replay.strategy': empty")
    unknown = [n for n in names if n not in REGISTRY]
    if unknown:
        raise InputError(f"field 'replay.strategy': unknown strategy {unknown[0]!r}; allowed: {', '.join(sorted(REGISTRY))}")
    if len(set(names)) != len(names):
        raise InputError("field 'replay.strategy': a strategy is named twice")


def build_strategy(ctx: StrategyContext):
    names = ctx.config.replay.strategies
    check_names(names)
    rc = ctx.config.replay
    if (rc.schedule or rc.sampler) and not any(n in PRESETS for n in names):
        raise InputError(f"field 'replay.schedule' / 'replay.sampler': no task-replay strategy among "
                         f"{'+'.join(names)} to apply them to; one of {', '.join(PRESETS)}")
    parts = [REGISTRY[n](ctx) for n in names]
    return parts[0] if len(parts) == 1 else Composite(ctx, parts)
