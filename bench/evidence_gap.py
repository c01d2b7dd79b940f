"""Why do R2Rec's chains lose more Hit@1 from validation to test than the sequential baselines? Measures how
much chain evidence the held-out target has, next to the 19 negatives shown with it, on the validation and
on the test users. Descriptive only: it explains a gap already measured and chooses nothing (no config key,
no weight is picked from the test numbers it prints).

Per split: the median number of ordered chains u0 -> i0 -> u1 -> target (u1 chose the target within
`evidence_window` steps after i0, i0 in the user's last `history_len` items) for the target and for the
strongest and the median negative; how often the target's raw count beats every negative's (ordered, and in
any order); the target's training popularity. No LLM, no training: a few seconds a split.

    .venv/bin/python bench/evidence_gap.py --dataset ml-100k --seed 2020 \
        --out results/analysis/evidence_gap-ml-100k-seed2020.json
"""
from __future__ import annotations

import json

import numpy as np

from recbole_r2rec.chains import InteractionGraph

from evidence_setup import evidence_parser, evidence_setup, split_users, write_result


def split_evidence(graph: InteractionGraph, split, ordered, any_order, history_len: int) -> dict:
    """Chain counts of each user's target against its negatives, summarised over the split's users."""
    target_ordered, neg_max, neg_median, beats_ordered, beats_any, target_any, popularity = ([] for _ in range(7))
    for user, target, history, shown in split_users(split, history_len):
        hist = np.array(history, dtype=np.int64)
        shown = np.asarray(shown, dtype=np.int64)
        negatives = shown[shown != target]
        o_t = ordered[hist][:, [target]].sum()
        o_n = np.asarray(ordered[hist][:, negatives].sum(axis=0)).ravel()
        a_t = any_order[hist][:, [target]].sum()
        a_n = np.asarray(any_order[hist][:, negatives].sum(axis=0)).ravel()
        target_ordered.append(o_t)
        neg_max.append(o_n.max())
        neg_median.append(np.median(o_n))
        beats_ordered.append(o_t > o_n.max())
        beats_any.append(a_t > a_n.max())
        target_any.append(a_t)
        popularity.append(graph.popularity[target])
    return {
        "users": len(target_ordered),
        "target_ordered_chains_median": float(np.median(target_ordered)),
        "strongest_negative_ordered_chains_median": float(np.median(neg_max)),
        "median_negative_ordered_chains_median": float(np.median(neg_median)),
        "target_beats_every_negative_ordered": float(np.mean(beats_ordered)),
        "target_any_order_cochoosers_median": float(np.median(target_any)),
        "target_beats_every_negative_any_order": float(np.mean(beats_any)),
        "target_training_popularity_median": float(np.median(popularity)),
    }


def main():
    parser = evidence_parser(__doc__)
    args = parser.parse_args()
    own, (train, valid, test), graph = evidence_setup(args.dataset, args.seed)
    window = own["evidence_window"] or 20
    ordered = graph.followers(window, 1.0).tocsr()
    any_order = (graph.by_item @ graph.by_item.T).tocsr()
    result = {"dataset": args.dataset, "seed": args.seed, "evidence_window": window,
              "history_len": args.history_len,
              **{name: split_evidence(graph, split, ordered, any_order, args.history_len)
                 for name, split in (("valid", valid), ("test", test))}}
    write_result(args.out, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
