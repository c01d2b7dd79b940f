"""What the evidence benchmarks (no LLM) share: a parser for --dataset/--seed/--history_len/--out, the
dataset's R2Rec config (its evidence keys), the shared protocol's splits for a seed (the candidates every
leaderboard model sees) and the training graph R2Rec builds its evidence from."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from recbole.data import create_dataset

from recbole_r2rec import prompts
from recbole_r2rec.chains import InteractionGraph
from recbole_r2rec.config import build_config
from recbole_r2rec.protocol import prepare_data


# R2Rec's config keys that `InteractionGraph.chain_strength` takes after (user, history, candidates), in order
CHAIN_KEYS = ("evidence_signal", "evidence_recency", "evidence_window", "evidence_unordered", "evidence_popularity",
              "evidence_neighbours", "evidence_decay")


def evidence_parser(doc: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--dataset", default="ml-100k")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--history_len", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    return parser


def evidence_setup(dataset: str, seed: int) -> tuple:
    """(R2Rec's config for `dataset`, (train, valid, test) for `seed`, the training graph)."""
    own = build_config("R2Rec", dataset, overrides={"show_progress": False})
    config = build_config("SASRec", dataset, overrides={"seed": seed, "show_progress": False})
    splits = prepare_data(config, create_dataset(config))
    return own, splits, InteractionGraph.from_training(splits[0]._dataset)


def write_result(out: Path, result: dict) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")


def split_users(split, history_len: int, with_sequence: bool = False):
    """Per user of a valid/test split: (user, target, last `history_len` history items oldest first, the
    20 candidates shown, in the protocol's order), and with `with_sequence` the padded history and its
    length as sequential models read them."""
    inter = split._dataset.inter_feat
    for k in range(len(inter)):
        user, target = int(inter["user_id"][k]), int(inter["item_id"][k])
        seq, length = inter["item_id_list"][k].numpy(), int(inter["item_length"][k])
        row = (user, target, prompts.history_ids(seq, length, history_len), list(split.candidates[user]))
        yield row + (seq, length) if with_sequence else row


class ValidationHits:
    """Hit@1 per named ranking over the validation users, ties broken at random (seeded, as the evaluator
    breaks them), and the ranked result file the evidence benchmarks write."""

    def __init__(self, seed: int):
        self.rng = np.random.default_rng([seed, 5])
        self.hits: dict = {}

    def add(self, scores: dict, shown, target: int) -> None:
        shown = np.asarray(shown)
        ties = self.rng.random(len(shown))
        for name, score in scores.items():
            self.hits.setdefault(name, []).append(float(shown[np.lexsort((ties, -np.asarray(score)))[0]] == target))

    def write(self, args, reference: str) -> dict:
        """Writes {dataset, seed, split, users, hit@1 best first} to `args.out`; prints `reference` and the best."""
        hit1 = {name: round(float(np.mean(h)), 4) for name, h in self.hits.items()}
        result = {"dataset": args.dataset, "seed": args.seed, "split": "valid", "users": len(self.hits[reference]),
                  "hit@1": dict(sorted(hit1.items(), key=lambda item: -item[1]))}
        write_result(args.out, result)
        print(reference, hit1[reference], "| best:", list(result["hit@1"].items())[:5])
        return result


def learned_hits(valid, history_len: int, seed: int, configured, models: dict) -> ValidationHits:
    """Hit@1 over the validation users of the dataset's own evidence (`own`, from `configured(user, history,
    shown)`) and of each named learnt strength in `models` (`LearnedEvidence` or a subclass)."""
    hits = ValidationHits(seed)
    for user, target, history, shown in split_users(valid, history_len):
        strength = configured(user, history, shown)[1]
        scores = {"own": strength}
        scores.update({name: model.strength(user, history, shown, strength) for name, model in models.items()})
        hits.add(scores, shown, target)
    return hits
