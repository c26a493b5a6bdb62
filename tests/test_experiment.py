"""End to end on the bundled tiny model: results, files, resume after a kill, errors, 2 processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from helpers.configs import with_overrides
from forgetless import experiment
from forgetless.config import load_config
from forgetless.errors import InputError

HELPERS = Path(__file__).parent / "helpers"
RAW = {
    "name": "t",
    "data": {"tasks": ["first_word", "last_word"], "n_train": 48, "n_test": 12, "general_texts": 4},
    "train": {"steps_per_task": 4, "batch_size": 8, "lr": 1e-3},
    "eval": {"batch_size": 16},
    "replay": {"strategy": "uniform", "memory": {"size": 24}, "uniform": {"ratio": 0.5}},
}


def _cfg(**over):
    return with_overrides(RAW, **over)


def _write(tmp_path, cfg) -> Path:
    p = tmp_path / "cfg.yaml"
    p.write_text(yaml.safe_dump(cfg.model_dump(mode="json")))
    return p


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    return env


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = experiment.run(_cfg(), out, progress=False)
    return out / "t", result


def test_results_fields_and_shapes(finished):
    run_dir, r = finished
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["acc"] == r["acc"]
    for key in ("tasks", "acc", "baseline_acc", "metrics", "general_ppl", "counters", "replay_events",
                "strategy", "seed", "versions"):
        assert key in saved, key
    assert saved["tasks"] == ["first_word", "last_word"]
    acc = np.asarray(saved["acc"])
    assert acc.shape == (2, 2) and ((acc >= 0) & (acc <= 1)).all()
    assert len(saved["baseline_acc"]) == 2
    assert len(saved["general_ppl"]) == 3 and all(p > 1 for p in saved["general_ppl"])
    assert set(saved["versions"]) >= {"python", "torch", "transformers", "peft", "forgetless"}
    for k in ("ap", "bwt", "fwt", "forgetting", "learning_accuracy"):
        assert k in saved["metrics"]
    c = saved["counters"]
    assert c["optimizer_steps"] == 8
    assert c["new_task_tokens"] > 0 and c["eval_tokens"] > 0
    # uniform replays 4 samples per step, only once a task is in memory (task 2)
    assert [e["task"] for e in saved["replay_events"]] == [1] * 4
    assert all(e["n_samples"] == 4 for e in saved["replay_events"])
    assert c["replay_samples"] == 16 and c["replay_tokens"] > 0


def test_run_directory_layout(finished):
    run_dir, _ = finished
    for name in ("config.yaml", "results.json", "accuracy_matrix.csv", "report.md", "log.jsonl",
                 "plots/accuracy_matrix.png", "plots/task_accuracy.png"):
        assert (run_dir / name).is_file(), name
    assert sorted(p.name for p in (run_dir / "stages").iterdir()) == ["0", "1", "2"]
    for k in ("0", "1", "2"):
        assert (run_dir / "stages" / k / "trainable.safetensors").is_file()
        assert (run_dir / "stages" / k / "strategy.json").is_file()
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == list(range(1, 9))
    assert load_config(run_dir / "config.yaml") == _cfg()
    csv = (run_dir / "accuracy_matrix.csv").read_text().splitlines()
    assert csv[0] == "after_task,first_word,last_word" and len(csv) == 4


def test_rerun_without_resume_refuses(finished):
    run_dir, _ = finished
    with pytest.raises(InputError, match="--resume"):
        experiment.Run(_cfg(), run_dir, resume=False, progress=False).execute()


def test_resume_with_other_config_refuses(finished, tmp_path):
    run_dir, _ = finished
    with pytest.raises(InputError, match="differs"):
        experiment.Run(_cfg(**{"train.lr": 5e-4}), run_dir, resume=True, progress=False).execute()


def test_resume_after_kill_equals_uninterrupted(finished, tmp_path):
    _, full = finished
    cfg_path = _write(tmp_path, _cfg())
    out = tmp_path / "killed"
    p = subprocess.run([sys.executable, str(HELPERS / "kill_after_stage.py"), str(cfg_path), str(out), "1"],
                       env=_env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == -9, p.stderr[-2000:]
    run_dir = out / "t"
    assert (run_dir / "stages" / "1").is_dir() and not (run_dir / "stages" / "2").exists()
    assert not (run_dir / "results.json").exists()
    resumed = experiment.run(load_config(cfg_path), out, resume=True, progress=False)
    assert resumed["acc"] == full["acc"]
    assert resumed["baseline_acc"] == full["baseline_acc"]
    assert resumed["general_ppl"] == pytest.approx(full["general_ppl"], rel=1e-9)
    assert resumed["replay_events"] == full["replay_events"]
    for k, v in full["counters"].items():
        if not k.startswith("time_"):
            assert resumed["counters"][k] == v, k
    from safetensors.numpy import load_file

    a = load_file(str(finished[0] / "stages" / "2" / "trainable.safetensors"))
    b = load_file(str(run_dir / "stages" / "2" / "trainable.safetensors"))
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    log = [json.loads(line)["step"] for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 9))


@pytest.mark.parametrize("override, field", [
    ("replay.strategy=nope", "replay.strategy"),
    ("replay.memory.policy=fifo", "replay.memory.policy"),
    ("train.batch_size=0", "train.batch_size"),
    ("data.tasks=[no_such_task]", "no_such_task"),
])
def test_bad_config_one_line_exit_2(tmp_path, override, field):
    cfg_path = _write(tmp_path, _cfg())
    p = subprocess.run([sys.executable, "-m", "forgetless", "run", str(cfg_path), "--set", override,
                        "--output", str(tmp_path / "o"), "--quiet"],
                       env=_env(), capture_output=True, text=True, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    lines = [ln for ln in p.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and field in lines[0], p.stderr
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "o" / "t").exists()  # nothing half-written


def test_two_processes_share_strategy_state_and_match_one(tmp_path):
    """2 processes (gloo) with a warmup + cosine schedule: the same lr trace, replay decisions and scores as
    1 process with the same global batch (a scheduler stepped once per process ran the lr to 0 early)."""
    cfg = _cfg(**{"replay.strategy": "mssr", "name": "mp", "train.schedule": "cosine", "train.warmup_steps": 2})
    cfg_path = _write(tmp_path, cfg)
    out = tmp_path / "mp"
    out.mkdir()
    import socket

    with socket.socket() as sock:  # a free loopback port for the two processes to meet on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port),
           str(HELPERS / "mp_worker.py"), str(cfg_path), str(out)]
    p = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=400)
    assert p.returncode == 0, p.stderr[-3000:]
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert r0["n_processes"] == 2
    assert r0["state"] == r1["state"]  # memory, strengths, scheduler, RNG: identical on both
    assert r0["acc"] == r1["acc"] and r0["replay_events"] == r1["replay_events"]
    assert r0["replay_events"], "mssr replayed during task 2"
    saved = json.loads((out / "mp" / "results.json").read_text())
    assert saved["n_processes"] == 2 and saved["acc"] == r0["acc"]

    one = experiment.run(cfg, tmp_path / "one", progress=False)
    lrs = [[json.loads(ln)["lr"] for ln in (d / "mp" / "log.jsonl").read_text().splitlines()]
           for d in (out, tmp_path / "one")]
    # per task (4 steps): warmup 1/2, 2/2, then cosine over the 2 steps left: 1, 0.5
    assert lrs[0] == pytest.approx([1e-3 * f for f in (0.5, 1.0, 1.0, 0.5)] * 2)
    assert lrs[0] == pytest.approx(lrs[1])
    assert one["replay_events"] == r0["replay_events"]
    assert one["acc"] == r0["acc"]


def test_unloadable_model_leaves_no_run_directory(tmp_path):
    cfg = _cfg(**{"model.name": str(tmp_path / "no-such-model")})
    with pytest.raises(InputError, match="model.name"):
        experiment.run(cfg, tmp_path / "o", progress=False)
    assert not (tmp_path / "o" / "t").exists()


def test_other_architecture_from_a_local_directory(tmp_path):
    """The path a user's model takes: a directory in Hugging Face format, here a small random Qwen2."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from forgetless.model import load_tokenizer

    tok = load_tokenizer("tiny")
    qcfg = Qwen2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                       eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    d = tmp_path / "qwen-tiny"
    Qwen2ForCausalLM(qcfg).save_pretrained(d)
    tok.save_pretrained(d)
    cfg = _cfg(**{"model.name": str(d), "replay.strategy": "gere+mssr",
                  "replay.gere": {"n_samples": 8, "seq_len": 32, "per_batch": 2}, "name": "qwen"})
    r = experiment.run(cfg, tmp_path / "o", progress=False)
    assert r["model"] == str(d) and np.asarray(r["acc"]).shape == (2, 2)
    assert r["counters"]["optimizer_steps"] == 8 and r["counters"]["reference_tokens"] == 8 * 32


def test_mssr_lr_interference_follows_the_loops_schedule(tmp_path):
    cfg = _cfg(**{"name": "lr", "replay.strategy": "mssr", "replay.mssr.retention.model": "legacy",
                  "replay.mssr.retention.interference": "lr",
                  "train.schedule": "cosine"})
    run = experiment.Run(cfg, experiment.run_dir_for(cfg, tmp_path), progress=False)
    run.execute()
    # g = lr / base lr at each of the 4 steps of each task: cosine factors 1, .854, .5, .146 (sum 2.5)
    assert run.strategy.strength.G == pytest.approx(2 * 2.5)


def test_bf16_on_cpu_trains_and_evaluates_under_autocast(tmp_path, monkeypatch):
    """precision bf16 works on CPU (torch's CPU autocast) and evaluation runs at that precision too."""
    import torch
    from forgetless import evaluate

    seen = []
    real = evaluate.evaluate_task

    def spy(*a, **k):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return real(*a, **k)

    monkeypatch.setattr(evaluate, "evaluate_task", spy)
    # a fp32 run first in this process: Accelerate's per-process state must not pin its precision
    experiment.run(_cfg(**{"train.steps_per_task": 1, "name": "fp32"}), tmp_path, progress=False)
    assert seen and not any(seen)
    seen.clear()
    res = experiment.run(_cfg(**{"train.precision": "bf16", "train.steps_per_task": 2}), tmp_path, progress=False)
    assert seen and all(seen)
    assert np.isfinite(res["acc"]).all() and all(np.isfinite(p) for p in res["general_ppl"])


def test_fp16_on_cpu_is_refused(tmp_path):
    with pytest.raises(InputError, match="fp16 needs a GPU"):
        experiment.run(_cfg(**{"train.precision": "fp16"}), tmp_path, progress=False)
    assert not any(tmp_path.iterdir())


def test_one_optimizer_for_a_three_task_run(tmp_path):
    """Accelerate keeps every optimizer it prepares: the run builds one, not one per task."""
    import gc

    import torch

    cfg = _cfg(**{"name": "opt", "data.tasks": ["first_word", "last_word", "compare"], "train.steps_per_task": 2,
                  "data.general_texts": 0})
    run = experiment.Run(cfg, experiment.run_dir_for(cfg, tmp_path), progress=False)
    run.execute()
    assert len(run.accelerator._optimizers) == 1
    mine = {id(p) for p in run.base_model.parameters()}
    gc.collect()
    alive = [o for o in gc.get_objects() if isinstance(o, torch.optim.Optimizer) and not hasattr(o, "optimizer")
             and any(id(p) in mine for g in o.param_groups for p in g["params"])]
    assert len(alive) == 1


@pytest.mark.parametrize("kind", ["FSDP", "DEEPSPEED"])
def test_fsdp_and_deepspeed_refused_in_one_line(kind):
    from types import SimpleNamespace

    from accelerate.utils import DistributedType

    with pytest.raises(InputError, match=f"does not support {kind}"):
        experiment.check_engine(SimpleNamespace(distributed_type=DistributedType[kind]))
    experiment.check_engine(SimpleNamespace(distributed_type=DistributedType.MULTI_CPU))


def test_stage_adapters_load_with_peft(finished, tmp_path):
    """Each stage's LoRA weights are also in PEFT's format: PeftModel.from_pretrained on the base
    model gives the outputs of the run's own exact-resume weights; the manifest covers them."""
    import shutil

    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from forgetless import rundir
    from forgetless.model import TINY_DIR, load_model, load_trainable

    run_dir, _ = finished
    stage = run_dir / "stages" / "2"
    assert {p.name for p in (stage / "adapter").iterdir()} >= {"adapter_config.json", "adapter_model.safetensors"}
    cfg = _cfg()
    ours, _ = load_model(cfg.model, device="cpu")
    load_trainable(ours, stage / "trainable.safetensors")
    theirs = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(TINY_DIR, dtype=torch.float32),
                                       stage / "adapter")
    x = torch.tensor([[5, 17, 300, 42, 7, 99]])
    with torch.no_grad():
        a, b = ours.eval()(input_ids=x).logits, theirs.eval()(input_ids=x).logits
        base = theirs.get_base_model()
        with theirs.disable_adapter():
            c = base(input_ids=x).logits
    assert torch.equal(a, b) and not torch.allclose(b, c)  # trained adapters, loaded exactly
    files = json.loads((stage / "manifest.json").read_text())["files"]
    assert "adapter/adapter_model.safetensors" in files and "adapter/adapter_config.json" in files
    copy = tmp_path / "2"
    shutil.copytree(stage, copy)
    with open(copy / "adapter" / "adapter_model.safetensors", "r+b") as f:
        f.seek(-1, 2)
        f.write(b"\x00" if f.read(1) != b"\x00" else b"\x01")
    assert "adapter_model.safetensors is damaged" in rundir.verify_stage(copy)
