"""The knowledge probe in its two forms on the saved stages of bench runs: does it measure knowledge,
or the answer format the stream trains?

    python benchmarks/probe_forms.py bench/smollm2 --strategies none,gere --seeds 0,1,2 [--ends]

``qa`` ("What is the currency of X? Answer:") is the form runs report (data.general_probe); the
built-in tasks train that "? Answer:" format. ``cloze`` ("The currency of X is the") scores the same
facts and options as a sentence no task trains. For each run and stage k the script loads the run's
model with stages/k/trainable.safetensors and scores both forms with the run's evaluation settings,
precision and CPU threads, the probe size and seed of the run. Prints one markdown table per form.
"""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path

import numpy as np
import torch

from forgetless.bench import run_name
from forgetless.config import load_config
from forgetless.data.tokenize import use_chat_template
from forgetless.data.general import knowledge_probe
from forgetless.evaluate import evaluate_task
from forgetless.model import load_model, load_trainable


def score_run(run_dir: Path, n: int | None, ends: bool = False) -> dict[str, list[float]]:
    cfg = load_config(run_dir / "config.yaml")
    # the run's thread count: with bf16 on CPU the reduction order moves close multiple-choice calls
    # (2 of 50 questions flipped at 2 threads against the run's 1), so anything else would not reproduce it
    torch.set_num_threads(cfg.train.cpu_threads)
    model, tok = load_model(cfg.model)
    chat = use_chat_template(cfg.data.chat_template, tok, cfg.model.name)
    n = n or cfg.data.general_probe or 50
    probes = {f: knowledge_probe(n, form=f) for f in ("qa", "cloze")}
    bf16 = cfg.train.precision == "bf16"
    out: dict[str, list[float]] = {f: [] for f in probes}
    stages = sorted((p for p in (run_dir / "stages").iterdir() if p.name.isdigit()), key=lambda p: int(p.name))
    if ends:
        stages = [stages[0], stages[-1]]
    for st in stages:
        load_trainable(model, st / "trainable.safetensors")
        amp = torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
        with amp:
            for f, task in probes.items():
                r = evaluate_task(model, tok, task, batch_size=cfg.eval.batch_size, mc_scoring=cfg.eval.mc_scoring,
                                  template=cfg.data.prompt_template, max_length=cfg.data.max_length, chat=chat)
                out[f].append(r.score)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bench", type=Path)
    ap.add_argument("--strategies", default="none")
    ap.add_argument("--seeds", default="0", help="comma-separated")
    ap.add_argument("-n", type=int, default=None, help="probe questions (default: the run's data.general_probe)")
    ap.add_argument("--ends", action="store_true", help="only the start and the last stage (a third of the time)")
    a = ap.parse_args()
    cells = [(s, seed, a.bench / "runs" / run_name(s, seed, 0))
             for s in a.strategies.split(",") for seed in map(int, a.seeds.split(","))]
    for _, _, run in cells:  # all checked before the first (slow) one is scored
        if not (run / "results.json").is_file():
            raise SystemExit(f"error: {run}: no finished run (results.json missing)")
    rows = {"qa": [], "cloze": []}
    for s, seed, run in cells:
        for f, accs in score_run(run, a.n, a.ends).items():
            rows[f].append((s, seed, accs))
    for f, rs in rows.items():
        k = max(len(r[2]) for r in rs)
        print(f"\nprobe form `{f}` ({'the reported one' if f == 'qa' else 'sentence completion'}): accuracy per stage\n")
        names = ["start", "end"] if a.ends else [f"stage {i}" for i in range(k)]
        print("| strategy | seed | " + " | ".join(names) + " | end − start |")
        print("|---" * (k + 3) + "|")
        for s, seed, accs in rs:
            print(f"| {s} | {seed} | " + " | ".join(f"{x:.3f}" for x in accs) + f" | {accs[-1] - accs[0]:+.3f} |")
        for s in dict.fromkeys(r[0] for r in rs):
            mine = np.array([r[2] for r in rs if r[0] == s])
            d = mine[:, -1] - mine[:, 0]
            print(f"| **{s}** | mean ± std |" + "".join(f" {m:.3f} ± {sd:.3f} |" for m, sd in zip(mine.mean(0), mine.std(0)))
                  + f" {np.mean(d):+.3f} ± {np.std(d):.3f} |")


if __name__ == "__main__":
    main()
