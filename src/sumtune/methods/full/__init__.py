"""Full fine-tuning: no options (config.py), every weight trains (method.py)."""
