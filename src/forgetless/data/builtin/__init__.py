"""The built-in offline task suite: real data shipped with Python or installed packages
(unicodedata, pycountry, calendar) plus procedurally generated reasoning tasks.

Every task is solvable by a rule learned from its training split (test prompts never occur in
training), and tasks that share a prompt format but need a different rule (first_word /
last_word, add / compare) interfere, so sequential fine-tuning forgets. Targets start with a
space so they tokenize like words in running text after the prompt's separator.
"""

from __future__ import annotations

from typing import Callable

from forgetless.data.builtin import calendar_tasks, countries, names, numbers, pronunciation, unicode_tasks, words
from forgetless.data.task import Task
from forgetless.errors import InputError

Builder = Callable[[], Task]

BUILTIN: dict[str, Builder] = {
    "first_word": words.first_word,
    "last_word": words.last_word,
    "add": numbers.add,
    "compare": numbers.compare,
    "unicode_letter": unicode_tasks.unicode_letter,
    "country_code": countries.country_code,
    "month_name": calendar_tasks.month_name,
    "days_in_month": calendar_tasks.days_in_month,
    # the real-data suite for pretrained models (docs/tasks.md): knowledge more than rules
    "cmu_syllables": pronunciation.cmu_syllables,
    "cmu_stress": pronunciation.cmu_stress,
    "cmu_rhyme": pronunciation.cmu_rhyme,
    "iso639_code": names.iso639_code,
    "subdivision_code": names.subdivision_code,
    "subdivision_country": names.subdivision_country,
    "cldr_german": names.cldr_german,
}
REAL_SUITE = ("cmu_syllables", "cmu_stress", "cmu_rhyme", "iso639_code", "subdivision_code",
              "subdivision_country", "cldr_german")


def build_builtin(name: str) -> Task:
    """The built-in task ``name``: always the same examples and splits (no seed)."""
    if name not in BUILTIN:
        raise InputError(f"unknown built-in task {name!r}; known: {', '.join(BUILTIN)}", field="tasks")
    return BUILTIN[name]()


def describe_tasks() -> list[dict]:
    rows = []
    for name in BUILTIN:
        t = build_builtin(name)
        rows.append({"name": t.name, "kind": t.kind, "n_train": len(t.train), "n_dev": len(t.dev),
                     "n_test": len(t.test), "source": t.source})
    return rows
