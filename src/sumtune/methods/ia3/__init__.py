"""IA³: its options (config.py) and the method (method.py)."""

from sumtune.methods.ia3.config import IA3Config
from sumtune.methods.registry import register

register("ia3", IA3Config, "sumtune.methods.ia3.method:IA3", order=50)
