"""The data model every layer shares: examples, tasks, tokenized samples."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Literal, Sequence, TypeVar

import numpy as np

from forgetless.errors import InputError

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
    """A task's splits are fixed by its data (``split_by_hash``), never by the run's seed: train is
    trained on, dev may steer training (accuracy_triggered probes it), test only fills the accuracy
    matrix."""

    name: str
    kind: Kind
    train: list[Example]
    test: list[Example]
    source: str = ""
    metric: str | None = None  # how its answers are scored (forgetless.scoring); None: the kind's default
    dev: list[Example] = field(default_factory=list)
    files: dict[str, str] = field(default_factory=dict)  # split -> the file it was read from (for errors)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"task '{self.name}': kind must be one of {KINDS}, got {self.kind!r}")


T = TypeVar("T")


def split_by_hash(items: Sequence[T], n_dev: int, n_test: int,
                  key: Callable[[T], str] = lambda ex: ex.prompt) -> tuple[list[T], list[T], list[T]]:
    """(train, dev, test): items ranked by the sha256 of ``key`` (an example's prompt), the first
    ``n_test`` to test, the next ``n_dev`` to dev, the rest to train, each in the input order.

    The split depends only on the items' content, not on a seed or on Python's salted ``hash``.
    Items sharing a key go to one split (a test prompt is never trained on), so a split can exceed
    its count by the rest of its last group."""
    keys = [key(it) for it in items]
    count = Counter(keys)
    where: dict[str, int] = {}  # key -> 0 train, 1 dev, 2 test
    n = [0, 0, 0]
    for k in sorted(count, key=lambda k: hashlib.sha256(k.encode("utf-8")).digest()):
        where[k] = 2 if n[2] < n_test else 1 if n[1] < n_dev else 0
        n[where[k]] += count[k]
    out: tuple[list[T], list[T], list[T]] = ([], [], [])
    for it, k in zip(items, keys):
        out[where[k]].append(it)
    return out


def check_splits(task: Task) -> None:
    """Every task, whatever its source, has something to train on and something to score: an empty
    training split would loop forever, an empty test split would score 0 at every stage."""
    for split in ("train", "test"):
        if not getattr(task, split):
            raise InputError(f"task '{task.name}' has no {split} examples", file=task.files.get(split) or None,
                             field=split)


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
