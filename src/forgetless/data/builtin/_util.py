"""Shared helpers for the built-in tasks."""

from __future__ import annotations

import random
import zlib
from typing import Callable, Hashable

from forgetless.data.task import Example, split_by_hash

N_DEV = 50  # dev examples per built-in task (accuracy_triggered probes 16 by default)


def rng_for(name: str) -> random.Random:
    """The generator of task ``name``: its data is fixed, whatever the run's seed and the order
    tasks are built in."""
    return random.Random(zlib.crc32(name.encode()) * 1_000_003)


def unique_split(draw: Callable[[], tuple[Hashable, Example]], n_train: int, n_test: int) -> tuple[list, list, list]:
    """(train, dev, test): draws until ``n_train + N_DEV + n_test`` distinct keys are seen, then
    splits by hash of the prompt, so no test prompt is ever seen in training."""
    seen: set = set()
    out: list[Example] = []
    tries = 0
    while len(out) < n_train + N_DEV + n_test:
        key, ex = draw()
        tries += 1
        if tries > 100 * (n_train + N_DEV + n_test):
            raise RuntimeError("could not draw enough distinct examples")
        if key in seen:
            continue
        seen.add(key)
        out.append(ex)
    return split_by_hash(out, N_DEV, n_test)


def mc(prompt: str, correct: str, distractors: list[str], rng: random.Random) -> Example:
    """A multiple-choice example with the right option at a random position."""
    choices = [correct] + list(distractors)
    rng.shuffle(choices)
    i = choices.index(correct)
    return Example(prompt=prompt, target=correct, choices=tuple(choices), answer=i)
