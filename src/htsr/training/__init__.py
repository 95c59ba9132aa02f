"""The one training loop shared by every recipe, its callbacks and checkpoints."""

from htsr.training.checkpoint import load_checkpoint, load_weights, save_checkpoint, save_weights
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
           "load_checkpoint", "load_weights", "save_checkpoint", "save_weights", "seeded_loader", "train"]
