"""Collaborative evidence from a trained sequential model (`sequential_weight`, recbole_r2rec/sequential.py):
the blend reaches R2Rec's ranking, the encoder is RecBole's own checkpoint, and bad settings say why."""
import numpy as np
import pytest
import torch

from conftest import run_tiny_rows, tiny
from recbole_r2rec.chains import standardised
from recbole_r2rec.compat import load_recbole_checkpoint
from recbole_r2rec.config import ConfigError, build_config
from recbole_r2rec.model import R2Rec
from recbole_r2rec.sequential import encoder_path
from test_r2rec import _r2rec

METRICS = ("hit@1", "hit@5", "ndcg@5", "mrr@10")


@pytest.fixture(scope="module")
def trained(tiny_data_path, tmp_path_factory):
    """SASRec and BPR trained on the tiny dataset under the shared protocol, as the runner saves them."""
    folder = tmp_path_factory.mktemp("sequential")
    return folder, run_tiny_rows(("SASRec", "BPR"), tiny_data_path, folder)


def _blend(tiny_data_path, folder, weight, **extra):
    extra = {"sequential_encoder": str(folder / "SASRec-{dataset}-seed{seed}.pth"), **extra}
    config, (train, _, test) = _r2rec("tiny", tiny_data_path, "none", stages="none", sequential_weight=weight, **extra)
    return config, R2Rec(config, train._dataset), test


def test_an_overwhelming_weight_reproduces_the_encoders_own_test_metrics(tiny_data_path, trained):
    # the encoder read back from its checkpoint ranks RecBole's candidate rows exactly as RecBole's trainer
    # evaluated it: same split, same candidates, same scores
    from recbole.utils import ModelType

    from recbole_r2rec.registry import get_trainer

    folder, results = trained
    config, model, test = _blend(tiny_data_path, folder, 1e6)
    result = get_trainer(ModelType.SEQUENTIAL, "R2Rec")(config, model).evaluate(test)
    assert {m: result[m] for m in METRICS} == {m: results["SASRec"]["test_result"][m] for m in METRICS}
    chains_only = get_trainer(ModelType.SEQUENTIAL, "R2Rec")(*_blend(tiny_data_path, folder, 0.0)[:2]).evaluate(test)
    assert {m: chains_only[m] for m in METRICS} != {m: result[m] for m in METRICS}


def test_the_ranking_is_standardised_chains_plus_weight_times_standardised_encoder(tiny_data_path, trained):
    folder, _ = trained
    _, model, test = _blend(tiny_data_path, folder, 0.5)
    interaction = test.collate_fn(np.arange(len(test.uid_list)))[0]
    scores = model.predict(interaction).numpy()
    sasrec = model.sequential.predict(interaction)
    assert model.sequential.name == "SASRec" and not any("sequential" in k for k in model.state_dict())
    moved = 0
    for answer in model.answers:
        _, chains = model.graph.evidence(answer["user"], answer["history"], answer["candidates"],
                                         model.evidence_signal, model.evidence_recency, model.evidence_window)
        rows = {int(interaction["item_id"][r]): r for r in range(len(interaction))
                if int(interaction["user_id"][r]) == answer["user"]}
        encoder = [sasrec[rows[i]] for i in answer["candidates"]]
        expected = standardised(chains) + 0.5 * standardised(encoder)
        np.testing.assert_allclose([scores[rows[i]] for i in answer["candidates"]], expected, atol=1e-5)
        moved += int(np.argmax(expected) != np.argmax(chains))
    assert moved > 0  # the encoder changes some users' first choice


def test_one_setting_names_every_cells_checkpoint():
    assert str(encoder_path("saved/s/SASRec-{dataset}-seed{seed}.pth", "lastfm", 2021)) == "saved/s/SASRec-lastfm-seed2021.pth"
    with pytest.raises(ConfigError, match=r"may only use \{dataset\} and \{seed\}:"):
        encoder_path("saved/{model}.pth", "lastfm", 2021)
    assert build_config("R2Rec", "ml-100k")["sequential_weight"] == 0.0  # off by default: R2Rec alone


def test_a_missing_checkpoint_says_how_to_train_it(tiny_data_path, tmp_path):
    with pytest.raises(ConfigError, match=r"sequential_encoder .*SASRec-tiny-seed2020.pth does not exist: train it "
                                          r"under the shared protocol first, e.g. run_recbole_r2rec.py --model=SASRec "
                                          r"--dataset=tiny --seed=2020"):
        _blend(tiny_data_path, tmp_path, 1.0)


def test_bad_encoders_and_weights_are_config_errors(tiny_data_path, trained, tmp_path):
    folder, _ = trained
    with pytest.raises(ConfigError, match=r"BPR \(general\) model, where a sequential one is needed"):
        _blend(tiny_data_path, folder, 1.0, sequential_encoder=str(folder / "BPR-tiny-seed2020.pth"))
    other = load_recbole_checkpoint(folder / "SASRec-tiny-seed2020.pth")
    other["config"]["dataset"] = "ml-100k"
    torch.save(other, tmp_path / "other.pth")
    with pytest.raises(ConfigError, match="was trained on 'ml-100k', not 'tiny'"):
        _blend(tiny_data_path, folder, 1.0, sequential_encoder=str(tmp_path / "other.pth"))
    torch.save({"weights": 1}, tmp_path / "plain.pth")
    with pytest.raises(ConfigError, match="is not a RecBole checkpoint"):
        _blend(tiny_data_path, folder, 1.0, sequential_encoder=str(tmp_path / "plain.pth"))
    with pytest.raises(ConfigError, match="sequential_weight must be >= 0"):
        _blend(tiny_data_path, folder, -1.0)
    with pytest.raises(ConfigError, match="sequential_weight > 0 needs sequential_encoder"):
        _blend(tiny_data_path, folder, 1.0, sequential_encoder="none")
