"""Run an experiment and SIGKILL this very process right after stage K is saved (a real crash)."""

import os
import signal
import sys

import torch

torch.set_num_threads(1)

from forgetless import experiment  # noqa: E402
from forgetless.config import load_config  # noqa: E402

cfg_path, out, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])


def on_stage(k: int) -> None:
    if k == kill_at:
        os.kill(os.getpid(), signal.SIGKILL)


experiment.run(load_config(cfg_path), out, progress=False, on_stage=on_stage)
