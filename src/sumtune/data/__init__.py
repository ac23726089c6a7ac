"""Data: sources -> cleaned rows (id, article, summary) -> token examples -> batches.

- ``sources``: read a Kaggle CSV directory, a CSV/JSONL file or ``hf:NAME``; check it,
  split it, take seeded subsets, clean the rows (``load_splits``);
- ``readers``: one CSV / JSON Lines file; each fault named by file and 1-based line;
- ``clean``: the text cleaning (``clean_article``, ``clean_summary``);
- ``tokenize``: prompt + target token examples with labels (``tokenize_splits``,
  ``encode_prompt(s)`` for generation, ``stop_ids`` and ``summary_marker`` to end it);
- ``prompts``: the chat-template prompt format (``data.prompt_format: chat``);
- ``batching``: dynamic padding (``Collator``), the epoch order (``epoch_order``) and one optimizer
  step's micro-batches for this process (``micro_batches``, ``token_batches``).
"""

from sumtune.data.batching import Collator, epoch_order, micro_batches, token_batches
from sumtune.data.clean import clean_article, clean_summary
from sumtune.data.sources import KAGGLE_FILES, SPLITS, hub_dataset, load_splits, split_sizes
from sumtune.data.tokenize import (
    datasets_cache,
    encode_batch,
    encode_prompt,
    encode_prompts,
    stop_ids,
    summary_marker,
    tokenize_splits,
    tokenizer_id,
)

__all__ = [
    "KAGGLE_FILES", "SPLITS", "Collator", "clean_article", "clean_summary", "datasets_cache", "encode_batch", "encode_prompt",
    "encode_prompts", "epoch_order", "hub_dataset", "load_splits", "micro_batches", "split_sizes", "stop_ids",
    "summary_marker", "token_batches", "tokenize_splits", "tokenizer_id",
]
