"""Splits fixed by the data, not the seed (issue 19, point 2): train / dev / test come from a hash of
each example for every kind of task; the seed changes training only; nothing that takes a training
decision reads a test example."""

import json
import sys
from pathlib import Path

from forgetless import experiment
from forgetless.config import DataConfig, TaskFileConfig
from forgetless.data import load_stream
from forgetless.data.task import Example, split_by_hash

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
import replay_fixture  # noqa: E402

BENCH = Path(__file__).parent / "fixtures" / "benchmarks"


def test_split_by_hash_follows_content_only():
    exs = [Example(f"q{i}", "a") for i in range(100)]
    train, dev, test = split_by_hash(exs, 10, 20)
    assert (len(train), len(dev), len(test)) == (70, 10, 20)
    assert train + dev + test != exs and sorted(train + dev + test, key=exs.index) == exs
    # the order of the input and the other examples do not move an example between splits
    train2, dev2, test2 = split_by_hash(exs[::-1], 10, 20)
    assert (set(map(id, train2)), set(map(id, dev2)), set(map(id, test2))) == tuple(set(map(id, s)) for s in (train, dev, test))


def test_split_is_the_same_in_every_process():
    """sha256 of the prompt, not Python's salted ``hash``: another hash seed gives the same split."""
    import os
    import subprocess

    code = ("from forgetless.data.task import Example, split_by_hash;"
            "print([e.prompt for e in split_by_hash([Example(f'q{i}', 'a') for i in range(50)], 5, 5)[2]])")
    out = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONHASHSEED": h}).stdout for h in ("1", "2")}
    assert len(out) == 1 and out.pop().count("q") == 5


def test_same_prompt_same_split():
    exs = [Example(f"q{i % 10}", f"a{i}") for i in range(50)]  # 10 prompts, 5 examples each
    train, dev, test = split_by_hash(exs, 5, 5)
    for s in (train, dev, test):
        assert len(s) % 5 == 0
    assert not {e.prompt for e in test} & {e.prompt for e in train + dev}


def _cfg(seed: int, tmp_path, preset: str = "uniform", steps: int = 2):
    raw = json.loads(json.dumps(replay_fixture.RAW))
    task = tmp_path / "mine.jsonl"
    task.write_text("".join(json.dumps({"prompt": f"say {i}", "target": f" {i}"}) + "\n" for i in range(30)))
    raw["data"]["tasks"] = ["first_word", {"path": str(task), "name": "mine"}]
    raw["data"]["n_test"] = 4
    raw.update(seed=seed, name=f"{preset.replace('+', '_')}-{seed}")
    raw["train"]["steps_per_task"] = steps
    raw["replay"]["strategy"] = preset
    raw["replay"]["budget"] = 0.5
    from forgetless.config import from_dict

    return from_dict(raw)


def test_two_seeds_same_splits_different_training_order(tmp_path, monkeypatch):
    from forgetless import train

    batches: list[list[int]] = []
    nxt = train.BatchSampler.next
    monkeypatch.setattr(train.BatchSampler, "next", lambda self: batches.append(list(nxt(self))) or batches[-1])
    runs = {}
    for seed in (0, 1):
        batches.clear()
        res = experiment.run(_cfg(seed, tmp_path), tmp_path / "o", progress=False)
        fp = json.loads((tmp_path / "o" / f"uniform-{seed}" / "fingerprints.json").read_text())
        runs[seed] = (fp["tasks"], list(batches), res["acc"])
    # every split of every task (built-in and file; content and order) is the same for both seeds
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] != runs[1][1]  # the seed changes which samples train at each step


def test_preset_splits_are_hash_splits():
    s = load_stream(DataConfig(benchmark="trace", benchmark_order=1, benchmark_dir=str(BENCH / "TRACE")))
    t = {t.name: t for t in s.tasks}["FOMC"]
    train, dev, _ = split_by_hash(t.train + t.dev, len(t.dev), 0)
    assert (train, dev) == (t.train, t.dev) and t.files["test"].endswith("FOMC/test.json")
    assert not {e.prompt for e in t.dev} & {e.prompt for e in t.test}


def test_the_spy_catches_a_strategy_that_reads_test(tmp_path, monkeypatch):
    """The spy that test_replay_presets puts on every preset's run (replay_fixture.record) can fail:
    accuracy_triggered made to probe test instead of dev is caught at the line that reads it."""
    from forgetless.replay.schedules.baselines import AccuracyTriggeredSchedule

    def probe_test(self, j):
        ctx = self.host.ctx
        return float(ctx.evaluate(j, ctx.stream.tasks[j].test[:4]))

    monkeypatch.setattr(AccuracyTriggeredSchedule, "_eval", probe_test)
    undo = replay_fixture.spy_on_test_splits()
    try:
        experiment.run(_cfg(0, tmp_path, "accuracy_triggered"), tmp_path / "o", progress=False)
    finally:
        undo()
    assert replay_fixture.SplitSpy.reads and replay_fixture.SplitSpy.scored > 0
    assert all(r.startswith("baselines.py") for r in replay_fixture.SplitSpy.reads), replay_fixture.SplitSpy.reads
