"""Why two decoders' outputs differ, for bench/generate.py: the sides compute the same logits with
other kernels (SDPA vs eager, batch sizes, padding), which round differently, so where a model has
near-tied candidates a choice can flip. For each output that differs, the gap between the two tokens'
logits at the first difference, and for beam search the gap between the two summaries' beam scores
(sum of log-probabilities / length ** length_penalty, per token), both recomputed with the model at
batch 1 in fp32 with eager attention. A difference is a tie when either gap is within the tolerance."""

from __future__ import annotations

import torch

from sumtune.config import EvalConfig
from sumtune.fastpath import set_attention


@torch.inference_mode()
def reference_logprobs(model, prompt: list[int], tokens: list[int]) -> torch.Tensor:
    """[len(tokens) + 1, vocab] fp32 log-probabilities after prompt + tokens[:i], batch 1, eager."""
    logits = model(torch.tensor([prompt + tokens], device=model.device)).logits[0, len(prompt) - 1 :].float()
    return torch.log_softmax(logits, -1)


def explain(model, prompt: list[int], a: list[int], b: list[int], ev: EvalConfig, tol: float) -> dict:
    """Why two outputs differ: the reference gap between their tokens at the first difference
    (logits: log-probabilities differ from them by a constant), and for beam search between
    the two summaries' beam scores, per token; a tie when either is within `tol`."""
    p = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    la, lb = reference_logprobs(model, prompt, a), reference_logprobs(model, prompt, b)
    why = {"position": p}
    if p < len(a) and p < len(b):
        why["logit_gap"] = abs(float(la[p, a[p]] - la[p, b[p]]))
    if ev.num_beams > 1:
        score = [float(lp[torch.arange(len(t)), torch.tensor(t)].sum()) / len(t) ** ev.length_penalty
                 for lp, t in ((la, a), (lb, b))]
        longest = max(len(a), len(b))
        why["beam_score_gap_per_token"] = abs(score[0] - score[1]) * longest ** ev.length_penalty / longest
    why["tie"] = min(why.get("logit_gap", 1e9), why.get("beam_score_gap_per_token", 1e9)) <= tol
    return why


@torch.inference_mode()
def logprob_noise(model, prompts, outputs, dtype: torch.dtype) -> dict:
    """How far `dtype` autocast moves the model's log-probabilities of the decoded tokens from fp32 (batch 1,
    eager): the mean and 99th percentile of |difference| per token. The scale of the rounding that can
    part two decoders computing in `dtype` with different kernels."""
    set_attention(model, "eager")
    diffs = []
    for prompt, tokens in zip(prompts, outputs):
        if not tokens:
            continue
        picked = torch.tensor(tokens, device=model.device)[:, None]
        exact = reference_logprobs(model, prompt, tokens)[:-1].gather(1, picked)
        with torch.autocast(model.device.type, dtype=dtype):
            rounded = reference_logprobs(model, prompt, tokens)[:-1].gather(1, picked)
        diffs.append((rounded - exact).abs().flatten())
    d = torch.cat(diffs)
    return {"mean": round(float(d.mean()), 4), "p99": round(float(d.quantile(0.99)), 4)}


def compare(model, prompts, ours: list[list[int]], theirs: list[list[int]], ev: EvalConfig, tol: float) -> dict:
    """How many outputs are identical, and why each other one differs (`explain`)."""
    set_attention(model, "eager")
    diffs = [{"prompt": i, **explain(model, prompts[i], t, o, ev, tol)}
             for i, (o, t) in enumerate(zip(ours, theirs)) if o != t]
    return {"identical": len(prompts) - len(diffs), "differences": diffs,
            "not_ties": sum(not d["tie"] for d in diffs)}


def differences_text(c: dict) -> str:
    """One line: each difference with its gaps, and whether it is a tie."""
    if not c["differences"]:
        return "all identical"
    parts = []
    for d in c["differences"]:
        gaps = ", ".join(f"{k.removesuffix('_per_token').replace('_', ' ')} {d[k]:.1e}"
                         for k in ("logit_gap", "beam_score_gap_per_token") if k in d)
        parts.append(f"#{d['prompt']} at {d['position']}: {gaps} -> {'tie' if d['tie'] else 'NOT A TIE'}")
    return "; ".join(parts)
