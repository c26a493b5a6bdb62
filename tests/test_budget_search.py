"""`forgetless budget`: the smallest replay budget that meets a forgetting target."""

import json
import math
import os
import subprocess
import sys

import pytest

from forgetless import budget_search
from forgetless.config import from_dict
from forgetless.errors import InputError
from forgetless.report import strategy_style


def test_grid_is_geometric_with_neighbours_within_the_resolution():
    g = budget_grid = budget_search.budget_grid(0.01, 0.5, 1.5)
    assert g[0] == 0.01 and g[-1] == 0.5 and g == sorted(set(g))
    assert all(b / a <= 1.5 * 1.01 for a, b in zip(g, g[1:]))  # 3-digit rounding may stretch a step by <1%
    assert len(budget_grid) == math.ceil(math.log(50) / math.log(1.5)) + 1
    for lo, hi, res in ((0.0, 0.5, 1.5), (0.5, 0.1, 1.5), (0.01, 0.5, 1.0), (1e-9, 0.5, 1.001)):
        with pytest.raises(InputError):
            budget_search.budget_grid(lo, hi, res)


def test_knob_is_the_memory_budget_or_the_general_share():
    assert budget_search.knob_for("uniform") == "replay.budget"
    assert budget_search.knob_for("gere+mssr") == "replay.budget"
    assert budget_search.knob_for("gere") == "replay.gere.ratio"
    with pytest.raises(InputError, match="replays nothing"):
        budget_search.knob_for("joint")


def _fake_search(curve, calls):
    """find_budget against a known forgetting curve, counting the budgets it measures."""

    def measure(search, strategy, knob, value, metric, target, joint_ap):
        calls.append(value)
        v = curve(value)
        return budget_search.Level(value, [v], [0], [0.5], 10 * value, 100 * value, 1000.0, v <= target)

    return measure


@pytest.mark.parametrize("target", [0.3, 0.1, 0.05, 0.02, 0.011])
def test_binary_search_finds_the_first_grid_point_under_the_target(monkeypatch, target):
    curve = lambda b: 0.4 * math.exp(-b / 0.05)  # forgetting falls as the budget grows
    calls = []
    monkeypatch.setattr(budget_search, "_measure", _fake_search(curve, calls))
    grid = budget_search.budget_grid(0.01, 0.5, 1.25)
    none = budget_search.Level(0.0, [0.4], [0], [0.1], 0, 0, 1000.0, 0.4 <= target)
    ans = budget_search.find_budget(None, "uniform", grid, "forgetting", target, None, none)
    first = next(b for b in grid if curve(b) <= target)
    assert ans.answer == first
    i = grid.index(first)
    if i > 0:  # the next lower budget tried does not meet it, and it is the grid neighbour
        assert ans.below == grid[i - 1] and curve(ans.below) > target
    assert len(calls) == len(set(calls)) <= 2 + math.ceil(math.log2(len(grid)))  # terminates in log steps
    assert [lv.budget for lv in ans.levels] == sorted(lv.budget for lv in ans.levels)


def test_unreachable_target_and_no_replay_needed(monkeypatch):
    calls = []
    monkeypatch.setattr(budget_search, "_measure", _fake_search(lambda b: 0.2, calls))
    grid = budget_search.budget_grid(0.01, 0.5, 2)
    none = budget_search.Level(0.0, [0.2], [0], [0.1], 0, 0, 1000.0, False)
    ans = budget_search.find_budget(None, "uniform", grid, "forgetting", 0.1, None, none)
    assert ans.answer is None and "not reached" in ans.reason and calls == [0.5]
    none.meets = True
    ans = budget_search.find_budget(None, "uniform", grid, "forgetting", 0.3, None, none)
    assert ans.answer == 0.0 and calls == [0.5]  # nothing more was run


# full fine-tuning: unicode_letter is learned in 30 steps and wiped out by first_word without replay
RAW = {
    "name": "bs",
    "model": {"lora": {"enabled": False}},
    "data": {"tasks": ["unicode_letter", "first_word"], "n_train": 200, "n_test": 30, "general_texts": 0},
    "train": {"steps_per_task": 30, "batch_size": 16, "lr": 1e-3},
    "eval": {"batch_size": 40},
    "replay": {"memory": {"size": 200}},
}


def test_search_on_the_tiny_model_meets_the_target_and_reuses_runs(tmp_path):
    cfg, out = from_dict(RAW), tmp_path / "budget"
    kw = dict(metric="forgetting", lo=0.1, hi=0.8, resolution=2.0)
    first = budget_search.run_search(cfg, ["uniform"], [0], out, target=0.0, **kw)
    levels = {lv.budget: lv for lv in first["_answers"][0].levels}
    none, top = levels[0.0], levels[0.8]
    assert none.mean > top.mean + 0.1, levels  # replay at the largest budget forgets clearly less
    assert first["new_runs"] == len(levels) and first["reused_runs"] == 0
    # a target between the two ends: the search reuses the runs it has and answers inside the grid
    target = (none.mean + top.mean) / 2
    second = budget_search.run_search(cfg, ["uniform"], [0], out, target=target, **kw)
    ans = second["_answers"][0]
    got = {lv.budget: lv for lv in ans.levels}
    assert second["reused_runs"] >= 2 and second["reused_runs"] + second["new_runs"] == len(got)
    assert ans.answer in got and got[ans.answer].mean <= target
    assert ans.below in got and got[ans.below].mean > target  # the next lower budget tried does not meet it
    row = budget_search.answer_row(ans)
    assert row["replay_samples"] > 0 and 0 < row["share_tokens"] < 1
    saved = json.loads((out / "budget.json").read_text())
    assert saved["answers"][0]["answer"] == ans.answer
    md = (out / "budget.md").read_text()
    assert f"| uniform | {ans.answer:g} |" in md and "none (no replay)" in md
    assert (out / "plots" / "budget_curve.png").stat().st_size > 1000


def test_cli_refuses_a_missing_or_double_target(tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for args in ([], ["--max-forgetting", "0.1", "--max-gap", "0.1"], ["--max-gap", "0.1", "--max", "1.5"]):
        p = subprocess.run([sys.executable, "-m", "forgetless", "budget", *args, "--output", str(tmp_path / "b")],
                           env=env, capture_output=True, text=True, timeout=120)
        assert p.returncode == 2 and p.stderr.count("\n") == 1, p.stderr
    assert not (tmp_path / "b").exists()


def test_strategy_styles_never_repeat_for_twelve_strategies():
    styles = [strategy_style(i) for i in range(12)]
    assert len({c for c, _ in styles}) == 12 and len({m for _, m in styles}) == 12
