"""Files a person reads: results.json, accuracy_matrix.csv, report.md and plots, from one results dict."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from forgetless.state import atomic_write_bytes, atomic_write_text


def _fmt(x, digits=3) -> str:
    if x is None:
        return "–"
    if isinstance(x, float):
        return f"{x:.{digits}f}"
    return str(x)


def accuracy_csv(result: dict) -> str:
    """Written with the csv module, so a task name with a comma or quote stays one cell."""
    import csv

    names = result["tasks"]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["after_task", *names])
    w.writerow(["start", *(f"{v:.4f}" for v in result["baseline_acc"])])
    for name, row in zip(names, result["acc"]):
        w.writerow([name, *(f"{v:.4f}" for v in row)])
    return buf.getvalue()


def _task_metrics(result: dict) -> list[str]:
    """Results written before per-task metrics hold accuracies: exact match or MC accuracy."""
    kinds = result.get("task_kinds") or ["generation"] * len(result["tasks"])
    return result.get("task_metrics") or ["accuracy" if k == "multiple_choice" else "exact_match" for k in kinds]


def report_md(result: dict) -> str:
    m, c, names = result["metrics"], result["counters"], result["tasks"]
    out = [f"# Run `{result['name']}`", "",
           f"Strategy **{result['strategy']}**, model `{result['model']}`, seed {result['seed']}, "
           f"{len(names)} tasks: {', '.join(names)}.", "", "## Metrics", "",
           "| AP | BWT | FWT | forgetting | learning acc. | norm. score | general ppl (start → end) |",
           "|---|---|---|---|---|---|---|",
           f"| {_fmt(m.get('ap'))} | {_fmt(m.get('bwt'))} | {_fmt(m.get('fwt'))} | {_fmt(m.get('forgetting'))} | "
           f"{_fmt(m.get('learning_accuracy'))} | {_fmt((result.get('normalized_score') or {}).get('value'))} | "
           f"{_fmt(result['general_ppl'][0], 2)} → {_fmt(result['general_ppl'][-1], 2)} |",
           "", "## Score matrix (row: after training task; column: evaluated task)", "",
           "Each task's own metric: " + ", ".join(f"{n} {k}" for n, k in zip(names, _task_metrics(result))) + ".", "",
           "| after \\ on | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|",
           "| start | " + " | ".join(_fmt(v) for v in result["baseline_acc"]) + " |"]
    for name, row in zip(names, result["acc"]):
        out.append(f"| {name} | " + " | ".join(_fmt(v) for v in row) + " |")
    probe = result.get("general_probe_acc")
    if probe:
        out += ["", "## General knowledge probe (multiple choice, never trained on)", "",
                "| stage | " + " | ".join(str(k) for k in range(len(probe))) + " |", "|---" * (len(probe) + 1) + "|",
                "| accuracy | " + " | ".join(_fmt(v) for v in probe) + " |"]
    general = result.get("general_tasks") or []
    if general:
        keys = sorted({k for g in general for k in g["scores"]})
        out += ["", "## General ability (lm-evaluation-harness)", "",
                "| stage | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
        out += [f"| {g['stage']} | " + " | ".join(_fmt(g["scores"].get(k)) for k in keys) + " |" for g in general]
    out += ["", "## Replay per quarter of each task", "",
            "Samples / tokens replayed in each quarter of the task's steps (all replay, general samples "
            "included); budget, spent and underspend of the task-replay budget (`replay.budget`, samples).", "",
            "| task | budget | spent | underspend | Q1 | Q2 | Q3 | Q4 |", "|---|---|---|---|---|---|---|---|"]
    for v in result.get("replay_volume") or replay_volume(result):
        tok = v["tokens"] or [None] * 4
        out.append(f"| {v['task']} | {_fmt(v['budget'])} | {_fmt(v['spent'])} | {_fmt(v['underspend'])} | "
                   + " | ".join(f"{n:,} / {_fmt(k if k is None else f'{k:,}')}" for n, k in zip(v["samples"], tok)) + " |")
    out += ["", "## Work", "", "| counter | value |", "|---|---|"]
    out += [f"| {k} | {_fmt(v, 2)} |" for k, v in c.items()]
    out += ["", f"Replay events: {len(result['replay_events'])}.", "",
            "![accuracy matrix](plots/accuracy_matrix.png)", "", "![task accuracy](plots/task_accuracy.png)", ""]
    if retention_trace(result) is not None:
        out += ["![predicted retention](plots/retention.png)", ""]
    out += calibration_md(result)
    return "\n".join(out)


def replay_volume(result: dict) -> list[dict]:
    """Per task: samples and tokens replayed in each quarter of its steps (from the replay events,
    so every kind of replay counts, GeRe's general samples included) and the task-replay budget's
    ledger entry (budget, spent, underspend; None where no budget applies). Tokens are None for
    events recorded before they carried ``n_tokens``."""
    steps = list(result.get("steps_per_task") or [])
    starts = np.concatenate([[0], np.cumsum(steps)]).astype(int)
    ledger = {e["task"]: e for e in (result.get("replay_report") or {}).get("budget") or []}
    rows = []
    for t, name in enumerate(result["tasks"][: len(steps)]):
        e = ledger.get(t, {})
        rows.append({"task": name, "budget": e.get("budget"), "spent": e.get("spent"),
                     "underspend": e.get("underspend"), "samples": [0] * 4, "tokens": [0] * 4})
    for ev in result["replay_events"]:
        t = ev["task"]
        if t >= len(rows) or not steps[t]:
            continue
        q = min(3, 4 * (int(ev["step"]) - int(starts[t]) - 1) // steps[t])  # steps count from 1
        r = rows[t]
        r["samples"][q] += ev["n_samples"]
        if "n_tokens" not in ev:
            r["tokens"] = None
        elif r["tokens"] is not None:
            r["tokens"][q] += ev["n_tokens"]
    return rows


def retention_trace(result: dict) -> dict | None:
    """The predicted mean retention per step that a strength-keeping strategy (or a part of a
    composite) recorded in ``replay_report``; None when there is none."""
    tr = _replay_part(result, "retention")
    return tr if tr and tr.get("step") else None


def _replay_part(result: dict, key: str):
    """``replay_report[key]`` of the strategy or of the first part of a composite that has it."""
    rep = result.get("replay_report") or {}
    for r in [rep, *(v for v in rep.values() if isinstance(v, dict))]:
        if r.get(key):
            return r[key]
    return None


def calibration_md(result: dict) -> list[str]:
    """The memory model's calibration (replay/calibration.py) and the sampler's concentration."""
    cal, conc = _replay_part(result, "calibration"), _replay_part(result, "concentration")
    out = []
    if cal and cal.get("probes"):
        sp = cal["spearman_mean"]
        out += ["## Memory model calibration", "",
                f"{cal['probes']} probes of {cal['rows']} memory rows every {cal['every']} steps. Spearman rank "
                "correlation between each predictor and the measured loss increase (current loss - loss when "
                "stored), mean over probes (constant: undefined, no ranking). The memory model beats recency in "
                f"{cal['model_beats_recency']} of {cal['paired_probes']} probes.", "",
                "| predictor | " + " | ".join(sp) + " |", "|---" * (len(sp) + 1) + "|",
                "| Spearman | " + " | ".join(_fmt(v) for v in sp.values()) + " |", "",
                "![calibration](plots/calibration.png)", ""]
    if conc:
        out += ["Sampler weight mass on the top 10% of rows, mid-task: "
                + ", ".join(f"task {e['task']} {_fmt(e['top10_mass'])}" for e in conc) + ".", ""]
    return out


def plot_calibration(ax, result: dict) -> None:
    """Predicted retention in bins against the mean observed loss increase of the probed rows."""
    b = _replay_part(result, "calibration")["bins"]
    e = np.asarray(b["edges"])
    y = np.asarray([np.nan if v is None else v for v in b["mean_increase"]], dtype=float)
    ax.bar((e[:-1] + e[1:]) / 2, np.nan_to_num(y), width=np.diff(e) * 0.9, color="C0")
    for x, v, n in zip((e[:-1] + e[1:]) / 2, y, b["n"]):
        if n:
            ax.annotate(str(n), (x, v), ha="center", va="bottom", fontsize=7)
    ax.axhline(0, color="0.5", lw=0.8)
    ax.set_xlabel("predicted retention m (bin; label: rows)")
    ax.set_ylabel("mean loss increase (nats)")
    ax.grid(alpha=0.3)


def plot_retention(ax, result: dict) -> None:
    """Predicted mean retention of the memory over steps; replay events as ticks sized by volume."""
    tr = retention_trace(result)
    ax.plot(tr["step"], tr["mean"], lw=1.2, color="C0", label="predicted mean retention")
    ev = [e for e in result.get("replay_events", []) if e.get("step") is not None]
    if ev:
        n = np.asarray([e["n_samples"] for e in ev], dtype=float)
        ax.scatter([e["step"] for e in ev], np.full(len(ev), -0.03), s=4 + 40 * n / n.max(), marker="|",
                   color="C3", label="replay event (size: samples)")
    ends = np.cumsum(result.get("steps_per_task", []))[:-1]
    for x in ends:
        ax.axvline(x + 0.5, color="0.6", lw=0.8, ls="--")
    ax.set_ylim(-0.07, 1.02)
    ax.set_xlabel("step (dashed: task switch)")
    ax.set_ylabel("predicted retention")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")


def save_png(fig, path: Path) -> None:
    """Write a matplotlib figure atomically and close it."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())


# tab20 in an order that puts far-apart hues first, and as many markers: the i-th strategy of a plot
# gets a colour and a marker no other of the first 20 has (tab10's C{i % 10} drew `none` and
# `gere+mssr` alike in the 11-strategy demo)
_COLOURS = [0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 1, 3, 5, 7, 9, 11, 13, 15, 17, 19]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p", "8", "d", "H", "1", "2", "3", "4", "+"]


def strategy_style(i: int) -> tuple:
    """(colour, marker) of the i-th strategy in a plot; distinct for the first 20 strategies."""
    import matplotlib

    return matplotlib.colormaps["tab20"](_COLOURS[i % 20]), _MARKERS[i % 20]


def plot_matrix(ax, result: dict, title: str | None = None) -> None:
    acc = np.asarray(result["acc"])
    names = result["tasks"]
    im = ax.imshow(acc, vmin=0, vmax=1, cmap="viridis")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(names)), names, fontsize=8)
    ax.set_xlabel("evaluated task")
    ax.set_ylabel("after training task")
    for i in range(acc.shape[0]):
        for j in range(acc.shape[1]):
            ax.text(j, i, f"{acc[i, j]:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if acc[i, j] < 0.5 else "black")
    ax.set_title(title or result["strategy"])
    return im


def plot_task_curves(ax, result: dict, title: str | None = None) -> None:
    names = result["tasks"]
    acc = np.vstack([result["baseline_acc"], result["acc"]])
    x = np.arange(acc.shape[0])
    for j, n in enumerate(names):
        ax.plot(x, acc[:, j], marker="o", label=n)
    ax.set_xticks(x, ["start"] + [f"after {n}" for n in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("score")
    ax.set_title(title or result["strategy"])
    ax.grid(alpha=0.3)


def write_plots(run_dir: Path, result: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(result["tasks"])
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.0 * n + 2))
    im = plot_matrix(ax, result, f"score matrix — {result['strategy']}")
    fig.colorbar(im, ax=ax, fraction=0.046)
    save_png(fig, run_dir / "plots" / "accuracy_matrix.png")
    fig, ax = plt.subplots(figsize=(7, 4))
    plot_task_curves(ax, result, f"score per task across stages — {result['strategy']}")
    ax.legend(fontsize=8, loc="best")
    save_png(fig, run_dir / "plots" / "task_accuracy.png")
    if retention_trace(result) is not None:
        fig, ax = plt.subplots(figsize=(8, 3.5))
        plot_retention(ax, result)
        ax.set_title(f"memory model: predicted retention and replay — {result['strategy']}")
        save_png(fig, run_dir / "plots" / "retention.png")
    cal = _replay_part(result, "calibration")
    if cal and cal.get("probes"):
        fig, ax = plt.subplots(figsize=(6, 3.5))
        plot_calibration(ax, result)
        ax.set_title(f"memory model calibration — {result['strategy']}")
        save_png(fig, run_dir / "plots" / "calibration.png")


def write_outputs(run_dir: Path, result: dict, results_too: bool = True) -> None:
    """Everything rendered first (in memory), then written; results.json last: it marks the run finished."""
    run_dir = Path(run_dir)
    csv_text, md = accuracy_csv(result), report_md(result)
    write_plots(run_dir, result)
    atomic_write_text(run_dir / "accuracy_matrix.csv", csv_text)
    atomic_write_text(run_dir / "report.md", md)
    if results_too:
        atomic_write_text(run_dir / "results.json", json.dumps(result, indent=1))


def rerender(run_dir: Path) -> dict:
    """Rebuild report.md, the CSV and the plots from results.json (``forgetless report``)."""
    from forgetless.errors import InputError

    path = Path(run_dir) / "results.json"
    if not path.is_file():
        raise InputError("no results.json (is the run finished?)", file=str(path))
    try:
        result = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"not valid JSON ({e.msg})", file=str(path), line=e.lineno) from None
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text (byte {e.start})", file=str(path)) from None
    if not isinstance(result, dict):
        raise InputError("must hold a JSON object", file=str(path))
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise InputError(f"lacks key(s) {', '.join(missing)} (not a forgetless results file?)", file=str(path))
    try:
        write_outputs(Path(run_dir), result, results_too=False)
    except (KeyError, TypeError, ValueError, IndexError) as e:
        raise InputError(f"a field has an unexpected shape or type ({type(e).__name__}: {e})", file=str(path)) from None
    return result


# what report.md, the CSV and the plots read
REQUIRED_KEYS = ("name", "tasks", "acc", "baseline_acc", "metrics", "general_ppl", "counters", "replay_events",
                 "strategy", "model", "seed")
