"""Zero-shot: no options (config.py), the base model as it is (method.py)."""

from sumtune.methods.registry import register
from sumtune.methods.zero_shot.config import ZeroShotConfig

register("zero_shot", ZeroShotConfig, "sumtune.methods.zero_shot.method:ZeroShot", order=0)
