"""R2RecTrainer: RecBole's Trainer with R2Rec's training stages hooked into `fit`.

Evaluation is RecBole's own (through the protocol's fair evaluation); ValidRatio, the share of
generated answers that name exactly one candidate, is added next to Hit@1.
"""
from __future__ import annotations

import json
from pathlib import Path

from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_r2rec.chains import InteractionGraph
from recbole_r2rec.config import ConfigError
from recbole_r2rec.stages import build_traces, load_finished_stage, run_rl, run_sft

KNOWN_STAGES = ("sft", "rl")


def parse_stages(value) -> list:
    """`none`, `sft`, `sft,rl`, or a YAML list, as an ordered list of stage names."""
    if value in (None, "", "none", []):
        return []
    names = value if isinstance(value, (list, tuple)) else str(value).replace(" ", "").split(",")
    names = [n for n in names if n and n != "none"]
    unknown = [n for n in names if n not in KNOWN_STAGES]
    if unknown:
        raise ConfigError(f"unknown stage(s) {unknown}: stages are a comma list of {list(KNOWN_STAGES)} or 'none'")
    return names


def _adapter_state(llm) -> dict:
    """A copy of the active LoRA adapter's weights (to restore the SFT model if RL does not help)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(llm).items()}


class R2RecTrainer(Trainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.stages = parse_stages(config["stages"])

    def _build_optimizer(self, **kwargs):
        """None: the stages train with trl's own optimizers (and `llm_path: none` has no parameters)."""
        return None

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        """Run the configured stages in order, each followed by validation through RecBole's evaluator.
        After RL, the model kept is the better of SFT and SFT+RL on validation (`stage_results`)."""
        graph = None
        if self.stages or self.config["export_traces"]:
            graph = InteractionGraph.from_training(train_data._dataset, getattr(train_data, "seen_items", None))
        if self.config["export_traces"]:
            self.export_traces(build_traces(self.model, train_data._dataset, graph, self.config))
        if not self.stages:
            self.logger.info(set_color("R2Rec: no training stage (zero-shot backbone)", "green"))
            if not self.config["eval_valid_untrained"]:
                return None, {}
            result = self.evaluate(valid_data, show_progress=show_progress)
            return result.get(self.valid_metric), result
        self.stage_results = {}
        result = {}
        for stage in self.stages:
            if stage == "sft":
                run_sft(self.model, train_data._dataset, graph, self.config)
            else:
                before = self.stage_results.get("sft")
                if before is None:  # --stages=rl: validate the saved SFT model first, for the selection
                    if not load_finished_stage(self.model, self.config, "sft"):
                        raise ConfigError("--stages=rl starts from a finished SFT stage, and none was found under "
                                          f"{self.config['checkpoint_dir']}: run --stages=sft,rl")
                    before = self._validate("sft", valid_data, show_progress)
                sft_adapter = _adapter_state(self.model.llm)
                run_rl(self.model, train_data._dataset, graph, self.config)
            result = self._validate(stage, valid_data, show_progress)
            if stage == "rl":
                if result.get(self.valid_metric, 0) < before.get(self.valid_metric, 0):
                    from peft import set_peft_model_state_dict

                    set_peft_model_state_dict(self.model.llm, sft_adapter)
                    result = before
                    self.stage_results["selected"] = "sft"
                else:
                    self.stage_results["selected"] = "rl"
                self.logger.info(set_color("selected on validation", "green") + f": {self.stage_results['selected']} "
                                 f"({self.valid_metric} sft {before.get(self.valid_metric)} vs rl "
                                 f"{self.stage_results['rl'].get(self.valid_metric)})")
        return result.get(self.valid_metric), result

    def _validate(self, stage: str, valid_data, show_progress) -> dict:
        result = self.evaluate(valid_data, show_progress=show_progress)
        self.stage_results[stage] = result
        self.logger.info(set_color(f"valid after {stage}", "blue") + f": {result}")
        return result

    def export_traces(self, traces) -> None:
        """--export_traces=PATH: the SFT traces as JSONL, for people to read what the model is taught."""
        path = Path(self.config["export_traces"])
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as f:
            for trace in traces:
                f.write(json.dumps(trace.to_json()) + "\n")
        self.logger.info(f"{len(traces)} traces written to {path}")

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        # The stages keep the selected weights in memory; there is no RecBole checkpoint to reload.
        self.model.begin_evaluation()
        result = super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)
        answers = self.model.answers
        if result is not None and answers and (self.model.generate_thoughts or self.model.constrained_answer):
            result["valid_ratio"] = sum(a["answer_item"] is not None for a in answers) / len(answers)
        return result
