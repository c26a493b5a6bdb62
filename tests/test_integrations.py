"""forgetless inside transformers.Trainer / TRL's SFTTrainer, on the bundled tiny model.

The Trainer runs must make the same replay decisions as ``forgetless run`` (same seed, batch size, task
order): same replay events, same sample ids observed per step, same per-sample losses.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from transformers import TrainingArguments

from helpers.configs import with_overrides
from forgetless import experiment
from forgetless.integrations import ReplayTrainer
from forgetless.replay import compose

SRC = Path(__file__).resolve().parents[1] / "src"
RAW = {
    "name": "t", "seed": 3,
    "data": {"tasks": ["first_word", "last_word"], "n_train": 24, "n_test": 12, "general_texts": 0},
    "train": {"steps_per_task": 6, "batch_size": 4, "lr": 1e-3},
    "eval": {"batch_size": 16},
    "replay": {"strategy": "mssr", "memory": {"size": 24},
               "gere": {"n_samples": 8, "seq_len": 24, "per_batch": 2, "weight": 1.0}},
}


def _cfg(**over):
    return with_overrides(RAW, **over)


def _args(out, cfg, accum=1, **kw):
    """TrainingArguments matching ``cfg.train``: constant lr, plain AdamW, the loop's clipping."""
    base = dict(output_dir=str(out), per_device_train_batch_size=cfg.train.batch_size // accum,
                gradient_accumulation_steps=accum, max_steps=cfg.train.steps_per_task, learning_rate=cfg.train.lr,
                lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0, max_grad_norm=1.0,
                seed=cfg.seed, report_to="none", save_strategy="no", logging_steps=1, use_cpu=True,
                disable_tqdm=True)
    base.update(kw)
    return TrainingArguments(**base)


def _model(cfg):
    from accelerate.utils import set_seed

    from forgetless.model import load_model

    set_seed(cfg.seed)  # as experiment.Run does before loading, so LoRA starts from the same weights
    return load_model(cfg.model)


def _record(strategy) -> list:
    """Wrap ``observe`` on one strategy object: (step, ids, losses) per call."""
    log, orig = [], strategy.observe

    def observe(ids, losses, step):
        log.append((int(step), [int(i) for i in ids], np.asarray(losses, dtype=np.float64)))
        orig(ids, losses, step)

    strategy.observe = observe
    return log


def _loop_run(cfg, out, monkeypatch):
    logs = []
    build = compose.build_strategy

    def recording(ctx):
        s = build(ctx)
        logs.append(_record(s))
        return s

    monkeypatch.setattr(compose, "build_strategy", recording)
    result = experiment.run(cfg, out, progress=False)
    monkeypatch.setattr(compose, "build_strategy", build)
    return result, logs[0]


def _trainer(cfg, out, accum=1, callbacks=None, **kw):
    model, tok = _model(cfg)
    return ReplayTrainer(model=model, args=_args(out, cfg, accum, **kw), processing_class=tok, config=cfg,
                         callbacks=callbacks)


def test_import_is_light():
    code = "import sys, forgetless.integrations as i; print('trl' in sys.modules, i.ReplayMixin.__name__)"
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert p.returncode == 0, p.stderr[-2000:]
    assert p.stdout.split() == ["False", "ReplayMixin"]


@pytest.mark.parametrize("strategy", ["mssr", "gere+mssr"])
def test_same_replay_decisions_as_forgetless_run(tmp_path, monkeypatch, strategy):
    cfg = _cfg(**{"replay.strategy": strategy})
    run, run_obs = _loop_run(cfg, tmp_path / "runs", monkeypatch)
    tr = _trainer(cfg, tmp_path / "trainer")
    tr_obs = _record(tr.strategy)
    res = tr.train_stream(cfg.data.tasks)

    assert res["replay_events"] == run["replay_events"]
    # MSSR replays from task 2 on; GeRe's general samples join every step from the first
    assert {e["task"] for e in run["replay_events"]} == ({0, 1} if "gere" in strategy else {1})
    assert [(s, ids) for s, ids, _ in tr_obs] == [(s, ids) for s, ids, _ in run_obs]  # same samples, same order
    assert any(i < 0 for _, ids, _ in tr_obs for i in ids) == ("gere" in strategy)
    for (_, _, a), (_, _, b) in zip(tr_obs, run_obs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)  # the losses that feed MSSR's strengths
    assert res["acc"] == run["acc"] and res["baseline_acc"] == run["baseline_acc"]
    assert res["counters"]["replay_samples"] == run["counters"]["replay_samples"]
    saved = json.loads((tmp_path / "trainer" / "results.json").read_text())
    assert saved["metrics"]["bwt"] == run["metrics"]["bwt"] and saved["metrics"]["ap"] == run["metrics"]["ap"]
    assert (tmp_path / "trainer" / "accuracy_matrix.csv").is_file()
    logged = [h for h in tr.state.log_history if "forgetless/ap" in h]
    assert [h["forgetless/task"] for h in logged] == [0, 1] and "forgetless/bwt" in logged[-1]


def test_strategy_object_or_factory_same_as_name(tmp_path):
    from forgetless.data.task import TaskStream
    from forgetless.replay.base import StrategyContext, WorkCounters

    cfg = _cfg()
    by_name = _trainer(cfg, tmp_path / "name").train_stream(cfg.data.tasks)
    obj = compose.build_strategy(StrategyContext(config=cfg, stream=TaskStream(tasks=[]), seed=cfg.seed,
                                                 counters=WorkCounters()))
    model, tok = _model(cfg)
    by_obj = ReplayTrainer(model=model, args=_args(tmp_path / "obj", cfg), processing_class=tok, config=cfg,
                           strategy=obj).train_stream(cfg.data.tasks)
    model, tok = _model(cfg)
    by_factory = ReplayTrainer(model=model, args=_args(tmp_path / "f", cfg), processing_class=tok, config=cfg,
                               strategy=compose.build_strategy).train_stream(cfg.data.tasks)
    assert by_obj["replay_events"] == by_name["replay_events"] == by_factory["replay_events"]
    assert len(by_name["replay_events"]) > 0 and by_obj["acc"] == by_name["acc"]


def test_plain_train_on_a_tokenized_dataset_is_a_one_task_stream(tmp_path):
    """What LLaMA-Factory's patched trainer does: trainer.train() on its own input_ids/labels dataset."""
    from datasets import Dataset

    cfg = _cfg(**{"replay.strategy": "gere", "train.steps_per_task": 3})
    model, tok = _model(cfg)
    rows = []
    for p_, t_ in [("Say yes:", " yes"), ("Say no:", " no")] * 6:
        p_ids, t_ids = tok(p_, add_special_tokens=False)["input_ids"], tok(t_, add_special_tokens=False)["input_ids"]
        rows.append({"input_ids": p_ids + t_ids, "labels": [-100] * len(p_ids) + t_ids})
    tr = ReplayTrainer(model=model, args=_args(tmp_path, cfg), processing_class=tok, config=cfg,
                       train_dataset=Dataset.from_list(rows))
    obs = _record(tr.strategy)
    with pytest.warns(UserWarning, match="no accuracy matrix"):
        out = tr.train()
    assert out.global_step == 3 and [s for s, _, _ in obs] == [1, 2, 3]
    assert all(sum(i < 0 for i in ids) == 2 and sum(i >= 0 for i in ids) == 4 for _, ids, _ in obs)
    assert tr.results()["acc"] == [] and len(tr.replay_events) == 3


@pytest.mark.parametrize("metric", ["f1", "rouge_l"])
def test_a_task_is_scored_by_its_own_metric(tmp_path, metric):
    """A Task handed to the trainer keeps its metric: an answer sharing one word of two scores strictly
    between 0 and 1, as forgetless.evaluate scores it, where exact match would give 0."""
    from forgetless.data import load_task
    from forgetless.data.task import Example, Task
    from forgetless.evaluate import evaluate_task

    cfg = _cfg(**{"eval.max_new_tokens": 4})
    tr = _trainer(cfg, tmp_path)
    prompts = [e.prompt for e in load_task("first_word").test[:4]]
    probe = Task("probe", "generation", [], [Example(p, "x") for p in prompts])
    preds = evaluate_task(tr.model, tr.processing_class, probe, max_new_tokens=4).predictions
    # the untrained model's own first word plus one it never says: a partial overlap
    examples = [Example(p, f"{pred.split()[0]} zzyzx") for p, pred in zip(prompts, preds)]
    task = Task("partial", "generation", examples, examples, metric=metric)
    tr.set_stream([task])
    assert tr._stream.tasks[0].metric == metric
    # an eval Task given beside the training task brings its metric too
    tr.set_stream([Task("partial", "generation", examples, [])], eval_tasks=[task])
    assert tr._stream.tasks[0].metric == metric
    (score,) = tr._evaluate_row()
    assert 0 < score < 1
    assert score == pytest.approx(evaluate_task(tr.model, tr.processing_class, task, max_new_tokens=4).score)


def test_replay_forgets_less_than_none(tmp_path):
    """Full fine-tuning (LoRA learns too slowly on the tiny model), unicode_letter then first_word:
    30 steps learn the first task, the second one wipes it out without replay."""
    out = {}
    for strategy in ("none", "mssr"):
        cfg = _cfg(**{"replay.strategy": strategy, "model.lora.enabled": False, "seed": 0,
                      "data.tasks": ["unicode_letter", "first_word"], "data.n_train": 200, "data.n_test": 40,
                      "eval.batch_size": 40, "train.batch_size": 16, "train.steps_per_task": 30,
                      "replay.memory.size": 200})
        out[strategy] = _trainer(cfg, tmp_path / strategy, logging_steps=1000).train_stream(cfg.data.tasks)
    none, mssr = out["none"], out["mssr"]
    assert none["replay_events"] == [] and len(mssr["replay_events"]) > 5
    assert none["acc"][0][0] >= 0.4 and none["metrics"]["forgetting"] >= 0.3  # learned, then forgotten
    assert mssr["metrics"]["forgetting"] < none["metrics"]["forgetting"] - 0.3
    assert mssr["metrics"]["bwt"] > none["metrics"]["bwt"] + 0.3


def test_gradient_accumulation_gives_the_same_observed_losses(tmp_path):
    cfg = _cfg()
    logs = {}
    for accum in (1, 2):
        tr = _trainer(cfg, tmp_path / f"a{accum}", accum=accum)
        logs[accum] = _record(tr.strategy)
        res = tr.train_stream(cfg.data.tasks)
        logs[accum].append(res["replay_events"])
    one, two = logs[1], logs[2]
    assert one[-1] == two[-1] and len(one[-1]) > 0  # same replay events
    assert [x[:2] for x in one[:-1]] == [x[:2] for x in two[:-1]]
    for (_, _, a), (_, _, b) in zip(one[:-1], two[:-1]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_with_general_replay(tmp_path):
    """bf16 autocast (CPU here) through the Trainer's compute_loss context, GeRe's second forward included."""
    cfg = _cfg(**{"train.steps_per_task": 3, "replay.strategy": "gere+mssr"})
    tr = _trainer(cfg, tmp_path, bf16=True, logging_steps=1000)
    obs = _record(tr.strategy)
    res = tr.train_stream(cfg.data.tasks)
    assert all(np.isfinite(losses).all() for _, _, losses in obs)
    assert all(any(i < 0 for i in ids) for _, ids, _ in obs)  # general samples in every step
    assert len(res["replay_events"]) == 6 and np.asarray(res["acc"]).shape == (2, 2)


KILL = """
import os, sys, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from transformers import TrainerCallback
from test_integrations import _cfg, _trainer

class Kill(TrainerCallback):
    def on_save(self, args, state, control, **kw):
        if state.global_step == 9:  # task 2 is steps 7..12
            os._exit(3)

cfg = _cfg()
_trainer(cfg, {out!r}, save_strategy="steps", save_steps=3, callbacks=[Kill()]).train_stream(cfg.data.tasks)
"""


def test_resume_in_the_middle_of_task_2(tmp_path):
    cfg = _cfg()
    full = _trainer(cfg, tmp_path / "full").train_stream(cfg.data.tasks)

    out = tmp_path / "killed"
    code = KILL.format(tests=str(Path(__file__).parent), out=str(out))
    p = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                       env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                            "PYTHONWARNINGS": "ignore"})
    assert p.returncode == 3, p.stderr[-3000:]
    assert sorted(c.name for c in out.glob("checkpoint-*")) == ["checkpoint-3", "checkpoint-6", "checkpoint-9"]
    assert (out / "checkpoint-9" / "forgetless" / "stream.json").is_file()
    assert not (out / "results.json").exists() or json.loads((out / "results.json").read_text())["metrics"] is None

    tr = _trainer(cfg, out)
    obs = _record(tr.strategy)
    resumed = tr.train_stream(cfg.data.tasks, resume_from_checkpoint=True)
    assert [s for s, _, _ in obs] == [10, 11, 12]  # only the steps after the checkpoint were trained
    assert resumed["replay_events"] == full["replay_events"]
    assert resumed["acc"] == full["acc"] and resumed["baseline_acc"] == full["baseline_acc"]


def test_resume_refuses_another_stream(tmp_path):
    from forgetless.errors import InputError

    cfg = _cfg(**{"train.steps_per_task": 2})
    _trainer(cfg, tmp_path, save_strategy="steps", save_steps=2).train_stream(cfg.data.tasks)
    with pytest.raises(InputError, match="checkpoint was saved for tasks"):
        _trainer(cfg, tmp_path).train_stream(["last_word", "first_word"], resume_from_checkpoint=True)


def test_sft_trainer_with_the_mixin(tmp_path):
    trl = pytest.importorskip("trl", reason="trl is not installed: SFTTrainer + ReplayMixin not tested")
    from datasets import Dataset

    from forgetless.data import load_task
    from forgetless.integrations import ReplayMixin

    class ReplaySFT(ReplayMixin, trl.SFTTrainer):
        pass

    cfg = _cfg()
    model, tok = _model(cfg)
    tasks = {}
    for name in cfg.data.tasks:
        t = load_task(name)
        tasks[name] = Dataset.from_list([{"prompt": e.prompt, "completion": e.target} for e in t.train[:24]])
    args = trl.SFTConfig(output_dir=str(tmp_path), per_device_train_batch_size=4, max_steps=6, learning_rate=1e-3,
                         report_to="tensorboard", save_strategy="no", use_cpu=True, disable_tqdm=True,
                         seed=cfg.seed, max_length=64)
    # SFTTrainer insists on a train_dataset; the stream's first task serves
    tr = ReplaySFT(model=model, args=args, processing_class=tok, config=cfg, train_dataset=tasks["first_word"])
    obs = _record(tr.strategy)
    res = tr.train_stream(tasks, eval_tasks=list(cfg.data.tasks))
    assert res["tasks"] == list(cfg.data.tasks) and np.asarray(res["acc"]).shape == (2, 2)
    assert len(res["replay_events"]) > 0 and res["metrics"]["bwt"] is not None
    samples = tr._stream.samples[0]
    assert all((s.labels == -100).any() and (s.labels != -100).any() for s in samples)  # completion-only loss
    assert [s for s, _, _ in obs] == list(range(1, 13))
    assert {i for _, ids, _ in obs[6:] for i in ids} & set(range(24))  # task 1 samples replayed in task 2
    # the metrics reach report_to (here TensorBoard), at the step each task ended
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (events,) = tmp_path.glob("runs/*/events.out.tfevents.*")
    ea = EventAccumulator(str(events))
    ea.Reload()
    assert [e.step for e in ea.Scalars("train/forgetless/ap")] == [6, 12]
    assert ea.Scalars("train/forgetless/bwt")[-1].value == pytest.approx(res["metrics"]["bwt"])


MP = """
import json, sys
import numpy as np, torch
torch.set_num_threads(1)
sys.path.insert(0, {tests!r})
from forgetless.experiment import to_jsonable
from test_integrations import _cfg, _record, _trainer

cfg = _cfg(**{over})
tr = _trainer(cfg, {out!r}, accum=1, per_device_train_batch_size=cfg.train.batch_size // 2, **{kw})
{setup}
obs = _record(tr.strategy)
res = tr.train_stream(cfg.data.tasks)
rank = tr.accelerator.process_index
with open({out!r} + f"/rank{{rank}}.json", "w") as f:
    json.dump({{"state": to_jsonable(tr.strategy.state_dict()), "acc": res["acc"], "n": res["n_processes"],
               "events": res["replay_events"], "obs": [(s, ids, l.tolist()) for s, ids, l in obs],
               "wrapped": type(tr.model_wrapped).__name__}}, f)
"""

# Accelerate turns an FSDP plugin into DistributedType.FSDP only for GPU-like devices
# (AcceleratorState.__init__, accelerate/state.py); on CPU it silently trains with DDP. This sets the
# state as a GPU launch with TrainingArguments(fsdp=True) would, so the Trainer takes its FSDP2 path.
FSDP2_ON_CPU = """
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
st = tr.accelerator.state
assert st.distributed_type == DistributedType.MULTI_CPU and getattr(st, "fsdp_plugin", None) is None
st.distributed_type = DistributedType.FSDP
st.fsdp_plugin = FullyShardedDataParallelPlugin(**tr.args.fsdp_plugin_args)
tr.is_fsdp_enabled = True
"""


def _two_processes(tmp_path, over: dict | None = None, kw: str = "{}", setup: str = "") -> list[dict]:
    """The MP script under torchrun with 2 CPU processes (gloo); each rank's dump."""
    import socket

    out = tmp_path / "mp"
    out.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(textwrap.dedent(MP.format(tests=str(Path(__file__).parent), out=str(out), kw=kw,
                                                setup=setup, over=repr(over or {}))))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(port), str(script)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=400,
                       env={"PYTHONPATH": str(SRC), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin",
                            "PYTHONWARNINGS": "ignore"})
    assert p.returncode == 0, p.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def _same_as_one_process(r0, r1, single, one_obs) -> None:
    assert r0["n"] == 2 and r0["state"] == r1["state"] and r0["obs"] == r1["obs"]  # every process observes all
    assert r0["events"] == single["replay_events"] and r0["acc"] == single["acc"]
    assert [(s, ids) for s, ids, _ in r0["obs"]] == [(s, ids) for s, ids, _ in one_obs]
    for (_, _, a), (_, _, b) in zip(r0["obs"], one_obs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


def _one_process(out, **over):
    cfg = _cfg(**over)
    one = _trainer(cfg, out)
    one_obs = _record(one.strategy)
    return one.train_stream(cfg.data.tasks), one_obs


def test_two_processes_make_the_same_decisions_as_one(tmp_path):
    r0, r1 = _two_processes(tmp_path)
    assert r0["wrapped"] == "DistributedDataParallel"
    _same_as_one_process(r0, r1, *_one_process(tmp_path / "one"))


def test_fsdp2_on_two_cpu_processes_makes_the_same_decisions_as_one(tmp_path):
    """ReplayTrainer on the Trainer's FSDP2 path (LoRA, tiny model, 2 tasks, GeRe + MSSR): the model is
    sharded with fully_shard, general samples join every step, an odd eval set is scored between tasks,
    and decisions, losses and scores equal one process's."""
    # GeRe's default TM loss: its normaliser, the step's violating elements, is summed over the processes
    # (StrategyContext.reduce_sum), so the losses match one process's to 1e-5
    over = {"replay.strategy": "gere+mssr", "data.n_test": 11}
    r0, r1 = _two_processes(tmp_path, over, kw='{"fsdp": True, "fsdp_config": {"version": 2}}', setup=FSDP2_ON_CPU)
    assert r0["wrapped"].startswith("FSDP")  # fully_shard's class swap (FSDPPeftModelForCausalLM)
    single, one_obs = _one_process(tmp_path / "one", **over)
    assert any(i < 0 for _, ids, _ in one_obs for i in ids)  # general samples were merged
    _same_as_one_process(r0, r1, single, one_obs)
