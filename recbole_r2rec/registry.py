"""Model and trainer lookup: this plugin's models first, then RecBole's own.

Every trainer handed out is wrapped with the shared protocol's fair evaluation
(`protocol.FairEvaluationMixin`), so classical and LLM models are scored the same way.
"""
from __future__ import annotations

import functools
import importlib

from recbole.utils import ModelType
from recbole.utils import get_model as recbole_get_model
from recbole.utils import get_trainer as recbole_get_trainer

from recbole_r2rec.protocol import FairEvaluationMixin

_RECBOLE_MODEL_PACKAGES = (
    "general_recommender",
    "sequential_recommender",
    "context_aware_recommender",
    "knowledge_aware_recommender",
)


class UnknownModelError(ValueError):
    """Raised for a model name that neither this plugin nor RecBole provides."""


def plugin_models() -> dict:
    """Models this plugin registers (imported lazily: the LLM stack is heavy)."""
    from recbole_r2rec.blend import ScoreBlend
    from recbole_r2rec.model import R2Rec

    return {"R2Rec": R2Rec, "ScoreBlend": ScoreBlend}


def plugin_trainers() -> dict:
    from recbole_r2rec.blend import ScoreBlendTrainer
    from recbole_r2rec.trainer import R2RecTrainer

    return {"R2Rec": R2RecTrainer, "ScoreBlend": ScoreBlendTrainer}


@functools.lru_cache(maxsize=1)
def recbole_model_names() -> tuple:
    """Names of RecBole's own model classes (those whose package imports here)."""
    names = set()
    for package in _RECBOLE_MODEL_PACKAGES:
        try:
            module = importlib.import_module(f"recbole.model.{package}")
        except ImportError:  # an optional dependency of one package is missing
            continue
        names.update(n for n in dir(module) if n[:1].isupper())
    return tuple(sorted(names))


def available_models() -> list:
    return sorted(set(plugin_models()) | set(recbole_model_names()))


def get_model(name: str):
    """The model class called `name`: plugin first, then RecBole."""
    plugins = plugin_models()
    if name in plugins:
        return plugins[name]
    try:
        return recbole_get_model(name)
    except (ValueError, ImportError, AttributeError):
        raise UnknownModelError(
            f"Unknown model '{name}'. Available models: {', '.join(available_models())}."
        ) from None


@functools.lru_cache(maxsize=None)
def _fair(trainer_class):
    return type(trainer_class.__name__, (FairEvaluationMixin, trainer_class), {})


def get_trainer(model_type: ModelType, model_name: str):
    """The trainer class for a model, plugin first, wrapped with the protocol's fair evaluation."""
    trainer_class = plugin_trainers().get(model_name) or recbole_get_trainer(model_type, model_name)
    return _fair(trainer_class)
