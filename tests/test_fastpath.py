"""Every fast path against its reference: Transformers' eager attention and `generate`,
Hugging Face's own causal-LM loss, PEFT's LoRA forward, the uncached head loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from method_utils import options, padded_batch
from torch import nn

from sumtune.fastpath import select_loss, speed_up
from sumtune.fastpath.attention import GPTNeoSdpaAttention, set_attention
from sumtune.fastpath.features import CachedHeadLoss, FeatureCache
from sumtune.fastpath.gelu import set_fast_gelu
from sumtune.fastpath.head import set_fast_head
from sumtune.fastpath.lora import keep_mask, set_fast_lora
from sumtune.fastpath.loss import fast_token_loss_sum, head_loss_sum
from sumtune.methods import get_method
from sumtune.modeling import load_model, load_tokenizer

TOL = 1e-5


def _batch(vocab: int, seed: int = 0, lengths=(40, 29, 33), prompt: int = 18) -> dict[str, torch.Tensor]:
    """Right-padded rows longer than the tiny GPT-Neo's local window (16), labels after `prompt`."""
    g = torch.Generator().manual_seed(seed)
    width = max(lengths)
    ids = torch.randint(1, vocab, (len(lengths), width), generator=g)
    mask = torch.zeros_like(ids)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :prompt] = -100
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _hf_loss_sum(model, batch) -> tuple[torch.Tensor, int]:
    """Reference: Hugging Face's mean causal-LM loss over the full logits, times the label count."""
    n = int((batch["labels"][:, 1:] != -100).sum())
    return model(**batch).loss * n, n


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _loss_and_grads(model, fn, batch):
    model.zero_grad(set_to_none=True)
    loss, n = fn(model, batch)
    loss.backward()
    return loss.detach(), n, _grads(model)


def _assert_close_grads(a: dict, b: dict, tol: float = TOL) -> None:
    assert a.keys() == b.keys() and a
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=tol, atol=tol, msg=k)


# ---------------------------------------------------------------- attention

def test_gpt_neo_sdpa_matches_eager_forward_backward_and_padding(tiny_neo):
    model = load_model(str(tiny_neo)).train()
    for p in model.parameters():
        p.requires_grad_(True)
    batch = _batch(model.config.vocab_size)
    left = dict(batch, attention_mask=batch["attention_mask"].flip(1), input_ids=batch["input_ids"].flip(1))
    out = {}
    for impl in ("eager", "sdpa"):
        assert set_attention(model, impl) == impl
        model.zero_grad()
        loss, _ = _hf_loss_sum(model, batch)
        loss.backward()
        with torch.no_grad():
            left_logits = model(input_ids=left["input_ids"], attention_mask=left["attention_mask"]).logits
        out[impl] = (loss.detach(), _grads(model), model(**batch).logits.detach(), left_logits)
    assert isinstance(model.transformer.h[1].attn.attention, GPTNeoSdpaAttention)
    assert model.transformer.h[1].attn.attention.attention_type == "local"
    torch.testing.assert_close(out["sdpa"][0], out["eager"][0], rtol=TOL, atol=TOL)
    _assert_close_grads(out["sdpa"][1], out["eager"][1])
    for i, mask in ((2, batch["attention_mask"]), (3, left["attention_mask"])):  # real positions only
        real = mask.bool()
        torch.testing.assert_close(out["sdpa"][i][real], out["eager"][i][real], rtol=TOL, atol=TOL)


@pytest.mark.parametrize("length", [40, 48, 16, 9])  # 3 blocks, 3 full blocks, one window, under it
def test_blocked_local_attention_matches_eager_and_sdpa(tiny_neo, monkeypatch, length):
    from sumtune.fastpath import apply_fast_paths
    from sumtune.fastpath.attention import GPTNeoBlockedLocalAttention

    model = load_model(str(tiny_neo)).train()
    for p in model.parameters():
        p.requires_grad_(True)
    batch = _batch(model.config.vocab_size, lengths=(length, length), prompt=4)  # no padding: mask None
    calls = []
    sdpa = F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda *a, **k: calls.append(a[0].shape[-2]) or sdpa(*a, **k))
    out = {}
    for name in ("eager", "sdpa", "blocked"):
        enabled = {"eager": set(), "sdpa": {"sdpa_attention"}, "blocked": {"sdpa_attention", "blocked_local_attention"}}
        applied = apply_fast_paths(model, FastPathContext(training=True), enabled[name])
        assert set(applied) == enabled[name]
        calls.clear()
        model.zero_grad()
        loss, _ = _hf_loss_sum(model, batch)
        loss.backward()
        out[name] = (loss.detach(), _grads(model), list(calls))
    assert isinstance(model.transformer.h[1].attn.attention, GPTNeoBlockedLocalAttention)
    assert type(model.transformer.h[0].attn.attention) is GPTNeoSdpaAttention  # global layers unchanged
    w, layers = model.config.window_size, model.config.num_layers
    blocks = -(-length // w) if length > w else 1
    assert len(out["blocked"][2]) == layers // 2 * (1 + blocks)  # one call per global layer, one per block
    for ref in ("eager", "sdpa"):
        torch.testing.assert_close(out["blocked"][0], out[ref][0], rtol=TOL, atol=TOL)
        _assert_close_grads(out["blocked"][1], out[ref][1])
    revert_fast_paths(model)
    assert type(model.transformer.h[1].attn.attention).__name__ == "GPTNeoSelfAttention"


def test_gpt_neo_sdpa_generate_with_cache_matches_eager(tiny_neo):
    model = load_model(str(tiny_neo)).eval()
    ids = _batch(model.config.vocab_size, lengths=(30, 30))["input_ids"]
    mask = torch.ones_like(ids)
    mask[1, :9] = 0  # left padding in a batch
    kw = dict(attention_mask=mask, max_new_tokens=12, do_sample=False, pad_token_id=0,
              output_logits=True, return_dict_in_generate=True)
    set_attention(model, "eager")
    ref = model.generate(ids, **kw)
    speed_up(model, inference=True)  # SDPA and the few-rows head (decoding only)
    out = model.generate(ids, **kw)
    assert torch.equal(out.sequences, ref.sequences)  # 42 tokens: past the window of 16
    torch.testing.assert_close(torch.stack(out.logits), torch.stack(ref.logits), rtol=TOL, atol=TOL)


def test_gpt2_uses_transformers_sdpa(tiny_gpt2):
    model = load_model(str(tiny_gpt2)).eval()
    batch = _batch(model.config.vocab_size)
    assert set_attention(model, "eager") == "eager"
    ref = model(**batch).logits
    assert set_attention(model, "auto") == "sdpa"
    real = batch["attention_mask"].bool()
    torch.testing.assert_close(model(**batch).logits[real], ref[real], rtol=TOL, atol=TOL)


def test_few_rows_head_matches_linear(tiny_neo):
    model = load_model(str(tiny_neo))
    head = model.lm_head
    xs = [torch.randn(rows, 1, model.config.hidden_size) for rows in (1, 8, 40)]
    xs += [torch.randn(rows, 5, model.config.hidden_size)[:, -1:] for rows in (1, 3)]  # logits_to_keep=1
    refs = [head(x) for x in xs]
    assert set_fast_head(model) and type(model.lm_head).__name__ == "FewRowsLinear"
    for x, ref in zip(xs, refs):
        torch.testing.assert_close(head(x), ref, rtol=TOL, atol=TOL)


def test_few_rows_head_keeps_f_linear_where_that_measures_faster(tiny_neo, monkeypatch, caplog):
    """The shortcut-or-F.linear choice, with injected timings: F.linear where it is faster (or
    nearly as fast), the shortcut only where it is clearly faster; one measurement per rows bucket."""
    import logging

    from sumtune.fastpath import head as head_mod

    assert not head_mod.pick_shortcut([0.010, 0.011], [0.015, 0.014])  # F.linear faster
    assert not head_mod.pick_shortcut([0.010, 0.012], [0.0095, 0.02])  # a near tie keeps the reference
    assert head_mod.pick_shortcut([0.020, 0.021], [0.011, 0.013])
    assert [head_mod.rows_bucket(r) for r in (1, 2, 3, 5, 8, 9, 16)] == [1, 2, 4, 8, 8, 16, 16]

    model = load_model(str(tiny_neo))
    head = model.lm_head
    xs = [torch.randn(rows, 1, model.config.hidden_size) for rows in (8, 7, 2)]
    refs = [head(x) for x in xs]
    set_fast_head(model)
    measured, shortcut_calls = [], []
    real_shortcut = head_mod._shortcut
    monkeypatch.setattr(head_mod, "_shortcut", lambda *a: shortcut_calls.append(1) or real_shortcut(*a))
    for linear_s, shortcut_s, expect in (([1.0, 1.0], [2.0, 1.5], False), ([2.0, 2.0], [1.0, 1.5], True)):
        monkeypatch.setattr(head_mod, "_CHOICES", {})
        monkeypatch.setattr(head_mod, "time_both", lambda *a, t=(linear_s, shortcut_s): measured.append(1) or t)
        measured.clear()
        shortcut_calls.clear()
        with caplog.at_level(logging.DEBUG, logger="sumtune.fastpath.head"):
            outs = [head(x) for x in xs]
        assert len(measured) == 2  # rows 8 and 7 share a bucket; rows 2 has its own
        assert len(shortcut_calls) == (3 if expect else 0)
        for out, ref in zip(outs, refs):
            if expect:
                torch.testing.assert_close(out, ref, rtol=TOL, atol=TOL)
            else:
                assert torch.equal(out, ref)  # the very F.linear of nn.Linear
        assert caplog.records[-1].getMessage().endswith("(W @ x.T).T" if expect else "F.linear")
        caplog.clear()


def test_fast_gelu_matches_gelu_new(tiny_neo):
    model = load_model(str(tiny_neo)).eval()
    batch = _batch(model.config.vocab_size)
    ref = model(**batch).logits
    assert set_fast_gelu(model) == model.config.num_layers
    torch.testing.assert_close(model(**batch).logits, ref, rtol=TOL, atol=TOL)


# ---------------------------------------------------------------- loss at label positions

def _method_model(model_dir, method: str, **cfg):
    tok = load_tokenizer(str(model_dir))
    base = load_model(str(model_dir))
    model = get_method(method).prepare(base, tok, options(method, **cfg))
    if method == "lora":  # PEFT starts B at zero; make the adapters matter
        torch.manual_seed(0)
        for n, p in model.named_parameters():
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05)
    return model.train(), tok


@pytest.mark.parametrize("arch", ["tiny_neo", "tiny_gpt2"])
@pytest.mark.parametrize("method,cfg", [("lora", {"dropout": 0.0}), ("prompt_tuning", {"n_tokens": 5}),
                                        ("last_layers", {"last_k_blocks": 1})])
def test_fast_loss_matches_hf_loss(request, arch, method, cfg):
    model, tok = _method_model(request.getfixturevalue(arch), method, **cfg)
    batch = padded_batch(tok)
    ref_loss, ref_n, ref_grads = _loss_and_grads(model, _hf_loss_sum, batch)
    info = speed_up(model)
    assert info["attention"] == "sdpa"
    loss, n, grads = _loss_and_grads(model, fast_token_loss_sum, batch)
    assert n == ref_n
    torch.testing.assert_close(loss, ref_loss, rtol=TOL, atol=TOL)
    _assert_close_grads(grads, ref_grads)


@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_fast_loss_in_one_padded_pass_matches_hf_loss(tiny_neo, method, monkeypatch):
    """The GPU/DDP variant: the whole batch in one pass, head at the labelled positions only."""
    monkeypatch.setattr("sumtune.fastpath.loss.one_pass_per_row", lambda model, device: False)
    model, tok = _method_model(tiny_neo, method, **({"dropout": 0.0} if method == "lora" else {"n_tokens": 5}))
    batch = _batch(model.config.vocab_size)
    ref_loss, _, ref_grads = _loss_and_grads(model, _hf_loss_sum, batch)
    speed_up(model)
    loss, _, grads = _loss_and_grads(model, fast_token_loss_sum, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=TOL, atol=TOL)
    _assert_close_grads(grads, ref_grads)


@pytest.mark.parametrize("bias", [False, True])
def test_linear_cross_entropy_matches_torch(bias):
    torch.manual_seed(0)
    head = torch.nn.Linear(16, 300, bias=bias)
    h = torch.randn(9, 16, requires_grad=True)
    y = torch.randint(0, 300, (9,))
    grads = []
    for fn in (lambda: F.cross_entropy(head(h), y, reduction="sum"), lambda: head_loss_sum(head, h, y)):
        head.zero_grad()
        h.grad = None
        loss = fn()
        (loss * 0.37).backward()  # a scale, as the trainer applies
        grads.append([loss.detach(), h.grad] + [p.grad for p in head.parameters()])
    for a, b in zip(*grads):
        torch.testing.assert_close(b, a, rtol=TOL, atol=TOL)


def test_fast_loss_bf16_within_one_percent(tiny_neo):
    model, tok = _method_model(tiny_neo, "lora", dropout=0.0)
    batch = _batch(model.config.vocab_size)
    ref, n = _hf_loss_sum(model, batch)
    speed_up(model)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, m = fast_token_loss_sum(model, batch)
    assert m == n
    assert abs(loss.item() - ref.item()) <= 1e-2 * abs(ref.item())


@pytest.mark.parametrize("arch", ["tiny_neo", "tiny_gpt2"])
def test_frozen_weights_cast_once_is_bit_identical_under_autocast(request, arch):
    model, _ = _method_model(request.getfixturevalue(arch), "lora", dropout=0.0)
    speed_up(model)
    batch = _batch(model.config.vocab_size)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref_loss, _, ref_grads = _loss_and_grads(model, fast_token_loss_sum, batch)
    assert speed_up(model, autocast=torch.bfloat16)["frozen_linears_cast"] > 0
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, grads = _loss_and_grads(model, fast_token_loss_sum, batch)
    assert torch.equal(loss, ref_loss)
    assert all(torch.equal(grads[k], ref_grads[k]) for k in ref_grads)


def test_fast_paths_switch_off(tiny_neo):
    model, _ = _method_model(tiny_neo, "lora", dropout=0.1)
    speed_up(model)
    assert select_loss(model, _hf_loss_sum, fast=False) is _hf_loss_sum
    assert select_loss(model, _hf_loss_sum) is fast_token_loss_sum
    set_fast_lora(model, False)
    assert speed_up(model, fast=False)["attention"] == "eager"
    assert type(model.base_model.model.transformer.h[0].attn.attention).__name__ == "GPTNeoSelfAttention"
    assert type(model.base_model.model.transformer.h[0].attn.attention.q_proj).__name__ == "Linear"


# ---------------------------------------------------------------- LoRA

def test_fast_lora_matches_peft_without_dropout(tiny_neo):
    model, _ = _method_model(tiny_neo, "lora", dropout=0.0)
    batch = _batch(model.config.vocab_size)
    ref_loss, _, ref_grads = _loss_and_grads(model, _hf_loss_sum, batch)
    assert set_fast_lora(model) == 6 * model.config.num_layers
    loss, _, grads = _loss_and_grads(model, _hf_loss_sum, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=TOL, atol=TOL)
    _assert_close_grads(grads, ref_grads)


def test_fast_lora_dropout_is_lora_of_dropped_input(tiny_neo, monkeypatch):
    """With the mask fixed, one layer's output is base(x) + B(A(x * mask / keep)) * scaling."""
    model, _ = _method_model(tiny_neo, "lora", dropout=0.3)
    set_fast_lora(model)
    layer = model.base_model.model.transformer.h[0].mlp.c_fc
    x = torch.randn(2, 7, layer.in_features)
    mask = torch.rand(x.shape) > 0.3
    monkeypatch.setattr("sumtune.fastpath.lora.keep_mask", lambda shape, p, device: (mask, 0.7))
    a, b = layer.lora_A["default"], layer.lora_B["default"]
    expected = layer.base_layer(x) + b(a(x * mask / 0.7)) * layer.scaling["default"]
    torch.testing.assert_close(layer(x), expected, rtol=TOL, atol=TOL)
    layer.eval()  # no dropout in eval mode: PEFT's forward exactly
    torch.testing.assert_close(layer(x), layer.base_layer(x) + b(a(x)) * layer.scaling["default"],
                               rtol=TOL, atol=TOL)


def test_fast_lora_layers_reading_one_input_share_one_mask(tiny_neo, monkeypatch):
    import sumtune.fastpath.lora as fl

    model, _ = _method_model(tiny_neo, "lora", dropout=0.3)
    set_fast_lora(model)
    attn = model.base_model.model.transformer.h[0].attn.attention
    draws = []
    real = fl.keep_mask
    monkeypatch.setattr(fl, "keep_mask", lambda *a: draws.append(a) or real(*a))
    x = torch.randn(2, 7, attn.q_proj.in_features)
    for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
        proj(x)
    assert len(draws) == 1
    attn.q_proj(x.clone())  # another tensor
    x.mul_(2)  # the same tensor, changed in place
    attn.q_proj(x)
    assert len(draws) == 3


def test_keep_mask_drop_rate_and_independence():
    torch.manual_seed(0)
    mask, keep = keep_mask(torch.Size([1000, 1000]), 0.05, torch.device("cpu"))
    assert mask.dtype == torch.bool and abs(keep - 0.95) < 2**-16
    assert abs(mask.float().mean().item() - keep) < 2e-3
    quads = mask.view(-1, 4).float()  # the four quarters of one random word
    for i, j in ((0, 1), (0, 3), (1, 2), (2, 3)):
        both = (quads[:, i] * quads[:, j]).mean().item()
        assert abs(both - keep**2) < 3e-3
    again, _ = keep_mask(torch.Size([1000, 1000]), 0.05, torch.device("cpu"))
    assert not torch.equal(mask, again)
    _, keep = keep_mask(torch.Size([10]), 0.9999999, torch.device("cpu"))  # p just below 1
    assert keep == 2**-16


# ---------------------------------------------------------------- feature cache

@pytest.mark.parametrize("norm", [False, True])
@pytest.mark.parametrize("memory_mb", [1024, 0])  # 0: every entry spills to disk
def test_feature_cache_matches_uncached(tiny_neo, norm, memory_mb):
    model, tok = _method_model(tiny_neo, "last_layers", last_k_blocks=0, train_final_norm=norm)
    cache, _ = _cached_equals_reference(model, memory_mb)
    assert len(cache) == 3 and (len(cache.disk) == 3) == (memory_mb == 0)
    cache.close()


def _cached_equals_reference(model, memory_mb: float):
    """With the fast paths on, the cached head loss gives the reference loss and gradients on
    a miss that fills the cache and on the hit after it; (the cache, the reference grads)."""
    speed_up(model)
    batch = _batch(model.config.vocab_size)
    ref_loss, ref_n, ref_grads = _loss_and_grads(model, _hf_loss_sum, batch)
    cache = FeatureCache(memory_mb)
    fn = CachedHeadLoss.for_model(model, cache)
    assert fn is not None
    for _ in range(2):  # a miss that fills the cache, then a hit
        loss, n, grads = _loss_and_grads(model, fn, batch)
        assert n == ref_n
        torch.testing.assert_close(loss, ref_loss, rtol=TOL, atol=TOL)
        _assert_close_grads(grads, ref_grads)
    return cache, ref_grads


@pytest.mark.parametrize("rows", [1024, 40])  # 40: the step's micro-batches go in several groups
def test_whole_step_cached_loss_equals_micro_batch_steps(tiny_neo, tmp_path, monkeypatch, rows):
    """The trainer hands the cached head loss a whole step at once: the update equals the
    reference loss's, micro-batch by micro-batch, over the same samples (fp32)."""
    from sumtune.config import build_config
    from sumtune.training import state, step

    monkeypatch.setattr(step, "WHOLE_STEP_ROWS", rows)
    cfg = build_config(flags={"model.name": str(tiny_neo), "train.precision": "fp32"})
    accelerator, _ = state.accelerator_for(cfg, tmp_path)
    batches = [(_batch(50, seed=s, lengths=(40, 29)), True) for s in range(3)]
    groups = step.groups_by_targets([b for b, _ in batches], [step.count_targets(b) for b, _ in batches], rows)
    assert [len(g) for g in groups] == ([3] if rows == 1024 else [1, 1, 1])
    results = []
    for fn in ("reference", "cached"):
        model, _ = _method_model(tiny_neo, "last_layers", last_k_blocks=0)
        speed_up(model)
        loss_fn = CachedHeadLoss.for_model(model) if fn == "cached" else _hf_loss_sum
        trained = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(trained, lr=0.5)  # the update is the gradient (Adam would magnify rounding)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        for _ in range(2):
            loss, n, *_ = step.optimizer_step(accelerator, model, opt, sched, loss_fn, batches, trained, 1.0)
        results.append((loss, n, [p.detach().clone() for p in trained]))
    (ref_loss, ref_n, ref_w), (loss, n, w) = results
    assert n == ref_n and loss == pytest.approx(ref_loss, rel=1e-5)
    for a, b in zip(w, ref_w):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch", ["tiny_neo", "tiny_gpt2"])
def test_last_blocks_with_tied_frozen_head_fast_equals_reference(request, tmp_path, arch):
    """train_head=false with a block: the body trains, so no feature cache; two optimizer steps with
    the fast paths (train.fast=true) and without (false) give the same losses and weights, and the
    tied head / input embeddings stay bit-identical either way."""
    from sumtune.config import build_config
    from sumtune.training import state, step

    cfg = build_config(flags={"model.name": str(request.getfixturevalue(arch)), "train.precision": "fp32"})
    accelerator, _ = state.accelerator_for(cfg, tmp_path)
    batches = [(_batch(50, seed=s, lengths=(40, 29)), True) for s in range(3)]
    results = {}
    for fast in (True, False):
        model, _ = _method_model(request.getfixturevalue(arch), "last_layers", last_k_blocks=1,
                                 train_final_norm=True, train_head=False)
        emb = model.get_input_embeddings().weight
        emb0 = emb.detach().clone()
        speed_up(model, fast)
        loss_fn = select_loss(model, step.token_loss_sum, fast)
        assert loss_fn is (fast_token_loss_sum if fast else step.token_loss_sum)
        trained = [p for p in model.parameters() if p.requires_grad]
        start = [p.detach().clone() for p in trained]
        opt = torch.optim.SGD(trained, lr=0.5)  # the update is the gradient (Adam would magnify rounding)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        losses = [step.optimizer_step(accelerator, model, opt, sched, loss_fn, batches, trained, 1.0)[:2]
                  for _ in range(2)]
        assert model.get_output_embeddings().weight is emb and torch.equal(emb, emb0)
        assert all(not torch.equal(p, p0) for p, p0 in zip(trained, start))
        results[fast] = (losses, {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad})
    (fast_losses, fast_w), (ref_losses, ref_w) = results[True], results[False]
    for (loss, n), (ref_loss, ref_n) in zip(fast_losses, ref_losses):
        assert n == ref_n and loss == pytest.approx(ref_loss, rel=1e-5)
    assert fast_w.keys() == ref_w.keys() and any(".h.1." in k for k in fast_w) and "lm_head.weight" not in fast_w
    for k in fast_w:
        torch.testing.assert_close(fast_w[k], ref_w[k], rtol=1e-5, atol=1e-6, msg=k)


@pytest.mark.parametrize("memory_mb", [1024, 0])
def test_feature_cache_with_tied_frozen_head_and_final_norm(tiny_neo, memory_mb):
    """train_head=false, only the final norm trains: the body below it is frozen, so the cache
    (which holds the norm's input) is exact; the head is applied frozen, as the tied matrix."""
    model, _ = _method_model(tiny_neo, "last_layers", train_final_norm=True, train_head=False)
    cache, ref_grads = _cached_equals_reference(model, memory_mb)
    assert set(ref_grads) == {"transformer.ln_f.weight", "transformer.ln_f.bias"}
    cache.close()


def test_feature_cache_only_when_exact(tiny_neo, tiny_gpt2):
    lora, _ = _method_model(tiny_neo, "lora")
    assert CachedHeadLoss.for_model(lora) is None  # the body trains
    deep, _ = _method_model(tiny_neo, "last_layers", last_k_blocks=1)
    assert CachedHeadLoss.for_model(deep) is None
    blocks, _ = _method_model(tiny_neo, "last_layers", last_k_blocks=1, train_head=False)
    assert CachedHeadLoss.for_model(blocks) is None  # a block trains, the head does not
    assert select_loss(blocks, _hf_loss_sum) is fast_token_loss_sum
    head, _ = _method_model(tiny_neo, "last_layers")
    assert isinstance(select_loss(head, _hf_loss_sum), CachedHeadLoss)
    assert select_loss(head, _hf_loss_sum, distributed=True) is fast_token_loss_sum
    head.transformer.drop.p = 0.1  # dropout in the body: features differ per epoch
    assert CachedHeadLoss.for_model(head) is None


@pytest.mark.parametrize("trainable", [False, True])
def test_head_cast_once_is_autocast_bit_for_bit(trainable):
    """The head's bf16 copy is made once per weight version and gives autocast's loss and gradients."""
    from sumtune.fastpath.loss import cached_low_weight, head_loss_sum

    torch.manual_seed(0)
    head = nn.Linear(16, 50, bias=False).requires_grad_(trainable)
    targets = torch.randint(0, 50, (6,))

    def run(fn):
        h = torch.randn(6, 16, generator=torch.Generator().manual_seed(1), requires_grad=True)
        head.weight.grad = None
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = fn(h)
        loss.backward()
        return loss.detach(), h.grad, head.weight.grad

    ref = run(lambda h: F.cross_entropy(F.linear(h, head.weight).float(), targets, reduction="sum"))
    fast = run(lambda h: head_loss_sum(head, h, targets))
    for a, b in zip(fast, ref):
        assert (a is None and b is None) or torch.equal(a, b)
    if trainable:  # fused AdamW updates the weight without bumping its version: never a stale copy
        opt = torch.optim.AdamW(head.parameters(), lr=0.1, fused=True)
        for _ in range(2):
            opt.step()
            fast = run(lambda h: head_loss_sum(head, h, targets))
            ref = run(lambda h: F.cross_entropy(F.linear(h, head.weight).float(), targets, reduction="sum"))
            assert torch.equal(fast[0], ref[0])
        return
    low = cached_low_weight(head)
    run(lambda h: head_loss_sum(head, h, targets))
    assert cached_low_weight(head) is low  # not cast again
    with torch.no_grad():
        head.weight.add_(1.0)  # changed in place (load_state_dict, resume)
    fast = run(lambda h: head_loss_sum(head, h, targets))
    ref = run(lambda h: F.cross_entropy(F.linear(h, head.weight).float(), targets, reduction="sum"))
    assert cached_low_weight(head) is not low and torch.equal(fast[0], ref[0])


@pytest.mark.parametrize("arch", ["tiny_neo", "tiny_gpt2"])
def test_cast_for_inference_gives_autocasts_logits(arch, request):
    """Decoding preparation: every linear (the tied head as its own copy) in bf16 once; the input
    embeddings stay fp32; logits under autocast match the uncast model's (and HF's head path)."""
    from sumtune.fastpath.precision import cast_for_inference

    model_dir = request.getfixturevalue(arch)
    ref, _ = _method_model(model_dir, "lora")
    ours, _ = _method_model(model_dir, "lora")
    ours.load_state_dict(ref.state_dict())
    ref.eval(), ours.eval()
    speed_up(ours, autocast=torch.bfloat16, inference=True)
    assert not any(p.requires_grad for p in ours.parameters())
    emb, head = ours.get_input_embeddings(), ours.get_output_embeddings()
    assert emb.weight.dtype == torch.float32 and head.weight.dtype == torch.bfloat16
    assert cast_for_inference(ours, torch.bfloat16) > 0
    ids = _batch(ours.config.vocab_size)["input_ids"][:1]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        want = ref(input_ids=ids).logits.float()
        got = ours(input_ids=ids).logits.float()
        last = ours(input_ids=ids[:, :5]).logits.float()[:, -1]  # few rows: the head's own path
    torch.testing.assert_close(got, want, rtol=0, atol=2e-2)
    torch.testing.assert_close(last, want[:, 4], rtol=0, atol=2e-2)


def test_fast_lora_under_bf16_autocast_matches_peft(tiny_neo):
    """bf16: the shared cast of a layer input (q, k, v, base and LoRA paths) changes only rounding."""
    model, _ = _method_model(tiny_neo, "lora", dropout=0.0)
    speed_up(model, autocast=torch.bfloat16)
    batch = _batch(model.config.vocab_size)
    runs = []
    for fast in (False, True):
        set_fast_lora(model, fast)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            runs.append(_loss_and_grads(model, fast_token_loss_sum, batch))
    (ref_loss, _, ref), (loss, _, got) = runs
    assert abs(loss.item() - ref_loss.item()) <= 1e-2 * abs(ref_loss.item())
    for k in ref:
        assert float((got[k] - ref[k]).norm() / ref[k].norm()) < 5e-2, k


@pytest.mark.filterwarnings("ignore:Model has `tie_word_embeddings=True`")  # PEFT: a LoRA on the tied head
def test_cast_for_inference_leaves_a_lora_wrapped_head_alone(tiny_neo):
    model, _ = _method_model(tiny_neo, "lora", target_modules=["lm_head", "q_proj"])
    model.eval()
    speed_up(model, autocast=torch.bfloat16, inference=True)
    ids = _batch(model.config.vocab_size)["input_ids"][:1]
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.isfinite(model(input_ids=ids).logits).all()


def test_cast_once_does_not_serve_a_graph_less_copy_to_autograd():
    from sumtune.fastpath.precision import cast_once

    x = torch.randn(3, 4, requires_grad=True) * 1.0
    with torch.no_grad():
        cast_once(x, torch.bfloat16)
    assert cast_once(x, torch.bfloat16).requires_grad


# ---------------------------------------------------------------- registry: apply, log, revert

from sumtune.config import FAST_PATH_NAMES, build_config  # noqa: E402
from sumtune.errors import UserError  # noqa: E402
from sumtune.fastpath import (  # noqa: E402
    FAST_PATHS,
    FastPathContext,
    apply_fast_paths,
    from_config,
    revert_fast_paths,
)
from sumtune.fastpath.loss import cached_low_weight, find_head  # noqa: E402
from sumtune.fastpath.precision import ACTIVATIONS  # noqa: E402

METHODS = [("prompt_tuning", {"n_tokens": 5}), ("lora", {}), ("last_layers", {"last_k_blocks": 1}), ("full", {})]
CONTEXTS = {"train": FastPathContext(training=True, autocast=torch.bfloat16),
            "infer": FastPathContext(training=False, autocast=torch.bfloat16)}


def _snapshot(model) -> dict:
    """What apply + revert must leave as it was: module classes and modes, the state_dict (keys,
    dtypes, values), which entries share storage (a tied head), requires_grad, the attention choice."""
    sd = model.state_dict()
    groups: dict[int, list[str]] = {}
    for k, t in sd.items():
        groups.setdefault(t.untyped_storage().data_ptr(), []).append(k)
    return {
        "modules": [(n, type(m), m.training) for n, m in model.named_modules()],
        "state": {k: (t.dtype, t.detach().clone()) for k, t in sd.items()},
        "shared": sorted(sorted(g) for g in groups.values()),
        "grad": [(n, p.requires_grad) for n, p in model.named_parameters()],
        "attention": sorted({m.config._attn_implementation_internal for m in model.modules()
                             if hasattr(m, "config") and hasattr(m.config, "_attn_implementation_internal")}),
    }


def _assert_same(got: dict, want: dict) -> None:
    assert got["modules"] == want["modules"]
    assert got["state"].keys() == want["state"].keys()
    for k, (dtype, value) in want["state"].items():
        assert got["state"][k][0] == dtype and torch.equal(got["state"][k][1], value), k
    assert got["shared"] == want["shared"] and got["grad"] == want["grad"] and got["attention"] == want["attention"]


def _use(model, ctx, applied, batch) -> None:
    """Run the patched model as the trainer or the decoder would, filling the paths' caches."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        if ctx.training:
            model.train()
            loss, _ = select_loss(model, _hf_loss_sum, applied)(model, batch)
            loss.backward()
        else:
            model.eval()
            with torch.inference_mode():
                model(input_ids=batch["input_ids"][:, :7])


@pytest.mark.parametrize("ctx_name", list(CONTEXTS))
@pytest.mark.parametrize("method,cfg", METHODS)
@pytest.mark.parametrize("arch", ["tiny_neo", "tiny_gpt2"])
def test_apply_then_revert_gives_the_unpatched_model(request, arch, method, cfg, ctx_name):
    """Each fast path alone, then all together: after apply + revert the model equals a copy that
    was never patched, bit for bit (logits, state_dict, storage sharing, classes, flags)."""
    import copy

    ctx = CONTEXTS[ctx_name]
    model, _ = _method_model(request.getfixturevalue(arch), method, **cfg)
    pristine = copy.deepcopy(model)
    batch = _batch(model.config.vocab_size)
    pristine.eval()
    with torch.no_grad():
        want_logits = pristine(**batch).logits
    want = _snapshot(pristine)
    applied_somewhere = set()
    for enabled in [{p.name} for p in FAST_PATHS] + [True]:
        applied = apply_fast_paths(model, ctx, enabled)
        assert set(applied) <= (set(enabled) if enabled is not True else set(FAST_PATH_NAMES))
        applied_somewhere |= set(applied)
        _use(model, ctx, applied, batch)
        model.zero_grad(set_to_none=True)
        revert_fast_paths(model)
        assert len(ACTIVATIONS) == 0 and cached_low_weight(find_head(model)) is None
        model.train(pristine.training)
        _assert_same(_snapshot(model), want)
        with torch.no_grad():
            assert torch.equal(model(**batch).logits, want_logits), enabled
    expected = {"sdpa_attention", "fused_gelu"}
    expected |= set() if method == "full" and ctx.training else {"cast_frozen_weights"}  # nothing frozen
    expected |= {"fast_lora"} if method == "lora" else set()
    expected |= {"label_loss", "fused_adamw"} if ctx.training else {"few_rows_head"}
    assert expected <= applied_somewhere


def test_head_patch_only_at_inference_and_loss_keeps_the_head_in_place(tiny_neo):
    model, _ = _method_model(tiny_neo, "lora", dropout=0.0)
    assert "few_rows_head" not in apply_fast_paths(model, FastPathContext(training=True), True)
    head = find_head(model)
    assert type(head) is nn.Linear
    seen = []
    head.register_forward_pre_hook(lambda m, args: seen.append((model.get_output_embeddings() is m, args[0].shape[1])))
    fast_token_loss_sum(model, _batch(model.config.vocab_size))
    assert seen and all(in_place and rows == 0 for in_place, rows in seen)  # never swapped; no position
    assert "few_rows_head" in apply_fast_paths(model, FastPathContext(training=False), True)


def test_fast_paths_config_selects_and_logs(tiny_gpt2, tiny_family, caplog):
    import logging

    model, _ = _method_model(tiny_gpt2, "lora")
    head_only, _ = _method_model(tiny_gpt2, "last_layers")  # where the feature cache applies
    llama, _ = _method_model(tiny_family("llama"), "lora")  # where the lean decode step applies
    ctx = FastPathContext(training=True, autocast=torch.bfloat16)
    for name in FAST_PATH_NAMES:
        if name == "blocked_local_attention":  # on top of sdpa_attention, GPT-Neo only: tested above
            continue
        cfg = build_config(flags={"train.fast_paths": name})
        on = {"feature_cache": head_only, "lean_decode_step": llama, "fused_rmsnorm": llama, "fused_rotary": llama,
              "gqa_attention": llama, "fused_swiglu": llama, "label_rows_last_block": llama,
              "compiled_blocks": llama}.get(name, model)
        infer = CONTEXTS["infer" if name in ("few_rows_head", "lean_decode_step") else "train"]
        infer = FastPathContext(training=True, compile=True) if name == "compiled_blocks" else infer
        applied = apply_fast_paths(on, infer, from_config(cfg.train))
        assert applied == ([] if name == "lean_decode_step" else [name])  # the lean step needs SDPA
        if name == "lean_decode_step":
            cfg = build_config(flags={"train.fast_paths": f"sdpa_attention,{name}"})
            assert apply_fast_paths(on, infer, from_config(cfg.train)) == ["sdpa_attention", name]
            revert_fast_paths(on)
    with caplog.at_level(logging.DEBUG, logger="sumtune.fastpath"):
        applied = apply_fast_paths(model, ctx, from_config(build_config(flags={}).train))
    assert [r.getMessage().split(" (")[0] for r in caplog.records] == [f"fast path: {n}" for n in applied]
    assert apply_fast_paths(model, ctx, from_config(build_config(flags={"train.fast": False}).train)) == []
    assert select_loss(model, _hf_loss_sum, []) is _hf_loss_sum
    revert_fast_paths(model)


def test_unknown_fast_path_is_refused_in_one_line():
    with pytest.raises(UserError) as e:
        build_config(flags={"train.fast_paths": "sdpa_attention,warp_drive"})
    msg = str(e.value)
    assert "\n" not in msg and "train.fast_paths" in msg and "warp_drive" in msg
    assert all(name in msg for name in FAST_PATH_NAMES)


def test_registry_and_config_name_the_same_paths_in_order():
    assert tuple(p.name for p in FAST_PATHS) == FAST_PATH_NAMES
    assert all(p.why for p in FAST_PATHS)
