"""Short tiny-model runs of every replay preset, recorded so a refactor can prove it changed nothing.

``record(preset, budget)`` runs the real loop and returns the accuracy matrix, the replay events and
the ids replayed at each event. The ids are captured by wrapping the built strategy's
``replay_batch`` (a test-only hook; the strategy itself is untouched).
``python tests/helpers/replay_fixture.py`` rewrites tests/fixtures/replay_presets.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

FIXTURE = Path(__file__).parent.parent / "fixtures" / "replay_presets.json"
PRESETS = ["none", "joint", "uniform", "fixed", "loss_triggered", "accuracy_triggered", "mssr", "gere", "gere+mssr"]
# every preset at a budget; the unbudgeted code path where a preset has one
CASES = [(p, 0.5) for p in PRESETS] + [(p, None) for p in ("uniform", "fixed", "loss_triggered", "mssr")]

RAW = {
    "name": "fx",
    "seed": 3,
    "model": {"lora": {"enabled": False}},
    "data": {"tasks": ["first_word", "last_word", "unicode_letter"], "n_train": 40, "n_test": 8, "general_texts": 0},
    "train": {"steps_per_task": 8, "batch_size": 8, "lr": 1e-3},
    "eval": {"batch_size": 16},
    "replay": {
        "memory": {"size": 24},
        "fixed": {"interval": 3},
        "loss_triggered": {"window": 2, "c": 0.0},
        "accuracy_triggered": {"every": 2, "probe_size": 4, "window": 2, "delta": 0.0},
        "gere": {"n_samples": 6, "seq_len": 24, "weight": 1.0},
        # today's MSSR one option away (added after the fixture was recorded, when the default
        # schedule became "retention"; the recorded runs had only the geometric schedule)
        # and the memory model and draw of then (the fitted model became the default in issue 20)
        "mssr": {"schedule": "geometric", "retention": {"model": "legacy"}, "sampler": {"standardize": False}},
    },
}


def config(preset: str, budget: float | None):
    from forgetless.config import from_dict

    raw = json.loads(json.dumps(RAW))
    raw["name"] = f"fx-{preset.replace('+', '_')}-{budget}"
    raw["replay"]["strategy"] = preset
    raw["replay"]["budget"] = budget
    return from_dict(raw)


class SplitSpy(list):
    """A test split that records where it is read from while ``armed`` (training, not scoring)."""

    armed = False
    reads: list[str] = []  # while armed: the innermost forgetless frame that read it
    scored = 0  # reads while not armed (the stage evaluations): proves the spy is in place

    def _note(self):
        if not SplitSpy.armed:
            SplitSpy.scored += 1
            return
        import traceback

        frames = [f for f in traceback.extract_stack()[:-2] if "/forgetless/" in f.filename]
        SplitSpy.reads.append(f"{Path(frames[-1].filename).name}:{frames[-1].lineno} {frames[-1].name}" if frames else "?")

    def __getitem__(self, i):
        self._note()
        return super().__getitem__(i)

    def __iter__(self):
        self._note()
        return super().__iter__()

    def __len__(self):
        self._note()
        return super().__len__()


def spy_on_test_splits():
    """Wrap every test split of the next runs in a SplitSpy, armed from the end of set-up to the end
    of the last stage except while a stage is scored. Returns the function that undoes it."""
    import forgetless.data
    from forgetless import experiment
    from forgetless.stage_eval import StageEvaluator

    load, saved = forgetless.data.load_stream, {}

    def spied(cfg):
        stream = load(cfg)
        for t in stream.tasks:
            t.test = SplitSpy(t.test)
        return stream

    def phase(cls, name, during, after):
        inner = saved[cls, name] = getattr(cls, name)

        def outer(self, *a, **k):
            SplitSpy.armed = during
            try:
                return inner(self, *a, **k)
            finally:
                SplitSpy.armed = after
        setattr(cls, name, outer)

    forgetless.data.load_stream = spied
    phase(experiment.Run, "_setup", False, True)
    phase(StageEvaluator, "evaluate", False, True)
    phase(experiment.Run, "_finish", False, False)
    SplitSpy.reads, SplitSpy.scored = [], 0

    def undo():
        forgetless.data.load_stream = load
        for (cls, name), fn in saved.items():
            setattr(cls, name, fn)
        SplitSpy.armed = False
    return undo


def record(preset: str, budget: float | None, out_dir) -> dict:
    """Run one short experiment and return what the fixture stores, plus ``test_reads``: where a
    test example was read while training (nothing that takes a training decision may read test)."""
    from forgetless import experiment
    from forgetless.replay import compose

    ids: list[list[int]] = []
    build = compose.build_strategy

    def recording_build(ctx):
        strat = build(ctx)
        inner = strat.replay_batch

        def replay_batch(step, batch_size):
            rb = inner(step, batch_size)
            if rb is not None and len(rb):
                ids.append([int(s.sample_id) for s in rb.samples])
            return rb

        strat.replay_batch = replay_batch
        return strat

    compose.build_strategy = recording_build
    undo = spy_on_test_splits()
    try:
        res = experiment.run(config(preset, budget), out_dir, progress=False)
    finally:
        compose.build_strategy = build
        undo()
    assert SplitSpy.scored > 0  # the spy saw the stage evaluations: it was in place
    return {"acc": res["acc"], "baseline_acc": res["baseline_acc"],
            "events": [[e["step"], e["task"], e["n_samples"]] for e in res["replay_events"]],
            "replayed_ids": ids, "replay_tokens": res["counters"]["replay_tokens"], "test_reads": SplitSpy.reads}


def key(preset: str, budget: float | None) -> str:
    return f"{preset}@{budget}"


def main() -> None:
    import tempfile

    import torch

    torch.set_num_threads(1)
    out = {}
    with tempfile.TemporaryDirectory() as d:
        for p, b in CASES:
            out[key(p, b)] = record(p, b, d)
            assert not out[key(p, b)].pop("test_reads")
            print(key(p, b), "events", len(out[key(p, b)]["events"]), file=sys.stderr)
    FIXTURE.write_text(json.dumps(out, indent=None, separators=(",", ":")) + "\n")


if __name__ == "__main__":
    main()
