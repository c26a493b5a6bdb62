"""Issue 18, the config / CLI / message items: strict YAML, code in lm-eval task YAMLs, one line
instead of a traceback (chat template, GGUF, Ctrl-C), --set values typed by the schema, console
lines printed as written, the Python API's errors. Each: exit status, message, nothing left behind."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers.cli import run_cli
from forgetless import experiment
from forgetless.config import load_config
from forgetless.errors import InputError
from forgetless.model import TINY_DIR

GEN = [{"prompt": f"say {w}", "target": w} for w in ("alpha", "beta", "gamma", "delta", "omega", "kappa",
                                                       "sigma", "theta", "iota", "zeta", "eta", "rho")]
CFG = """name: t
data:
  tasks: [{task}]
  n_train: 12
  n_test: 6
  general_texts: 0
train:
  steps_per_task: 2
  batch_size: 4
eval:
  batch_size: 16
replay:
  strategy: uniform
  memory: {{size: 8}}
"""


def _files(tmp: Path, extra: str = "", task_name: str = "mine.jsonl") -> Path:
    task = tmp / task_name
    task.write_text("".join(json.dumps(r) + "\n" for r in GEN))
    cfg = tmp / "cfg.yaml"
    cfg.write_text(CFG.format(task=json.dumps(str(task))) + extra)
    return cfg


def _cli(capsys, *args) -> tuple[int, str, str]:
    """``forgetless ARGS`` in this process: exit status, stdout, stderr."""
    return run_cli(capsys, *args)


def _one_line(err: str) -> str:
    # a GGUF conversion shows transformers' own progress bar (tqdm, '...%|...|') before it fails
    lines = [ln for ln in err.replace("\r", "\n").strip().splitlines()
             if ln.strip() and not ln.startswith("warning:") and "%|" not in ln]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


# ---- the table: input, exit status, expected substring, nothing left behind ------------------------

def _dup_section(tmp):
    cfg = _files(tmp, "train:\n  lr: 0.01\n")  # a second train: section would silently replace the first
    return ["run", cfg, "--output", tmp / "o"]


def _dup_nested(tmp):
    cfg = tmp / "cfg.yaml"
    cfg.write_text("name: t\ntrain:\n  lr: 0.1\n  batch_size: 4\n  lr: 0.2\n")
    return ["run", cfg, "--output", tmp / "o"]


def _task_dir(tag_in_include: bool):
    def make(tmp):
        d = tmp / "lm_tasks"
        d.mkdir()
        (d / "utils.py").write_text("open('/tmp/pwned', 'w')\ndef doc_to_text(doc):\n    return doc['q']\n")
        code = "task: mytask\ndataset_path: json\ndoc_to_text: !function utils.doc_to_text\n"
        if tag_in_include:  # the tag sits in a YAML outside the folder that a task YAML includes
            (tmp / "base.yaml").write_text(code)
            (d / "mytask.yaml").write_text(f"include: {tmp / 'base.yaml'}\ntask: mytask\n")
        else:
            (d / "mytask.yaml").write_text(code)
        cfg = _files(tmp)
        raw = yaml.safe_load(cfg.read_text())
        raw["eval"].update(general_tasks=["mytask"], general_task_dir=str(d))
        cfg.write_text(yaml.safe_dump(raw))
        return ["run", cfg, "--output", tmp / "o"]
    return make


def _raising_chat_template(tmp):
    d = tmp / "m"
    shutil.copytree(TINY_DIR, d)
    tc = json.loads((d / "tokenizer_config.json").read_text())
    tc["chat_template"] = "{{ raise_exception('this model takes no user turn') }}"
    (d / "tokenizer_config.json").write_text(json.dumps(tc))
    return ["run", _files(tmp), "--output", tmp / "o", "--set", f"model.name={d}", "--set", "data.chat_template=true"]


def _write_gguf(src: Path, out: Path, drop: tuple[str, ...] = ()) -> Path:
    """A copy of the GGUF ``src`` without the metadata keys ``drop``."""
    import gguf
    import numpy as np

    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(out), r.fields["general.architecture"].contents())
    for k, f in r.fields.items():
        if k.startswith("GGUF.") or k == "general.architecture" or k in drop:
            continue
        if f.types[0] == gguf.GGUFValueType.ARRAY:
            w.add_key_value(k, f.contents(), f.types[0], f.types[-1])
        else:
            w.add_key_value(k, f.contents(), f.types[0])
    for t in r.tensors:
        w.add_tensor(t.name, np.array(t.data))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def _gguf(kind):
    def make(tmp):
        from helpers.gguf_writer import write_tiny_gguf

        src = write_tiny_gguf(TINY_DIR, tmp / "tiny.gguf")
        if kind == "cut":
            path = tmp / "cut.gguf"
            path.write_bytes(src.read_bytes()[:200])
        else:  # a llama GGUF without llama.block_count: transformers would build 32 layers, 30 random
            path = _write_gguf(src, tmp / "incomplete.gguf", drop=("llama.block_count",))
        src.unlink()
        return ["run", _files(tmp), "--output", tmp / "o", "--set", f"model.name={path}"]
    return make


def _set(*overrides, cfg_extra=""):
    def make(tmp):
        args = ["run", _files(tmp, cfg_extra), "--output", tmp / "o"]
        for o in overrides:
            args += ["--set", o]
        return args
    return make


def _name_2024(tmp):
    (tmp / "cfg.yaml").write_text("name: 2024\n")
    return ["run", tmp / "cfg.yaml", "--output", tmp / "o"]


def _config_is_dir(tmp):
    (tmp / "d").mkdir()
    return ["run", tmp / "d"]


ERROR_CASES = [
    ("duplicate section", _dup_section, 2, "cfg.yaml:15: duplicate key 'train'"),
    ("duplicate nested key", _dup_nested, 2, "cfg.yaml:5: duplicate key 'lr'"),
    ("duplicate key in --set", _set("data.metrics={a: f1, a: f1}"), 2, "repeats the key 'a'"),
    ("!function in a task YAML", _task_dir(False), 2, "mytask.yaml:3: !function makes lm-eval run Python code"),
    ("!function in an included YAML", _task_dir(True), 2, "base.yaml:3: !function makes lm-eval run Python"),
    ("chat template raises", _raising_chat_template, 2,
     "field 'data.chat_template': the tokenizer's chat template fails on a user turn (TemplateError: this model "
     "takes no user turn)"),
    ("GGUF cut to 200 bytes", _gguf("cut"), 2, "cut.gguf': unpack_from requires a buffer"),
    ("llama GGUF without block_count", _gguf("incomplete"), 2, "its metadata does not match its tensors"),
    ("YAML number for a string", _name_2024, 2,
     "field 'name': Input should be a valid string (YAML read 2024 as a number; quote it to mean the text"),
    ("--set error names --set", _set("train.lr=-1"), 2, "error: --set: field 'train.lr'"),
    ("format spec in prompt_template", _set("data.prompt_template='{prompt:d}'"), 2,
     "cannot fill it with a prompt (Unknown format code 'd'"),
    ("config is a directory", _config_is_dir, 2, "d: is a directory, expected a file"),
    ("markup in a --set error", _set("replay.strategy=[bold]x"), 2, "--set value '[bold]x' is not valid YAML"),
    ("strategy []", _set("replay.strategy=[]"), 2, "field 'replay.strategy': Value error, is an empty list"),
]


@pytest.mark.parametrize("make, code, expected", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_error_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch, make, code, expected):
    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    args = make(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    status, _, err = _cli(capsys, *args)
    assert status == code, err
    assert expected in _one_line(err)
    left = {p for p in tmp_path.rglob("*")} - before
    assert not left, sorted(map(str, left))  # no run directory, no converted model, no .tmp


# ---- strict YAML and typed --set values -------------------------------------------------------------

def test_set_values_take_the_type_the_field_wants(tmp_path):
    cfg = load_config(None, ["train.precision=no", "name=2024", "model.revision=20240101", "model.lora.enabled=no",
                             "seed=7", "replay.budget=0.5"])
    assert cfg.train.precision == "no" and cfg.name == "2024" and cfg.model.revision == "20240101"
    assert cfg.model.lora.enabled is False and cfg.seed == 7 and cfg.replay.budget == 0.5
    # in a file, only true/false are booleans: `precision: no` is the string the schema lists
    (tmp_path / "c.yaml").write_text("train:\n  precision: no\nmodel:\n  lora:\n    enabled: off\n")
    cfg = load_config(tmp_path / "c.yaml")
    assert cfg.train.precision == "no" and cfg.model.lora.enabled is False
    # YAML anchors and merge keys still work (a merged key overridden is not a duplicate)
    (tmp_path / "m.yaml").write_text("train:\n  <<: &b {lr: 0.1, batch_size: 4}\n  lr: 0.2\n")
    assert load_config(tmp_path / "m.yaml").train.lr == 0.2


def test_strategy_names_have_one_spelling(tmp_path, capsys, monkeypatch):
    from forgetless import bench

    assert load_config(None, ["replay.strategy=gere + mssr"]).replay.strategy == "gere+mssr"
    seen = {}

    def fake_bench(cfg, names, seeds, **kw):
        seen["names"] = names
        raise InputError("stop here")

    monkeypatch.setattr(bench, "bench", fake_bench)
    status, _, err = _cli(capsys, "bench", _files(tmp_path), "--strategies", "gere + mssr, none", "--quiet",
                          "--output", tmp_path / "b")
    assert status == 2 and "stop here" in err and seen["names"] == ["gere+mssr", "none"]
    cells = bench.grid_configs(load_config(_files(tmp_path)), seen["names"], [0], 1)
    assert [c.name for _, c in cells] == ["gere+mssr-seed0-order0", "none-seed0-order0"]


# ---- lm-eval task YAMLs: code only when allowed -----------------------------------------------------

def test_task_yaml_code_is_allowed_only_when_asked(tmp_path):
    from forgetless.harness import code_in_task_dir

    d = tmp_path / "t"
    d.mkdir()
    (d / "plain.yaml").write_text("task: plain\ndataset_path: json\ndoc_to_text: '{{q}}'\n")
    assert code_in_task_dir(str(d)) is None
    (d / "sub").mkdir()
    (d / "sub" / "code.yml").write_text("task: c\nfilter_list:\n  - name: x\n    filter:\n"
                                        "      - function: custom\n        filter_fn: !function f.g\n")
    assert code_in_task_dir(str(d)) == f"{d / 'sub' / 'code.yml'}:6: !function"
    over = [f"eval.general_task_dir={d}"]
    with pytest.raises(InputError, match=r"code\.yml:6: !function makes lm-eval run Python code.*allow_code"):
        load_config(None, over)
    assert load_config(None, over + ["eval.allow_code=true"]).eval.allow_code is True


# ---- Ctrl-C in the first second ---------------------------------------------------------------------

@pytest.mark.parametrize("where", ["forgetless.config.load_config", "forgetless.model.load_model"])
def test_ctrl_c_before_the_first_stage_is_one_line(tmp_path, capsys, monkeypatch, where):
    import importlib

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    module, name = where.rsplit(".", 1)
    monkeypatch.setattr(importlib.import_module(module), name, interrupted)
    cfg = _files(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    status, _, err = _cli(capsys, "run", cfg, "--output", tmp_path / "o", "--quiet")
    assert status == 130 and _one_line(err).startswith("error: interrupted before ")
    assert {p for p in tmp_path.rglob("*")} == before


# ---- console lines as written -----------------------------------------------------------------------

def test_console_prints_names_as_written(tmp_path, capsys):
    cfg = _files(tmp_path, task_name="tasks[v2].jsonl")
    status, out, err = _cli(capsys, "data", "show", tmp_path / "tasks[v2].jsonl", "-n", "1")
    assert status in (0, None) and "tasks[v2]" in out, out + err
    status, out, err = _cli(capsys, "run", cfg, "--output", tmp_path / "o", "--quiet", "--set", "name=v[red]1")
    assert status in (0, None), err
    results = tmp_path / "o" / "v[red]1" / "results.json"
    assert results.is_file() and f"results: {results}" in out.replace("\n", "")
    assert "run v[red]1" in out


def test_output_dir_expands_home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = load_config(None, ["output_dir=~/runs", "name=x"])
    assert experiment.run_dir_for(cfg) == tmp_path / "runs" / "x"
    assert experiment.run_dir_for(cfg, "~/elsewhere") == tmp_path / "elsewhere" / "x"


def test_help_version_and_flags(capsys):
    from importlib.metadata import version

    status, out, _ = _cli(capsys, "--version")
    assert status in (0, None) and out.strip() == f"forgetless {version('forgetless')}"
    status, out, _ = _cli(capsys, "run", "--help")
    assert status in (0, None) and "<bool>" not in out
    assert any(ln.split()[:2] == ["--resume", "Continue"] for ln in out.splitlines()), out
    for cmd in ("bench", "demo"):
        _, out, _ = _cli(capsys, cmd, "--help")
        assert any(ln.split()[:3] == ["--quiet", "No", "progress"] for ln in out.splitlines()), out
    status, _, err = _cli(capsys, "run", "x.yaml", "--resume", "true")  # a flag takes no value, as help shows
    assert status == 2 and "unexpected extra argument" in err


# ---- GGUF conversion killed mid-write ---------------------------------------------------------------

def test_stale_conversion_tmp_is_removed_live_one_kept(tmp_path, monkeypatch):
    from helpers.gguf_writer import write_tiny_gguf

    from forgetless.model import convert_gguf

    monkeypatch.setenv("FORGETLESS_CACHE", str(tmp_path / "cache"))
    models = tmp_path / "cache" / "models"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    host = socket.gethostname()
    stale = models / f".tmp-old-0123456789ab-{host}-{dead.pid}"
    live = models / f".tmp-other-0123456789ab-{host}-{os.getppid()}"  # a conversion still running
    elsewhere = models / f".tmp-other-0123456789ab-another-host-{dead.pid}"  # not ours to judge
    for d in (stale, live, elsewhere):
        d.mkdir(parents=True)
        (d / "model.safetensors").write_bytes(b"half written")
    out = convert_gguf(write_tiny_gguf(TINY_DIR, tmp_path / "tiny.gguf"))
    assert (out / "config.json").is_file()
    assert sorted(p.name for p in models.iterdir()) == sorted([out.name, live.name, elsewhere.name])


# ---- Python API ----------------------------------------------------------------------------------------

def _trainer(tmp_path, tok=None, **kw):
    from transformers import TrainingArguments

    from forgetless.config import from_dict
    from forgetless.integrations import ReplayTrainer
    from forgetless.model import load_model

    raw = {"data": {"n_train": 8, "n_test": 4, "general_texts": 0}, "replay": {"strategy": "uniform"}}
    raw["data"].update(kw.pop("data", {}))
    cfg = from_dict(raw)
    model, tokenizer = load_model(cfg.model, device="cpu")
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=1, use_cpu=True,
                             report_to="none", save_strategy="no", disable_tqdm=True)
    return ReplayTrainer(model=model, args=args, processing_class=tok or tokenizer, config=raw, **kw), tokenizer


def test_python_api_errors_are_one_line(tmp_path):
    with pytest.raises(InputError) as e:
        _trainer(tmp_path, strategy=[])
    assert str(e.value) == ("strategy: field 'replay.strategy': Value error, is an empty list; name one or more "
                            "strategies, e.g. ['gere', 'mssr']")
    tr, _ = _trainer(tmp_path)
    with pytest.raises(InputError, match=r"nope: checkpoint directory does not exist"):
        tr.train_stream(["first_word"], resume_from_checkpoint=str(tmp_path / "nope"))
    assert not (tmp_path / "nope").exists()


def test_trainer_honours_chat_template(tmp_path, tokenizer):
    import copy

    from forgetless.data.task import TaskStream
    from forgetless.data.tokenize import tokenize_stream

    chat_tok = copy.deepcopy(tokenizer)
    chat_tok.chat_template = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + "
                              "'<|im_end|>\\n' }}{% endfor %}{% if add_generation_prompt %}"
                              "{{ '<|im_start|>assistant\\n' }}{% endif %}")
    tr, _ = _trainer(tmp_path, tok=chat_tok, data={"chat_template": True})
    stream = tr.set_stream(["first_word"])
    expected = tokenize_stream(TaskStream(tasks=list(stream.tasks)), chat_tok, 128, "{prompt}", True).samples[0]
    assert [s.input_ids.tolist() for s in stream.samples[0]] == [s.input_ids.tolist() for s in expected]
    assert chat_tok.decode(stream.samples[0][0].input_ids).startswith("<|im_start|>user\n")
    with pytest.raises(InputError, match="data.chat_template.*no chat template"):
        _trainer(tmp_path, tok=tokenizer, data={"chat_template": True})
