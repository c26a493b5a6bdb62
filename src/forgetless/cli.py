"""Command line: parse, call, print. No logic lives here."""

from __future__ import annotations

import json
import shlex
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from forgetless.errors import InputError, Interrupted

# plain help (rich_markup_mode=None): typer's Rich help labels every flag '<bool>', as if it took a value
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  help="Continual fine-tuning of causal LMs with replay.")
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="The built-in offline task suite.")
app.add_typer(data_app, name="data")
# Rich assumes 80 columns when stdout is not a terminal (logs, pipes, CI): the comparison table
# then truncates its numbers, so use a wider page there; a real terminal keeps its own width.
# markup=False: what we print holds users' names (tasks[v2].jsonl, a run named v[red]1), never markup
console = Console(markup=False) if sys.stdout.isatty() else Console(markup=False, width=120)
QUIET_HELP = "No progress bars."


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"forgetless {version('forgetless')}")
        except PackageNotFoundError:  # run from a source tree that was never installed
            print("forgetless (not installed)")
        raise typer.Exit()


@app.callback()
def _main(_: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit.")) -> None:
    """Continual fine-tuning of causal LMs with replay."""


@data_app.command("list")
def data_list(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table.")) -> None:
    """Show the built-in tasks: name, kind, train/dev/test counts, source."""
    from forgetless.data.builtin import describe_tasks

    rows = describe_tasks()
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="built-in tasks")
    for col in ("name", "kind", "n_train", "n_dev", "n_test", "source"):
        table.add_column(col, justify="right" if col.startswith("n_") else "left")
    for r in rows:
        table.add_row(r["name"], r["kind"], str(r["n_train"]), str(r["n_dev"]), str(r["n_test"]), r["source"])
    console.print(table)


@data_app.command("show")
def data_show(task: str = typer.Argument(..., help="Built-in task name, or a task file path."),
              n: int = typer.Option(5, "-n", help="How many examples."),
              split: str = typer.Option("train", help="train, dev or test")) -> None:
    """Print examples of a task."""
    from forgetless.data import load_task

    if n < 0:
        raise InputError(f"-n must be 0 or more, got {n}")
    if split not in ("train", "dev", "test"):
        raise InputError(f"--split must be 'train', 'dev' or 'test', got {split!r}")
    t = load_task(task)
    examples = getattr(t, split)
    console.print(Text.assemble((t.name, "bold"), f" ({t.kind}, {len(t.train)} train / {len(t.dev)} dev / "
                                                  f"{len(t.test)} test) — {t.source}"))
    for ex in examples[:n]:
        console.print(Text.assemble(("prompt:", "cyan"), f" {ex.prompt!r}"))
        if ex.choices is not None:
            console.print(Text.assemble("  ", ("choices:", "magenta"), f" {list(ex.choices)}  ",
                                        ("answer:", "green"), f" {ex.answer}"))
        console.print(Text.assemble("  ", ("target:", "green"), f" {ex.target!r}"))


def _num(v: float, digits: int) -> str:
    """Short enough for an 80-column terminal: 27,666 -> 27.7k."""
    if abs(v) >= 10_000:
        return f"{v / 1000:.1f}k" if abs(v) < 1e6 else f"{v / 1e6:.1f}M"
    return f"{v:.{digits}f}"


def _metrics_table(rows: list[dict], title: str) -> Table:
    from forgetless.bench import COLUMNS, budget_str

    # the terminal table keeps the columns people compare first; bench.md has them all
    keep = ("ap", "bwt", "forgetting", "ppl_end", "replay_tokens", "wall_s", "overhead")
    cols = [c for c in COLUMNS if c[0] in keep]
    n = max((r.get("n_runs", 1) for r in rows), default=1)
    table = Table(title=title, caption=f"mean of {n} runs per strategy; ± std in bench.md" if n > 1 else None)
    table.add_column("strategy", no_wrap=True)
    for _, head, _ in cols:
        table.add_column(head, justify="right", no_wrap=True)
    for r in rows:
        cells = []
        for key, _, d in cols:
            v = r.get(key)
            cells.append("–" if v is None else _num(v, d))
        table.add_row(r["strategy"] + (f" @{budget_str(r['budget'])}" if r.get("budget") is not None else ""), *cells)
    return table


@app.command()
def run(config: str = typer.Argument(..., help="YAML config file."),
        set_: list[str] = typer.Option([], "--set", help="Override a config value: key.sub=value (repeatable)."),
        output: Optional[str] = typer.Option(None, "--output", help="Parent directory of the run (default: config output_dir)."),
        resume: bool = typer.Option(False, "--resume", help="Continue a killed run from its last finished stage."),
        fresh: bool = typer.Option(False, "--fresh", help="Delete an existing run of this name and start over."),
        quiet: bool = typer.Option(False, "--quiet", help=QUIET_HELP)) -> None:
    """Train one model on a stream of tasks with one replay strategy."""
    try:  # importing torch takes seconds: a Ctrl-C here is no run's to continue
        from forgetless import bench, experiment
        from forgetless.config import load_config

        if resume and fresh:
            raise InputError("--resume and --fresh exclude each other")
        cfg = load_config(config, set_)
    except KeyboardInterrupt:
        raise Interrupted("interrupted before the run started; nothing was written") from None
    result = experiment.run(cfg, output, resume=resume, fresh=fresh, progress=not quiet)
    run_dir = experiment.run_dir_for(cfg, output)
    if _is_main():
        console.print(_metrics_table(bench.aggregate([bench.summarize(result)], [result["strategy"]]), f"run {cfg.name}"))
        console.print(f"results: {run_dir / 'results.json'}  report: {run_dir / 'report.md'}")


@app.command()
def demo(quick: bool = typer.Option(False, "--quick", help="Fewer tasks, steps and strategies (about a minute)."),
         output: str = typer.Option("runs/demo", "--output", help="Where the demo's runs, table and plots go."),
         jobs: int = typer.Option(2, "--jobs", help="Runs at once (one CPU thread each)."),
         fresh: bool = typer.Option(False, "--fresh", help="Delete earlier demo runs first (they are reused otherwise)."),
         quiet: bool = typer.Option(False, "--quiet", help=QUIET_HELP)) -> None:
    """Every strategy on the bundled tiny model and the built-in suite: forgetting and its cure."""
    from pathlib import Path

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from forgetless import bench

    if jobs < 1:
        raise InputError(f"--jobs must be at least 1, got {jobs}")
    cfg = bench.demo_config(quick)
    strategies = bench.QUICK_STRATEGIES if quick else bench.DEMO_STRATEGIES
    out = Path(output) / ("quick" if quick else "full")
    console.print(f"demo: {len(strategies)} strategies on {', '.join(cfg.data.tasks)} "
                  f"({cfg.train.steps_per_task} steps per task, tiny model) -> {out}", highlight=False)
    pending = list(strategies)  # runs start in this order, `jobs` at a time
    bar = Progress(TextColumn("runs"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[current]}", markup=False),
                   TimeElapsedColumn(), TextColumn("left"), TimeRemainingColumn(), console=console,
                   disable=quiet, transient=True)

    def current() -> str:
        return "running " + ", ".join(pending[:jobs]) if pending else ""

    def on_run(i, n, res):
        m = res["metrics"]
        if res["strategy"] in pending:
            pending.remove(res["strategy"])
        console.print(f"[{i}/{n}] {res['strategy']:<20} AP {m['ap']:.3f}  BWT {m['bwt']:.3f}", highlight=False)
        bar.update(task, completed=i, current=current())

    with bar:
        task = bar.add_task("demo", total=len(strategies), current=current())
        payload = bench.bench(cfg, strategies, [cfg.seed], out=out, jobs=jobs, progress=False, on_run=on_run,
                              fresh=fresh)
    console.print(_metrics_table(payload["rows"], "forgetting and its cure (tiny model, built-in tasks)"))
    noise = None if quick else bench.demo_noise(cfg)
    console.print(bench.reading(payload["rows"], noise["noise"] if noise else None), highlight=False)
    if noise is not None:
        console.print(f"(seed noise measured over {noise['seeds']} seeds by `{noise['command']}`; "
                      "docs/results.md)", highlight=False)
    elif not quick:
        console.print(f"(one seed: how large a difference is noise is measured by `{bench.DEMO_NOISE_COMMAND}`, "
                      "not yet for this demo config)", highlight=False)
    console.print(f"table: {out / 'bench.md'}  plots: {out / 'plots'}", highlight=False)


@app.command("bench")
def bench_cmd(config: Optional[str] = typer.Argument(None, help="YAML config (default: the demo config)."),
              strategies: Optional[str] = typer.Option(None, help="Comma-separated strategies (a+b composes); "
                                                       "default: all of them."),
              seeds: int = typer.Option(3, help="Seeds 0..N-1."),
              orders: int = typer.Option(1, help="Task orders: the listed one plus N-1 random ones."),
              budgets: Optional[str] = typer.Option(None, help="Comma-separated replay budgets to sweep, e.g. "
                                                    "0.02,0.05,0.1,0.25 (default: the config's replay.budget)."),
              set_: list[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
              output: Optional[str] = typer.Option(None, "--output", help="Bench directory (default bench/<name>)."),
              jobs: int = typer.Option(1, "--jobs", help="Runs at once; 1 keeps wall-clock ratios clean."),
              fresh: bool = typer.Option(False, "--fresh", help="Delete this bench's earlier runs first "
                                         "(finished runs with the same config are reused otherwise)."),
              quiet: bool = typer.Option(False, "--quiet", help=QUIET_HELP),
              publish: Optional[str] = typer.Option(None, "--publish", help="Also write bench.md to this page "
                                                    "(e.g. docs/results-paper.md), its plots in a folder beside it.")) -> None:
    """Compare strategies over seeds (and task orders) at equal replay budget; resumable."""
    from pathlib import Path

    from forgetless import bench
    from forgetless.config import apply_overrides, from_dict, load_config, override_keys, strategy_name

    if config is None:
        cfg = from_dict(apply_overrides(bench.demo_config().model_dump(mode="json"), set_), "demo config",
                        override_keys(set_))
    else:
        cfg = load_config(config, set_)
    names = [strategy_name(s) for s in strategies.split(",")] if strategies is not None else list(bench.DEMO_STRATEGIES)
    out = Path(output) if output else Path("bench") / cfg.name
    t0 = __import__("time").perf_counter()

    def on_run(i, n, res):
        el = __import__("time").perf_counter() - t0
        console.print(f"[{i}/{n}] {res['strategy']} seed {res['seed']}: AP {res['metrics']['ap']:.3f}  "
                      f"(elapsed {el:.0f}s, ETA {el / i * (n - i):.0f}s)")

    if seeds < 1 or orders < 1 or jobs < 1:
        raise InputError(f"--seeds, --orders and --jobs must be at least 1 (got {seeds}, {orders}, {jobs})")
    sweep = None
    if budgets:
        try:
            sweep = [float(b) for b in budgets.split(",") if b.strip()]
        except ValueError:
            raise InputError(f"--budgets: expected comma-separated numbers, got {budgets!r}") from None
        if not sweep or any(not (0 < b < float("inf")) for b in sweep) or len(set(sweep)) != len(sweep):
            raise InputError(f"--budgets: expected distinct positive numbers, got {budgets!r}")
    payload = bench.bench(cfg, names, range(seeds), orders=orders, out=out, jobs=jobs, progress=not quiet,
                          on_run=on_run, budgets=sweep, fresh=fresh, publish=publish,
                          command=_command_line("bench"))
    console.print(_metrics_table(payload["rows"], f"bench {out}"))
    console.print(f"table: {out / 'bench.md'}")


def _command_line(name: str) -> str | None:
    """This process's command line as a user would type it (None when not run as `forgetless <name>`,
    e.g. from a test runner)."""
    if len(sys.argv) < 2 or sys.argv[1] != name:
        return None
    return shlex.join(["forgetless", *sys.argv[1:]])


@app.command("budget")
def budget_cmd(config: Optional[str] = typer.Argument(None, help="YAML config (default: the demo config)."),
               strategies: str = typer.Option("uniform,mssr", help="Comma-separated replaying strategies."),
               max_forgetting: Optional[float] = typer.Option(None, "--max-forgetting",
                                                              help="Target: forgetting at most this (e.g. 0.05)."),
               max_gap: Optional[float] = typer.Option(None, "--max-gap",
                                                       help="Target: AP at most this below joint training."),
               seeds: int = typer.Option(2, help="Seeds 0..N-1 per budget tried."),
               min_budget: float = typer.Option(0.01, "--min", help="Smallest budget to try (share of new data)."),
               max_budget: float = typer.Option(0.5, "--max", help="Largest budget to try (below 1)."),
               resolution: float = typer.Option(1.5, help="Stop when the answer and the budget below it differ "
                                                "by at most this factor."),
               set_: list[str] = typer.Option([], "--set", help="Override a config value (repeatable)."),
               output: Optional[str] = typer.Option(None, "--output", help="Directory (default bench/<name>-budget)."),
               jobs: int = typer.Option(1, "--jobs", help="Runs at once."),
               quiet: bool = typer.Option(False, "--quiet", help=QUIET_HELP)) -> None:
    """How much should I replay? The smallest replay budget per strategy that keeps forgetting (or
    the AP gap to joint training) under a target; reuses every finished run."""
    from pathlib import Path

    from forgetless import bench, budget_search
    from forgetless.config import apply_overrides, from_dict, load_config, override_keys, strategy_name

    if (max_forgetting is None) == (max_gap is None):
        raise InputError("give exactly one target: --max-forgetting X or --max-gap X")
    if not 1 <= seeds <= 1000 or jobs < 1:
        raise InputError(f"--seeds must be 1..1000 and --jobs at least 1 (got {seeds}, {jobs})")
    if max_budget >= 1:
        raise InputError(f"--max must be below 1 (a share of the new data; replay.budget >= 1 counts samples), "
                         f"got {max_budget:g}")
    if config is None:
        cfg = from_dict(apply_overrides(bench.demo_config().model_dump(mode="json"), set_), "demo config",
                        override_keys(set_))
    else:
        cfg = load_config(config, set_)
    out = Path(output) if output else Path("bench") / f"{cfg.name}-budget"
    metric, target = ("forgetting", max_forgetting) if max_forgetting is not None else ("gap", max_gap)

    def on_level(strategy, value, new, reused):
        if not quiet:
            what = "reference" if value is None else f"budget {value:g}"
            console.print(f"{strategy} {what}: {new} run(s) to do, {reused} reused", highlight=False)

    payload = budget_search.run_search(cfg, [strategy_name(s) for s in strategies.split(",") if s.strip()],
                                       list(range(seeds)), out,
                                       metric=metric, target=target, lo=min_budget, hi=max_budget,
                                       resolution=resolution, jobs=jobs, on_level=on_level)
    table = Table(title=f"smallest replay budget with {metric} <= {target:g} (mean of {seeds} seed(s))")
    for col in ("strategy", "budget", "replay samples", "replay tokens", "share of new tokens", metric, "next lower"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for a in payload["_answers"]:
        r = budget_search.answer_row(a)
        if r["budget"] is None:
            table.add_row(a.strategy, "not reached", "–", "–", "–", "–", r["reason"])
            continue
        share = f"{r['share_tokens']:.1%}" if r.get("share_tokens") is not None else "–"
        below = f"{r['below']:g} ({r['below_value']:.3f})" if r["below_value"] is not None else "–"
        table.add_row(a.strategy, f"{r['budget']:g}", f"{r['replay_samples']:,.0f}",
                      f"{r['replay_tokens']:,.0f}", share, f"{r['value']:.3f} ± {r['value_std']:.3f}", below)
    console.print(table)
    console.print(f"{payload['new_runs']} runs new, {payload['reused_runs']} reused; evidence: "
                  f"{out / 'budget.md'}  curve: {out / 'plots' / 'budget_curve.png'}", highlight=False)


@app.command()
def report(run_dir: str = typer.Argument(..., help="A run directory with results.json.")) -> None:
    """Re-render report.md, accuracy_matrix.csv and plots from results.json."""
    from pathlib import Path

    from forgetless.report import rerender

    rerender(Path(run_dir))
    console.print(f"wrote {Path(run_dir) / 'report.md'} and plots")


def _is_main() -> bool:
    import os

    return os.environ.get("RANK", "0") == "0"


def _same_command() -> str:
    """The command line that continues an interrupted bench or demo: this one, without --fresh."""
    import shlex

    return shlex.join(["forgetless", *(a for a in sys.argv[1:] if a != "--fresh")])


def main() -> None:
    """One line on stderr for every failure a user can act on: bad input (exit 2), Ctrl-C (130),
    a full disk (1); tracebacks are left for bugs. Nothing heavy (torch) is imported before the
    command runs, so --help and --version answer at once."""
    import errno

    def fail(msg: str, code: int) -> None:
        Console(stderr=True, markup=False).print(Text.assemble(("error:", "red"), f" {msg}"), highlight=False,
                                                 soft_wrap=True)
        sys.exit(code)

    try:
        app()
    except KeyboardInterrupt:  # Ctrl-C while importing, before any run started
        fail("interrupted", 130)
    except SystemExit as e:
        if e.code == 130:  # typer's exit for a Ctrl-C outside a run (loading, checking): no message of its own
            fail("interrupted", 130)
        raise
    except InputError as e:
        fail(str(e), InputError.exit_code)
    except Interrupted as e:  # experiment.RunInterrupted and bench.BenchInterrupted among them
        hint = f"; continue with: {_same_command()}" if getattr(e, "same_command", False) else ""
        fail(f"{e}{hint}", Interrupted.exit_code)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        fail(f"no space left on the device while writing {e.filename or 'a file'}; free space, then continue "
             "with --resume", 1)


if __name__ == "__main__":
    main()
