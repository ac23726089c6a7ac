"""Batched decoding of summaries (greedy or beam search) over a Hugging Face causal LM.

How a batch is decoded:
1. prompts are sorted by length and cut into batches, so rows of a batch are alike;
2. each prompt is prefilled alone (no padding in the expensive pass; only the last
   position's logits are computed). A soft prompt's keys/values (prompt tuning, P-tuning) are
   computed once, at batch 1, and copied in front of every prompt; prefix tuning's keys/values
   go there as they are;
3. the rows' caches go, left-padded, into one preallocated buffer per layer (``cache``);
4. the rows decode together (``search``: greedy or beam); finished rows leave the batch
   (the cache is compacted when a quarter of the rows have finished); a row finishes at
   EOS or a blank line (``stopping``). On a Llama-layout model the fast path
   ``lean_decode_step`` runs each step through ``lean`` (the blocks' modules without
   Transformers' per-layer plumbing; beams hold their prompt's keys/values once per entry).
   Key/value heads of grouped-query attention are never expanded in a cache.

Rows may decode with their own soft prompt and LoRA adapter (``variants``: ``sumtune serve``
batches rows of several runs of one base model).
"""

from sumtune.decoding.search import Generator
from sumtune.decoding.stopping import decode_summary
from sumtune.decoding.variants import BASE_ADAPTER, KV, Variant

__all__ = ["BASE_ADAPTER", "KV", "Generator", "Variant", "decode_summary"]
