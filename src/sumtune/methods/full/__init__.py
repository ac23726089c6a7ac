"""Full fine-tuning: no options (config.py), every weight trains (method.py)."""

from sumtune.methods.full.config import FullConfig
from sumtune.methods.registry import register

register("full", FullConfig, "sumtune.methods.full.method:Full", order=70)
