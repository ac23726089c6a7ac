"""Token examples: prompt = article cut to fit + separator; target = summary + EOS;
labels -100 on the prompt. With ``data.prompt_format: chat`` the prompt is the tokenizer's
chat template around the (cut) article and the target ends with the template's end of turn
(``prompts``). ``tokenize_splits`` maps whole splits with explicit fingerprints, so a re-run
loads the cached Arrow files instead of tokenising again."""

from __future__ import annotations

import json
from pathlib import Path

from sumtune.config import DataConfig
from sumtune.data.prompts import ChatFormat, chat_format
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


def _chat(tokenizer, cfg: DataConfig) -> ChatFormat:
    """The chat format, checked to leave room for an article beside the longest target."""
    chat = chat_format(tokenizer, cfg)
    if chat.overhead + cfg.max_summary_length + len(chat.end_ids) + 1 > cfg.max_length:
        raise UserError(
            f"config key 'data.max_length' ({cfg.max_length}) leaves no room for an article in the chat template "
            f"({chat.overhead} tokens) beside 'data.max_summary_length' ({cfg.max_summary_length}) + end of turn"
        )
    return chat


def stop_ids(tokenizer, cfg: DataConfig) -> tuple[int, ...]:
    """The tokens that end a generated summary: EOS; with the chat format also the turn's end."""
    return _chat(tokenizer, cfg).stop_ids if cfg.prompt_format == "chat" else (tokenizer.eos_token_id,)


def summary_marker(cfg: DataConfig) -> str:
    """Text at which a decoded summary is cut, should the model start another (the separator's)."""
    return cfg.separator if cfg.prompt_format == "separator" else ""


def encode_batch(tokenizer, articles: list[str], summaries: list[str], cfg: DataConfig) -> dict[str, list]:
    """Token examples: prompt = article (cut to fit) + separator; target = summary (cut only
    beyond ``max_summary_length``) + EOS; labels are -100 on the prompt. One tokenizer call
    per column, so the fast tokenizer encodes the batch in Rust. Chat format: the prompt is
    the template around the cut article, the target ends with the turn's end."""
    if cfg.prompt_format == "chat":
        return _encode_chat(tokenizer, articles, summaries, cfg)
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


def _encode_chat(tokenizer, articles: list[str], summaries: list[str], cfg: DataConfig) -> dict[str, list]:
    chat = _chat(tokenizer, cfg)
    targets = [s[: cfg.max_summary_length] + chat.end_ids
               for s in tokenizer(list(summaries), add_special_tokens=False)["input_ids"]]
    prompts = chat.prompts(articles, [cfg.max_length - len(t) for t in targets])
    return {"input_ids": [p + t for p, t in zip(prompts, targets)],
            "labels": [[-100] * len(p) + t for p, t in zip(prompts, targets)]}


def encode_prompt(tokenizer, article: str, cfg: DataConfig) -> list[int]:
    """The generation input: the article cut to leave room for the longest summary, + separator
    (chat format: in the template, up to the assistant's turn)."""
    if cfg.prompt_format == "chat":
        return encode_prompts(tokenizer, [article], cfg)[0]
    sep, room = _budget(tokenizer, cfg)
    art = tokenizer(article, add_special_tokens=False)["input_ids"][: room - cfg.max_summary_length - 1]
    return art + sep


def encode_prompts(tokenizer, articles: list[str], cfg: DataConfig) -> list[list[int]]:
    """`encode_prompt` of each article (the chat format renders them in one batch)."""
    if cfg.prompt_format != "chat":
        return [encode_prompt(tokenizer, a, cfg) for a in articles]
    chat = _chat(tokenizer, cfg)
    limit = cfg.max_length - cfg.max_summary_length - len(chat.end_ids)
    return chat.prompts(articles, [limit] * len(articles))


def datasets_cache() -> Path:
    """Where `datasets` writes its Arrow cache (HF_DATASETS_CACHE), named when it fills a disk."""
    import datasets  # late: datasets (0.8 s to import) only when rows are read

    return Path(datasets.config.HF_DATASETS_CACHE)


def tokenize_splits(splits, tokenizer, cfg: DataConfig):
    """Add input_ids and labels (-100 on the prompt) to every split.

    Each ``map`` carries a fingerprint of (rows, tokenizer, lengths, separator, or chat template
    and messages), so a re-run with the same inputs loads the cached Arrow file instead of
    tokenising again.
    """
    import datasets  # late: datasets (0.8 s to import) only when rows are read

    if cfg.prompt_format == "chat":  # fail here, not inside a worker process
        chat = _chat(tokenizer, cfg)
        sig = cache_key(tokenizer_id(tokenizer), cfg.max_length, cfg.max_summary_length, "chat", chat.template,
                        chat.system_prompt, chat.instruction, "tok-chat-v1")
    else:
        _budget(tokenizer, cfg)
        sig = cache_key(tokenizer_id(tokenizer), cfg.max_length, cfg.max_summary_length, cfg.separator, "tok-v3")

    def fn(batch: dict[str, list]) -> dict[str, list]:
        return encode_batch(tokenizer, batch["article"], batch["summary"], cfg)

    return datasets.DatasetDict({
        split: ds.map(fn, batched=True, new_fingerprint=cache_key(ds._fingerprint, sig),
                      num_proc=num_workers(cfg, len(ds)), desc=f"tokenising {split}")
        for split, ds in splits.items()
    })
