"""Country codes from ``pycountry`` (ISO 3166-1)."""

from __future__ import annotations

import pycountry

from forgetless.data.builtin._util import mc, rng_for
from forgetless.data.task import Task

N_TEST_COUNTRIES = 60
TRAIN_VARIANTS, TEST_VARIANTS = 3, 2  # examples per country, each with other distractors


def country_code(seed: int = 0) -> Task:
    """Pick a country's alpha-3 code (among four) from its name and alpha-2 code. Learnable
    as a rule (the alpha-3 code usually starts with the alpha-2 code); test countries never
    occur in training."""
    rng = rng_for("country_code", seed)
    countries = sorted((f"{c.alpha_2} {c.name}", c.alpha_3) for c in pycountry.countries)
    rng.shuffle(countries)
    codes = [code for _, code in countries]

    def examples(group, variants):
        out = []
        for name, code in group:
            for _ in range(variants):
                others = rng.sample([c for c in codes if c != code], 3)
                out.append(mc(f"alpha-3 of {name} Answer:", f" {code}", [f" {o}" for o in others], rng))
        return out

    test = examples(countries[:N_TEST_COUNTRIES], TEST_VARIANTS)
    train = examples(countries[N_TEST_COUNTRIES:], TRAIN_VARIANTS)
    return Task("country_code", "multiple_choice", train, test,
                source="pycountry: ISO 3166-1 country names, alpha-2 and alpha-3 codes (4 options)")
