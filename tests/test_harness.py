"""lm-evaluation-harness on the model in memory, with a task whose data the test writes locally."""

import json

import pytest

from forgetless import experiment
from forgetless.config import from_dict
from forgetless.errors import InputError

pytest.importorskip("lm_eval")

TASK_YAML = """task: local_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
"""


@pytest.fixture
def task_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    rows = [{"question": "The first letter of the alphabet is", "choices": ["a", "z"], "label": 0},
            {"question": "The last letter of the alphabet is", "choices": ["a", "z"], "label": 1},
            {"question": "One plus one is", "choices": ["two", "seven"], "label": 0}]
    d = tmp_path / "tasks"
    d.mkdir()
    (d / "local.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "local_mc.yaml").write_text(TASK_YAML.format(data=d / "local.jsonl"))
    return d


def test_run_scores_a_local_harness_task_at_start_and_end(tmp_path, task_dir):
    raw = {"name": "h", "data": {"tasks": ["first_word", "last_word"], "n_train": 8, "n_test": 2, "general_texts": 0},
           "train": {"steps_per_task": 1, "batch_size": 4},
           "eval": {"general_tasks": ["local_mc"], "general_task_dir": str(task_dir)},
           "replay": {"strategy": "none"}}
    r = experiment.run(from_dict(raw), tmp_path / "runs", progress=False)
    stages = [g["stage"] for g in r["general_tasks"]]
    assert stages == [0, 2]  # start and end by default
    for g in r["general_tasks"]:
        acc = g["scores"]["local_mc/acc"]
        assert acc in (0.0, 1 / 3, 2 / 3, 1.0)  # 3 examples
    saved = json.loads((tmp_path / "runs" / "h" / "results.json").read_text())
    assert saved["general_tasks"] == r["general_tasks"]
    assert "lm-evaluation-harness" in (tmp_path / "runs" / "h" / "report.md").read_text()


def test_missing_data_and_unknown_task_are_one_line_errors(tmp_path, task_dir):
    from forgetless.harness import run_general_tasks
    from forgetless.model import load_model
    from forgetless.config import ModelConfig

    model, tok = load_model(ModelConfig(), device="cpu")
    (task_dir / "local.jsonl").unlink()  # the harness cannot find its data
    with pytest.raises(InputError) as e:
        run_general_tasks(model, tok, ["local_mc"], task_dir=str(task_dir))
    assert "\n" not in str(e.value) and "could not run" in str(e.value)
    with pytest.raises(InputError, match="knows no task"):
        run_general_tasks(model, tok, ["no_such_task_xyz"], task_dir=str(task_dir))
