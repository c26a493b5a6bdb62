"""The bench grid, the CLI's report/data commands, and strategy-level end-to-end properties."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from forgetless import bench, experiment
from forgetless.config import from_dict

RAW = {
    "name": "b",
    "data": {"tasks": ["first_word", "last_word"], "n_train": 48, "n_test": 12, "general_texts": 4},
    "train": {"steps_per_task": 6, "batch_size": 8, "lr": 1e-3},
    "eval": {"batch_size": 16},
    "replay": {"budget": 0.5, "memory": {"size": 24}},
}


def _cli(*args, cwd=None, warnings="ignore"):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS=warnings)
    return subprocess.run([sys.executable, "-m", "forgetless", *args], env=env, capture_output=True, text=True,
                          timeout=600, cwd=cwd)


def test_bench_two_strategies_rows_and_skip_finished(tmp_path):
    cfg = from_dict(RAW)
    out = tmp_path / "bench"
    seen = []
    payload = bench.bench(cfg, ["none", "uniform"], [0], out=out, progress=False,
                          on_run=lambda i, n, r: seen.append((i, n, r["strategy"])))
    assert seen == [(1, 2, "none"), (2, 2, "uniform")]
    saved = json.loads((out / "bench.json").read_text())
    assert [r["strategy"] for r in saved["rows"]] == ["none", "uniform"]
    assert len(saved["runs"]) == 2 and len(saved["results"]) == 2
    rows = {r["strategy"]: r for r in payload["rows"]}
    assert rows["none"]["replay_tokens"] == 0 and rows["uniform"]["replay_tokens"] > 0
    assert rows["uniform"]["overhead"] == pytest.approx(1.0)
    # budget 0.5 of 6 steps x 8 samples = 24 replay samples in task 2, within 5%
    uni = next(r for r in saved["results"] if r["strategy"] == "uniform")
    assert abs(uni["counters"]["replay_samples"] - 24) <= 0.05 * 24
    assert rows["uniform"]["spent_share"] == 1.0 and rows["none"]["spent_share"] is None  # every_step spends it all
    md = (out / "bench.md").read_text()
    assert "| replay smp | replay tok | spent/budget |" in md and "| 24 | " in md
    assert "| none |" in md and "| uniform |" in md and "AP" in md
    assert "| probe |" not in md  # no data.general_probe: no empty column
    assert "| strategy | first_word | last_word |" in md and "| *start (base model)* |" in md
    assert "| strategy | stage 0 | stage 1 | stage 2 |" in md  # perplexity per stage
    assert "right after its own training" in md
    own = [r["task_own"] for r in saved["runs"] if r["strategy"] == "none"][0]
    acc = [r["acc"] for r in saved["results"] if r["strategy"] == "none"][0]
    assert own == [acc[0][0], acc[1][1]]  # the diagonal
    for name in ("ap_vs_replay_tokens.png", "task_accuracy.png", "accuracy_matrices.png"):
        assert (out / "plots" / name).stat().st_size > 1000
    # re-running skips finished runs: their results.json is not rewritten
    stamp = {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/results.json")}
    page = tmp_path / "docs" / "results-b.md"
    again = bench.bench(cfg, ["none", "uniform"], [0], out=out, progress=False,
                        command="forgetless bench b.yaml --publish docs/results-b.md", publish=page)
    assert {p: p.stat().st_mtime_ns for p in (out / "runs").glob("*/results.json")} == stamp
    assert again["rows"][0]["ap"] == payload["rows"][0]["ap"]
    # when replay happened: the quarters add up to what was replayed
    q = next(r for r in again["runs"] if r["strategy"] == "uniform")["replay_quarters"]
    assert sum(q) == uni["counters"]["replay_samples"] and min(q) > 0
    assert next(r for r in again["runs"] if r["strategy"] == "none")["replay_quarters"] == [0, 0, 0, 0]
    # the published page: the command at its top, the same tables, its own copy of the plots
    text = page.read_text()
    assert text.index("forgetless bench b.yaml --publish docs/results-b.md") < text.index("| strategy |")
    assert "| strategy | 1st quarter | 2nd | 3rd | 4th | train s/step |" in text
    assert "](results-b/ap_vs_replay_tokens.png)" in text and "](plots/" not in text
    assert (tmp_path / "docs" / "results-b" / "accuracy_matrices.png").stat().st_size > 1000


def test_budget_sweep_runs_every_budget_and_pairs_seeds(tmp_path):
    cfg = from_dict({**RAW, "train": {**RAW["train"], "steps_per_task": 4}})
    out = tmp_path / "sweep"
    payload = bench.bench(cfg, ["uniform", "mssr_sampler"], [0, 1], out=out, progress=False, budgets=[0.25, 0.5])
    runs = sorted(p.name for p in (out / "runs").iterdir())
    assert runs == sorted(f"{s}-seed{x}-order0-budget{b:g}" for s in ("uniform", "mssr_sampler")
                          for x in (0, 1) for b in (0.25, 0.5))
    rows = {(r["strategy"], r["budget"]): r for r in payload["rows"]}
    assert set(rows) == {(s, b) for s in ("uniform", "mssr_sampler") for b in (0.25, 0.5)}
    # task 2 replays budget x 4 steps x 8 samples: 8 at 0.25, 16 at 0.5
    for (s, b), r in rows.items():
        assert r["n_runs"] == 2 and r["overhead"] is not None
    by = {(r["strategy"], r["budget"], r["seed"]): r for r in payload["runs"]}
    assert {by[("uniform", b, 0)]["replay_samples"] for b in (0.25, 0.5)} == {8, 16}
    pairs = bench.paired(payload["runs"], "mssr_sampler", "uniform")
    assert [(p["budget"], p["seeds"]) for p in pairs] == [(0.25, [0, 1]), (0.5, [0, 1])]
    p = pairs[0]
    want = [by[("mssr_sampler", 0.25, x)]["ap"] - by[("uniform", 0.25, x)]["ap"] for x in (0, 1)]
    assert p["diffs"] == pytest.approx(want) and p["wins"] == sum(d > 0 for d in want)
    md = (out / "bench.md").read_text()
    assert "| mssr_sampler | 0.25 |" in md and "Paired AP differences" in md and "| mssr_sampler | uniform | 0.5 | 0 |" in md
    assert (out / "plots" / "ap_vs_replay_tokens.png").stat().st_size > 1000


def test_bench_rejects_bad_budgets(tmp_path):
    r = _cli("bench", "--budgets", "0.1,x", "--output", str(tmp_path / "b"))
    assert r.returncode == 2 and "--budgets" in r.stderr and not (tmp_path / "b").exists()


def test_task_orders_are_permutations_shared_by_strategies():
    assert bench.task_order(4, 0) == [0, 1, 2, 3]
    o1 = bench.task_order(4, 1)
    assert sorted(o1) == [0, 1, 2, 3] and o1 == bench.task_order(4, 1)
    for n in (2, 3):  # never the listed order again (the first draw for 3 tasks, order 1, was)
        assert all(bench.task_order(n, i) != list(range(n)) for i in range(1, 6))


def test_mssr_gaps_do_not_shrink_and_events_recorded(tmp_path):
    cfg = from_dict({**RAW, "name": "m", "train": {**RAW["train"], "steps_per_task": 12},
                     "replay": {**RAW["replay"], "strategy": "mssr", "mssr": {"schedule": "geometric"}}})
    r = experiment.run(cfg, tmp_path, progress=False)
    steps = [e["step"] for e in r["replay_events"] if e["task"] == 1]
    assert len(steps) >= 3 and steps[0] == 13  # first step of task 2 replays
    gaps = np.diff(steps)
    assert (np.diff(gaps) >= 0).all(), steps
    assert sum(e["n_samples"] for e in r["replay_events"]) == r["counters"]["replay_samples"]


def test_gere_keeps_general_perplexity_closer_to_start_than_none(tmp_path):
    base = {**RAW, "model": {"lora": {"enabled": False}},
            "data": {**RAW["data"], "general_texts": 8},
            "train": {**RAW["train"], "steps_per_task": 15, "lr": 2e-3}}
    ppl = {}
    for s in ("none", "gere"):
        cfg = from_dict({**base, "name": s, "replay": {"strategy": s, "gere": {
            "n_samples": 32, "seq_len": 64, "weight": 1.0, "per_batch": 4}}})
        ppl[s] = experiment.run(cfg, tmp_path, progress=False)["general_ppl"]
    assert ppl["none"][0] == pytest.approx(ppl["gere"][0])
    assert ppl["none"][-1] > 1.5 * ppl["none"][0]  # fine-tuning does hurt general text
    assert ppl["gere"][-1] < ppl["none"][-1]


def test_report_rerenders_from_results_json(tmp_path):
    cfg = from_dict({**RAW, "name": "r", "replay": {"strategy": "none"}})
    experiment.run(cfg, tmp_path, progress=False)
    run_dir = tmp_path / "r"
    (run_dir / "report.md").unlink()
    (run_dir / "plots" / "accuracy_matrix.png").unlink()
    p = _cli("report", str(run_dir))
    assert p.returncode == 0, p.stderr
    assert "Score matrix" in (run_dir / "report.md").read_text()
    assert (run_dir / "plots" / "accuracy_matrix.png").is_file()
    bad = _cli("report", str(tmp_path / "nothing"))
    assert bad.returncode == 2 and "results.json" in bad.stderr


def test_data_list_json_and_show():
    p = _cli("data", "list", "--json")
    assert p.returncode == 0, p.stderr
    rows = json.loads(p.stdout)
    assert len(rows) >= 6
    assert {"generation", "multiple_choice"} <= {r["kind"] for r in rows}
    from forgetless.data.builtin import BUILTIN

    mine = [r for r in rows if r["name"] in BUILTIN]  # the paper tasks (their wheel) have their own sizes
    assert len(mine) == len(BUILTIN) and all(r["n_train"] >= 400 and r["n_test"] >= 100 for r in mine)
    show = _cli("data", "show", "first_word", "-n", "2")
    assert show.returncode == 0 and show.stdout.count("prompt:") == 2


def test_quick_demo_shows_forgetting_and_its_cure(tmp_path):
    p = _cli("demo", "--quick", "--output", str(tmp_path / "demo"), "--quiet", warnings="default")
    assert p.returncode == 0, p.stderr[-3000:]
    assert p.stderr == "", p.stderr[-3000:]  # no library warnings (every Python warning shown once)
    assert "none" in p.stdout and "uniform" in p.stdout
    saved = json.loads((tmp_path / "demo" / "quick" / "bench.json").read_text())
    rows = {r["strategy"]: r for r in saved["rows"]}
    assert rows["none"]["bwt"] < -0.3  # sequential fine-tuning forgets
    assert rows["uniform"]["forgetting"] < rows["none"]["forgetting"] - 0.2  # replay cures much of it
    assert (tmp_path / "demo" / "quick" / "plots" / "task_accuracy.png").is_file()


def test_paired_wins_count_only_real_differences():
    """Equal scores summed in another order differ by float rounding; that is a tie, not a win."""
    runs = [{"strategy": s, "seed": seed, "order": 0, "budget": 0.05, "ap": ap}
            for s, seed, ap in [("a", 0, 0.1 + 0.2), ("b", 0, 0.3), ("a", 1, 0.5), ("b", 1, 0.4),
                                ("a", 2, 0.2), ("b", 2, 0.25)]]
    (p,) = bench.paired(runs, "a", "b")
    assert p["seeds"] == [0, 1, 2] and p["diffs"][0] > 0  # 0.1 + 0.2 > 0.3 in floats
    assert p["wins"] == 1


def test_bench_orders_refused_for_a_benchmark_preset(tmp_path):
    """A preset's orders are the papers'; bench's random permutations would silently be other streams."""
    from forgetless.errors import InputError

    cfg = from_dict({"data": {"benchmark": "cl4", "benchmark_dir": str(tmp_path)}})
    with pytest.raises(InputError, match="benchmark_order"):
        bench.grid_configs(cfg, ["uniform"], [0], 2)
    assert len(bench.grid_configs(cfg, ["uniform"], [0], 1)) == 1


def test_per_task_and_per_stage_tables_are_means_over_seeds():
    def run(strategy, seed, start, end, ppl, probe):
        return {"strategy": strategy, "seed": seed, "order": 0, "tasks": ["a", "b"], "task_start": start,
                "task_end": end, "ppl_stages": ppl, "probe_stages": probe}

    runs = [run("none", 0, [0.0, 0.5], [0.2, 0.9], [10.0, 20.0], [0.5, 0.4]),
            run("none", 1, [0.2, 0.5], [0.4, 0.7], [12.0, 30.0], [0.7, 0.2]),
            run("uniform", 0, [0.0, 0.5], [0.6, 0.8], [10.0, 14.0], [0.5, 0.5]),
            run("uniform", 1, [0.2, 0.5], [0.8, 0.8], [12.0, 16.0], [0.7, 0.7])]
    tasks = bench.per_task_md(runs, ["none", "uniform"]).splitlines()
    # the start row: one value per seed (not per run), mean ± population std
    assert tasks[2] == "| *start (base model)* | 0.100 ± 0.100 | 0.500 ± 0.000 |"
    assert tasks[3] == "| none | 0.300 ± 0.100 | 0.800 ± 0.100 |"
    assert tasks[4] == "| uniform | 0.700 ± 0.100 | 0.800 ± 0.000 |"
    for r, own in zip(runs, ([0.5, 0.9], [0.7, 0.7], [0.6, 0.8], [0.8, 0.9])):
        r["task_own"] = own
    own = bench.per_task_md(runs, ["none", "uniform"], "task_own").splitlines()
    assert own[2] == tasks[2]  # the same start row
    assert own[3] == "| none | 0.600 ± 0.100 | 0.800 ± 0.100 |"
    assert own[4] == "| uniform | 0.700 ± 0.100 | 0.850 ± 0.050 |"
    ppl = bench.per_stage_md(runs, ["none", "uniform"], "ppl_stages", 1).splitlines()
    assert ppl[0] == "| strategy | stage 0 | stage 1 |"
    assert ppl[2] == "| none | 11.0 ± 1.0 | 25.0 ± 5.0 |" and ppl[3] == "| uniform | 11.0 ± 1.0 | 15.0 ± 1.0 |"
    probe = bench.per_stage_md(runs, ["none"], "probe_stages", 3).splitlines()
    assert probe[2] == "| none | 0.600 ± 0.100 | 0.300 ± 0.100 |"
    assert bench.per_stage_md([run("none", 0, [0], [0], [1.0], None)], ["none"], "probe_stages", 3) == ""


def test_bench_workers_get_their_own_gpu(monkeypatch):
    import multiprocessing
    import os

    from forgetless.bench import _take_gpu, visible_gpus, worker_gpus

    assert worker_gpus(4, ["0", "1"]) == ["0", "1", "0", "1"]
    assert worker_gpus(2, ["3", "5", "6"]) == ["3", "5"]
    assert worker_gpus(2, []) == [None, None]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2, 7")
    assert visible_gpus() == ["2", "7"]
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    seen = []
    for _ in range(3):  # what each new worker process does first, in the order they start
        _take_gpu(worker_gpus(3, ["2", "7"]), counter)
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["2", "7", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "x")
    _take_gpu([None], counter)  # no GPU: the environment is left alone
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "x"


def test_calibration_table_means_over_runs_and_counts_probes():
    cal = lambda r, c, beats, top: {"spearman": {"model": r, "recency": c}, "beats": beats, "paired": 4, "top10": top}
    runs = [{"strategy": "mssr", "budget": 0.05, "calibration": cal(0.2, 0.1, 3, 0.5)},
            {"strategy": "mssr", "budget": 0.05, "calibration": cal(0.4, 0.3, 1, 0.7)},
            {"strategy": "uniform", "budget": 0.05, "calibration": None}]
    md = bench.calibration_table_md(runs, ["mssr", "uniform"])
    lines = md.splitlines()
    assert lines[0] == "| strategy | budget | Spearman model | Spearman recency | model beats recency | top-10% mass | runs |"
    assert lines[2] == "| mssr | 0.05 | 0.300 ± 0.100 | 0.200 ± 0.100 | 4 / 8 probes | 0.60 ± 0.10 | 2 |"
    assert len(lines) == 3  # uniform keeps no memory model: no row
    assert bench.calibration_table_md(runs[2:], ["uniform"]) == ""
