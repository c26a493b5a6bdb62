"""The strategy contract: the one seam every replay method goes through.

The loop (train.py) owns the steps; a strategy only answers at fixed points. See DESIGN.md.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from forgetless.config import Config
    from forgetless.data.task import Sample, Task, TaskStream


@dataclass
class ReplayBatch:
    """Samples a strategy wants merged into the current step's batch."""

    samples: list["Sample"]

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def n_tokens(self) -> int:
        return sum(s.n_tokens for s in self.samples)


@dataclass
class WorkCounters:
    """Everything a run spends, so overhead is reported rather than guessed."""

    optimizer_steps: int = 0
    new_task_tokens: int = 0
    replay_tokens: int = 0
    replay_samples: int = 0
    extra_forward_tokens: int = 0  # forward-only passes a strategy pays for (probes)
    eval_tokens: int = 0  # evaluation done by the run or by a strategy
    time_train_s: float = 0.0
    time_replay_bookkeeping_s: float = 0.0
    time_eval_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load(self, d: dict[str, Any]) -> None:
        for k, v in d.items():
            if hasattr(self, k):
                setattr(self, k, type(getattr(self, k))(v))


@dataclass
class StrategyContext:
    """What a strategy may use besides the calls of the contract."""

    config: "Config"
    stream: "TaskStream"
    seed: int
    counters: WorkCounters
    model: Any = None  # the trainable model (PEFT-wrapped or not); for probes and references
    tokenizer: Any = None
    device: Any = None
    run_dir: Any = None  # pathlib.Path where a strategy may keep large state (e.g. GeRe references)
    # evaluate(model, task_index, examples) -> accuracy in [0, 1]; counts its own tokens
    evaluate: Callable[..., float] | None = None
    # forward-only per-sample losses for a list of samples (counts extra_forward_tokens)
    sample_losses: Callable[[list["Sample"]], np.ndarray] | None = None
    extras: dict[str, Any] = field(default_factory=dict)


@runtime_checkable
class Strategy(Protocol):
    name: str
    needs_hidden_states: bool  # the loop asks the model for last-layer hidden states when True

    def on_task_start(self, task: "Task", task_index: int, step: int) -> None: ...

    def replay_batch(self, step: int, batch_size: int) -> ReplayBatch | None: ...

    def observe(self, sample_ids: np.ndarray, losses: np.ndarray, step: int) -> None: ...

    def extra_loss(self, batch: dict[str, "torch.Tensor"], outputs: Any) -> "torch.Tensor | None": ...

    def on_task_end(self, task: "Task", task_index: int, step: int) -> None: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, d: dict) -> None: ...


class BaseStrategy:
    """Do-nothing defaults; concrete strategies override what they need."""

    name = "base"
    needs_hidden_states = False

    def __init__(self, ctx: StrategyContext):
        self.ctx = ctx

    def on_task_start(self, task, task_index: int, step: int) -> None:
        pass

    def replay_batch(self, step: int, batch_size: int) -> ReplayBatch | None:
        return None

    def observe(self, sample_ids: np.ndarray, losses: np.ndarray, step: int) -> None:
        pass

    def extra_loss(self, batch, outputs):
        return None

    def on_task_end(self, task, task_index: int, step: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, d: dict) -> None:
        pass


# name -> factory(ctx) ; filled by the modules that define strategies (see replay/__init__.py)
REGISTRY: dict[str, Callable[[StrategyContext], Strategy]] = {}


def register(name: str):
    def deco(factory):
        REGISTRY[name] = factory
        return factory

    return deco
