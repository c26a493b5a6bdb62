"""Training and evaluation speed of `forgetless run` against a bare PEFT loop, ready for a GPU.

    python benchmarks/gpu_check.py                 # Qwen2.5-1.5B shape, one GPU (about 4 minutes on an H200)
    python benchmarks/gpu_check.py --size 7b       # Qwen2.5-7B shape
    python benchmarks/gpu_check.py --tiny          # a tiny Qwen2 shape on CPU, seconds (the test runs it)
    python benchmarks/gpu_check.py --size smollm2 --cpu  # SmolLM2-135M shape on the CPU (the CPU comparison)

A randomly initialised model of the named shape (no download: only the shape matters for speed), LoRA
(r 16 on every linear layer), bf16 on a GPU (weights and autocast), a three-task stream of synthetic
sentences (two generation tasks and one multiple-choice task, files written to a temporary folder).
Four trainings on the same new-task batches, side by side:
  - `forgetless run` with strategy none (experiment.Run, the loop `forgetless run` uses),
  - the same with mssr (its replay adds tokens; tokens/s counts them),
  - a bare loop: the same PEFT model, AdamW, HF's own loss, autocast, clipping, nothing else,
  - transformers.Trainer on the same PEFT model and batches (constant lr, no logging, saving or evaluation).
Printed per training: tokens/s over the whole training, seconds per step, peak GPU memory; for the runs
also the replay bookkeeping share of the step time and the share of the run's wall-clock spent
evaluating; then evaluation examples/s for multiple choice and for generation on the trained model.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

# (transformers class, config) per shape; vocab and tying as the released models
SHAPES = {
    "tiny": ("Qwen2", dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                           num_key_value_heads=2, vocab_size=4096, tie_word_embeddings=True)),
    "smollm2": ("Llama", dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                              num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True)),
    "1.5b": ("Qwen2", dict(hidden_size=1536, intermediate_size=8960, num_hidden_layers=28, num_attention_heads=12,
                           num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True)),
    "7b": ("Qwen2", dict(hidden_size=3584, intermediate_size=18944, num_hidden_layers=28, num_attention_heads=28,
                         num_key_value_heads=4, vocab_size=152064, tie_word_embeddings=False)),
}


def random_model(size: str, tokenizer, device: torch.device, dtype: torch.dtype):
    import transformers

    kind, shape = SHAPES[size]
    cfg = getattr(transformers, f"{kind}Config")(**shape, max_position_embeddings=4096, bos_token_id=tokenizer.bos_token_id,
                                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    with torch.device(device):
        return getattr(transformers, f"{kind}ForCausalLM")._from_config(cfg, dtype=dtype)


def write_tasks(folder: Path, n: int, seed: int = 0) -> list[dict]:
    """Three synthetic task files: long prompt -> short answer (x2), and 4-way multiple choice."""
    rng = np.random.default_rng(seed)
    letters = np.array(list("abcdefghijklmnopqrstuvwxyz"))
    words = ["".join(rng.choice(letters, rng.integers(3, 8))) for _ in range(300)]

    def sent(k):
        return " ".join(rng.choice(words, k))

    tasks = []
    for name, make in (
        ("recall", lambda: {"prompt": sent(16), "target": sent(4)}),
        ("summary", lambda: {"prompt": sent(24), "target": sent(6)}),
        ("choice", lambda: (lambda c: {"question": sent(16), "choices": c, "answer": int(rng.integers(4))})(
            list(dict.fromkeys(sent(1) + str(i) for i in range(4))))),
    ):
        path = folder / f"{name}.jsonl"
        path.write_text("".join(json.dumps(make()) + "\n" for _ in range(n)))
        tasks.append({"path": str(path), "name": name})
    return tasks


def config(args, tasks: list[dict], strategy: str):
    from forgetless.config import Config

    return Config.model_validate({
        "name": strategy, "seed": 0,
        "model": {"name": f"random-{args.size}", "lora": {"r": 16, "alpha": 32}},
        "data": {"tasks": tasks, "n_train": args.batch * args.steps, "n_test": args.n_eval, "max_length": 256,
                 "general_texts": 0, "chat_template": False},
        "train": {"steps_per_task": args.steps, "batch_size": args.batch, "lr": 1e-4, "cpu_threads": args.threads},
        "eval": {"batch_size": args.eval_batch},
        "replay": {"strategy": strategy, "memory": {"size": 4 * args.batch * args.steps}},
    })


def peak_gb(device) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else None


def reset_peak(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def forgetless_run(args, tasks, strategy: str, out: Path, device, dtype) -> tuple[dict, object]:
    """One `forgetless run` (experiment.Run) on the random model; the loader is the only thing replaced."""
    from forgetless import experiment, model as fmodel

    def load_random(mcfg, device=None):
        tok = fmodel.load_tokenizer("tiny")
        m = random_model(args.size, tok, torch.device(device), dtype)
        return fmodel.attach_lora(m, mcfg.lora), tok

    real, fmodel.load_model = fmodel.load_model, load_random
    try:
        reset_peak(device)
        t0 = time.perf_counter()
        cfg = config(args, tasks, strategy)
        run = experiment.Run(cfg, experiment.run_dir_for(cfg, out), progress=False)
        r = run.execute()
        wall = time.perf_counter() - t0
    finally:
        fmodel.load_model = real
    c = r["counters"]
    step_s = c["time_train_s"] + c["time_replay_bookkeeping_s"]
    tokens = c["new_task_tokens"] + c["replay_tokens"]
    return {"training": f"forgetless run {strategy}", "tokens": tokens, "tokens_per_s": tokens / step_s,
            "s_per_step": step_s / c["optimizer_steps"], "peak_gb": peak_gb(device),
            "bookkeeping_share": c["time_replay_bookkeeping_s"] / step_s,
            "eval_share": c["time_eval_s"] / wall}, run


def same_batches(args, cfg, stream) -> list:
    """Each step's new-task samples, drawn as the `none` run draws them (its BatchSampler, its RNG)."""
    from forgetless.replay.base import BaseStrategy
    from forgetless.train import LOOP_RNG_TAG, BatchSampler, compose_step

    rng = np.random.default_rng([cfg.seed, LOOP_RNG_TAG])
    steps, step = [], 0
    for samples in stream.samples:
        sampler = BatchSampler(len(samples), cfg.train.batch_size, rng)
        for _ in range(args.steps):
            step += 1
            steps.append(compose_step(samples, sampler, BaseStrategy(None), step, cfg.train.batch_size, rng)[2])
    return steps


def bare_loop(args, cfg, stream, tokenizer, device, dtype) -> dict:
    """The same new-task batches as the `none` run (same draws), through a plain PEFT training loop."""
    from forgetless import model as fmodel
    from forgetless.train import collate

    reset_peak(device)
    model = fmodel.attach_lora(random_model(args.size, tokenizer, device, dtype), cfg.model.lora)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.train.lr)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    pad, tokens, step, elapsed = tokenizer.pad_token_id, 0, 0, 0.0
    for merged in same_batches(args, cfg, stream):
        if step % args.steps == 0:
            opt.state.clear()  # a task starts
        step += 1
        tokens += sum(s.n_tokens for s in merged)
        t0 = time.perf_counter()
        batch = {k: v.to(device) for k, v in collate(merged, pad).items() if k != "sample_ids"}
        with autocast:
            loss = model(**batch, use_cache=False).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.train.max_grad_norm)
        opt.step()
        opt.zero_grad(set_to_none=True)
        float(loss.detach())  # wait for the step, as the run waits for its per-sample losses
        elapsed += time.perf_counter() - t0
    return {"training": "bare PEFT loop", "tokens": tokens, "tokens_per_s": tokens / elapsed,
            "s_per_step": elapsed / step, "peak_gb": peak_gb(device)}


def bare_trainer(args, cfg, stream, tokenizer, device, dtype, out: Path) -> dict:
    """The same new-task batches through transformers.Trainer + PEFT: the Trainer's loop, the model's own
    loss, AdamW at a constant lr, clipping, bf16 autocast on a GPU; no logging, saving or evaluation.
    Timed from each step's start to its end (Trainer callbacks), as the runs time their steps."""
    from transformers import PrinterCallback, Trainer, TrainerCallback, TrainingArguments

    from forgetless import model as fmodel
    from forgetless.train import collate

    reset_peak(device)
    model = fmodel.attach_lora(random_model(args.size, tokenizer, device, dtype), cfg.model.lora)
    steps = same_batches(args, cfg, stream)
    pad = tokenizer.pad_token_id
    batches = [{k: v for k, v in collate(m, pad).items() if k != "sample_ids"} for m in steps]

    class Timer(TrainerCallback):
        elapsed, t0 = 0.0, 0.0

        def on_step_begin(self, *a, **k):
            self.t0 = time.perf_counter()

        def on_step_end(self, *a, **k):
            if device.type == "cuda":
                torch.cuda.synchronize()  # the Trainer does not wait for the step; the bare loop does
            Timer.elapsed += time.perf_counter() - self.t0

    targs = TrainingArguments(
        output_dir=str(out), per_device_train_batch_size=1, max_steps=len(batches), learning_rate=cfg.train.lr,
        lr_scheduler_type="constant", optim="adamw_torch", weight_decay=0.0, max_grad_norm=cfg.train.max_grad_norm,
        report_to="none", save_strategy="no", logging_strategy="no", disable_tqdm=True, remove_unused_columns=False,
        use_cpu=device.type == "cpu", bf16=device.type == "cuda", seed=cfg.seed, dataloader_num_workers=0)
    trainer = Trainer(model=model, args=targs, train_dataset=batches, data_collator=lambda rows: rows[0],
                      callbacks=[Timer()])
    trainer.remove_callback(PrinterCallback)  # its end-of-training summary is not this table's
    trainer.train()
    tokens = sum(sum(s.n_tokens for s in m) for m in steps)
    return {"training": "bare Trainer + PEFT", "tokens": tokens, "tokens_per_s": tokens / Timer.elapsed,
            "s_per_step": Timer.elapsed / len(batches), "peak_gb": peak_gb(device)}


def eval_speed(run, device) -> dict:
    """Examples/s of the run's own evaluation of the trained model: multiple choice and generation."""
    from forgetless.evaluate import evaluate_task

    out = {}
    for task in run.stream.tasks:
        kind = "multiple_choice" if task.kind == "multiple_choice" else "generation"
        if kind in out:
            continue
        with run.accelerator.autocast():
            t0 = time.perf_counter()
            evaluate_task(run.base_model, run.tokenizer, task, batch_size=run.cfg.eval.batch_size, device=device)
            if device.type == "cuda":
                torch.cuda.synchronize()
        out[kind] = len(task.test) / (time.perf_counter() - t0)
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--size", choices=sorted(SHAPES), default="1.5b")
    ap.add_argument("--tiny", action="store_true", help="--size tiny with few steps: CPU, seconds")
    ap.add_argument("--steps", type=int, default=30, help="optimizer steps per task")
    ap.add_argument("--batch", type=int, default=16, help="new-task samples per step")
    ap.add_argument("--n-eval", type=int, default=128, help="test examples per task")
    ap.add_argument("--eval-batch", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="torch threads on CPU")
    ap.add_argument("--cpu", action="store_true", help="train on the CPU even where a GPU is visible")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    args = ap.parse_args(argv)
    if args.cpu:  # before anything asks torch about CUDA: the runs' Accelerator must not see a GPU either
        os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if args.tiny:
        args.size, args.steps, args.batch, args.n_eval, args.eval_batch = "tiny", 3, 4, 8, 8
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        # task files split 80/20 into train and test: enough records for both
        tasks = write_tasks(Path(tmp), int(max(args.batch * args.steps / 0.8, args.n_eval / 0.2)) + 8)
        # a first run warms up (kernels, allocator) and gives the evaluation figures and the batches
        _, run = forgetless_run(args, tasks, "none", Path(tmp) / "warm", device, dtype)
        evals = eval_speed(run, device)
        kept = (run.cfg, run.stream, run.tokenizer)
        del run  # each training's peak memory is its own
        rows = []
        for strategy in ("none", "mssr"):
            gc.collect()
            rows.append(forgetless_run(args, tasks, strategy, Path(tmp) / "runs", device, dtype)[0])
        gc.collect()
        rows.append(bare_loop(args, *kept, device, dtype))
        gc.collect()
        rows.append(bare_trainer(args, *kept, device, dtype, Path(tmp) / "trainer"))
    device_name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} thread(s)"
    print(f"{args.size} shape, random weights, LoRA r16, {device_name}, {args.steps} steps x 3 tasks, "
          f"batch {args.batch}")
    print(f"{'training':<24}{'tokens/s':>10}{'s/step':>9}{'peak GB':>9}{'bookkeeping':>13}{'eval share':>12}")
    for r in rows:
        pk = f"{r['peak_gb']:.1f}" if r["peak_gb"] is not None else "-"
        bk = f"{100 * r['bookkeeping_share']:.1f}%" if "bookkeeping_share" in r else "-"
        ev = f"{100 * r['eval_share']:.0f}%" if "eval_share" in r else "-"
        print(f"{r['training']:<24}{r['tokens_per_s']:>10.0f}{r['s_per_step']:>9.3f}{pk:>9}{bk:>13}{ev:>12}")
    ratio = rows[2]["tokens_per_s"] / rows[0]["tokens_per_s"]
    vs_trainer = rows[3]["tokens_per_s"] / rows[0]["tokens_per_s"]
    print(f"step time of forgetless run none / bare loop: {ratio:.2f}x, / bare Trainer: {vs_trainer:.2f}x "
          "(goal <= 1.05)")
    print("evaluation examples/s: " + ", ".join(f"{k} {v:.1f}" for k, v in evals.items()))
    result = {"size": args.size, "device": device_name, "steps": args.steps, "batch": args.batch, "rows": rows,
              "eval_examples_per_s": evals, "step_time_ratio_none_vs_bare": ratio,
              "step_time_ratio_none_vs_trainer": vs_trainer}
    if args.json:
        args.json.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
