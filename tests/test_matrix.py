"""The support matrix: every method on tiny random models of every supported family (GPT-Neo, GPT-2,
GPT-NeoX, OPT, Llama, Qwen2, Phi-3, Gemma), through the real trainer: 2 steps, saved, reloaded,
evaluated; batched greedy decoding equals Hugging Face `generate` at batch 1; PEFT adapters load in
plain PEFT with the same logits; exports load with `AutoModelForCausalLM` with the same logits.

The default run covers every method case once and every family at least twice (`DEFAULT`); the whole
matrix is marked slow (`pytest -m slow tests/test_matrix.py`)."""

from __future__ import annotations

import itertools

import pytest
import torch
from peft import PeftModel
from transformers import AutoModelForCausalLM

from sumtune.config import build_config
from sumtune.decoding import Generator
from sumtune.export import export_run
from sumtune.fastpath import revert_fast_paths
from sumtune.methods import get_method
from sumtune.modeling import load_model, load_tokenizer
from sumtune.recipes.evaluate import evaluate_run
from sumtune.recipes.train import train
from sumtune.runs import load_run
from sumtune.tiny import ARCHS, synthetic_news

NEW = 10
# method cases: (method, extra --set items); lora's options are cases of their own
CASES = {
    "zero_shot": ("zero_shot", ()),
    "prompt_tuning": ("prompt_tuning", ("method.n_tokens=4",)),
    "prefix_tuning": ("prefix_tuning", ("method.n_tokens=4",)),
    "p_tuning": ("p_tuning", ("method.n_tokens=4", "method.encoder_hidden=32")),
    "lora": ("lora", ("method.r=4",)),
    "dora": ("lora", ("method.r=4", "method.use_dora=true")),
    "rslora": ("lora", ("method.r=4", "method.use_rslora=true")),
    "ia3": ("ia3", ()),
    "last_layers": ("last_layers", ("method.last_k_blocks=1", "method.train_final_norm=true")),
    "full": ("full", ()),
}
# every method case on at least one family, every family at least twice
DEFAULT = [("gpt_neo", "prefix_tuning"), ("gpt2", "p_tuning"), ("gpt_neox", "ia3"), ("opt", "last_layers"),
           ("llama", "lora"), ("qwen2", "dora"), ("phi3", "prefix_tuning"), ("gemma", "p_tuning"),
           ("llama", "ia3"), ("qwen2", "last_layers"), ("gemma", "full"), ("phi3", "prompt_tuning"),
           ("gpt_neox", "zero_shot"), ("opt", "rslora"), ("gpt_neo", "ia3"), ("gpt2", "last_layers")]
FULL = [c for c in itertools.product(ARCHS, CASES) if c not in DEFAULT]


def _train(model_dir, data_dir, out, case):
    method, sets = CASES[case]
    flags = {"model.name": str(model_dir), "data.source": str(data_dir), "output_dir": str(out),
             "method.name": method, "method.lora.dropout": 0.0, "train.precision": "fp32", "train.max_steps": 2,
             "train.lr": 1e-2, "train.warmup_ratio": 0.0, "data.max_length": 160, "data.max_summary_length": 48,
             "train.batch_size": 2, "train.grad_accum": 1, "data.max_train_samples": 4,
             "data.max_eval_samples": 2}
    return train(build_config(flags=flags, sets=list(sets)))


def _prompts(tokenizer) -> list[list[int]]:
    rows = synthetic_news(3, seed=5)
    return [tokenizer(r["article"] + "\nTL;DR:\n")["input_ids"][: 9 + 13 * i] for i, r in enumerate(rows)]


def _hf(lm, prompt: list[int], eos: int, soft=None, prefix=None) -> list[int]:
    """`generate` at batch 1: plain, after a soft prompt's embeddings, or after prefix keys/values
    (a cache holding them; `generate` reads the prompt after the cached positions)."""
    from transformers import DynamicCache

    args = dict(max_new_tokens=NEW, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    ids = torch.tensor([prompt])
    with torch.no_grad():
        if soft is not None:
            x = torch.cat([soft[None], lm.get_input_embeddings()(ids)], dim=1)
            return lm.generate(inputs_embeds=x, attention_mask=torch.ones(x.shape[:2], dtype=torch.long),
                               **args)[0].tolist()
        if prefix is not None:
            n = prefix[0][0].shape[-2]
            cache = DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in prefix])
            full = torch.cat([torch.full((1, n), eos), ids], dim=1)  # placeholders for the cached positions
            out = lm.generate(input_ids=full, attention_mask=torch.ones_like(full), past_key_values=cache, **args)
            return out[0, full.shape[1]:].tolist()
        return lm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), **args)[0, len(prompt):].tolist()


def _reference(model):
    """What `generate` runs on for a loaded method model: the base model with the method's virtual
    tokens (PEFT's `generate` itself drops a prefix under Transformers 5), else the model itself."""
    from sumtune.decoding.parts import decoding_parts

    lm, soft, prefix = decoding_parts(model)
    if soft is None and prefix is None:
        return model, None, None
    return lm, soft, prefix


def _naive_greedy(model, prompt: list[int], eos: int) -> list[int]:
    """Greedy decoding by full forwards of the method model itself (no cache): what the trained model
    predicts, independent of any cache handling."""
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(NEW):
            x = torch.tensor([ids])
            tok = int(model(input_ids=x, attention_mask=torch.ones_like(x)).logits[0, -1].argmax())
            ids.append(tok)
            if tok == eos:
                break
    return ids[len(prompt):]


def _batch(tokenizer):
    texts = ["Boston (CNN) -- the mayor announced a plan.", "Denver officials said"]
    enc = tokenizer(texts, return_tensors="pt", padding=True)
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def _check_case(arch, case, tiny_family, kaggle_dir, tmp_path):
    model_dir = tiny_family(arch)
    run = _train(model_dir, kaggle_dir, tmp_path / "run", case)
    metrics = evaluate_run(run, "test", limit=2, overrides={"max_new_tokens": NEW, "batch_size": 2})
    assert metrics["loss"] > 0
    cfg, method, model, tokenizer = load_run(run)
    revert_fast_paths(model)
    assert not any(p.requires_grad for p in model.parameters())

    lm, soft, prefix = _reference(model)
    assert (soft is not None or prefix is not None) == (method.name in ("prompt_tuning", "p_tuning", "prefix_tuning"))
    prompts = _prompts(tokenizer)
    assert len({len(p) for p in prompts}) == len(prompts)
    expected = [_hf(lm, p, tokenizer.eos_token_id, soft, prefix) for p in prompts]
    assert expected[1] == _naive_greedy(model, prompts[1], tokenizer.eos_token_id)
    gen = Generator(model, tokenizer, cfg.eval.__class__(batch_size=3, max_new_tokens=NEW), stop_at_blank_line=False)
    assert gen.generate(prompts) == expected

    batch = _batch(tokenizer)
    with torch.no_grad():
        logits = model(**batch).logits
    if method.weights_file == "adapter_model.safetensors":
        peft = PeftModel.from_pretrained(load_model(str(model_dir)), str(run / "adapter")).eval()
        with torch.no_grad():
            theirs = peft(**batch).logits
        torch.testing.assert_close(theirs[:, theirs.shape[1] - logits.shape[1]:], logits, rtol=0, atol=1e-5)
    if method.not_exportable:
        return
    out = export_run(run, tmp_path / "export")
    plain = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(**batch).logits, logits, rtol=0, atol=1e-4)
    assert load_tokenizer(str(out)).eos_token_id == tokenizer.eos_token_id


@pytest.mark.parametrize("arch,case", DEFAULT)
def test_method_on_family(arch, case, tiny_family, kaggle_dir, tmp_path):
    _check_case(arch, case, tiny_family, kaggle_dir, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("arch,case", FULL)
def test_method_on_family_full_matrix(arch, case, tiny_family, kaggle_dir, tmp_path):
    _check_case(arch, case, tiny_family, kaggle_dir, tmp_path)


def test_every_method_and_family_is_in_the_default_run():
    from sumtune.config import METHODS

    assert {c for _, c in DEFAULT} == set(CASES)
    assert all(sum(a == arch for a, _ in DEFAULT) >= 2 for arch in ARCHS)
    assert {CASES[c][0] for c in CASES} == {m for m in METHODS if get_method(m).needs_model}  # lead3: test_lead3.py
    assert get_method("ia3").name == "ia3"
