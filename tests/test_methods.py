"""The five methods: references (PEFT prompt tuning, the base model), freezing, counts, save/load."""

from __future__ import annotations

import json

import pytest
import torch
from method_utils import options, padded_batch, train_steps

from sumtune.errors import UserError
from sumtune.methods import get_method
from sumtune.methods.prompt_tuning.method import SoftPromptModel
from sumtune.modeling import count_params, load_model, load_tokenizer

ARCHS = ["tiny_neo", "tiny_gpt2"]


@pytest.fixture(params=ARCHS)
def model_dir(request):
    return request.getfixturevalue(request.param)


def _base(model_dir):
    return load_model(str(model_dir)).eval(), load_tokenizer(str(model_dir))


def _snapshot(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _dims(model) -> tuple[int, int, int]:
    c = model.config
    return c.vocab_size, c.hidden_size, c.num_hidden_layers


# ---------------------------------------------------------------- prompt tuning

def _peft_prompt_model(model_dir, prompt: torch.Tensor):
    from peft import PromptTuningConfig, get_peft_model

    peft = get_peft_model(load_model(str(model_dir)).eval(), PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=prompt.shape[0], prompt_tuning_init="RANDOM"))
    with torch.no_grad():
        peft.prompt_encoder["default"].embedding.weight.copy_(prompt)
    return peft.eval()


def test_soft_prompt_logits_and_loss_match_peft(model_dir):
    base, tok = _base(model_dir)
    cfg = options("prompt_tuning", n_tokens=7)
    ours = get_method("prompt_tuning").prepare(base, tok, cfg).eval()
    with torch.no_grad():  # a prompt unlike any init, so the comparison cannot pass by accident
        ours.soft_prompt.add_(torch.randn_like(ours.soft_prompt))
    peft = _peft_prompt_model(model_dir, ours.soft_prompt)
    batch = padded_batch(tok)
    with torch.no_grad():
        a, b = ours(**batch), peft(**batch)
    assert a.logits.shape == (*batch["input_ids"].shape, base.config.vocab_size)
    torch.testing.assert_close(a.logits, b.logits[:, 7:], rtol=0, atol=1e-5)
    torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=1e-5)


def test_soft_prompt_text_init_matches_peft(tiny_neo):
    from peft import PromptTuningConfig, get_peft_model

    base, tok = _base(tiny_neo)
    cfg = options("prompt_tuning", n_tokens=25, init_text="Summarize this news article:")
    ours = get_method("prompt_tuning").prepare(base, tok, cfg)
    peft = get_peft_model(load_model(str(tiny_neo)), PromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=25, prompt_tuning_init="TEXT",
        prompt_tuning_init_text=cfg.init_text, tokenizer_name_or_path=str(tiny_neo)))
    assert len(tok(cfg.init_text)["input_ids"]) < 25  # exercises the repetition
    assert torch.equal(ours.soft_prompt, peft.prompt_encoder["default"].embedding.weight)


def test_soft_prompt_random_init_uses_vocabulary_rows(tiny_neo):
    base, tok = _base(tiny_neo)
    ours = get_method("prompt_tuning").prepare(base, tok, options("prompt_tuning", n_tokens=5,
                                                                      init_random=True))
    emb = base.get_input_embeddings().weight
    for row in ours.soft_prompt:
        assert (emb == row).all(dim=1).any()


def test_soft_prompt_only_prompt_trains(model_dir):
    base, tok = _base(model_dir)
    _, hidden, _ = _dims(base)
    _, base_total = count_params(base)
    model = get_method("prompt_tuning").prepare(base, tok, options("prompt_tuning", n_tokens=6))
    assert count_params(model) == (6 * hidden, base_total + 6 * hidden)
    before, prompt0 = _snapshot(model.base), model.soft_prompt.detach().clone()
    train_steps(model, padded_batch(tok), steps=4)
    for n, p in model.base.named_parameters():
        assert torch.equal(p, before[n]), n
    assert not torch.equal(model.soft_prompt, prompt0)


def test_soft_prompt_saves_in_peft_format_and_loads_in_peft(model_dir, tmp_path):
    from peft import PeftModel, PromptTuningConfig, get_peft_model
    from safetensors import safe_open

    base, tok = _base(model_dir)
    method = get_method("prompt_tuning")
    cfg = options("prompt_tuning", n_tokens=5)
    model = method.prepare(base, tok, cfg)
    batch = padded_batch(tok)
    train_steps(model, batch)
    method.save(model, tmp_path / "adapter", {"method": "prompt_tuning", "method_config": method.method_config(cfg)})

    # PEFT's own save of the same kind of adapter: same file names, tensor keys and config keys
    ref = get_peft_model(load_model(str(model_dir)), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5))
    ref.save_pretrained(tmp_path / "ref")
    for f in ("adapter_config.json", "adapter_model.safetensors"):
        assert (tmp_path / "adapter" / f).is_file()
    with safe_open(tmp_path / "adapter" / "adapter_model.safetensors", "pt") as a, \
            safe_open(tmp_path / "ref" / "adapter_model.safetensors", "pt") as r:
        assert a.keys() == r.keys() and a.metadata() == r.metadata()
    ours_cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    ref_cfg = json.loads((tmp_path / "ref" / "adapter_config.json").read_text())
    assert ours_cfg.keys() == ref_cfg.keys()
    for k in ("peft_type", "task_type", "num_virtual_tokens", "token_dim", "num_transformer_submodules"):
        assert ours_cfg[k] == ref_cfg[k], k

    peft = PeftModel.from_pretrained(load_model(str(model_dir)), str(tmp_path / "adapter")).eval()
    loaded = method.load(load_model(str(model_dir)), tok, tmp_path / "adapter", cfg).eval()
    with torch.no_grad():
        expected = model(**batch).logits
        torch.testing.assert_close(peft(**batch).logits[:, 5:], expected, rtol=0, atol=1e-5)
        assert torch.equal(loaded(**batch).logits, expected)
    assert isinstance(loaded, SoftPromptModel) and not any(p.requires_grad for p in loaded.parameters())


def test_soft_prompt_cannot_be_merged(tiny_neo):
    base, tok = _base(tiny_neo)
    model = get_method("prompt_tuning").prepare(base, tok, options("prompt_tuning"))
    with pytest.raises(UserError, match="cannot be exported as a plain model: its soft prompt"):
        get_method("prompt_tuning").merged(model)


# ---------------------------------------------------------------- LoRA

# LoRA parameters per block, r * (in + out) summed over the default targets:
# GPT-Neo q,k,v,out_proj (h->h) + c_fc (h->4h) + c_proj (4h->h) = r * 18h;
# GPT-2 c_attn (h->3h) + attn.c_proj (h->h) + c_fc (h->4h) + mlp.c_proj (4h->h) = r * 16h.
LORA_PER_BLOCK = {"gpt_neo": 18, "gpt2": 16}


def test_lora_equals_base_at_init_and_trains_only_lora(model_dir):
    base, tok = _base(model_dir)
    _, hidden, layers = _dims(base)
    _, base_total = count_params(base)
    batch = padded_batch(tok)
    with torch.no_grad():
        reference = base(**batch).logits
    model = get_method("lora").prepare(base, tok, options("lora", r=4, alpha=8))
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(**batch).logits, reference)
    expected = 4 * LORA_PER_BLOCK[base.config.model_type] * hidden * layers
    assert count_params(model) == (expected, base_total + expected)
    assert all("lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    train_steps(model, batch)
    for n, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, before[n]), n
    with torch.no_grad():
        assert not torch.allclose(model(**batch).logits, reference)


def test_lora_adapter_loads_in_plain_peft(model_dir, tmp_path):
    from peft import PeftModel

    base, tok = _base(model_dir)
    method = get_method("lora")
    cfg = options("lora", r=4)
    model = method.prepare(base, tok, cfg)
    batch = padded_batch(tok)
    train_steps(model, batch)
    method.save(model, tmp_path / "adapter", {"method": "lora"})
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()
    peft = PeftModel.from_pretrained(load_model(str(model_dir)), str(tmp_path / "adapter")).eval()
    loaded = method.load(load_model(str(model_dir)), tok, tmp_path / "adapter", cfg).eval()
    with torch.no_grad():
        expected = model(**batch).logits
        torch.testing.assert_close(peft(**batch).logits, expected, rtol=0, atol=1e-6)
        torch.testing.assert_close(loaded(**batch).logits, expected, rtol=0, atol=1e-6)
    assert not any(p.requires_grad for p in loaded.parameters())


# ---------------------------------------------------------------- last layers

# Parameters of one transformer block (hidden h, MLP 4h): GPT-Neo has no q/k/v biases.
BLOCK = {"gpt_neo": lambda h: 12 * h * h + 10 * h, "gpt2": lambda h: 12 * h * h + 13 * h}


@pytest.mark.parametrize("k,norm", [(0, False), (1, True)])
def test_last_layers_freezes_everything_else(model_dir, k, norm):
    base, tok = _base(model_dir)
    vocab, hidden, _ = _dims(base)
    _, base_total = count_params(base)
    cfg = options("last_layers", last_k_blocks=k, train_final_norm=norm)
    model = get_method("last_layers").prepare(base, tok, cfg)
    head, emb = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert head is not emb and torch.equal(head, emb)  # untied: a trainable copy
    expected = vocab * hidden + (2 * hidden if norm else 0) + k * BLOCK[model.config.model_type](hidden)
    assert count_params(model) == (expected, base_total + vocab * hidden)
    before = _snapshot(model)
    train_steps(model, padded_batch(tok))
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != p.requires_grad, n  # frozen: unchanged; trained: changed
    assert torch.equal(model.get_input_embeddings().weight, before["transformer.wte.weight"])


def test_last_layers_rejects_too_many_blocks(tiny_neo):
    base, tok = _base(tiny_neo)
    with pytest.raises(UserError, match="method.last_k_blocks"):
        get_method("last_layers").prepare(base, tok, options("last_layers", last_k_blocks=3))


@pytest.mark.parametrize("name,cfg", [
    ("last_layers", options("last_layers", last_k_blocks=1, train_final_norm=True)),
    ("full", options("full")),
])
def test_saved_weights_round_trip(tiny_gpt2, tmp_path, name, cfg):
    from safetensors import safe_open

    base, tok = _base(tiny_gpt2)
    method = get_method(name)
    model = method.prepare(base, tok, cfg)
    batch = padded_batch(tok)
    train_steps(model, batch)
    method.save(model, tmp_path / "adapter", {"method": name})
    with safe_open(tmp_path / "adapter" / method.weights_file, "pt") as f:
        assert set(f.keys()) == {n for n, p in model.named_parameters() if p.requires_grad}
    loaded = method.load(load_model(str(tiny_gpt2)), tok, tmp_path / "adapter", cfg).eval()
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    assert not any(p.requires_grad for p in loaded.parameters())


@pytest.mark.parametrize("k,norm", [(1, False), (2, True), (0, True)])
def test_last_layers_without_head_keeps_it_tied_and_frozen(model_dir, k, norm):
    """train_head=false: the classic baseline. Blocks/norm train; the head stays the input embeddings'
    tensor (not copied, config untouched) and neither moves, even at a large rate."""
    base, tok = _base(model_dir)
    _, hidden, _ = _dims(base)
    _, base_total = count_params(base)
    tied = base.config.tie_word_embeddings
    emb0 = base.get_input_embeddings().weight
    ptr = emb0.data_ptr()
    cfg = options("last_layers", last_k_blocks=k, train_final_norm=norm, train_head=False)
    model = get_method("last_layers").prepare(base, tok, cfg)
    head, emb = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert tied and head is emb is emb0 and not head.requires_grad
    assert model.config.tie_word_embeddings == tied
    expected = (2 * hidden if norm else 0) + k * BLOCK[model.config.model_type](hidden)
    assert count_params(model) == (expected, base_total)  # no extra matrix
    before = _snapshot(model)
    train_steps(model, padded_batch(tok), steps=4, lr=1.0)
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n]) != p.requires_grad, n  # frozen: unchanged; trained: changed
    head, emb = model.get_output_embeddings().weight, model.get_input_embeddings().weight
    assert head is emb is emb0 and emb.data_ptr() == ptr
    assert torch.equal(emb, before["transformer.wte.weight"])


def test_last_layers_without_head_needs_something_to_train(tiny_neo):
    from sumtune.config import build_config

    base, tok = _base(tiny_neo)
    cfg = options("last_layers", train_head=False)
    for fail in (lambda: get_method("last_layers").prepare(base, tok, cfg),
                 lambda: build_config(sets=["method.name=last_layers", "method.train_head=false"])):
        with pytest.raises(UserError) as e:
            fail()
        msg = str(e.value)
        assert "\n" not in msg
        assert all(key in msg for key in ("method.train_head", "method.last_k_blocks", "method.train_final_norm"))
    # a key of another method is refused, naming the method that has it
    with pytest.raises(UserError, match="method lora has no key 'train_head'.*last_layers has it"):
        build_config(sets=["method.name=lora", "method.train_head=false"])


@pytest.mark.parametrize("train_head", [True, False])
def test_last_layers_save_load_merge_round_trip(model_dir, tmp_path, train_head):
    from safetensors import safe_open

    base, tok = _base(model_dir)
    method = get_method("last_layers")
    cfg = options("last_layers", last_k_blocks=1, train_head=train_head)
    assert method.method_config(cfg) == {"last_k_blocks": 1, "train_final_norm": False, "train_head": train_head}
    model = method.prepare(base, tok, cfg)
    batch = padded_batch(tok)
    train_steps(model, batch)
    method.save(model, tmp_path / "adapter", {"method": "last_layers", "method_config": method.method_config(cfg)})
    with safe_open(tmp_path / "adapter" / method.weights_file, "pt") as f:
        keys = set(f.keys())
    assert keys == {n for n, p in model.named_parameters() if p.requires_grad}
    assert ("lm_head.weight" in keys) == train_head and all(".h.1." in k for k in keys if k != "lm_head.weight")
    loaded = method.load(load_model(str(model_dir)), tok, tmp_path / "adapter", cfg).eval()
    assert not any(p.requires_grad for p in loaded.parameters())
    tied = loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    assert tied != train_head and loaded.config.tie_word_embeddings != train_head
    with torch.no_grad():
        expected = model(**batch).logits
        assert torch.equal(loaded(**batch).logits, expected)
        assert torch.equal(method.merged(loaded)(**batch).logits, expected)
    # the weights of one variant do not load as the other: one line naming the tensor
    other = options("last_layers", last_k_blocks=1, train_head=not train_head)
    with pytest.raises(UserError, match="'lm_head.weight'.*other method settings"):
        method.load(load_model(str(model_dir)), tok, tmp_path / "adapter", other)


@pytest.mark.parametrize("name,cfg,text", [
    ("zero_shot", options("zero_shot"), "nothing (base model)"),
    ("prompt_tuning", options("prompt_tuning"), "soft prompt, 20 tokens"),
    ("prompt_tuning", options("prompt_tuning", n_tokens=1), "soft prompt, 1 token"),
    ("lora", options("lora"), "LoRA r=8 α=16 on attention+MLP"),
    ("lora", options("lora", r=4, alpha=8, target_modules=["q_proj", "v_proj"]),
     "LoRA r=4 α=8 on q_proj, v_proj"),
    ("last_layers", options("last_layers"), "LM head (untied copy)"),
    ("last_layers", options("last_layers", last_k_blocks=2, train_final_norm=True, train_head=False),
     "last 2 blocks + final norm (head tied, frozen)"),
    ("last_layers", options("last_layers", last_k_blocks=1, train_head=False), "last block (head tied, frozen)"),
    ("last_layers", options("last_layers", train_final_norm=True, train_head=False),
     "final norm (head tied, frozen)"),
    ("last_layers", options("last_layers", last_k_blocks=2), "LM head (untied) + last 2 blocks"),
    ("last_layers", options("last_layers", train_final_norm=True), "LM head (untied) + final norm"),
    ("full", options("full"), "all weights"),
])
def test_describe_says_what_trains(name, cfg, text):
    assert get_method(name).describe(cfg) == text


# ---------------------------------------------------------------- full, zero-shot

def test_full_trains_everything(model_dir):
    base, tok = _base(model_dir)
    _, base_total = count_params(base)
    model = get_method("full").prepare(base, tok, options("full"))
    assert count_params(model) == (base_total, base_total)
    before = _snapshot(model)
    train_steps(model, padded_batch(tok))
    assert not torch.equal(model.transformer.wte.weight, before["transformer.wte.weight"])
    assert not torch.equal(model.transformer.h[0].mlp.c_fc.weight, before["transformer.h.0.mlp.c_fc.weight"])


def test_zero_shot_is_the_base_model(tiny_neo, tmp_path):
    base, tok = _base(tiny_neo)
    method = get_method("zero_shot")
    assert method.trains is False
    model = method.prepare(base, tok, options("zero_shot"))
    assert model is base and count_params(model)[0] == 0
    method.save(model, tmp_path / "adapter", {"method": "zero_shot"})
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["sumtune.json"]
    loaded = method.load(load_model(str(tiny_neo)), tok, tmp_path / "adapter", options("zero_shot"))
    batch = padded_batch(tok)
    with torch.no_grad():
        assert torch.equal(loaded.eval()(**batch).logits, base(**batch).logits)


def test_unknown_method_is_one_line_error():
    with pytest.raises(UserError, match="choose one of: zero_shot, prompt_tuning, prefix_tuning, p_tuning, lora, ia3, last_layers, full"):
        get_method("adapters")
