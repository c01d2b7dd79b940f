"""R2Rec's training stages, run from `R2RecTrainer.fit`.

SFT: chains from the training graph become interaction-of-thought traces (levels 0/1/2), and trl's
`SFTTrainer` fine-tunes a LoRA adapter on them, the loss on thoughts and answer only (prompt-completion
data). Checkpoints hold the adapter; an interrupted stage resumes from its last checkpoint; a finished
stage (its `final/` adapter exists) is loaded, not redone.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from recbole_r2rec import prompts
from recbole_r2rec.chains import Chain, ChainSampler, InteractionGraph
from recbole_r2rec.protocol import candidate_order, draw_negatives
from recbole_r2rec.thoughts import LEVELS, TRACE_FORMAT, build_trace, well_formed

logger = logging.getLogger(__name__)


def stage_dir(config, stage: str) -> Path:
    return Path(config["checkpoint_dir"]) / f"R2Rec-{config['dataset']}-seed{config['seed']}" / stage


def training_rows(train_dataset, per_user: int):
    """The `per_user` most recent training examples (rows) of every user."""
    users = train_dataset.inter_feat[train_dataset.uid_field].numpy()
    rows_of: dict = {}
    for row, u in enumerate(users.tolist()):
        rows_of.setdefault(u, []).append(row)
    return [r for rows in rows_of.values() for r in rows[-per_user:]]


def uniform_item_probs(train_dataset) -> np.ndarray:
    probs = np.ones(train_dataset.item_num)
    probs[0] = 0
    return probs / probs.sum()


def training_candidates(config, graph: InteractionGraph, probs, user: int, target: int, k: int) -> list:
    """Candidates of training prompt k: the target + `sft_negatives` items the user never interacted
    with (in any split), in a seeded order that does not depend on where the target is."""
    rng = np.random.default_rng([int(config["seed"]), user, target, k])
    seen = set(graph.items_of(user).tolist()) | graph.held_out.get(user, set()) | {target}
    negatives = draw_negatives(rng, seen, config["sft_negatives"], probs)
    return [int(i) for i in candidate_order(config["seed"], user * 1_000_003 + k, [target, *negatives])]


def evidence_chain(model, graph: InteractionGraph, chain: Chain, shown, support: list, strength) -> tuple:
    """With `chain_evidence`, a target the prompt's evidence lists is reasoned through that listed
    chain (i0 = its history item, u1 = one of its users), so the thoughts cite what the prompt shows;
    returns (chain, its support count). Otherwise the sampled chain, 0."""
    if not model.chain_evidence:
        return chain, 0
    ranked = prompts.strongest(list(strength), model.evidence_items, [n for n, _ in support])
    k = shown.index(chain.target)
    if k not in ranked:
        return chain, 0
    n, via = support[k]
    users = graph.cochoosers(via, chain.target, model.evidence_window)
    users = users[users != chain.user]
    return Chain(chain.user, chain.target, (via,), (int(users[0]),)), n


def build_traces(model, train_dataset, graph: InteractionGraph, config) -> list:
    """SFT traces for the training rows: chains -> traces at the configured levels, well-formed only."""
    sampler = ChainSampler(graph, config["seed"], config["chains_per_example"], config["min_shared_items"],
                           config["long_chains"])
    levels = [int(level) for level in config["sft_levels"]]
    if not levels or any(level not in LEVELS for level in levels):
        raise ValueError(f"sft_levels must be a non-empty list drawn from {LEVELS}")
    inter = train_dataset.inter_feat
    iid, seq, length = model.ITEM_ID, model.ITEM_SEQ, model.ITEM_SEQ_LEN
    probs = uniform_item_probs(train_dataset)
    traces, dropped, k = [], 0, 0
    for row in training_rows(train_dataset, config["sft_examples_per_user"]):
        user, target = int(inter[model.USER_ID][row]), int(inter[iid][row])
        history = prompts.history_ids(inter[seq][row].numpy(), int(inter[length][row]), model.history_len)
        for chain in sampler.sample(user, history, target):
            shown = training_candidates(config, graph, probs, user, target, k)
            evidence = model.candidate_evidence(user, history, shown) if model.chain_evidence else (None, None)
            chain, users = evidence_chain(model, graph, chain, shown, *evidence)
            trace = build_trace(chain, levels[k % len(levels)], history, shown, model.titles.__getitem__,
                                model.describe, model.candidate_text,
                                model.grounding(user, history, shown, evidence), users, model.ordered_evidence)
            k += 1
            if well_formed(trace, [model.titles[i] for i in shown]):
                traces.append(trace)
            else:
                dropped += 1
    logger.info(f"SFT traces: {len(traces)} kept, {dropped} malformed dropped")
    cap = config["sft_max_traces"]
    if cap and len(traces) > cap:
        keep = np.random.default_rng([int(config["seed"]), 17]).choice(len(traces), size=int(cap), replace=False)
        traces = [traces[i] for i in sorted(keep)]
        logger.info(f"SFT traces: a seeded sample of {cap} (sft_max_traces)")
    return traces


def sft_dataset(model, traces):
    """Prompt-completion rows in the exact text the model sees at inference (its chat template)."""
    from datasets import Dataset

    eos = model.tokenizer.eos_token or ""
    return Dataset.from_list([
        {"prompt": prompts.chat_prompt(model.tokenizer, t.prompt), "completion": t.completion + eos}
        for t in traces
    ])


def _common_args(model, config, out: Path, prefix: str) -> dict:
    """TrainingArguments shared by the SFT and RL stages (`<prefix>_*` keys of R2Rec.yaml)."""
    import torch

    on_cpu = model.llm.device.type == "cpu"
    return dict(
        output_dir=str(out), num_train_epochs=config[f"{prefix}_epochs"],
        max_steps=config[f"{prefix}_max_steps"] or -1, per_device_train_batch_size=config[f"{prefix}_batch_size"],
        gradient_accumulation_steps=config[f"{prefix}_grad_accum"], learning_rate=config[f"{prefix}_learning_rate"],
        lr_scheduler_type="cosine", warmup_steps=config[f"{prefix}_warmup_steps"],
        logging_steps=config[f"{prefix}_logging_steps"], save_steps=config[f"{prefix}_save_steps"],
        save_total_limit=2, report_to=["tensorboard"], seed=config["seed"],
        bf16=next(model.llm.parameters()).dtype == torch.bfloat16 and not on_cpu, fp16=False, use_cpu=on_cpu,
        dataloader_num_workers=0, disable_tqdm=False,
        # trl turns checkpointing on by default; on a CPU with memory to spare it only costs time (~25%)
        gradient_checkpointing=config[f"{prefix}_gradient_checkpointing"],
    )


_STAGE_KEYS = ("llm_path", "history_len", "candidate_attributes", "item_text_fields", "chain_evidence",
               "evidence_items", "evidence_signal", "evidence_recency", "evidence_window", "evidence_unordered",
               "evidence_popularity", "evidence_neighbours", "evidence_decay", "evidence_regularised",
               "evidence_regularised_penalty", "evidence_regularised_recency", "chains_per_example",
               "min_shared_items", "long_chains", "max_new_tokens")
# Settings added after stages were first saved, with the behaviour those stages had: a saved stage
# without the key matches a run that sets it to this value.
_SETTINGS_BEFORE_THEY_EXISTED = {"evidence_signal": "max_cochoosers", "evidence_recency": 1.0, "evidence_window": 0,
                                 "evidence_unordered": 0.0, "evidence_popularity": 0.0, "evidence_neighbours": "none",
                                 "evidence_decay": 1.0, "evidence_regularised": 0.0,
                                 "evidence_regularised_penalty": 500.0, "evidence_regularised_recency": 0.7}


def stage_settings(config, stage: str) -> dict:
    """What a stage's result depends on: its own keys (`sft_*`, `rl_*`), LoRA, prompts and chains; an
    SFT+RL run also depends on the SFT settings."""
    prefixes = ("lora_", "sft_") + (("rl_",) if stage == "rl" else ())
    keys = sorted(k for k in config.final_config_dict if k.startswith(prefixes) or k in _STAGE_KEYS)
    settings = {k: config[k] if isinstance(config[k], (int, float, str, bool, type(None))) else str(config[k])
                for k in keys}
    return {**settings, "trace_format": TRACE_FORMAT}


def load_finished_stage(model, config, stage: str) -> bool:
    """A finished stage is loaded, not redone: its `final/` adapter replaces the current one. One made
    with other settings is refused (reusing it would silently report the wrong model)."""
    from recbole_r2rec.config import ConfigError

    final = stage_dir(config, stage) / "final"
    if not (final / "adapter_config.json").is_file():
        return False
    saved = final / "stage_settings.json"
    if saved.is_file():
        old, new = json.loads(saved.read_text()), stage_settings(config, stage)
        old = {**{k: v for k, v in _SETTINGS_BEFORE_THEY_EXISTED.items() if k in new}, **old}
        changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
        if changed:
            raise ConfigError(f"the finished {stage} stage in {final.parent} was trained with other settings "
                              f"({', '.join(f'{k}: {old.get(k)!r} -> {new.get(k)!r}' for k in changed)}); "
                              "use another --checkpoint_dir or remove that folder to retrain")
    logger.info(f"{stage.upper()} already finished: loading the adapter from {final}")
    load_adapter(model, final)
    return True


def load_adapter(model, path) -> None:
    """Put the LoRA adapter saved in `path` (a stage's `final/` or a trainer's `checkpoint-N/`) on the
    backbone for inference, replacing any adapter already there. A folder without an adapter is an error
    here, before peft would take the path for a hub id and try to download it."""
    from peft import PeftModel

    if not (Path(path) / "adapter_config.json").is_file():
        raise FileNotFoundError(f"no LoRA adapter (adapter_config.json) in {path}")
    if isinstance(model.llm, PeftModel):
        model.llm = model.llm.unload()  # drop the previous adapter, keep the base weights untouched
    model.llm = PeftModel.from_pretrained(model.llm, path, is_trainable=False)
    model.llm.eval()


def _train(trainer, model, out: Path, config):
    """Train (resuming from the last checkpoint if any), save the final adapter from one process; returns
    the trainer's `TrainOutput` (its metrics hold `train_runtime`)."""
    resume = any(out.glob("checkpoint-*"))
    output = trainer.train(resume_from_checkpoint=True if resume else None)
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(out / "final", selected_adapters=["default"])
        (out / "final" / "stage_settings.json").write_text(json.dumps(stage_settings(config, out.name), indent=1))
    model.llm = trainer.model
    model.llm.eval()
    return output


def run_sft(model, train_dataset, graph, config):
    """Fine-tune `model.llm` with a LoRA adapter on chain traces (trl SFTTrainer); resumable. Returns the
    trainer's `TrainOutput`, or None when a finished stage was loaded."""
    from trl import SFTConfig, SFTTrainer

    from recbole_r2rec.llm import add_lora

    if load_finished_stage(model, config, "sft"):
        return
    out = stage_dir(config, "sft")
    traces = build_traces(model, train_dataset, graph, config)
    if not traces:
        raise ValueError("no SFT trace could be built: no training example has a closing chain")
    model.llm = add_lora(model.llm, config["lora_r"], config["lora_alpha"], config["lora_dropout"])
    args = SFTConfig(**_common_args(model, config, out, "sft"), max_length=config["sft_max_length"],
                     completion_only_loss=True)
    trainer = SFTTrainer(model=model.llm, args=args, train_dataset=sft_dataset(model, traces),
                         processing_class=model.tokenizer)
    return _train(trainer, model, out, config)


def rl_dataset(model, train_dataset, graph, config):
    """Level-2 prompts (the inference prompt) of a seeded sample of training examples, with the
    columns the rewards read: `candidates` (titles in the order shown) and `target` (the true title)."""
    from datasets import Dataset

    inter = train_dataset.inter_feat
    rows = training_rows(train_dataset, 1)
    n = config["rl_prompts"]
    if n and n < len(rows):
        rows = sorted(np.random.default_rng([int(config["seed"]), 19]).choice(rows, size=int(n), replace=False))
    probs = uniform_item_probs(train_dataset)
    data = []
    for k, row in enumerate(rows):
        user, target = int(inter[model.USER_ID][row]), int(inter[model.ITEM_ID][row])
        history = prompts.history_ids(inter[model.ITEM_SEQ][row].numpy(), int(inter[model.ITEM_SEQ_LEN][row]),
                                      model.history_len)
        shown = training_candidates(config, graph, probs, user, target, 10_000_000 + k)
        data.append({"prompt": model.prompt_text(history, shown, user), "candidates": [model.titles[i] for i in shown],
                     "target": model.titles[target]})
    return Dataset.from_list(data)


def reward_functions(model, config) -> tuple:
    """(functions, weights) from `rl_reward_weights`; zero-weight rewards are not computed."""
    from recbole_r2rec.rewards import REWARDS, RankReward

    weights = dict(config["rl_reward_weights"])
    unknown = set(weights) - set(REWARDS) - {"rank"}
    if unknown:
        raise ValueError(f"unknown reward(s) {sorted(unknown)} in rl_reward_weights; known: "
                         f"{sorted(REWARDS) + ['rank']}")
    funcs, used = [], []
    for name, weight in weights.items():
        if float(weight) == 0:
            continue
        funcs.append(RankReward(model.score_texts) if name == "rank" else REWARDS[name])
        used.append(float(weight))
    if not funcs:
        raise ValueError("rl_reward_weights gives every reward weight 0: nothing to learn from")
    return funcs, used


def run_rl(model, train_dataset, graph, config):
    """GRPO (trl) from the SFT adapter: sampled completions of level-2 training prompts, rewarded by
    `rl_reward_weights`, KL to the SFT policy (`rl_beta`; trl keeps a frozen copy of the SFT adapter
    as the reference). Resumable; a finished stage is loaded. Returns the trainer's `TrainOutput`, or
    None when a finished stage was loaded."""
    from peft import PeftModel
    from trl import GRPOConfig, GRPOTrainer

    from recbole_r2rec.config import ConfigError

    if load_finished_stage(model, config, "rl"):
        return
    if not isinstance(model.llm, PeftModel) and not load_finished_stage(model, config, "sft"):
        raise ConfigError(f"the rl stage starts from the SFT adapter, and there is none under "
                          f"{stage_dir(config, 'sft')}: run --stages=sft,rl (or --stages=sft first)")
    for name, param in model.llm.named_parameters():
        param.requires_grad = "lora_" in name
    out = stage_dir(config, "rl")
    funcs, weights = reward_functions(model, config)
    args = GRPOConfig(
        **_common_args(model, config, out, "rl"), num_generations=config["rl_num_generations"],
        max_completion_length=config["max_new_tokens"], temperature=config["rl_temperature"],
        beta=config["rl_beta"], reward_weights=weights, use_vllm=config["rl_use_vllm"],
    )
    trainer = GRPOTrainer(model=model.llm, reward_funcs=funcs, args=args,
                          train_dataset=rl_dataset(model, train_dataset, graph, config),
                          processing_class=model.tokenizer)
    output = _train(trainer, model, out, config)
    if "ref" in getattr(model.llm, "peft_config", {}):
        model.llm.delete_adapter("ref")
    return output
