"""Would longer chains at inference, u0 -> i0 -> u1 -> x -> u2 -> c (the `long_chains` of the SFT traces, as
evidence), or what other users chose *lately*, rank candidates better than R2Rec's one-hop chains? Hit@1 of the 20 candidates of every
*validation* user, no LLM, ties broken at random.

Rows: `own` (R2Rec's evidence for the dataset, its layered config) and `own+ease` (+ 0.25 x EASE(500),
recency 0.7, as `evidence_regularised` does); `+<a>*ord2` adds a x the two-hop *ordered* strength (the
dataset's ordered co-chooser matrix F, window and decay as configured, cosine-normalised by popularity,
squared: F~ F~), `+<a>*any2` the two-hop strength in any order, each summed over the history with the
dataset's evidence_recency and standardised over the candidates; `+<a>*rp<m>` adds a x the candidate's
*recent* popularity (users with it among their last m training items; log, standardised), which the chains
and the all-time `evidence_popularity` miss where the later targets are newer items. The item x item products are dense, so
this is for datasets of a few thousand items.

    .venv/bin/python bench/chain_extensions.py --dataset ml-100k --seed 2020 \
        --out results/analysis/chain_extensions-ml-100k-seed2020.json
"""
from __future__ import annotations

import numpy as np

from recbole_r2rec.chains import standardised

from evidence_setup import CHAIN_KEYS, ValidationHits, evidence_parser, evidence_setup, split_users


def two_hop(co: np.ndarray, popularity: np.ndarray) -> np.ndarray:
    """(C~ C~) with C~[i, j] = co[i, j] / sqrt(pop_i pop_j): chains through one more item, normalised as
    `sum_cosine` normalises one hop; the diagonal (an item to itself) left out."""
    pop = np.maximum(popularity.astype(float), 1)
    normed = co / np.sqrt(np.outer(pop, pop))
    out = normed @ normed
    np.fill_diagonal(out, 0.0)
    return out


def recent_popularity(graph, last: int) -> np.ndarray:
    """Per item, the users who have it among their `last` training items."""
    popularity = np.zeros(graph.matrix.shape[1])
    for sequence in graph.sequences.values():
        popularity[np.unique(np.asarray(sequence[-last:], dtype=np.int64))] += 1
    return popularity


def main():
    args = evidence_parser(__doc__).parse_args()
    own, (train, valid, _), graph = evidence_setup(args.dataset, args.seed)
    keys = {key: own[key] for key in CHAIN_KEYS}
    ordered = graph.followers(keys["evidence_window"] or 20, keys["evidence_decay"]).toarray().astype(float)
    any_order = (graph.by_item @ graph.by_item.T).toarray().astype(float)
    np.fill_diagonal(any_order, 0.0)
    hops = {"ord2": two_hop(ordered, graph.popularity), "any2": two_hop(any_order, graph.popularity)}
    recent = {m: recent_popularity(graph, m) for m in (3, 10, 30)}
    hits = ValidationHits(args.seed)
    for user, target, history, shown in split_users(valid, args.history_len):
        cands, hist = np.asarray(shown, dtype=np.int64), np.array([i for i in history if i], dtype=np.int64)
        base = standardised(graph.chain_strength(user, history, shown, *keys.values()))
        ease = base + 0.25 * standardised(graph.regularised_strength(user, hist, cands, 500.0, 0.7))
        recency = keys["evidence_recency"] ** np.arange(len(hist))[::-1]
        scores = {"own": base, "own+ease": ease}
        for name, matrix in hops.items():
            longer = standardised(recency @ matrix[np.ix_(hist, cands)])
            for a in (0.1, 0.25, 0.5, 1.0):
                scores[f"own+{a}*{name}"] = base + a * longer
                scores[f"own+ease+{a}*{name}"] = ease + a * longer
        for m, popularity in recent.items():
            lately = standardised(np.log1p(popularity[cands]))
            for a in (0.1, 0.25, 0.5):
                scores[f"own+{a}*rp{m}"] = base + a * lately
                scores[f"own+ease+{a}*rp{m}"] = ease + a * lately
        hits.add(scores, shown, target)
    hits.write(args, "own")


if __name__ == "__main__":
    main()
