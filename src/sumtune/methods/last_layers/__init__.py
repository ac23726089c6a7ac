"""Last-layers tuning: its options (config.py) and the method (method.py)."""

from sumtune.methods.last_layers.config import LastLayersConfig
from sumtune.methods.registry import register

register("last_layers", LastLayersConfig, "sumtune.methods.last_layers.method:LastLayers", order=60)
