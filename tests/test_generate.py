"""Our batched decoder against Hugging Face `generate` (batch 1, the reference) for every method,
plus the stop rule, beam search and the n-gram ban."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from method_utils import make_run
from peft import PeftModel

from sumtune.config import EvalConfig
from sumtune.generate import Generator, decode_summary
from sumtune.modeling import load_model, load_tokenizer
from sumtune.tiny import synthetic_news

NEW = 24


def _prompts(tokenizer, n: int = 7) -> list[list[int]]:
    """Prompts of clearly different lengths, so batches need left padding."""
    rows = synthetic_news(n, seed=3)
    return [tokenizer(r["article"] + "\nTL;DR:\n")["input_ids"][: 12 + 9 * i] for i, r in enumerate(rows)]


def _hf(model, prompt: list[int], eos: int, embeds: torch.Tensor | None = None, **kw) -> list[int]:
    """New tokens from `generate` at batch 1 (no padding); `embeds`: a soft prompt to put in front."""
    ids = torch.tensor([prompt])
    args = dict(max_new_tokens=NEW, do_sample=False, eos_token_id=eos, pad_token_id=eos, **kw)
    with torch.no_grad():
        if embeds is None:
            out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **args)
            return out[0, len(prompt):].tolist()
        x = torch.cat([embeds, model.get_input_embeddings()(ids)], dim=1)
        out = model.generate(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long), **args)
        return out[0].tolist()  # with inputs_embeds only, generate returns the new tokens


def _until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def _pick_eos(outputs: list[list[int]]) -> int:
    """A token the model emits mid-summary in many rows: used as EOS, so rows end at different steps."""
    firsts = Counter(t for o in outputs for i, t in enumerate(o) if i > 0 and t not in o[:i])
    return firsts.most_common(1)[0][0]


def _reference(method: str, run, model, tokenizer, model_dir):
    """The model `generate` runs on for `method`, and the soft prompt to feed it (or None)."""
    if method == "lora":
        return model, None  # PeftModel.generate
    if method == "prompt_tuning":
        # PEFT's own prompt (loaded from our adapter) in front of the base model's embeddings.
        # PeftModel.generate itself cannot be the reference here: with transformers 5 it looks for
        # `past_key_values` (renamed `cache`) and re-inserts the prompt at every step.
        peft = PeftModel.from_pretrained(load_model(str(model_dir)), str(run / "adapter")).eval()
        return peft.base_model, peft.get_prompt(batch_size=1).detach()
    return model, None  # zero_shot, last_layers, full: plain Hugging Face models


@pytest.mark.parametrize("method", ["zero_shot", "prompt_tuning", "lora", "last_layers", "full"])
def test_greedy_equals_hf_generate(method, tiny_neo, tmp_path):
    run, _cfg, model, tokenizer = make_run(tmp_path / "run", tiny_neo, method,
                                           sets=("method.n_tokens=5", "method.r=4"), steps=2)
    lm, soft = _reference(method, run, model, tokenizer, tiny_neo)
    prompts = _prompts(tokenizer)
    eos = _pick_eos([_hf(lm, p, tokenizer.eos_token_id, soft) for p in prompts])
    expected = [_until_eos(_hf(lm, p, eos, soft), eos) for p in prompts]

    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    gen = Generator(model, tokenizer, EvalConfig(batch_size=3, max_new_tokens=NEW), stop_at_blank_line=False)
    assert gen.generate(prompts) == expected
    assert len({len(e) for e in expected}) > 1, "rows should stop at different steps"


@pytest.mark.parametrize("method", ["prompt_tuning", "lora"])
def test_greedy_equals_hf_generate_gpt2(method, tiny_gpt2, tmp_path):
    run, _cfg, model, tokenizer = make_run(tmp_path / "run", tiny_gpt2, method,
                                           sets=("method.n_tokens=4", "method.r=4"), steps=2)
    lm, soft = _reference(method, run, model, tokenizer, tiny_gpt2)
    prompts = _prompts(tokenizer)
    expected = [_hf(lm, p, tokenizer.eos_token_id, soft) for p in prompts]
    gen = Generator(model, tokenizer, EvalConfig(batch_size=4, max_new_tokens=NEW), stop_at_blank_line=False)
    assert gen.generate(prompts) == expected


def _blank_line_cut(tokenizer, tokens: list[int]) -> list[int]:
    """The stop rule stated on text: the shortest prefix whose text, leading whitespace removed, has a blank line."""
    for k in range(1, len(tokens) + 1):
        if "\n\n" in tokenizer.decode(tokens[:k]).lstrip():
            return tokens[:k]
    return tokens


def test_blank_line_stop_rule(tiny_gpt2):
    tokenizer = load_tokenizer(str(tiny_gpt2))
    model = load_model(str(tiny_gpt2)).eval()
    rows = synthetic_news(10, seed=3)
    prompts = [tokenizer(r["article"] + " TL;DR:")["input_ids"][: 12 + 9 * i] for i, r in enumerate(rows)]
    before = [_hf(model, p, tokenizer.eos_token_id) for p in prompts]
    # Relabel a token the model repeats after some text (and that no prompt holds) as "\n": swapping the
    # two tied embedding rows gives the same model with the two tokens renamed, so it writes "x\n\n".
    in_prompts = {t for p in prompts for t in p}
    newline = tokenizer("\n")["input_ids"][0]
    assert newline not in in_prompts
    repeats = Counter(o[i] for o in before for i in range(1, len(o) - 1)
                      if o[i] == o[i + 1] != o[0] and o[i] not in in_prompts)
    relabel = repeats.most_common(1)[0][0]
    with torch.no_grad():
        w = model.get_output_embeddings().weight
        w[[relabel, newline]] = w[[newline, relabel]]
    hf = [_hf(model, p, tokenizer.eos_token_id) for p in prompts]
    assert hf == [[newline if t == relabel else relabel if t == newline else t for t in o] for o in before]
    expected = [_blank_line_cut(tokenizer, h) for h in hf]
    assert any(len(e) < len(h) for e, h in zip(expected, hf)), "some rows should stop at a blank line"
    ours = Generator(model, tokenizer, EvalConfig(batch_size=4, max_new_tokens=NEW)).generate(prompts)
    assert ours == expected
    for tokens in ours:
        assert "\n\n" not in decode_summary(tokenizer, tokens, "\nTL;DR:\n")


@pytest.mark.parametrize("length_penalty", [1.0, 0.5, 2.0])
def test_beam_search_equals_hf_generate(length_penalty, tiny_neo, tmp_path):
    run, _cfg, model, tokenizer = make_run(tmp_path / "run", tiny_neo, "lora", sets=("method.r=4",), steps=2)
    prompts = _prompts(tokenizer, 5)
    eos = _pick_eos([_hf(model, p, tokenizer.eos_token_id) for p in prompts])
    expected = [_hf(model, p, eos, num_beams=3, length_penalty=length_penalty) for p in prompts]
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    cfg = EvalConfig(batch_size=6, num_beams=3, max_new_tokens=NEW, length_penalty=length_penalty)
    ours = Generator(model, tokenizer, cfg, stop_at_blank_line=False).generate(prompts)
    assert ours == [_until_eos(e, eos) for e in expected]
    greedy = Generator(model, tokenizer, EvalConfig(max_new_tokens=NEW), stop_at_blank_line=False).generate(prompts)
    assert ours != greedy, "beam search should find other summaries than greedy here"


def _first_repeat(tokens: list[int], n: int) -> int:
    """Index of the token completing the first repeated n-gram, or len(tokens)."""
    seen = set()
    for i in range(n - 1, len(tokens)):
        gram = tuple(tokens[i - n + 1 : i + 1])
        if gram in seen:
            return i
        seen.add(gram)
    return len(tokens)


def test_no_repeat_ngram_bans_repeats_within_the_summary(tiny_neo):
    tokenizer = load_tokenizer(str(tiny_neo))
    model = load_model(str(tiny_neo)).eval()
    prompts = _prompts(tokenizer, 4)
    greedy = [_hf(model, p, tokenizer.eos_token_id) for p in prompts]
    cfg = EvalConfig(batch_size=2, max_new_tokens=NEW, no_repeat_ngram_size=2)
    ours = Generator(model, tokenizer, cfg, stop_at_blank_line=False).generate(prompts)
    for g, o in zip(greedy, ours):
        cut = _first_repeat(g, 2)
        assert cut < len(g), "random tiny models repeat themselves"
        assert o[:cut] == g[:cut] and o[cut] != g[cut]  # identical until greedy would repeat
        assert _first_repeat(o, 2) == len(o)
