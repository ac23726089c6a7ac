#!/usr/bin/env python3
"""One decoding step's attention (every layer, one new position a row) over the key/value cache of a
grouped-query model, as a cache could hold it, side by side: memory held and time per step.

    python bench/decode_attention.py [--entries 2] [--beams 4] [--prompt 470] [--generated 32]
        [--layers 30] [--heads 9] [--kv-heads 3] [--head-dim 64] [--dtype fp32|bf16] [--reps 10] [--json]

The defaults are SmolLM2-135M decoding at the cnndm preset (2 prompts of ~470 tokens x 4 beams = 8 rows,
9 query heads sharing 3 key/value heads). The variants:
- expanded: the cache stores every query head's keys/values (the key/value heads repeated), SDPA;
- repeat_kv: the cache stores the key/value heads, repeated into a copy at each attention (what
  Transformers' eager attention does);
- packed_gqa: the cache stores the key/value heads; the query heads of each are its queries (what
  Transformers' SDPA path does for one position, and sumtune's greedy lean step);
- shared_prompt: sumtune's beam search with the lean step (`decoding.lean.beam_attention`): the key/value
  heads, and the prompt's once per entry, the beams of an entry reading it together.
Each rep runs every variant once, the order rotating; printed: median ms per step, the cache's MB and
each variant's largest difference from `expanded`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from sumtune.decoding.cache import BeamCache
from sumtune.decoding.lean import beam_attention

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def build(a: argparse.Namespace):
    """Per layer: the prompt keys/values per entry, the generated ones per row, the queries, a padding mask."""
    g = torch.Generator().manual_seed(0)
    dt, rows, d = DTYPES[a.dtype], a.entries * a.beams, a.head_dim
    layers = []
    for _ in range(a.layers):
        pk, pv = (torch.randn(a.entries, a.kv_heads, a.prompt, d, generator=g).to(dt) for _ in range(2))
        gk, gv = (torch.randn(rows, a.kv_heads, a.generated, d, generator=g).to(dt) for _ in range(2))
        layers.append((pk, pv, gk, gv, torch.randn(rows, a.heads, 1, d, generator=g).to(dt)))
    keep = torch.ones(a.entries, a.prompt + a.generated, dtype=torch.bool)
    keep[1:, : a.prompt // 10] = False  # later entries' prompts are shorter: left padding
    return layers, keep


def rows_kv(pk, pv, gk, gv, beams: int):
    return [torch.cat([p.repeat_interleave(beams, 0), gen], dim=2) for p, gen in ((pk, gk), (pv, gv))]


def variants(a: argparse.Namespace, layers, keep):
    groups, scale, rows = a.heads // a.kv_heads, a.head_dim ** -0.5, a.entries * a.beams
    mask = keep.repeat_interleave(a.beams, 0)[:, None, None, :]
    caches = {"per_row": [rows_kv(pk, pv, gk, gv, a.beams) for pk, pv, gk, gv, _ in layers]}
    caches["expanded"] = [[t.repeat_interleave(groups, 1) for t in kv] for kv in caches["per_row"]]
    cache = BeamCache(torch.stack([torch.stack([pk, pv]) for pk, pv, *_ in layers]), a.beams, a.generated)
    for layer, (_, _, gk, gv, _) in zip(cache.layers, layers):
        for i in range(a.generated):
            layer.append(gk[:, :, i : i + 1], gv[:, :, i : i + 1])
    beam_layers = cache.layers
    additive = torch.zeros(keep[:, : a.prompt].shape, dtype=layers[0][0].dtype).masked_fill(
        ~keep[:, : a.prompt], torch.finfo(layers[0][0].dtype).min)[:, None, None, :]

    def expanded():
        return [F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
                for (k, v), (*_, q) in zip(caches["expanded"], layers)]

    def repeat_kv():
        return [F.scaled_dot_product_attention(q, k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1),
                                               attn_mask=mask, scale=scale)
                for (k, v), (*_, q) in zip(caches["per_row"], layers)]

    def packed_gqa():
        return [F.scaled_dot_product_attention(q.reshape(rows, a.kv_heads, groups, -1), k, v, attn_mask=mask,
                                               scale=scale).reshape(q.shape)
                for (k, v), (*_, q) in zip(caches["per_row"], layers)]

    def shared_prompt():
        return [beam_attention(q, layer, additive, groups, scale).view(rows, 1, a.heads, -1).transpose(1, 2)
                for layer, (*_, q) in zip(beam_layers, layers)]

    def mb(tensors) -> float:
        return sum(t.numel() * t.element_size() for t in tensors) / 2**20

    held = {"expanded": mb(t for kv in caches["expanded"] for t in kv),
            "repeat_kv": mb(t for kv in caches["per_row"] for t in kv),
            "packed_gqa": mb(t for kv in caches["per_row"] for t in kv),
            "shared_prompt": mb((cache.prompt, cache.gen))}
    return {"expanded": expanded, "repeat_kv": repeat_kv, "packed_gqa": packed_gqa, "shared_prompt": shared_prompt}, held


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, default in (("entries", 2), ("beams", 4), ("prompt", 470), ("generated", 32), ("layers", 30),
                          ("heads", 9), ("kv-heads", 3), ("head-dim", 64), ("reps", 10), ("threads", 0)):
        ap.add_argument(f"--{name}", type=int, default=default)
    ap.add_argument("--dtype", default="fp32", choices=list(DTYPES))
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    fns, held = variants(a, *build(a))
    names = list(fns)
    with torch.inference_mode():
        ref = fns["expanded"]()
        diff = {n: max(float((x.float() - r.float()).abs().max()) for x, r in zip(fns[n](), ref)) for n in names}
        times: dict[str, list[float]] = {n: [] for n in names}
        for rep in range(a.reps):
            for n in names[rep % len(names):] + names[: rep % len(names)]:
                t0 = time.perf_counter()
                fns[n]()
                times[n].append(time.perf_counter() - t0)
    result = {"shape": {k: getattr(a, k) for k in ("entries", "beams", "prompt", "generated", "layers", "heads",
                                                     "kv_heads", "head_dim", "dtype")},
              "threads": torch.get_num_threads(), "reps": a.reps,
              "variants": {n: {"ms_per_step": round(1e3 * statistics.median(times[n]), 2), "cache_mb": round(held[n], 1),
                               "max_diff": diff[n]} for n in names}}
    for n, r in result["variants"].items():
        print(f"{n:14s} {r['ms_per_step']:8.2f} ms/step  cache {r['cache_mb']:7.1f} MB  max diff {r['max_diff']:.1e}")
    if a.json:
        print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
