"""Unicode character names (``unicodedata``, shipped with Python)."""

from __future__ import annotations

import re
import sys
import unicodedata

from forgetless.data.builtin._util import rng_for
from forgetless.data.task import Example, Task

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


def unicode_letter(seed: int = 0) -> Task:
    """Base letter of a Latin character from its Unicode name (lower case): the rule is
    "copy the letter after LETTER". Test names never occur in training."""
    rng = rng_for("unicode_letter", seed)
    pairs = sorted(set(_latin_letters()))
    rng.shuffle(pairs)
    exs = [Example(prompt=f"letter: {name.lower()} ->", target=f" {base}") for name, base in pairs]
    return Task("unicode_letter", "generation", exs[N_TEST:], exs[:N_TEST],
                source=f"unicodedata {unicodedata.unidata_version} (Python {sys.version_info[0]}.{sys.version_info[1]}): "
                       "Latin letter names -> base letter (lower case)")
