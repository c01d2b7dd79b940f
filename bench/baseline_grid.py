"""Choose a classical baseline's hyper-parameters on the *validation* users, the way R2Rec's settings are
chosen: every setting of the grid runs as leaderboard cells (same protocol, same candidates), and only
each cell's best_valid_result is read here; test metrics are never looked at.

Why: an untuned neighbourhood baseline is the easiest one to beat (Dacrema et al., RecSys 2019), and
ItemKNN is the classical version of R2Rec's chains. Each setting's cells go to their own leaderboard
folder under --work_dir, so an interrupted grid resumes (finished cells are skipped).

    .venv/bin/python bench/baseline_grid.py --model ItemKNN --grid k=10,25,50,100,250,500,1000 \
        --grid shrink=0,100 --datasets lastfm --out results/analysis/baseline_grid-ItemKNN-lastfm.json

`--set KEY=VALUE` fixes a key for every cell of the grid (e.g. `--set 'blend_models=[ItemKNN,GRU4Rec]'`);
`--model` may be a leaderboard row (properties/leaderboard.yaml). The best setting of each dataset goes into
properties/model/<Model>/<dataset>.yaml (or the row) by hand, with its numbers.
"""
from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import yaml

from recbole_r2rec.leaderboard import load_cells, run_grid


def parse_grid(specs: list) -> dict:
    """['k=10,25', 'shrink=0,100', 'blend_weights=[1,0.5],[1,2]'] -> {'k': [10, 25], 'shrink': [0, 100],
    'blend_weights': [[1, 0.5], [1, 2]]}: values read as YAML, split at the commas outside brackets."""
    grid = {}
    for spec in specs:
        key, sep, values = spec.partition("=")
        if not sep or not values:
            raise SystemExit(f"--grid {spec!r}: expected KEY=V1,V2,...")
        grid[key] = [yaml.safe_load(value) for value in re.split(r",(?![^\[]*\])", values)]
    return grid


def setting_name(setting: dict) -> str:
    """A folder-friendly name: lists as 1+0.5 (no brackets, commas or spaces)."""
    def text(value):
        return "+".join(map(str, value)) if isinstance(value, list) else str(value)
    return ",".join(f"{key}={text(value)}" for key, value in setting.items())


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="a model or a leaderboard row (properties/leaderboard.yaml)")
    parser.add_argument("--grid", action="append", required=True, help="KEY=V1,V2,... (repeatable)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a fixed override of every cell, not part of the grid (repeatable)")
    parser.add_argument("--datasets", default="ml-100k,lastfm,steam")
    parser.add_argument("--seeds", default="2020,2021,2022")
    parser.add_argument("--work_dir", type=Path, default=Path("saved/baseline_grid"))
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    grid = parse_grid(args.grid)
    datasets, seeds = args.datasets.split(","), [int(s) for s in args.seeds.split(",")]
    result = {"model": args.model, "grid": grid, "fixed": args.set, "seeds": seeds, "split": "valid",
              "valid_hit@1": {}, "best": {}}
    suffix = "-set" + hashlib.sha1("\n".join(args.set).encode()).hexdigest()[:8] if args.set else ""
    for values in itertools.product(*grid.values()):
        setting = dict(zip(grid, values))
        folder = args.work_dir / f"{args.model}{suffix}-{setting_name(setting)}"  # other --set, other cells
        run_grid([args.model], datasets, seeds, folder,
                 [f"--{fixed}" for fixed in args.set] + [f"--{k}={v}" for k, v in setting.items()])
        cells, failures = load_cells(folder, [args.model], datasets, seeds)
        if failures:
            raise SystemExit(f"{folder}: failed cells {failures} (see their .error.txt)")
        for dataset in datasets:
            per_seed = {c["seed"]: c["best_valid_result"]["hit@1"] for c in cells if c["dataset"] == dataset}
            result["valid_hit@1"].setdefault(dataset, {})[setting_name(setting)] = {
                "per_seed": per_seed, "mean": round(float(np.mean(list(per_seed.values()))), 4)}
        print(setting_name(setting), {d: result["valid_hit@1"][d][setting_name(setting)]["mean"] for d in datasets},
              flush=True)
    for dataset, by_setting in result["valid_hit@1"].items():
        best = max(by_setting, key=lambda name: by_setting[name]["mean"])
        result["best"][dataset] = {"setting": best, "valid_hit@1": by_setting[best]["mean"]}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print("best:", result["best"])


if __name__ == "__main__":
    main()
