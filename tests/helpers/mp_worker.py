"""Launched with torchrun: one process of a multi-process run; dumps its own strategy state."""

import json
import sys

import numpy as np

from forgetless import experiment
from forgetless.config import load_config

cfg_path, out = sys.argv[1], sys.argv[2]
cfg = load_config(cfg_path)
r = experiment.Run(cfg, experiment.run_dir_for(cfg, out), progress=False)
result = r.execute()


def plain(x):
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return x


rank = r.accelerator.process_index
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"state": plain(r.strategy.state_dict()), "acc": result["acc"],
               "replay_events": result["replay_events"], "n_processes": result["n_processes"]}, f)
