"""Which columns should R2Rec's learnt chain strength (`evidence_model: gbdt`) see? Hit@1 of the 20
candidates of every *validation* user, no LLM, ties broken at random: `own` (the dataset's hand-set evidence)
and `evidence_model_features` = `all` (each signal raw and standardised over the candidates, and the profile
size) or `standardised` (the standardised signals and the profile size), each as R2Rec fits it
(recbole_r2rec/learned_evidence.py: 3 examples a user, 5 folds of users, each user scored by the model fitted
on the other 4).

    .venv/bin/python bench/learned_evidence_features.py --dataset steam --seed 2020 \
        --out results/analysis/learned_evidence_features-steam-seed2020.json
"""
from __future__ import annotations

from recbole_r2rec.learned_evidence import FEATURE_SETS, LearnedEvidence

from evidence_setup import CHAIN_KEYS, evidence_parser, evidence_setup, learned_hits


def main():
    args = evidence_parser(__doc__).parse_args()
    own, (_, valid, _), graph = evidence_setup(args.dataset, args.seed)
    keys = [own[key] for key in CHAIN_KEYS]
    configured = lambda user, history, shown: graph.evidence(user, history, shown, *keys)
    learned = {columns: LearnedEvidence(graph, configured, own["evidence_window"], own["evidence_regularised_penalty"],
                                        own["evidence_regularised_recency"], args.history_len, 3, args.seed, columns)
               for columns in FEATURE_SETS}
    learned_hits(valid, args.history_len, args.seed, configured, learned).write(args, "own")


if __name__ == "__main__":
    main()
