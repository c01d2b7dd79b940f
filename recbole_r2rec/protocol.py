"""The shared evaluation protocol, made provably the same for every model.

RecBole 1.2.1 alone does not guarantee a fair candidate evaluation:

* its `uniN` negatives are drawn from the global numpy RNG on every pass over the eval data, so two
  models (or two epochs) see different candidates, depending on what training consumed;
* it hands `predict` each user's positive as the first row, so a model that favours the first row
  of a user scores Hit@1 = 1;
* scores are scattered by item id and ranked with `torch.topk`, so ties (e.g. constant scores) are
  broken by item id, which correlates with popularity.

Here the candidates of each (dataset, seed, phase) are drawn once, from a dedicated generator, without
replacement, shown in a seeded order that does not depend on which row is the positive, and exact
score ties are broken at random (seeded) before RecBole's evaluator ranks them.
"""
from __future__ import annotations

import hashlib
import re

import numpy as np
import torch
from recbole.data.dataloader import NegSampleEvalDataLoader
from recbole.data.utils import create_samplers, get_dataloader
from recbole.utils import EvaluatorType, ModelType

_PHASE_STREAM = {"valid": 1, "test": 2}
_EVAL_USER_STREAM = 3


class ProtocolError(ValueError):
    """A configuration that the shared protocol cannot evaluate fairly."""


def candidate_mode(config, phase: str) -> str:
    mode = config["eval_args"]["mode"]
    return mode[phase] if isinstance(mode, dict) else mode


def require_candidate_lists(config, model: str, why: str) -> None:
    """Refuse all-item ranking (eval_args.mode: full) for a model that scores candidate lists only."""
    for phase in ("valid", "test"):
        if candidate_mode(config, phase) == "full":
            raise ProtocolError(
                f"{model} {why}, so all-item ranking (eval_args.mode: full) is not meaningful for it. Use the "
                "shared candidate protocol: eval_args: {mode: {valid: uni19, test: uni19}} (properties/overall.yaml)."
            )


def draw_negatives(rng: np.random.Generator, used: set, num: int, probs: np.ndarray) -> np.ndarray:
    """`num` distinct item ids drawn from `probs` (over ids 0..n-1, id 0 is padding), none in `used`."""
    available = int(np.count_nonzero(probs)) - len(used)  # seen items all have weight > 0
    if available < num:
        raise ProtocolError(f"only {available} unseen items left to sample {num} negatives from")
    chosen: list = []
    seen = set(used)
    while len(chosen) < num:
        for item in rng.choice(len(probs), size=2 * (num - len(chosen)), p=probs).tolist():
            if item not in seen:
                seen.add(item)
                chosen.append(item)
                if len(chosen) == num:
                    break
    return np.asarray(chosen, dtype=np.int64)


def seen_items(dataset) -> dict:
    """user id -> every item the user interacted with, in any split (negatives are never among them)."""
    users = np.asarray(dataset.inter_feat[dataset.uid_field])
    items = np.asarray(dataset.inter_feat[dataset.iid_field])
    seen: dict = {}
    for u, i in zip(users.tolist(), items.tolist()):
        seen.setdefault(u, set()).add(i)
    return seen


def negative_distribution(dataset, distribution: str, alpha: float = 1.0) -> np.ndarray:
    """Sampling weights over item ids: uniform, or popularity**alpha (`popN`), id 0 excluded."""
    n = dataset.item_num
    if distribution == "uniform":
        weights = np.ones(n)
    else:
        weights = np.bincount(np.asarray(dataset.inter_feat[dataset.iid_field]), minlength=n) ** alpha
    weights[0] = 0.0
    return weights / weights.sum()


def candidate_order(seed: int, user_id: int, items) -> np.ndarray:
    """The order in which a user's candidates are shown: a seeded shuffle of the *sorted* set, so it
    depends only on the set, the seed and the user, never on which candidate is the positive."""
    items = np.sort(np.asarray(items))
    rng = np.random.default_rng([int(seed), int(user_id), 7])
    return items[rng.permutation(len(items))]


def positives_by_user(dataset) -> dict:
    """user id -> the split's items of that user (its positives), users in ascending id order."""
    users = dataset.inter_feat[dataset.uid_field].numpy()
    items = dataset.inter_feat[dataset.iid_field].numpy()
    positives: dict = {}
    for k in np.argsort(users, kind="stable"):
        positives.setdefault(int(users[k]), []).append(int(items[k]))
    return positives


def draw_candidates(seed: int, phase: str, positives: dict, seen: dict, negatives_per_positive: int,
                    probs: np.ndarray) -> dict:
    """user id -> its candidates (positives + negatives) in the order shown to the model, for every user
    of the split. Drawn from a generator of (seed, phase) alone, excluding every item the user ever
    interacted with, so the sets depend neither on the model (RecBole's samplers differ between general
    and sequential ones) nor on which users an `eval_users` sample keeps (a user's candidates are the
    same in a 100-user run as in the all-user run)."""
    rng = np.random.default_rng([int(seed), _PHASE_STREAM[phase]])
    candidates = {}
    for uid in sorted(positives):
        pos = np.asarray(positives[uid], dtype=np.int64)
        used = seen.get(uid, set()) | set(pos.tolist())
        negs = draw_negatives(rng, used, negatives_per_positive * len(pos), probs)
        candidates[uid] = candidate_order(seed, uid, np.concatenate([pos, negs]))
    return candidates


class FixedCandidateEvalDataLoader(NegSampleEvalDataLoader):
    """RecBole's candidate-evaluation loader with candidates fixed once per (dataset, seed, phase).
    `population`: the whole split's positives (`positives_by_user`) when `dataset` is a sample of it,
    so the sample's users get their all-user candidates."""

    def __init__(self, config, dataset, sampler, seen: dict, probs: np.ndarray, population: dict | None = None):
        super().__init__(config, dataset, sampler, shuffle=False)
        self.phase = sampler.phase
        everyone = draw_candidates(config["seed"], self.phase, population or positives_by_user(dataset), seen,
                                   self.neg_sample_num, probs)
        self.candidates = {int(uid): everyone[int(uid)] for uid in self.uid_list}

    def _neg_sampling(self, inter_feat):
        """Rows for one user: each of its candidates, in the fixed order, labelled 1 for positives."""
        uid = int(inter_feat[self._dataset.uid_field][0])
        items = torch.as_tensor(self.candidates[uid])
        positives = set(inter_feat[self._dataset.iid_field].tolist())
        rows = inter_feat.repeat(self.times)  # one history row per candidate (LOO: one positive)
        rows[self._dataset.iid_field] = items
        rows = self._dataset.join(rows)
        labels = torch.tensor([float(i in positives) for i in items.tolist()])
        rows.update(type(rows)({self.label_field: labels}))
        return rows

    def digest(self) -> str:
        """A fingerprint of every user's candidates in order, for checking two runs saw the same."""
        h = hashlib.sha256()
        for uid in sorted(self.candidates):
            h.update(np.int64(uid).tobytes())
            h.update(np.asarray(self.candidates[uid], dtype=np.int64).tobytes())
        return h.hexdigest()


def sample_eval_users(config, dataset, phase: str = "test"):
    """`eval_users: N` keeps a seeded sample of N users of this split; the sample depends on the
    dataset and seed only, so every model, classical or LLM, is evaluated on the same users.
    `valid_users: N` does the same for validation alone (model selection of slow models)."""
    n = config["eval_users"]
    if phase == "valid" and config["valid_users"]:
        n = min(config["valid_users"], n or config["valid_users"])
    if not n:
        return dataset
    users = np.unique(dataset.inter_feat[dataset.uid_field].numpy())
    if n >= len(users):
        return dataset
    rng = np.random.default_rng([int(config["seed"]), _EVAL_USER_STREAM])
    keep = rng.choice(users, size=int(n), replace=False)
    mask = np.isin(dataset.inter_feat[dataset.uid_field].numpy(), keep)
    return dataset.copy(dataset.inter_feat[torch.from_numpy(mask)])


def prepare_data(config, dataset):
    """Split and build the train/valid/test loaders under the shared protocol (cf. RecBole's
    `data_preparation`): candidate phases get `FixedCandidateEvalDataLoader`, restricted to
    `eval_users` when set."""
    seen = seen_items(dataset)  # before build(): sequential datasets rewrite inter_feat there
    probs = {phase: negative_distribution(dataset, config[f"{phase}_neg_sample_args"]["distribution"],
                                          config[f"{phase}_neg_sample_args"].get("alpha", 1.0))
             for phase in ("valid", "test") if config[f"{phase}_neg_sample_args"]["distribution"] != "none"}
    built = dataset.build()
    train_dataset, valid_dataset, test_dataset = built
    train_sampler, valid_sampler, test_sampler = create_samplers(config, dataset, built)
    if config["MODEL_TYPE"] == ModelType.KNOWLEDGE:
        raise ProtocolError("knowledge-aware models are not part of this protocol")
    train_data = get_dataloader(config, "train")(
        config, train_dataset, train_sampler, shuffle=config["shuffle"]
    )
    train_data.seen_items = seen  # what R2Rec's training stages must never show as a negative
    loaders = [train_data]
    for phase, split, sampler in (("valid", valid_dataset, valid_sampler), ("test", test_dataset, test_sampler)):
        sample = sample_eval_users(config, split, phase)
        if re.fullmatch(r"(uni|pop)\d+", candidate_mode(config, phase)):
            loaders.append(FixedCandidateEvalDataLoader(config, sample, sampler, seen, probs[phase],
                                                        positives_by_user(split)))
        else:
            loaders.append(get_dataloader(config, phase)(config, sample, sampler, shuffle=False))
    return tuple(loaders)


def break_ties(scores: torch.Tensor, row_idx: torch.Tensor, col_idx: torch.Tensor, rng) -> None:
    """Replace each user's candidate scores by their rank, ties broken by a seeded random key, so that
    `torch.topk` never falls back on item-id order. NaN ranks last. In place."""
    values = scores[row_idx, col_idx].detach().float().cpu().numpy()
    values = np.where(np.isnan(values), -np.inf, values)
    order = np.lexsort((rng.random(len(values)), -values, row_idx.cpu().numpy()))
    ranked = np.empty(len(values), dtype=np.float32)
    ranked[order] = -np.arange(len(values), dtype=np.float32)
    scores[row_idx, col_idx] = torch.from_numpy(ranked).to(scores.device, scores.dtype)


class FairEvaluationMixin:
    """Mixed into every trainer: seeded random tie-breaking on candidate scores before ranking."""

    def evaluate(self, eval_data, *args, **kwargs):
        self._tie_rng = np.random.default_rng([int(self.config["seed"]), 11])
        self.user_ranks = {}  # user id -> rank of its positive among its candidates (paired tests)
        return super().evaluate(eval_data, *args, **kwargs)

    def user_ranks_json(self) -> dict:
        """The last evaluation's ranks as JSON (`{"user id": rank}`, by user id): the form the result
        files and the ablations store and `leaderboard.user_ranks` reads back for paired tests."""
        return {str(u): int(r) for u, r in sorted(self.user_ranks.items())}

    def _neg_sample_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._neg_sample_batch_eval(batched_data)
        if self.config["eval_type"] == EvaluatorType.RANKING:
            row_idx = batched_data[1].to(scores.device)
            col_idx = interaction[self.config["ITEM_ID_FIELD"]].to(scores.device)
            break_ties(scores, row_idx, col_idx, self._tie_rng)
            user_of_row = torch.full((scores.shape[0],), -1, dtype=torch.long, device=scores.device)
            user_of_row[row_idx] = interaction[self.config["USER_ID_FIELD"]].to(scores.device)
            pos = scores[positive_u, positive_i]
            ranks = (scores[positive_u] > pos[:, None]).sum(1) + 1
            self.user_ranks.update(zip(user_of_row[positive_u].tolist(), ranks.tolist()))
        return interaction, scores, positive_u, positive_i
