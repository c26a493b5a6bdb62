"""Command line: parse, call, print. No logic lives here."""

from __future__ import annotations

import json
import sys
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from forgetless.errors import InputError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Continual fine-tuning of causal LMs with replay.")
data_app = typer.Typer(no_args_is_help=True, help="The built-in offline task suite.")
app.add_typer(data_app, name="data")
console = Console()


@data_app.command("list")
def data_list(as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
              seed: int = typer.Option(0, help="Seed the tasks are generated with.")) -> None:
    """Show the built-in tasks: name, kind, train/test counts, source."""
    from forgetless.data.builtin import describe_tasks

    rows = describe_tasks(seed=seed)
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="built-in tasks")
    for col in ("name", "kind", "n_train", "n_test", "source"):
        table.add_column(col, justify="right" if col.startswith("n_") else "left")
    for r in rows:
        table.add_row(r["name"], r["kind"], str(r["n_train"]), str(r["n_test"]), r["source"])
    console.print(table)


@data_app.command("show")
def data_show(task: str = typer.Argument(..., help="Built-in task name, or a task file path."),
              n: int = typer.Option(5, "-n", help="How many examples."),
              split: str = typer.Option("train", help="train or test"),
              seed: int = typer.Option(0)) -> None:
    """Print examples of a task."""
    from forgetless.data import load_task

    t = load_task(task, seed=seed)
    examples = t.train if split == "train" else t.test
    console.print(f"[bold]{t.name}[/bold] ({t.kind}, {len(t.train)} train / {len(t.test)} test) — {t.source}")
    for ex in examples[:n]:
        console.print(f"[cyan]prompt:[/cyan] {ex.prompt!r}")
        if ex.choices is not None:
            console.print(f"  [magenta]choices:[/magenta] {list(ex.choices)}  [green]answer:[/green] {ex.answer}")
        console.print(f"  [green]target:[/green] {ex.target!r}")


def main() -> None:
    try:
        app()
    except InputError as e:
        Console(stderr=True).print(f"[red]error:[/red] {e}", highlight=False, soft_wrap=True)
        sys.exit(InputError.exit_code)


if __name__ == "__main__":
    main()
