"""Replay bookkeeping cost at memory sizes 10^3..10^6, and its share of a tiny-model step.

    python benchmarks/replay_overhead.py [--sizes 1000 1000000] [--strategies mssr uniform ...]

Part 1, per strategy and memory size, through the strategy contract: median and 90th percentile
per call, in ms, of replay_batch on calls that drew samples and of observe (merged batch of new +
replayed + 4 general ids), at the same replay budget for every strategy.
Part 2, the core operations at 64 samples: one 64-sample draw (MSSR: weights + weighted draw
without replacement; uniform: numpy choice without replacement) and one 64-sample observe.
Part 3, the bundled tiny model's training step (batch 16 + 4 replayed, 1 thread) and MSSR's
per-step bookkeeping as a share of it.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from forgetless.config import Config
from forgetless.data.task import Sample, Task, TaskStream
from forgetless.replay import REGISTRY, StrategyContext, WorkCounters
from forgetless.replay.compose import available

available()  # imports every strategy module, filling REGISTRY


def make_stream(n_old: int, n_new: int) -> TaskStream:
    ids = np.arange(8, dtype=np.int64)  # one shared array: the benchmark is about bookkeeping
    tasks = [Task(name=f"t{t}", kind="generation", train=[], test=[]) for t in range(2)]
    old = [Sample(i, 0, ids, ids) for i in range(n_old)]
    new = [Sample(n_old + i, 1, ids, ids) for i in range(n_new)]
    return TaskStream(tasks=tasks, samples=[old, new])


def bench(name: str, size: int, steps: int, batch: int, replay: int) -> dict:
    cfg = Config()
    cfg.replay.memory.size = size
    cfg.replay.budget = float(replay * steps)  # the same replay volume for every strategy
    stream = make_stream(size, batch)
    ctx = StrategyContext(config=cfg, stream=stream, seed=0, counters=WorkCounters(),
                          steps_per_task=[steps, steps], batch_size=batch)
    ctx.evaluate = lambda j, examples: 1.0  # accuracy_triggered: a probe that never drops
    ctx.sample_losses = lambda samples: np.ones(len(samples))
    strat = REGISTRY[name](ctx)
    strat.on_task_start(stream.tasks[0], 0, 0)
    strat.on_task_end(stream.tasks[0], 0, steps)
    strat.on_task_start(stream.tasks[1], 1, steps)
    rng = np.random.default_rng(0)
    new_ids = [s.sample_id for s in stream.samples[1]]
    t_draw, t_obs, drawn = [], [], 0
    for step in range(steps, 2 * steps):
        a = time.perf_counter()
        rb = strat.replay_batch(step, batch)
        b = time.perf_counter()
        rep = [s.sample_id for s in rb.samples] if rb is not None else []
        if rep:
            t_draw.append(b - a)
            drawn += len(rep)
        ids = np.array(new_ids + rep + [-1, -2, -3, -4], dtype=np.int64)
        losses = rng.uniform(0.2, 3.0, len(ids))
        a = time.perf_counter()
        strat.observe(ids, losses, step)
        t_obs.append(time.perf_counter() - a)

    def q(x, p):
        return 1e3 * float(np.percentile(x, p)) if x else float("nan")

    return {"strategy": name, "N": size, "events": len(t_draw), "replayed": drawn,
            "draw_med_ms": q(t_draw, 50), "draw_p90_ms": q(t_draw, 90),
            "observe_med_ms": q(t_obs, 50), "observe_p90_ms": q(t_obs, 90)}


def core_ops(size: int, n: int = 64, repeats: int = 20) -> dict:
    """One n-sample draw and one n-sample observe, MSSR vs uniform, at memory size ``size``."""
    cfg = Config()
    cfg.replay.memory.size = size
    stream = make_stream(size, n)
    ctx = StrategyContext(config=cfg, stream=stream, seed=0, counters=WorkCounters(),
                          steps_per_task=[100, 100], batch_size=16)
    m = REGISTRY["mssr"](ctx)
    m.on_task_end(stream.tasks[0], 0, 0)
    rng = np.random.default_rng(1)
    m.sampler.advance(1.0)
    draw, obs, uni = [], [], []
    for _ in range(repeats):
        a = time.perf_counter()
        m.sampler.draw(n, rng)
        draw.append(time.perf_counter() - a)
        ids = rng.choice(size, n, replace=False)
        a = time.perf_counter()
        m.observe(ids, rng.uniform(0.2, 3.0, n), 1)
        obs.append(time.perf_counter() - a)
        a = time.perf_counter()
        rng.choice(size, n, replace=False)
        uni.append(time.perf_counter() - a)
    med = lambda x: 1e3 * float(np.median(x))  # noqa: E731
    return {"N": size, "mssr_draw64_ms": med(draw), "mssr_observe64_ms": med(obs), "uniform_draw64_ms": med(uni)}


def tiny_step_ms(steps: int = 20) -> float:
    """Median training step of the bundled tiny model (LoRA, batch 16 + 4 replayed, 1 thread)."""
    import torch

    from forgetless.config import ModelConfig
    from forgetless.model import load_model

    torch.set_num_threads(1)
    model, _ = load_model(ModelConfig(), device="cpu")
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.randint(2, 4000, (20, 16))
    times = []
    for _ in range(steps):
        a = time.perf_counter()
        model(input_ids=x, labels=x).loss.backward()
        opt.step()
        opt.zero_grad()
        times.append(time.perf_counter() - a)
    return 1e3 * float(np.median(times[3:]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000, 1_000_000])
    ap.add_argument("--strategies", nargs="+",
                    default=["mssr", "uniform", "fixed", "loss_triggered", "accuracy_triggered"])
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--replay", type=int, default=4, help="replay samples per step on average (budget)")
    a = ap.parse_args()
    cols = ["strategy", "N", "events", "replayed", "draw_med_ms", "draw_p90_ms", "observe_med_ms", "observe_p90_ms"]
    print(" ".join(f"{c:>14}" for c in cols))
    for size in a.sizes:
        for name in a.strategies:
            r = bench(name, size, a.steps, a.batch, a.replay)
            print(" ".join(f"{r[c]:>14.3f}" if isinstance(r[c], float) else f"{r[c]:>14}" for c in cols))
    print()
    core = [core_ops(size) for size in a.sizes]
    cols = ["N", "mssr_draw64_ms", "mssr_observe64_ms", "uniform_draw64_ms"]
    print(" ".join(f"{c:>18}" for c in cols))
    for r in core:
        print(" ".join(f"{r[c]:>18.3f}" if isinstance(r[c], float) else f"{r[c]:>18}" for c in cols))
    print()
    step = tiny_step_ms()
    print(f"tiny-model training step (batch 16 + 4 replayed): {step:.1f} ms")
    for r in core:  # per step MSSR draws at most once and observes once
        share = (r["mssr_draw64_ms"] + r["mssr_observe64_ms"]) / step
        print(f"  MSSR draw + observe at N={r['N']:>9,}: {share:6.1%} of a step")


if __name__ == "__main__":
    main()
