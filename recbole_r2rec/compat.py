"""Every workaround for RecBole 1.2.1's clashes with today's libraries, in one place.

`apply()` runs once when `recbole_r2rec` is imported. Each fix is named after the quirk it mends
(see ../shared/docs/stack.md) and has its own test in tests/test_compat.py.
"""
from __future__ import annotations

import contextlib
import os
import sys
import types

import numpy as np

_APPLIED = False


def restore_numpy_aliases() -> None:
    """numpy 2 removed `np.float_`, `np.complex_`, `np.bool8`, `np.unicode_`; RecBole's Config and
    ray 2.6.3 still use them (and RecBole re-creates `np.float`/`np.int` from them)."""
    for alias, target in {
        "float_": np.float64,
        "complex_": np.complex128,
        "bool8": np.bool_,
        "unicode_": np.str_,
        "string_": np.bytes_,
    }.items():
        if alias not in np.__dict__:
            setattr(np, alias, target)


class _TrustedCheckpointTorch(types.ModuleType):
    """`torch` as RecBole's trainer sees it: identical, except that `torch.load` reads RecBole's own
    checkpoints (which pickle its `Config`) with `weights_only=False`, as torch < 2.6 did."""

    def __init__(self, torch_module):
        super().__init__("torch")
        self._torch = torch_module

    def __getattr__(self, name):
        return getattr(self._torch, name)

    def load(self, *args, **kwargs):
        kwargs.setdefault("weights_only", False)
        return self._torch.load(*args, **kwargs)


def trust_recbole_checkpoints() -> None:
    """torch >= 2.6 loads weights-only by default, so `Trainer.evaluate(load_best_model=True)` and
    `resume_checkpoint` fail on the checkpoints RecBole itself just wrote. Scoped to RecBole's trainer."""
    import torch
    import recbole.trainer.trainer as recbole_trainer

    if not isinstance(recbole_trainer.torch, _TrustedCheckpointTorch):
        recbole_trainer.torch = _TrustedCheckpointTorch(torch)


def load_recbole_checkpoint(path) -> dict:
    """A checkpoint RecBole wrote (it pickles its `Config`), on the CPU: torch >= 2.6 would refuse it
    weights-only, as in `trust_recbole_checkpoints`."""
    import torch

    return torch.load(path, map_location="cpu", weights_only=False)


@contextlib.contextmanager
def isolated_config_construction():
    """RecBole's `Config` reads every `--key=value` of `sys.argv` (so a wrapper's or pytest's flags leak
    into it) and overwrites `CUDA_VISIBLE_DEVICES` for the whole process from `gpu_id` (which breaks
    `accelerate launch`, where each process has its own device). Build a Config inside this block."""
    saved_argv = sys.argv
    saved_cuda = os.environ.get("CUDA_VISIBLE_DEVICES")
    sys.argv = sys.argv[:1]
    try:
        yield
    finally:
        sys.argv = saved_argv
        if saved_cuda is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved_cuda


def disable_import_time_anomaly_detection() -> None:
    """`recbole/model/sequential_recommender/sine.py` calls `torch.autograd.set_detect_anomaly(True)`
    at import, and importing any RecBole sequential model imports it: every backward pass of every model
    then records stack traces (SASRec on ml-100k here: 4.1 s a training step instead of 2.1). Import it now and
    switch anomaly detection back off."""
    import torch
    import recbole.model.sequential_recommender  # noqa: F401  (runs sine.py's module-level call)

    torch.autograd.set_detect_anomaly(False)


def restore_dok_private_update() -> None:
    """scipy >= 1.12 dropped `dok_matrix._update`, which RecBole's graph models (LightGCN, NGCF,
    SGL's NCL, GCMC, SpectralCF, KGIN, MCCLK) call to fill their adjacency matrix in one go:
    they fail with `AttributeError: 'dok_matrix' object has no attribute '_update'`. RecBole's keys
    are valid (row, col) pairs by construction, so the unchecked bulk update of old scipy is restored."""
    from scipy.sparse import dok_matrix

    if not hasattr(dok_matrix, "_update"):
        dok_matrix._update = lambda self, data: self._dict.update(data)


def bert4rec_batch_without_masked_items() -> None:
    """RecBole's BERT4Rec averages its loss over the masked positions (`masked_index > 0`, so a masked
    first position does not count either). A training batch with none (a small last batch of short
    sequences, e.g. lastfm at seed 2021) gives 0/0 = NaN, and RecBole's trainer stops the whole run
    with `Training loss is nan`. Such a batch now has loss 0: it teaches nothing, as it should."""
    from recbole.model.sequential_recommender.bert4rec import BERT4Rec

    original = BERT4Rec.calculate_loss
    if getattr(original, "_r2rec_fixed", False):
        return

    def calculate_loss(self, interaction):
        if not bool((interaction[self.MASK_INDEX] > 0).any()):
            return self.output_bias.sum() * 0.0
        return original(self, interaction)

    calculate_loss._r2rec_fixed = True
    BERT4Rec.calculate_loss = calculate_loss


def race_safe_ensure_dir() -> None:
    """RecBole's `ensure_dir` checks `os.path.exists` and then calls `os.makedirs`, so two runs started
    together (two leaderboard cells side by side) can both see no `./log` and the second dies with
    `FileExistsError: [Errno 17] File exists: './log'` before training. `exist_ok=True` closes the race.
    The modules that imported the function by name get the safe one too."""
    import importlib

    def ensure_dir(dir_path):
        os.makedirs(dir_path, exist_ok=True)

    for name in ("recbole.utils.utils", "recbole.utils", "recbole.utils.logger", "recbole.data.utils",
                 "recbole.trainer.trainer", "recbole.data.dataset.dataset"):
        module = importlib.import_module(name)
        if hasattr(module, "ensure_dir"):
            module.ensure_dir = ensure_dir


def quiet_known_warnings() -> None:
    """RecBole 1.2.1 triggers pandas 2.x and torch deprecation warnings on every run (chained
    `fillna(inplace=True)`, `torch.cuda.amp.GradScaler`); they are harmless with the pinned versions
    and drown the log. (pandas 3 would break that fillna for real: it is pinned to 2.x.)"""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"recbole\.")


def apply() -> None:
    """Apply the import-time fixes once (idempotent)."""
    global _APPLIED
    if _APPLIED:
        return
    restore_numpy_aliases()
    quiet_known_warnings()
    trust_recbole_checkpoints()
    restore_dok_private_update()
    disable_import_time_anomaly_detection()
    bert4rec_batch_without_masked_items()
    race_safe_ensure_dir()
    _APPLIED = True
