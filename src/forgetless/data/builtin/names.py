"""Names and codes from real registries: ISO 639-3 and ISO 3166-2 (``pycountry``) and the German
names of countries, languages and currencies in Unicode CLDR (``babel``). Mostly knowledge, partly
a rule (codes often start like the name); test names never occur as training prompts."""

from __future__ import annotations

import re

from forgetless.data.builtin._util import mc, rng_for, unique_split
from forgetless.data.task import Example, Task

N_TRAIN, N_TEST = 600, 300
_BRACKETS = re.compile(r"\s*\[[^\]]*\]")  # "Flintshire [Sir y Fflint GB-FFL]": alt names, old codes


def _sub_name(s) -> str:
    return _BRACKETS.sub("", s.name).strip()


def _split(name: str, items: list[tuple[str, Example]], n_train: int = N_TRAIN,
           n_test: int = N_TEST) -> tuple[list, list, list]:
    rng = rng_for(name)
    return unique_split(lambda: items[rng.randrange(len(items))], n_train, n_test)


def iso639_code() -> Task:
    """The ISO 639-3 code of a language from its English name: Basque -> eus."""
    import pycountry

    items = sorted((lang.name, Example(f"ISO 639-3 code of the {lang.name} language? Answer:", f" {lang.alpha_3}"))
                   for lang in pycountry.languages)
    train, dev, test = _split("iso639_code", items)
    return Task("iso639_code", "generation", train, test,
                source="pycountry: ISO 639-3 language names and codes (7,900 languages)", dev=dev)


def subdivision_code() -> Task:
    """The ISO 3166-2 code of a country's subdivision: Bavaria (Germany) -> DE-BY."""
    import pycountry

    country = {c.alpha_2: getattr(c, "common_name", c.name) for c in pycountry.countries}
    items = sorted((s.code, Example(f"ISO 3166-2 code of {_sub_name(s)} ({country.get(s.country_code, s.country_code)})? Answer:",
                                    f" {s.code}")) for s in pycountry.subdivisions)
    train, dev, test = _split("subdivision_code", items)
    return Task("subdivision_code", "generation", train, test,
                source="pycountry: ISO 3166-2 subdivision names and codes (5,000 subdivisions)", dev=dev)


def _cldr_pairs() -> list[tuple[str, str, str]]:
    """(kind, English name, German name) from CLDR where the German name differs."""
    from babel import Locale

    en, de = Locale("en"), Locale("de")
    out = []
    for kind, a, b in (("country", en.territories, de.territories), ("language", en.languages, de.languages),
                       ("currency", en.currencies, de.currencies)):
        for code in sorted(a):
            if code.isdigit() or code not in b or a[code] == b[code]:
                continue
            out.append((kind, a[code], b[code]))
    return out


def cldr_german() -> Task:
    """The German name of a country, language or currency: Japanese Yen -> Japanischer Yen."""
    items = sorted({(f"{k}:{e}", Example(f'German name of the {k} "{e}"? Answer:', f" {d}")) for k, e, d in _cldr_pairs()},
                   key=lambda kv: kv[0])
    train, dev, test = _split("cldr_german", items, 500, 250)  # 820 names in all
    return Task("cldr_german", "generation", train, test,
                source="babel: Unicode CLDR English and German names of countries, languages, currencies", dev=dev)


def subdivision_country() -> Task:
    """Which of four countries a subdivision belongs to: Bavaria -> Germany."""
    import pycountry

    rng = rng_for("subdivision_country")
    country = {c.alpha_2: getattr(c, "common_name", c.name) for c in pycountry.countries}
    owners: dict[tuple[str, str], set[str]] = {}
    for s in pycountry.subdivisions:
        if s.country_code in country:
            owners.setdefault((_sub_name(s), s.type.lower()), set()).add(country[s.country_code])
    subs = sorted((name, kind, next(iter(c))) for (name, kind), c in owners.items() if len(c) == 1)  # unambiguous
    names = sorted(set(country.values()))

    def draw():
        name, kind, right = subs[rng.randrange(len(subs))]
        wrong = rng.sample([c for c in names if c != right], 3)
        return (name, kind), mc(f"{name} ({kind}) is in which country? Answer:", f" {right}",
                        [f" {c}" for c in wrong], rng)

    train, dev, test = unique_split(draw, N_TRAIN, N_TEST)
    return Task("subdivision_country", "multiple_choice", train, test,
                source="pycountry: ISO 3166-2 subdivisions and their countries (4 options)", dev=dev)
