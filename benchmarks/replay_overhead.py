"""Replay bookkeeping cost per call at large memory sizes (no model): replay_batch and observe.

    python benchmarks/replay_overhead.py [--sizes 10000 1000000] [--strategies mssr uniform]

Prints the median and 90th percentile per call, in milliseconds, for calls that drew samples
(replay_batch) and for every step (observe with a merged batch of new + replayed + 4 general ids).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from forgetless.config import Config
from forgetless.data.task import Sample, Task, TaskStream
from forgetless.replay import REGISTRY, StrategyContext, WorkCounters
import forgetless.replay.baselines  # noqa: F401  (registers uniform)
import forgetless.replay.mssr  # noqa: F401  (registers mssr)


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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--strategies", nargs="+", default=["mssr", "uniform"])
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


if __name__ == "__main__":
    main()
