"""benchmarks/gpu_check.py --tiny: the GPU check's whole path (two runs, the bare loop, the bare Trainer,
evaluation) on CPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_gpu_check_tiny_runs_and_reports(tmp_path):
    out = tmp_path / "check.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=str(ROOT / "src"))
    p = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--json", str(out)],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    r = json.loads(out.read_text())
    rows = {row["training"]: row for row in r["rows"]}
    assert set(rows) == {"forgetless run none", "forgetless run mssr", "bare PEFT loop", "bare Trainer + PEFT"}
    # the bare loop and the Trainer train on exactly the new-task batches of the `none` run; mssr adds replay
    assert rows["bare PEFT loop"]["tokens"] == rows["bare Trainer + PEFT"]["tokens"] == \
        rows["forgetless run none"]["tokens"]
    assert rows["forgetless run mssr"]["tokens"] > rows["forgetless run none"]["tokens"]
    assert set(r["eval_examples_per_s"]) == {"generation", "multiple_choice"}
    assert all(row["tokens_per_s"] > 0 for row in rows.values())
    assert "bare Trainer + PEFT" in p.stdout and "evaluation examples/s" in p.stdout
    assert r["step_time_ratio_none_vs_trainer"] > 0
