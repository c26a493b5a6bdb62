"""Experiment trackers (TensorBoard, Weights & Biases) through Accelerate's tracking API.

``train.report_to`` picks them (default: none). Files go under ``<run>/tracking``: TensorBoard
event files in ``<run>/tracking/<name>/``, W&B's run folder in ``<run>/tracking/wandb/`` (W&B
honours ``WANDB_MODE=offline``). What is logged, by the run's global optimizer step:

- every step: ``train/loss``, ``train/new_loss``, ``train/replay_share``, ``train/tokens_per_s``,
  ``train/lr`` (and ``train/extra_loss`` when a strategy adds one);
- every stage k (0 = before training): ``score/<task>``, ``score/mean``, ``general/ppl`` (and any
  ``general/<harness metric>``), with ``stage`` = k;
- at the end: ``final/<metric>`` for AP, BWT, FWT, forgetting, learning accuracy, normalised score,
  general ability;
- once, at the start: the resolved config as hyperparameters (nested keys joined by ``.``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from forgetless.config import Config
from forgetless.errors import InputError


def accelerator_kwargs(cfg: Config, run_dir: Path) -> dict[str, Any]:
    """Arguments for ``Accelerator(...)``: the trackers and where they write."""
    if not cfg.train.report_to:
        return {}
    import importlib.util

    for name in cfg.train.report_to:
        if importlib.util.find_spec(name) is None:
            raise InputError(f"{name} is not installed: pip install {name} (or forgetless[tracking])",
                             field="train.report_to")
    return {"log_with": list(cfg.train.report_to), "project_dir": str(Path(run_dir) / "tracking")}


def flat_config(cfg: Config) -> dict[str, Any]:
    """The resolved config as flat scalars (TensorBoard's hparams take only bool/str/int/float)."""
    out: dict[str, Any] = {}

    def walk(prefix: str, v: Any) -> None:
        if isinstance(v, dict):
            for k, x in v.items():
                walk(f"{prefix}.{k}" if prefix else str(k), x)
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[prefix] = "none" if v is None else v
        else:
            out[prefix] = str(v)

    walk("", cfg.model_dump(mode="json"))
    return out


class Tracking:
    """Logs through the accelerator's trackers; does nothing when ``report_to`` is empty."""

    def __init__(self, accelerator, cfg: Config, run_dir: Path):
        self.acc, self.on = accelerator, bool(cfg.train.report_to)
        if self.on:
            wandb = {"wandb": {"dir": str(Path(run_dir) / "tracking"), "name": cfg.name}}
            (Path(run_dir) / "tracking").mkdir(parents=True, exist_ok=True)
            accelerator.init_trackers(cfg.name, config=flat_config(cfg), init_kwargs=wandb)

    def _log(self, values: dict[str, Any], step: int) -> None:
        if self.on:
            self.acc.log({k: float(v) for k, v in values.items() if v is not None}, step=step)

    def step(self, s) -> None:
        """One optimizer step (a ``train.StepLog``)."""
        self._log({"train/loss": s.loss, "train/new_loss": s.new_loss, "train/replay_share": s.replay_share,
                   "train/tokens_per_s": s.tokens_per_s, "train/lr": s.lr, "train/extra_loss": s.extra_loss}, s.step)

    def stage(self, k: int, names: list[str], row: list[float], ppl: float | None, step: int,
              general: dict[str, float] | None = None) -> None:
        values: dict[str, Any] = {f"score/{n}": v for n, v in zip(names, row)}
        values.update({"score/mean": sum(row) / len(row), "general/ppl": ppl, "stage": k})
        values.update({f"general/{key}": v for key, v in (general or {}).items()})
        self._log(values, step)

    def final(self, result: dict, step: int) -> None:
        m = result["metrics"]
        self._log({"final/ap": m.get("ap"), "final/bwt": m.get("bwt"), "final/fwt": m.get("fwt"),
                   "final/forgetting": m.get("forgetting"), "final/learning_accuracy": m.get("learning_accuracy"),
                   "final/normalized_score": (result.get("normalized_score") or {}).get("value"),
                   "final/general_ability": result.get("general_ability")}, step)

    def end(self) -> None:
        if self.on:
            self.acc.end_training()
