"""The one training loop shared by every recipe, its callbacks and checkpoints."""

from htsr.training.checkpoint import load_checkpoint, save_checkpoint
from htsr.training.loop import (
    Callback,
    DivergedError,
    TrainingError,
    TrainResult,
    TrainState,
    default_loss,
    evaluate,
    seeded_loader,
    train,
)

__all__ = ["Callback", "DivergedError", "TrainResult", "TrainState", "TrainingError", "default_loss", "evaluate",
           "load_checkpoint", "save_checkpoint", "seeded_loader", "train"]
