"""R2Rec's training stages, run from `R2RecTrainer.fit`.

SFT: chains from the training graph become interaction-of-thought traces (levels 0/1/2), and trl's
`SFTTrainer` fine-tunes a LoRA adapter on them, the loss on thoughts and answer only (prompt-completion
data). Checkpoints hold the adapter; an interrupted stage resumes from its last checkpoint; a finished
stage (its `final/` adapter exists) is loaded, not redone.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from recbole_r2rec import prompts
from recbole_r2rec.chains import ChainSampler, InteractionGraph
from recbole_r2rec.protocol import candidate_order, draw_negatives
from recbole_r2rec.thoughts import LEVELS, build_trace, well_formed

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


def build_traces(model, train_dataset, graph: InteractionGraph, config) -> list:
    """SFT traces for the training rows: chains -> traces at the configured levels, well-formed only.
    Candidates: the target + 19 items the user never interacted with (in any split), seeded order."""
    sampler = ChainSampler(graph, config["seed"], config["chains_per_example"], config["min_shared_items"],
                           config["long_chains"])
    levels = [int(level) for level in config["sft_levels"]]
    if not levels or any(level not in LEVELS for level in levels):
        raise ValueError(f"sft_levels must be a non-empty list drawn from {LEVELS}")
    inter = train_dataset.inter_feat
    iid, seq, length = model.ITEM_ID, model.ITEM_SEQ, model.ITEM_SEQ_LEN
    probs = np.ones(train_dataset.item_num)
    probs[0] = 0
    probs /= probs.sum()
    n_neg = config["sft_negatives"]
    traces, dropped, k = [], 0, 0
    for row in training_rows(train_dataset, config["sft_examples_per_user"]):
        user, target = int(inter[model.USER_ID][row]), int(inter[iid][row])
        history = prompts.history_ids(inter[seq][row].numpy(), int(inter[length][row]), model.history_len)
        for chain in sampler.sample(user, history, target):
            rng = np.random.default_rng([int(config["seed"]), user, target, k])
            seen = set(graph.items_of(user).tolist()) | graph.held_out.get(user, set()) | {target}
            negatives = draw_negatives(rng, seen, n_neg, probs)
            shown = [int(i) for i in candidate_order(config["seed"], user * 1_000_003 + k, [target, *negatives])]
            trace = build_trace(chain, levels[k % len(levels)], history, shown, model.titles.__getitem__,
                                model.describe, model.candidate_text)
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


def run_sft(model, train_dataset, graph, config) -> None:
    """Fine-tune `model.llm` with a LoRA adapter on chain traces (trl SFTTrainer); resumable."""
    import torch
    from peft import PeftModel
    from trl import SFTConfig, SFTTrainer

    from recbole_r2rec.llm import add_lora

    out = stage_dir(config, "sft")
    final = out / "final"
    if (final / "adapter_config.json").is_file():
        logger.info(f"SFT already finished: loading the adapter from {final}")
        model.llm = PeftModel.from_pretrained(model.llm, final, is_trainable=False)
        model.llm.eval()
        return
    traces = build_traces(model, train_dataset, graph, config)
    if not traces:
        raise ValueError("no SFT trace could be built: no training example has a closing chain")
    model.llm = add_lora(model.llm, config["lora_r"], config["lora_alpha"], config["lora_dropout"])
    on_cpu = model.llm.device.type == "cpu"
    args = SFTConfig(
        output_dir=str(out), num_train_epochs=config["sft_epochs"], max_steps=config["sft_max_steps"] or -1,
        per_device_train_batch_size=config["sft_batch_size"],
        gradient_accumulation_steps=config["sft_grad_accum"], learning_rate=config["sft_learning_rate"],
        lr_scheduler_type="cosine", warmup_steps=config["sft_warmup_steps"], max_length=config["sft_max_length"],
        logging_steps=config["sft_logging_steps"], save_steps=config["sft_save_steps"], save_total_limit=2,
        report_to=["tensorboard"], seed=config["seed"],
        bf16=next(model.llm.parameters()).dtype == torch.bfloat16 and not on_cpu, fp16=False, use_cpu=on_cpu,
        completion_only_loss=True, dataloader_num_workers=0, disable_tqdm=False,
    )
    trainer = SFTTrainer(model=model.llm, args=args, train_dataset=sft_dataset(model, traces),
                         processing_class=model.tokenizer)
    resume = any(out.glob("checkpoint-*"))
    trainer.train(resume_from_checkpoint=True if resume else None)
    if trainer.is_world_process_zero():
        trainer.model.save_pretrained(final)
    model.llm = trainer.model
    model.llm.eval()
