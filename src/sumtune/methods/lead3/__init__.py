"""Lead-3: no options (config.py); the article's first three sentences, no model (method.py)."""
