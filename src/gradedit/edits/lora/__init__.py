"""The LoRA baseline: rank-r adapters trained with CE (or unlikelihood) on target tokens + KL to the
base model elsewhere (``train_lora``), on target/KL data built by ``TargetData``."""

from __future__ import annotations

from .data import TargetData
from .train import LoraConfig, LoraResult, train_lora

__all__ = ["LoraConfig", "LoraResult", "TargetData", "train_lora"]
