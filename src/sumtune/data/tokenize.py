"""Token examples: prompt = article cut to fit + separator; target = summary + EOS;
labels -100 on the prompt. ``tokenize_splits`` maps whole splits with explicit
fingerprints, so a re-run loads the cached Arrow files instead of tokenising again."""

from __future__ import annotations

import json
from pathlib import Path

from sumtune.config import DataConfig
from sumtune.data.sources import cache_key, num_workers
from sumtune.errors import UserError


def tokenizer_id(tokenizer) -> str:
    """A stable identity for cache fingerprints: the whole tokenizer definition
    (vocabulary, merges, normalisation), not its transient padding/truncation state."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        spec = json.loads(backend.to_str())
        spec.pop("padding", None)
        spec.pop("truncation", None)
        body = json.dumps(spec, sort_keys=True)
    else:
        body = repr(sorted(tokenizer.get_vocab().items()))
    return cache_key(type(tokenizer).__name__, body, tokenizer.eos_token_id)


def _budget(tokenizer, cfg: DataConfig) -> tuple[list[int], int]:
    """(separator ids, tokens left for article + target)."""
    sep = tokenizer(cfg.separator, add_special_tokens=False)["input_ids"]
    room = cfg.max_length - len(sep)
    if room < cfg.max_summary_length + 2:
        raise UserError(
            f"config key 'data.max_length' ({cfg.max_length}) leaves no room for an article next to the "
            f"separator ({len(sep)} tokens) and 'data.max_summary_length' ({cfg.max_summary_length}) + EOS"
        )
    return sep, room


def encode_batch(tokenizer, articles: list[str], summaries: list[str], cfg: DataConfig) -> dict[str, list]:
    """Token examples: prompt = article (cut to fit) + separator; target = summary (cut only
    beyond ``max_summary_length``) + EOS; labels are -100 on the prompt. One tokenizer call
    per column, so the fast tokenizer encodes the batch in Rust."""
    sep, room = _budget(tokenizer, cfg)
    eos = tokenizer.eos_token_id
    arts = tokenizer(list(articles), add_special_tokens=False)["input_ids"]
    sums = tokenizer(list(summaries), add_special_tokens=False)["input_ids"]
    out: dict[str, list] = {"input_ids": [], "labels": []}
    for art, summ in zip(arts, sums):
        target = summ[: cfg.max_summary_length] + [eos]
        prompt = art[: room - len(target)] + sep
        out["input_ids"].append(prompt + target)
        out["labels"].append([-100] * len(prompt) + target)
    return out


def encode_prompt(tokenizer, article: str, cfg: DataConfig) -> list[int]:
    """The generation input: the article cut to leave room for the longest summary, + separator."""
    sep, room = _budget(tokenizer, cfg)
    art = tokenizer(article, add_special_tokens=False)["input_ids"][: room - cfg.max_summary_length - 1]
    return art + sep


def datasets_cache() -> Path:
    """Where `datasets` writes its Arrow cache (HF_DATASETS_CACHE), named when it fills a disk."""
    import datasets

    return Path(datasets.config.HF_DATASETS_CACHE)


def tokenize_splits(splits, tokenizer, cfg: DataConfig):
    """Add input_ids and labels (-100 on the prompt) to every split.

    Each ``map`` carries a fingerprint of (rows, tokenizer, lengths, separator), so a
    re-run with the same inputs loads the cached Arrow file instead of tokenising again.
    """
    import datasets

    _budget(tokenizer, cfg)  # fail here, not inside a worker process
    sig = cache_key(tokenizer_id(tokenizer), cfg.max_length, cfg.max_summary_length, cfg.separator, "tok-v3")

    def fn(batch: dict[str, list]) -> dict[str, list]:
        return encode_batch(tokenizer, batch["article"], batch["summary"], cfg)

    return datasets.DatasetDict({
        split: ds.map(fn, batched=True, new_fingerprint=cache_key(ds._fingerprint, sig),
                      num_proc=num_workers(cfg, len(ds)), desc=f"tokenising {split}")
        for split, ds in splits.items()
    })
