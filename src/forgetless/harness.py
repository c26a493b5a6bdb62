"""General ability with lm-evaluation-harness, on the model in memory.

``eval.general_tasks`` names harness tasks (``mmlu``, ``arc_easy``, ... or tasks defined by YAML
files in ``eval.general_task_dir``). They run through lm-eval's Python API on the current
(LoRA-wrapped) model: ``HFLM(pretrained=<model object>)`` wraps it, nothing is reloaded. The
harness needs its data: offline, it must already be in the Hugging Face datasets cache or be
local files a task YAML points at (``dataset_path: json`` + ``dataset_kwargs.data_files``).
"""

from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path
from typing import Any

from forgetless.errors import InputError


def _flatten(results: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{"mmlu": {"acc,none": 0.4, "acc_stderr,none": ...}}`` -> ``{"mmlu/acc": 0.4}``: numeric
    metrics only, no standard errors, the ``,none`` filter suffix dropped."""
    out: dict[str, float] = {}
    for task, metrics in results.items():
        for key, v in metrics.items():
            name, _, filt = key.partition(",")
            if "stderr" in name or isinstance(v, bool) or not isinstance(v, (int, float)) or name == "sample_len":
                continue
            if isinstance(v, float) and not math.isfinite(v):
                continue
            out[f"{task}/{name}" + (f"_{filt}" if filt and filt != "none" else "")] = float(v)
    return out


def code_in_task_dir(task_dir: str) -> str | None:
    """Where a task YAML under ``task_dir`` (or a YAML it includes) makes lm-eval run Python: a
    ``!function`` tag imports the user's .py file when the task is built (``class: !function`` even
    replaces the task). "file:line: tag", or None. Only tags are code to lm-eval; plain keys are data."""
    import yaml

    standard = "tag:yaml.org,2002:"
    seen: set[Path] = set()

    def scan(f: Path) -> str | None:
        f = f.resolve()
        if f in seen or not f.is_file():
            return None
        seen.add(f)
        try:
            docs = list(yaml.compose_all(f.read_text(encoding="utf-8-sig"), Loader=yaml.SafeLoader))
        except (yaml.YAMLError, OSError, UnicodeDecodeError):  # lm-eval reports a file it cannot read
            return None
        stack = [d for d in docs if d is not None]
        while stack:
            node = stack.pop()
            if not node.tag.startswith(standard):
                return f"{f}:{node.start_mark.line + 1}: {node.tag}"
            if isinstance(node, yaml.MappingNode):
                for k, v in node.value:
                    if k.value == "include" and isinstance(v, yaml.ScalarNode):  # lm-eval: relative to the file
                        found = scan(Path(v.value) if Path(v.value).is_absolute() else f.parent / v.value)
                        if found:
                            return found
                    stack += [k, v]
            elif isinstance(node, yaml.SequenceNode):
                stack += node.value
        return None

    for f in sorted(Path(task_dir).expanduser().rglob("*")):
        if f.suffix in (".yaml", ".yml"):
            found = scan(f)
            if found:
                return found
    return None


@lru_cache(maxsize=4)
def _task_manager(task_dir: str | None):
    """Indexing the harness's task YAMLs takes seconds: once per folder and process."""
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=task_dir) if task_dir else TaskManager()


def run_general_tasks(model, tokenizer, tasks: list[str], *, task_dir: str | None = None,
                      limit: int | None = None, batch_size: int = 16, device=None) -> dict[str, float]:
    """Scores of ``tasks`` on ``model`` as flat ``{"<task>/<metric>": value}``.

    InputError (one line) when the harness is missing, a task is unknown, or its data cannot be
    loaded (e.g. offline without a local copy). The model's training mode is restored.
    """
    try:
        import lm_eval
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        raise InputError("eval.general_tasks needs lm-evaluation-harness: pip install lm-eval") from None
    was_training = model.training
    try:
        lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size,
                  device=str(device) if device is not None else "cpu")
        manager = _task_manager(task_dir)
        unknown = [t for t in tasks if t not in manager.all_tasks]
        if unknown:
            raise InputError(f"lm-eval knows no task {unknown}" + (f" (also searched {task_dir})" if task_dir else ""),
                             field="eval.general_tasks")
        res = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                      log_samples=False, bootstrap_iters=0, verbosity="ERROR")
    except InputError:
        raise
    except Exception as e:  # offline: ConnectionError / DatasetNotFoundError / FileNotFoundError, ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise InputError(f"lm-eval could not run {list(tasks)} ({type(e).__name__}: {first}); offline the "
                         "harness needs its data in the Hugging Face cache, or a local task YAML in "
                         "eval.general_task_dir", field="eval.general_tasks") from None
    finally:
        model.train(was_training)
    return _flatten(res["results"])
