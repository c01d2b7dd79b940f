"""One test per RecBole 1.2.1 quirk that recbole_r2rec.compat fixes."""
import os
import sys

import numpy as np
import pytest
import torch

from recbole_r2rec import compat
from recbole_r2rec.config import build_config


def test_numpy_aliases_restored_for_recbole_and_ray():
    assert np.float_ is np.float64 and np.bool8 is np.bool_ and np.complex_ is np.complex128
    config = build_config("BPR", "ml-100k")  # RecBole's Config sets np.float = np.float_ on construction
    assert config["model"] == "BPR"
    assert np.float is np.float64


class _PickledConfig:
    """Stands for RecBole's Config, which its checkpoints pickle."""

    value = 3


def test_recbole_checkpoints_load_despite_weights_only_default(tmp_path):
    import recbole.trainer.trainer as recbole_trainer

    path = tmp_path / "ckpt.pth"
    torch.save({"config": _PickledConfig(), "state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(Exception, match="[Ww]eights"):
        torch.load(path)  # torch's default refuses the pickled config...
    loaded = recbole_trainer.torch.load(path, map_location="cpu")  # ...RecBole's trainer can read it
    assert loaded["config"].value == 3 and loaded["state_dict"]["w"].sum() == 2
    assert recbole_trainer.torch.no_grad is torch.no_grad  # everything else is plain torch
    ours = compat.load_recbole_checkpoint(path)  # what R2Rec's sequential encoder reads them with
    assert ours["config"].value == 3 and ours["state_dict"]["w"].device.type == "cpu"


def test_config_ignores_foreign_argv_and_keeps_cuda_visible_devices(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["pytest", "--learning_rate=0.5", "--hidden_size=7", "-q"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    config = build_config("SASRec", "ml-100k", overrides={"gpu_id": "0"})
    assert config["learning_rate"] == 0.001 and config["hidden_size"] == 64
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "3"
    assert sys.argv[1] == "--learning_rate=0.5"  # restored


def test_apply_is_idempotent():
    compat.apply()
    compat.apply()
    import recbole.trainer.trainer as recbole_trainer

    assert isinstance(recbole_trainer.torch, compat._TrustedCheckpointTorch)
    assert not isinstance(recbole_trainer.torch._torch, compat._TrustedCheckpointTorch)



def test_recbole_sequential_import_leaves_anomaly_detection_off():
    from recbole_r2rec.registry import get_model

    get_model("SINE")  # the module that switches anomaly detection on at import
    get_model("SASRec")
    assert not torch.is_anomaly_enabled()


def test_lightgcn_builds_its_graph_with_todays_scipy(tiny_data_path, in_tmp):
    """RecBole's graph models fill a dok_matrix through `_update`, which scipy >= 1.12 removed."""
    from recbole.data import create_dataset

    from conftest import tiny
    from recbole_r2rec.protocol import prepare_data
    from recbole_r2rec.registry import get_model

    config = build_config("LightGCN", "tiny", overrides=tiny(data_path=tiny_data_path))
    train, _, _ = prepare_data(config, create_dataset(config))
    model = get_model("LightGCN")(config, train._dataset)
    adj = model.norm_adj_matrix.to_dense()
    users, items = train._dataset.inter_feat["user_id"], train._dataset.inter_feat["item_id"]
    n_users = model.n_users
    # D^-1/2 A D^-1/2 of the bipartite training graph, entry by entry for one interaction
    u, i = int(users[0]), int(items[0])
    deg_u = int((users == u).sum())
    deg_i = int((items == i).sum())
    assert adj[u, n_users + i].item() == pytest.approx((deg_u * deg_i) ** -0.5, rel=1e-5)
    assert adj[u, n_users + i] == adj[n_users + i, u]
    assert int((adj != 0).sum()) == 2 * len(set(zip(users.tolist(), items.tolist())))


def test_bert4rec_batch_with_no_masked_item_has_zero_loss_not_nan(tiny_data_path, in_tmp):
    """RecBole divides BERT4Rec's loss by the number of masked positions: a batch with none gave NaN and
    stopped training (lastfm, seed 2021). A batch with masked items keeps RecBole's own loss."""
    from recbole.data import create_dataset
    from recbole.data.interaction import Interaction

    from conftest import tiny
    from recbole_r2rec.protocol import prepare_data
    from recbole_r2rec.registry import get_model

    config = build_config("BERT4Rec", "tiny", overrides=tiny(data_path=tiny_data_path))
    train, _, _ = prepare_data(config, create_dataset(config))
    model = get_model("BERT4Rec")(config, train._dataset)
    batch, length, masks = 3, model.max_seq_length, model.mask_item_length
    seq = torch.randint(1, model.n_items, (batch, length))
    items = torch.randint(1, model.n_items, (batch, masks))
    none_masked = Interaction({model.MASK_ITEM_SEQ: seq, model.POS_ITEMS: items, model.NEG_ITEMS: items,
                               model.MASK_INDEX: torch.zeros((batch, masks), dtype=torch.long)})
    loss = model.calculate_loss(none_masked)
    assert loss.item() == 0.0 and loss.requires_grad
    index = torch.zeros((batch, masks), dtype=torch.long)
    index[:, 0] = 2  # one masked position per row
    masked = Interaction({model.MASK_ITEM_SEQ: seq, model.POS_ITEMS: items, model.NEG_ITEMS: items,
                          model.MASK_INDEX: index})
    loss = model.calculate_loss(masked)
    assert torch.isfinite(loss) and loss.item() > 0


@pytest.mark.parametrize("module", ["recbole.utils.logger", "recbole.data.utils", "recbole.trainer.trainer"])
def test_ensure_dir_survives_a_concurrent_creator(module, tmp_path, monkeypatch):
    """Two cells started together: both see no `./log`, the other creates it first. RecBole's own
    `ensure_dir` then raised FileExistsError (seen running two leaderboard cells side by side)."""
    import importlib

    ensure_dir = importlib.import_module(module).ensure_dir
    target = tmp_path / "log"
    target.mkdir()
    monkeypatch.setattr(os.path, "exists", lambda path: False)  # the check ran before the other's mkdir
    ensure_dir(str(target))
    ensure_dir(str(tmp_path / "log" / "SASRec"))
    assert (tmp_path / "log" / "SASRec").is_dir()
