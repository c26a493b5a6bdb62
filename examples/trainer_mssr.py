"""MSSR replay inside a plain transformers.Trainer, offline, on the bundled tiny model (about a minute on CPU).

    python examples/trainer_mssr.py [--output runs/trainer_mssr]

Trains two built-in tasks in sequence (unicode_letter, then first_word) twice, with strategy `none`
and with `mssr`, evaluates every task after each one, and prints the accuracy matrices and the
forgetting. Each run's directory holds results.json, accuracy_matrix.csv, report.md and Trainer
checkpoints that carry the replay state (resume with train_stream(..., resume_from_checkpoint=True)).
"""

import argparse
from pathlib import Path

import torch
from accelerate.utils import set_seed
from transformers import TrainingArguments

from forgetless.config import from_dict
from forgetless.integrations import ReplayTrainer
from forgetless.model import load_model

TASKS = ["unicode_letter", "first_word"]


def run(strategy: str, output: Path) -> dict:
    config = {  # forgetless sections: data caps, evaluation, replay (training options are the Trainer's)
        "model": {"lora": {"enabled": False}},  # the 4M-parameter tiny model learns fast only fully fine-tuned
        "data": {"n_train": 200, "n_test": 40},
        "eval": {"batch_size": 40},
        "replay": {"memory": {"size": 200}},
    }
    set_seed(0)
    model, tokenizer = load_model(from_dict(config).model)
    args = TrainingArguments(
        output_dir=str(output / strategy), per_device_train_batch_size=16, max_steps=30,  # steps per task
        learning_rate=1e-3, lr_scheduler_type="constant", save_strategy="steps", save_steps=20,
        logging_steps=10, report_to="none", use_cpu=not torch.cuda.is_available(), disable_tqdm=True, seed=0,
    )
    trainer = ReplayTrainer(model=model, args=args, processing_class=tokenizer, strategy=strategy, config=config)
    return trainer.train_stream(TASKS)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", type=Path, default=Path("runs/trainer_mssr"))
    out = ap.parse_args().output
    torch.set_num_threads(1)
    results = {s: run(s, out) for s in ("none", "mssr")}
    for s, r in results.items():
        m = r["metrics"]
        print(f"\n{s}: AP {m['ap']:.3f}  BWT {m['bwt']:+.3f}  forgetting {m['forgetting']:.3f}  "
              f"replayed samples {r['counters']['replay_samples']}  ({out / s / 'results.json'})")
        print("  after \\ on  " + "  ".join(f"{n:>14}" for n in r["tasks"]))
        for name, row in zip(r["tasks"], r["acc"]):
            print(f"  {name:>10}  " + "  ".join(f"{v:14.3f}" for v in row))


if __name__ == "__main__":
    main()
