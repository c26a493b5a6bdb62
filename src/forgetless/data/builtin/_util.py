"""Shared helpers for the built-in tasks."""

from __future__ import annotations

import random
import zlib
from typing import Callable, Hashable

from forgetless.data.task import Example


def rng_for(name: str, seed: int) -> random.Random:
    """A generator per (task, seed), independent of the order tasks are built in."""
    return random.Random(zlib.crc32(name.encode()) * 1_000_003 + seed)


def unique_split(draw: Callable[[], tuple[Hashable, Example]], n_train: int, n_test: int) -> tuple[list, list]:
    """Draw examples until ``n_train + n_test`` distinct keys are seen, then split, so no test
    prompt is ever seen in training."""
    seen: set = set()
    out: list[Example] = []
    tries = 0
    while len(out) < n_train + n_test:
        key, ex = draw()
        tries += 1
        if tries > 100 * (n_train + n_test):
            raise RuntimeError("could not draw enough distinct examples")
        if key in seen:
            continue
        seen.add(key)
        out.append(ex)
    return out[:n_train], out[n_train:]


def mc(prompt: str, correct: str, distractors: list[str], rng: random.Random) -> Example:
    """A multiple-choice example with the right option at a random position."""
    choices = [correct] + list(distractors)
    rng.shuffle(choices)
    i = choices.index(correct)
    return Example(prompt=prompt, target=correct, choices=tuple(choices), answer=i)
