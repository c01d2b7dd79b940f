"""ScoreBlend (recbole_r2rec/blend.py), the classical ensemble row: each component is exactly its own
leaderboard row, the blend is the weighted sum of standardised scores, and bad settings say why."""
import numpy as np
import pytest

from conftest import run_tiny_rows, tiny
from recbole_r2rec import leaderboard as lb
from recbole_r2rec.chains import standardised
from recbole_r2rec.config import ConfigError, build_config
from recbole_r2rec.protocol import ProtocolError
from recbole_r2rec.registry import UnknownModelError
from recbole_r2rec.runner import run

METRICS = ("hit@1", "hit@5", "ndcg@5", "mrr@10")


@pytest.fixture(scope="module")
def rows(tiny_data_path, tmp_path_factory):
    """ItemKNN, SASRec and LightGCN run as leaderboard rows on the tiny dataset (checkpoints kept)."""
    folder = tmp_path_factory.mktemp("blend")
    return folder, run_tiny_rows(("ItemKNN", "SASRec", "LightGCN"), tiny_data_path, folder)


def _blend(tiny_data_path, folder, weights, models=("ItemKNN", "SASRec"), **extra):
    overrides = tiny(data_path=tiny_data_path, blend_models=list(models), blend_weights=list(weights),
                     blend_checkpoints=str(folder / "{model}-{dataset}-seed{seed}.pth"), **extra)
    return run("ScoreBlend", "tiny", overrides=overrides, result_file=folder / "blend.json")


def test_sasrec_alone_is_exactly_its_own_row(tiny_data_path, rows):
    # same split, same candidates, the checkpoint's scores up to a monotone map, same random tie-break:
    # every user's rank of the positive is the row's own
    folder, results = rows
    blend = _blend(tiny_data_path, folder, (0.0, 2.0))
    assert blend["candidates_sha256"] == results["SASRec"]["candidates_sha256"]
    assert blend["test_user_ranks"] == results["SASRec"]["test_user_ranks"]
    assert {m: blend["test_result"][m] for m in METRICS} == {m: results["SASRec"]["test_result"][m] for m in METRICS}


def test_itemknn_is_its_rows_model_reading_the_history_the_sequential_models_read(tiny_data_path, rows):
    # the item-item weights are the ItemKNN row's own (RecBole's ItemKNN built on the general split's training
    # interactions, with the row's settings); validation is the row's (the validation history holds training
    # items only); at test time the user's validation item counts too, as it does for SASRec
    from recbole.data import create_dataset

    from recbole_r2rec.protocol import prepare_data
    from recbole_r2rec.registry import get_model

    folder, results = rows
    model, test, interaction = _built(tiny_data_path, folder, ("ItemKNN",), (1.0,))
    general = build_config("ItemKNN", "tiny", overrides=tiny(data_path=tiny_data_path))
    row_train = prepare_data(general, create_dataset(general))[0]
    row_model = get_model("ItemKNN")(general, row_train._dataset)
    assert (model.components[0] != row_model.w).nnz == 0
    alone = _blend(tiny_data_path, folder, (1.0,), models=("ItemKNN",))
    assert alone["best_valid_result"]["hit@1"] == results["ItemKNN"]["best_valid_result"]["hit@1"]
    test_history = dict(zip(*(test._dataset.inter_feat[f].tolist() for f in ("user_id", "item_id_list"))))
    users, items = interaction["user_id"].numpy(), interaction["item_id"].numpy()
    trained = row_train._dataset.inter_matrix(form="csr")
    scores = model.component_scores(model.components[0], interaction, model.profiles(interaction))
    for row in range(0, len(users), 7):
        profile = set(trained[users[row]].indices) | {i for i in test_history[users[row]] if i}
        assert scores[row] == pytest.approx(float(row_model.w[sorted(profile), items[row]].sum()), rel=1e-5)
    last = {u: [i for i in seq if i][-1] for u, seq in test_history.items()}  # the validation item
    assert any(last[u] not in trained[u].indices for u in set(users))
    assert alone["test_user_ranks"] != results["ItemKNN"]["test_user_ranks"]


def test_ease_is_recboles_ease_built_on_the_same_training_interactions(tiny_data_path, rows):
    from recbole.data import create_dataset

    from recbole_r2rec.protocol import prepare_data
    from recbole_r2rec.registry import get_model

    model, _, interaction = _built(tiny_data_path, rows[0], ("EASE",), (1.0,))
    general = build_config("EASE", "tiny", overrides=tiny(data_path=tiny_data_path))
    ease = get_model("EASE")(general, prepare_data(general, create_dataset(general))[0]._dataset)
    np.testing.assert_allclose(model.components[0].toarray(), np.asarray(ease.item_similarity), rtol=1e-5, atol=1e-6)
    assert np.isfinite(model.predict(interaction).numpy()).all()


def test_lightgcn_folded_in_is_its_row_on_training_items_and_reads_the_history_at_test(tiny_data_path, rows):
    # the fold-in recomputes a user's LightGCN embedding from a profile: from the user's training items it is
    # RecBole's LightGCN forward pass (the row's checkpoint on the general split), so validation is the row's;
    # at test time the profile also holds the validation item, and the ranks move
    import torch
    from recbole.data import create_dataset

    from recbole_r2rec.compat import load_recbole_checkpoint
    from recbole_r2rec.protocol import prepare_data
    from recbole_r2rec.registry import get_model

    folder, results = rows
    model, _, interaction = _built(tiny_data_path, folder, ("LightGCN",), (1.0,))
    general = build_config("LightGCN", "tiny", overrides=tiny(data_path=tiny_data_path))
    row_train = prepare_data(general, create_dataset(general))[0]._dataset
    row_model = get_model("LightGCN")(general, row_train)
    row_model.load_state_dict(load_recbole_checkpoint(folder / "LightGCN-tiny-seed2020.pth")["state_dict"])
    users, items = interaction["user_id"].numpy(), interaction["item_id"].numpy()
    trained = row_train.inter_matrix(form="csr").astype(np.float32)
    with torch.no_grad():
        expected = row_model.eval().predict(interaction).numpy()
    np.testing.assert_allclose(model.components[0].scores(users, items, trained[users]), expected, rtol=1e-4, atol=1e-5)
    profiles = model.profiles(interaction)
    assert (profiles - trained[users]).min() >= 0 and (profiles - trained[users]).nnz > 0  # history added
    moved = model.component_scores(model.components[0], interaction, profiles)
    assert not np.allclose(moved, expected, atol=1e-4)
    alone = _blend(tiny_data_path, folder, (1.0,), models=("LightGCN",))
    assert alone["candidates_sha256"] == results["LightGCN"]["candidates_sha256"]
    assert alone["best_valid_result"]["hit@1"] == results["LightGCN"]["best_valid_result"]["hit@1"]
    assert alone["test_user_ranks"] != results["LightGCN"]["test_user_ranks"]


def _built(tiny_data_path, folder, models, weights):
    from recbole.data import create_dataset
    from recbole.utils import init_seed

    from recbole_r2rec.blend import ScoreBlend
    from recbole_r2rec.protocol import prepare_data

    config = build_config("ScoreBlend", "tiny", overrides=tiny(
        data_path=tiny_data_path, blend_models=list(models), blend_weights=list(weights),
        blend_checkpoints=str(folder / "{model}-{dataset}-seed{seed}.pth")))
    init_seed(config["seed"], True)
    train, _, test = prepare_data(config, create_dataset(config))
    interaction = test.collate_fn(np.arange(len(test.uid_list)))[0]
    return ScoreBlend(config, train._dataset), test, interaction


def test_the_ranking_is_the_weighted_sum_of_standardised_component_scores(tiny_data_path, rows):
    folder, results = rows
    model, _, interaction = _built(tiny_data_path, folder, ("ItemKNN", "SASRec"), (0.5, 1.0))
    scores = model.predict(interaction).numpy()
    profiles = model.profiles(interaction)
    knn, sasrec = (model.component_scores(c, interaction, profiles) for c in model.components)
    users = interaction["user_id"].numpy()
    moved = 0
    for user in np.unique(users):
        rows_of = np.flatnonzero(users == user)
        expected = 0.5 * standardised(knn[rows_of]) + standardised(sasrec[rows_of])
        np.testing.assert_allclose(scores[rows_of], expected, atol=1e-5)
        moved += int(np.argmax(expected) != np.argmax(knn[rows_of]))
    assert moved > 0  # SASRec changes some users' first choice
    blend = _blend(tiny_data_path, folder, (0.5, 1.0))
    assert blend["test_user_ranks"] not in (results["ItemKNN"]["test_user_ranks"], results["SASRec"]["test_user_ranks"])


def test_bad_blends_are_refused_before_any_data_is_read(tiny_data_path, rows):
    folder, _ = rows
    with pytest.raises(ConfigError, match=r"blend_weights must list one weight per model of blend_models"):
        _blend(tiny_data_path, folder, (1.0,))
    with pytest.raises(ConfigError, match=r"blend_weights must be numbers >= 0, not all 0"):
        _blend(tiny_data_path, folder, (1.0, -1.0))
    with pytest.raises(ConfigError, match=r"not all 0"):
        _blend(tiny_data_path, folder, (0, 0))
    with pytest.raises(ConfigError, match=r"cannot blend Pop: a component is a sequential model .* "
                                          r"\['ItemKNN', 'EASE'\] or a general model folded in .* \['LightGCN'\]"):
        _blend(tiny_data_path, folder, (1, 1), models=("Pop", "SASRec"))
    with pytest.raises(ConfigError, match=r"cannot blend BPR"):
        _blend(tiny_data_path, folder, (1, 1), models=("BPR", "SASRec"))
    with pytest.raises(UnknownModelError, match="Unknown model 'SASRek'"):
        _blend(tiny_data_path, folder, (1, 1), models=("ItemKNN", "SASRek"))
    with pytest.raises(ProtocolError, match=r"ScoreBlend standardises .* all-item ranking .* uni19"):
        _blend(tiny_data_path, folder, (1, 1), eval_args={"mode": "full"})


def test_a_missing_component_checkpoint_says_which_model_to_train(tiny_data_path, rows):
    folder, _ = rows
    with pytest.raises(ConfigError, match=r"blend_checkpoints .*GRU4Rec-tiny-seed2020.pth does not exist: train it "
                                          r"under the shared protocol first, e.g. run_recbole_r2rec.py "
                                          r"--model=GRU4Rec --dataset=tiny --seed=2020"):
        _blend(tiny_data_path, folder, (1, 1), models=("ItemKNN", "GRU4Rec"))


def test_the_leaderboard_compares_llm_rows_with_the_ensemble_apart_from_the_best_single_model(tmp_path):
    # ScoreBlend hits more than SASRec, but "best classical" stays the best single model; the ensemble
    # gets its own line (R2Rec 3/4 vs ScoreBlend 4/4: 0 vs 1 discordant users, p = 1)
    from test_leaderboard import _cell

    _cell(tmp_path, "SASRec", "ml-100k", 1, 0.5, [1, 1, 3, 2])
    _cell(tmp_path, "ScoreBlend", "ml-100k", 1, 1.0, [1, 1, 1, 1])
    _cell(tmp_path, "R2Rec", "ml-100k", 1, 0.75, [1, 1, 1, 2])
    comps = {c["versus"]: c for c in lb.report(tmp_path)["comparisons"]}
    assert comps["best classical"]["other"] == "SASRec" and comps["best classical"]["relative_gain"] == 0.5
    ensemble = comps["classical ensemble"]
    assert ensemble["other"] == "ScoreBlend" and ensemble["relative_gain"] == pytest.approx(-0.25)
    assert (ensemble["test"]["only_a"], ensemble["test"]["only_b"]) == (0, 1)
    assert "R2Rec vs classical ensemble (ScoreBlend)" in (tmp_path / "leaderboard.md").read_text()


def test_a_leaderboard_run_blends_the_sasrec_cells_it_just_trained(tiny_data_path, tmp_path):
    # no blend_checkpoints given: ScoreBlend reads SASRec from the run's checkpoint_dir, where the SASRec
    # cell of the same (dataset, seed) wrote it earlier in the grid
    import json

    from recbole_r2rec.runner import main

    folder = tmp_path / "board"
    main(["--leaderboard", "--models=SASRec,ScoreBlend", "--datasets=tiny", "--seeds=2020",
          f"--leaderboard_dir={folder}", f"--data_path={tiny_data_path}", "--load_col={inter: [user_id, item_id, timestamp]}",
          "--user_inter_num_interval=[5,inf)", "--state=WARNING", "--epochs=1", f"--checkpoint_dir={tmp_path / 'ckpt'}"])
    assert not list((folder / "cells").glob("*.error.txt"))
    blend = json.loads((folder / "cells" / "ScoreBlend-tiny-seed2020.json").read_text())
    sasrec = json.loads((folder / "cells" / "SASRec-tiny-seed2020.json").read_text())
    assert blend["candidates_sha256"] == sasrec["candidates_sha256"]
    assert blend["config"]["blend_models"] == ["ItemKNN", "SASRec"] and blend["test_user_ranks"] != sasrec["test_user_ranks"]
