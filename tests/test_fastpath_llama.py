"""The Llama layout's training fast paths against their references: Transformers' own RMSNorm,
rotary embeddings, gated MLP and attention (losses and gradients up to rounding), the hand-written
backwards against numerical differentiation, and apply + revert giving the untouched model back."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from method_utils import padded_batch
from test_fastpath import (
    _assert_close_grads,
    _assert_same,
    _hf_loss_sum,
    _loss_and_grads,
    _method_model,
    _snapshot,
)
from transformers.models.llama.modeling_llama import LlamaRMSNorm, apply_rotary_pos_emb, repeat_kv

from sumtune.fastpath import FastPathContext, apply_fast_paths, fast_token_loss_sum, revert_fast_paths
from sumtune.fastpath.rmsnorm import RMSNormFunction
from sumtune.fastpath.rotary import FastLlamaAttention, gqa_sdpa, rotate_qk
from sumtune.fastpath.swiglu import SwiGLUFunction

LLAMA_PATHS = ("fused_rmsnorm", "fused_rotary", "gqa_attention", "fused_swiglu", "label_rows_last_block")
TRAIN = FastPathContext(training=True)
TOL = 1e-5


def test_rmsnorm_matches_llama_and_its_backward_is_the_derivative():
    torch.manual_seed(0)
    ref = LlamaRMSNorm(24, eps=1e-5)
    torch.nn.init.normal_(ref.weight)
    x = torch.randn(3, 7, 24)
    torch.testing.assert_close(RMSNormFunction.apply(x, ref.weight, 1e-5), ref(x), rtol=TOL, atol=TOL)
    xd, wd = x.double().requires_grad_(), ref.weight.detach().double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: RMSNormFunction.apply(a, b, 1e-5), (xd, wd))


def test_rotary_matches_rotate_half_and_its_backward_is_the_derivative():
    torch.manual_seed(0)
    q, k = torch.randn(2, 9, 4, 8).transpose(1, 2), torch.randn(2, 2, 9, 8)  # q: a transposed view, as in Llama
    angles = torch.randn(2, 9, 4)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    for got, want in zip(rotate_qk(q, k, cos, sin), apply_rotary_pos_emb(q, k, cos, sin)):
        torch.testing.assert_close(got, want, rtol=TOL, atol=TOL)
    qd, kd = q.double().requires_grad_(), k.double().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: rotate_qk(a, b, cos.double(), sin.double()), (qd, kd))


def test_swiglu_matches_silu_times_up_and_its_backward_is_the_derivative():
    torch.manual_seed(0)
    gate, up = torch.randn(3, 5, 12), torch.randn(3, 5, 12)
    torch.testing.assert_close(SwiGLUFunction.apply(gate, up), F.silu(gate) * up, rtol=TOL, atol=TOL)
    assert torch.autograd.gradcheck(SwiGLUFunction.apply, (gate.double().requires_grad_(), up.double().requires_grad_()))


@pytest.mark.parametrize("masked", [True, False])
def test_gqa_sdpa_matches_expanded_keys_and_values(tiny_family, masked):
    from sumtune.modeling import load_model

    attn = load_model(str(tiny_family("llama"))).model.layers[0].self_attn
    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 10, 16), torch.randn(2, 2, 10, 16), torch.randn(2, 2, 10, 16)
    causal = torch.ones(10, 10, dtype=torch.bool).tril()
    mask = causal & torch.tensor([[True] * 10, [True] * 6 + [False] * 4])[:, None, None, :] if masked else None
    want = F.scaled_dot_product_attention(q, repeat_kv(k, 2), repeat_kv(v, 2), attn_mask=mask,
                                          is_causal=mask is None, scale=attn.scaling).transpose(1, 2)
    torch.testing.assert_close(gqa_sdpa(attn, q, k, v, mask), want, rtol=TOL, atol=TOL)


@pytest.mark.parametrize("enabled", [(name,) for name in LLAMA_PATHS] + [LLAMA_PATHS, True])
@pytest.mark.parametrize("method,cfg", [("lora", {"dropout": 0.0}), ("prompt_tuning", {"n_tokens": 5}),
                                        ("full", {})])
def test_llama_paths_match_the_reference_loss_and_gradients(tiny_family, method, cfg, enabled):
    """Each path alone, the four together and every path: a padded batch (the masked attention) and the
    per-row label loss (the causal one), losses and gradients equal to the unpatched model's."""
    model, tok = _method_model(tiny_family("llama"), method, **cfg)
    batch = padded_batch(tok)
    ref = [_loss_and_grads(model, fn, batch) for fn in (_hf_loss_sum, fast_token_loss_sum)]
    applied = apply_fast_paths(model, TRAIN, set(enabled) if enabled is not True else True)
    assert set(LLAMA_PATHS if enabled is True else enabled) <= set(applied)
    assert any(type(m) is FastLlamaAttention for m in model.modules()) == bool({"fused_rotary", "gqa_attention"}
                                                                                 & set(applied))
    for fn, (want_loss, want_n, want_grads) in zip((_hf_loss_sum, fast_token_loss_sum), ref):
        loss, n, grads = _loss_and_grads(model, fn, batch)
        assert n == want_n
        torch.testing.assert_close(loss, want_loss, rtol=TOL, atol=TOL)
        _assert_close_grads(grads, want_grads)
    revert_fast_paths(model)


@pytest.mark.parametrize("method,cfg", [("lora", {}), ("prompt_tuning", {"n_tokens": 5})])
def test_llama_paths_apply_then_revert_give_the_unpatched_model(tiny_family, method, cfg):
    model, tok = _method_model(tiny_family("llama"), method, **cfg)
    pristine = copy.deepcopy(model)
    want = _snapshot(pristine)
    batch = padded_batch(tok)
    for enabled in [{name} for name in LLAMA_PATHS] + [set(LLAMA_PATHS), True]:
        applied = apply_fast_paths(model, TRAIN, enabled)
        model.train()
        _hf_loss_sum(model, batch)[0].backward()
        model.zero_grad(set_to_none=True)
        revert_fast_paths(model)
        assert set(LLAMA_PATHS) & set(applied) == set(LLAMA_PATHS) & set(enabled if enabled is not True else LLAMA_PATHS)
        model.train(pristine.training)
        _assert_same(_snapshot(model), want)


def test_llama_paths_leave_decoding_and_gpt_neo_alone(tiny_family, tiny_neo):
    llama, _ = _method_model(tiny_family("llama"), "lora")
    assert not set(LLAMA_PATHS) & set(apply_fast_paths(llama, FastPathContext(training=False), True))
    revert_fast_paths(llama)
    neo, _ = _method_model(tiny_neo, "lora")
    assert not set(LLAMA_PATHS) & set(apply_fast_paths(neo, TRAIN, True))
    revert_fast_paths(neo)


@pytest.mark.slow
def test_compiled_blocks_match_the_reference_and_revert(tiny_family):
    """train.compile: the blocks through inductor give the reference loss and gradients; the hand-fused
    Llama ops stand aside; revert gives the eager blocks back."""
    model, tok = _method_model(tiny_family("llama"), "lora", dropout=0.0)
    batch = padded_batch(tok)
    want_loss, want_n, want_grads = _loss_and_grads(model, fast_token_loss_sum, batch)
    applied = apply_fast_paths(model, FastPathContext(training=True, compile=True), True)
    assert "compiled_blocks" in applied and not {"fused_rmsnorm", "fused_rotary", "fused_swiglu"} & set(applied)
    loss, n, grads = _loss_and_grads(model, fast_token_loss_sum, batch)
    assert n == want_n
    torch.testing.assert_close(loss, want_loss, rtol=1e-4, atol=1e-4)
    _assert_close_grads(grads, want_grads, tol=1e-4)
    revert_fast_paths(model)
    assert all(m._compiled_call_impl is None for m in model.modules() if hasattr(m, "_compiled_call_impl")
               and type(m).__name__.endswith("DecoderLayer"))


@pytest.mark.parametrize("arch,method,cfg", [("llama", "lora", {"dropout": 0.0}), ("llama", "prompt_tuning", {"n_tokens": 5}),
                                             ("qwen2", "prompt_tuning", {"n_tokens": 5})])
@pytest.mark.parametrize("setting", ["sdpa", "eager", "checkpointing"])
def test_last_block_runs_only_the_labelled_rows(tiny_family, arch, method, cfg, setting):
    """label_rows_last_block: the label loss's last block computes its MLP at the labelled positions
    only (after a method's virtual tokens), with the loss and gradients of the whole block, under SDPA
    (no mask) and eager attention (Transformers' additive mask); under gradient checkpointing (which
    reruns the block in backward) the block runs whole."""
    from sumtune.fastpath.last_block import last_block
    from sumtune.fastpath.loss import find_lm

    model, tok = _method_model(tiny_family(arch), method, **cfg)
    checkpointing = setting == "checkpointing"
    if setting == "eager":
        find_lm(model).set_attn_implementation("eager")
    if checkpointing:
        find_lm(model).gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    batch = padded_batch(tok)
    lengths = batch["attention_mask"].sum(1)
    batch["labels"] = torch.where(torch.arange(batch["labels"].shape[1]) >= lengths[:, None] - 3, batch["labels"], -100)
    want_loss, want_n, want_grads = _loss_and_grads(model, fast_token_loss_sum, batch)
    assert apply_fast_paths(model, TRAIN, {"label_rows_last_block"}) == ["label_rows_last_block"]
    rows = []
    hook = last_block(model).mlp.register_forward_hook(lambda m, args, out: rows.append(args[0].shape[1]))
    loss, n, grads = _loss_and_grads(model, fast_token_loss_sum, batch)
    hook.remove()
    assert n == want_n
    torch.testing.assert_close(loss, want_loss, rtol=TOL, atol=TOL)
    _assert_close_grads(grads, want_grads)
    labelled = (batch["labels"][:, 1:] != -100).sum(1).tolist()  # positions whose next token is a label
    whole = [int(x) - 1 + cfg.get("n_tokens", 0) for x in lengths]  # each row up to its last such position
    assert rows[:len(whole)] == (whole if checkpointing else labelled) and labelled != whole
    revert_fast_paths(model)
