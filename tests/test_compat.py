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
