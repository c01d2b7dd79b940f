"""How good could chain evidence be? Hit@1 of rules that rank the 20 candidates by a chain signal of
the training graph alone (no LLM), on *validation* users, so that the evidence R2Rec's prompt lists is
chosen on validation, never on test.

Signals, per candidate c, over the user's last `history_len` items i0 (R2Rec's prompt history):
- `max_cochoosers`: max over i0 of the users who chose both i0 and c (R2Rec's current evidence)
- `sum_cochoosers`: the sum of the same counts over i0 (every chain through the history, not the best one)
- `sum_cosine`: sum over i0 of cosine(i0, c) on the item-user matrix (chains normalised by popularity)
- `popularity`: users who chose c (no chain at all)

    .venv/bin/python bench/evidence_signals.py --dataset ml-100k --out results/analysis/evidence_signals-ml-100k.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from recbole.data import create_dataset

from recbole_r2rec import prompts
from recbole_r2rec.chains import InteractionGraph
from recbole_r2rec.config import build_config
from recbole_r2rec.protocol import prepare_data


def signals(graph: InteractionGraph, user: int, history: list, shown: list) -> dict:
    hist = np.array([i for i in history if i], dtype=np.int64)
    cands = np.asarray(shown, dtype=np.int64)
    by_item = graph.by_item  # item x user, training interactions
    popularity = np.asarray(by_item[cands].sum(axis=1)).ravel().astype(float)
    co = (by_item[hist] @ by_item[cands].T).toarray().astype(float)  # [H, C] users who chose both
    mine = graph.matrix[user].toarray().ravel()
    co -= np.outer(mine[hist], mine[cands])  # the user's own choices never count
    norm = np.sqrt(np.outer(np.asarray(by_item[hist].sum(axis=1)).ravel(), popularity)) + 1e-9
    return {"max_cochoosers": co.max(axis=0), "sum_cochoosers": co.sum(axis=0),
            "sum_cosine": (co / norm).sum(axis=0), "popularity": popularity}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--history_len", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    config = build_config("SASRec", args.dataset, overrides={"seed": args.seed, "show_progress": False})
    train, valid, _ = prepare_data(config, create_dataset(config))
    graph = InteractionGraph.from_training(train._dataset)  # as R2Rec builds its evidence
    inter = valid._dataset.inter_feat
    rng = np.random.default_rng([args.seed, 5])  # ties broken at random, as the evaluator does
    hits = {}
    for k in range(len(inter)):
        user, target = int(inter["user_id"][k]), int(inter["item_id"][k])
        history = prompts.history_ids(inter["item_id_list"][k].numpy(), int(inter["item_length"][k]),
                                      args.history_len)
        shown = list(valid.candidates[user])
        for name, score in signals(graph, user, history, shown).items():
            order = np.lexsort((rng.random(len(shown)), -score))
            hits.setdefault(name, []).append(float(shown[order[0]] == target))
    out = {"dataset": args.dataset, "seed": args.seed, "split": "valid", "users": len(inter),
           "history_len": args.history_len, "hit@1": {name: float(np.mean(h)) for name, h in hits.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
