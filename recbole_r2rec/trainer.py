from recbole.trainer import Trainer
class R2RecTrainer(Trainer):
    pass
