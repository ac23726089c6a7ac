"""Soft-prompt tuning: its options (config.py) and the method (method.py)."""
