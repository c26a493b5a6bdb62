"""Trackers: a tiny-model run with report_to: [tensorboard] writes event files whose scalars read back."""

import json
from pathlib import Path

import pytest

from forgetless import experiment
from forgetless.config import from_dict
from forgetless.tracking import flat_config

RAW = {
    "name": "tb",
    "data": {"tasks": ["first_word", "last_word"], "n_train": 16, "n_test": 4, "general_texts": 2,
             "metrics": {"last_word": "f1"}},
    "train": {"steps_per_task": 3, "batch_size": 4, "lr": 1e-3, "report_to": ["tensorboard"]},
    "eval": {"batch_size": 8},
    "replay": {"strategy": "uniform", "memory": {"size": 8}, "uniform": {"ratio": 0.5}},
}


def _events(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    files = list((run_dir / "tracking").rglob("events.out.tfevents.*"))
    assert files, "no TensorBoard event files"
    scalars = {}
    for f in files:
        ea = EventAccumulator(str(f))
        ea.Reload()
        for tag in ea.Tags()["scalars"]:
            scalars.setdefault(tag, []).extend((e.step, e.value) for e in ea.Scalars(tag))
    return scalars


def test_tensorboard_scalars_read_back(tmp_path):
    cfg = from_dict(json.loads(json.dumps(RAW)))
    r = experiment.run(cfg, tmp_path, progress=False)
    s = _events(tmp_path / "tb")
    assert [st for st, _ in s["train/loss"]] == list(range(1, 7))  # every optimizer step
    log = [json.loads(ln) for ln in (tmp_path / "tb" / "log.jsonl").read_text().splitlines()]
    assert [v for _, v in s["train/loss"]] == pytest.approx([x["loss"] for x in log], rel=1e-6)
    assert [v for _, v in s["train/replay_share"]] == pytest.approx([x["replay_share"] for x in log], rel=1e-6)
    for tag in ("train/lr", "train/tokens_per_s"):
        assert len(s[tag]) == 6
    # one score row per stage (start + 2 tasks), the task's own metric, at the stage's global step
    rows = [r["baseline_acc"]] + r["acc"]
    assert [st for st, _ in s["score/last_word"]] == [0, 3, 6]
    assert [v for _, v in s["score/last_word"]] == pytest.approx([row[1] for row in rows], abs=1e-6)
    assert [v for _, v in s["general/ppl"]] == pytest.approx(r["general_ppl"], rel=1e-5)
    assert s["final/ap"][0][1] == pytest.approx(r["metrics"]["ap"], abs=1e-6)
    assert r["task_metrics"] == ["exact_match", "f1"]
    # the last task's final score is its score right after training: ratio 1 (or undefined at 0)
    assert r["normalized_score"]["per_task"][1] == (1.0 if r["acc"][1][1] > 0 else None)


def test_flat_config_is_scalar_only():
    flat = flat_config(from_dict(RAW))
    assert flat["train.report_to"] == "['tensorboard']" and flat["train.lr"] == 1e-3
    assert flat["model.revision"] == "none"
    assert all(isinstance(v, (bool, int, float, str)) for v in flat.values())


def test_wandb_offline_run_writes_its_run_file(tmp_path, monkeypatch):
    """W&B 0.31 keeps offline runs in a binary .wandb file (no reader in its Python package), so
    this checks the run finishes with W&B on and leaves its offline run under <run>/tracking."""
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    raw = {"name": "wb", "data": {"tasks": ["first_word"], "n_train": 8, "n_test": 2, "general_texts": 0},
           "train": {"steps_per_task": 2, "batch_size": 4, "report_to": ["wandb"]}, "replay": {"strategy": "none"}}
    r = experiment.run(from_dict(raw), tmp_path, progress=False)
    runs = list((tmp_path / "wb" / "tracking" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1 and runs[0].stat().st_size > 0 and r["metrics"]["n_tasks"] == 1
