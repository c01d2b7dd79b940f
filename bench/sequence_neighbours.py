"""Would weighting the *ordered* chains u0 -> i0 -> u1 -> c (u1 chose c soon after i0) by how alike u1 is to
the user rank candidates better than R2Rec's evidence? Session-kNN's idea (Jannach & Ludewig 2017, V-SKNN:
neighbours that share the *recent* items count more) on R2Rec's ordered chains, which `evidence_neighbours`
cannot weigh (it weighs chains in any order only). Hit@1 of the 20 candidates of every *validation* user, no
LLM, ties broken at random.

Rows: `own` (R2Rec's evidence for the dataset, its layered config, which must have an evidence_window);
`<w>` the ordered part weighted by neighbour weight w, blended like `own` (its evidence_unordered x the
chains in any order, unweighted; `<w>+any` with those weighted by w too), where w is `cosine` (of the item
sets, as `evidence_neighbours: cosine`), `recent<r>` (items of u1 among the user's last `history_len`,
the k-th most recent counting r**k, over sqrt(|u1|)), each to the power 1 or 2 (`^2`) and kept for the
`top<K>` most alike users only (`all`: every user); `,own+` rows add the weighted ordered part, standardised, to `own`; `+ease` rows add 0.25 x EASE(500), recency 0.7, as
`evidence_regularised` does.

    .venv/bin/python bench/sequence_neighbours.py --dataset ml-100k --seed 2020 \
        --out results/analysis/sequence_neighbours-ml-100k-seed2020.json
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from recbole_r2rec.chains import InteractionGraph, standardised

from evidence_setup import CHAIN_KEYS, ValidationHits, evidence_parser, evidence_setup, split_users


def pair_matrix(graph: InteractionGraph, window: int, decay: float) -> sp.csc_matrix:
    """users x (i * n_items + c): decay**(d-1) where the user chose c d <= window steps after i (the
    per-user rows that `InteractionGraph.followers` sums over users)."""
    n = graph.matrix.shape[1]
    rows, cols, vals = [], [], []
    for user in graph.sequences:
        keys, weights = graph._pairs(user, window, decay)
        rows.append(np.full(len(keys), user))
        cols.append(keys)
        vals.append(weights)
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(graph.matrix.shape[0], n * n)).tocsc()


def recent_weights(graph: InteractionGraph, user: int, hist: np.ndarray, r: float) -> np.ndarray:
    """Per other user, sum_k r**k [h_k in their items] / sqrt(|their items|), h_0 the most recent."""
    decay = (r ** np.arange(len(hist)))[::-1]
    weight = graph.by_item[hist].T @ decay
    weight = np.asarray(weight).ravel() / np.sqrt(np.maximum(graph.sizes, 1))
    weight[user] = 0.0
    return weight


def top(weight: np.ndarray, k: int) -> np.ndarray:
    if k >= np.count_nonzero(weight):
        return weight
    out = np.zeros_like(weight)
    keep = np.argpartition(-weight, k)[:k]
    out[keep] = weight[keep]
    return out


def main():
    parser = evidence_parser(__doc__)
    parser.add_argument("--tops", default="50,200,0", help="neighbour counts kept (0: all)")
    parser.add_argument("--recent", default="1,0.8,0.6", help="r of the recent<r> weights")
    args = parser.parse_args()
    own, (train, valid, _), graph = evidence_setup(args.dataset, args.seed)
    keys = {key: own[key] for key in CHAIN_KEYS}
    signal, recency, window, unordered, popularity = (keys["evidence_signal"], keys["evidence_recency"],
                                                     keys["evidence_window"], keys["evidence_unordered"],
                                                     keys["evidence_popularity"])
    if not window:
        raise SystemExit(f"{args.dataset}'s R2Rec evidence has no evidence_window: nothing ordered to weigh")
    pairs = pair_matrix(graph, window, keys["evidence_decay"])
    n = graph.matrix.shape[1]
    hits = ValidationHits(args.seed)
    tops = [int(k) for k in args.tops.split(",")]
    recents = [float(r) for r in args.recent.split(",")]
    for user, target, history, shown in split_users(valid, args.history_len):
        cands = np.asarray(shown, dtype=np.int64)
        hist = np.array([i for i in history if i], dtype=np.int64)
        base = np.asarray(graph.chain_strength(user, history, shown, *keys.values()), float)
        ease = standardised(graph.regularised_strength(user, hist, cands, 500.0, 0.7))
        scores = {"own": base, "own+ease": standardised(base) + 0.25 * ease}
        mine = graph.matrix[user].toarray().ravel()
        grid = (hist[:, None] * n + cands[None, :]).ravel()
        columns = pairs[:, grid]  # users x (H*C)
        any_plain = graph._signal(graph._cochooser_counts(user, hist, cands, mine, 0), signal, recency, hist,
                                  cands, mine)
        extra = popularity * standardised(np.log1p(graph.popularity[cands] - mine[cands])) if popularity else 0
        bases = {"cosine": graph.neighbour_weights(user)}
        bases.update({f"recent{r:g}": recent_weights(graph, user, hist, r) for r in recents})
        for label, weight in bases.items():
            for power in (1, 2):
                for k in tops:
                    w = weight ** power
                    w = top(w, k) if k else w
                    name = f"{label}{'^2' if power == 2 else ''},top{k or 'all'}"
                    ordered = (columns.T @ w).reshape(len(hist), len(cands))
                    ordered = graph._signal(ordered, signal, recency, hist, cands, mine)
                    any_w = graph._signal(graph._cochooser_counts(user, hist, cands, mine, 0, w), signal, recency,
                                          hist, cands, mine)
                    for suffix, any_order in (("", any_plain), ("+any", any_w)):
                        score = standardised(ordered) + unordered * standardised(any_order) + extra
                        scores[name + suffix] = score
                        scores[name + suffix + "+ease"] = standardised(score) + 0.25 * ease
                    scores[name + ",own+"] = standardised(base) + standardised(ordered)
                    scores[name + ",own++ease"] = standardised(scores[name + ",own+"]) + 0.25 * ease
        hits.add(scores, shown, target)
    hits.write(args, "own")


if __name__ == "__main__":
    main()
