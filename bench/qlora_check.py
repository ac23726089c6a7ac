#!/usr/bin/env python3
"""QLoRA on a CUDA machine, in one command (nothing downloaded: a tiny random Llama is built here):

    pip install -e '.[qlora]' && python bench/qlora_check.py [--model DIR] [--out DIR]

Checks, each printed as it passes: the base model loads with 4-bit NF4 linear layers (bitsandbytes
Linear4bit, double quantisation, bf16 compute); `sumtune train --set method.quantize=4bit` trains
LoRA on it (2 steps) and saves a PEFT adapter; the run evaluates; its greedy decoding equals Hugging Face
`generate` at batch 1 on the same (quantised) PEFT model (batched: reported); and the adapter loads in plain
PEFT onto a 4-bit base. Exits non-zero at the first failure.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path


def _data(out: Path) -> Path:
    from sumtune.tiny import synthetic_news

    path = out / "news.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in synthetic_news(40, seed=2)), encoding="utf-8")
    return path


def _check_decoding(model, tok, device) -> None:
    """Our greedy decoding at batch 1 equals `generate` at batch 1 on the quantised PEFT model (bf16
    autocast); batched rows are reported (exact only in fp32)."""
    import torch

    from sumtune.config import EvalConfig
    from sumtune.decoding import Generator
    from sumtune.tiny import synthetic_news

    prompts = [tok(r["article"] + "\nTL;DR:\n")["input_ids"][: 20 + 15 * i] for i, r in enumerate(synthetic_news(3, seed=4))]
    expected = []
    for p in prompts:
        ids = torch.tensor([p], device=device)
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=12,
                                 do_sample=False, eos_token_id=tok.eos_token_id, pad_token_id=tok.eos_token_id)
        expected.append(gen[0, len(p):].tolist())

    def decode(batch_size: int) -> list[list[int]]:
        return Generator(model, tok, EvalConfig(batch_size=batch_size, max_new_tokens=12), autocast=torch.bfloat16,
                         stop_at_blank_line=False).generate(prompts)

    got = decode(1)
    assert got == expected, (got, expected)
    print("ok: our decoding at batch 1 equals generate at batch 1 (bf16 autocast)")
    same = sum(a == b for a, b in zip(decode(3), expected))
    print(f"info: batched (3 rows, left-padded) equals generate for {same}/{len(prompts)} rows "
          "(exact only in fp32; bf16 rounding may differ with padding)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a local model directory (default: a tiny random Llama built here)")
    ap.add_argument("--out", help="work directory (default: a temporary one)")
    a = ap.parse_args()
    import torch

    if not torch.cuda.is_available():
        print("qlora_check: no CUDA device here; run it on a GPU machine")
        return 2
    from sumtune.config import build_config
    from sumtune.recipes.evaluate import evaluate_run
    from sumtune.recipes.train import train
    from sumtune.runs import load_run
    from sumtune.tiny import build_tiny_model, synthetic_news

    out = Path(a.out or tempfile.mkdtemp(prefix="qlora-check-"))
    out.mkdir(parents=True, exist_ok=True)
    texts = [r["article"] + "\n" + r["highlights"] for r in synthetic_news(200, seed=1)]
    model_dir = a.model or str(build_tiny_model(out / "tiny-llama", texts, arch="llama", hidden=128, heads=4))
    cfg = build_config(flags={"model.name": model_dir, "data.source": str(_data(out)), "output_dir": str(out / "run"),
                              "method.name": "lora", "train.max_steps": 2, "train.batch_size": 2,
                              "train.grad_accum": 1, "data.max_length": 256, "data.max_summary_length": 64,
                              "train.precision": "bf16", "data.max_eval_samples": 4},
                       sets=["method.lora.quantize=4bit", "method.lora.r=8"])
    run = train(cfg)
    print("ok: trained 2 QLoRA steps ->", run)
    metrics = evaluate_run(run, "test", limit=4, overrides={"max_new_tokens": 16})
    print(f"ok: evaluated (loss {metrics['loss']:.4f})")
    _cfg, _method, model, tok = load_run(run)
    import bitsandbytes as bnb

    n4 = sum(isinstance(m, bnb.nn.Linear4bit) for m in model.modules())
    assert n4 > 0, "no 4-bit layers in the loaded model"
    q = next(m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit))
    assert q.weight.quant_type == "nf4" and q.compute_dtype == torch.bfloat16, (q.weight.quant_type, q.compute_dtype)
    print(f"ok: {n4} Linear4bit layers (nf4, bf16 compute)")
    _check_decoding(model, tok, q.weight.device)
    from peft import PeftModel

    from sumtune.modeling import load_model

    PeftModel.from_pretrained(load_model(model_dir, quantize="4bit"), str(run / "adapter"))
    print("ok: the adapter loads in plain PEFT onto a 4-bit base")
    print("QLORA CHECK PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main())
