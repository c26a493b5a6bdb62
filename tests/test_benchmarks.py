"""Benchmark presets read fixture folders written in the public repositories' exact formats."""

import subprocess
import sys
from pathlib import Path

import pytest

from forgetless.config import DataConfig, from_dict
from forgetless.data import load_stream
from forgetless.data.benchmarks import ORDERS
from forgetless.errors import InputError

FIX = Path(__file__).parent / "fixtures" / "benchmarks"
DIRS = {"cl5": FIX / "CL_Benchmark", "cl4": FIX / "CL_Benchmark", "long15": FIX / "CL_Benchmark",
        "trace": FIX / "TRACE", "superni15": FIX / "SuperNI"}
SIZES = {"cl5": 5, "cl4": 4, "long15": 15, "trace": 8, "superni15": 15}


def stream(bench, order, **kw):
    return load_stream(DataConfig(benchmark=bench, benchmark_order=order, benchmark_dir=str(DIRS[bench]), **kw))


@pytest.mark.parametrize("bench,order", [(b, o) for b in ORDERS for o in ORDERS[b]])
def test_every_preset_and_order_loads_in_order(bench, order):
    s = stream(bench, order)
    assert len(s) == SIZES[bench]
    assert s.names == ORDERS[bench][order]
    for t in s.tasks:
        assert t.train and t.test


def test_published_orders():
    assert stream("cl5", 1).names == ["yelp", "agnews", "dbpedia", "amazon", "yahoo"]
    assert stream("cl4", 1).names == ["dbpedia", "amazon", "yahoo", "agnews"]
    assert stream("long15", 4).names[:4] == ["mnli", "cb", "wic", "copa"]
    assert stream("trace", 1).names == ["C-STANCE", "FOMC", "MeetingBank", "Py150", "ScienceQA",
                                        "NumGLUE-cm", "NumGLUE-ds", "20Minuten"]
    assert stream("superni15", 2).names[0] == "task748_glucose_reverse_cause_event_detection"


def test_olora_prompts_labels_and_metric():
    ag = stream("cl4", 1).tasks[3]
    assert ag.name == "agnews" and ag.kind == "multiple_choice" and ag.metric == "accuracy"
    ex = ag.train[1]
    assert ex.choices == ("World", "Sports", "Business", "Science or Technology")
    assert ex.target == "Sports" and ex.answer == 1
    assert ex.prompt == ("Task:TC\nDataset:agnews\nWhat is the topic of the following paragraph? Choose one "
                         "from the option.\nOption: World, Sports, Business, Science or Technology \n"
                         "agnews training sentence 1.\nAnswer:")
    long = {t.name: t for t in stream("long15", 4).tasks}
    assert len(long["mnli"].test) == 2  # the '-' record outside labels.json is skipped
    assert len(long["cb"].test) == 2  # CB has dev.json instead of test.json
    assert long["copa"].train[0].prompt == "Task:COPA\nDataset:COPA\ncopa training sentence 0.\nAnswer:"


def test_trace_and_superni_metrics_and_prompts():
    tr = {t.name: t for t in stream("trace", 1).tasks}
    assert tr["MeetingBank"].metric == "rouge_l" and tr["Py150"].metric == "edit_similarity"
    assert tr["FOMC"].metric == "exact_match" and tr["FOMC"].kind == "generation"
    assert tr["FOMC"].train[0].prompt == "FOMC train question 0\nAnswer:" and tr["FOMC"].train[0].target == "answer 0"
    sn = stream("superni15", 1).tasks[0]
    assert sn.metric == "rouge_l" and sn.train[2].target == "output 2"
    assert sn.train[0].prompt.startswith("Definition: In this task (task1572_samsum_summary)")
    assert sn.train[0].prompt.endswith("Input: train input 0\nOutput: ")
    assert sn.test[0].target == "output 0" and sn.test[0].references == ("another acceptable summary",)


def test_metric_override_and_caps():
    s = stream("trace", 1, metrics={"FOMC": "f1"}, n_train=2, n_test=1)
    fomc = s.tasks[1]
    assert fomc.metric == "f1" and len(fomc.train) == 2 and len(fomc.test) == 1
    with pytest.raises(InputError, match="does not apply"):
        stream("cl4", 1, metrics={"agnews": "rouge_l"})


def test_missing_and_wrong_folders_give_one_line(tmp_path):
    with pytest.raises(InputError) as e:
        load_stream(DataConfig(benchmark="cl4", benchmark_dir=str(tmp_path / "nope")))
    msg = str(e.value)
    assert "\n" not in msg and "TC/dbpedia/train.json" in msg and "cmnfriend/O-LoRA" in msg
    with pytest.raises(InputError) as e:  # a folder, but the wrong one (TRACE data given to cl4)
        load_stream(DataConfig(benchmark="cl4", benchmark_dir=str(DIRS["trace"])))
    assert "\n" not in str(e.value) and "labels.json" in str(e.value)
    with pytest.raises(InputError, match="orders"):
        stream("cl4", 5)
    with pytest.raises(InputError, match="either data.benchmark or data.tasks"):
        from_dict({"data": {"benchmark": "cl4", "benchmark_dir": "x", "tasks": ["compare"]}})


def test_cli_exits_2_on_missing_benchmark_folder(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{benchmark: trace, benchmark_dir: {tmp_path / 'missing'}}}\n")
    p = subprocess.run([sys.executable, "-m", "forgetless", "run", str(cfg), "--output", str(tmp_path / "runs")],
                       capture_output=True, text=True)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and "C-STANCE/train.json" in lines[0] and "BeyonderXX/TRACE" in lines[0]
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("name,n", [("cl4_order1_qwen1.5b.yaml", 4), ("long15_order4_qwen0.5b.yaml", 15)])
def test_gpu_example_configs_are_valid_and_load_the_fixture(name, n):
    from forgetless.config import load_config

    ex = Path(__file__).parent.parent / "examples" / name
    cfg = load_config(ex, [f"data.benchmark_dir={DIRS['cl4']}"])
    assert cfg.model.lora.enabled and cfg.replay.strategy == "mssr" and cfg.replay.budget is not None
    assert len(load_stream(cfg.data)) == n


def test_metric_override_of_an_unknown_task_and_bad_harness_stage(tmp_path):
    with pytest.raises(InputError, match="names no task"):
        stream("cl4", 1, metrics={"nosuch": "f1"})
    from forgetless import experiment

    cfg = from_dict({"name": "s", "data": {"tasks": ["first_word"], "n_train": 4, "n_test": 2, "general_texts": 0},
                     "eval": {"general_tasks": ["x"], "general_stages": [0, 5]}})
    with pytest.raises(InputError, match=r"stages \[5\] do not exist"):
        experiment.run(cfg, tmp_path, progress=False)
    assert not (tmp_path / "s").exists()


def test_resolved_benchmark_config_validates_again(tmp_path):
    """config.yaml holds every field; reading it back (resume, bench) must give the same config."""
    from forgetless.config import dump_config, from_dict, load_config

    cfg = from_dict({"data": {"benchmark": "cl4", "benchmark_dir": str(tmp_path)}})
    (tmp_path / "c.yaml").write_text(dump_config(cfg))
    assert load_config(tmp_path / "c.yaml") == cfg


def test_bench_runs_a_preset_and_reuses_it(tmp_path):
    """The bench re-validates each cell's resolved config and reuses finished runs of a preset."""
    from forgetless import bench

    cfg = from_dict({"data": {"benchmark": "cl4", "benchmark_dir": str(FIX / "CL_Benchmark"), "general_texts": 0},
                     "train": {"steps_per_task": 1, "batch_size": 2}, "model": {"lora": {"enabled": False}}})
    first = bench.bench(cfg, ["none"], [0], out=tmp_path / "b", progress=False)
    assert first["runs"][0]["tasks"] == [t.name for t in load_stream(cfg.data).tasks]
    again = bench.bench(cfg, ["none"], [0], out=tmp_path / "b", progress=False)  # reused, same numbers
    assert again["runs"][0]["ap"] == first["runs"][0]["ap"]


def test_superni_instances_are_strict_and_numbered_from_1(tmp_path):
    import json
    import shutil

    root = tmp_path / "SuperNI"
    shutil.copytree(DIRS["superni15"], root)
    f = root / "task1572_samsum_summary" / "train.json"
    data = json.loads(f.read_text())
    data["Instances"][1]["input"] = None
    f.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"train\.json, field 'input': instance 2: must be a string, got NoneType"):
        load_stream(DataConfig(benchmark="superni15", benchmark_dir=str(root)))
    data["Instances"][1]["input"], data["Instances"][0]["output"] = "x", ["fine", 7]
    f.write_text(json.dumps(data))
    with pytest.raises(InputError, match=r"field 'output': instance 1: must be a string, got int 7"):
        load_stream(DataConfig(benchmark="superni15", benchmark_dir=str(root)))
