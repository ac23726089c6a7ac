"""Lead-3: no options (config.py); the article's first three sentences, no model (method.py)."""

from sumtune.methods.lead3.config import Lead3Config
from sumtune.methods.registry import register

register("lead3", Lead3Config, "sumtune.methods.lead3.method:Lead3", order=80)
