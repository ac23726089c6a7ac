"""Decoding on the Llama layout (tiny Llama and Qwen2 with grouped-query attention: 4 query heads,
2 key/value heads): the caches keep the key/value heads unexpanded, the lean decode step against the
model's own forward (bitwise for greedy; beams sharing their prompt up to rounding), and the decoded
summaries against Hugging Face `generate` at batch 1 with every decoding fast path applied."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from test_generate import NEW, _early_eos_model, _hf_decoding, _ours, _prompts

from sumtune.config import EvalConfig, apply_preset
from sumtune.decoding import Generator, lean
from sumtune.decoding.cache import BeamCache, BeamLayer, SlotLayer, reorder_beams, select_rows
from sumtune.fastpath import revert_fast_paths, speed_up
from sumtune.modeling import load_model, load_tokenizer


def _model(tiny_family, arch: str):
    model = load_model(str(tiny_family(arch))).eval()
    return model, load_tokenizer(str(tiny_family(arch)))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_the_fast_path_applies_to_the_llama_layout_only(arch, tiny_family):
    model, _ = _model(tiny_family, arch)
    applied = speed_up(model, inference=True)["applied"]
    assert "lean_decode_step" in applied and lean.step_for(model).llama_rope  # queries and keys rotated together
    revert_fast_paths(model)
    assert lean.step_for(model) is None
    assert "lean_decode_step" not in speed_up(model, inference=False)["applied"]  # training: no
    revert_fast_paths(model)
    assert "lean_decode_step" not in speed_up(model, attention="eager", inference=True)["applied"]
    revert_fast_paths(model)
    for other in ("gpt_neo", "gpt2", "gemma"):  # other blocks (Gemma: its norm and embedding scale differ)
        assert "lean_decode_step" not in speed_up(_model(tiny_family, other)[0], inference=True)["applied"]


@pytest.mark.parametrize("lean_step", [False, True])
@pytest.mark.parametrize("beams", [1, 3])
def test_caches_keep_grouped_query_heads_unexpanded(lean_step, beams, tiny_family):
    model, tokenizer = _model(tiny_family, "llama")
    cfg = model.config
    assert cfg.num_attention_heads == 2 * cfg.num_key_value_heads
    if lean_step:
        speed_up(model, inference=True)
    gen = Generator(model, tokenizer, EvalConfig(num_beams=beams, max_new_tokens=4), stop_at_blank_line=False)
    prompts = _prompts(tokenizer, 2)
    cache = gen._start(prompts, [gen.own] * 2, beams if lean_step and beams > 1 else 0)[0]
    for layer in cache.layers:
        tensors = (layer.prompt_k, layer.gen_k) if isinstance(layer, BeamLayer) else (layer.buf_k,)  # heads: dim 1
        assert all(t.shape[1] == cfg.num_key_value_heads for t in tensors)
    if lean_step and beams > 1:  # the prompt once per entry, the beams' positions per beam
        assert cache.layers[0].prompt_k.shape[0] == 2 and cache.layers[0].gen_k.shape[0] == 2 * beams


def _both_steps(model, tokenizer, prompts, beams: int, steps: int):
    """Logits of `steps` decoding steps from the lean step and from the model's forward, on the same
    tokens (each step feeds the reference's argmax), from caches laid out as each decodes."""
    speed_up(model, inference=True)
    gen = Generator(model, tokenizer, EvalConfig(num_beams=beams, max_new_tokens=steps + 1), stop_at_blank_line=False)
    ref = Generator(model, tokenizer, gen.cfg, stop_at_blank_line=False)
    ref.lean = None
    variants = [gen.own] * len(prompts)
    ours = gen._start(prompts, variants, beams if beams > 1 else 0)
    theirs = ref._start(prompts, variants)
    rep = torch.arange(len(prompts)).repeat_interleave(beams)
    if beams > 1:
        select_rows(theirs[0], rep)
    mask, pos, width = theirs[1][rep], theirs[2][rep], theirs[4]
    tok = theirs[3][rep].argmax(-1)
    out = []
    for i in range(steps):
        a = gen._step(tok, ours[0], mask[:, : width + i + 1], pos + i, [])
        b = ref._step(tok, theirs[0], mask[:, : width + i + 1], pos + i, [])
        out.append((a, b))
        tok = b.argmax(-1)
    return out


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
@pytest.mark.parametrize("padded", [False, True])
def test_lean_greedy_step_equals_the_models_forward_bitwise(arch, padded, tiny_family):
    model, tokenizer = _model(tiny_family, arch)
    prompts = _prompts(tokenizer, 3)
    if not padded:
        prompts = [p[:12] for p in prompts]
    for a, b in _both_steps(model, tokenizer, prompts, 1, 5):
        assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_lean_beam_step_shares_the_prompt_and_equals_the_models_forward(arch, tiny_family):
    model, tokenizer = _model(tiny_family, arch)
    for a, b in _both_steps(model, tokenizer, _prompts(tokenizer, 3), 4, 6):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_beam_cache_reorders_and_compacts_as_slot_layers():
    """Reordering beams and dropping done entries on the shared layout (every layer in one buffer) give
    every row of every layer the keys/values the row-per-beam layout gives it."""
    g = torch.Generator().manual_seed(0)
    layers, entries, k, width, steps = 2, 3, 2, 5, 4
    prompt = torch.randn(layers, 2, entries, 2, width, 4, generator=g)
    shared = BeamCache(prompt, k, steps + 2)
    full = []
    for p in prompt:
        buffers = [torch.zeros(entries * k, 2, width + steps + 2, 4) for _ in range(2)]
        for buf, part in zip(buffers, p):
            buf[:, :, :width] = part.repeat_interleave(k, 0)
        full.append(SlotLayer(*buffers, width))
    for _ in range(steps):
        for beam_layer, slot in zip(shared.layers, full):
            new = torch.randn(entries * k, 2, 1, 4, generator=g)
            beam_layer.append(new, -new)
            slot.update(new, -new)
        pick = (torch.arange(entries)[:, None] * k + torch.randint(0, k, (entries, k), generator=g)).view(-1)
        reorder_beams(shared, pick, width)
        reorder_beams(SimpleNamespace(layers=full), pick, width)
    rows = torch.tensor([2, 3, 4, 5])  # entries 1 and 2 stay
    select_rows(shared, rows)
    select_rows(SimpleNamespace(layers=full), rows)
    for beam_layer, slot in zip(shared.layers, full):
        keys, values = beam_layer.rows()
        assert torch.equal(keys, slot.keys) and torch.equal(values, slot.values)
        assert beam_layer.get_seq_length() == slot.get_seq_length() == width + steps


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_decoding_with_every_fast_path_equals_hf_generate(arch, tiny_family):
    """Greedy and the cnndm preset (beam 4, 3-gram ban, a minimum length) with the decoding fast paths
    (SDPA, the few-rows head, the lean step) against `generate` at batch 1, prompts of different lengths."""
    model, tokenizer, prompts, eos = _early_eos_model(tiny_family(arch))
    greedy = EvalConfig(batch_size=3, max_new_tokens=NEW)
    beam = apply_preset(EvalConfig(batch_size=12), "cnndm")
    beam.min_new_tokens, beam.max_new_tokens = 6, NEW
    expected = {id(ev): [_hf_decoding(model, p, eos, ev) for p in prompts] for ev in (greedy, beam)}
    assert "lean_decode_step" in speed_up(model, inference=True)["applied"]
    for ev in (greedy, beam):
        assert _ours(model, tokenizer, ev, prompts) == expected[id(ev)]
    assert expected[id(greedy)] != expected[id(beam)]


def test_lora_decoding_with_the_lean_step_equals_peft_generate(tiny_family, tmp_path):
    """The lean step calls the blocks' modules, so LoRA's wrapped projections take part: greedy and beam
    summaries equal `generate` of the PEFT model at batch 1."""
    from method_utils import make_run

    _run, _cfg, model, tokenizer = make_run(tmp_path / "run", tiny_family("llama"), "lora", sets=("method.r=4",),
                                            steps=2)
    model.eval()
    prompts = _prompts(tokenizer, 4)
    eos = tokenizer.eos_token_id
    greedy, beam = EvalConfig(batch_size=4, max_new_tokens=NEW), EvalConfig(batch_size=8, num_beams=2,
                                                                           max_new_tokens=NEW)
    expected = {id(ev): [_hf_decoding(model, p, eos, ev) for p in prompts] for ev in (greedy, beam)}
    assert "lean_decode_step" in speed_up(model, inference=True)["applied"]
    for ev in (greedy, beam):
        assert _ours(model, tokenizer, ev, prompts) == expected[id(ev)]
