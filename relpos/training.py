"""The names `relpos.training` had before the training wing (relpos.train) and the pretext tasks (relpos.pretext)."""

from .pretext import compute_loss
from .train.config import TrainConfig
from .train.distributed import weights_digest
from .train.loop import CHECKPOINT_NAME, evaluate, train
from .train.state import NonFiniteLoss

__all__ = ["CHECKPOINT_NAME", "NonFiniteLoss", "TrainConfig", "compute_loss", "evaluate", "train", "weights_digest"]
