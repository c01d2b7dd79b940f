"""Shared fixtures: a small synthetic atomic dataset and a tiny LLM, both built in the test."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

import recbole_r2rec  # noqa: E402,F401  (applies the compatibility fixes)

WORDS = ("red blue green black white star moon sun river stone fire ice wind night day song "
         "story war love city road dream game king queen").split()


def write_tiny_dataset(root: Path, name: str = "tiny", users: int = 40, items: int = 60, seed: int = 0,
                       with_titles: bool = True) -> Path:
    """Atomic files for `name` under root/name: each user walks a noisy cycle through the items, so
    sequence models can learn something; titles are two words of WORDS."""
    rng = np.random.default_rng(seed)
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    rows = ["user_id:token\titem_id:token\ttimestamp:float"]
    for u in range(1, users + 1):
        start, t = int(rng.integers(1, items + 1)), 1_000_000
        for step in range(int(rng.integers(8, 16))):
            item = (start + step * 3 + int(rng.integers(0, 2))) % items + 1
            t += int(rng.integers(1, 100))
            rows.append(f"u{u}\ti{item}\t{t}")
    (folder / f"{name}.inter").write_text("\n".join(rows) + "\n")
    if with_titles:
        lines = ["item_id:token\ttitle:token_seq\tgenre:token_seq"]
        for i in range(1, items + 1):
            a, b = WORDS[i % len(WORDS)], WORDS[(i * 7) % len(WORDS)]
            lines.append(f"i{i}\t{a} {b} {i}\t{WORDS[i % 5]}")
        (folder / f"{name}.item").write_text("\n".join(lines) + "\n")
    return root


TINY_OVERRIDES = {
    "load_col": {"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id", "title", "genre"]},
    "item_text_fields": ["title", "genre"],
    "user_inter_num_interval": "[5,inf)",
    "state": "WARNING",
    "show_progress": False,
}


@pytest.fixture(scope="session")
def tiny_data_path(tmp_path_factory) -> str:
    return str(write_tiny_dataset(tmp_path_factory.mktemp("data")))


@pytest.fixture(scope="session")
def tiny_llm_path(tmp_path_factory) -> str:
    from tiny_llm import build_tiny_llm

    words = WORDS + "the user chose these items oldest first candidates think answer".split()
    return str(build_tiny_llm(tmp_path_factory.mktemp("llm"), words))


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    """RecBole writes log/, log_tensorboard/ and saved/ into the working directory: keep them out."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


def tiny(**extra) -> dict:
    return {**TINY_OVERRIDES, **extra}


def run_tiny_rows(models, data_path: str, folder) -> dict:
    """`models` trained (3 epochs) and evaluated on the tiny dataset under the shared protocol, as the runner
    saves them: {model: result}, checkpoints and result files in `folder` (also the working directory)."""
    import os

    from recbole_r2rec.runner import run

    os.chdir(folder)
    return {model: run(model, "tiny", overrides=tiny(data_path=data_path, epochs=3, checkpoint_dir=str(folder)),
                       result_file=folder / f"{model}.json") for model in models}
