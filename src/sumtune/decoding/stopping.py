"""When a summary ends, and its text.

Stop rule: a summary ends at a stop token (EOS; with the chat format also the template's
end of turn: ``data.stop_ids``), or as soon as its text (leading whitespace ignored)
contains a blank line "\\n\\n" - whether inside one token or across two. References hold
one highlight per line, so a blank line means the model has left the summary (a new
paragraph, another article). ``decode_summary`` cuts the text there too, and at the
separator's marker (e.g. "TL;DR:") should the model start another summary.

``min_new_tokens`` forbids, before that many new tokens, every token that would stop the row:
the stop tokens (as ``generate`` does EOS) and, with the blank-line rule, the tokens that would make the blank line.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence

import torch


def stop_tables(tokenizer, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Per-token facts for the blank-line stop rule, from each token's decoded text."""
    texts = tokenizer.batch_decode([[i] for i in range(min(vocab, len(tokenizer)))])
    texts += [""] * (vocab - len(texts))

    def table(pred) -> torch.Tensor:
        return torch.tensor([pred(t) for t in texts], dtype=torch.bool, device=device)

    return {
        "blank": table(lambda t: "\n\n" in t),
        "blank_lstrip": table(lambda t: "\n\n" in t.lstrip()),
        "starts_nl": table(lambda t: t.startswith("\n")),
        "ends_nl": table(lambda t: t.endswith("\n")),
        "has_text": table(lambda t: bool(t.strip())),
    }


class StopRule:
    """The stop rule for rows described by their previous token (-1: none) and whether
    their text has begun (a token with more than whitespace)."""

    def __init__(self, tokenizer, vocab: int, device: torch.device, blank_line: bool = True,
                 min_new_tokens: int = 0, stop_ids: Iterable[int] | None = None):
        """`stop_ids`: the tokens that end a summary (default: EOS)."""
        ids = list(stop_ids) if stop_ids is not None else [tokenizer.eos_token_id]
        self.stop_ids = torch.tensor(ids, dtype=torch.long, device=device)
        self.blank_line = blank_line
        self.min_new_tokens = min_new_tokens
        self.tables = stop_tables(tokenizer, vocab, device)

    def with_min_new_tokens(self, n: int) -> StopRule:
        """This rule with another minimum (the token tables are shared)."""
        other = copy.copy(self)
        other.min_new_tokens = n
        return other

    def _after_newline(self, prev: torch.Tensor) -> torch.Tensor:
        return self.tables["ends_nl"][prev.clamp(min=0)] & (prev >= 0)

    def update_started(self, started: torch.Tensor, tok: torch.Tensor) -> torch.Tensor:
        """Whether the text has begun once `tok` is appended."""
        return started | self.tables["has_text"][tok]

    def stops(self, tok: torch.Tensor, prev: torch.Tensor, started: torch.Tensor) -> torch.Tensor:
        """Whether `tok` ends the summary."""
        stop = torch.isin(tok, self.stop_ids)
        if self.blank_line:
            t = self.tables
            after_nl = self._after_newline(prev)
            blank = torch.where(started, t["blank"][tok] | (after_nl & t["starts_nl"][tok]), t["blank_lstrip"][tok])
            stop = stop | blank
        return stop

    def mask(self, prev: torch.Tensor, started: torch.Tensor) -> torch.Tensor:
        """[rows, vocab]: the tokens that would end each row now (`stops` for every token at once)."""
        t = self.tables
        mask = torch.zeros(len(prev), t["blank"].shape[0], dtype=torch.bool, device=prev.device)
        mask[:, self.stop_ids] = True
        if self.blank_line:
            after_nl = self._after_newline(prev)[:, None]
            mask |= torch.where(started[:, None], t["blank"] | (after_nl & t["starts_nl"]), t["blank_lstrip"])
        return mask

    def ban(self, scores: torch.Tensor, prev: torch.Tensor, started: torch.Tensor, step: int) -> torch.Tensor:
        """Before `min_new_tokens` tokens, forbid every token that would stop a row: the stop tokens as `generate`'s
        min_new_tokens does EOS, and, with the blank-line rule, the tokens making a blank line. Steps stop at the
        room left (max_new_tokens, the model's positions), so a minimum beyond it ends rows there. In place
        (the caller's scores are its own): without the blank-line rule only the stop tokens' columns."""
        if step >= self.min_new_tokens:
            return scores
        if not self.blank_line:
            scores[:, self.stop_ids] = float("-inf")
            return scores
        return scores.masked_fill_(self.mask(prev, started), float("-inf"))


def decode_summary(tokenizer, ids: Sequence[int], separator: str, stop_ids: Iterable[int] | None = None) -> str:
    """The summary text of generated tokens: up to the first stop token (`stop_ids`, default EOS),
    the first blank line or a new separator (none: ""); one sentence per line, whitespace trimmed."""
    ids = list(ids)
    stops = set(stop_ids) if stop_ids is not None else {tokenizer.eos_token_id}
    ids = ids[: next((n for n, i in enumerate(ids) if i in stops), len(ids))]
    text = tokenizer.decode(ids, skip_special_tokens=True).lstrip()
    text = text.split("\n\n")[0]
    marker = separator.strip()
    if marker:
        text = text.split(marker)[0]
    return "\n".join(line.strip() for line in text.split("\n") if line.strip())
