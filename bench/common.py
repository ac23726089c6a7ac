"""Shared by the benchmarks: the token file, the model both sides use, the precision."""

from __future__ import annotations

import json
from pathlib import Path

import torch

RANDOM_125M = "gpt-neo-125m-random"
RANDOM_SMALL = "gpt-neo-small-random"  # for quick runs: 4 layers, hidden 256, the same vocabulary
RANDOM_SMOLLM2 = "smollm2-135m-random"  # the Llama layout in SmolLM2-135M's shape, where the real weights cannot go
RANDOM_MODELS = (RANDOM_125M, RANDOM_SMALL, RANDOM_SMOLLM2)


def load_rows(path: str | Path) -> list[dict]:
    """Rows {input_ids, labels} of a make_token_data.py file."""
    rows = [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
    if not rows or any("input_ids" not in r or "labels" not in r for r in rows):
        raise SystemExit(f"{path}: expected JSON lines with input_ids and labels (make_token_data.py)")
    return rows


def random_gpt_neo(name: str = RANDOM_125M):
    """GPT-Neo with random weights: the 125M shape exactly as the peer builds it (seed 0), or the small one."""
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    hidden, layers, heads = (768, 12, 12) if name == RANDOM_125M else (256, 4, 4)
    torch.manual_seed(0)
    cfg = GPTNeoConfig(vocab_size=50257, max_position_embeddings=2048, hidden_size=hidden, num_layers=layers,
                       attention_types=[[["global", "local"], layers // 2]], num_heads=heads, window_size=256,
                       embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0)
    return GPTNeoForCausalLM(cfg)


def random_smollm2():
    """A Llama-layout model in SmolLM2-135M's shape (30 layers, hidden 576, 9 query / 3 key-value heads,
    SwiGLU 1536, 49,152 words, tied head), random weights (seed 0): the real model's speed without its
    file, e.g. on a lent GPU machine that cannot download it. Token files for it: make_token_data.py
    --vocab 49152."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                      num_attention_heads=9, num_key_value_heads=3, max_position_embeddings=8192,
                      rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True, hidden_act="silu")
    return LlamaForCausalLM(cfg)


def bench_tokenizer():
    """A small offline tokenizer: the token files are ids already; sumtune needs one for EOS/padding."""
    from sumtune.tiny import synthetic_news, train_tokenizer

    return train_tokenizer([r["article"] + "\n" + r["highlights"] for r in synthetic_news(50)], vocab_size=300)


def build_model(name: str):
    """(model, tokenizer): a random GPT-Neo or SmolLM2-shaped Llama (with a small tokenizer), or a model directory."""
    if name in (RANDOM_125M, RANDOM_SMALL):
        return random_gpt_neo(name), bench_tokenizer()
    if name == RANDOM_SMOLLM2:
        return random_smollm2(), bench_tokenizer()
    from sumtune.modeling import load_model, load_tokenizer

    return load_model(name), load_tokenizer(name)


def write_model_dir(name: str, out: Path) -> Path:
    """A model directory sumtune's trainer can load by path (a random model is saved once)."""
    if name not in RANDOM_MODELS:
        return Path(name)
    if not (out / "config.json").is_file():
        model, tok = build_model(name)
        model.save_pretrained(out)
        tok.save_pretrained(out)
    return out


def train_step_parts(cfg, rows: list[dict], work: Path):
    """The trainer's own pieces for optimizer steps over `rows` (make_token_data.py rows) under `cfg`,
    built as `sumtune train` builds them and prepared (the model in train mode): a namespace of
    accelerator, method, model, applied (fast paths), loss_fn, optimizer, scheduler, trained (the
    trained parameters), ds and collate (for `micro_batches`)."""
    from types import SimpleNamespace

    from datasets import Dataset

    from sumtune.data import Collator
    from sumtune.modeling import load_model, load_tokenizer
    from sumtune.training import accelerator_for, make_optimizer, method_model

    accelerator, precision = accelerator_for(cfg, work / "run")
    tokenizer = load_tokenizer(cfg.model.name)
    method, model, applied, loss_fn = method_model(cfg, tokenizer, load_model(cfg.model.name), precision)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer, scheduler = make_optimizer(model, method, cfg.train, applied, 1000)
    model, optimizer = accelerator.prepare(model, optimizer)
    model.train()
    ds = Dataset.from_list([{"input_ids": r["input_ids"], "labels": r["labels"]} for r in rows])
    return SimpleNamespace(accelerator=accelerator, method=method, model=model, applied=applied, loss_fn=loss_fn,
                           optimizer=optimizer, scheduler=scheduler, trained=trained, ds=ds,
                           collate=Collator(tokenizer.pad_token_id))


def precision_for(requested: str) -> str:
    """What `--precision` means on this machine (`sumtune.modeling.resolve_precision`; auto: bf16 on a CUDA
    GPU with bf16 or a CPU with AMX/AVX512-BF16, else fp16 on a CUDA GPU, else fp32 on the CPU)."""
    from sumtune.modeling import resolve_precision

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return resolve_precision(requested, device)


# The peer's adapter settings (r 8, alpha 16, dropout 0.05, 12 virtual tokens, head-only last layers), as
# `method.<name>.<key>` flags for every method that has the key: each method's config has only its own keys.
PEER_METHOD_KEYS = {"r": 8, "alpha": 16, "dropout": 0.05, "n_tokens": 12, "last_k_blocks": 0}


def peer_method_flags(**overrides) -> dict:
    from sumtune.config_methods import keys_of
    from sumtune.methods import CONFIGS

    values = {**PEER_METHOD_KEYS, **overrides}
    return {f"method.{m}.{k}": v for m in CONFIGS for k, v in values.items() if k in keys_of(m)}
