"""Ablation on validation users: R2Rec variants (config keys) on the same seeded validation users and
candidates, with a paired McNemar test of each variant against the first. Choices are made here, on
validation, never on test.

    .venv/bin/python bench/ablation_valid.py --valid_users 100 \\
        --variant none:score_calibration=none --variant prior:score_calibration=item_prior \\
        [--stage sft] [--set key=value ...] [--fusion_weights 0,0.5,1] [--out results/ablations/NAME.json]

`--stage sft` (or rl) evaluates the finished stage's adapter under checkpoint_dir (trained with the
same settings), otherwise the untrained backbone. A variant's `adapter=DIR` evaluates the LoRA adapter
saved in DIR instead (e.g. a trainer's `checkpoint-N/`: a learning curve over training steps), and
`adapter=none` the untrained backbone (the curve's step 0); the other keys must be the settings it was
trained with, which nothing checks here. Writes the metrics per variant to --out, with each user's rank
of the positive (`ranks`), so variants of different runs can be paired later on the same users.
`--fusion_weights` also ranks each variant's recorded LLM scores with every listed `evidence_weight`
(and by chain strength alone), from the one evaluation: the fused score is a function of the two.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from recbole.data import create_dataset
from recbole.utils import init_seed

from recbole_r2rec.config import build_config
from recbole_r2rec.leaderboard import mcnemar
from recbole_r2rec.model import R2Rec
from recbole_r2rec.protocol import prepare_data
from recbole_r2rec.registry import get_trainer
from recbole_r2rec.runner import parse_overrides
from recbole_r2rec.scoring import evidence_fused
from recbole_r2rec.stages import load_adapter, load_finished_stage


def pairs(text: str) -> dict:
    """`key=value,key=value` as config overrides, parsed as the runner parses `--key=value`."""
    return parse_overrides([f"--{kv}" for kv in text.split(",") if kv])


def positives(eval_data) -> dict:
    """user -> its held-out item in a leave-one-out split (one per user)."""
    inter = eval_data._dataset.inter_feat
    ds = eval_data._dataset
    return dict(zip(inter[ds.uid_field].tolist(), inter[ds.iid_field].tolist()))


def fusion_grid(answers: list, truth: dict, weights: list) -> dict:
    """Hit@1 and MRR of the recorded answers re-ranked with each evidence weight ("strength_only":
    by chain strength alone). Ties count against the positive (pessimistic)."""
    def metrics(score_of):
        hits, rr = [], []
        for a in answers:
            scores = score_of(a)
            k = a["candidates"].index(truth[a["user"]])
            rank = 1 + sum(s >= scores[k] for j, s in enumerate(scores) if j != k)
            hits.append(rank == 1)
            rr.append(1 / rank)
        return {"hit@1": sum(hits) / len(hits), "mrr": sum(rr) / len(rr), "users": len(hits)}

    grid = {str(w): metrics(lambda a, w=w: evidence_fused(a["llm_scores"], a["strength"], w)) for w in weights}
    grid["strength_only"] = metrics(lambda a: list(a["strength"]))
    return grid


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--valid_users", type=int, default=100)
    parser.add_argument("--variant", action="append", required=True, help="NAME:key=value,key=value")
    parser.add_argument("--set", action="append", default=[], help="key=value shared by every variant")
    parser.add_argument("--stage", choices=["sft", "rl"], default=None)
    parser.add_argument("--fusion_weights", default="", help="comma-separated evidence weights to re-rank with")
    parser.add_argument("--out", default="results/ablations/ablation.json")
    args = parser.parse_args()

    shared = {"valid_users": args.valid_users, "state": "WARNING"}
    for kv in args.set:
        shared.update(pairs(kv))
    report = {"dataset": args.dataset, "valid_users": args.valid_users, "stage": args.stage or "none",
              "shared": shared, "variants": {}}
    first_ranks = None
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for spec in args.variant:
        name, _, keys = spec.partition(":")
        overrides = pairs(keys)
        adapter = overrides.pop("adapter", None)
        config = build_config("R2Rec", args.dataset, overrides={**shared, **overrides})
        init_seed(config["seed"], config["reproducibility"])
        train, valid, _ = prepare_data(config, create_dataset(config))
        model = R2Rec(config, train._dataset)
        if adapter is None:
            if args.stage and not load_finished_stage(model, config, args.stage):
                raise SystemExit(f"no finished {args.stage} stage under {config['checkpoint_dir']} for these settings")
        elif adapter != "none":  # "none": the untrained backbone, whatever --stage says
            try:
                load_adapter(model, adapter)
            except FileNotFoundError as err:
                raise SystemExit(f"{name}: {err}") from None
        trainer = get_trainer(config["MODEL_TYPE"], "R2Rec")(config, model)
        start = time.perf_counter()
        result = {k: float(v) for k, v in trainer.evaluate(valid).items()}
        entry = {"keys": pairs(keys), "valid_result": result, "seconds": time.perf_counter() - start,
                 "users": len(trainer.user_ranks)}
        ranks = trainer.user_ranks
        entry["ranks"] = trainer.user_ranks_json()
        if args.fusion_weights:
            weights = [float(w) for w in args.fusion_weights.split(",")]
            entry["fusion"] = fusion_grid(model.answers, positives(valid), weights)
        if first_ranks is None:
            first_ranks = ranks
        else:
            users = sorted(set(first_ranks) & set(ranks))
            entry["mcnemar_vs_first"] = mcnemar([ranks[u] == 1 for u in users], [first_ranks[u] == 1 for u in users])
        report["variants"][name] = entry
        print(name, json.dumps(entry), flush=True)
        # after every variant: an interrupted ablation keeps the variants it finished
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
