"""Many runs (strategies x seeds x task orders) on one stream -> a comparison table and plots.

Each run is an ordinary run directory under ``<bench>/runs/``; finished runs are skipped, so a
killed bench resumes where it stopped. Task-replay strategies draw from the same replay budget,
so none replays more than another; what a strategy leaves unspent shows as spent/budget.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from forgetless import experiment, metrics, rundir
from forgetless.config import Config
from forgetless.state import atomic_write_text

# columns of the comparison: (key in a run summary, header, digits)
COLUMNS = [
    ("ap", "AP", 3), ("learning_accuracy", "LA", 3), ("bwt", "BWT", 3), ("fwt", "FWT", 3), ("forgetting", "forget", 3),
    ("ppl_end", "gen ppl", 1), ("probe_end", "probe", 3), ("hm_ga_ap", "HM(GA,AP)", 3),
    ("replay_samples", "replay smp", 0), ("replay_tokens", "replay tok", 0), ("spent_share", "spent/budget", 2),
    ("extra_forward_tokens", "extra tok", 0), ("eval_tokens", "eval tok", 0),
    ("wall_s", "time s", 1), ("overhead", "× unif", 2),
]
OPTIONAL = {"probe_end", "learning_accuracy", "spent_share"}  # shown only when some run has it (probe: data.general_probe)
MAX_RUNS = 10_000  # runs in one grid: a typo such as --seeds 10000000 is refused before anything is built


def budget_str(budget: float) -> str:
    """Short (``%g``) where that is exact, else the shortest exact form: 0.1 and 0.1000001 never
    share a run directory or a table row."""
    s = f"{budget:g}"
    return s if float(s) == budget else repr(float(budget))


def run_name(strategy: str, seed: int, order: int, budget: float | None = None) -> str:
    """A budget sweep (``budgets``) adds the budget; a single-budget bench keeps the short name."""
    return f"{strategy}-seed{seed}-order{order}" + ("" if budget is None else f"-budget{budget_str(budget)}")


def task_order(n_tasks: int, order_index: int) -> list[int]:
    """Order 0 is the listed order; order i > 0 a fixed random permutation (same for every strategy)
    other than the listed order (a draw of the identity, e.g. 1 in 6 for 3 tasks, is drawn again:
    it made "order 1" of the 3-task demo a copy of order 0)."""
    if order_index == 0 or n_tasks < 2:
        return list(range(n_tasks))
    rng = np.random.default_rng([1234, order_index])
    while True:
        p = [int(i) for i in rng.permutation(n_tasks)]
        if p != list(range(n_tasks)):
            return p


def spent_share(result: dict) -> float | None:
    """Task replay spent / replay budget over the tasks that had a budget (None: no budget applied)."""
    from forgetless.report import replay_volume

    rows = [v for v in result.get("replay_volume") or replay_volume(result) if v["budget"]]
    return sum(v["spent"] for v in rows) / sum(v["budget"] for v in rows) if rows else None


def summarize(result: dict) -> dict:
    m, c = result["metrics"], result["counters"]
    ppl = result["general_ppl"]
    ga = metrics.general_ability(ppl[0], ppl[-1]) if ppl and ppl[0] and ppl[-1] else None
    probe = result.get("general_probe_acc") or None
    return {
        "strategy": result["strategy"], "seed": result["seed"], "tasks": result["tasks"],
        "ap": m.get("ap"), "learning_accuracy": m.get("learning_accuracy"), "bwt": m.get("bwt"), "fwt": m.get("fwt"), "forgetting": m.get("forgetting"),
        "ppl_start": ppl[0], "ppl_end": ppl[-1], "general_ability": ga,
        "ppl_stages": ppl, "probe_stages": probe, "probe_end": probe[-1] if probe else None,
        "task_start": result.get("baseline_acc"), "task_end": result["acc"][-1] if result.get("acc") else None,
        "task_own": [row[j] for j, row in enumerate(result["acc"])] if result.get("acc") else None,
        "hm_ga_ap": metrics.harmonic_mean(ga, m["ap"]) if ga is not None else None,
        "replay_tokens": c["replay_tokens"], "replay_samples": c["replay_samples"], "spent_share": spent_share(result),
        # GeRe's reference pass counts in every run that uses it (cached or not), so order does not matter
        "extra_forward_tokens": c["extra_forward_tokens"] + c.get("reference_tokens", 0),
        "eval_tokens": c["eval_tokens"],
        "replay_quarters": _quarters(result),
        "calibration": _calibration(result),
        "s_per_step": c["time_train_s"] / c["optimizer_steps"] if c.get("optimizer_steps") else None,
        "wall_s": c["time_train_s"] + c["time_replay_bookkeeping_s"] + c["time_eval_s"]
        + c.get("time_reference_s", 0.0),
    }


def _quarters(result: dict) -> list[int]:
    """Replayed samples in each quarter of a task's steps, summed over the tasks."""
    from forgetless.report import replay_volume

    vol = result.get("replay_volume") or replay_volume(result)  # as spent_share: the run's own when it has one
    return [int(sum(v["samples"][q] for v in vol)) for q in range(4)]


def _calibration(result: dict) -> dict | None:
    """The memory model's calibration figures of an MSSR-like run (report.calibration_md)."""
    from forgetless.report import _replay_part

    cal, conc = _replay_part(result, "calibration"), _replay_part(result, "concentration")
    if not (cal and cal.get("probes")):
        return None
    return {"spearman": cal["spearman_mean"], "beats": cal["model_beats_recency"], "paired": cal["paired_probes"],
            "top10": float(np.mean([e["top10_mass"] for e in conc])) if conc else None}


def _mean_std(values: list) -> tuple[float | None, float | None]:
    v = [x for x in values if x is not None]
    if not v:
        return None, None
    return float(np.mean(v)), float(np.std(v))


def aggregate(runs: list[dict], strategies: list[str], budgets: list[float | None] | None = None) -> list[dict]:
    """Mean and std per strategy (and budget), plus wall-clock relative to uniform's at the same
    budget when uniform ran."""
    rows = []
    for b in budgets or [None]:
        group = []
        for s in strategies:
            mine = [r for r in runs if r["strategy"] == s and (budgets is None or r.get("budget") == b)]
            row = {"strategy": s, "n_runs": len(mine)}
            if budgets is not None:
                row["budget"] = b
            for key, _, _ in COLUMNS:
                if key != "overhead":
                    row[key], row[key + "_std"] = _mean_std([r[key] for r in mine])
            group.append(row)
        base = next((r for r in group if r["strategy"] == "uniform"), None)
        for r in group:
            r["overhead"] = r["wall_s"] / base["wall_s"] if base and base["wall_s"] and r["wall_s"] is not None else None
            r["overhead_std"] = None
        rows += group
    return rows


def paired(runs: list[dict], strategy: str, reference: str, key: str = "ap") -> list[dict]:
    """Per-(budget, order) paired differences ``strategy - reference`` over the seeds both ran."""
    out = []
    cells = sorted({(r.get("budget"), r["order"]) for r in runs if r["strategy"] == strategy},
                   key=lambda c: (c[0] is None, c[0] or 0, c[1]))
    for b, o in cells:
        mine = {r["seed"]: r[key] for r in runs if r["strategy"] == strategy and r.get("budget") == b and r["order"] == o}
        ref = {r["seed"]: r[key] for r in runs if r["strategy"] == reference and r.get("budget") == b and r["order"] == o}
        seeds = sorted(set(mine) & set(ref))
        if not seeds:
            continue
        d = [mine[x] - ref[x] for x in seeds]
        out.append({"budget": b, "order": o, "seeds": seeds, "diffs": d, "mean": float(np.mean(d)),
                    "wins": sum(x > 1e-9 for x in d)})  # an equal score in float rounding is no win
    return out


def paired_md(runs: list[dict], strategies: list[str], references=("uniform", "fixed")) -> str:
    """Markdown table of paired AP differences against each reference that ran."""
    lines = ["| strategy | vs | budget | order | AP diff per seed | mean | wins |", "|---|---|---|---|---|---|---|"]
    for ref in references:
        if not any(r["strategy"] == ref for r in runs):
            continue
        for s in strategies:
            if s == ref:
                continue
            for p in paired(runs, s, ref):
                per = ", ".join(f"{d:+.3f}" for d in p["diffs"])
                lines.append(f"| {s} | {ref} | {p['budget'] if p['budget'] is not None else '-'} | {p['order']} | "
                             f"{per} | {p['mean']:+.3f} | {p['wins']}/{len(p['diffs'])} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def noise_floor(runs: list[dict], key: str = "ap") -> dict | None:
    """How large a difference between two single-seed runs is noise on this stream.

    ``sigma`` is the std over seeds of ``key``, pooled over every (strategy, order, budget) that ran
    two or more seeds; a difference of two single-seed scores has std ``sigma * sqrt(2)``, so one
    under ``2 * sqrt(2) * sigma`` (``noise``) is within the 95% band of seed noise."""
    groups: dict[tuple, list[float]] = {}
    for r in runs:
        if r.get(key) is not None:
            groups.setdefault((r["strategy"], r.get("order", 0), r.get("budget")), []).append(r[key])
    groups = {k: v for k, v in groups.items() if len(v) >= 2}
    if not groups:
        return None
    ss = sum(float(np.var(v, ddof=1)) * (len(v) - 1) for v in groups.values())
    dof = sum(len(v) - 1 for v in groups.values())
    sigma = float(np.sqrt(ss / dof))
    return {"key": key, "sigma": sigma, "noise": float(2 * np.sqrt(2) * sigma), "groups": len(groups),
            "seeds": max(len(v) for v in groups.values())}


def reading(rows: list[dict], noise: float | None = None, key: str = "ap") -> str:
    """A plain reading of a table: who leads, and which gaps are inside the noise."""
    scored = sorted((r for r in rows if r.get(key) is not None and r["strategy"] != "joint"),
                    key=lambda r: -r[key])
    if not scored:
        return ""

    def names(rs):
        return ", ".join(f"{r['strategy']} {r[key]:.3f}" for r in rs)

    label = key.upper()
    if noise is None:
        return f"Highest {label} (joint training aside): {names(scored[:3])}."
    tied = [r for r in scored if scored[0][key] - r[key] < noise]
    rest = scored[len(tied):]
    text = f"Leading on {label} (joint training aside): {names(tied)}"
    text += " (within noise of each other)." if len(tied) > 1 else "."
    if rest:
        text += f" Next: {names(rest[:3])}."
    return text + f" A difference under {noise:.3f} {label} between two single-seed runs is noise on this stream."


def _pm(values: list, digits: int) -> str:
    m, s = _mean_std(values)
    if m is None:
        return "–"
    return f"{m:,.{digits}f}" if len(values) < 2 else f"{m:,.{digits}f} ± {s:,.{digits}f}"


def per_stage_md(runs: list[dict], strategies: list[str], key: str, digits: int) -> str:
    """Mean ± std over seeds of a per-stage list (``ppl_stages``, ``probe_stages``), stage 0 = start."""
    mine = {s: [r[key] for r in runs if r["strategy"] == s and r.get(key)] for s in strategies}
    n = max((len(v) for vs in mine.values() for v in vs), default=0)
    if not n:
        return ""
    out = ["| strategy | " + " | ".join(f"stage {k}" for k in range(n)) + " |", "|---" * (n + 1) + "|"]
    for s, vs in mine.items():
        if vs:
            out.append(f"| {s} | " + " | ".join(_pm([v[k] for v in vs if len(v) > k and v[k] is not None], digits)
                                               for k in range(n)) + " |")
    return "\n".join(out)


def per_task_md(runs: list[dict], strategies: list[str], key: str = "task_end") -> str:
    """Each task's score at the start and at ``key`` (``task_end``: after the last task; ``task_own``:
    right after its own training), mean ± std over seeds (task order 0)."""
    first = next((r for r in runs if r.get(key) and r.get("order", 0) == 0), None)
    if first is None:
        return ""
    tasks = first["tasks"]
    out = ["| strategy | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    # the starting model is the same for every strategy: one row per seed
    start = list({r["seed"]: r["task_start"] for r in runs if r.get("task_start") and r.get("order", 0) == 0}.values())
    if start:
        out.append("| *start (base model)* | " + " | ".join(_pm([v[j] for v in start], 3) for j in range(len(tasks))) + " |")
    for s in strategies:
        ends = [r[key] for r in runs if r["strategy"] == s and r.get(key) and r.get("order", 0) == 0]
        if ends:
            out.append(f"| {s} | " + " | ".join(_pm([v[j] for v in ends], 3) for j in range(len(tasks))) + " |")
    return "\n".join(out)


def quarters_md(runs: list[dict], strategies: list[str]) -> str:
    """When replay happened: mean replayed samples per run in each quarter of a task, and the
    training seconds per optimizer step (mean over seeds; the runs' own clock)."""
    budgets = list(dict.fromkeys(r.get("budget") for r in runs))
    sweep = len(budgets) > 1
    out = ["| strategy | " + ("budget | " if sweep else "") + "1st quarter | 2nd | 3rd | 4th | train s/step |",
           "|---" * (6 + sweep) + "|"]
    for s in strategies:
        for b in budgets:
            mine = [r for r in runs if r["strategy"] == s and r.get("budget") == b]
            if not mine:
                continue
            qs = [np.mean([r["replay_quarters"][q] for r in mine if r.get("replay_quarters")] or [0]) for q in range(4)]
            sps = [r["s_per_step"] for r in mine if r.get("s_per_step") is not None]
            out.append(f"| {s} | " + (f"{budget_str(b)} | " if sweep else "") + " | ".join(f"{q:,.0f}" for q in qs)
                       + f" | {_pm(sps, 2)} |")
    return "\n".join(out)


def calibration_table_md(runs: list[dict], strategies: list[str]) -> str:
    """Does the memory model predict forgetting? Per strategy (and budget): Spearman correlation of
    each predictor with the measured loss increase, mean ± std over runs; probes where the model
    ranks better than recency; the sampler's mass on its top 10% of rows mid-task."""
    cells = [(s, b) for s in strategies for b in dict.fromkeys(r.get("budget") for r in runs)]
    lines = []
    for s, b in cells:
        mine = [r["calibration"] for r in runs if r["strategy"] == s and r.get("budget") == b and r.get("calibration")]
        if not mine:
            continue
        preds = list(mine[0]["spearman"])
        if not lines:
            lines = ["| strategy | budget | " + " | ".join(f"Spearman {p}" for p in preds)
                     + " | model beats recency | top-10% mass | runs |", "|---" * (len(preds) + 5) + "|"]
        sp = " | ".join(_pm([m["spearman"].get(p) for m in mine if m["spearman"].get(p) is not None], 3) for p in preds)
        beats = f"{sum(m['beats'] for m in mine)} / {sum(m['paired'] for m in mine)} probes"
        top = _pm([m["top10"] for m in mine if m["top10"] is not None], 2)
        lines.append(f"| {s} | {budget_str(b) if b is not None else '–'} | {sp} | {beats} | {top} | {len(mine)} |")
    return "\n".join(lines)


def table_md(rows: list[dict]) -> str:
    sweep = any("budget" in r for r in rows)
    cols = [c for c in COLUMNS if c[0] not in OPTIONAL or any(r.get(c[0]) is not None for r in rows)]
    head = "| strategy | " + ("budget | " if sweep else "") + " | ".join(h for _, h, _ in cols) + " |"
    out = [head, "|---" * (len(cols) + 1 + sweep) + "|"]
    for r in rows:
        cells = []
        for key, _, d in cols:
            m, s = r.get(key), r.get(key + "_std")
            if m is None:
                cells.append("–")
            elif s is None or r["n_runs"] < 2:
                cells.append(f"{m:,.{d}f}")
            else:
                cells.append(f"{m:,.{d}f} ± {s:,.{d}f}")
        out.append(f"| {r['strategy']} | " + (f"{budget_str(r['budget'])} | " if sweep else "") + " | ".join(cells) + " |")
    return "\n".join(out)


def write_plots(out: Path, rows: list[dict], results: list[dict]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from forgetless.report import plot_matrix, plot_task_curves, save_png, strategy_style

    def save(fig, name):
        save_png(fig, out / "plots" / name)

    # one curve per strategy: its points (one per budget of a sweep) joined in order of replay tokens
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for ax, key, label in ((axes[0], "ap", "average accuracy (AP) after the last task"),
                           (axes[1], "forgetting", "forgetting after the last task")):
        for i, name in enumerate(dict.fromkeys(r["strategy"] for r in rows)):
            pts = sorted((r for r in rows if r["strategy"] == name and r[key] is not None and r["replay_tokens"] is not None),
                         key=lambda r: r["replay_tokens"])
            if not pts:
                continue
            color, marker = strategy_style(i)
            ax.errorbar([r["replay_tokens"] for r in pts], [r[key] for r in pts],
                        xerr=[r["replay_tokens_std"] or 0 for r in pts], yerr=[r[key + "_std"] or 0 for r in pts],
                        fmt="-", marker=marker, capsize=3, label=name, color=color)
        ax.set_xlabel("replay tokens per run")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    save(fig, "ap_vs_replay_tokens.png")

    firsts = {}
    for res in results:  # one representative run per strategy: the first seed of the first order
        firsts.setdefault(res["strategy"], res)
    n = len(firsts)
    cols = min(3, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(5.5 * cols, 4 * nrows), squeeze=False)
    for ax, res in zip(axes.flat, firsts.values()):
        plot_task_curves(ax, res)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    save(fig, "task_accuracy.png")

    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 4.2 * nrows), squeeze=False)
    for ax, res in zip(axes.flat, firsts.values()):
        plot_matrix(ax, res)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    save(fig, "accuracy_matrices.png")


def worker_gpus(jobs: int, visible: list[str]) -> list[str | None]:
    """CUDA_VISIBLE_DEVICES of each of ``jobs`` workers: round-robin over the visible GPUs (None: no GPU),
    so that N workers on N GPUs do not all run on cuda:0."""
    return [visible[i % len(visible)] if visible else None for i in range(jobs)]


def visible_gpus() -> list[str]:
    """This process's GPUs as CUDA_VISIBLE_DEVICES entries (its own setting when it has one)."""
    import os

    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [d.strip() for d in env.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]


def _take_gpu(gpus: list[str | None], counter) -> None:
    """Each worker takes the next slot of ``gpus`` (CUDA_VISIBLE_DEVICES) before anything touches CUDA."""
    import os

    with counter.get_lock():
        slot = counter.value
        counter.value += 1
    gpu = gpus[slot % len(gpus)]
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu


def _run_one(cfg_json: dict, runs_dir: str, progress: bool) -> dict:
    """One grid cell; a top-level function so worker processes can run it."""
    from forgetless.config import Config as _Config

    return experiment.run(_Config.model_validate(cfg_json), runs_dir, resume=True, progress=progress)


def grid_configs(cfg: Config, strategies: list[str], seeds: list[int], orders: int,
                 budgets: list[float] | None = None) -> list[tuple[int, Config]]:
    """(order index, run config) of every grid cell, validated like a user's config."""
    from forgetless.config import from_dict
    from forgetless.errors import InputError
    from forgetless.replay.compose import check_names

    if not strategies or any(not s.strip() for s in strategies):
        raise InputError(f"need one or more strategy names, got {strategies!r}", field="--strategies")
    if not seeds:
        raise InputError("need at least one seed", field="--seeds")
    if orders < 1:
        raise InputError(f"need at least one task order, got {orders}", field="--orders")
    twice = next((s for i, s in enumerate(strategies) if s in strategies[:i]), None)
    if twice is not None:  # one run counted twice would read as "mean of 2 runs"
        raise InputError(f"strategy {twice!r} is listed twice", field="--strategies")
    n_runs = len(strategies) * len(seeds) * orders * len(budgets or [None])
    if n_runs > MAX_RUNS:
        raise InputError(f"{len(strategies)} strategies x {len(seeds):,} seeds x {orders:,} orders" +
                         (f" x {len(budgets)} budgets" if budgets else "") +
                         f" = {n_runs:,} runs; a bench runs at most {MAX_RUNS:,} (lower --seeds or --orders)")
    if orders > 1 and cfg.data.benchmark is not None:  # random permutations would not be the papers' orders
        raise InputError(f"a benchmark preset brings its own task orders: run one bench per "
                         f"data.benchmark_order instead of --orders {orders} (docs/benchmarks.md)", field="--orders")
    for s in strategies:
        check_names(s.split("+"))
    from forgetless.replay.gere import check_source

    check_source(cfg.replay.gere.source, strategies)  # before the first run, not midway
    cells, names = [], set()
    for b in budgets or [None]:
        for o in range(orders):
            for s in strategies:
                for seed in seeds:
                    name = run_name(s, seed, o, b)
                    if name in names:  # up front: two cells in one directory would abort the bench midway
                        raise InputError(f"two grid cells share the run directory {name!r} (a seed or budget "
                                         "listed twice)")
                    names.add(name)
                    raw = cfg.model_dump(mode="json")
                    raw.update(name=name, seed=seed)
                    raw["replay"]["strategy"] = s
                    if b is not None:
                        raw["replay"]["budget"] = b
                    raw["data"]["order"] = cfg.data.order if o == 0 else task_order(len(cfg.data.tasks), o)
                    cells.append((o, from_dict(raw, f"bench run {raw['name']}")))
    return cells


def bench(cfg: Config, strategies: list[str], seeds: list[int], *, orders: int = 1, out: Path,
          jobs: int = 1, progress: bool = True, on_run: Callable[[int, int, dict], None] | None = None,
          fresh: bool = False, budgets: list[float] | None = None, command: str | None = None,
          publish: str | Path | None = None) -> dict:
    """Run the grid (reusing finished runs) and write bench.json, bench.md and plots under ``out``.

    A run directory already there is reused only when its config and task data are this grid
    cell's (experiment.check_same_run); otherwise nothing runs and the error names the field.
    The bench holds ``out``'s lock (rundir.RunLock) throughout, so a second bench there is one line.
    ``fresh`` deletes ``out``'s contents first, each run directory under its own lock.

    ``budgets`` sweeps ``replay.budget`` (one run per budget x order x strategy x seed); the plot
    then draws one curve per strategy through its budgets, and bench.md adds per-seed paired AP
    differences against uniform and fixed.

    ``command`` (the command line that made it) heads bench.md; ``publish`` also writes bench.md to
    that path with its plots (``publish_md``).

    ``jobs`` > 1 runs that many runs at once in worker processes (each with ``train.cpu_threads``
    threads): the demo uses 2 on a 2-core machine. Wall-clock ratios are then measured under that
    shared load; use jobs=1 for timing comparisons. On several GPUs each worker gets its own
    (CUDA_VISIBLE_DEVICES, round-robin over the visible ones: ``worker_gpus``).
    """
    out = Path(out)
    grid_cfgs = grid_configs(cfg, strategies, seeds, orders, budgets)
    seeds = list(seeds)  # a range from the CLI, bounded by grid_configs before it is listed
    for _, c in grid_cfgs:
        rundir.check_writable(experiment.run_dir_for(c, out / "runs"))
    lock = rundir.RunLock(out, "bench directory")
    created = not out.exists()
    lock.acquire()  # one bench per directory, held until its tables are written
    try:
        for _, c in grid_cfgs:
            run_dir = experiment.run_dir_for(c, out / "runs")
            if not fresh and (run_dir / "config.yaml").is_file():
                rundir.check_config(c, run_dir)  # task data are checked by each run itself
                rundir.check_model(c, run_dir)
        if fresh:  # every run directory under its own lock: a run in use is one line, nothing deleted
            runs = out / "runs"
            rundir.remove_dirs(sorted(d for d in runs.iterdir() if d.is_dir() and not d.name.startswith("."))
                               if runs.is_dir() else [])
            lock.clear()
        return _grid(cfg, strategies, seeds, orders, out, jobs, progress, on_run, budgets, grid_cfgs, command, publish)
    finally:
        if created and [p.name for p in out.iterdir()] == [rundir.LOCK]:  # refused: leave nothing behind
            lock.remove()
        lock.release()


class BenchInterrupted(experiment.RunInterrupted):
    """Ctrl-C during a bench. Finished runs are reused and the others resume from their last stage,
    so the same command (without --fresh) continues; the CLI adds that command to the message."""

    same_command = True

    def __init__(self, out: Path, done: int, total: int, run: experiment.RunInterrupted | None = None):
        where = f"; {run.run_dir.name} resumes after stage {run.stage}" if run is not None and run.stage >= 0 else ""
        Exception.__init__(self, f"bench {out} interrupted with {done} of {total} runs finished{where}")
        self.run_dir, self.stage = Path(out), -1


def _worker_init(parent: int, gpus: list[str | None], counter) -> None:
    """A bench worker takes the next slot of ``gpus`` before anything touches CUDA, and dies with its
    bench. Ctrl-C is the bench's to handle (it stops its workers); if the bench dies, even by
    kill -9, the kernel kills the worker (Linux PR_SET_PDEATHSIG; elsewhere a thread watches the
    parent's PID)."""
    import os
    import signal

    _take_gpu(gpus, counter)

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        import ctypes

        if ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL), 0, 0, 0) != 0:  # 1: PR_SET_PDEATHSIG
            raise OSError(ctypes.get_errno(), "prctl")
    except Exception:  # noqa: BLE001 - not Linux: poll instead
        import threading

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:  # the bench died before the death signal was set
        os._exit(1)


def _run_cells(cells: list[dict], runs_dir: str, jobs: int, progress: bool,
               on_run: Callable[[int, int, dict], None] | None, out: Path) -> list[dict]:
    """Every run of the grid, ``jobs`` at a time (worker processes when more than one). An error or
    Ctrl-C stops the workers at once (their runs resume from their last stage); Ctrl-C is one line."""
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    results: list = [None] * len(cells)
    done = 0
    try:
        if jobs <= 1:
            for i, c in enumerate(cells):
                results[i] = _run_one(c, runs_dir, progress)
                done += 1
                if on_run is not None:
                    on_run(done, len(cells), results[i])
            return results
        ctx = get_context("spawn")
        pool = ProcessPoolExecutor(max_workers=jobs, mp_context=ctx, initializer=_worker_init,
                                   initargs=(os.getpid(), worker_gpus(jobs, visible_gpus()), ctx.Value("i", 0)))
        try:
            futures = {pool.submit(_run_one, c, runs_dir, False): i for i, c in enumerate(cells)}
            for fut in as_completed(futures):
                i = futures[fut]
                results[i] = fut.result()
                done += 1
                if on_run is not None:
                    on_run(done, len(cells), results[i])
        except BaseException:
            for proc in (getattr(pool, "_processes", None) or {}).values():
                proc.kill()
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        return results
    except KeyboardInterrupt:
        raise BenchInterrupted(out, done, len(cells)) from None
    except experiment.RunInterrupted as e:
        raise BenchInterrupted(out, done, len(cells), e) from None


def _grid(cfg: Config, strategies: list[str], seeds: list[int], orders: int, out: Path, jobs: int, progress: bool,
          on_run, budgets: list[float] | None, grid_cfgs: list[tuple[int, Config]], command: str | None = None,
          publish: str | Path | None = None) -> dict:
    """Run the checked grid and write its tables and plots (bench() holds the bench's lock)."""
    grid = [(o, c.replay.strategy, c.seed, c.replay.budget if budgets else None) for o, c in grid_cfgs]
    cells = [c.model_dump(mode="json") for _, c in grid_cfgs]
    t_start = time.perf_counter()
    results = _run_cells(cells, str(out / "runs"), jobs, progress, on_run, out)
    for (o, _, _, b), res in zip(grid, results):
        res["order_index"] = o
        res["budget"] = b if b is not None else cfg.replay.budget
    summaries = [summarize(r) | {"order": r["order_index"], "budget": r["budget"]} for r in results]
    rows = aggregate(summaries, strategies, budgets)
    payload = {"config": cfg.model_dump(mode="json"), "strategies": strategies, "seeds": seeds, "orders": orders,
               "budgets": budgets,
               "rows": rows, "runs": summaries, "results": results,
               "wall_s": time.perf_counter() - t_start}
    atomic_write_text(out / "bench.json", json.dumps(payload, indent=1))
    write_plots(out, rows, results)
    md = [f"# Bench `{out.name}`", ""]
    if command:
        md += ["Made by (rerun it to regenerate this page; finished runs are reused):", "", "```bash", command, "```", ""]
    md += [f"{len(strategies)} strategies × {len(seeds)} seeds × {orders} task order(s) on "
          f"{', '.join(results[0]['tasks']) if results else '-'}; model `{cfg.model.name}`; " +
          (f"replay budgets {', '.join(budget_str(b) for b in budgets)}." if budgets else
           f"replay budget {cfg.replay.budget if cfg.replay.budget is not None else 'unlimited'}."),
          "Mean ± std over seeds and orders. Time ratios are within this one bench (same machine, same load). "
          "replay smp / tok: samples and tokens replayed per run (general samples included); spent/budget: "
          "task replay spent over `replay.budget` (below 1: underspend, never replayed later).", "",
          table_md(rows), ""]
    noise = noise_floor(summaries)
    payload["noise"] = noise
    if noise is not None:
        md += [f"Seed noise: AP std over seeds {noise['sigma']:.3f} (pooled over {noise['groups']} strategy cells); "
               f"a difference under {noise['noise']:.3f} AP between two single-seed runs is within it.", ""]
    if budgets:  # one reading per budget: strategies compare at equal budget only
        md += [f"At budget {budget_str(b)}: " + reading([r for r in rows if r["budget"] == b],
                                                        noise["noise"] if noise else None) for b in budgets] + [""]
    else:
        md += [reading(rows, noise["noise"] if noise else None), ""]
    pairs = paired_md(summaries, strategies)
    if pairs:
        md += ["Paired AP differences (same seed, order and budget; wins: seeds where the strategy is higher):", "",
               pairs, ""]
    cal = calibration_table_md(summaries, strategies)
    if cal:
        md += ["Memory-model calibration (replay/calibration.py; docs/mssr.md): rank correlation between each "
               "predictor of forgetting and the measured loss increase of probed memory rows:", "", cal, ""]
    md += ["Replay per quarter of each task (samples, mean per run, summed over tasks; GeRe's general samples "
           "included) and training seconds per optimizer step:", "", quarters_md(summaries, strategies), ""]
    if not budgets:
        sections = [("Each task's score at the start and after the last task (task order 0):",
                     per_task_md(summaries, strategies)),
                    ("Each task's score right after its own training (the score matrix's diagonal; LA is its mean):",
                     per_task_md(summaries, strategies, "task_own")),
                    ("General held-out perplexity after each stage (stage 0: the starting model):",
                     per_stage_md(summaries, strategies, "ppl_stages", 1)),
                    ("General-knowledge probe accuracy after each stage (data.general_probe):",
                     per_stage_md(summaries, strategies, "probe_stages", 3))]
        md += [x for title, table in sections if table for x in (title, "", table, "")]
    run_s = sum(r["wall_s"] for r in summaries)
    md += [f"{len(summaries)} runs, {run_s / 3600:.2f} h of run time summed over runs (training + evaluation).", ""]
    md += ["![AP and forgetting vs replay tokens](plots/ap_vs_replay_tokens.png)", "",
           "![per-task accuracy](plots/task_accuracy.png)", "", "![accuracy matrices](plots/accuracy_matrices.png)", ""]
    atomic_write_text(out / "bench.md", "\n".join(md))
    if publish is not None:
        publish_md(out, "\n".join(md), Path(publish))
    return payload


def publish_md(out: Path, md: str, dest: Path) -> None:
    """bench.md as a page of its own (e.g. docs/results-paper.md): the plots copied next to it into
    ``<dest stem>/`` and the links pointed there, so the page and its figures travel together."""
    import shutil

    figs = dest.parent / dest.stem
    figs.mkdir(parents=True, exist_ok=True)
    for png in sorted((out / "plots").glob("*.png")):
        shutil.copyfile(png, figs / png.name)
    atomic_write_text(dest, md.replace("](plots/", f"]({dest.stem}/"))


DEMO_NOISE = Path(__file__).parent / "assets" / "demo_noise.json"
DEMO_NOISE_COMMAND = "python benchmarks/demo_noise.py"


def config_digest(cfg: Config) -> str:
    """Identifies a config's settings (not its name or output place) for figures measured on it."""
    import hashlib

    raw = cfg.model_dump(mode="json")
    raw.pop("name", None), raw.pop("output_dir", None), raw.pop("seed", None)
    return hashlib.sha256(json.dumps(raw, sort_keys=True).encode()).hexdigest()[:16]


def demo_noise(cfg: Config) -> dict | None:
    """The demo stream's seed noise, measured over seeds by DEMO_NOISE_COMMAND; None when that
    measurement was made on another demo config (it would no longer say anything)."""
    if not DEMO_NOISE.is_file():
        return None
    saved = json.loads(DEMO_NOISE.read_text())
    return saved if saved.get("config_digest") == config_digest(cfg) else None


DEMO_STRATEGIES = ["none", "joint", "uniform", "fixed", "loss_triggered", "accuracy_triggered", "mssr",
                   "mssr_sampler", "mssr_schedule", "gere", "gere+mssr"]
QUICK_STRATEGIES = ["none", "uniform"]


def demo_config(quick: bool = False) -> Config:
    """The demo: bundled tiny model, built-in suite, every strategy at one replay budget.

    Full fine-tuning, not LoRA: on the 4M-parameter tiny model LoRA (r 16..64, lr 2e-3..1e-2)
    reached at most 0.2 accuracy on first_word in 120 steps, full fine-tuning at lr 1e-3 0.72, so
    only full fine-tuning learns (and forgets) within a demo's minutes. Real models use LoRA.
    """
    from forgetless.config import from_dict

    raw = {
        "name": "demo",
        "model": {"lora": {"enabled": False}},
        "data": {"tasks": ["unicode_letter", "first_word", "last_word"], "n_test": 60, "general_texts": 45},
        "train": {"steps_per_task": 100, "batch_size": 16, "lr": 1e-3},
        # GeRe weight 1, not the paper's 100: on the tiny model 100 and "dynamic" kept general
        # perplexity but stopped task learning (AP 0.02); 1 learned the tasks (AP 0.17) with
        # perplexity 196 instead of 20,671 for no replay (demo config, seed 0)
        "replay": {"budget": 0.25, "memory": {"size": 300},
                   "gere": {"n_samples": 200, "seq_len": 128, "weight": 1.0}},
    }
    if quick:
        raw["data"].update({"tasks": ["first_word", "last_word"], "n_test": 40, "general_texts": 16})
        raw["train"]["steps_per_task"] = 100
    return from_dict(raw, "demo config")
