"""Configuration layered like RecBole's, lowest to highest priority:

    properties/overall.yaml  <  properties/dataset/<dataset>.yaml  <  properties/model/<Model>.yaml
    <  properties/model/<Model>/<dataset>.yaml  <  --config_files (in the order given)  <  --key=value overrides

`properties/model/<Model>/<dataset>.yaml` holds a model's settings for one dataset (chosen on that
dataset's validation users), which the model's defaults would otherwise override.

RecBole's own internal defaults sit below all of these. `sys.argv` is never read here: the runner
parses its flags and passes the overrides explicitly (see `compat.isolated_config_construction`).
"""
from __future__ import annotations

from pathlib import Path

import yaml
from recbole.config import Config

from recbole_r2rec.compat import isolated_config_construction
from recbole_r2rec.registry import get_model

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PROPERTIES = PROJECT_ROOT / "properties"
BUNDLED_DATASETS = ("ml-100k",)  # RecBole ships these inside its package


def is_count(value) -> bool:
    """An integer setting, not a bool (`True` is an int to Python, and YAML or `--key=true` gives one)."""
    return isinstance(value, int) and not isinstance(value, bool)


class ConfigError(ValueError):
    """A configuration file or value that cannot be used; the message says which and why."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's atomic files are not on disk (nothing is ever downloaded)."""


def parse_value(text: str):
    """A command-line value as YAML (`3`, `1e-3`, `[1,5]`, `{valid: uni19}`, `~`), else the string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):  # YAML 1.1 reads `1e-3` as a string
        try:
            return float(value)
        except ValueError:
            pass
    return value


def read_yaml(path) -> dict:
    """A YAML mapping, or a ConfigError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"malformed YAML in {path}: {err}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of key: value, not {type(data).__name__}")
    return data


def layered_files(model: str, dataset: str, config_files=()) -> list:
    """The YAML files of one run, lowest priority first, each checked to parse. Files without a key (only
    comments, e.g. properties/model/Pop.yaml) are left out: RecBole's Config iterates what the YAML loads
    and fails on the None of an empty file."""
    files = [PROPERTIES / "overall.yaml"]
    for optional in (PROPERTIES / "dataset" / f"{dataset}.yaml", PROPERTIES / "model" / f"{model}.yaml",
                     PROPERTIES / "model" / model / f"{dataset}.yaml"):
        if optional.is_file():
            files.append(optional)
    files += [Path(f) for f in config_files or ()]
    return [str(f) for f in files if read_yaml(f)]


def _resolve_data_path(config) -> None:
    """A relative `data_path` that does not exist from the working directory is read relative to the
    project root (the shipped dataset YAMLs point at ../shared/datasets from there)."""
    if config["dataset"] in BUNDLED_DATASETS:
        return
    path = Path(config["data_path"])
    if not path.is_absolute() and not path.exists() and (PROJECT_ROOT / path).exists():
        config["data_path"] = str(PROJECT_ROOT / path)


def build_config(model: str, dataset: str, config_files=(), overrides=None) -> Config:
    """The resolved RecBole `Config` of one run."""
    model_class = get_model(model)
    files = layered_files(model, dataset, config_files)
    with isolated_config_construction():
        try:
            config = Config(model=model_class, dataset=dataset, config_file_list=files,
                            config_dict=dict(overrides or {}))
        except (TypeError, KeyError, AttributeError) as err:
            raise ConfigError(f"invalid configuration for {model} on {dataset}: {err!r}") from None
    _resolve_data_path(config)
    return config


def check_dataset_on_disk(config) -> None:
    """Fail fast, naming the folder looked in, instead of RecBole's download attempt."""
    folder = Path(config["data_path"])
    name = config["dataset"]
    inter = folder / f"{name}.inter"
    if not inter.is_file():
        raise DatasetNotFoundError(
            f"Dataset '{name}' not found: looked for {inter}. Put RecBole atomic files "
            f"({name}.inter, and {name}.item for item text) in {folder}, or pass "
            f"--data_path=DIR where DIR/{name}/ holds them. Nothing is downloaded."
        )


def jsonable(value):
    """Config values as plain JSON types (enums, devices, numpy scalars become strings/floats)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    return str(value)


def config_as_dict(config) -> dict:
    return jsonable(dict(config.final_config_dict))

