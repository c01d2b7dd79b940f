"""Would a ranking of the chain signals *learnt* from the training graph beat R2Rec's hand-set blend (weights
chosen on validation)? Hit@1 of the 20 candidates of every *validation* user, no LLM, ties broken at random.

Training examples are built as the SFT traces are: each user's last `n` training items as targets (the 10
items before it as history) with 19 items the user never chose, every signal computed without the user's own
interactions (as `InteractionGraph` does for SFT prompts). Features per candidate, raw and standardised over
the 20: the dataset's own evidence, ordered and any-order `sum_cosine`, `sum_cochoosers`, `max_cochoosers`,
EASE(500) (left-one-user-out), log popularity, log recent popularity (users with it among their last 10
training items); and the user's log number of items. Rows: `own`, `own+ease` (+ 0.25 x EASE, as
`evidence_regularised`), `gbdt@n` (scikit-learn's HistGradientBoostingClassifier) and `logreg@n`
(LogisticRegression), n = 3 and 10 examples a user, fitted on every user; `evidence_model` is R2Rec's
`evidence_model: gbdt` (recbole_r2rec/learned_evidence.py: its own features, 3 examples a user, 5 folds of
users, each user scored by the model fitted on the other 4).

    .venv/bin/python bench/learned_evidence.py --dataset ml-100k --seed 2020 \
        --out results/analysis/learned_evidence-ml-100k-seed2020.json
"""
from __future__ import annotations

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from recbole_r2rec.chains import InteractionGraph, standardised
from recbole_r2rec.learned_evidence import LearnedEvidence

from evidence_setup import CHAIN_KEYS, ValidationHits, evidence_parser, evidence_setup, split_users


def features(graph: InteractionGraph, keys: dict, recent: np.ndarray, user: int, history, candidates) -> np.ndarray:
    """[candidates, features]: each signal raw and standardised, then the user's log size."""
    cands, hist = np.asarray(candidates, dtype=np.int64), np.array([i for i in history if i], dtype=np.int64)
    shown, window = list(cands), keys["evidence_window"] or 20
    mine = graph.matrix[user].toarray().ravel()
    lately = np.isin(cands, graph.sequences.get(user, [])[-10:])
    signals = [graph.chain_strength(user, history, shown, *keys.values()),
               graph.chain_strength(user, history, shown, "sum_cosine", 0.9, window, decay=0.95),
               graph.chain_strength(user, history, shown, "sum_cosine", 0.9),
               graph.chain_strength(user, history, shown, "sum_cochoosers", 0.9),
               graph.chain_strength(user, history, shown, "max_cochoosers"),
               graph.regularised_strength(user, hist, cands, 500.0, 0.7) if len(hist) else np.zeros(len(cands)),
               np.log1p(graph.popularity[cands] - mine[cands]), np.log1p(recent[cands] - lately)]
    columns = [column for signal in signals for column in (standardised(signal), np.asarray(signal, float))]
    return np.stack(columns + [np.full(len(cands), np.log1p(graph.sizes[user]))], axis=1)


def training_examples(graph: InteractionGraph, keys: dict, recent: np.ndarray, per_user: int, seed: int):
    """(X, y): each user's last `per_user` training items as targets, 19 never-chosen items beside each."""
    rng = np.random.default_rng([seed, 77])
    n_items, rows, labels = graph.matrix.shape[1], [], []
    for user, sequence in graph.sequences.items():
        chosen = set(graph.items_of(user).tolist())
        for back in range(1, min(per_user, len(sequence) - 2) + 1):
            at = len(sequence) - back
            negatives: list = []
            while len(negatives) < 19:
                item = int(rng.integers(1, n_items))
                if item not in chosen and item not in negatives:
                    negatives.append(item)
            rows.append(features(graph, keys, recent, user, sequence[max(0, at - 10):at], [sequence[at]] + negatives))
            labels.append(np.r_[1.0, np.zeros(19)])
    return np.concatenate(rows), np.concatenate(labels)


def main():
    args = evidence_parser(__doc__).parse_args()
    own, (train, valid, _), graph = evidence_setup(args.dataset, args.seed)
    keys = {key: own[key] for key in CHAIN_KEYS}
    recent = np.zeros(graph.matrix.shape[1])
    for sequence in graph.sequences.values():
        recent[np.unique(np.asarray(sequence[-10:], dtype=np.int64))] += 1
    models = {}
    for per_user in (3, 10):
        x, y = training_examples(graph, keys, recent, per_user, args.seed)
        models[f"gbdt@{per_user}"] = HistGradientBoostingClassifier(
            max_iter=200, learning_rate=0.05, max_leaf_nodes=15, random_state=args.seed).fit(x, y)
        models[f"logreg@{per_user}"] = LogisticRegression(max_iter=2000).fit(x, y)
    # what `evidence_model: gbdt` does (5 folds of users, each scored by the model of the other 4)
    learned = LearnedEvidence(graph, lambda u, h, c: graph.evidence(u, h, c, *keys.values()), keys["evidence_window"],
                              500.0, 0.7, args.history_len, 3, args.seed)
    hits = ValidationHits(args.seed)
    for user, target, history, shown in split_users(valid, args.history_len):
        x = features(graph, keys, recent, user, history, shown)
        scores = {"own": x[:, 1], "own+ease": x[:, 0] + 0.25 * x[:, 10]}
        scores.update({name: model.predict_proba(x)[:, 1] for name, model in models.items()})
        scores["evidence_model"] = learned.strength(user, history, shown)
        hits.add(scores, shown, target)
    hits.write(args, "own")


if __name__ == "__main__":
    main()
