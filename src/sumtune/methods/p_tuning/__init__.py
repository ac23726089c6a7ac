"""P-tuning: its options (config.py) and the method (method.py)."""

from sumtune.methods.p_tuning.config import PTuningConfig
from sumtune.methods.registry import register

register("p_tuning", PTuningConfig, "sumtune.methods.p_tuning.method:PTuning", order=30)
