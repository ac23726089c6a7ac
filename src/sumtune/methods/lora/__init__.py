"""LoRA (also DoRA, rsLoRA, QLoRA): its options (config.py) and the method (method.py)."""

from sumtune.methods.lora.config import LoraConfig
from sumtune.methods.registry import register

register("lora", LoraConfig, "sumtune.methods.lora.method:Lora", order=40)
