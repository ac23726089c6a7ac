"""Articles to summaries with a run's decoding: an article given as text is checked (`check_text`:
strictly UTF-8, not blank) and cleaned as in training (`article_text`); articles are decoded in
batches (`generate_summaries`, shared out over processes); each output is cut at the stop rule and
to eval.max_sentences (`summary_text`). `evaluate`, `summarize`, model selection during training
and `serve` all go through here, so that the same article gets the same summary everywhere.
"""

from __future__ import annotations

import time

import torch

from sumtune.config import Config
from sumtune.data import clean_article, encode_prompts, stop_ids, summary_marker
from sumtune.decoding.search import Generator
from sumtune.decoding.stopping import decode_summary
from sumtune.distributed import batch_shard, gather_in_order
from sumtune.errors import UserError
from sumtune.sentences import split_sentences


class NotUTF8Error(UserError):
    """Input bytes that do not decode as UTF-8 (`sumtune serve` answers 400, an empty text 422)."""


def check_text(raw: bytes, where: str) -> str:
    """`raw` as text: strictly UTF-8 and not blank, else a one-line error naming `where`. The one
    check for `summarize` (files, stdin) and `serve` (request bodies), so both refuse the same input."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise NotUTF8Error(f"{where} is not UTF-8 text (byte {e.start}); re-encode it as UTF-8") from None
    if not text.strip():
        raise UserError(f"empty input text ({where}); pass an article to summarise")
    return text


def article_text(text: str, cfg: Config) -> str:
    """The article as the run saw articles in training: cleaned when data.clean, else stripped."""
    return clean_article(text) if cfg.data.clean else text.strip()


def generate_summaries(model, tokenizer, cfg: Config, autocast: torch.dtype | None, articles: list[str],
                       progress: bool, state=None) -> tuple[list[str], float]:
    """(summary texts, generation seconds): decode, cut at the stop rule, keep eval.max_sentences.
    With `state` (several processes): each generates whole batches (`distributed.batch_shard`),
    gathered back in article order."""
    prompts = encode_prompts(tokenizer, articles, cfg.data)
    rank, world = (state.process_index, state.num_processes) if state is not None else (0, 1)
    per_batch = max(1, cfg.eval.batch_size // cfg.eval.num_beams)  # as Generator.generate batches
    mine = batch_shard([len(p) for p in prompts], per_batch, rank, world) if world > 1 else list(range(len(prompts)))
    t0 = time.perf_counter()
    generator = Generator(model, tokenizer, cfg.eval, autocast=autocast, stop_ids=stop_ids(tokenizer, cfg.data))
    generated = generator.generate([prompts[i] for i in mine], progress and rank == 0)
    if world > 1:
        generated = gather_in_order(generated, mine, len(prompts), state)
    seconds = time.perf_counter() - t0
    return [summary_text(tokenizer, g, cfg) for g in generated], seconds


def summary_text(tokenizer, generated: list[int], cfg: Config) -> str:
    """The summary of generated tokens: cut at the stop rule, the first eval.max_sentences kept
    (shared with `sumtune serve`, whose summaries must equal `summarize`'s)."""
    text = decode_summary(tokenizer, generated, summary_marker(cfg.data), stop_ids(tokenizer, cfg.data))
    return first_sentences(text, cfg.eval.max_sentences) if cfg.eval.max_sentences else text


def first_sentences(text: str, n: int) -> str:
    """The first n sentences, one per line (as the GPT-2 paper's zero-shot "TL;DR:" summaries)."""
    return "\n".join(split_sentences(text)[:n])
