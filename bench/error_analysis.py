"""Where does R2Rec lose to the classical models? Per-user test Hit@1 of leaderboard cells, broken
down by the user's history length, the target's popularity in training, and where the chain evidence
(the candidates with the strongest real chains through the user's last items, as R2Rec's prompt lists
them) puts the target. Reads the cells' `test_user_ranks`; no model is run.

    .venv/bin/python bench/error_analysis.py --dataset ml-100k --seed 2020 \\
        --rows SASRec,BERT4Rec,R2Rec-evidence_only,R2Rec-sft,R2Rec --cells results/leaderboard/cells \\
        --out results/analysis/ml-100k-seed2020.md
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd
from recbole.data import create_dataset

from recbole_r2rec import prompts
from recbole_r2rec.chains import InteractionGraph
from recbole_r2rec.config import build_config
from recbole_r2rec.protocol import prepare_data


def evidence_settings(dataset: str) -> dict:
    """R2Rec's own evidence settings on `dataset` (its layered config), so the analysis lists the evidence
    the default prompt lists."""
    config = build_config("R2Rec", dataset, overrides={"show_progress": False})
    return {key: config[key] for key in ("history_len", "evidence_items", "evidence_signal", "evidence_recency",
                                         "evidence_window", "evidence_unordered", "evidence_popularity",
                                         "evidence_neighbours", "evidence_decay")}


def user_facts(dataset: str, seed: int, evidence: dict) -> pd.DataFrame:
    """Per test user: history length and target popularity (users in the training graph), and the target's
    place in the chain evidence (1 = strongest chain, 0 = not listed among the top `evidence_items`)."""
    config = build_config("SASRec", dataset, overrides={"seed": seed, "show_progress": False})
    train, _, test = prepare_data(config, create_dataset(config))
    graph = InteractionGraph.from_training(train._dataset)  # as R2Rec builds its evidence
    inter = test._dataset.inter_feat
    rows = []
    for k in range(len(inter)):
        user, target = int(inter["user_id"][k]), int(inter["item_id"][k])
        length = int(inter["item_length"][k])
        history = prompts.history_ids(inter["item_id_list"][k].numpy(), length, evidence["history_len"])
        shown = test.candidates[user]
        support, strength = graph.evidence(user, history, shown, evidence["evidence_signal"],
                                           evidence["evidence_recency"], evidence["evidence_window"],
                                           evidence["evidence_unordered"], evidence["evidence_popularity"],
                                           evidence["evidence_neighbours"], evidence["evidence_decay"])
        listed = [shown[j] for j in prompts.strongest(list(strength), evidence["evidence_items"],
                                                      [n for n, _ in support])]
        rows.append({"user": str(user), "history_len": len(graph.items_of(user)), "target_popularity": int(graph.popularity[target]),
                     "evidence_place": listed.index(target) + 1 if target in listed else 0})
    return pd.DataFrame(rows).set_index("user")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--rows", default="SASRec,R2Rec-zs,R2Rec-sft,R2Rec")
    parser.add_argument("--cells", type=Path, default=Path("results/leaderboard/cells"))
    parser.add_argument("--out", type=Path, required=True, help="Markdown report (a .json beside it)")
    args = parser.parse_args()

    evidence = evidence_settings(args.dataset)
    facts = user_facts(args.dataset, args.seed, evidence)
    rows = []
    for row in args.rows.split(","):
        path = args.cells / f"{row}-{args.dataset}-seed{args.seed}.json"
        if path.is_file():
            ranks = json.loads(path.read_text()).get("test_user_ranks", {})
            facts[row] = pd.Series({u: float(r == 1) for u, r in ranks.items()})
            rows.append(row)
    facts["history"] = pd.qcut(facts.history_len, 4, precision=0)
    facts["target popularity"] = pd.qcut(facts.target_popularity, 4, precision=0)
    facts["target in evidence"] = facts.evidence_place.map(lambda p: f"place {p}" if p else "not listed")
    sections = [f"# Test Hit@1 by user group: {args.dataset}, seed {args.seed}", "",
                f"{len(facts)} test users; Hit@1 per group (users evaluated by each row), from the leaderboard "
                f"cells' per-user ranks. Evidence: the {evidence['evidence_items']} candidates with the strongest "
                f"chains through the last {evidence['history_len']} items, as R2Rec's prompt lists them on this "
                f"dataset ({', '.join(f'{k} {v}' for k, v in evidence.items())}).", ""]
    report = {}
    for group in ("history", "target popularity", "target in evidence"):
        table = facts.groupby(group, observed=True).agg(users=("history_len", "size"),
                                                         **{r: (r, "mean") for r in rows})
        report[group] = json.loads(table.reset_index().astype({group: str}).to_json(orient="records"))
        sections += [f"## by {group}", "", table.round(4).to_markdown(), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(sections))
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    print("\n".join(sections))


if __name__ == "__main__":
    main()
