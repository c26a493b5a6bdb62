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
    reference_tokens: int = 0  # GeRe's reference forward (N x L), charged to every run using it, cached or not
    time_train_s: float = 0.0
    time_replay_bookkeeping_s: float = 0.0
    time_eval_s: float = 0.0
    time_reference_s: float = 0.0  # the reference computation's time, measured when its cache entry was built

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
    # evaluate(task_index, examples) -> accuracy in [0, 1]; counts its own tokens
    evaluate: Callable[..., float] | None = None
    # forward-only per-sample losses for a list of samples (counts extra_forward_tokens)
    sample_losses: Callable[[list["Sample"]], np.ndarray] | None = None
    steps_per_task: list[int] = field(default_factory=list)  # optimizer steps the loop will take per task
    batch_size: int = 0  # new-task samples per step (global)
    # sum of a tensor over the processes of a distributed run, called by every process in step (None: one
    # process); GeRe's TM loss normalises by the whole step's count with it
    reduce_sum: Callable[[Any], Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    def replay_budget(self, task_index: int) -> int | None:
        """Replay samples allowed during task ``task_index`` (None: unlimited).

        ``replay.budget`` >= 1 is samples per task; < 1 is a fraction of the new-task samples the
        task trains on (steps x batch size). Task 0 has nothing to replay.
        """
        b = self.config.replay.budget
        if b is None:
            return None
        if task_index == 0:
            return 0
        if b >= 1:
            return int(round(b))
        return int(round(b * self.steps_per_task[task_index] * self.batch_size))


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


class ReplayBudget:
    """The one replay budget (``replay.budget``) every task-replay schedule goes through.

    A schedule asks for a volume and ``grant`` gives at most what remains of the current task's
    budget; it never adds anything. How a schedule spreads its budget over a task (evenly, at
    expanding gaps, on triggers) is the schedule's own rule. What a task leaves unspent is its
    underspend, kept in ``ledger`` at the task's end: reported, never replayed later. A composite
    of several task-replay strategies gives them one budget object, so together they stay
    within one budget. GeRe's general replay, ``none`` and ``joint`` are outside it.
    """

    def __init__(self) -> None:
        self.task = -1  # the open task (-1: none)
        self.total: int | None = None  # this task's budget in samples (None: unlimited)
        self.spent = 0
        self.ledger: list[dict] = []  # per finished task: budget, spent, underspend

    def open(self, ctx: StrategyContext, task_index: int) -> None:
        """Start a task; a second call for the open task (another part of a composite) is a no-op."""
        if task_index == self.task:
            return
        b, spt = ctx.config.replay.budget, ctx.steps_per_task
        known = b is None or b >= 1 or task_index < len(spt)  # a fraction needs the task's length
        self.task, self.spent = int(task_index), 0
        self.total = ctx.replay_budget(task_index) if known else None

    def grant(self, wanted: int) -> int:
        n = max(0, int(wanted))
        if self.total is not None:
            n = min(n, self.total - self.spent)
        self.spent += n
        return n

    def close(self, task_index: int) -> None:
        """End the open task: one ledger entry per task, however many parts share the budget."""
        if task_index != self.task:
            return
        under = None if self.total is None else self.total - self.spent
        self.ledger.append({"task": int(task_index), "budget": self.total, "spent": self.spent, "underspend": under})
        self.task = -1

    def state_dict(self) -> dict:
        return {"task": self.task, "total": self.total, "spent": self.spent, "ledger": [dict(e) for e in self.ledger]}

    def load_state_dict(self, d: dict) -> None:
        self.task, self.spent = int(d["task"]), int(d["spent"])
        self.total = None if d["total"] is None else int(d["total"])
        self.ledger = [dict(e) for e in d["ledger"]]


# name -> factory(ctx) ; filled by the modules that define strategies (see replay/__init__.py)
REGISTRY: dict[str, Callable[[StrategyContext], Strategy]] = {}


def register(name: str):
    def deco(factory):
        REGISTRY[name] = factory
        return factory

    return deco
