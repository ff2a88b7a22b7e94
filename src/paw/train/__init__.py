"""LoRA training with Lightning + PEFT (pipeline steps 2 and 6) and `paw train`."""

from paw.train.config import PRESETS, TrainConfig
from paw.train.recipe import TrainResult, train_lora

__all__ = ["PRESETS", "TrainConfig", "TrainResult", "train_lora"]
