"""MSSR: closed form, discretisation error, sampler weights and draws, scheduler, budget, state."""

from __future__ import annotations

import math

import numpy as np
import pytest

from forgetless.config import MSSR_MOVED, Config
from forgetless.data.task import Sample, Task, TaskStream
from forgetless.replay import REGISTRY, StrategyContext, WorkCounters
from forgetless.replay.memory import ReplayMemory
from forgetless.replay.samplers.strength import MemoryStrength
from forgetless.replay.schedules.mssr import MSSRScheduler
from forgetless.replay.strategy import ReplayStrategy


def MSSR(ctx):
    return REGISTRY["mssr"](ctx)
from forgetless.state import load_state, save_state


# ---- helpers ----------------------------------------------------------------------------------
def _stream(n_tasks=3, per_task=40):
    tasks, samples = [], []
    for t in range(n_tasks):
        tasks.append(Task(name=f"t{t}", kind="generation", train=[], test=[]))
        samples.append([
            Sample(sample_id=t * 1000 + i, task_id=t, input_ids=np.arange(5, dtype=np.int64),
                   labels=np.arange(5, dtype=np.int64))
            for i in range(per_task)
        ])
    return TaskStream(tasks=tasks, samples=samples)


def _ctx(steps=(30, 30, 30), budget=None, size=100, seed=3, interference="loss", schedule="geometric", **mssr):
    cfg = Config()
    cfg.replay.mssr.schedule = schedule
    cfg.replay.memory.size = size
    cfg.replay.budget = budget
    cfg.replay.mssr.retention.interference = interference
    for k, v in mssr.items():  # flat knob names, set in their section
        setattr(getattr(cfg.replay.mssr, MSSR_MOVED.get(k, "retention")), k, v)
    return StrategyContext(config=cfg, stream=_stream(len(steps)), seed=seed, counters=WorkCounters(),
                           steps_per_task=list(steps), batch_size=8)


def _run(strategy, task_indices, steps_per_task, start_step=0, obs_seed=0, record=None):
    """Drive the contract like the loop: start, (replay, observe) per step, end."""
    rng = np.random.default_rng(obs_seed)
    step = start_step
    ctx = strategy.ctx
    for ti in task_indices:
        strategy.on_task_start(ctx.stream.tasks[ti], ti, step)
        for _ in range(steps_per_task[ti]):
            rb = strategy.replay_batch(step, ctx.batch_size)
            new = [s.sample_id for s in ctx.stream.samples[ti][:ctx.batch_size]]
            rep = [s.sample_id for s in rb.samples] if rb is not None else []
            if record is not None:
                record.append((step, rep))
            ids = np.array(new + rep + [-1, -2], dtype=np.int64)
            losses = rng.uniform(0.2, 3.0, size=len(ids))
            strategy.observe(ids, losses, step)
            step += 1
        strategy.on_task_end(ctx.stream.tasks[ti], ti, step)
    return step


def _g(t):
    return 1.0 + 0.5 * np.sin(3.0 * t)


def _G(t):  # integral of _g from 0
    return t + 0.5 * (1.0 - np.cos(3.0 * t)) / 3.0


# ---- Lemma: closed form between reviews --------------------------------------------------------
def test_closed_form_equals_fine_stepwise_simulation():
    k, m0, T = 0.8, 0.9, 2.0
    exact = m0 * math.exp(-k * _G(T))
    h = 1e-5
    t = np.arange(0.0, T, h)
    # Euler on dm/dt = -k g m, product form (no loop needed)
    euler = m0 * np.exp(np.sum(np.log1p(-k * _g(t) * h)))
    assert abs(euler - exact) < 1e-4
    assert exact == pytest.approx(0.9 * math.exp(-0.8 * (2 + 0.5 * (1 - math.cos(6)) / 3)), rel=1e-12)


def test_riemann_and_euler_errors_are_first_order_and_within_bound():
    k, m0, T = 0.8, 1.0, 2.0
    L, gmax = 1.5, 1.5  # sup |g'| and sup g for g = 1 + 0.5 sin 3t
    exact = m0 * math.exp(-k * _G(T))
    err_r, err_e = [], []
    for h in (0.02, 0.01, 0.005, 0.0025):
        t = np.arange(round(T / h)) * h
        riemann = m0 * math.exp(-k * h * _g(t).sum())
        euler = m0 * math.exp(np.log1p(-k * h * _g(t)).sum())
        er, ee = abs(riemann - exact), abs(euler - exact)
        # Proposition (docs/mssr.md): Riemann <= m0 k (t-t*) h L / 2; Euler adds m0 k^2 gmax^2 (t-t*) h
        assert er <= m0 * k * T * h * L / 2
        assert ee <= m0 * T * h * (k * L / 2 + k**2 * gmax**2)
        err_r.append(er)
        err_e.append(ee)
    for errs in (err_r, err_e):
        ratios = [a / b for a, b in zip(errs, errs[1:])]
        assert all(1.8 < r < 2.2 for r in ratios), ratios


# ---- the O(1) G-based update vs. a per-step sweep ----------------------------------------------
def _ms(n, **kw):
    mem = ReplayMemory(n, "reservoir", 0)
    ms = MemoryStrength(mem, **kw)
    rows = mem.admit(_stream(1, n).samples[0])
    ms.admit(rows, 0)
    return mem, ms


def test_strength_hand_value_and_k_update():
    mem, ms = _ms(3, k0=0.5, k_lr=0.5, loss_ref=1.0, k_min=0.05, k_max=10.0)
    for g in (1.0, 2.0, 3.0):
        ms.advance(g)
    np.testing.assert_allclose(ms.strength(), np.exp(-0.5 * 6.0) * np.ones(3), rtol=1e-14)
    ms.review(np.array([0, 1, 2]), np.array([1.0, 2.0, 0.0]), step=3)
    np.testing.assert_allclose(mem.column("k")[:3], [0.5, 0.5 * math.exp(0.5 * math.tanh(1.0)),
                                                     0.5 * math.exp(-0.5 * math.tanh(1.0))], rtol=1e-14)
    np.testing.assert_array_equal(ms.strength(), [1.0, 1.0, 1.0])
    ms.advance(2.0)
    np.testing.assert_allclose(ms.strength(), np.exp(-2.0 * mem.column("k")[:3]), rtol=1e-14)
    # clipping
    for _ in range(50):
        ms.review(np.array([0, 1]), np.array([100.0, 0.0]), step=4)
    np.testing.assert_allclose(mem.column("k")[:2], [10.0, 0.05])


def test_G_update_equals_per_step_sweep():
    n, steps = 50, 200
    mem, ms = _ms(n, k0=1.0, k_lr=0.3, loss_ref=1.0)
    rng = np.random.default_rng(7)
    sweep = np.ones(n)
    k = np.full(n, 1.0)
    for step in range(1, steps):
        g = rng.uniform(0.0, 2.0) * 0.05
        ms.advance(g)
        sweep *= np.exp(-k * g)  # O(N) per step: what the G bookkeeping avoids
        slots = rng.choice(n, size=5, replace=False)
        losses = rng.uniform(0.0, 3.0, size=5)
        ms.review(slots, losses, step)
        k[slots] = np.clip(k[slots] * np.exp(0.3 * np.tanh(losses - 1.0)), 0.05, 10.0)
        sweep[slots] = 1.0
        # row order of the memory equals admission order here (no eviction)
    np.testing.assert_allclose(mem.column("k")[:n], k, rtol=1e-13)
    np.testing.assert_allclose(ms.strength(), sweep, rtol=1e-10, atol=1e-300)
    assert sweep.min() < 0.9  # the comparison covers decayed rows too


# ---- weights and draws -----------------------------------------------------------------------
def test_weights_hand_value():
    mem, ms = _ms(2, floor=0.0, temperature=1.0)
    mem.column("strength")[:2] = [1.0, 1e-300]  # m = 1 and m ~ 0
    e = math.e
    np.testing.assert_allclose(ms.weights(), [1 / (1 + e), e / (1 + e)], rtol=1e-12)
    mem.column("strength")[:2] = [1.0, 0.5]
    ms.temperature, ms.floor = 0.25, 0.2
    soft = np.array([1.0, math.exp(2.0)]) / (1.0 + math.exp(2.0))
    np.testing.assert_allclose(ms.weights(), 0.8 * soft + 0.1, rtol=1e-12)


def test_weights_monotone_sum_to_one_floor_respected():
    n = 500
    mem, ms = _ms(n, floor=0.05, temperature=0.1)
    rng = np.random.default_rng(1)
    mem.column("strength")[:n] = rng.uniform(0.0, 1.0, n)
    mem.column("k")[:n] = rng.uniform(0.1, 3.0, n)
    mem.column("G_at_review")[:n] = rng.uniform(0.0, 1.0, n)
    ms.G = 1.0
    m, w = ms.strength(), ms.weights()
    assert w.sum() == pytest.approx(1.0, abs=1e-12)
    order = np.argsort(m)  # strongest last
    assert np.all(np.diff(w[order]) <= 1e-15)  # weaker memory -> larger weight
    assert w.min() >= 0.05 / n * (1 - 1e-12)
    assert w.max() > 20 * w.min()  # low temperature makes it selective


def test_draw_without_replacement_and_first_draw_follows_weights():
    n = 40
    mem, ms = _ms(n)
    mem.column("strength")[:n] = np.linspace(0.0, 1.0, n)
    rng = np.random.default_rng(0)
    for size in (1, 7, 39, 40, 55):
        s = ms.draw(size, rng)
        assert len(s) == min(size, n) and len(np.unique(s)) == len(s)
        assert s.min() >= 0 and s.max() < n
    # exponential race: the first draw has P(i) = w_i exactly
    mem2, ms2 = _ms(4, floor=0.0, temperature=0.2)
    mem2.column("strength")[:4] = [1.0, 0.7, 0.3, 0.0]
    w = ms2.weights()
    counts = np.bincount([ms2.draw(1, rng)[0] for _ in range(20000)], minlength=4) / 20000
    np.testing.assert_allclose(counts, w, atol=0.015)


# ---- scheduler -------------------------------------------------------------------------------
def test_intervals_expand_hand_values():
    s = MSSRScheduler(gap0=1, growth=1.5)
    # gaps round(1, 1.5, 2.25, 3.375, 5.06, 7.59) = 1, 2, 2, 3, 5, 8
    np.testing.assert_array_equal(s.event_offsets(22), [0, 1, 3, 5, 8, 13, 21])
    np.testing.assert_array_equal(MSSRScheduler(gap0=2, growth=2.0).event_offsets(31), [0, 2, 6, 14, 30])
    for g0, gr, n in ((1, 1.05, 5000), (3, 1.3, 777), (1, 3.0, 100000)):
        off = MSSRScheduler(gap0=g0, growth=gr).event_offsets(n)
        gaps = np.diff(off)
        assert off[0] == 0 and off[-1] < n and np.all(gaps >= 1) and np.all(np.diff(gaps) >= 0)
        assert gaps[-1] > gaps[0]
        nxt = off[-1] + max(1, math.floor(g0 * gr ** len(gaps) + 0.5))
        assert nxt >= n  # no event was cut off early


@pytest.mark.parametrize("decay", ["exp", "inverse"])
def test_ratio_decays_to_floor(decay):
    s = MSSRScheduler(ratio0=1.2, ratio_floor=0.1, decay=decay, half_life=20.0)
    r = s.ratio(np.arange(0, 5000))
    assert r[0] == pytest.approx(1.2)
    assert r[20] == pytest.approx(0.6)  # one half-life halves both forms
    assert s.ratio(60.0) == pytest.approx(1.2 / 8 if decay == "exp" else 0.3)
    assert np.all(np.diff(r) <= 0) and r.min() == pytest.approx(0.1) and r[-1] == pytest.approx(0.1)


@pytest.mark.parametrize("n_steps", [7, 50, 333, 2000])
@pytest.mark.parametrize("budget", [1, 13, 100, 1000, 12345])
def test_budget_honoured(n_steps, budget):
    s = MSSRScheduler(gap0=1, growth=1.5, ratio0=1.0, ratio_floor=0.1, half_life=50.0)
    off, unscaled, vol = s.plan(n_steps, 16, budget)
    assert vol.sum() == budget  # exact, hence within 5%
    assert np.all(np.diff(vol) <= 1)  # proportional to a non-increasing profile, up to rounding
    cap = 40
    _, _, volc = s.plan(n_steps, 16, budget, cap=cap)
    assert volc.max() <= cap
    assert abs(volc.sum() - min(budget, cap * len(off))) <= 0.05 * budget


def test_unbudgeted_volumes():
    s = MSSRScheduler(gap0=1, growth=2.0, ratio0=1.0, ratio_floor=0.25, decay="exp", half_life=2.0)
    off, _, vol = s.plan(20, 8, None)
    np.testing.assert_array_equal(off, [0, 1, 3, 7, 15])
    # 8 * max(0.25, 2^(-s/2)) = 8, 5.66, 2.83, 2, 2
    np.testing.assert_array_equal(vol, [8, 6, 3, 2, 2])


# ---- the strategy ------------------------------------------------------------------------------
def test_registered():
    strat = MSSR(_ctx())
    assert isinstance(strat, ReplayStrategy) and (strat.schedule_name, strat.sampler_name) == ("mssr", "mssr")


def test_strategy_spends_budget_and_follows_plan():
    steps = (30, 200, 120)
    ctx = _ctx(steps=steps, budget=0.25, size=100)
    strat = MSSR(ctx)
    rec = []
    _run(strat, [0, 1, 2], steps, record=rec)
    starts = np.cumsum((0,) + steps)
    for ti in (1, 2):
        spent = sum(len(r) for st, r in rec if starts[ti] <= st < starts[ti + 1])
        budget = ctx.replay_budget(ti)
        assert budget == round(0.25 * steps[ti] * 8)
        assert abs(spent - budget) <= 0.05 * budget
    assert sum(len(r) for st, r in rec if st < starts[1]) == 0  # task 0: empty memory
    d = strat.describe_schedule()
    assert d["task_index"] == 2 and d["event_steps"][0] == starts[2] and d["planned_total"] == ctx.replay_budget(2)
    ev = [st for st, r in rec if r and st >= starts[2]]
    assert ev == d["event_steps"][: len(ev)]
    for st, r in rec:  # distinct samples within one replay batch, from earlier tasks only
        assert len(set(r)) == len(r)
        assert all(sid // 1000 < np.searchsorted(starts, st, side="right") - 1 for sid in r)


def test_observe_loss_interference_and_reviews():
    ctx = _ctx(steps=(5, 5), size=100, model="legacy")
    strat = MSSR(ctx)
    strat.on_task_start(ctx.stream.tasks[0], 0, 0)
    strat.on_task_end(ctx.stream.tasks[0], 0, 0)
    strat.on_task_start(ctx.stream.tasks[1], 1, 0)
    new = [1000, 1001]
    strat.observe(np.array(new + [-5]), np.array([2.0, 2.0, 9.0]), 0)
    assert strat.strength.G == pytest.approx(1.0)  # first step: g = 1 by construction
    strat.observe(np.array(new + [3, -5]), np.array([1.0, 1.0, 1.0, 9.0]), 1)
    assert strat.strength.G == pytest.approx(1.0 + 1.0 / 1.5)  # ref = mean(2, 1)
    slot = strat.memory.slots_of([3])[0]
    assert strat.memory.column("last_review")[slot] == 1
    assert strat.memory.column("G_at_review")[slot] == pytest.approx(strat.strength.G)
    assert strat.memory.column("k")[slot] == pytest.approx(1.0)  # loss == loss_ref
    others = strat.memory.column("last_review")[: len(strat.memory)]
    assert (others == 1).sum() == 1  # general (negative) and new-task ids are not reviews
    m = strat.strengths()
    assert m[slot] == 1.0 and np.all(np.delete(m, slot) == pytest.approx(math.exp(-(1.0 + 1.0 / 1.5))))


def test_observe_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    ctx = _ctx(steps=(5, 5), interference="constant", model="legacy")
    strat = MSSR(ctx)
    strat.on_task_end(ctx.stream.tasks[0], 0, 0)
    loss = torch.tensor([0.5, 2.0], requires_grad=True) * 1.0
    strat.observe(torch.tensor([1000, 2]), loss, 0)
    assert strat.strength.G == 1.0 and strat.memory.column("last_review")[strat.memory.slots_of([2])[0]] == 0


def test_state_round_trip_reproduces_draws(tmp_path):
    steps = (20, 40, 40)
    a = MSSR(_ctx(steps=steps, budget=200))
    end = _run(a, [0, 1], steps)
    save_state(a.state_dict(), tmp_path)
    b = MSSR(_ctx(steps=steps, budget=200))
    b.load_state_dict(load_state(tmp_path))
    np.testing.assert_array_equal(a.strengths(), b.strengths())
    ra, rb = [], []
    _run(a, [2], steps, start_step=end, obs_seed=5, record=ra)
    _run(b, [2], steps, start_step=end, obs_seed=5, record=rb)
    assert sum(len(r) for _, r in ra) > 0 and ra == rb


def test_same_seed_same_decisions_different_seed_differs():
    steps = (20, 60, 60)
    recs = []
    for seed in (11, 11, 12):
        rec = []
        _run(MSSR(_ctx(steps=steps, seed=seed)), [0, 1, 2], steps, record=rec)
        recs.append(rec)
    assert recs[0] == recs[1]
    assert recs[0] != recs[2]


def test_max_gap_caps_expanding_gaps_and_keeps_budget():
    s = MSSRScheduler(gap0=1, growth=1.2, max_gap=5)
    off, _, vol = s.plan(100, 16, budget=400)
    gaps = np.diff(off)
    assert (np.diff(gaps) >= 0).all() and gaps.max() == 5
    assert off[-1] >= 95  # replay reaches the end of the task
    assert int(vol.sum()) == 400
    uncapped = MSSRScheduler(gap0=1, growth=1.2).event_offsets(100)
    assert np.diff(uncapped).max() > 5 and uncapped[-1] < off[-1]
