"""LoRA (also DoRA, rsLoRA, QLoRA): its options (config.py) and the method (method.py)."""
