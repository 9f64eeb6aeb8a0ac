"""Training the drag UNet with accelerate (docs/design.md §5–6)."""

from .config import TrainConfig, load_config
from .trainer import Trainer, TrainingDiverged, TrainResult, edm_loss

__all__ = ["TrainConfig", "TrainResult", "Trainer", "TrainingDiverged", "edm_loss", "load_config"]
