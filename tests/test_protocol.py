"""The shared protocol: identical candidates for every model, no position or id leak, determinism."""
import json

import numpy as np
import pytest
import torch
from recbole.data import create_dataset, data_preparation
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.trainer import Trainer
from recbole.utils import InputType, ModelType, init_seed

from conftest import tiny
from recbole_r2rec.config import build_config
from recbole_r2rec.protocol import (
    break_ties,
    candidate_order,
    prepare_data,
)
from recbole_r2rec.registry import get_trainer
from recbole_r2rec.runner import run


class ConstantModel(SequentialRecommender):
    """Scores every candidate the same."""

    input_type = InputType.POINTWISE

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def calculate_loss(self, interaction):
        return self.dummy.sum()

    def predict(self, interaction):
        return torch.zeros(len(interaction))


class FirstRowModel(ConstantModel):
    """Prefers whichever row comes first for each user (RecBole puts the positive there)."""

    def predict(self, interaction):
        users = interaction[self.USER_ID]
        first = torch.ones(len(users))
        first[1:] = (users[1:] != users[:-1]).float()
        return first


@pytest.fixture(scope="module")
def ml100k(tmp_path_factory):
    import os

    os.chdir(tmp_path_factory.mktemp("ml100k"))
    config = build_config("SASRec", "ml-100k", overrides={"state": "WARNING"})
    init_seed(config["seed"], True)
    dataset = create_dataset(config)
    return config, dataset, prepare_data(config, dataset)


def _hit1(config, dataset, loader, model_class, trainer_class):
    model = model_class(config, loader._dataset)
    return trainer_class(config, model).evaluate(loader, load_best_model=False)["hit@1"]


def test_no_position_or_id_leak(ml100k):
    config, dataset, (_, _, test) = ml100k
    fair = get_trainer(ModelType.SEQUENTIAL, "SASRec")
    n = len(test.uid_list)
    tolerance = 3 * np.sqrt(0.05 * 0.95 / n)
    for model_class in (ConstantModel, FirstRowModel):
        assert abs(_hit1(config, dataset, test, model_class, fair) - 0.05) < tolerance, model_class
    # The same first-row model on RecBole's stock loaders and trainer finds every positive.
    _, _, stock_test = data_preparation(config, create_dataset(config))
    assert _hit1(config, dataset, stock_test, FirstRowModel, Trainer) == 1.0


def test_candidates_are_fixed_distinct_unseen_and_independent_of_global_rng(ml100k):
    config, dataset, (_, valid, test) = ml100k
    first = {u: c.copy() for u, c in test.candidates.items()}
    np.random.seed(123)
    np.random.random(1000)  # whatever a model's training consumes...
    again = prepare_data(config, create_dataset(config))[2]
    assert again.digest() == test.digest()
    assert all(np.array_equal(first[u], again.candidates[u]) for u in first)
    seen = test._sampler.used_ids
    inter = test._dataset.inter_feat
    positives = dict(zip(inter["user_id"].tolist(), inter["item_id"].tolist()))
    for uid, items in test.candidates.items():
        assert len(items) == 20 and len(set(items.tolist())) == 20
        negatives = set(items.tolist()) - {positives[uid]}
        assert positives[uid] in items and len(negatives) == 19
        assert not negatives & set(seen[uid])  # no item the user interacted with, in any split
    # Valid and test draw from separate streams: not the same negatives.
    assert valid.digest() != test.digest()
    # Rows reach predict in the shown order, positives not first.
    interaction, row_idx, positive_u, positive_i = test.collate_fn(np.arange(50))
    assert (interaction["label"].view(50, 20).argmax(-1) != 0).any()
    uid = int(interaction["user_id"][0])
    assert interaction["item_id"][:20].tolist() == test.candidates[uid].tolist()


def test_a_sampled_user_sees_the_same_candidates_as_in_the_all_user_run(ml100k):
    """`eval_users`/`valid_users` samples keep each user's all-user candidates, so a quick LLM run on
    100 users is paired with a classical run on all users, user by user."""
    config, dataset, (_, valid, test) = ml100k
    sampled = build_config("SASRec", "ml-100k", overrides={"state": "WARNING", "eval_users": 40, "valid_users": 15})
    _, valid_s, test_s = prepare_data(sampled, create_dataset(sampled))
    assert len(test_s.candidates) == 40 and len(valid_s.candidates) == 15
    for small, full in ((valid_s, valid), (test_s, test)):
        for uid, items in small.candidates.items():
            assert np.array_equal(items, full.candidates[uid])
    assert test_s.digest() != test.digest()  # a different set of users, hence another fingerprint


def test_candidate_order_ignores_which_candidate_is_positive():
    items = [17, 3, 99, 42, 5]
    assert list(candidate_order(2020, 7, items)) == list(candidate_order(2020, 7, items[::-1]))
    orders = {tuple(candidate_order(2020, u, items)) for u in range(30)}
    assert len(orders) > 10  # varies across users


def test_break_ties_hand_example():
    scores = torch.full((2, 6), -np.inf)
    row = torch.tensor([0, 0, 0, 1, 1, 1])
    col = torch.tensor([1, 2, 3, 1, 4, 5])
    scores[row, col] = torch.tensor([0.5, 0.5, 0.9, 0.1, float("nan"), 0.3])
    rng = np.random.default_rng(0)
    break_ties(scores, row, col, rng)
    assert scores[0, 3] > max(scores[0, 1], scores[0, 2])  # order of distinct scores kept
    assert scores[0, 1] != scores[0, 2]  # tie broken
    assert scores[1, 5] > scores[1, 1] > scores[1, 4]  # NaN ranks last
    assert torch.isinf(scores[0, 0]) and torch.isinf(scores[1, 2])  # non-candidates untouched
    # The tie goes either way over many draws (not item-id order).
    wins = 0
    for seed in range(40):
        s = torch.full((1, 3), -np.inf)
        s[0, 1:] = 0.0
        break_ties(s, torch.tensor([0, 0]), torch.tensor([1, 2]), np.random.default_rng(seed))
        wins += int(s[0, 1] > s[0, 2])
    assert 5 < wins < 35


def test_same_candidates_and_users_for_every_model(tiny_data_path, in_tmp):
    # sequential, general, popularity and traditional (ItemKNN: RecBole's TraditionalTrainer) models alike
    results = {}
    for model in ("GRU4Rec", "BPR", "Pop", "ItemKNN"):
        results[model] = run(model, "tiny", overrides=tiny(data_path=tiny_data_path, epochs=2, eval_users=25),
                             result_file=in_tmp / f"{model}.json")
    for model in ("BPR", "Pop", "ItemKNN"):
        assert results[model]["candidates_sha256"] == results["GRU4Rec"]["candidates_sha256"], model
        assert results[model]["eval_users"] == {"valid": 25, "test": 25}, model
    saved = json.loads((in_tmp / "BPR.json").read_text())
    for key in ("model", "dataset", "seed", "best_valid_result", "test_result", "config", "timings_s"):
        assert key in saved
    assert isinstance(saved["test_result"]["hit@1"], float)
    assert set(saved["timings_s"]) >= {"load", "train", "test"}
    assert "result_file" not in saved["config"]


def test_same_command_same_seed_same_metrics(tiny_data_path, in_tmp):
    overrides = tiny(data_path=tiny_data_path, epochs=2)
    a = run("SASRec", "tiny", overrides=overrides, result_file=in_tmp / "a.json")
    b = run("SASRec", "tiny", overrides=overrides, result_file=in_tmp / "b.json")
    assert a["test_result"] == b["test_result"] and a["best_valid_result"] == b["best_valid_result"]
    c = run("SASRec", "tiny", overrides={**overrides, "seed": 7}, result_file=in_tmp / "c.json")
    assert c["candidates_sha256"] != a["candidates_sha256"]
