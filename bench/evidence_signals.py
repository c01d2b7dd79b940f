"""How good could chain evidence be? Hit@1 of rules that rank the 20 candidates by a chain signal of
the training graph alone (no LLM), on *validation* users, so that the evidence R2Rec's prompt lists is
chosen on validation, never on test.

Signals, per candidate c, over the user's last `history_len` items i0 (R2Rec's prompt history): the
`evidence_signal`s of `InteractionGraph.chain_strength` (max_cochoosers; sum_cochoosers; sum_cosine), the
summed ones again as `<signal>@recency=d` for each `--recency` d (R2Rec's `evidence_recency`: the k-th most
recent history item counts d**k), the same over *ordered* chains as `<signal>@window=w,recency=d` for each
`--window` w (R2Rec's `evidence_window`: the co-chooser chose c within w steps after i0), and `popularity`
(users who chose c: no chain at all) for reference. `--blend u:p,...` adds R2Rec's own evidence for the
dataset (its layered config) blended with `evidence_unordered` u and `evidence_popularity` p, as
`blend@unordered=u,popularity=p` (0:0 = R2Rec's evidence as configured; u > 0 needs its evidence_window > 0);
with `--neighbours cosine` each blend again as `...,neighbours=cosine` (R2Rec's `evidence_neighbours`: the
chains in any order weighted by the co-chooser's cosine with the user; needs u > 0 where the window is > 0),
and with `--decay d,...` each again as `...,decay=d` (R2Rec's `evidence_decay`: an ordered chain counts
d**(k-1) when the co-chooser chose c k steps after i0; needs the dataset's evidence_window > 0).

    .venv/bin/python bench/evidence_signals.py --dataset ml-100k --recency 0.9,0.7,0.5 --window 3,10,20 \
        --out results/analysis/evidence_signals-ml-100k.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from recbole.data import create_dataset

from recbole_r2rec import prompts
from recbole_r2rec.chains import EVIDENCE_SIGNALS, InteractionGraph
from recbole_r2rec.config import build_config
from recbole_r2rec.protocol import prepare_data


def signals(graph: InteractionGraph, user: int, history: list, shown: list, recency=(), windows=(), blends=(),
            own=None, neighbours=(), decays=()) -> dict:
    out = {name: graph.chain_strength(user, history, shown, name) for name in EVIDENCE_SIGNALS}
    for d in recency:
        for name in ("sum_cochoosers", "sum_cosine"):
            out[f"{name}@recency={d:g}"] = graph.chain_strength(user, history, shown, name, d)
    for w in windows:
        for d in (1.0, *recency):
            for name in EVIDENCE_SIGNALS[1:] if d != 1 else EVIDENCE_SIGNALS:
                out[f"{name}@window={w},recency={d:g}"] = graph.chain_strength(user, history, shown, name, d, w)
    for u, p in blends:
        for n in ("none", *neighbours):
            for d in (own["evidence_decay"], *decays):
                name = (f"blend@unordered={u:g},popularity={p:g}" + (f",neighbours={n}" if n != "none" else "")
                        + (f",decay={d:g}" if d != own["evidence_decay"] else ""))
                out[name] = graph.chain_strength(user, history, shown, own["evidence_signal"],
                                                 own["evidence_recency"], own["evidence_window"], u, p, n, d)
    out["popularity"] = graph.popularity[np.asarray(shown, dtype=np.int64)].astype(float)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--history_len", type=int, default=10)
    parser.add_argument("--recency", type=lambda v: [float(x) for x in v.split(",")], default=[],
                        help="comma list of evidence_recency values to add as signals")
    parser.add_argument("--window", type=lambda v: [int(x) for x in v.split(",")], default=[],
                        help="comma list of evidence_window values (ordered chains) to add as signals")
    parser.add_argument("--blend", type=lambda v: [tuple(float(x) for x in pair.split(":")) for pair in v.split(",")],
                        default=[], help="comma list of unordered:popularity weights blended into R2Rec's evidence")
    parser.add_argument("--neighbours", type=lambda v: v.split(","), default=[],
                        help="evidence_neighbours weightings to add to each --blend (e.g. cosine)")
    parser.add_argument("--decay", type=lambda v: [float(x) for x in v.split(",")], default=[],
                        help="evidence_decay values to add to each --blend (ordered chains weighed by distance)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    own = build_config("R2Rec", args.dataset, overrides={"show_progress": False}) if args.blend else None

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
        for name, score in signals(graph, user, history, shown, args.recency, args.window, args.blend,
                                   own, args.neighbours, args.decay).items():
            order = np.lexsort((rng.random(len(shown)), -score))
            hits.setdefault(name, []).append(float(shown[order[0]] == target))
    out = {"dataset": args.dataset, "seed": args.seed, "split": "valid", "users": len(inter),
           "history_len": args.history_len, "recency": args.recency, "window": args.window, "blend": args.blend,
           "neighbours": args.neighbours, "decay": args.decay,
           "hit@1": {name: float(np.mean(h)) for name, h in hits.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
