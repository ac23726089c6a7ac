"""Soft-prompt tuning: its options (config.py) and the method (method.py)."""

from sumtune.methods.prompt_tuning.config import PromptTuningConfig
from sumtune.methods.registry import register

register("prompt_tuning", PromptTuningConfig, "sumtune.methods.prompt_tuning.method:PromptTuning", order=10)
