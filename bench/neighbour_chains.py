"""Would weighting each chain u0 -> i0 -> u1 -> c by how much u1 shares with u0 (user-user strength of
co-interaction, the issue's "chain selection by strength of co-interaction") rank candidates better than
R2Rec's evidence? Hit@1 of the 20 candidates of every *validation* user, no LLM, ties broken at random.

Rows: `own` (R2Rec's evidence for the dataset, its layered config); `shared^a` (chains weighted by
shared items^a, a = 0.5 / 1 / 2); `cosine`, `cosine^2` (shared items / sqrt(|u0| |u1|)); `own+shared`,
`own+cosine` (each standardised over the candidates, summed). Weighted chains are summed over the last
`history_len` items, normalised as the dataset's signal is (sum_cosine: by popularity), plus the dataset's
`evidence_popularity` x standardised log popularity. Weighting needs per-user chains, so ordered chains
(evidence_window) are not weighted: on ml-100k `own` is ordered and the weighted rows are not.

    .venv/bin/python bench/neighbour_chains.py --dataset lastfm --seed 2020 \
        --out results/analysis/neighbour_chains-lastfm-seed2020.json
"""
from __future__ import annotations

import json

import numpy as np

from recbole_r2rec.chains import InteractionGraph, standardised

from evidence_setup import evidence_parser, evidence_setup, split_users


def weighted_chains(graph: InteractionGraph, user: int, hist: np.ndarray, cands: np.ndarray, weight: np.ndarray,
                    signal: str) -> np.ndarray:
    """Per candidate, `signal` over chains in any order through `hist` whose co-chooser u1 counts
    weight[u1]: the graph's own weighted count (`evidence_neighbours`), with weights it does not offer."""
    mine = graph.matrix[user].toarray().ravel()
    return graph._signal(graph._cochooser_counts(user, hist, cands, mine, 0, weight), signal, 1.0, hist, cands, mine)


def main():
    parser = evidence_parser(__doc__)
    args = parser.parse_args()
    own, (train, valid, _), graph = evidence_setup(args.dataset, args.seed)
    rng = np.random.default_rng([args.seed, 5])
    hits: dict = {}
    for user, target, history, shown in split_users(valid, args.history_len):
        cands = np.asarray(shown, dtype=np.int64)
        hist = np.array([i for i in history if i], dtype=np.int64)
        base = graph.chain_strength(user, history, shown, own["evidence_signal"], own["evidence_recency"],
                                    own["evidence_window"], own["evidence_unordered"], own["evidence_popularity"])
        scores = {"own": base}
        shared = np.asarray(graph.co[user].todense()).ravel().astype(float)
        shared[user] = 0
        cosine = graph.neighbour_weights(user)  # what evidence_neighbours: cosine weighs by
        mine = graph.matrix[user].toarray().ravel()
        popularity = standardised(np.log1p(graph.popularity[cands] - mine[cands]))
        for name, weight in (("shared^0.5", np.sqrt(shared)), ("shared^1", shared), ("shared^2", shared ** 2),
                             ("cosine", cosine), ("cosine^2", cosine ** 2)):
            chains = weighted_chains(graph, user, hist, cands, weight, own["evidence_signal"])
            scores[name] = standardised(chains) + own["evidence_popularity"] * popularity
            if name in ("shared^1", "cosine"):
                scores[f"own+{name}"] = standardised(base) + standardised(chains)
        ties = rng.random(len(shown))
        for name, score in scores.items():
            hits.setdefault(name, []).append(float(shown[np.lexsort((ties, -score))[0]] == target))
    n = len(hits["own"])
    out = {"dataset": args.dataset, "seed": args.seed, "split": "valid", "users": n,
           "hit@1": {name: float(np.sum(h)) / n for name, h in hits.items()}}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
