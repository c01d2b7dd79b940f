"""Would shrinkage help R2Rec's chain signal as it helps ItemKNN on steam? Hit@1 of the dataset's own
evidence (no LLM) on every *validation* user, with `sum_cosine` as co / (sqrt(n_i0 * n_c) + s) for each s
(ItemKNN's `shrink`: similarities resting on few co-choosers are damped; s -> infinity ranks as
`sum_cochoosers`). `own` is the evidence as configured (steam: sum_cochoosers); `cosine+shrink=s` the
same keys with evidence_signal sum_cosine and that shrink. Ties broken at random (seeded).

    .venv/bin/python bench/shrunk_cosine.py --dataset steam --seed 2020 --shrink 0,5,20,100,1000 \
        --out results/analysis/shrunk_cosine-steam-seed2020.json
"""
from __future__ import annotations

import numpy as np

from recbole_r2rec.chains import InteractionGraph

from evidence_setup import CHAIN_KEYS, evidence_parser, evidence_setup, split_users, write_result


class ShrunkCosineGraph(InteractionGraph):
    """The training graph with `sum_cosine` shrunk by `shrink` (0 = R2Rec's own)."""

    shrink = 0.0

    def _cosine_norm(self, pop_h, pop_c):
        return super()._cosine_norm(pop_h, pop_c) + self.shrink


def main():
    parser = evidence_parser(__doc__)
    parser.add_argument("--shrink", type=lambda v: [float(x) for x in v.split(",")], default=[0.0, 5.0, 20.0, 100.0])
    args = parser.parse_args()
    own, (train, valid, _), graph = evidence_setup(args.dataset, args.seed)
    graph.__class__ = ShrunkCosineGraph
    keys = [own[key] for key in CHAIN_KEYS]
    rows = {"own": (keys, 0.0), **{f"cosine+shrink={s:g}": (["sum_cosine", *keys[1:]], s) for s in args.shrink}}
    rng = np.random.default_rng([args.seed, 5])
    hits: dict = {}
    for user, target, history, shown in split_users(valid, args.history_len):
        tie_break = rng.random(len(shown))
        for name, (row_keys, shrink) in rows.items():
            graph.shrink = shrink
            score = np.asarray(graph.chain_strength(user, history, shown, *row_keys), float)
            hits.setdefault(name, []).append(float(shown[np.lexsort((tie_break, -score))[0]] == target))
    hit1 = {name: round(float(np.mean(h)), 4) for name, h in hits.items()}
    write_result(args.out, {"dataset": args.dataset, "seed": args.seed, "split": "valid",
                            "users": len(hits["own"]), "history_len": args.history_len, "hit@1": hit1})
    print(args.dataset, args.seed, hit1)


if __name__ == "__main__":
    main()
