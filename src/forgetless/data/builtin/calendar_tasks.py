"""Calendar facts from Python's ``calendar`` module."""

from __future__ import annotations

import calendar

from forgetless.data.builtin._util import mc, rng_for, unique_split
from forgetless.data.task import Example, Task

N_TRAIN, N_TEST = 600, 150
MONTHS = list(calendar.month_name)[1:]


def _date(rng):
    y, m = rng.randint(1900, 2099), rng.randint(1, 12)
    d = rng.randint(1, calendar.monthrange(y, m)[1])
    return y, m, d


def month_name() -> Task:
    """The month's name from an ISO date: a 12-way lookup learned from the month digits."""
    rng = rng_for("month_name")

    def draw():
        y, m, d = _date(rng)
        return (y, m, d), Example(prompt=f"month of {y:04d}-{m:02d}-{d:02d} ->", target=f" {MONTHS[m - 1]}")

    train, dev, test = unique_split(draw, N_TRAIN, N_TEST)
    return Task("month_name", "generation", train, test, source="calendar: ISO date -> English month name", dev=dev)


def days_in_month() -> Task:
    """Days in a month (28/29/30/31) of a given year; February needs the leap-year rule."""
    rng = rng_for("days_in_month")

    def draw():
        y, m, _ = _date(rng)
        if m == 2 and rng.random() < 0.5:  # enough leap-year Februaries to learn the rule
            y = 4 * rng.randint(475, 524)
        n = calendar.monthrange(y, m)[1]
        opts = [" 28", " 29", " 30", " 31"]
        return (y, m), mc(f"days in {MONTHS[m - 1]} {y} Answer:", f" {n}", [o for o in opts if o != f" {n}"], rng)

    train, dev, test = unique_split(draw, N_TRAIN, N_TEST)
    return Task("days_in_month", "multiple_choice", train, test,
                source="calendar: days in a month of a year (4 options)", dev=dev)
