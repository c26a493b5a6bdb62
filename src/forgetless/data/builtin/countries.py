"""Country codes from ``pycountry`` (ISO 3166-1)."""

from __future__ import annotations

import pycountry

from forgetless.data.builtin._util import mc, rng_for
from forgetless.data.task import Task, split_by_hash

N_TEST_COUNTRIES, N_DEV_COUNTRIES = 60, 25
TRAIN_VARIANTS, TEST_VARIANTS = 3, 2  # examples per country, each with other distractors


def country_code() -> Task:
    """Pick a country's alpha-3 code (among four) from its name and alpha-2 code. Learnable
    as a rule (the alpha-3 code usually starts with the alpha-2 code); test countries never
    occur in training."""
    rng = rng_for("country_code")
    countries = sorted((f"{c.alpha_2} {c.name}", c.alpha_3) for c in pycountry.countries)
    codes = [code for _, code in countries]

    def examples(group, variants):
        out = []
        for name, code in group:
            for _ in range(variants):
                others = rng.sample([c for c in codes if c != code], 3)
                out.append(mc(f"alpha-3 of {name} Answer:", f" {code}", [f" {o}" for o in others], rng))
        return out

    train, dev, test = split_by_hash(countries, N_DEV_COUNTRIES, N_TEST_COUNTRIES, key=lambda c: c[0])
    return Task("country_code", "multiple_choice", examples(train, TRAIN_VARIANTS), examples(test, TEST_VARIANTS),
                source="pycountry: ISO 3166-1 country names, alpha-2 and alpha-3 codes (4 options)",
                dev=examples(dev, TEST_VARIANTS))
