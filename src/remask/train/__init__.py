"""The one training loop (pre-training, AR baseline, SFT), its optimizer, checkpoints and DDP."""

from remask.checkpoint import Checkpoint, load_checkpoint, load_model, save_checkpoint
from remask.train.loop import TrainResult, train

__all__ = ["Checkpoint", "TrainResult", "load_checkpoint", "load_model", "save_checkpoint", "train"]
