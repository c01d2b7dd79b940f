"""ScoreBlend: classical models blended by their scores, as a leaderboard row of its own.

Why: R2Rec's hybrid rows add a sequential model's scores to the chains (`sequential_weight`). A gain of such
a blend over every single classical model may be an ensemble's gain, not the chains'. ScoreBlend is that
ensemble without R2Rec: each component's scores standardised over the user's candidates, times its weight,
summed (the same arithmetic as `sequential.fused_strength`), under the same protocol, candidates and paired
tests as every other row. Its weights are chosen on validation like any baseline's (bench/baseline_grid.py).

Components, in `blend_models`:
- a sequential model (SASRec, GRU4Rec, ...): its RecBole checkpoint, trained under the shared protocol
  (`blend_checkpoints`, default <checkpoint_dir>/{model}-{dataset}-seed{seed}.pth, where the runner and
  the leaderboard's cells write them), never retrained here;
- an item-item model that RecBole computes in full when it is built (`ITEM_ITEM_MODELS`: ItemKNN, EASE),
  built on this split's training interactions with the settings its own row uses on the dataset
  (properties/model/<Model>.yaml and <Model>/<dataset>.yaml). It scores a candidate from the user's
  training items *and the history the sequential models read* (at test time that includes the validation
  item). RecBole's general models see the training items only, so the ItemKNN row never uses a user's most
  recent interaction at test time while SASRec, GRU4Rec and R2Rec's chains do; a one-model ScoreBlend
  (leaderboard row ItemKNN-history) is ItemKNN given what they are given;
- a graph model read from its checkpoint and folded in (`FOLD_IN_MODELS`: LightGCN): its items as trained,
  each user propagated again from the same profile (training items + that history). Row LightGCN-history.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from recbole.model.abstract_recommender import SequentialRecommender
from recbole.trainer import Trainer
from recbole.utils import InputType, ModelType

from recbole_r2rec.chains import interaction_matrix, standardised, training_interactions
from recbole_r2rec.config import ConfigError, build_config
from recbole_r2rec.protocol import require_candidate_lists
from recbole_r2rec.registry import get_model
from recbole_r2rec.runner import CHECKPOINT_NAME
from recbole_r2rec.sequential import SequentialEncoder, encoder_path, trained_model

# General models whose scores RecBole computes entirely in __init__, as training profile x an item-item
# matrix (the attribute named here); building them is training them (Pop, by contrast, counts in
# calculate_loss, and BPR or LightGCN learn user embeddings of training profiles only).
ITEM_ITEM_MODELS = {"ItemKNN": "w", "EASE": "item_similarity"}
# General models read from their checkpoints whose user representation is a function of the user's items,
# so it can be computed again from another profile without training (BPR's user embedding is a free parameter).
FOLD_IN_MODELS = ("LightGCN",)


class TrainingMatrix:
    """What a general RecBole model reads from its dataset at construction (`num`, `inter_matrix`): the
    training interactions of this (sequential) split, users x items, binary."""

    def __init__(self, train_dataset):
        user_items, _ = training_interactions(train_dataset)
        self.matrix = interaction_matrix(user_items, train_dataset.user_num, train_dataset.item_num).astype(np.float32)
        self._num = {train_dataset.uid_field: self.matrix.shape[0], train_dataset.iid_field: self.matrix.shape[1]}

    def num(self, field: str) -> int:
        return self._num[field]

    def inter_matrix(self, form: str = "coo", value_field=None):
        if value_field is not None:
            raise ConfigError("ScoreBlend builds its item-item components on binary interactions only")
        return self.matrix.asformat(form)


class LightGCNFoldIn:
    """A trained LightGCN (RecBole's, from its checkpoint) whose users are propagated again from a profile.

    LightGCN's user embedding is the mean over layers k = 0..K of e_u^(k), with e_u^(k+1) = sum over the
    user's items i of e_i^(k) / sqrt(d_u d_i). The items' layers are propagated from the trained embeddings
    on this split's training graph; each user's are recomputed from the profile given (d_u: its size). With
    the user's training items as the profile this is LightGCN's own forward pass (tests pin it), so only what
    the profile adds changes a score. (Where RecBole's sequential split keeps more training interactions than
    the general one LightGCN was trained on, as for steam users with 3 interactions, the graph has those too,
    as ItemKNN-history's matrix does.)
    """

    def __init__(self, path: Path, config, train_matrix: TrainingMatrix, key: str):
        model, _ = trained_model(path, config, train_matrix, "LightGCN", key, ModelType.GENERAL, exact=True)
        with torch.no_grad():
            layers = [model.get_ego_embeddings()]
            for _ in range(model.n_layers):
                layers.append(torch.sparse.mm(model.norm_adj_matrix, layers[-1]))
        layers = [layer.cpu().numpy().astype(np.float64) for layer in layers]
        n_users = model.n_users
        self.user_ego = layers[0][:n_users]
        item_layers = [layer[n_users:] for layer in layers]
        self.items = np.mean(item_layers, axis=0)
        degree = np.maximum(np.asarray(train_matrix.matrix.sum(axis=0)).ravel(), 1) + 1e-7  # as RecBole's
        self.scaled_item_layers = [layer / np.sqrt(degree)[:, None] for layer in item_layers[:-1]]

    def scores(self, users: np.ndarray, items: np.ndarray, profiles: sp.csr_matrix) -> np.ndarray:
        user_degree = np.asarray(profiles.sum(axis=1)).ravel() + 1e-7
        layers = [self.user_ego[users]] + [(profiles @ layer) / np.sqrt(user_degree)[:, None]
                                           for layer in self.scaled_item_layers]
        return (np.mean(layers, axis=0) * self.items[items]).sum(axis=1)


def check_blend_config(config) -> None:
    """Refuse, before any data is loaded, a blend that cannot be built."""
    require_candidate_lists(config, "ScoreBlend", "standardises each component's scores over a user's candidates")
    models, weights = config["blend_models"], config["blend_weights"]
    if not isinstance(models, (list, tuple)) or not models:
        raise ConfigError(f"blend_models must be a non-empty list of model names, not {models!r}")
    if not isinstance(weights, (list, tuple)) or len(weights) != len(models):
        raise ConfigError(f"blend_weights must list one weight per model of blend_models {list(models)}, "
                          f"not {weights!r}")
    if any(not isinstance(w, (int, float)) or isinstance(w, bool) or w < 0 for w in weights) or not any(weights):
        raise ConfigError(f"blend_weights must be numbers >= 0, not all 0, not {list(weights)}")
    for name in models:
        model_class = get_model(name)  # an unknown name fails here with the list of models
        if (name not in ITEM_ITEM_MODELS and name not in FOLD_IN_MODELS
                and not issubclass(model_class, SequentialRecommender)):
            raise ConfigError(f"ScoreBlend cannot blend {name}: a component is a sequential model (read from its "
                              f"checkpoint), one of the item-item models built from the training matrix "
                              f"{list(ITEM_ITEM_MODELS)} or a general model folded in from its checkpoint "
                              f"{list(FOLD_IN_MODELS)}")


class ScoreBlend(SequentialRecommender):
    """Scores = sum over components of weight x the component's scores standardised over each user's
    candidates. Nothing to train: the components come trained (checkpoints) or are computed at build."""

    input_type = InputType.POINTWISE

    check_config = staticmethod(check_blend_config)

    def __init__(self, config, dataset):
        super().__init__(config, dataset)
        check_blend_config(config)
        self.weights = [float(w) for w in config["blend_weights"]]
        checkpoints = config["blend_checkpoints"] or str(Path(config["checkpoint_dir"]) / CHECKPOINT_NAME)
        # each: an item x item matrix (scipy CSC: columns are read), a LightGCNFoldIn or a SequentialEncoder
        self.components = []
        # users x items training matrix (binary), for the components that score from a profile
        profiled = any(name in ITEM_ITEM_MODELS or name in FOLD_IN_MODELS for name in config["blend_models"])
        self.train_matrix = TrainingMatrix(dataset) if profiled else None
        for name in config["blend_models"]:
            if name in ITEM_ITEM_MODELS:
                own = build_config(name, config["dataset"], overrides={"seed": config["seed"]})
                if name == "ItemKNN" and own["knn_method"] != "item":
                    raise ConfigError("ScoreBlend's ItemKNN scores item to item: its knn_method must be 'item'")
                own["device"] = torch.device("cpu")
                built = get_model(name)(own, self.train_matrix)
                self.components.append(sp.csc_matrix(getattr(built, ITEM_ITEM_MODELS[name])))
                continue
            path = encoder_path(checkpoints, config["dataset"], config["seed"], model=name)
            self.components.append(
                LightGCNFoldIn(path, config, self.train_matrix, key="blend_checkpoints") if name in FOLD_IN_MODELS
                else SequentialEncoder(path, config, dataset, model=name, key="blend_checkpoints", exact=True))
        self.fake_loss = torch.nn.Parameter(torch.zeros(1))  # RecBole's trainer wants a parameter

    def calculate_loss(self, interaction):
        raise NotImplementedError("ScoreBlend has nothing to train: its components are trained on their own")

    def full_sort_predict(self, interaction):  # refused at configuration (check_blend_config)
        raise NotImplementedError("ScoreBlend ranks candidate lists only (eval_args.mode uni19)")

    def profiles(self, interaction) -> sp.csr_matrix:
        """Rows x items, binary: each row's user's training items and the history the row carries."""
        seqs = interaction[self.ITEM_SEQ].cpu().numpy()
        lens = interaction[self.ITEM_SEQ_LEN].cpu().numpy()
        rows = np.repeat(np.arange(len(seqs)), lens)
        cols = np.concatenate([seq[:n] for seq, n in zip(seqs, lens)]) if len(seqs) else np.zeros(0, int)
        history = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)),
                                shape=(len(seqs), self.train_matrix.matrix.shape[1]))
        trained = self.train_matrix.matrix[interaction[self.USER_ID].cpu().numpy()]
        return ((trained + history) > 0).astype(np.float32)

    def component_scores(self, component, interaction, profiles) -> np.ndarray:
        if isinstance(component, SequentialEncoder):
            return np.asarray(component.predict(interaction), dtype=float)
        items = interaction[self.ITEM_ID].cpu().numpy()
        if isinstance(component, LightGCNFoldIn):
            return component.scores(interaction[self.USER_ID].cpu().numpy(), items, profiles)
        return np.asarray(profiles.multiply(component[:, items].T).sum(axis=1), dtype=float).ravel()

    @torch.no_grad()
    def predict(self, interaction):
        """Scores of RecBole's flat (user, candidate) rows, in row order: each component's scores are
        standardised over the rows of one user."""
        device = interaction[self.USER_ID].device
        interaction = interaction.to("cpu")
        profiles = self.profiles(interaction) if self.train_matrix is not None else None
        _, user_of_row = np.unique(interaction[self.USER_ID].numpy(), return_inverse=True)
        per_user = np.split(np.argsort(user_of_row, kind="stable"), np.cumsum(np.bincount(user_of_row))[:-1])
        total = np.zeros(len(user_of_row))
        for component, weight in zip(self.components, self.weights):
            if weight:
                scores = self.component_scores(component, interaction, profiles)
                for rows in per_user:
                    total[rows] += weight * standardised(scores[rows])
        return torch.as_tensor(total, dtype=torch.float32, device=device)


class ScoreBlendTrainer(Trainer):
    """RecBole's Trainer with nothing to fit: `fit` validates once, `evaluate` uses the model as built
    (there is no checkpoint of ScoreBlend to reload; its components' checkpoints are read at build)."""

    def _build_optimizer(self, **kwargs):
        return None

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        result = self.evaluate(valid_data, show_progress=show_progress)
        return result.get(self.valid_metric), result

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        return super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)
