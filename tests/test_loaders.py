import csv
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from forgetless.config import TaskFileConfig
from forgetless.data import load_task
from forgetless.data.loaders import load_task_file
from forgetless.errors import InputError

GEN = [{"prompt": f"q{i} ->", "target": f" a{i}"} for i in range(10)]
MC = [{"question": f"pick {i}?", "choices": ["x", "y", "z"], "answer": i % 3} for i in range(10)]


def jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def pairs(task):
    return sorted((e.prompt, e.target) for e in task.train + task.dev + task.test)


def test_jsonl_generation_split(tmp_path):
    f = jsonl(tmp_path / "g.jsonl", GEN)
    t = load_task_file(TaskFileConfig(path=f, test_fraction=0.3))
    assert t.name == "g" and t.kind == "generation" and (len(t.train), len(t.dev), len(t.test)) == (6, 1, 3)
    assert sorted((e.prompt, e.target) for e in t.train + t.dev + t.test) == sorted((r["prompt"], r["target"]) for r in GEN)
    # the split follows each record's content: the file's order does not move an example
    rev = load_task_file(TaskFileConfig(path=jsonl(tmp_path / "rev.jsonl", GEN[::-1]), test_fraction=0.3))
    assert rev.test == t.test[::-1] and rev.dev == t.dev and rev.train == t.train[::-1]


def test_json_csv_parquet_give_the_same_examples(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps(GEN))
    with open(tmp_path / "a.csv", "w", newline="") as f:
        w = csv.DictWriter(f, ["prompt", "target"])
        w.writeheader()
        w.writerows(GEN)
    pq.write_table(pa.Table.from_pylist(GEN), tmp_path / "a.parquet")
    ref = pairs(load_task(jsonl(tmp_path / "a.jsonl", GEN)))
    for ext in ("json", "csv", "parquet"):
        assert pairs(load_task(str(tmp_path / f"a.{ext}"))) == ref, ext


def test_multiple_choice_index_and_text(tmp_path):
    rows = MC[:5] + [{"question": "text?", "choices": ["red", "blue"], "answer": "blue"}] * 5
    t = load_task(jsonl(tmp_path / "mc.jsonl", rows))
    assert t.kind == "multiple_choice"
    for e in t.train + t.dev + t.test:
        assert e.target == e.choices[e.answer]
    assert any(e.prompt == "text?" and e.answer == 1 and e.target == "blue" for e in t.train + t.dev + t.test)


def test_csv_multiple_choice_with_json_choices(tmp_path):
    p = tmp_path / "mc.csv"
    with open(p, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["question", "choices", "answer"])
        for i in range(6):
            w.writerow([f"q{i}", json.dumps(["a", "b"]), str(i % 2)])
    t = load_task(str(p))
    assert t.kind == "multiple_choice" and sorted(e.answer for e in t.train + t.dev + t.test) == [0, 0, 0, 1, 1, 1]


def test_alpaca_and_field_renames(tmp_path):
    rows = [{"instruction": "Say hi", "input": "", "output": "hi"},
            {"instruction": "Repeat", "input": "abc", "output": "abc"}] * 3
    t = load_task(jsonl(tmp_path / "al.jsonl", rows))
    assert {e.prompt for e in t.train + t.dev + t.test} == {"Say hi", "Repeat\nabc"}
    rows = [{"q": f"x{i}", "a": "y"} for i in range(5)]
    t = load_task(TaskFileConfig(path=jsonl(tmp_path / "r.jsonl", rows), fields={"prompt": "q", "target": "a"}))
    assert {e.target for e in t.train + t.dev + t.test} == {"y"}


def test_test_path(tmp_path):
    tr, te = jsonl(tmp_path / "tr.jsonl", GEN), jsonl(tmp_path / "te.jsonl", GEN[:2])
    t = load_task(TaskFileConfig(path=tr, test_path=te, kind="generation"))
    assert (len(t.train), len(t.dev)) == (9, 1) and [e.prompt for e in t.test] == ["q0 ->", "q1 ->"]


def _save_arrow(dirpath, rows):
    dirpath.mkdir(parents=True)
    table = pa.Table.from_pylist(rows)
    with pa.ipc.new_stream(dirpath / "data-00000-of-00001.arrow", table.schema) as w:
        w.write_table(table)
    (dirpath / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (dirpath / "dataset_info.json").write_text("{}")


def test_hf_save_to_disk_dataset_and_dict(tmp_path):
    _save_arrow(tmp_path / "ds", GEN)
    t = load_task(str(tmp_path / "ds"))
    assert t.name == "ds" and pairs(t) == sorted((r["prompt"], r["target"]) for r in GEN)
    _save_arrow(tmp_path / "dd" / "train", MC[:8])
    _save_arrow(tmp_path / "dd" / "test", MC[8:])
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "test"]}))
    t = load_task(str(tmp_path / "dd"))
    assert t.kind == "multiple_choice" and [e.prompt for e in t.test] == ["pick 8?", "pick 9?"]
    assert (len(t.train), len(t.dev)) == (7, 1)  # dev carved from train by hash
    _save_arrow(tmp_path / "dd" / "validation", MC[7:8])
    (tmp_path / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["train", "validation", "test"]}))
    t = load_task(str(tmp_path / "dd"))  # a validation split next to test is the dev split
    assert len(t.train) == 8 and [e.prompt for e in t.dev] == ["pick 7?"] and len(t.test) == 2


@pytest.mark.parametrize("rows, match", [
    ([GEN[0], {"prompt": "p"}], r"b\.jsonl:2, field 'target': missing field"),
    ([GEN[0], {"prompt": 5, "target": "t"}], r"b\.jsonl:2, field 'prompt': must be a string"),
    ([MC[0], {"question": "q", "choices": ["a", "c"], "answer": 3}], r":2, field 'answer': answer index 3 out of range"),
    ([MC[0], {"question": "q", "choices": ["a", "c"], "answer": "b"}], r":2, field 'answer': answer text 'b' is not among"),
    ([MC[0], {"question": "q", "choices": [], "answer": 0}], r":2, field 'choices': needs at least 2 choices, got 0"),
    ([MC[0], {"question": "q", "choices": ["a"], "answer": 0}], r":2, field 'choices': needs at least 2 choices, got 1"),
    ([MC[0], {"question": "q", "choices": ["a", "a"], "answer": 0}], r":2, field 'choices': duplicate choice 'a'"),
    ([MC[0], {"question": "q", "choices": ["a", None], "answer": 0}], r":2, field 'choices': every choice must be"),
    ([GEN[0], {"prompt": "p", "target": 7}], r":2, field 'target': must be a string, got int 7"),
    ([GEN[0], {"prompt": "p", "target": float("nan")}], r":2, field 'target': must be a string, got float nan"),
    ([MC[0], {"question": "q", "answer": 0}], r":2, field 'choices': missing field"),
])
def test_record_errors_name_file_line_field(tmp_path, rows, match):
    with pytest.raises(InputError, match=match):
        load_task(jsonl(tmp_path / "b.jsonl", rows))


def test_malformed_jsonl_line(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text(json.dumps(GEN[0]) + "\n\n{not json\n")
    with pytest.raises(InputError, match=r"m\.jsonl:3: malformed JSON"):
        load_task(str(p))


def test_csv_error_names_line(tmp_path):
    p = tmp_path / "c.csv"
    p.write_text('prompt,target\nok,yes\n"multi\nline",yes\nbad,\n')
    with pytest.raises(InputError, match=r"c\.csv:5, field 'target': empty target"):
        load_task(str(p))


def test_json_error_names_record(tmp_path):
    p = tmp_path / "j.json"
    p.write_text(json.dumps([GEN[0], {"target": "x"}]))
    with pytest.raises(InputError, match=r"j\.json, field 'prompt': record 2: missing field"):
        load_task(str(p))


def test_empty_and_unknown_files(tmp_path):
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(InputError, match="empty task"):
        load_task(str(tmp_path / "e.jsonl"))
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(InputError, match="unknown task file type"):
        load_task(str(tmp_path / "x.txt"))
    with pytest.raises(InputError, match="not found"):
        load_task(TaskFileConfig(path=str(tmp_path / "missing.jsonl")))


def test_cli_error_exit_2(tmp_path):
    import sys

    from forgetless.cli import main

    p = jsonl(tmp_path / "b.jsonl", [GEN[0], {"prompt": "p"}])
    old = sys.argv
    sys.argv = ["forgetless", "data", "show", p]
    try:
        with pytest.raises(SystemExit) as e:
            main()
    finally:
        sys.argv = old
    assert e.value.code == 2


def test_python_api_records_are_numbered_from_1():
    """Eval records handed to ReplayTrainer are numbered like task-file records (from 1)."""
    from types import SimpleNamespace

    from forgetless.config import Config
    from forgetless.integrations.trainer import ReplayTrainer

    me = SimpleNamespace(fl_config=Config())
    with pytest.raises(InputError, match=r"eval_tasks\[x\], field 'target': record 2: missing field"):
        ReplayTrainer._eval_examples(me, [{"prompt": "a", "target": "b"}, {"prompt": "c"}], "x")


def test_column_names_are_cut():
    from forgetless.data.loaders import column_names

    cols = [f"c{i:02d}" for i in range(10)] + ["x" * 40]
    assert column_names(cols) == ", ".join(repr(f"c{i:02d}") for i in range(8)) + " and 3 more"
    assert column_names(["a" * 40]) == repr("a" * 16 + "...")
