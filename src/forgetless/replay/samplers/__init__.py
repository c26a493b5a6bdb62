"""Samplers decide *which* memory rows a replay draws (docs/mssr.md, "Schedule x sampler").

A sampler gets the host strategy (its memory, RNG and, when asked for, memory strength) and
answers ``draw(n) -> rows``: ``n`` distinct rows of the memory.
"""

from __future__ import annotations

import numpy as np


class UniformSampler:
    """Uniform without replacement (the baselines' draw)."""

    name = "uniform"
    needs_strength = False

    def __init__(self, host):
        self.host = host

    def draw(self, n: int) -> np.ndarray:
        return self.host.rng.choice(len(self.host.memory), size=n, replace=False)


class StrengthSampler:
    """MSSR: the weakest memories more often (weights over forgottenness, samplers/strength.py)."""

    name = "mssr"
    needs_strength = True

    def __init__(self, host):
        self.host = host

    def draw(self, n: int) -> np.ndarray:
        return self.host.strength.draw(n, self.host.rng)


SAMPLERS = {c.name: c for c in (UniformSampler, StrengthSampler)}
