"""Zero-shot: no options (config.py), the base model as it is (method.py)."""
