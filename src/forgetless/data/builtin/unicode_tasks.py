"""Unicode character names (``unicodedata``, shipped with Python)."""

from __future__ import annotations

import re
import sys
import unicodedata

from forgetless.data.builtin._util import N_DEV
from forgetless.data.task import Example, Task, split_by_hash

_LATIN = re.compile(r"LATIN (SMALL|CAPITAL) LETTER ([A-Z])( WITH .+)?")
N_TEST = 150


def _latin_letters() -> list[tuple[str, str]]:
    out = []
    for cp in range(0x20, 0x20000):  # BMP + SMP hold every Latin letter
        name = unicodedata.name(chr(cp), "")
        m = _LATIN.fullmatch(name)
        if m:
            base = m.group(2).lower()
            out.append((name, base))
    return out


def unicode_letter() -> Task:
    """Base letter of a Latin character from its Unicode name (lower case): the rule is
    "copy the letter after LETTER". Test names never occur in training."""
    exs = [Example(prompt=f"letter: {name.lower()} ->", target=f" {base}") for name, base in sorted(set(_latin_letters()))]
    train, dev, test = split_by_hash(exs, N_DEV, N_TEST)
    return Task("unicode_letter", "generation", train, test, dev=dev,
                source=f"unicodedata {unicodedata.unidata_version} (Python {sys.version_info[0]}.{sys.version_info[1]}): "
                       "Latin letter names -> base letter (lower case)")
