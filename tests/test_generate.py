"""Our batched decoder against Hugging Face `generate` (batch 1, the reference) for every method,
plus the stop rule, beam search and the n-gram ban."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from method_utils import make_run
from peft import PeftModel
from transformers import LogitsProcessor, LogitsProcessorList

from sumtune.config import EvalConfig, apply_preset
from sumtune.decoding import Generator, decode_summary
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
    args = {**dict(max_new_tokens=NEW, do_sample=False, eos_token_id=eos, pad_token_id=eos), **kw}
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
                                           sets=("method.prompt_tuning.n_tokens=5", "method.lora.r=4"), steps=2)
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
                                           sets=("method.prompt_tuning.n_tokens=4", "method.lora.r=4"), steps=2)
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


@pytest.mark.parametrize("num_beams", [1, 3])
def test_cancelled_rows_leave_the_batch_and_the_others_equal_hf_generate(num_beams, tiny_neo):
    """`sumtune serve` cancels the rows of a request whose client left: they stop at the next step,
    the rows beside them decode on unchanged, and a batch whose rows are all cancelled ends."""
    tokenizer = load_tokenizer(str(tiny_neo))
    model = load_model(str(tiny_neo)).eval()
    prompts = _prompts(tokenizer, 5)
    eos = _pick_eos([_hf(model, p, tokenizer.eos_token_id) for p in prompts])
    expected = [_until_eos(_hf(model, p, eos, num_beams=num_beams), eos) for p in prompts]
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    steps = [0]  # decoding forwards (one new token per row), prefills not counted

    def count(module, args, kwargs):
        steps[0] += kwargs["input_ids"].shape[1] == 1

    hook = model.register_forward_pre_hook(count, with_kwargs=True)
    try:
        gen = Generator(model, tokenizer, EvalConfig(batch_size=5 * num_beams, num_beams=num_beams,
                                                     max_new_tokens=NEW), stop_at_blank_line=False)
        out = gen.generate(prompts, cancelled=lambda i: i in (1, 3) and steps[0] >= 3)
        for i, (o, e) in enumerate(zip(out, expected)):
            if i in (1, 3):
                assert len(o) <= 4 < len(e), (i, o, e)
            else:
                assert o == e, i
        steps[0] = 0
        gen.generate(prompts, cancelled=lambda i: steps[0] >= 3)
        assert steps[0] == 3  # no forward after every row was cancelled
        steps[0] = 0
        assert gen.generate(prompts, cancelled=lambda i: True) == [[]] * 5 and steps[0] == 0
    finally:
        hook.remove()


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


# --- decoding presets: min_new_tokens, and beam search with the cnndm settings ---------------------


class _SummaryNoRepeat(LogitsProcessor):
    """`generate`'s n-gram ban over the generated tokens only (its own also covers the prompt)."""

    def __init__(self, prompt_len: int, n: int):
        self.prompt_len, self.n = prompt_len, n

    def __call__(self, input_ids: torch.LongTensor, scores: torch.Tensor) -> torch.Tensor:
        for r, row in enumerate(input_ids[:, self.prompt_len :].tolist()):
            follow: dict[tuple[int, ...], set[int]] = {}
            for i in range(len(row) - self.n + 1):
                follow.setdefault(tuple(row[i : i + self.n - 1]), set()).add(row[i + self.n - 1])
            banned = follow.get(tuple(row[len(row) - self.n + 1 :]), set()) if len(row) >= self.n - 1 else set()
            scores[r, sorted(banned)] = float("-inf")
        return scores


def _hf_decoding(model, prompt: list[int], eos: int, ev: EvalConfig) -> list[int]:
    """`generate` at batch 1 with the decoding settings of `ev`, up to EOS."""
    kw = dict(max_new_tokens=ev.max_new_tokens, min_new_tokens=ev.min_new_tokens, num_beams=ev.num_beams,
              no_repeat_ngram_size=0)
    if ev.num_beams > 1:
        kw["length_penalty"] = ev.length_penalty
    if ev.no_repeat_ngram_size:
        kw["logits_processor"] = LogitsProcessorList([_SummaryNoRepeat(len(prompt), ev.no_repeat_ngram_size)])
    return _until_eos(_hf(model, prompt, eos, **kw), eos)


def _early_eos_model(tiny, within: int = 8):
    """A tiny model, its tokenizer and prompts, with as EOS the token that greedy decoding emits within
    the first `within` new tokens of the most rows (random tiny models rarely stop early otherwise)."""
    tokenizer = load_tokenizer(str(tiny))
    model = load_model(str(tiny)).eval()
    prompts = _prompts(tokenizer, 5)
    greedy = [_hf(model, p, tokenizer.eos_token_id) for p in prompts]
    eos = Counter(t for o in greedy for t in set(o[:within])).most_common(1)[0][0]
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    return model, tokenizer, prompts, eos


def _ours(model, tokenizer, ev: EvalConfig, prompts, **kw) -> list[list[int]]:
    return Generator(model, tokenizer, ev, stop_at_blank_line=False, **kw).generate(prompts)


def test_greedy_min_new_tokens_equals_hf_generate(tiny_neo):
    model, tokenizer, prompts, eos = _early_eos_model(tiny_neo)
    ev = EvalConfig(batch_size=3, max_new_tokens=NEW, min_new_tokens=8)
    expected = [_hf_decoding(model, p, eos, ev) for p in prompts]
    assert _ours(model, tokenizer, ev, prompts) == expected
    assert all(len(e) > 8 for e in expected)
    unbounded = _ours(model, tokenizer, EvalConfig(batch_size=3, max_new_tokens=NEW), prompts)
    assert any(len(u) <= 8 for u in unbounded), "some rows should stop before 8 tokens without the minimum"


@pytest.mark.parametrize("arch", ["tiny_neo", "tiny_gpt2"])
@pytest.mark.parametrize("length_penalty", [2.0, 0.5])
def test_beam_cnndm_preset_equals_hf_generate(arch, length_penalty, request):
    """The cnndm settings with short lengths (beam 4, 3-gram ban, a minimum length; length penalty 2 as in
    the preset, and 0.5, with which short hypotheses win and so the minimum matters), then batched."""
    model, tokenizer, prompts, eos = _early_eos_model(request.getfixturevalue(arch))
    ev = apply_preset(EvalConfig(batch_size=4), "cnndm")  # 4 beams: one entry per batch
    ev.min_new_tokens, ev.max_new_tokens, ev.length_penalty = 6, NEW, length_penalty
    expected = [_hf_decoding(model, p, eos, ev) for p in prompts[:3]]
    alone = _ours(model, tokenizer, ev, prompts)
    assert alone[:3] == expected
    ev.batch_size = 12  # 3 entries per batch, ending at different steps
    assert _ours(model, tokenizer, ev, prompts) == alone
    assert all(len(a) > 6 for a in alone)
    ev.min_new_tokens = 0
    no_min = _ours(model, tokenizer, ev, prompts)
    if length_penalty < 1:
        assert no_min != alone and any(len(n) <= 6 for n in no_min), "the minimum should matter here"
    ev.min_new_tokens, ev.no_repeat_ngram_size = 6, 0
    assert _ours(model, tokenizer, ev, prompts) != alone, "the n-gram ban should matter here"


def test_beam_cnndm_preset_real_lengths_equals_hf_generate(tiny_neo):
    model, tokenizer, prompts, eos = _early_eos_model(tiny_neo)
    ev = apply_preset(EvalConfig(batch_size=8), "cnndm")
    assert (ev.num_beams, ev.min_new_tokens, ev.max_new_tokens) == (4, 55, 140)
    two = [prompts[0], prompts[3]]  # 12 and 39 tokens
    expected = [_hf_decoding(model, p, eos, ev) for p in two]
    assert _ours(model, tokenizer, ev, two) == expected
    assert all(len(e) > 55 for e in expected)


def test_stop_mask_is_the_stop_rule_for_every_token(tiny_gpt2):
    """The min_new_tokens ban forbids exactly the tokens `stops` would stop at, blank lines included."""
    tokenizer = load_tokenizer(str(tiny_gpt2))
    rule = Generator(load_model(str(tiny_gpt2)), tokenizer, EvalConfig()).stop_rule
    vocab = rule.tables["blank"].shape[0]
    prev = torch.arange(-1, vocab).repeat(2)
    started = torch.arange(len(prev)) >= vocab + 1
    mask = rule.mask(prev, started)
    for tok in range(vocab):
        t = torch.full_like(prev, tok)
        assert torch.equal(mask[:, tok], rule.stops(t, prev, started)), tok
    nl = tokenizer("\n")["input_ids"][0]
    assert mask[:, tokenizer.eos_token_id].all()
    assert mask[started & (prev == nl), nl].all() and not mask[~started, nl].any()  # "\n" + "\n", after text only


def test_min_new_tokens_beyond_the_room_runs_to_the_last_position(tiny_neo):
    tokenizer = load_tokenizer(str(tiny_neo))
    model = load_model(str(tiny_neo)).eval()
    long = (_prompts(tokenizer, 5)[-1] * 1024)[: 1024 - 10]  # 10 positions left
    free = _ours(model, tokenizer, EvalConfig(max_new_tokens=NEW), [long])[0]
    assert len(free) == 10
    eos = free[2]
    tokenizer.eos_token = tokenizer.convert_ids_to_tokens(eos)
    assert len(_ours(model, tokenizer, EvalConfig(max_new_tokens=NEW), [long])[0]) <= 3
    for k in (1, 2):
        out = _ours(model, tokenizer, EvalConfig(num_beams=k, max_new_tokens=NEW, min_new_tokens=55), [long])[0]
        assert len(out) == 10 and eos not in out


# --- beam search's speed-ups: in-place reordering, done entries leaving the batch ---------------------


def _slot_cache(entries: int, k: int, width: int, steps: int, seed: int = 0):
    """A left-padded cache of `entries` prompts of different lengths repeated k times (beams), then `steps`
    appended positions that differ per row; with the padded prompt width."""
    from sumtune.decoding.cache import left_padded, select_rows

    g = torch.Generator().manual_seed(seed)
    lengths = [width - 3 * e for e in range(entries)]
    prefills = [[(torch.randn(1, 2, n, 4, generator=g), torch.randn(1, 2, n, 4, generator=g)) for _ in range(3)]
                for n in lengths]
    cache, _ = left_padded(prefills, lengths, width + steps + 2, torch.device("cpu"))
    select_rows(cache, torch.arange(entries).repeat_interleave(k))
    for _ in range(steps):
        for layer in cache.layers:
            layer.update(torch.randn(entries * k, 2, 1, 4, generator=g), torch.randn(entries * k, 2, 1, 4, generator=g))
    return cache


def test_reorder_beams_in_place_equals_select_rows():
    from sumtune.decoding.cache import reorder_beams, select_rows

    entries, k, width = 3, 4, 9
    g = torch.Generator().manual_seed(1)
    for steps in (0, 1, 5):
        # each row takes a beam of its own entry, some rows keep their own, some beams are taken twice
        pick = (torch.arange(entries)[:, None] * k + torch.randint(0, k, (entries, k), generator=g)).view(-1)
        pick[0] = 0
        ours, ref = _slot_cache(entries, k, width, steps), _slot_cache(entries, k, width, steps)
        buffers = [(layer.buf_k, layer.buf_v) for layer in ours.layers]
        reorder_beams(ours, pick, width)
        select_rows(ref, pick)
        for layer, r, (bk, bv) in zip(ours.layers, ref.layers, buffers):
            assert layer.buf_k is bk and layer.buf_v is bv, "reordered in place"
            assert torch.equal(layer.keys, r.keys) and torch.equal(layer.values, r.values)
            assert layer.get_seq_length() == r.get_seq_length() == width + steps
    same = _slot_cache(entries, k, width, 4)
    before = [(layer.buf_k, layer.keys.clone()) for layer in same.layers]  # past the filled part: never written
    reorder_beams(same, torch.arange(entries * k), width)  # nothing moves
    assert all(buf is layer.buf_k and torch.equal(keys, layer.keys) for (buf, keys), layer in zip(before, same.layers))


def test_done_entries_leave_the_beam_batch_with_the_same_summaries(tiny_neo):
    """Entries that end early are dropped from the batch (fewer rows in later steps); every summary still
    equals `generate`'s at batch 1."""
    model, tokenizer, prompts, eos = _early_eos_model(tiny_neo)
    with torch.no_grad():
        model.get_output_embeddings().weight[eos] *= 5  # EOS far likelier in some contexts: entries end early
    ev = apply_preset(EvalConfig(batch_size=20), "cnndm")  # all 5 prompts in one batch of 20 rows
    ev.min_new_tokens, ev.max_new_tokens = 2, NEW
    expected = [_hf_decoding(model, p, eos, ev) for p in prompts]
    rows: list[int] = []
    hook = model.register_forward_pre_hook(
        lambda m, args, kw: rows.append(kw["input_ids"].shape[0]) if kw["input_ids"].shape[1] == 1 else None,
        with_kwargs=True)
    try:
        ours = _ours(model, tokenizer, ev, prompts)
    finally:
        hook.remove()
    assert ours == expected
    assert rows[0] == 20 and min(rows) < 20 and min(rows) % 4 == 0, rows
    assert len({len(o) for o in ours}) > 1, "entries should end at different steps"


def test_ban_repeats_equals_generates_ngram_ban_over_the_summary():
    """The vectorised ban against the LogitsProcessor above (`generate`'s rule on the generated tokens)."""
    from sumtune.decoding.search import ban_repeats

    g = torch.Generator().manual_seed(0)
    seqs = torch.randint(0, 6, (5, 30), generator=g)  # few distinct tokens: many repeats
    for n in (1, 2, 3, 4):
        for n_done in range(0, 30, 3):
            ours = ban_repeats(torch.zeros(5, 8), seqs, n_done, n)
            ref = _SummaryNoRepeat(0, n)(seqs[:, :n_done], torch.zeros(5, 8)) if n_done + 1 >= n else torch.zeros(5, 8)
            assert torch.equal(ours, ref), (n, n_done)
