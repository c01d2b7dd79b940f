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


def draw_negatives(rng: np.random.Generator, n_items: int, used: set, num: int) -> np.ndarray:
    """`num` distinct item ids drawn uniformly from 1..n_items-1, none of them in `used`."""
    available = n_items - 1 - len(used)
    if available < num:
        raise ProtocolError(f"only {available} unseen items left to sample {num} negatives from")
    chosen: list = []
    seen = set(used)
    while len(chosen) < num:
        for item in rng.integers(1, n_items, size=2 * (num - len(chosen))).tolist():
            if item not in seen:
                seen.add(item)
                chosen.append(item)
                if len(chosen) == num:
                    break
    return np.asarray(chosen, dtype=np.int64)


def candidate_order(seed: int, user_id: int, items) -> np.ndarray:
    """The order in which a user's candidates are shown: a seeded shuffle of the *sorted* set, so it
    depends only on the set, the seed and the user, never on which candidate is the positive."""
    items = np.sort(np.asarray(items))
    rng = np.random.default_rng([int(seed), int(user_id), 7])
    return items[rng.permutation(len(items))]


class FixedCandidateEvalDataLoader(NegSampleEvalDataLoader):
    """RecBole's candidate-evaluation loader with candidates fixed once per (dataset, seed, phase)."""

    def __init__(self, config, dataset, sampler, shuffle=False):
        super().__init__(config, dataset, sampler, shuffle=False)
        self.phase = sampler.phase
        self.candidates = self._draw_candidates(config)

    def _draw_candidates(self, config) -> dict:
        """user id -> item ids of all its rows' candidates, in the order shown to the model."""
        uid_field, iid_field = self._dataset.uid_field, self._dataset.iid_field
        users = self._dataset.inter_feat[uid_field].numpy()
        positives = self._dataset.inter_feat[iid_field].numpy()
        seed = config["seed"]
        uniform = self.neg_sample_args["distribution"] == "uniform"
        rng = np.random.default_rng([int(seed), _PHASE_STREAM[self.phase]])
        if not uniform:  # popularity sampling: RecBole's sampler, on a dedicated, seeded state
            state = np.random.get_state()
            np.random.seed(int(rng.integers(2**31)))
            try:
                drawn = self._sampler.sample_by_user_ids(users, positives, self.neg_sample_num)
            finally:
                np.random.set_state(state)
            drawn = drawn.numpy().reshape(self.neg_sample_num, len(users)).T
        candidates = {}
        for uid in self.uid_list:
            rows = self.uid2index[uid]
            pos = positives[rows]
            if uniform:
                used = set(self._sampler.used_ids[uid]) | set(pos.tolist())
                negs = draw_negatives(rng, self._dataset.item_num, used, self.neg_sample_num * len(pos))
            else:
                negs = drawn[rows].reshape(-1)
            candidates[int(uid)] = candidate_order(seed, uid, np.concatenate([pos, negs]))
        return candidates

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


def sample_eval_users(config, dataset):
    """`eval_users: N` keeps a seeded sample of N users of this split; the sample depends on the
    dataset and seed only, so every model, classical or LLM, is evaluated on the same users."""
    n = config["eval_users"]
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
    built = dataset.build()
    train_dataset, valid_dataset, test_dataset = built
    train_sampler, valid_sampler, test_sampler = create_samplers(config, dataset, built)
    if config["MODEL_TYPE"] == ModelType.KNOWLEDGE:
        raise ProtocolError("knowledge-aware models are not part of this protocol")
    train_data = get_dataloader(config, "train")(
        config, train_dataset, train_sampler, shuffle=config["shuffle"]
    )
    loaders = [train_data]
    for phase, split, sampler in (("valid", valid_dataset, valid_sampler), ("test", test_dataset, test_sampler)):
        split = sample_eval_users(config, split)
        if re.fullmatch(r"(uni|pop)\d+", candidate_mode(config, phase)):
            loaders.append(FixedCandidateEvalDataLoader(config, split, sampler))
        else:
            loaders.append(get_dataloader(config, phase)(config, split, sampler, shuffle=False))
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
        return super().evaluate(eval_data, *args, **kwargs)

    def _neg_sample_batch_eval(self, batched_data):
        interaction, scores, positive_u, positive_i = super()._neg_sample_batch_eval(batched_data)
        if self.config["eval_type"] == EvaluatorType.RANKING:
            col_idx = interaction[self.config["ITEM_ID_FIELD"]].to(scores.device)
            break_ties(scores, batched_data[1].to(scores.device), col_idx, self._tie_rng)
        return interaction, scores, positive_u, positive_i
