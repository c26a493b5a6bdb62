"""Tasks and task streams: built-in tasks, user task files, tokenization."""

from __future__ import annotations

from pathlib import Path

from forgetless.config import DataConfig, TaskFileConfig
from forgetless.data.task import KINDS, Example, Sample, Task, TaskStream, check_splits
from forgetless.errors import InputError
from forgetless.scoring import metric_for

__all__ = ["KINDS", "Example", "Sample", "Task", "TaskStream", "load_task", "load_stream"]


def load_task(spec: str | TaskFileConfig) -> Task:
    """A built-in task name, a task file path, or a TaskFileConfig. Its splits are fixed by its data
    (data.task.split_by_hash): the run's seed never changes them."""
    from forgetless.data.builtin import BUILTIN, build_builtin
    from forgetless.data.loaders import load_task_file

    if isinstance(spec, TaskFileConfig):
        return load_task_file(spec)
    if spec in BUILTIN:
        return build_builtin(spec)
    if Path(spec).exists():
        return load_task_file(TaskFileConfig(path=spec))
    raise InputError(f"{spec!r} is neither a built-in task ({', '.join(BUILTIN)}) nor an existing file",
                     field="data.tasks")


def load_stream(data_cfg: DataConfig) -> TaskStream:
    """Tasks in training order, capped at ``n_train`` / ``n_test`` examples each, each with the
    metric it is scored by (``data.metrics``, else the task's own, else its kind's default).
    Every task's splits are checked here, whatever its source, before a run writes anything."""
    if data_cfg.benchmark is not None:
        from forgetless.data.benchmarks import load_benchmark

        tasks = load_benchmark(data_cfg.benchmark, data_cfg.benchmark_dir, data_cfg.benchmark_order)
    else:
        tasks = [load_task(s) for s in data_cfg.tasks]
    if not tasks:
        raise InputError("no tasks given", field="data.tasks")
    for t in tasks:
        check_splits(t)
    names = [t.name for t in tasks]
    dups = sorted({n for n in names if names.count(n) > 1})
    if dups:
        raise InputError(f"duplicate task names {dups}; give file tasks a distinct 'name'", field="data.tasks")
    if data_cfg.order is not None:
        if sorted(data_cfg.order) != list(range(len(tasks))):
            raise InputError(f"must be a permutation of 0..{len(tasks) - 1}, got {data_cfg.order}",
                             field="data.order")
        tasks = [tasks[i] for i in data_cfg.order]
    unknown = sorted(set(data_cfg.metrics) - set(names))
    if unknown:
        raise InputError(f"names no task of the stream: {unknown}", field="data.metrics")
    for t in tasks:
        try:
            t.metric = metric_for(t.kind, data_cfg.metrics.get(t.name) or t.metric)
        except ValueError as e:
            raise InputError(f"task '{t.name}': {e}", field="data.metrics") from None
        if data_cfg.n_train is not None:
            t.train = t.train[: data_cfg.n_train]
        if data_cfg.n_test is not None:
            t.test = t.test[: data_cfg.n_test]
    return TaskStream(tasks=tasks)
