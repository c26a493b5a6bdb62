"""A run's stages on disk, what ``--resume`` continues from.

``stages/<k>/`` (k=0 is the start, k=t+1 is after task t) holds the trainable weights, the LoRA adapter
in PEFT's format, the strategy state, the loop state (step, scores, counters, RNGs) and a manifest of
the files' sha256. A stage appears only once complete (written under a temporary name, then renamed)
and is never rewritten; resume takes the last intact one and removes any damaged stage after it.
experiment.Run decides what goes into a stage; this module only writes, verifies and reads it.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from forgetless.rundir import MANIFEST, sha256_file, verify_stage
from forgetless.state import atomic_write_text, load_state, save_state


class StageStore:
    """The ``stages/`` folder of one run directory (and its ``log.jsonl``, cut back on resume).
    Only the main process writes; ``last_intact`` must be called by every process."""

    def __init__(self, run_dir: Path, accelerator):
        self.run_dir, self.accelerator = Path(run_dir), accelerator

    def dir(self, k: int) -> Path:
        return self.run_dir / "stages" / str(k)

    def save(self, k: int, model, strategy_state: dict, loop: dict) -> None:
        """Write stage k (main process): ``model``'s trainable weights and adapter, the strategy and
        loop states. The caller waits for every process."""
        from forgetless.model import save_adapter, save_trainable

        if self.accelerator.is_main_process:
            final = self.dir(k)
            if final.exists():
                raise RuntimeError(f"stage {final} exists; a finished stage is never rewritten")
            tmp = final.parent / f".tmp-{k}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_trainable(model, tmp / "trainable.safetensors")
            save_adapter(model, tmp / "adapter")  # LoRA in PEFT's format, for users
            save_state(strategy_state, tmp, "strategy")
            save_state(loop, tmp, "loop")
            files = {p.relative_to(tmp).as_posix(): sha256_file(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
            atomic_write_text(tmp / MANIFEST, json.dumps({"files": files}, indent=1))
            tmp.rename(final)

    def last_intact(self) -> int:
        """The last stage that is intact, with the loop state of every stage before it (all that
        restoring reads of them: hashing every stage's weights would cost minutes for a large fully
        fine-tuned model). A damaged stage, and any after it, is named in one line and removed, so
        the run continues from the one before. -1: none."""
        stages = self.run_dir / "stages"
        done = sorted(int(p.name) for p in stages.iterdir() if p.name.isdigit()) if stages.is_dir() else []
        good, problem = -1, None
        for k in done:
            problem = f"stage {good + 1} is missing" if k != good + 1 else \
                verify_stage(self.dir(k), ("loop.json", "loop.npz"))
            if problem is not None:
                break
            good = k
        while good >= 0:
            last = verify_stage(self.dir(good))
            if last is None:
                break
            problem, good = last, good - 1
        if problem is not None:
            if self.accelerator.is_main_process:
                then = f"resuming from stage {good}" if good >= 0 else "starting over"
                print(f"warning: {problem}; {then}", file=sys.stderr)
                for k in done:
                    if k > good:
                        shutil.rmtree(self.dir(k), ignore_errors=True)
            self.accelerator.wait_for_everyone()
        return good

    def load(self, k: int, model, strategy) -> list[dict]:
        """Stage k's weights into ``model`` and its state into ``strategy``; returns the loop states
        of stages 0..k (their scores make the accuracy matrix so far)."""
        from forgetless.model import load_trainable

        d = self.dir(k)
        load_trainable(model, d / "trainable.safetensors")
        strategy.load_state_dict(load_state(d, "strategy"))
        return [load_state(self.dir(j), "loop") for j in range(k + 1)]

    def truncate_log(self, last_step: int) -> None:
        """Keep the steps up to the restored stage; a partial or garbage line (a kill mid-write) goes."""
        path = self.run_dir / "log.jsonl"
        if not self.accelerator.is_main_process or not path.is_file():
            return
        keep = []
        for ln in path.read_bytes().decode("utf-8", "replace").splitlines():
            try:
                entry = json.loads(ln)
            except ValueError:
                continue
            if isinstance(entry, dict) and isinstance(entry.get("step"), int) and entry["step"] <= last_step:
                keep.append(ln)
        atomic_write_text(path, "".join(ln + "\n" for ln in keep))
