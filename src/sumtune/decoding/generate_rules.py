"""sumtune's decoding rules for Hugging Face `generate`: the stop rule, the minimum length and the
summary-only n-gram ban of `sumtune.decoding` as a StoppingCriteria and a LogitsProcessor.

Self-contained (torch and transformers only, no sumtune import): `sumtune export` copies this
module's code, less this docstring, into the model card, so the card's Python gives `sumtune
summarize`'s summaries with plain transformers. Why not `generate`'s own options: its
`no_repeat_ngram_size` also bans every n-gram of the prompt (a decoder-only model's prompt is the
article, so copying a phrase would be forbidden), its `min_new_tokens` holds back EOS only, and it
has no blank-line stop. In beam search `generate` asks the StoppingCriteria about each of the top
2 x num_beams candidates, so a candidate that ends the summary becomes a finished hypothesis there,
as in sumtune's beam search; pass one `eos_token_id` (more would widen that candidate set).
"""

import torch
from transformers import LogitsProcessor, StoppingCriteria


class SummaryRules:
    """When a summary ends and what it may not repeat, for a prompt of `start` tokens (no padding).

    A summary ends at a stop token (`stop_ids`) or as soon as its text, leading whitespace ignored,
    holds a blank line, inside one token or across two; no stop before `min_new_tokens` new tokens;
    no n-gram of `ngram` tokens twice within the summary (the prompt's n-grams stay allowed)."""

    def __init__(self, tokenizer, vocab: int, start: int, stop_ids, ngram: int = 0, min_new_tokens: int = 0):
        texts = tokenizer.batch_decode([[i] for i in range(min(vocab, len(tokenizer)))])
        texts += [""] * (vocab - len(texts))
        tests = {"blank": lambda t: "\n\n" in t, "blank_lstrip": lambda t: "\n\n" in t.lstrip(),
                 "starts_nl": lambda t: t.startswith("\n"), "ends_nl": lambda t: t.endswith("\n"),
                 "has_text": lambda t: bool(t.strip())}
        self.tables = {k: torch.tensor([test(t) for t in texts]) for k, test in tests.items()}
        self.start, self.stop_ids = start, list(stop_ids)
        self.ngram, self.min_new_tokens = ngram, min_new_tokens

    def ends(self, new: torch.Tensor) -> torch.Tensor:
        """[rows, vocab]: the tokens that would end each row next, after its new tokens `new` [rows, n]."""
        t = {k: v.to(new.device) for k, v in self.tables.items()}
        started = t["has_text"][new].any(-1)[:, None]  # the text has begun: a token with more than whitespace
        after_nl = t["ends_nl"][new[:, -1:]].any(-1)[:, None]  # the last token ends with a newline
        mask = torch.where(started, t["blank"] | (after_nl & t["starts_nl"]), t["blank_lstrip"])
        mask[:, self.stop_ids] = True
        return mask

    def banned(self, tokens: list[int]) -> list[int]:
        """The tokens that would repeat an n-gram of the summary `tokens`: for every earlier occurrence
        of its last n-1 tokens, the token that followed it."""
        n = self.ngram
        if n <= 0:
            return []
        tail = tokens[len(tokens) - n + 1:]
        return [tokens[i + n - 1] for i in range(len(tokens) - n + 1) if tokens[i:i + n - 1] == tail]


class SummaryLogits(LogitsProcessor):
    """No stop before `min_new_tokens`; no repeated n-gram within the summary."""

    def __init__(self, rules: SummaryRules):
        self.rules = rules

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        new = input_ids[:, self.rules.start:]
        if new.shape[1] < self.rules.min_new_tokens:
            scores = scores.masked_fill(self.rules.ends(new), float("-inf"))
        for row, tokens in enumerate(new.tolist()):
            scores[row, self.rules.banned(tokens)] = float("-inf")
        return scores


class SummaryEnd(StoppingCriteria):
    """A row ends when its last token ends the summary (`SummaryRules.ends` of the tokens before it)."""

    def __init__(self, rules: SummaryRules):
        self.rules = rules

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        new = input_ids[:, self.rules.start:]
        return self.rules.ends(new[:, :-1]).gather(1, new[:, -1:]).squeeze(1)


def summary_text(tokenizer, new: list[int], stop_ids, marker: str = "") -> str:
    """The summary of new tokens: up to the first stop token, the first blank line or the separator's
    marker (should the model start another summary); one line per line, whitespace trimmed."""
    new = new[: next((n for n, i in enumerate(new) if i in set(stop_ids)), len(new))]
    text = tokenizer.decode(new, skip_special_tokens=True).lstrip().split("\n\n")[0]
    text = text.split(marker)[0] if marker else text
    return "\n".join(line.strip() for line in text.split("\n") if line.strip())
