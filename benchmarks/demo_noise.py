"""The demo stream's seed noise: every demo strategy over 3 seeds, then the pooled std of AP.

    python benchmarks/demo_noise.py [--seeds 3] [--jobs 2] [--output bench/demo-3seeds]

Runs (or reuses) `forgetless bench --seeds 3 --jobs 2 --output bench/demo-3seeds` on the demo
config and writes src/forgetless/assets/demo_noise.json, which `forgetless demo` reads to say how
large a difference between two of its single-seed runs is noise. The file records the digest of the
demo config it was measured on; the demo ignores it (and says so) once the demo config changes.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
from pathlib import Path

from forgetless import bench
from forgetless.state import atomic_write_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--output", default="bench/demo-3seeds")
    args = ap.parse_args()
    cfg = bench.demo_config()
    payload = bench.bench(cfg, bench.DEMO_STRATEGIES, list(range(args.seeds)), out=Path(args.output),
                          jobs=args.jobs, progress=False,
                          on_run=lambda i, n, r: print(f"[{i}/{n}] {r['strategy']} seed {r['seed']}", flush=True))
    noise = payload["noise"]
    if noise is None:
        raise SystemExit("need 2 or more seeds to measure seed noise")
    rows = {r["strategy"]: {"ap": r["ap"], "ap_std": r["ap_std"]} for r in payload["rows"]}
    out = {"config_digest": bench.config_digest(cfg), "sigma": noise["sigma"], "noise": noise["noise"],
           "seeds": args.seeds, "strategies": rows,
           "command": f"python benchmarks/demo_noise.py --seeds {args.seeds} --jobs {args.jobs}",
           "measured": datetime.date.today().isoformat(), "machine": f"{platform.machine()} {platform.processor()}"}
    atomic_write_text(bench.DEMO_NOISE, json.dumps(out, indent=1) + "\n")
    print(f"AP std over seeds (pooled over {noise['groups']} strategies): {noise['sigma']:.4f}")
    print(f"noise band for a difference of two single-seed runs: {noise['noise']:.4f} AP")
    for s, r in rows.items():
        print(f"{s:<20} AP {r['ap']:.3f} ± {r['ap_std']:.3f}")
    print(f"wrote {bench.DEMO_NOISE}")


if __name__ == "__main__":
    main()
