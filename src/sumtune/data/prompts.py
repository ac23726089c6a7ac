"""Chat-template prompts (``data.prompt_format: chat``).

The prompt is the tokenizer's chat template rendered up to the assistant's turn
(``apply_chat_template(messages, add_generation_prompt=True)``): an optional system message
(``data.system_prompt``) and a user message, ``data.instruction`` with the article in place of
``{article}``. The target is the summary and the template's end of the assistant turn up to its
first special token (e.g. ChatML's ``<|im_end|>``), the token that ends a generated summary.

The article is cut in tokens, never the template: the cut article's text goes into the messages
and the whole is rendered again, so every prompt holds exactly the tokens ``apply_chat_template``
gives for its (cut) article.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

from sumtune.config import ARTICLE_SLOT, DataConfig
from sumtune.errors import UserError

REPLY = "SUMTUNEREPLY"  # a stand-in assistant reply, left as it is by templates (no spaces to trim)


def _model_name(tokenizer) -> str:
    return getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__


class ChatFormat:
    """One tokenizer's chat template with the configured messages: prompts, the turn's end, the stop token."""

    def __init__(self, tokenizer, template: str, system_prompt: str, instruction: str):
        self.tokenizer, self.template = tokenizer, template
        self.system_prompt, self.instruction = system_prompt, instruction
        prompt = self._render([self.messages("")], True)[0]
        full = self._render([[*self.messages(""), {"role": "assistant", "content": REPLY}]], False)[0]
        if not full.startswith(prompt + REPLY):
            raise UserError(f"the chat template of {_model_name(tokenizer)} does not start the assistant's reply where "
                            "its generation prompt ends; set config key 'data.prompt_format' to separator")
        ids = tokenizer(full[len(prompt) + len(REPLY):], add_special_tokens=False)["input_ids"]
        special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
        end = next((n for n, i in enumerate(ids) if i in special), None)
        self.end_ids: list[int] = ids[: end + 1] if end is not None else [tokenizer.eos_token_id]
        self.overhead = len(self._ids([prompt])[0])  # the prompt's tokens around an empty article

    def messages(self, article: str) -> list[dict[str, str]]:
        system = [{"role": "system", "content": self.system_prompt}] if self.system_prompt else []
        return [*system, {"role": "user", "content": self.instruction.replace(ARTICLE_SLOT, article)}]

    @property
    def stop_ids(self) -> tuple[int, ...]:
        """What ends a generated summary: the turn's end token, and EOS."""
        return tuple(dict.fromkeys((self.end_ids[-1], self.tokenizer.eos_token_id)))

    def _render(self, conversations: list[list[dict]], generation_prompt: bool) -> list[str]:
        try:
            return self.tokenizer.apply_chat_template(conversations, chat_template=self.template, tokenize=False,
                                                      add_generation_prompt=generation_prompt)
        except Exception as e:  # noqa: BLE001 - a template's own refusal (raise_exception), as one line
            why = (str(e).strip().splitlines() or [type(e).__name__])[0][:160]
            raise UserError(f"the chat template of {_model_name(self.tokenizer)} refused the messages ({why}); check "
                            "config keys 'data.system_prompt' and 'data.instruction'") from None

    def _ids(self, texts: list[str]) -> list[list[int]]:
        """As `apply_chat_template(tokenize=True)` tokenises its rendered text."""
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def prompts(self, articles: Sequence[str], limits: Sequence[int]) -> list[list[int]]:
        """The prompt of each article, at most `limits[i]` tokens: the article cut in tokens to fit,
        its cut text rendered in the template (again, shorter, should the cut text tokenise longer)."""
        arts = self._ids(list(articles))
        keep = [lim - self.overhead for lim in limits]
        texts = list(articles)
        out: list[list[int]] = [[] for _ in arts]
        todo = list(range(len(arts)))
        while todo:
            for i in todo:
                if len(arts[i]) > keep[i]:
                    texts[i] = self.tokenizer.decode(arts[i][: max(keep[i], 0)])
            rendered = self._ids(self._render([self.messages(texts[i]) for i in todo], True))
            again = []
            for i, ids in zip(todo, rendered):
                if len(ids) <= limits[i] or keep[i] <= 0:
                    out[i] = ids
                else:
                    keep[i] = min(keep[i], len(arts[i])) - (len(ids) - limits[i])
                    again.append(i)
            todo = again
        return out


@functools.lru_cache(maxsize=8)
def _chat_format(tokenizer, template: str, system_prompt: str, instruction: str) -> ChatFormat:
    return ChatFormat(tokenizer, template, system_prompt, instruction)


def chat_format(tokenizer, cfg: DataConfig) -> ChatFormat:
    """The chat format of `tokenizer` for `cfg` (built once per tokenizer and messages); one line
    when the tokenizer has no chat template."""
    template = getattr(tokenizer, "chat_template", None)
    if not template:
        raise UserError(f"the tokenizer of {_model_name(tokenizer)} has no chat template, and config key "
                        "'data.prompt_format' is chat; set it to separator, or use a model whose tokenizer has one")
    if isinstance(template, dict):  # named templates: the default one
        template = tokenizer.get_chat_template()
    return _chat_format(tokenizer, template, cfg.system_prompt, cfg.instruction)
