"""One decoding step (a new token a row) of a Llama-layout model without Transformers' per-layer
machinery, and with the beams of an entry reading their prompt's keys/values once.

Where the time of a step went (SmolLM2-135M, 30 layers, 8 rows of ~470 prompt tokens, fp32, one
thread of a 2-core EPYC: CPU time, the parts timed alone in the same process): ~200 ms a step, of
which the weight GEMMs ~120 ms (MKL's fp32 GEMM at 8 rows runs at ~15 GFLOP/s, ~4 GB/s of weights,
where one row, a GEMV, reads 12-15 GB/s: the same for any decoder), attention ~39 ms (every beam
reading its own copy of the prompt's keys/values) and ~40 ms everything else: per layer,
Transformers' decorators, keyword plumbing, mask building and attention dispatch around a dozen
small ops. This step calls the same modules (so LoRA layers, a cast or few-rows head, a fused norm
installed by another fast path all take part) with the same ops, skipping the plumbing; queries
and keys are rotated together (Llama's rotary function, bitwise: checked when attached); and:

- greedy (`SlotLayer` cache): attention is exactly what Transformers' SDPA path does for one query
  (the query heads of a key/value head packed as that head's queries, or `enable_gqa` when no row
  is padded): the logits are bitwise those of the model's own forward (tested);
- beam search (`BeamLayer` cache): the prompt's keys/values are stored once per entry and the k
  beams' queries of a key/value head attend to them together (one [k x groups, width] product per
  entry and head instead of k), the generated positions per beam; the two score blocks share one
  softmax. The same sums in another grouping: equal to the model's forward up to rounding (tested).

Grouped-query heads stay unexpanded everywhere: caches hold `num_key_value_heads` heads.

Applies to model types whose blocks are Llama's (`LLAMA_TYPES`) with no sliding window in use and
SDPA attention (the fast path `lean_decode_step`, `sumtune.fastpath.decode_step`); elsewhere the
`Generator` calls the model's own forward.
"""

from __future__ import annotations

import sys
import weakref

import torch
import torch.nn.functional as F
from torch import nn

from sumtune.architecture import decoder_parts
from sumtune.decoding.cache import BeamLayer, SlotLayer

LLAMA_TYPES = ("llama", "qwen2")  # blocks: input norm -> attention (q/k/v/o, rotary) -> norm -> gated MLP
_BLOCK = {"self_attn", "mlp", "input_layernorm", "post_attention_layernorm"}
_ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj"}
_MLP = {"gate_proj", "up_proj", "down_proj"}


def _children(m: nn.Module) -> set[str]:
    return {name for name, _ in m.named_children()}


def llama_layout(lm: nn.Module) -> bool:
    """Whether `lm` (a causal LM) has the blocks this step reproduces, attends through SDPA and uses
    no sliding window (then every key of a row is attended)."""
    cfg = getattr(lm, "config", None)
    if cfg is None or getattr(cfg, "model_type", None) not in LLAMA_TYPES or cfg._attn_implementation != "sdpa":
        return False
    if getattr(cfg, "sliding_window", None) is not None and any("sliding" in t for t in
                                                                 (getattr(cfg, "layer_types", None) or ["sliding"])):
        return False
    body = getattr(lm, lm.base_model_prefix, None)
    if body is None or not all(hasattr(body, a) for a in ("embed_tokens", "rotary_emb", "norm")):
        return False
    blocks = decoder_parts(lm).blocks
    return all(_children(b) == _BLOCK and _children(b.self_attn) == _ATTENTION and _MLP <= _children(b.mlp)
               for b in blocks)


class LeanStep(nn.Module):
    """The step's forward: `step(input_ids=[rows, 1], attention_mask=[rows, positions], position_ids=[rows, 1],
    cache=...)` -> fp32 logits [rows, vocab]. An nn.Module so that forward hooks time it (bench/generate.py);
    it holds the model's modules without registering them (no parameters of its own)."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        # the model weakly, its parts looked up at each call: a later fast path may swap a module
        self._lm, self._blocks = weakref.ref(lm), (decoder_parts(lm).blocks,)
        attn = decoder_parts(lm).blocks[0].self_attn
        self.head_dim, self.groups, self.scaling = attn.head_dim, attn.num_key_value_groups, attn.scaling
        self.rope = sys.modules[type(attn).__module__].apply_rotary_pos_emb  # the family's own
        self.llama_rope = self._same_rotation(getattr(lm, lm.base_model_prefix).rotary_emb)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, position_ids: torch.Tensor,
                cache) -> torch.Tensor:
        lm = self._lm()
        body, blocks, head = getattr(lm, lm.base_model_prefix), self._blocks[0], lm.get_output_embeddings()
        embed, rotary, norm = body.embed_tokens, body.rotary_emb, body.norm
        x = embed(input_ids)  # [rows, 1, hidden]
        cos, sin = rotary(x, position_ids)
        rope = self._rope_tables(cos, sin) if self.llama_rope else None
        beams = isinstance(cache.layers[0], BeamLayer)
        mask = self._beam_mask(attention_mask, cache.layers[0]) if beams else self._slot_mask(attention_mask)
        attend = self._attend_beams if beams else self._attend
        rows, d = input_ids.shape[0], self.head_dim
        for block, layer in zip(blocks, cache.layers):
            attn = block.self_attn
            h = block.input_layernorm(x)
            # [rows, heads, 1, d]: one position, so heads-first is a view
            q, k, v = (p(h).view(rows, -1, 1, d) for p in (attn.q_proj, attn.k_proj, attn.v_proj))
            q, k = self._rotate(q, k, rope) if rope is not None else self.rope(q, k, cos, sin)
            out = attend(q, k, v, layer, mask)  # [rows, 1, heads * head_dim]
            x = x + attn.o_proj(out)
            x = x + block.mlp(block.post_attention_layernorm(x))
        return head(norm(x))[:, -1].float()

    # --- rotary positions: queries and keys of a layer in one pass --------------------------------

    def _rope_tables(self, cos: torch.Tensor, sin: torch.Tensor):
        """(cos, signed sin) [rows, 1, 1, d] for `_rotate` (used where the family's rotary function is
        Llama's, q * cos + rotate_half(q) * sin: `llama_rope`)."""
        half = sin.shape[-1] // 2
        return cos[:, None], torch.cat([-sin[..., :half], sin[..., half:]], dim=-1)[:, None]

    @torch.no_grad()
    def _same_rotation(self, rotary: nn.Module) -> bool:
        """Whether `_rotate` gives bitwise the family's rotary function (checked once on random heads)."""
        g = torch.Generator().manual_seed(0)
        param = next(rotary.buffers(), None)
        device = param.device if param is not None else torch.device("cpu")
        q, k = (torch.randn(2, n, 1, self.head_dim, generator=g).to(device) for n in (self.groups * 2, 2))
        cos, sin = rotary(q, torch.tensor([[3], [700]], device=device))
        ours = self._rotate(q, k, self._rope_tables(cos, sin))
        return all(torch.equal(a, b) for a, b in zip(ours, self.rope(q, k, cos, sin)))

    @staticmethod
    def _rotate(q: torch.Tensor, k: torch.Tensor, rope) -> tuple[torch.Tensor, torch.Tensor]:
        """Llama's rotary embedding of q and k together: rotate_half(x) * sin is x rolled by half times the
        sine with its first half negated (the same products, exactly), so 5 kernels instead of 14."""
        cos, signed_sin = rope
        qk = torch.cat([q, k], dim=1)
        qk = qk * cos + qk.roll(qk.shape[-1] // 2, dims=-1) * signed_sin
        return qk[:, : q.shape[1]], qk[:, q.shape[1] :]

    # --- greedy: one buffer per layer, Transformers' SDPA call for one query ------------------------

    @staticmethod
    def _slot_mask(attention_mask: torch.Tensor) -> torch.Tensor | None:
        """What Transformers hands SDPA for one new position: None when no row is padded, else the
        boolean keep-mask [rows, 1, 1, positions]."""
        keep = attention_mask.bool()
        return None if bool(keep.all()) else keep[:, None, None, :]

    def _attend(self, q, k, v, layer: SlotLayer, mask):
        keys, values = layer.update(k, v)
        rows, heads = q.shape[:2]
        if mask is None:
            out = F.scaled_dot_product_attention(q, keys, values, scale=self.scaling, enable_gqa=self.groups > 1)
        else:  # the query heads of a key/value head as its queries: no expanded keys/values
            packed = q.reshape(rows, heads // self.groups, self.groups, self.head_dim)
            out = F.scaled_dot_product_attention(packed, keys, values, attn_mask=mask, scale=self.scaling)
        return out.reshape(rows, heads, 1, self.head_dim).transpose(1, 2).reshape(rows, 1, heads * self.head_dim)

    # --- beam search: the prompt once per entry, generated positions per beam -----------------------

    @staticmethod
    def _beam_mask(attention_mask: torch.Tensor, layer: BeamLayer) -> torch.Tensor:
        """Additive mask of the prompt part per entry [entries, 1, 1, width] (the beams of an entry share it)."""
        width = layer.prompt_k.shape[2]
        keep = attention_mask[:: layer.beams, :width].bool()[:, None, None, :]
        zero = torch.zeros((), dtype=layer.prompt_k.dtype, device=keep.device)
        return torch.where(keep, zero, torch.finfo(layer.prompt_k.dtype).min)

    def _attend_beams(self, q, k, v, layer: BeamLayer, mask):
        layer.append(k, v)
        return beam_attention(q, layer, mask, self.groups, self.scaling)


def beam_attention(q: torch.Tensor, layer: BeamLayer, mask: torch.Tensor, groups: int, scaling: float) -> torch.Tensor:
    """One new position's attention for beams sharing their entry's prompt: q [rows, heads, 1, d] against
    the layer's prompt (once per entry) and generated positions (per beam), masked by `mask` (additive,
    [entries, 1, 1, width], the prompt's padding); -> [rows, 1, heads * d]. All the queries of an entry's
    beams for a key/value head read its prompt keys/values together; one softmax over both parts."""
    rows, heads, _, d = q.shape
    b, kv, width, n = layer.beams, heads // groups, layer.prompt_k.shape[2], layer.n
    entries = rows // b
    gen_k, gen_v = layer.gen_k[:, :, :n], layer.gen_v[:, :, :n]  # [rows, kv, n, d]
    qs = q.reshape(entries, b, kv, groups, d).to(gen_k.dtype) * scaling  # a row's queries by key/value head
    s_prompt = (qs.transpose(1, 2).reshape(entries, kv, b * groups, d) @ layer.prompt_k.transpose(-1, -2)).add_(mask)
    s_gen = qs.view(rows, kv, groups, d) @ gen_k.transpose(-1, -2)  # [rows, kv, groups, n]
    scores = torch.cat([s_prompt.view(entries, kv, b, groups, width),
                        s_gen.view(entries, b, kv, groups, n).transpose(1, 2)], dim=-1)  # [entries, kv, b, groups, .]
    w = torch.softmax(scores, dim=-1, dtype=torch.float32).to(gen_v.dtype)
    out = (w[..., :width].reshape(entries, kv, b * groups, width) @ layer.prompt_v).view(entries, kv, b, groups, d)
    out_gen = w[..., width:].transpose(1, 2).reshape(rows, kv, groups, n) @ gen_v
    return (out_gen.view(entries, b, kv, groups, d) + out.transpose(1, 2)).reshape(rows, 1, heads * d)


_STEPS: weakref.WeakKeyDictionary[nn.Module, LeanStep] = weakref.WeakKeyDictionary()


def attach(lm: nn.Module) -> None:
    _STEPS[lm] = LeanStep(lm)


def detach(lm: nn.Module) -> None:
    _STEPS.pop(lm, None)


def step_for(lm: nn.Module) -> LeanStep | None:
    """The lean step attached to this causal LM (by the fast path) while the model attends through SDPA
    (the step reproduces that attention), or None: decode with its forward."""
    step = _STEPS.get(lm)
    return step if step is not None and lm.config._attn_implementation == "sdpa" else None
