"""Layered configuration, model lookup and the errors a user sees."""

import json

import pytest

from recbole_r2rec.config import PROJECT_ROOT, ConfigError, DatasetNotFoundError, build_config, check_dataset_on_disk
from recbole_r2rec.registry import UnknownModelError, get_model, get_trainer
from recbole_r2rec.chains import check_evidence
from recbole_r2rec.leaderboard import Cell, cell_command, row_settings, variants
from recbole_r2rec.runner import build_parser, parse_overrides, run
from recbole_r2rec.stages import _SETTINGS_BEFORE_THEY_EXISTED


def test_layers_overall_dataset_model_files_cmdline(tmp_path):
    config = build_config("SASRec", "ml-100k")
    assert config["valid_metric"] == "Hit@1"  # overall protocol
    assert config["item_text_fields"] == ["movie_title", "release_year", "class"]  # dataset file
    assert config["hidden_size"] == 64  # model file beats RecBole's internal default
    extra = tmp_path / "extra.yaml"
    extra.write_text("hidden_size: 32\nn_layers: 1\n")
    config = build_config("SASRec", "ml-100k", [extra])
    assert config["hidden_size"] == 32 and config["n_layers"] == 1  # --config_files beat the model file
    config = build_config("SASRec", "ml-100k", [extra], {"hidden_size": 16})
    assert config["hidden_size"] == 16 and config["n_layers"] == 1  # command line beats all


def test_model_settings_for_one_dataset_beat_the_models_defaults_only_there(tmp_path):
    # properties/model/R2Rec/steam.yaml (chosen on steam's validation) over R2Rec.yaml's default
    assert build_config("R2Rec", "steam")["evidence_signal"] == "sum_cochoosers"
    assert build_config("R2Rec", "ml-100k")["evidence_signal"] == "sum_cosine"
    assert build_config("R2Rec", "steam", overrides={"evidence_signal": "max_cochoosers"})["evidence_signal"] \
        == "max_cochoosers"  # the command line still beats it
    # properties/model/R2Rec/lastfm.yaml: neighbour-weighted chains there only, and a leaderboard row that
    # pins the old value keeps meaning what its cells ran with
    assert build_config("R2Rec", "lastfm")["evidence_neighbours"] == "cosine"
    assert build_config("R2Rec", "ml-100k")["evidence_neighbours"] == "none"
    assert "--evidence_neighbours=none" in cell_command(Cell("R2Rec-sft-noneighbours", "lastfm", 2020), "o.json", [])
    # ... and ordered chains blended with 2 x those in any order, there only
    lastfm = build_config("R2Rec", "lastfm")
    assert (lastfm["evidence_window"], lastfm["evidence_unordered"]) == (20, 2.0)
    assert build_config("R2Rec", "steam")["evidence_window"] == 0
    assert "--evidence_window=0" in cell_command(Cell("R2Rec-sft-anyorder", "lastfm", 2020), "o.json", [])


@pytest.mark.parametrize("dataset", ["ml-100k", "lastfm", "steam"])
def test_every_r2rec_leaderboard_row_is_a_valid_evidence_setting_on_every_dataset(dataset):
    # a row pins some evidence keys over each dataset's own file; the mix must still be one the model
    # accepts (e.g. neighbour weighting needs chains in any order), or that row's cells fail on that dataset
    rows = {name: row_settings(name, dataset)[1] for name, (model, _) in variants().items() if model == "R2Rec"}
    assert len(rows) >= 20
    for name, extra in rows.items():
        config = build_config("R2Rec", dataset, overrides=extra)
        check_evidence(float(config["evidence_recency"]), config["evidence_window"],
                       float(config["evidence_unordered"]), float(config["evidence_popularity"]),
                       config["evidence_neighbours"], float(config["evidence_decay"]),
                       *(float(config[key]) for key in ("evidence_regularised", "evidence_regularised_penalty",
                                                         "evidence_regularised_recency")))


@pytest.mark.parametrize("dataset", ["ml-100k", "lastfm", "steam"])
def test_every_stored_r2rec_cell_ran_what_its_row_means_today(dataset):
    # when a dataset's default changes (e.g. ml-100k's evidence_decay 1 -> 0.95), the cells run with the old
    # default must move to a row that pins it; a row whose meaning changed under its cells would report
    # numbers of one setting under the name of another. The keys compared are the evidence settings added
    # since the first cells, each with what a cell that lacks it ran (as a saved SFT stage reads it too).
    rows = {name: row_settings(name, dataset)[1] for name, (model, _) in variants().items() if model == "R2Rec"}
    cells = sorted((PROJECT_ROOT / "results" / "leaderboard" / "cells").glob(f"R2Rec*-{dataset}-seed*.json"))
    assert len(cells) >= 20
    configs = {}  # row -> its config today, built once for the row's seeds
    changed = []
    for path in cells:
        row = path.name.rsplit(f"-{dataset}-seed", 1)[0]
        if row not in configs:
            configs[row] = build_config("R2Rec", dataset, overrides=rows.get(row, {}))
        ran = json.loads(path.read_text())["config"]
        # + the inference-only weights (not stage settings): before evidence_weight existed the LLM ranked
        # alone, and sequential_weight 0 is no sequential encoder
        for key, unset in {**_SETTINGS_BEFORE_THEY_EXISTED, "evidence_weight": 0.0, "sequential_weight": 0.0}.items():
            before, after = ran.get(key, unset), configs[row][key]
            if not isinstance(before, str):
                before, after = float(before), float(after)
            if before != after:
                changed.append((path.name, key, before, after))
    assert not changed


def test_malformed_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        build_config("SASRec", "ml-100k", [bad])
    listy = tmp_path / "list.yaml"
    listy.write_text("- epochs\n")
    with pytest.raises(ConfigError, match="mapping"):
        build_config("SASRec", "ml-100k", [listy])
    with pytest.raises(ConfigError, match="not found"):
        build_config("SASRec", "ml-100k", [tmp_path / "missing.yaml"])


def test_unknown_model_lists_available_names():
    with pytest.raises(UnknownModelError) as err:
        get_model("SASRecc")
    message = str(err.value)
    assert "SASRecc" in message and "SASRec" in message and "R2Rec" in message and "LightGCN" in message


def test_plugin_model_and_trainer_first():
    from recbole.utils import ModelType

    from recbole_r2rec.model import R2Rec
    from recbole_r2rec.trainer import R2RecTrainer

    assert get_model("R2Rec") is R2Rec
    assert issubclass(get_trainer(ModelType.SEQUENTIAL, "R2Rec"), R2RecTrainer)
    assert get_model("SASRec").__module__.startswith("recbole.model")


def test_missing_dataset_fails_fast_without_download(tmp_path, monkeypatch, in_tmp):
    import recbole.data.dataset.dataset as recbole_dataset

    def no_download(*a, **k):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(recbole_dataset, "download_url", no_download)
    monkeypatch.setattr(recbole_dataset, "decide_download", no_download)
    with pytest.raises(DatasetNotFoundError) as err:  # before any loading, and no download attempted
        run("BPR", "nosuchdata", overrides={"data_path": str(tmp_path / "nowhere")})
    message = str(err.value)
    assert str(tmp_path / "nowhere" / "nosuchdata" / "nosuchdata.inter") in message
    assert "--data_path" in message


def test_shipped_datasets_resolve_to_shared_folder():
    config = build_config("BPR", "lastfm")
    check_dataset_on_disk(config)  # ../shared/datasets/lastfm/lastfm.inter exists for tests
    assert config["data_path"].endswith("lastfm")


def test_parse_overrides_types_and_errors():
    assert parse_overrides(["--epochs=3", "--learning_rate", "1e-3", "--stages=sft,rl",
                            "--eval_args={mode: {valid: uni19, test: uni19}}", "--eval_users=~"]) == {
        "epochs": 3, "learning_rate": 1e-3, "stages": "sft,rl",
        "eval_args": {"mode": {"valid": "uni19", "test": "uni19"}}, "eval_users": None}
    with pytest.raises(SystemExit, match="--key=value"):
        parse_overrides(["stray"])
    with pytest.raises(SystemExit, match="needs a value"):
        parse_overrides(["--epochs"])


def test_a_leaderboard_cell_runs_its_own_seed():
    """The cell's --seed=2021 must reach the config as an override, not be taken by argparse as an
    abbreviation of the leaderboard's --seeds (which silently ran every cell with the default seed)."""
    argv = cell_command(Cell("SASRec", "ml-100k", 2021), "out.json", ["--epochs=1"])[2:]
    args, rest = build_parser().parse_known_args(argv)
    assert (args.model, args.dataset, args.result_file) == ("SASRec", "ml-100k", "out.json")
    assert parse_overrides(rest) == {"seed": 2021, "epochs": 1}
    assert args.seeds == "2020,2021,2022"  # the grid's default, untouched by the cell's --seed


def test_baselines_train_to_convergence_and_short_rows_keep_the_old_budget():
    """A baseline stopped before its validation Hit@1 converges flatters every model compared with it:
    the defaults stop on validation, not on a small epoch cap, and the `-short` rows (whose cells were
    run with the old CPU budget) still resolve to exactly that budget."""
    for model in ("SASRec", "GRU4Rec", "Caser", "BERT4Rec", "BPR", "LightGCN"):
        config = build_config(model, "ml-100k")
        assert config["valid_metric"].lower() == "hit@1"
        assert config["epochs"] // config["eval_step"] >= 5 * config["stopping_step"], model
        short = cell_command(Cell(f"{model}-short", "ml-100k", 2020), "out.json", [])
        assert f"--model={model}" in short
        assert ("--epochs=4" in short) if config["eval_step"] == 1 else ("--epochs=40" in short), short


def test_a_config_file_with_only_comments_is_read_as_no_settings(tmp_path):
    # RecBole's Config fails on an empty YAML ('NoneType' object is not iterable); Pop's defaults file is one
    notes = tmp_path / "notes.yaml"
    notes.write_text("# nothing set here yet\n")
    assert build_config("Pop", "ml-100k", config_files=[notes])["model"] == "Pop"
    assert build_config("BPR", "ml-100k", config_files=[notes])["embedding_size"] == 64


def test_itemknn_takes_each_datasets_validated_settings_and_its_default_row_recboles():
    # the ItemKNN row is tuned per dataset (properties/model/ItemKNN/<dataset>.yaml); ItemKNN-default must
    # stay RecBole's k 100, shrink 0 on every dataset, the per-dataset files notwithstanding
    tuned = {d: build_config("ItemKNN", d) for d in ("ml-100k", "lastfm", "steam")}
    assert {d: (c["k"], c["shrink"]) for d, c in tuned.items()} == {
        "ml-100k": (50, 0.0), "lastfm": (500, 0.0), "steam": (500, 300.0)}
    for dataset in tuned:
        model, keys = row_settings("ItemKNN-default", dataset)
        default = build_config(model, dataset, overrides=keys)
        assert (model, default["k"], default["shrink"]) == ("ItemKNN", 100, 0.0), dataset
        assert "--k=100" in cell_command(Cell("ItemKNN-default", dataset, 2020), "o.json", [])


def test_a_row_takes_its_per_dataset_keys_on_that_dataset_only(tmp_path, monkeypatch):
    # a weight chosen on lastfm's validation users must reach lastfm's cells and no other dataset's
    row = "R2Rec-evidence_only-regularised-sequential-valid"
    lastfm, ml = (cell_command(Cell(row, d, 2020), "o.json", []) for d in ("lastfm", "ml-100k"))
    assert "--sequential_weight=1.5" in lastfm and "--sequential_weight=3.0" in ml
    assert not any(arg.startswith("--per_dataset") for arg in lastfm + ml)
    assert row_settings(row, "lastfm")[1]["evidence_regularised"] == 0.25
    from recbole_r2rec import leaderboard
    (tmp_path / "properties").mkdir()
    (tmp_path / "properties" / "leaderboard.yaml").write_text(
        "variants:\n  Bad:\n    model: R2Rec\n    per_dataset: {lastfm: 1.5}\n")
    monkeypatch.setattr(leaderboard, "PROJECT_ROOT", tmp_path)
    with pytest.raises(ConfigError, match="row Bad: per_dataset must map a dataset to its keys"):
        variants()
