"""Prefix tuning: its options (config.py) and the method (method.py)."""

from sumtune.methods.prefix_tuning.config import PrefixTuningConfig
from sumtune.methods.registry import register

register("prefix_tuning", PrefixTuningConfig, "sumtune.methods.prefix_tuning.method:PrefixTuning", order=20)
