"""R2RecTrainer: RecBole's Trainer with R2Rec's training stages hooked into `fit`.

Evaluation is RecBole's own (through the protocol's fair evaluation); ValidRatio, the share of
generated answers that name exactly one candidate, is added next to Hit@1.
"""
from __future__ import annotations

from recbole.trainer import Trainer
from recbole.utils import set_color

from recbole_r2rec.config import ConfigError

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


class R2RecTrainer(Trainer):
    def __init__(self, config, model):
        super().__init__(config, model)
        self.stages = parse_stages(config["stages"])

    def fit(self, train_data, valid_data=None, verbose=True, saved=True, show_progress=False, callback_fn=None):
        if self.stages:
            raise ConfigError(f"training stages {self.stages} are not available yet; use --stages=none")
        self.logger.info(set_color("R2Rec: no training stage (zero-shot backbone)", "green"))
        if not self.config["eval_valid_untrained"]:
            return None, {}
        result = self.evaluate(valid_data, show_progress=show_progress)
        return result.get(self.valid_metric), result

    def evaluate(self, eval_data, load_best_model=True, model_file=None, show_progress=False):
        # The stages keep the selected weights in memory; there is no RecBole checkpoint to reload.
        self.model.answers = []
        result = super().evaluate(eval_data, load_best_model=False, show_progress=show_progress)
        answers = self.model.answers
        if result is not None and answers and (self.model.generate_thoughts or self.model.constrained_answer):
            result["valid_ratio"] = sum(a["answer_item"] is not None for a in answers) / len(answers)
        return result
