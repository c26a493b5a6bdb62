"""Bounded replay memory: tokenized samples plus columnar per-sample state.

Rows 0..n-1 are filled; eviction swaps the last row into the hole, so every column stays a dense
numpy array and strategies can compute weights over ``memory.column(name)[:n]`` without a loop.
Strategies add their own per-sample state with ``add_column``; new rows get the column's default.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from forgetless.data.task import Sample


class ReplayMemory:
    def __init__(self, capacity: int, policy: Literal["per_task", "reservoir"] = "per_task", seed: int = 0):
        if capacity < 1:
            raise ValueError("memory capacity must be >= 1")
        if policy not in ("per_task", "reservoir"):
            raise ValueError(f"unknown admission policy {policy!r}")
        self.capacity = capacity
        self.policy = policy
        self.rng = np.random.default_rng(seed)
        self.n = 0
        self.n_seen = 0  # samples offered so far (reservoir)
        self.samples: list[Sample | None] = [None] * capacity
        self._cols: dict[str, np.ndarray] = {}
        self._defaults: dict[str, float] = {}
        self.add_column("sample_id", -1, np.int64)
        self.add_column("task_id", -1, np.int32)
        self.add_column("length", 0, np.int32)
        self._slot_of: dict[int, int] = {}

    # ---- columns -------------------------------------------------------------------------
    def add_column(self, name: str, default: float, dtype=np.float64) -> None:
        if name in self._cols:
            raise ValueError(f"column {name!r} exists")
        self._cols[name] = np.full(self.capacity, default, dtype=dtype)
        self._defaults[name] = default

    def column(self, name: str) -> np.ndarray:
        """The full column (length ``capacity``); rows ``[:len(self)]`` are live."""
        return self._cols[name]

    def __len__(self) -> int:
        return self.n

    # ---- lookups -------------------------------------------------------------------------
    def slots_of(self, sample_ids) -> np.ndarray:
        """Row of each id, -1 for ids not in memory."""
        get = self._slot_of.get
        return np.fromiter((get(int(i), -1) for i in sample_ids), dtype=np.int64, count=len(sample_ids))

    def get(self, slots) -> list["Sample"]:
        return [self.samples[int(s)] for s in slots]

    def task_counts(self) -> dict[int, int]:
        t, c = np.unique(self._cols["task_id"][: self.n], return_counts=True)
        return {int(a): int(b) for a, b in zip(t, c)}

    # ---- admission -----------------------------------------------------------------------
    def admit(self, samples: list["Sample"]) -> np.ndarray:
        """Offer a finished task's samples; returns the rows written (their columns reset)."""
        if self.policy == "reservoir":
            return self._admit_reservoir(samples)
        return self._admit_per_task(samples)

    def _write(self, slot: int, s: "Sample") -> None:
        old = self.samples[slot]
        if old is not None:
            self._slot_of.pop(old.sample_id, None)
        self.samples[slot] = s
        self._slot_of[s.sample_id] = slot
        for name, col in self._cols.items():
            col[slot] = self._defaults[name]
        self._cols["sample_id"][slot] = s.sample_id
        self._cols["task_id"][slot] = s.task_id
        self._cols["length"][slot] = s.n_tokens

    def _remove(self, slot: int) -> None:
        last = self.n - 1
        gone = self.samples[slot]
        if gone is not None:
            self._slot_of.pop(gone.sample_id, None)
        if slot != last:
            moved = self.samples[last]
            self.samples[slot] = moved
            self._slot_of[moved.sample_id] = slot
            for col in self._cols.values():
                col[slot] = col[last]
        self.samples[last] = None
        self.n -= 1

    def _admit_reservoir(self, samples) -> np.ndarray:
        written = []
        for s in samples:
            self.n_seen += 1
            if self.n < self.capacity:
                slot = self.n
                self.n += 1
            else:
                j = int(self.rng.integers(self.n_seen))
                if j >= self.capacity:
                    continue
                slot = j
            self._write(slot, s)
            written.append(slot)
        return np.unique(np.asarray(written, dtype=np.int64))

    def _admit_per_task(self, samples) -> np.ndarray:
        """Equal quota per task seen so far: older tasks shrink at random to the quota, and the new
        task fills all the room left (at least its quota; more when older tasks were small or the
        capacity does not divide evenly), so no slot stays empty while samples are offered."""
        if not samples:
            return np.empty(0, dtype=np.int64)
        self.n_seen += len(samples)
        tasks = set(self.task_counts()) | {samples[0].task_id}
        quota = max(1, self.capacity // len(tasks))
        for t in sorted(tasks - {samples[0].task_id}):
            rows = np.flatnonzero(self._cols["task_id"][: self.n] == t)
            extra = len(rows) - quota
            if extra > 0:
                drop = np.sort(self.rng.choice(rows, size=extra, replace=False))[::-1]
                for slot in drop:  # highest first, so swap-remove never moves a row still to drop
                    self._remove(int(slot))
        take = min(len(samples), self.capacity - self.n)
        chosen = np.sort(self.rng.choice(len(samples), size=take, replace=False))
        start = self.n
        for i, idx in enumerate(chosen):
            self._write(start + i, samples[int(idx)])
        self.n = start + take
        return np.arange(start, start + take, dtype=np.int64)

    # ---- state ---------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """Ids and columns only; samples are re-attached from the stream on load."""
        return {
            "capacity": self.capacity,
            "policy": self.policy,
            "n": self.n,
            "n_seen": self.n_seen,
            "rng": self.rng.bit_generator.state,
            "columns": {k: v[: self.n].copy() for k, v in self._cols.items()},
        }

    def load_state_dict(self, d: dict, lookup) -> None:
        """``lookup(sample_id) -> Sample`` re-attaches the tokenized samples."""
        self.n = int(d["n"])
        self.n_seen = int(d["n_seen"])
        self.rng.bit_generator.state = d["rng"]
        for k, v in d["columns"].items():
            if k not in self._cols:
                raise KeyError(f"memory state has unknown column {k!r}")
            self._cols[k][: self.n] = np.asarray(v, dtype=self._cols[k].dtype)
        self.samples = [None] * self.capacity
        self._slot_of = {}
        for slot in range(self.n):
            sid = int(self._cols["sample_id"][slot])
            self.samples[slot] = lookup(sid)
            self._slot_of[sid] = slot
