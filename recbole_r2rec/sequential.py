"""Collaborative evidence from a trained sequential recommender: LLaRA's idea (Liao et al. 2024, SASRec's
item representations for the LLM recommender), taken at the score level.

R2Rec's chains count co-choosers in the training graph; a sequential model trained under the same
protocol (SASRec, GRU4Rec, ...) has learnt from the same graph what tends to come next. With
`sequential_weight` a > 0 the candidates are ranked by the chain strength, standardised over the
candidates, + a x the encoder's score, standardised alike. The prompts do not change (the SFT and RL
adapters do not depend on it): it is a blend of evidence at ranking time, not new input tokens.

The encoder is never trained here: it is the RecBole checkpoint that `run_recbole_r2rec.py --model=SASRec
--dataset=D --seed=S --checkpoint_dir=DIR` writes (DIR/SASRec-D-seedS.pth), so it saw the same split and
was selected on the same validation users as every leaderboard model.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from recbole.data.interaction import Interaction
from recbole.utils import ModelType, get_model

from recbole_r2rec.chains import standardised
from recbole_r2rec.compat import load_recbole_checkpoint
from recbole_r2rec.config import ConfigError

logger = logging.getLogger(__name__)


def encoder_path(template: str, dataset: str, seed: int, model: str | None = None) -> Path:
    """A checkpoint path template with `{dataset}` and `{seed}` (and `{model}` where a `model` is given:
    ScoreBlend's components) filled in, so one setting serves every cell."""
    fields = {"dataset": dataset, "seed": seed, **({"model": model} if model else {})}
    try:
        return Path(str(template).format(**fields))
    except (KeyError, IndexError, ValueError) as error:
        names = " and ".join("{" + name + "}" for name in fields)
        raise ConfigError(f"checkpoint path {template!r} may only use {names}: {error}") from None


def check_sequential(weight: float, template) -> None:
    if weight < 0:
        raise ConfigError(f"sequential_weight must be >= 0 (0: no sequential encoder), not {weight}")
    if weight > 0 and str(template).lower() in ("none", ""):
        raise ConfigError("sequential_weight > 0 needs sequential_encoder: the RecBole checkpoint of a sequential "
                          "model trained under the shared protocol, e.g. saved/sequential/SASRec-{dataset}-seed{seed}.pth")


def trained_model(path: Path, config, dataset, model: str, key: str, model_type: ModelType, exact: bool = False):
    """A RecBole model of `model_type` rebuilt on `dataset` from the checkpoint at `path`, in eval mode, and the
    config it was trained with. Errors name the config `key` that gave `path` and the `model` to train; with
    `exact` the checkpoint must hold that `model` (otherwise any model of the type)."""
    if not path.is_file():
        raise ConfigError(
            f"{key} {path} does not exist: train it under the shared protocol first, e.g. "
            f"run_recbole_r2rec.py --model={model} --dataset={config['dataset']} --seed={config['seed']} "
            f"--checkpoint_dir={path.parent}")
    checkpoint = load_recbole_checkpoint(path)
    own = checkpoint.get("config") if isinstance(checkpoint, dict) else None
    if own is None or "state_dict" not in checkpoint:
        raise ConfigError(f"{key} {path} is not a RecBole checkpoint (no config / state_dict)")
    if own["dataset"] != config["dataset"]:
        raise ConfigError(f"{key} {path} was trained on {own['dataset']!r}, not {config['dataset']!r}")
    if own["MODEL_TYPE"] != model_type:
        raise ConfigError(f"{key} {path} is a {own['model']} ({own['MODEL_TYPE'].name.lower()}) model, "
                          f"where a {model_type.name.lower()} one is needed")
    if exact and own["model"] != model:
        raise ConfigError(f"{key} gave {path} for {model}, but it holds a {own['model']}")
    if "device" in config:  # this run's device, not the one it was trained on
        own["device"] = config["device"]
    built = get_model(own["model"])(own, dataset)
    try:
        built.load_state_dict(checkpoint["state_dict"])
    except RuntimeError as error:
        raise ConfigError(f"{key} {path} does not fit this dataset's items (trained with other "
                          f"filtering?): {str(error).splitlines()[0]}") from None
    logger.info(f"{key}: {own['model']} from {path} (seed {own['seed']})")
    return built.eval(), own


class SequentialEncoder:
    """A RecBole sequential model loaded from its checkpoint, scoring (history, candidate) rows. Not an
    `nn.Module` attribute of R2Rec on purpose: its weights are not R2Rec's and are never saved with it."""

    def __init__(self, path: Path, config, dataset, model: str = "SASRec", key: str = "sequential_encoder",
                 exact: bool = False):
        self.model, own = trained_model(path, config, dataset, model, key, ModelType.SEQUENTIAL, exact)
        self.name = own["model"]
        self.fields = (own["ITEM_ID_FIELD"], self.model.ITEM_SEQ, self.model.ITEM_SEQ_LEN)

    @torch.no_grad()
    def predict(self, interaction) -> np.ndarray:
        """Scores of RecBole's flat (user, candidate) rows, in row order."""
        device = interaction[self.fields[0]].device
        return self.model.to(device).predict(interaction).float().cpu().numpy()

    def candidate_scores(self, item_seq, item_len: int, candidates) -> np.ndarray:
        """One user's scores for `candidates`, given the padded history `item_seq` RecBole holds."""
        item_id, seq_field, len_field = self.fields
        n = len(candidates)
        rows = Interaction({item_id: torch.as_tensor(list(candidates), dtype=torch.long),
                            seq_field: torch.as_tensor(np.asarray(item_seq), dtype=torch.long).repeat(n, 1),
                            len_field: torch.full((n,), int(item_len), dtype=torch.long)})
        return self.predict(rows)


def fused_strength(strength, sequential, weight: float) -> np.ndarray:
    """The chain strength standardised over the candidates + `weight` x the encoder's standardised scores."""
    if not weight or sequential is None:
        return np.asarray(strength, dtype=float)
    return standardised(strength) + weight * standardised(sequential)
