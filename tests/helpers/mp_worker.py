"""Launched with torchrun: one process of a multi-process run; dumps its own strategy state."""

import json
import sys

from forgetless import experiment
from forgetless.experiment import to_jsonable
from forgetless.config import load_config

cfg_path, out = sys.argv[1], sys.argv[2]
cfg = load_config(cfg_path)
r = experiment.Run(cfg, experiment.run_dir_for(cfg, out), progress=False)
result = r.execute()


rank = r.accelerator.process_index
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump({"state": to_jsonable(r.strategy.state_dict()), "acc": result["acc"],
               "replay_events": result["replay_events"], "n_processes": result["n_processes"]}, f)
