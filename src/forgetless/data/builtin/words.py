"""Word-list tasks: the same lists of words, different rules (first / last word).

Because both tasks read the same prompt format and differ only in the cue, training one
overwrites the other: the textbook case of interference.
"""

from __future__ import annotations

from forgetless.data.builtin._util import rng_for, unique_split
from forgetless.data.task import Example, Task

WORDS = tuple("""
apple river stone cloud green table house light paper water music night horse bread chair
train plant smile dream storm sugar tiger ocean field glass money heart north south earth
river tower cable piano lemon mouse sheep wheel clock world beach grass queen robot honey
metal forest winter summer garden window market bottle butter candle castle circle copper
doctor dragon engine finger flower garlic hammer island jacket kettle ladder mirror number
orange parrot pencil pillow planet rabbit rocket saddle silver spider street tomato turtle
valley violin wallet wizard yellow zebra anchor basket bridge carpet desert feather guitar
helmet jungle laptop magnet needle oyster pepper puzzle raven salmon shadow temple velvet
cat dog sun sky box cup hat pen car bus map key egg ice oil bag bed fan fox owl
""".split())
WORDS = tuple(dict.fromkeys(WORDS))  # drop repeats, keep order

N_TRAIN, N_TEST = 600, 150


def _build(name: str, cue: str, pick) -> Task:
    rng = rng_for(name)

    def draw():
        k = rng.randint(3, 4)
        ws = rng.sample(WORDS, k)
        return tuple(ws), Example(prompt=f"{cue}: {' '.join(ws)} ->", target=" " + pick(ws))

    train, dev, test = unique_split(draw, N_TRAIN, N_TEST)
    return Task(name=name, kind="generation", train=train, test=test, dev=dev,
                source=f"generated: {len(WORDS)} common English words, 3-4 per prompt")


def first_word() -> Task:
    return _build("first_word", "first word", lambda ws: ws[0])


def last_word() -> Task:
    return _build("last_word", "last word", lambda ws: ws[-1])
