"""Would a sequential model's scores (LLaRA's collaborative knowledge) add to R2Rec's chains? Hit@1 of the
20 candidates of every *validation* user, no LLM, ties broken at random.

Rows: `default` (R2Rec's evidence for the dataset, its layered config), `regularised` (the same + 0.25 x
EASE(500), recency 0.7: the row R2Rec-*-regularised), `<encoder>` (the sequential model alone, as RecBole's
checkpoint scores them) and `<base>+<a>*<encoder>`: both standardised over the candidates, summed, as the
config key `sequential_weight` a does (recbole_r2rec/sequential.py). The encoder is the checkpoint that
`run_recbole_r2rec.py --model=SASRec --dataset=D --seed=S --checkpoint_dir=saved/sequential` writes.

`--classical` adds the all-classical counterpart: `ItemKNN` (the leaderboard's row: RecBole's ItemKNN with
the dataset's k and shrink, built on the general model's own training split) and `ItemKNN+<a>*<encoder>`,
so a gain of the chains + encoder blend can be told from what any neighbourhood model + the encoder gets.
(Since 2026-12-07 the leaderboard row ScoreBlend does this with per-user hits for paired tests; its ItemKNN
also reads the history the sequential models read, which this bench's ItemKNN does not.)
`--split test` reports the test users instead: only to read off weights chosen on validation.

    .venv/bin/python bench/sequential_blend.py --dataset ml-100k --seed 2020 \
        --out results/analysis/sequential_blend-ml-100k-seed2020.json
"""
from __future__ import annotations

import numpy as np

from recbole.data import create_dataset
from recbole.utils import get_model

from recbole_r2rec.config import build_config
from recbole_r2rec.protocol import prepare_data
from recbole_r2rec.sequential import SequentialEncoder, encoder_path, fused_strength

from evidence_setup import CHAIN_KEYS, evidence_parser, evidence_setup, split_users, write_result

WEIGHTS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def classical_scorer(dataset: str, seed: int, split: str, model: str = "ItemKNN"):
    """(user, candidates) -> the leaderboard row `model`'s scores, built as its cells build it (its own
    config and training split), with the candidates checked to be the ones R2Rec's split shows."""
    config = build_config(model, dataset, overrides={"seed": seed, "show_progress": False})
    train, valid, test = prepare_data(config, create_dataset(config))
    net = get_model(model)(config, train._dataset)
    shown = {"valid": valid, "test": test}[split].candidates

    def scores(user: int, candidates: list) -> np.ndarray:
        assert list(shown[user]) == list(candidates), f"user {user}: other candidates than R2Rec's split"
        return net.pred_mat[user, candidates].toarray().ravel()
    return scores


def main():
    parser = evidence_parser(__doc__)
    parser.add_argument("--encoder", default="saved/sequential/SASRec-{dataset}-seed{seed}.pth")
    parser.add_argument("--classical", action="store_true", help="add ItemKNN and ItemKNN + a x encoder")
    parser.add_argument("--split", choices=("valid", "test"), default="valid")
    args = parser.parse_args()
    own, (train, valid, test), graph = evidence_setup(args.dataset, args.seed)
    split = {"valid": valid, "test": test}[args.split]
    classical = classical_scorer(args.dataset, args.seed, args.split) if args.classical else None
    path = encoder_path(args.encoder, args.dataset, args.seed)
    encoder = SequentialEncoder(path, {"dataset": args.dataset, "seed": args.seed}, train._dataset)
    rng = np.random.default_rng([args.seed, 7])
    hits: dict = {}
    for user, target, history, shown, seq, length in split_users(split, args.history_len, with_sequence=True):
        chains = [own[key] for key in CHAIN_KEYS]
        sequential = encoder.candidate_scores(seq, length, shown)
        scores = {"default": np.asarray(graph.chain_strength(user, history, shown, *chains), float),
                  "regularised": graph.chain_strength(user, history, shown, *chains, regularised=0.25,
                                                      penalty=own["evidence_regularised_penalty"],
                                                      regularised_recency=own["evidence_regularised_recency"]),
                  encoder.name: sequential}
        if classical is not None:
            scores["ItemKNN"] = classical(user, shown)
        for name in [base for base in ("default", "regularised", "ItemKNN") if base in scores]:
            scores.update({f"{name}+{a}*{encoder.name}": fused_strength(scores[name], sequential, a) for a in WEIGHTS})
        tie_break = rng.random(len(shown))
        for name, score in scores.items():
            hits.setdefault(name, []).append(float(shown[np.lexsort((tie_break, -np.asarray(score)))[0]] == target))
    hit1 = {name: round(float(np.mean(h)), 4) for name, h in hits.items()}
    result = {"dataset": args.dataset, "seed": args.seed, "split": args.split, "users": len(hits["default"]),
              "encoder": str(path), "hit@1": dict(sorted(hit1.items(), key=lambda item: -item[1]))}
    write_result(args.out, result)
    print("default", hit1["default"], encoder.name, hit1[encoder.name], "| best:", list(result["hit@1"].items())[:5])


if __name__ == "__main__":
    main()
