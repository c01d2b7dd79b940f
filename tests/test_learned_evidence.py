"""evidence_model: gbdt (recbole_r2rec/learned_evidence.py): the learnt chain strength never reads a user's own
choice of a candidate, scores each user with a model fitted without that user, is reproducible, and is what
R2Rec ranks and lists by."""

import numpy as np
import pytest
from recbole.utils import ModelType
from test_r2rec import _r2rec

from recbole_r2rec.chains import InteractionGraph
from recbole_r2rec.config import ConfigError
from recbole_r2rec.learned_evidence import FOLDS, LearnedEvidence
from recbole_r2rec.model import R2Rec
from recbole_r2rec.registry import get_trainer


def walks(users: int = 40, items: int = 30, seed: int = 0) -> dict:
    """user -> items in time order: noisy walks through the items, so chains carry signal."""
    rng = np.random.default_rng(seed)
    out = {}
    for user in range(1, users + 1):
        start = int(rng.integers(1, items + 1))
        seq = [(start + 2 * step + int(rng.integers(0, 2))) % items + 1 for step in range(int(rng.integers(6, 12)))]
        out[user] = list(dict.fromkeys(seq))  # each item once, first time
    return out


def learned(sequences: dict, n_users: int = 41, n_items: int = 31, seed: int = 0, columns: str = "all") -> LearnedEvidence:
    graph = InteractionGraph({u: set(s) for u, s in sequences.items()}, n_users, n_items, sequences=sequences)
    configured = lambda user, history, cands: graph.evidence(user, history, cands, "sum_cosine", neighbours="cosine")
    return LearnedEvidence(graph, configured, window=0, penalty=5.0, regularised_recency=0.7, history_len=5,
                           examples=2, seed=seed, feature_set=columns)


def test_the_features_of_a_training_target_are_those_of_a_held_out_one():
    """At training time u1 chose its target: every feature (chains, neighbour weights, popularity, recent
    popularity, EASE, the profile's size) must be what it would be had u1 not chosen it, as for a test target.
    Else the target would stand out in the model's own training data and in SFT prompts."""
    sequences = walks()
    user, target = 1, sequences[1][-1]
    history = sequences[1][:-1][-5:]
    cands = [target] + [i for i in range(1, 31) if i not in sequences[1]][:9]
    without = {u: (s[:-1] if u == user else s) for u, s in sequences.items()}
    with_target, held_out = learned(sequences), learned(without)
    np.testing.assert_allclose(with_target.features(user, history, cands), held_out.features(user, history, cands))
    assert held_out.features(user, history, cands).shape == (len(cands), 17)  # 8 signals, raw and standardised, + size


def test_standardised_feature_set_never_shows_the_model_a_raw_value():
    """evidence_model_features: standardised: the model sees each signal only as z-scores over the user's
    candidates (what shifts between training and held-out targets, raw popularity above all, never reaches it),
    the same z-scores as the full set, and the profile size."""
    sequences = walks()
    user, history, cands = 2, sequences[2][-6:-1], [sequences[2][-1]] + list(range(1, 13))
    full, only = learned(sequences).features(user, history, cands), learned(sequences, columns="standardised")
    features = only.features(user, history, cands)
    assert features.shape == (len(cands), 9) and only.models[0].n_features_in_ == 9  # 8 signals + size
    np.testing.assert_allclose(features, full[:, [*range(1, 16, 2), 16]])
    np.testing.assert_allclose(features[:, :8].mean(axis=0), 0, atol=1e-12)
    assert not np.allclose(only.strength(user, history, cands), learned(sequences).strength(user, history, cands))


def test_each_user_is_scored_by_the_model_fitted_without_its_fold():
    model = learned(walks())
    assert sorted(set(model.fold[1:].tolist())) == list(range(FOLDS)) and len(model.models) == FOLDS
    x, _, folds = model.examples(2, 0)
    user = 7
    features = model.features(user, walks()[user][-6:-1], [walks()[user][-1], 3, 4])
    # the model of the user's fold scores it, and it was fitted on the other folds' rows only
    expected = model.models[model.fold[user]].decision_function(features)
    np.testing.assert_allclose(model.strength(user, walks()[user][-6:-1], [walks()[user][-1], 3, 4]), expected)
    assert (folds == model.fold[user]).sum() > 0 and model.models[model.fold[user]].n_features_in_ == x.shape[1]
    assert not np.allclose(expected, model.models[(model.fold[user] + 1) % FOLDS].decision_function(features))


def test_learned_strength_is_reproducible_and_depends_on_the_seed():
    a, b, c = learned(walks(), seed=3), learned(walks(), seed=3), learned(walks(), seed=4)
    cands = list(range(1, 21))
    np.testing.assert_array_equal(a.strength(5, walks()[5][-5:], cands), b.strength(5, walks()[5][-5:], cands))
    assert not np.array_equal(a.fold, c.fold)


def test_without_llm_the_learned_strength_ranks_the_candidates(tiny_data_path):
    """llm_path: none with evidence_model: gbdt: every row's score is the learnt strength of its candidate
    (not the configured one), and the evidence lines keep the real co-chooser counts."""
    config, (train, _, test) = _r2rec("tiny", tiny_data_path, "none", stages="none", evidence_model="gbdt")
    model = R2Rec(config, train._dataset)
    assert model.learned is not None
    interaction = test.collate_fn(np.arange(len(test.uid_list)))[0]
    scores = model.predict(interaction)
    moved = 0
    for answer in model.answers:
        support, configured = model.configured_evidence(answer["user"], answer["history"], answer["candidates"])
        strength = model.learned.strength(answer["user"], answer["history"], answer["candidates"])
        assert model.candidate_evidence(answer["user"], answer["history"], answer["candidates"])[0] == support
        moved += list(np.argsort(-strength)) != list(np.argsort(-np.asarray(configured)))
        by_item = dict(zip(answer["candidates"], strength.tolist()))
        rows = [r for r in range(len(interaction)) if int(interaction["user_id"][r]) == answer["user"]]
        np.testing.assert_allclose([float(scores[r]) for r in rows],
                                   [by_item[int(interaction["item_id"][r])] for r in rows], atol=1e-5)
    assert moved > 0
    assert get_trainer(ModelType.SEQUENTIAL, "R2Rec")(config, model).evaluate(test)["hit@1"] >= 0


@pytest.mark.parametrize("settings,message", [
    ({"evidence_model": "xgboost"}, r"unknown evidence_model 'xgboost'; known: \['none', 'gbdt'\]"),
    ({"evidence_model": "gbdt", "evidence_model_examples": 0}, "evidence_model_examples must be an integer >= 1"),
    ({"evidence_model": "gbdt", "evidence_model_features": "raw"},
     r"unknown evidence_model_features 'raw'; known: \['all', 'standardised'\]"),
    ({"evidence_model": "gbdt", "chain_evidence": False, "evidence_weight": 0.0},
     "evidence_model learns the chain strength: it needs chain_evidence or evidence_weight > 0"),
])
def test_evidence_model_settings_are_checked(tiny_data_path, tiny_llm_path, settings, message):
    config, (train, _, _) = _r2rec("tiny", tiny_data_path, tiny_llm_path, stages="none", **settings)
    with pytest.raises(ConfigError, match=message):
        R2Rec(config, train._dataset)
