"""How much should I replay? The smallest replay budget that keeps forgetting under a target.

For each strategy, a binary search over a fixed geometric grid of budgets between ``lo`` and
``hi``: every grid point tried is an ordinary bench (one run per seed) under
``<out>/<strategy>/<knob>=<value>/``, so a finished run is reused by the next search over the same
config, whatever targets it asks about. The search assumes the measured quantity falls as the
budget grows; it stops when the budget that meets the target and the one below it that does not
are neighbours on the grid (``resolution``: their ratio). Everything it measured is reported, so
a non-monotone curve shows.

The budget is ``replay.budget`` (a fraction of the new-task samples replayed from the memory) for
strategies that replay earlier tasks; for GeRe alone it is the share of general samples per batch
(``replay.gere.ratio`` with ``mixing: shuffle``): both are shares of the new data.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from forgetless import bench, experiment
from forgetless.config import Config, from_dict
from forgetless.errors import InputError
from forgetless.state import atomic_write_text

METRICS = {"forgetting": "forgetting (mean drop from each task's best score)",
           "gap": "AP gap to joint training (joint AP - AP, paired by seed)"}


@dataclass
class Level:
    """One budget tried for one strategy: its runs' scores and whether it meets the target."""

    budget: float
    values: list[float]  # the measured quantity per seed
    seeds: list[int]
    ap: list[float]
    replay_samples: float  # means over seeds
    replay_tokens: float
    new_task_tokens: float
    meets: bool
    new_runs: int = 0
    reused_runs: int = 0

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def std(self) -> float:
        return float(np.std(self.values))


@dataclass
class Answer:
    strategy: str
    knob: str
    answer: float | None  # the smallest grid budget that meets the target; 0: no replay needed
    below: float | None  # the next lower budget tried (it does not meet the target)
    reason: str
    levels: list[Level] = field(default_factory=list)

    def level(self, budget: float | None) -> Level | None:
        return next((lv for lv in self.levels if lv.budget == budget), None)


def budget_grid(lo: float, hi: float, resolution: float) -> list[float]:
    """Budgets from ``lo`` to ``hi`` whose neighbours differ by at most ``resolution`` times,
    rounded to 3 significant digits (so run directories have short, stable names)."""
    if not 0 < lo < hi:
        raise InputError(f"need 0 < --min < --max, got {lo:g} and {hi:g}", field="--min/--max")
    if not resolution > 1:
        raise InputError(f"--resolution must be above 1 (the ratio of neighbouring budgets), got {resolution:g}",
                         field="--resolution")
    n = max(2, math.ceil(math.log(hi / lo) / math.log(resolution)) + 1)
    if n > 64:
        raise InputError(f"--min {lo:g} to --max {hi:g} at --resolution {resolution:g} needs {n} grid points; "
                         "at most 64", field="--resolution")
    grid = sorted({float(f"{b:.3g}") for b in np.geomspace(lo, hi, n)})
    return grid


def knob_for(strategy: str) -> str:
    """The config field that sets a strategy's replay volume as a share of the new data."""
    from forgetless.replay.strategy import PRESETS

    parts = [p.strip() for p in strategy.split("+")]
    if any(p in PRESETS for p in parts):
        return "replay.budget"
    if "gere" in parts:
        return "replay.gere.ratio"
    raise InputError(f"strategy {strategy!r} replays nothing, so it has no budget to search; name strategies "
                     f"that replay ({', '.join(sorted(PRESETS))}, gere)", field="--strategies")


def _with_knob(cfg: Config, strategy: str, knob: str, value: float | None) -> Config:
    raw = cfg.model_dump(mode="json")
    raw["replay"]["strategy"] = strategy
    if knob == "replay.budget":
        raw["replay"]["budget"] = value
    elif knob == "replay.gere.ratio":
        raw["replay"]["gere"].update(ratio=value, mixing="shuffle")
    return from_dict(raw, f"budget search {strategy} {knob}={value}")


def _level_dir(out: Path, strategy: str, knob: str | None, value: float | None) -> Path:
    return out / strategy.replace("+", "_plus_") / ("default" if knob is None else f"{knob.split('.')[-1]}={value:g}")


class Search:
    """Runs (or reuses) the benches a search needs; counts what it ran and what it reused."""

    def __init__(self, cfg: Config, seeds: list[int], out: Path, jobs: int = 1, progress: bool = False,
                 on_level: Callable[[str, float | None, int, int], None] | None = None):
        self.cfg, self.seeds, self.out, self.jobs, self.progress = cfg, seeds, Path(out), jobs, progress
        self.on_level = on_level
        self.new_runs = self.reused_runs = 0

    def runs(self, strategy: str, knob: str | None, value: float | None) -> tuple[list[dict], list[dict], int, int]:
        """(summaries, results, new, reused) of one strategy at one budget, one run per seed."""
        cfg = self.cfg if knob is None else _with_knob(self.cfg, strategy, knob, value)
        out = _level_dir(self.out, strategy, knob, value)
        cells = bench.grid_configs(cfg, [strategy], self.seeds, 1)
        reused = sum(experiment.is_finished(experiment.run_dir_for(c, out / "runs")) for _, c in cells)
        new = len(cells) - reused
        if self.on_level is not None:
            self.on_level(strategy, value, new, reused)
        payload = bench.bench(cfg, [strategy], self.seeds, out=out, jobs=self.jobs, progress=self.progress)
        self.new_runs += new
        self.reused_runs += reused
        return payload["runs"], payload["results"], new, reused


def _measure(search: Search, strategy: str, knob: str, value: float, metric: str, target: float,
             joint_ap: dict[int, float] | None) -> Level:
    runs, results, new, reused = search.runs(strategy, knob, value)
    by_seed = {r["seed"]: r for r in runs}
    seeds = sorted(by_seed)
    if metric == "forgetting":
        values = [by_seed[s]["forgetting"] for s in seeds]
    else:
        values = [joint_ap[s] - by_seed[s]["ap"] for s in seeds]
    if any(v is None for v in values):
        raise InputError("forgetting is undefined for a stream of one task; give two or more tasks", field="data.tasks")
    mean = float(np.mean(values))
    return Level(budget=value, values=[float(v) for v in values], seeds=seeds, ap=[by_seed[s]["ap"] for s in seeds],
                 replay_samples=float(np.mean([r["replay_samples"] for r in runs])),
                 replay_tokens=float(np.mean([r["replay_tokens"] for r in runs])),
                 new_task_tokens=float(np.mean([res["counters"]["new_task_tokens"] for res in results])),
                 meets=mean <= target, new_runs=new, reused_runs=reused)


def find_budget(search: Search, strategy: str, grid: list[float], metric: str, target: float,
                joint_ap: dict[int, float] | None, none_level: Level) -> Answer:
    """Binary search on ``grid`` for the smallest budget whose mean measured value is <= target."""
    knob = knob_for(strategy)
    ans = Answer(strategy, knob, None, None, "", levels=[none_level])
    if none_level.meets:
        ans.answer, ans.reason = 0.0, f"no replay already meets the target ({none_level.mean:.3f} <= {target:g})"
        return ans
    tried: dict[int, Level] = {}

    def at(i: int) -> Level:
        if i not in tried:
            tried[i] = _measure(search, strategy, knob, grid[i], metric, target, joint_ap)
            ans.levels.append(tried[i])
        return tried[i]

    if not at(len(grid) - 1).meets:
        ans.below = grid[-1]
        ans.reason = (f"not reached: even budget {grid[-1]:g} gives {tried[len(grid) - 1].mean:.3f} > {target:g}; "
                      "raise --max")
        return ans
    if at(0).meets:
        ans.answer, ans.below = grid[0], 0.0
        ans.reason = f"the smallest budget tried ({grid[0]:g}) meets it and no replay does not; lower --min to narrow"
        return ans
    lo, hi = 0, len(grid) - 1  # grid[lo] fails, grid[hi] meets
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if at(mid).meets:
            hi = mid
        else:
            lo = mid
    ans.answer, ans.below = grid[hi], grid[lo]
    ans.reason = f"{grid[hi]:g} meets the target and the next budget below it on the grid, {grid[lo]:g}, does not"
    ans.levels.sort(key=lambda lv: lv.budget)
    return ans


def run_search(cfg: Config, strategies: list[str], seeds: list[int], out: Path, *, metric: str, target: float,
               lo: float = 0.01, hi: float = 0.5, resolution: float = 1.5, jobs: int = 1, progress: bool = False,
               on_level: Callable[[str, float | None, int, int], None] | None = None) -> dict:
    """Search each strategy's smallest sufficient budget; writes budget.json, budget.md and the plot."""
    if metric not in METRICS:
        raise InputError(f"unknown target {metric!r}; one of {sorted(METRICS)}", field="--target")
    if not target >= 0:
        raise InputError(f"the target must be 0 or more, got {target:g}", field="--max-forgetting/--max-gap")
    if not seeds:
        raise InputError("need at least one seed", field="--seeds")
    strategies = list(dict.fromkeys(s.replace(" ", "") for s in strategies))
    for s in strategies:
        knob_for(s)
    grid = budget_grid(lo, hi, resolution)
    search = Search(cfg, seeds, out, jobs, progress, on_level)
    joint_ap = None
    if metric == "gap":
        runs, *_ = search.runs("joint", None, None)
        joint_ap = {r["seed"]: r["ap"] for r in runs}
    runs, results, new, reused = search.runs("none", None, None)
    by_seed = {r["seed"]: r for r in runs}
    values = [by_seed[s]["forgetting"] if metric == "forgetting" else joint_ap[s] - by_seed[s]["ap"] for s in sorted(by_seed)]
    if any(v is None for v in values):
        raise InputError("forgetting is undefined for a stream of one task; give two or more tasks", field="data.tasks")
    none_level = Level(budget=0.0, values=[float(v) for v in values], seeds=sorted(by_seed),
                       ap=[by_seed[s]["ap"] for s in sorted(by_seed)], replay_samples=0.0, replay_tokens=0.0,
                       new_task_tokens=float(np.mean([r["counters"]["new_task_tokens"] for r in results])),
                       meets=float(np.mean(values)) <= target, new_runs=new, reused_runs=reused)
    answers = [find_budget(search, s, grid, metric, target, joint_ap, none_level) for s in strategies]
    payload = {"metric": metric, "target": target, "grid": grid, "seeds": seeds, "config": cfg.model_dump(mode="json"),
               "joint_ap": joint_ap, "new_runs": search.new_runs, "reused_runs": search.reused_runs,
               "answers": [asdict(a) for a in answers]}
    out = Path(out)
    atomic_write_text(out / "budget.json", json.dumps(payload, indent=1))
    write_plot(out / "plots" / "budget_curve.png", answers, metric, target)
    atomic_write_text(out / "budget.md", budget_md(payload, answers, out))
    return payload | {"_answers": answers}


def answer_row(a: Answer) -> dict:
    """The figures a user reads off: budget, samples, tokens and share of the new data."""
    lv = a.level(a.answer)
    row = {"strategy": a.strategy, "knob": a.knob, "budget": a.answer, "below": a.below, "reason": a.reason}
    if lv is not None:
        row.update(value=lv.mean, value_std=lv.std, replay_samples=lv.replay_samples, replay_tokens=lv.replay_tokens,
                   share_tokens=lv.replay_tokens / lv.new_task_tokens if lv.new_task_tokens else None)
    below = a.level(a.below)
    row["below_value"] = below.mean if below is not None else None
    return row


def budget_md(payload: dict, answers: list[Answer], out: Path) -> str:
    metric, target = payload["metric"], payload["target"]
    lines = [f"# How much replay? `{out.name}`", "",
             f"Target: {METRICS[metric]} at most {target:g}, mean over seeds {payload['seeds']}. "
             f"Budget grid: {', '.join(f'{b:g}' for b in payload['grid'])}. Runs: {payload['new_runs']} new, "
             f"{payload['reused_runs']} reused.", "",
             "| strategy | budget found | knob | replay samples | replay tokens | share of new tokens | "
             f"{metric} there | next lower budget tried ({metric}) |", "|---|---|---|---|---|---|---|---|"]
    for a in answers:
        r = answer_row(a)
        if r["budget"] is None:
            lines.append(f"| {a.strategy} | not reached | {a.knob} | – | – | – | – | {r['reason']} |")
            continue
        share = f"{r['share_tokens']:.1%}" if r.get("share_tokens") is not None else "–"
        below = f"{r['below']:g} ({r['below_value']:.3f})" if r["below_value"] is not None else "–"
        lines.append(f"| {a.strategy} | {r['budget']:g} | {a.knob} | {r['replay_samples']:,.0f} | "
                     f"{r['replay_tokens']:,.0f} | {share} | {r['value']:.3f} ± {r['value_std']:.3f} | {below} |")
    lines += ["", "Every budget tried (value per seed; ✓ meets the target):", "",
              "| strategy | budget | per seed | mean ± std | AP | replay samples | meets | runs new/reused |",
              "|---|---|---|---|---|---|---|---|"]
    for a in answers:
        for lv in sorted(a.levels, key=lambda x: x.budget):
            name = "none (no replay)" if lv.budget == 0 else a.strategy
            lines.append(f"| {name} | {lv.budget:g} | {', '.join(f'{v:.3f}' for v in lv.values)} | "
                         f"{lv.mean:.3f} ± {lv.std:.3f} | {np.mean(lv.ap):.3f} | {lv.replay_samples:,.0f} | "
                         f"{'✓' if lv.meets else '✗'} | {lv.new_runs}/{lv.reused_runs} |")
    lines += ["", "![measured value against budget](plots/budget_curve.png)", ""]
    return "\n".join(lines)


def write_plot(path: Path, answers: list[Answer], metric: str, target: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from forgetless.report import save_png, strategy_style

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, a in enumerate(answers):
        color, marker = strategy_style(i)
        pts = sorted((lv for lv in a.levels if lv.budget > 0), key=lambda lv: lv.budget)
        if not pts:
            continue
        ax.errorbar([lv.budget for lv in pts], [lv.mean for lv in pts], yerr=[lv.std for lv in pts],
                    color=color, marker=marker, capsize=3, label=f"{a.strategy} ({a.knob.split('.')[-1]})")
        chosen = a.level(a.answer)
        if chosen is not None and a.answer:
            ax.scatter([chosen.budget], [chosen.mean], s=220, facecolors="none", edgecolors=color, linewidths=2,
                       zorder=5)
            ax.annotate(f"{chosen.budget:g}", (chosen.budget, chosen.mean), textcoords="offset points",
                        xytext=(6, 8), color=color, fontsize=8)
    none = next((lv for a in answers for lv in a.levels if lv.budget == 0), None)
    if none is not None:
        ax.axhline(none.mean, color="grey", linestyle=":", label=f"no replay ({none.mean:.3f})")
    ax.axhline(target, color="black", linestyle="--", label=f"target {target:g}")
    ax.set_xscale("log")
    ax.set_xlabel("replay budget (share of the new data)")
    ax.set_ylabel(METRICS[metric])
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("smallest budget that meets the target (circled)")
    save_png(fig, path)
