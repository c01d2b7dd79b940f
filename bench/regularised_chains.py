"""Would regularised item-item weights learnt from the training graph rank candidates better than R2Rec's
chain counts? Hit@1 of the 20 candidates of every *validation* user, no LLM, ties broken at random.

Rows: `default` (R2Rec's evidence for the dataset, its layered config); `ease<l>` (EASE, Steck 2019: the
closed-form ridge item-item matrix with a zero diagonal, penalty l, learnt without the user's own row, as
`InteractionGraph.regularised_strength` computes it for `evidence_regularised`) and `ridge<l>,dp<d>` (SLIST's
past -> future part, Choi et al. 2021: ridge from the `--past` items before each training position, decayed
d a step back, to the `--future` items from it, decayed 0.9 a step), each summed over the user's last 10
items with recency r a step back (`,r<r>`) or, for EASE, over every training item of the user (`,full`);
`default+<a>*<row>`: both standardised over the candidates, summed. The weights are dense n_items^2, so
this is for datasets of a few thousand items (ml-100k, lastfm). The EASE rows are what the config key
`evidence_regularised` offers (`default+<a>*ease<l>,r<r>`: weight a, penalty l, recency r).

    .venv/bin/python bench/regularised_chains.py --dataset ml-100k --seed 2020 \
        --out results/analysis/regularised_chains-ml-100k-seed2020.json
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recbole_r2rec.chains import InteractionGraph, standardised

from evidence_setup import CHAIN_KEYS, ValidationHits, evidence_parser, evidence_setup, split_users


def past_to_future(graph: InteractionGraph, n_items: int, penalty: float, past: int, future: int,
                   past_decay: float, future_decay: float = 0.9) -> np.ndarray:
    """Ridge regression from each training position's decayed past items to its decayed next items."""
    rows_p, cols_p, vals_p, rows_f, cols_f, vals_f = [], [], [], [], [], []
    row = 0
    for seq in graph.sequences.values():
        seq = np.asarray(seq, dtype=np.int64)
        for t in range(1, len(seq)):
            before, after = seq[max(0, t - past):t][::-1], seq[t:t + future]
            rows_p += [row] * len(before)
            cols_p += before.tolist()
            vals_p += (past_decay ** np.arange(len(before))).tolist()
            rows_f += [row] * len(after)
            cols_f += after.tolist()
            vals_f += (future_decay ** np.arange(len(after))).tolist()
            row += 1
    x_past = sp.csr_matrix((vals_p, (rows_p, cols_p)), shape=(row, n_items))
    x_future = sp.csr_matrix((vals_f, (rows_f, cols_f)), shape=(row, n_items))
    return np.linalg.solve((x_past.T @ x_past).toarray() + penalty * np.eye(n_items), (x_past.T @ x_future).toarray())


def main():
    parser = evidence_parser(__doc__)
    parser.add_argument("--ease", default="100,500,2000,10000", help="EASE penalties, comma-separated")
    parser.add_argument("--ridge", default="10,300,3000", help="past -> future penalties, comma-separated ('' for none)")
    parser.add_argument("--past", type=int, default=10)
    parser.add_argument("--future", type=int, default=10)
    args = parser.parse_args()
    own, (train, valid, _), graph = evidence_setup(args.dataset, args.seed)
    n_items = graph.matrix.shape[1]
    penalties = [float(p) for p in args.ease.split(",")] if args.ease else []
    ridges = {f"ridge{p:g},dp{decay}": past_to_future(graph, n_items, p, args.past, args.future, decay)
              for p in (float(p) for p in args.ridge.split(",") if p) for decay in (0.8, 0.95)}
    hits = ValidationHits(args.seed)
    for user, target, history, shown in split_users(valid, args.history_len):
        shown = np.asarray(shown, dtype=np.int64)
        base = np.asarray(graph.chain_strength(user, history, list(shown), *(own[key] for key in CHAIN_KEYS)), float)
        hist = np.asarray(history, dtype=np.int64)  # oldest first
        everything = np.asarray(sorted(set(graph.items_of(user).tolist()) | set(history)), dtype=np.int64)
        variants = {}
        for p in penalties:
            variants.update({f"ease{p:g},r{r}": graph.regularised_strength(user, hist, shown, p, r)
                             for r in (1.0, 0.9, 0.7)})
            variants[f"ease{p:g},full"] = graph.regularised_strength(user, everything, shown, p, 1.0)
        for name, matrix in ridges.items():
            variants.update({f"{name},r{r}": (r ** np.arange(len(hist)))[::-1] @ matrix[hist][:, shown]
                             for r in (1.0, 0.9, 0.7)})
        scores = {"default": base}
        for label, score in variants.items():
            scores[label] = score
            for a in (0.25, 0.5, 1.0, 2.0):
                scores[f"default+{a}*{label}"] = standardised(base) + a * standardised(score)
        hits.add(scores, shown, target)
    hits.write(args, "default")


if __name__ == "__main__":
    main()
