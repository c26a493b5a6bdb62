"""Every replay preset reproduces, bit for bit, what the code before the schedule x sampler split did.

tests/fixtures/replay_presets.json was written by tests/helpers/replay_fixture.py at commit
"fixture of every preset" (before the refactor): accuracy matrix, replay events and replayed ids.
Two entries were re-recorded on purpose when the one replay budget replaced the pacer that forced
unspent budget into a task's last steps: ``loss_triggered@0.5`` (before: 8 samples at each of the
last 4 steps of tasks 2 and 3; now one triggered step, 13) and ``accuracy_triggered@0.5`` (before:
the same forced 32 + 32; now no replay: it never triggers on this stream).
"""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
import replay_fixture  # noqa: E402

EXPECTED = json.loads(replay_fixture.FIXTURE.read_text())


@pytest.mark.parametrize("preset,budget", replay_fixture.CASES, ids=[replay_fixture.key(*c) for c in replay_fixture.CASES])
def test_preset_reproduces_recorded_run(preset, budget, tmp_path):
    got = replay_fixture.record(preset, budget, tmp_path)
    # no strategy reads a test example while training (issue 19): accuracy_triggered probes dev
    assert got["test_reads"] == []
    want = EXPECTED[replay_fixture.key(preset, budget)]
    assert got["replayed_ids"] == want["replayed_ids"]
    assert got["events"] == want["events"]
    assert got["acc"] == want["acc"] and got["baseline_acc"] == want["baseline_acc"]
    assert got["replay_tokens"] == want["replay_tokens"]


def test_retention_trace_in_results_and_report_plot(tmp_path):
    """A strength-keeping run records the predicted retention per step and plots it with the events."""
    from forgetless import experiment
    from forgetless.report import retention_trace

    cfg = replay_fixture.config("mssr_schedule", 0.5)
    cfg.replay.mssr.schedule = "retention"
    cfg.replay.mssr.calibration.every = 4  # the calibration probe: results.json, report.md, its plot
    res = experiment.run(cfg, tmp_path, progress=False)
    tr = retention_trace(res)
    steps = res["steps_per_task"]
    assert tr["step"] == list(range(steps[0] + 1, sum(steps) + 1))  # every step once the memory holds a task
    assert all(0 < m <= 1 for m in tr["mean"])
    rep = res["replay_report"]
    assert (rep["schedule"], rep["sampler"]) == ("mssr", "uniform")
    assert [e["replayed"] for e in rep["task_log"][1:]] == [32, 32]  # budget 0.5 x 8 steps x 8 samples
    vol = res["replay_volume"]  # per quarter, from the replay events; the ledger from the one budget
    assert [sum(v["samples"]) for v in vol] == [0, 32, 32] and [v["spent"] for v in vol] == [0, 32, 32]
    assert sum(sum(v["tokens"]) for v in vol) == res["counters"]["replay_tokens"]
    assert [v["underspend"] for v in vol] == [0, 0, 0]
    assert (tmp_path / cfg.name / "plots" / "retention.png").is_file()
    md = (tmp_path / cfg.name / "report.md").read_text()
    assert "plots/retention.png" in md and "## Replay per quarter of each task" in md
    cal = rep["calibration"]
    assert cal["probes"] == 4 and [r["step"] for r in cal["records"]] == [12, 16, 20, 24]  # memory from step 9
    assert cal["spearman_mean"]["constant"] is None and sum(cal["bins"]["n"]) == 4 * min(cal["rows"], 24)
    # the legacy model drives (the fixture's): the probe and its shadow fitted model's stored losses
    # are evaluation work, not the strategy's
    assert res["counters"]["eval_tokens"] > 0 and res["counters"]["extra_forward_tokens"] == 0
    assert (tmp_path / cfg.name / "plots" / "calibration.png").is_file()
    assert "Memory model calibration" in (tmp_path / cfg.name / "report.md").read_text()
    assert [e["task"] for e in rep["concentration"]] == [1, 2]


def test_replay_per_quarter_in_results_and_report():
    """Replay volume per quarter of each task (samples and tokens) and the budget ledger, hand-computed."""
    from forgetless import metrics
    from forgetless.report import replay_volume, report_md

    res = {"name": "q", "strategy": "uniform", "model": "tiny", "seed": 0, "tasks": ["a", "b"],
           "acc": [[1.0, 0.0], [0.5, 1.0]], "baseline_acc": [0.0, 0.0],
           "metrics": metrics.compute([[1.0, 0.0], [0.5, 1.0]]), "general_ppl": [None], "counters": {},
           "steps_per_task": [8, 8],  # task b: global steps 9..16, quarters of 2 steps
           "replay_events": [{"step": 9, "task": 1, "n_samples": 3, "n_tokens": 30},
                             {"step": 11, "task": 1, "n_samples": 2, "n_tokens": 20},
                             {"step": 16, "task": 1, "n_samples": 1, "n_tokens": 5}],
           "replay_report": {"budget": [{"task": 0, "budget": 0, "spent": 0, "underspend": 0},
                                        {"task": 1, "budget": 10, "spent": 6, "underspend": 4}]}}
    v = replay_volume(res)
    assert v[1] == {"task": "b", "budget": 10, "spent": 6, "underspend": 4, "samples": [3, 2, 0, 1], "tokens": [30, 20, 0, 5]}
    assert v[0]["samples"] == [0, 0, 0, 0] and v[0]["underspend"] == 0
    md = report_md(res)
    assert "| b | 10 | 6 | 4 | 3 / 30 | 2 / 20 | 0 / 0 | 1 / 5 |" in md
    for e in res["replay_events"]:  # results written before events carried tokens
        del e["n_tokens"]
    assert replay_volume(res)[1]["tokens"] is None and "| 3 / – | 2 / – |" in report_md(res)
