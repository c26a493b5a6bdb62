"""Every replay preset reproduces, bit for bit, what the code before the schedule x sampler split did.

tests/fixtures/replay_presets.json was written by tests/helpers/replay_fixture.py at commit
"fixture of every preset" (before the refactor): accuracy matrix, replay events and replayed ids.
"""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "helpers"))
import replay_fixture  # noqa: E402

EXPECTED = json.loads(replay_fixture.FIXTURE.read_text())


@pytest.mark.parametrize("preset,budget", replay_fixture.CASES, ids=[replay_fixture.key(*c) for c in replay_fixture.CASES])
def test_preset_reproduces_recorded_run(preset, budget, tmp_path):
    got = replay_fixture.record(preset, budget, tmp_path)
    want = EXPECTED[replay_fixture.key(preset, budget)]
    assert got["replayed_ids"] == want["replayed_ids"]
    assert got["events"] == want["events"]
    assert got["acc"] == want["acc"] and got["baseline_acc"] == want["baseline_acc"]
    assert got["replay_tokens"] == want["replay_tokens"]
