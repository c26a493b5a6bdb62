"""The data model every layer shares: examples, tasks, tokenized samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Kind = Literal["generation", "multiple_choice"]
KINDS: tuple[str, ...] = ("generation", "multiple_choice")


@dataclass(frozen=True)
class Example:
    """One prompt and its answer.

    For ``generation`` the model must produce ``target`` (exact match after normalisation).
    For ``multiple_choice`` ``choices`` lists the options, ``answer`` is the index of the right
    one and ``target == choices[answer]``; training fits ``target`` after ``prompt``, evaluation
    compares the log-likelihood of every option after ``prompt``.
    """

    prompt: str
    target: str
    choices: tuple[str, ...] | None = None
    answer: int | None = None
    # further acceptable answers (e.g. SuperNI's several outputs): a generation is scored against
    # ``target`` and each of these, keeping the best score
    references: tuple[str, ...] = ()


@dataclass
class Task:
    name: str
    kind: Kind
    train: list[Example]
    test: list[Example]
    source: str = ""
    metric: str | None = None  # how its answers are scored (forgetless.scoring); None: the kind's default

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task '{self.name}': kind must be one of {KINDS}, got {self.kind!r}")


@dataclass
class Sample:
    """A tokenized training example. ``sample_id`` is unique over the whole run:
    task samples have ids >= 0, general (GeRe) samples have ids < 0."""

    sample_id: int
    task_id: int
    input_ids: np.ndarray  # int64, prompt + target + EOS
    labels: np.ndarray  # int64, -100 on prompt (and padding), token ids on target + EOS

    @property
    def n_tokens(self) -> int:
        return int(self.input_ids.shape[0])


@dataclass
class TaskStream:
    """Tasks in training order plus their tokenized training samples."""

    tasks: list[Task]
    samples: list[list[Sample]] = field(default_factory=list)  # per task, filled by tokenize_stream
    truncated: int = 0  # how many samples lost target tokens to truncation

    @property
    def names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def __len__(self) -> int:
        return len(self.tasks)
