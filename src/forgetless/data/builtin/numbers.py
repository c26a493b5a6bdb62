"""Number-pair tasks: the same two numbers, different rules (sum / larger one)."""

from __future__ import annotations

from forgetless.data.builtin._util import mc, rng_for, unique_split
from forgetless.data.task import Example, Task

N_TRAIN, N_TEST = 600, 150


def _pair(rng):
    a, b = rng.sample(range(10, 100), 2)
    return a, b


def add() -> Task:
    rng = rng_for("add")

    def draw():
        a, b = _pair(rng)
        return (a, b), Example(prompt=f"sum: {a} {b} ->", target=f" {a + b}")

    train, dev, test = unique_split(draw, N_TRAIN, N_TEST)
    return Task("add", "generation", train, test, source="generated: sum of two 2-digit numbers", dev=dev)


def compare() -> Task:
    rng = rng_for("compare")

    def draw():
        a, b = _pair(rng)
        ex = mc(f"larger: {a} {b} Answer:", f" {max(a, b)}", [f" {min(a, b)}"], rng)
        return (a, b), ex

    train, dev, test = unique_split(draw, N_TRAIN, N_TEST)
    return Task("compare", "multiple_choice", train, test,
                source="generated: the larger of two 2-digit numbers (2 options)", dev=dev)
