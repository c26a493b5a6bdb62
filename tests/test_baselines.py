"""Baseline strategies on a fake context: synthetic samples, scripted losses and accuracies, no model."""

import logging
import math

import numpy as np
import pytest

from forgetless.config import Config
from forgetless.data.task import Example, Sample, Task, TaskStream
from forgetless.replay import baselines  # noqa: F401  (registers)
from forgetless.replay.base import REGISTRY, StrategyContext, WorkCounters
from forgetless.state import load_state, save_state

N_TASKS, N_PER_TASK, STEPS, BS = 3, 40, 50, 8
MEMORY = ["uniform", "fixed", "loss_triggered", "accuracy_triggered"]


def make_ctx(replay=None, seed=0, evaluate=None, sample_losses=None, steps=STEPS):
    replay = {"memory": {"size": 60}, **(replay or {})}
    cfg = Config.model_validate({"seed": seed, "train": {"batch_size": BS}, "replay": replay})
    samples, tasks = [], []
    for t in range(N_TASKS):
        toks = [np.arange(3 + k % 5, dtype=np.int64) for k in range(N_PER_TASK)]
        samples.append([Sample(t * 1000 + k, t, x, x.copy()) for k, x in enumerate(toks)])
        tasks.append(Task(f"t{t}", "generation", [Example(f"p{k}", "a") for k in range(N_PER_TASK)],
                          [Example(f"q{t}-{k}", "b") for k in range(10)],
                          dev=[Example(f"d{t}-{k}", "b") for k in range(10)]))
    ctx = StrategyContext(config=cfg, stream=TaskStream(tasks, samples), seed=seed, counters=WorkCounters(),
                          steps_per_task=[steps] * N_TASKS, batch_size=BS)
    ctx.extras["clock"] = (0, 0)  # (task, call in task), set by the driver before each replay_batch
    ctx.evaluate = evaluate(ctx) if evaluate else _flat_eval(ctx)
    ctx.sample_losses = sample_losses(ctx) if sample_losses else _flat_probe(ctx)
    return ctx


def _flat_eval(ctx):
    def ev(j, examples):
        ctx.counters.eval_tokens += len(examples)
        return 0.8
    return ev


def _flat_probe(ctx):
    def sl(samples):
        ctx.counters.extra_forward_tokens += sum(s.n_tokens for s in samples)
        return np.ones(len(samples))
    return sl


def flat_loss(t, i):
    return 1.0


def noisy_loss(t, i):
    return 1.0 + 0.1 * math.sin(7.3 * i + t) + (2.0 if i % 13 == 7 else 0.0)


def drive(ctx, name, loss=flat_loss, switch=None, tmp=None, fresh_only=False):
    """The loop: on_task_start, then per step replay_batch -> observe, then on_task_end.

    ``switch`` = event number before which the strategy is saved and replaced by a new one (loaded
    from the saved state unless ``fresh_only``). Returns [(task, call, replayed ids)] per step.
    """
    strat = REGISTRY[name](ctx)
    records, event, step = [], 0, 0

    def maybe_switch():
        nonlocal strat, event
        if event == switch:
            save_state(strat.state_dict(), tmp)
            strat = REGISTRY[name](ctx)
            if not fresh_only:
                strat.load_state_dict(load_state(tmp))
        event += 1

    for t in range(N_TASKS):
        maybe_switch()
        strat.on_task_start(ctx.stream.tasks[t], t, step)
        for i in range(ctx.steps_per_task[t]):
            maybe_switch()
            step += 1
            ctx.extras["clock"] = (t, i)
            rb = strat.replay_batch(step, BS)
            rids = [s.sample_id for s in rb.samples] if rb is not None else []
            records.append((t, i, rids))
            new = [t * 1000 + (i * BS + k) % N_PER_TASK for k in range(BS)]
            ids = np.array(new + rids + [-1, -2], dtype=np.int64)
            # replayed samples and general samples must not enter the step loss: give them wild values
            losses = np.array([loss(t, i)] * BS + [50.0 + i] * len(rids) + [1000.0 * (i % 2), 3.0])
            strat.observe(ids, losses, step)
        maybe_switch()
        strat.on_task_end(ctx.stream.tasks[t], t, step)
    return strat, records


def counts(records, t):
    return np.array([len(r) for tt, _, r in records if tt == t])


def test_registry_and_none():
    for n in ["none", "joint", *MEMORY]:
        assert n in REGISTRY
    _, rec = drive(make_ctx(), "none")
    assert all(not r for _, _, r in rec)


def test_joint_volume_union_and_budget_ignored():
    _, rec = drive(make_ctx({"budget": 5}), "joint")
    for t in range(N_TASKS):
        assert (counts(rec, t) == t * BS).all()
    drawn = {sid // 1000 for tt, _, r in rec if tt == 2 for sid in r}
    assert drawn == {0, 1}  # the whole union, not only the previous task


def test_uniform_ratio_exact():
    _, rec = drive(make_ctx({"uniform": {"ratio": 0.3}}), "uniform")  # 2.4 samples per step
    assert counts(rec, 0).sum() == 0
    for t in (1, 2):
        c = counts(rec, t)
        assert set(c) == {2, 3} and c.sum() == 120  # floor(50 * 2.4)
        assert c[:5].tolist() == [2, 2, 3, 2, 3]  # running totals 2, 4, 7, 9, 12 = floor(k * 2.4)


def test_fixed_every_k():
    _, rec = drive(make_ctx({"fixed": {"interval": 4, "ratio": 0.5}}), "fixed")
    for t in (1, 2):
        c = counts(rec, t)
        assert (c[::4] == 4).all() and c.sum() == 4 * 13  # calls 0, 4, ..., 48
        mask = np.arange(STEPS) % 4 != 0
        assert (c[mask] == 0).all()


def test_loss_trigger_running_flat_and_spike():
    cfg = {"loss_triggered": {"mode": "running", "window": 10, "c": 2.0, "ratio": 0.5}}
    s, rec = drive(make_ctx(cfg), "loss_triggered")
    assert sum(len(r) for _, _, r in rec) == 0 and s.schedule.n_triggers == 0  # noise-free flat loss never fires

    def spike(t, i):
        return 5.0 if (t, i) in {(1, 30), (2, 5)} else 1.0

    s, rec = drive(make_ctx(cfg), "loss_triggered", loss=spike)
    fired = [(t, i) for t, i, r in rec if r]
    assert fired == [(1, 31)]  # decided at step 30, replayed at 31; (2, 5) is before a full window
    assert len(rec[STEPS + 31][2]) == 4 and s.schedule.n_triggers == 1


def test_loss_trigger_flat_loss_silent_at_c0():
    # mean of ten 0.01s rounds below 0.01: without a tolerance a flat loss would fire at c = 0
    cfg = {"loss_triggered": {"mode": "running", "window": 10, "c": 0.0}}
    s, rec = drive(make_ctx(cfg), "loss_triggered", loss=lambda t, i: 0.01)
    assert s.schedule.n_triggers == 0 and not any(r for _, _, r in rec)


def test_loss_trigger_absolute():
    cfg = {"loss_triggered": {"mode": "absolute", "threshold": 2.0, "ratio": 0.25}}
    _, rec = drive(make_ctx(cfg), "loss_triggered", loss=lambda t, i: 3.0 if i in (10, 20) else 1.0)
    assert [(t, i) for t, i, r in rec if r] == [(1, 11), (1, 21), (2, 11), (2, 21)]
    assert all(len(r) == 2 for _, _, r in rec if r)


def test_loss_trigger_probe_mode():
    calls = []

    def probe(ctx):
        def sl(samples):
            t, i = ctx.extras["clock"]
            calls.append((t, i, len(samples)))
            assert all(s.task_id < t for s in samples)
            return np.full(len(samples), 4.0 if (t, i) == (1, 25) else 1.0)
        return sl

    cfg = {"loss_triggered": {"mode": "running", "window": 3, "probe": True, "probe_size": 4, "probe_every": 5}}
    ctx = make_ctx(cfg, sample_losses=probe)
    s, rec = drive(ctx, "loss_triggered", loss=lambda t, i: 9.0 if i == 3 else 1.0)  # training loss ignored
    assert [(t, i) for t, i, r in rec if r] == [(1, i) for i in range(25, 30)]  # probe step + P-1
    assert all(len(r) == BS for _, _, r in rec if r)
    assert s.schedule.n_probes == 20 and calls == [(t, i, 4) for t in (1, 2) for i in range(0, STEPS, 5)]


def test_accuracy_trigger_replays_exactly_window():
    def scripted(ctx):
        def ev(j, examples):
            assert list(examples) == ctx.stream.tasks[j].dev[:4]  # dev, never test
            ctx.counters.eval_tokens += len(examples)
            return 0.7 if ctx.extras["clock"] == (1, 20) else 0.8  # end-of-task refs are taken at (0,49)/(1,49)
        return ev

    cfg = {"accuracy_triggered": {"every": 5, "probe_size": 4, "delta": 0.05, "window": 3, "ratio": 0.5}}
    ctx = make_ctx(cfg, evaluate=scripted)
    s, rec = drive(ctx, "accuracy_triggered")
    assert [(t, i) for t, i, r in rec if r] == [(1, 20), (1, 21), (1, 22)]
    assert all(len(r) == 4 for _, _, r in rec if r)
    # refs after tasks 0 and 1 (not the last) + calls 5..45 (9) x earlier tasks (1 in task 1, 2 in task 2)
    assert s.schedule.n_evals == 2 + 9 + 18 and s.schedule.n_triggers == 1
    assert ctx.counters.eval_tokens == 4 * s.schedule.n_evals


def test_accuracy_drop_within_delta_does_not_fire():
    def ev(ctx):
        return lambda j, ex: 0.8 if ctx.extras["clock"][1] == 49 else 0.76
    _, rec = drive(make_ctx({"accuracy_triggered": {"every": 5, "delta": 0.05}}, evaluate=ev), "accuracy_triggered")
    assert not any(r for _, _, r in rec)


def _droppy(ctx):
    return lambda j, ex: 0.5 if ctx.extras["clock"][1] in (10, 40) else 0.9


@pytest.mark.parametrize("budget", [37, 0.1])
@pytest.mark.parametrize("name,section", [
    ("uniform", {"uniform": {"ratio": 0.25}}),
    ("fixed", {"fixed": {"interval": 7, "ratio": 1.0}}),
])
def test_spreading_schedules_spend_their_budget_evenly(name, section, budget):
    """every_step and fixed spread the budget over their steps / events by their own rule: all of it,
    at most one sample apart between events, so every quarter of the task replays."""
    ctx = make_ctx({**section, "budget": budget})
    s, rec = drive(ctx, name)
    assert counts(rec, 0).sum() == 0
    for t in (1, 2):
        b, c = ctx.replay_budget(t), counts(rec, t)
        assert b == (37 if budget == 37 else 40)
        ev = c if name == "uniform" else c[::7]
        assert c.sum() == b and ev.max() - ev.min() <= 1 and (name == "uniform" or not c[np.arange(STEPS) % 7 != 0].any())
        assert all(q.sum() > 0 for q in np.array_split(c, 4))
        assert s.task_log[t] == {"task": t, "budget": b, "replayed": b}
        assert s.report()["budget"][t] == {"task": t, "budget": b, "spent": b, "underspend": 0}


@pytest.mark.parametrize("budget", [37, 0.1])
@pytest.mark.parametrize("name,section,loss", [
    ("loss_triggered", {"loss_triggered": {"mode": "running", "window": 5}}, noisy_loss),  # many triggers
    ("loss_triggered", {"loss_triggered": {"mode": "absolute", "threshold": 0.0}}, flat_loss),  # always
    ("accuracy_triggered", {"accuracy_triggered": {"every": 5, "window": 2}}, flat_loss),  # 2 x 2 steps
])
def test_triggered_schedules_get_only_what_they_trigger(name, section, loss, budget):
    """The budget only cuts: the budgeted run replays the unbudgeted run's triggered volumes until
    the budget is spent (the triggers here do not depend on replay), and the rest is underspend."""
    s, rec = drive(make_ctx({**section, "budget": budget}, evaluate=_droppy), name, loss=loss)
    _, free = drive(make_ctx({**section, "budget": None}, evaluate=_droppy), name, loss=loss)
    for t in (1, 2):
        b, c, want = s.ctx.replay_budget(t), counts(rec, t), counts(free, t)
        np.testing.assert_array_equal(c, np.diff(np.minimum(np.cumsum(want), b), prepend=0))
        assert s.report()["budget"][t] == {"task": t, "budget": b, "spent": int(c.sum()), "underspend": b - int(c.sum())}
    if name == "accuracy_triggered":  # drops seen at calls 10 and 40: 2 steps x 8 each, 32 of the budget
        assert [i for tt, i, r in rec if tt == 1 and r] == [10, 11, 40, 41] and counts(rec, 1).sum() == 32


def test_loss_triggered_smoothly_falling_loss_gets_no_replay():
    """A smoothly falling training loss never crosses mean + c * std of its window: no trigger, so no
    replay at all, not even just before the task ends; the whole budget is reported as underspend."""
    cfg = {"loss_triggered": {"mode": "running", "window": 10, "c": 1.0}, "budget": 64}
    s, rec = drive(make_ctx(cfg), "loss_triggered", loss=lambda t, i: 2.0 * math.exp(-i / 20))
    assert s.schedule.n_triggers == 0 and not any(r for _, _, r in rec)
    assert s.report()["budget"][1:] == [{"task": t, "budget": 64, "spent": 0, "underspend": 64} for t in (1, 2)]


def test_budget_sets_volume_not_ratio():
    _, rec = drive(make_ctx({"uniform": {"ratio": 1.0}, "budget": 0.1}), "uniform")  # ratio alone: 8/step
    assert set(counts(rec, 1)) == {0, 1} and counts(rec, 1).sum() == 40


def test_budget_beyond_memory_is_reported(caplog):
    ctx = make_ctx({"memory": {"size": 3}, "budget": 0.9})
    with caplog.at_level(logging.WARNING):
        s, rec = drive(ctx, "uniform")
    assert s.task_log[1] == {"task": 1, "budget": 360, "replayed": 150}  # 3 per step x 50 steps
    assert s.report()["budget"][1] == {"task": 1, "budget": 360, "spent": 150, "underspend": 210}
    assert "exceeds what the memory" in caplog.text


@pytest.mark.parametrize("name", ["joint", *MEMORY])
def test_draws_from_earlier_tasks_without_duplicates(name):
    _, rec = drive(make_ctx({"uniform": {"ratio": 2.0}}, evaluate=_droppy), name, loss=noisy_loss)
    assert any(r for _, _, r in rec)
    for t, _, r in rec:
        assert all(sid // 1000 < t for sid in r)
        assert len(set(r)) == len(r)


ROUND_TRIP = {
    "joint": {},
    "uniform": {"uniform": {"ratio": 0.3}, "memory": {"policy": "reservoir", "size": 60}},
    "fixed": {"fixed": {"interval": 3, "ratio": 0.7}, "budget": 0.05},
    "loss_triggered": {"loss_triggered": {"window": 5, "ratio": 0.4}, "budget": 30},
    "accuracy_triggered": {"accuracy_triggered": {"every": 5, "window": 4}},
}


# before call 8 of task 1 (just after the loss spike at call 7); call 12 (inside the accuracy
# replay window opened at call 10); between tasks 1 and 2
@pytest.mark.parametrize("switch", [STEPS + 2 + 1 + 8, STEPS + 2 + 1 + 12, 2 * (STEPS + 2)])
@pytest.mark.parametrize("name", sorted(ROUND_TRIP))
def test_state_round_trip(name, switch, tmp_path):
    cfg = ROUND_TRIP[name]
    _, ref = drive(make_ctx(cfg, evaluate=_droppy), name, loss=noisy_loss)
    _, got = drive(make_ctx(cfg, evaluate=_droppy), name, loss=noisy_loss, switch=switch, tmp=tmp_path)
    assert got == ref
    _, fresh = drive(make_ctx(cfg, evaluate=_droppy), name, loss=noisy_loss, switch=switch, tmp=tmp_path,
                     fresh_only=True)
    assert fresh != ref  # the restored state, not the seed, reproduces the decisions


def test_probe_mode_round_trip(tmp_path):
    cfg = {"loss_triggered": {"mode": "running", "window": 2, "probe": True, "probe_size": 4, "probe_every": 3}}

    def probe(ctx):
        return lambda samples: np.array([1.0 + 0.5 * math.sin(ctx.extras["clock"][1] * 1.7 + s.sample_id)
                                         for s in samples])

    _, ref = drive(make_ctx(cfg, sample_losses=probe), "loss_triggered")
    _, got = drive(make_ctx(cfg, sample_losses=probe), "loss_triggered", switch=STEPS + 20, tmp=tmp_path)
    assert any(r for _, _, r in ref) and got == ref


def test_seed_changes_draws():
    _, a = drive(make_ctx({"uniform": {"ratio": 0.5}}, seed=0), "uniform")
    _, b = drive(make_ctx({"uniform": {"ratio": 0.5}}, seed=1), "uniform")
    _, c = drive(make_ctx({"uniform": {"ratio": 0.5}}, seed=0), "uniform")
    assert a == c and a != b
