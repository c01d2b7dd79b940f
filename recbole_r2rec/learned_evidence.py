"""Learned chain strength (`evidence_model: gbdt`): how strongly the chains through a user's history point
to a candidate, learnt from the training graph instead of weighed by hand.

The hand-set evidence (`evidence_signal` and its blend weights) weighs every signal alike for every user and
item. A gradient-boosted classifier (scikit-learn's HistGradientBoostingClassifier) learns how the signals
combine from examples the training graph already holds, built as the SFT traces are: each user's last
`evidence_model_examples` training items as targets, the `history_len` items before each as history, 19 items
the user never chose beside it, every signal computed without the user's own interactions (as for a held-out
target). Users are split into `FOLDS` seeded folds and a user's strength always comes from the model fitted
on the other folds, so neither an SFT prompt nor an evaluation scores a user with a model that saw its
targets (a model scoring its own training targets would make them lead SFT prompts more often than a
held-out target can).
"""
from __future__ import annotations

import logging
import time

import numpy as np
from sklearn.ensemble import HistGradientBoostingClassifier
from threadpoolctl import threadpool_limits

from recbole_r2rec.chains import InteractionGraph, standardised
from recbole_r2rec.config import is_count

logger = logging.getLogger(__name__)

EVIDENCE_MODELS = ("none", "gbdt")
# which columns the model sees: `all` = each signal raw and standardised over the candidates, and the user's
# profile size; `standardised` = the standardised columns and the profile size only. Raw values (popularity
# above all) shift between a user's last training items and the later items held out: on steam's validation
# users the raw columns cost more than the learnt weighting gains (bench/learned_evidence_features.py)
FEATURE_SETS = ("all", "standardised")
NEGATIVES = 19  # beside each training target, as the protocol's candidate lists hold
RECENT = 10     # "recent popularity": users with the item among their last RECENT training items
WINDOW, DECAY, RECENCY = 20, 0.95, 0.9  # ordered chains within 20 steps, decayed; history items decayed
FOLDS = 5       # cross-fitting: each model learns from 4/5 of the users, and scores the other 1/5


def check_evidence_model(name, examples, feature_set="all") -> None:
    if name not in EVIDENCE_MODELS:
        raise ValueError(f"unknown evidence_model {name!r}; known: {list(EVIDENCE_MODELS)}")
    if feature_set not in FEATURE_SETS:
        raise ValueError(f"unknown evidence_model_features {feature_set!r}; known: {list(FEATURE_SETS)}")
    if not is_count(examples) or examples < 1:
        raise ValueError(f"evidence_model_examples must be an integer >= 1 (training targets a user), not {examples!r}")


class LearnedEvidence:
    """Per (user, history, candidates): the log-odds that each candidate is the next item, from the chain
    signals of the training graph. `configured(user, history, candidates)` is the hand-set evidence
    (`InteractionGraph.evidence` with the model's settings): one feature among the others."""

    def __init__(self, graph: InteractionGraph, configured, window: int, penalty: float, regularised_recency: float,
                 history_len: int, examples: int, seed: int, feature_set: str = "all"):
        if not graph.sequences:
            raise ValueError("evidence_model learns from each user's last training items in time order; this "
                             "graph was built from data without item lists")
        self.graph, self.configured, self.history_len = graph, configured, history_len
        check_evidence_model("gbdt", examples, feature_set)
        self.raw = feature_set == "all"
        # the signals besides the configured one look at the last items more (RECENCY a step back) and at
        # ordered chains decayed DECAY a step, whatever the dataset's own evidence does: the model weighs them
        self.window = window or WINDOW
        self.penalty, self.regularised_recency = penalty, regularised_recency
        self.ease = graph.matrix.shape[1] <= InteractionGraph.MAX_REGULARISED_ITEMS
        self.recent = np.zeros(graph.matrix.shape[1])
        for sequence in graph.sequences.values():
            self.recent[np.unique(np.asarray(sequence[-RECENT:], dtype=np.int64))] += 1
        self.fold = np.random.default_rng([seed, 11]).permutation(graph.matrix.shape[0]) % FOLDS
        start = time.perf_counter()
        x, y, folds = self.examples(examples, seed)
        # one OpenMP thread: on these few features and rows, threads cost more than they save (measured on the
        # 40-user test graph with the other core busy: 2.1 s with one thread; with two, 16.5 s under cProfile)
        with threadpool_limits(limits=1, user_api="openmp"):
            self.models = [HistGradientBoostingClassifier(max_iter=200, learning_rate=0.05, max_leaf_nodes=15,
                                                          random_state=seed).fit(x[folds != f], y[folds != f])
                           for f in range(FOLDS)]
        logger.info("evidence_model gbdt: %d training targets, %d folds, fitted in %.1f s", int(y.sum()), FOLDS,
                    time.perf_counter() - start)

    def features(self, user: int, history, candidates, configured=None) -> np.ndarray:
        """[candidates, features]: each signal standardised over the candidates (and raw, with the feature set
        `all`), then the size of the user's profile. The user's own choice of a candidate never counts (see
        `InteractionGraph.evidence`)."""
        g, shown = self.graph, list(candidates)
        cands = np.asarray(shown, dtype=np.int64)
        hist = np.array([i for i in history if i], dtype=np.int64)
        mine = np.asarray(g.matrix[user, cands].todense()).ravel() if len(cands) else np.zeros(0)
        if configured is None:
            configured = self.configured(user, history, shown)[1]
        signals = [configured,
                   g.chain_strength(user, history, shown, "sum_cosine", RECENCY, self.window, decay=DECAY),
                   *g.any_order_signals(user, history, shown, ("sum_cosine", "sum_cochoosers", "max_cochoosers"),
                                        RECENCY),
                   np.log1p(g.popularity[cands] - mine),
                   np.log1p(self.recent[cands] - np.isin(cands, g.sequences.get(user, [])[-RECENT:]))]
        if self.ease:
            signals.append(g.regularised_strength(user, hist, cands, self.penalty, self.regularised_recency)
                           if len(hist) else np.zeros(len(cands)))
        columns = []
        for signal in signals:
            columns += [np.asarray(signal, dtype=float), standardised(signal)] if self.raw else [standardised(signal)]
        return np.stack(columns + [np.full(len(cands), np.log1p(g.sizes[user] - mine.sum()))], axis=1)

    def examples(self, per_user: int, seed: int) -> tuple:
        """(features, labels, fold of each row): each user's last `per_user` training items as targets, with
        up to NEGATIVES items the user never chose (seeded per user)."""
        g, items = self.graph, np.arange(1, self.graph.matrix.shape[1])  # 0 is RecBole's padding
        rows, labels, folds = [], [], []
        for user, sequence in g.sequences.items():
            chosen = np.fromiter(set(g.items_of(user).tolist()) | g.held_out.get(user, set()), dtype=np.int64)
            never = np.setdiff1d(items, chosen)
            rng = np.random.default_rng([seed, user, 13])
            for back in range(1, min(per_user, len(sequence) - 1) + 1):
                at = len(sequence) - back
                negatives = rng.choice(never, size=min(NEGATIVES, len(never)), replace=False).tolist()
                rows.append(self.features(user, sequence[max(0, at - self.history_len):at], [sequence[at]] + negatives))
                labels.append(np.r_[1.0, np.zeros(len(negatives))])
                folds.append(np.full(len(negatives) + 1, self.fold[user]))
        if not rows:
            raise ValueError("evidence_model found no user with two training items to learn from")
        return np.concatenate(rows), np.concatenate(labels), np.concatenate(folds)

    def strength(self, user: int, history, candidates, configured=None) -> np.ndarray:
        """The log-odds of the model fitted without this user's fold."""
        if not len(candidates):
            return np.zeros(0)
        return self.models[self.fold[user]].decision_function(self.features(user, history, candidates, configured))
