"""ReplayMemory: admission policies, dense rows after eviction, columns, lookups, state."""

from __future__ import annotations

import numpy as np
import pytest

from forgetless.data.task import Sample
from forgetless.replay.memory import ReplayMemory
from forgetless.state import load_state, save_state


def _samples(task_id, n, start=None):
    base = task_id * 10_000 if start is None else start
    return [Sample(sample_id=base + i, task_id=task_id, input_ids=np.zeros(3 + i % 4, dtype=np.int64),
                   labels=np.zeros(3 + i % 4, dtype=np.int64)) for i in range(n)]


def _consistent(mem: ReplayMemory) -> None:
    """Rows [:n] are dense, the id index matches them, columns match the samples."""
    n = len(mem)
    assert all(mem.samples[i] is not None for i in range(n))
    assert all(s is None for s in mem.samples[n:])
    ids = mem.column("sample_id")[:n]
    assert len(np.unique(ids)) == n
    assert mem._slot_of == {int(s): i for i, s in enumerate(ids)}
    for i in range(n):
        s = mem.samples[i]
        assert s.sample_id == ids[i] and s.task_id == mem.column("task_id")[i]
        assert s.n_tokens == mem.column("length")[i]
    np.testing.assert_array_equal(mem.slots_of(ids), np.arange(n))


def test_bad_arguments():
    with pytest.raises(ValueError):
        ReplayMemory(0)
    with pytest.raises(ValueError):
        ReplayMemory(5, "fifo")
    mem = ReplayMemory(5)
    mem.add_column("x", 1.5)
    with pytest.raises(ValueError):
        mem.add_column("x", 0.0)


def test_per_task_equal_quota_and_eviction():
    mem = ReplayMemory(12, "per_task", seed=0)
    rows = mem.admit(_samples(0, 30))
    np.testing.assert_array_equal(rows, np.arange(12))
    assert mem.task_counts() == {0: 12}
    rows = mem.admit(_samples(1, 30))
    assert mem.task_counts() == {0: 6, 1: 6}
    np.testing.assert_array_equal(rows, np.arange(6, 12))
    assert all(mem.samples[r].task_id == 1 for r in rows)
    mem.admit(_samples(2, 3))  # a small task keeps all it has; quota 12 // 3 = 4
    assert mem.task_counts() == {0: 4, 1: 4, 2: 3}
    _consistent(mem)
    assert mem.n_seen == 63
    assert len(mem.admit([])) == 0


def test_per_task_kept_samples_are_a_subset_of_the_previous():
    mem = ReplayMemory(10, "per_task", seed=1)
    mem.admit(_samples(0, 10))
    before = set(mem.column("sample_id")[: len(mem)].tolist())
    mem.admit(_samples(1, 10))
    kept = {int(s) for s, t in zip(mem.column("sample_id")[: len(mem)], mem.column("task_id")[: len(mem)]) if t == 0}
    assert len(kept) == 5 and kept <= before


def test_columns_move_with_their_rows_on_eviction():
    mem = ReplayMemory(8, "per_task", seed=2)
    mem.add_column("tag", -1.0)
    mem.admit(_samples(0, 8))
    assert np.all(mem.column("tag")[:8] == -1.0)
    mem.column("tag")[:8] = mem.column("sample_id")[:8]  # tag each row with its own id
    rows = mem.admit(_samples(1, 8))
    n = len(mem)
    old = np.setdiff1d(np.arange(n), rows)
    np.testing.assert_array_equal(mem.column("tag")[old], mem.column("sample_id")[old])
    assert np.all(mem.column("tag")[rows] == -1.0)  # new rows get the default
    _consistent(mem)


def test_reservoir_fill_then_replace_and_uniform_inclusion():
    mem = ReplayMemory(5, "reservoir", seed=0)
    rows = mem.admit(_samples(0, 3))
    np.testing.assert_array_equal(rows, [0, 1, 2])
    rows = mem.admit(_samples(1, 4))
    assert len(mem) == 5 and mem.n_seen == 7
    assert {0, 1, 2, 3, 4} >= set(rows.tolist()) >= {3, 4}
    _consistent(mem)
    # each of 40 offered samples is kept with probability capacity / offered = 1/4
    hits = np.zeros(40)
    for seed in range(800):
        m = ReplayMemory(10, "reservoir", seed=seed)
        m.admit(_samples(0, 20))
        m.admit(_samples(1, 20, start=20))
        hits[m.column("sample_id")[:10]] += 1
    np.testing.assert_allclose(hits / 800, 0.25, atol=0.065)
    assert abs(hits[:20].mean() - hits[20:].mean()) / 800 < 0.03  # early and late alike


def test_slots_of_and_get():
    mem = ReplayMemory(6, "per_task", seed=0)
    mem.admit(_samples(0, 4))
    slots = mem.slots_of(np.array([2, 99, 0, -1]))
    np.testing.assert_array_equal(slots, [2, -1, 0, -1])
    assert [s.sample_id for s in mem.get([3, 1])] == [3, 1]
    assert mem.slots_of([]).shape == (0,)


def test_state_round_trip_through_files_continues_identically(tmp_path):
    lookup = {s.sample_id: s for t in range(4) for s in _samples(t, 15)}
    a = ReplayMemory(20, "per_task", seed=4)
    a.add_column("strength", 1.0)
    a.admit(_samples(0, 15))
    a.admit(_samples(1, 15))
    a.column("strength")[: len(a)] = np.linspace(0, 1, len(a))
    save_state(a.state_dict(), tmp_path)
    b = ReplayMemory(20, "per_task", seed=999)
    b.add_column("strength", 1.0)
    b.load_state_dict(load_state(tmp_path), lookup.__getitem__)
    _consistent(b)
    for name in ("sample_id", "task_id", "length", "strength"):
        np.testing.assert_array_equal(a.column(name)[: len(a)], b.column(name)[: len(b)])
    a.admit(_samples(2, 15))
    b.admit(_samples(2, 15))  # same RNG state -> same evictions
    np.testing.assert_array_equal(a.column("sample_id")[: len(a)], b.column("sample_id")[: len(b)])
    assert a.n_seen == b.n_seen == 45


def test_load_rejects_unknown_column():
    a = ReplayMemory(4)
    a.add_column("extra", 0.0)
    a.admit(_samples(0, 2))
    with pytest.raises(KeyError):
        ReplayMemory(4).load_state_dict(a.state_dict(), lambda i: None)


def test_per_task_fills_room_left_by_small_tasks_and_remainders():
    mem = ReplayMemory(12, "per_task", seed=0)
    mem.admit(_samples(0, 3))
    mem.admit(_samples(1, 20))  # quota 6, but task 0 only has 3: task 1 takes the other 9
    assert mem.task_counts() == {0: 3, 1: 9}
    mem.admit(_samples(2, 20))  # quota 4: task 0 keeps 3, task 1 shrinks to 4, task 2 fills 5
    assert mem.task_counts() == {0: 3, 1: 4, 2: 5} and len(mem) == 12
    _consistent(mem)
