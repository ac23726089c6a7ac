"""sumtune: fine-tune GPT-style causal LMs for news summarization and compare methods side by side."""

__version__ = "0.1.0"
