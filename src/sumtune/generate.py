"""Batched decoding of summaries (greedy or beam search) over a Hugging Face causal LM.

How a batch is decoded:
1. prompts are sorted by length and cut into batches, so rows of a batch are alike;
2. each prompt is prefilled alone (no padding in the expensive pass; only the last
   position's logits are computed). A soft prompt's keys/values are computed once, at
   batch 1, and copied in front of every prompt;
3. the rows' caches go, left-padded, into one preallocated buffer per layer, laid out
   ``[pad...][soft prompt][prompt][generated...]``: each row stays contiguous, so
   sliding-window attention (GPT-Neo's local layers) sees the same neighbours as in an
   unbatched run, and position ids count real tokens only (as ``generate`` does with left
   padding). Appending a token writes in place, with no copy of the whole cache per step;
4. the rows decode together; finished rows leave the batch (the cache is compacted when a
   quarter of the rows have finished).

Stop rule: a summary ends at EOS, or as soon as its text (leading whitespace ignored)
contains a blank line "\\n\\n" - whether inside one token or across two. References hold
one highlight per line, so a blank line means the model has left the summary (a new
paragraph, another article). ``decode_summary`` cuts the text there too, and at the
separator's marker (e.g. "TL;DR:") should the model start another summary.

Greedy output is token-identical to ``generate`` on the same model at batch 1 (tests, for
every method); beam search follows ``generate``'s algorithm (scores normalised by
generated length ** length_penalty, the same early-stop heuristic). ``no_repeat_ngram_size``
bans repeats within the summary only - unlike ``generate``, which would also ban every
n-gram of the article in a decoder-only prompt and so forbid copying phrases.
``min_new_tokens`` forbids, before that many new tokens, every token that would stop the row:
EOS (as ``generate`` does) and, with the blank-line rule, the tokens that would make the blank line.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from torch import nn
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from sumtune.config import EvalConfig
from sumtune.errors import UserError
from sumtune.progress import bar as bar_of


def decoding_parts(model: nn.Module) -> tuple[nn.Module, torch.Tensor | None]:
    """The plain causal LM to decode with and the soft prompt to put in front ([n, hidden]) or None.

    Our soft-prompt model exposes ``.base`` and ``.soft_prompt`` (PEFT's prompt-tuning model: its
    base model and prompt); a PEFT LoRA model decodes through its base model (LoRA layers
    injected, nothing merged); a plain model is itself.
    """
    soft = getattr(model, "soft_prompt", None)
    if soft is not None:
        return model.base, soft.detach()
    from peft import PeftModel

    if isinstance(model, PeftModel):
        if model.active_peft_config.is_prompt_learning:  # PEFT's own prompt tuning
            return model.base_model, model.get_prompt(batch_size=1)[0].detach()
        return model.get_base_model(), None
    return model, None


BASE_ADAPTER = "__base__"  # PEFT's name for "no LoRA adapter" in a mixed-adapter batch

KV = list[tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class Variant:
    """What one row decodes with beyond the shared LM (``sumtune serve`` batches rows of several
    runs): its soft prompt's keys/values (``Generator.prompt_kv``) and its LoRA adapter's name."""

    soft_kv: KV | None = None
    adapter: str = BASE_ADAPTER

    @property
    def n_soft(self) -> int:
        return 0 if self.soft_kv is None else self.soft_kv[0][0].shape[-2]


class _SlotLayer(DynamicLayer):
    """One layer's keys/values in a preallocated buffer [rows, heads, capacity, head_dim]."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, length: int):
        super().__init__()
        self.buf_k, self.buf_v, self.length = keys, values, length
        self.device, self.is_initialized = keys.device, True
        self._views()

    def _views(self) -> None:
        self.keys = self.buf_k[:, :, : self.length]
        self.values = self.buf_v[:, :, : self.length]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        n = key_states.shape[-2]
        self.buf_k[:, :, self.length : self.length + n] = key_states
        self.buf_v[:, :, self.length : self.length + n] = value_states
        self.length += n
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def select(self, rows: torch.Tensor) -> None:
        """Keep (or repeat) the given rows; only the filled part is copied."""
        for name in ("buf_k", "buf_v"):
            old = getattr(self, name)
            new = old.new_empty((len(rows), *old.shape[1:]))
            new[:, :, : self.length] = old[rows, :, : self.length]
            setattr(self, name, new)
        self._views()


def _cache_keyword(lm: nn.Module) -> str:
    params = inspect.signature(lm.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _max_positions(lm: nn.Module) -> int:
    cfg = lm.config
    return int(getattr(cfg, "max_position_embeddings", None) or getattr(cfg, "n_positions", 1 << 30))


class Generator:
    """Decode summaries for token prompts with a method model (see the module docstring)."""

    def __init__(self, model: nn.Module, tokenizer, cfg: EvalConfig, autocast: torch.dtype | None = None,
                 stop_at_blank_line: bool = True, router: Callable[[list[str]], None] | None = None):
        """`router`: called with each row's adapter name before every forward (rows of a batch may
        use different LoRA adapters: see `Variant`); None for a single method model."""
        self.router = router
        self.lm, soft = decoding_parts(model)
        self.lm.eval()
        self.cfg = cfg
        self.eos = tokenizer.eos_token_id
        self.device = next(self.lm.parameters()).device
        self.autocast = autocast
        self.cache_kw = _cache_keyword(self.lm)
        self.max_pos = _max_positions(self.lm)
        self.stop_at_blank_line = stop_at_blank_line
        vocab = self.lm.get_output_embeddings().weight.shape[0]
        self.tables = _stop_tables(tokenizer, vocab, self.device)
        self.own = Variant(None if soft is None else self.prompt_kv(soft))

    def with_config(self, cfg: EvalConfig) -> Generator:
        """This generator with other decoding settings (the stop tables and soft prompt are shared)."""
        other = copy.copy(self)
        other.cfg = cfg
        return other

    # --- model calls ---------------------------------------------------------

    def _ctx(self):
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _route(self, names: list[str]) -> None:
        if self.router is not None:
            self.router(names)

    def prompt_kv(self, soft: torch.Tensor) -> KV:
        """Keys/values of a soft prompt's virtual tokens (positions 0..n-1) on the base weights,
        computed once at batch 1."""
        cache = DynamicCache()
        emb = soft.to(self.device, self.lm.get_input_embeddings().weight.dtype)[None]
        pos = torch.arange(soft.shape[0], device=self.device)[None]
        self._route([BASE_ADAPTER])
        with torch.inference_mode(), self._ctx():
            self.lm(inputs_embeds=emb, position_ids=pos, use_cache=True, **{self.cache_kw: cache})
        return [(layer.keys, layer.values) for layer in cache.layers]

    def _prefill(self, prompt: Sequence[int], v: Variant) -> tuple[KV, torch.Tensor]:
        """One prompt alone, after its soft prompt: its keys/values and last-position logits."""
        cache = DynamicCache(ddp_cache_data=v.soft_kv) if v.soft_kv is not None else DynamicCache()
        ids = torch.tensor([list(prompt)], device=self.device)
        pos = torch.arange(v.n_soft, v.n_soft + ids.shape[1], device=self.device)[None]
        self._route([v.adapter])
        with self._ctx():
            out = self.lm(input_ids=ids, position_ids=pos, use_cache=True, logits_to_keep=1,
                          **{self.cache_kw: cache})
        return [(layer.keys, layer.values) for layer in cache.layers], out.logits[0, -1].float()

    def _step(self, tokens: torch.Tensor, cache: Cache, mask: torch.Tensor, pos: torch.Tensor,
              adapters: list[str]) -> torch.Tensor:
        self._route(adapters)
        with self._ctx():
            out = self.lm(input_ids=tokens[:, None], attention_mask=mask, position_ids=pos[:, None],
                          use_cache=True, **{self.cache_kw: cache})
        return out.logits[:, -1].float()

    # --- public --------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], progress: bool = False,
                 variants: Sequence[Variant] | None = None) -> list[list[int]]:
        """New tokens for each prompt, in input order; a finished summary ends with its stop token.
        `variants`: each prompt's own soft prompt/adapter (default: the model's own)."""
        variants = list(variants) if variants is not None else [self.own] * len(prompts)
        k = self.cfg.num_beams
        per_batch = max(1, self.cfg.batch_size // k)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[list[int]] = [[] for _ in prompts]
        with bar_of("generating", len(prompts), "summary", enabled=progress) as bar:
            for start in range(0, len(order), per_batch):
                idx = order[start : start + per_batch]
                batch, vs = [prompts[i] for i in idx], [variants[i] for i in idx]
                results = self._greedy(batch, vs) if k == 1 else self._beam(batch, vs, k)
                for i, r in zip(idx, results):
                    out[i] = r
                bar.update(len(idx))
        return out

    # --- batch set-up --------------------------------------------------------

    def _start(self, prompts: Sequence[Sequence[int]], variants: Sequence[Variant]):
        """Prefill every prompt and lay the caches out left-padded: (cache, mask, pos, logits, P, limit).
        Rows with soft prompts of other lengths (or none) line up as rows of other lengths do."""
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        rows = [self._prefill(p, v) for p, v in zip(prompts, variants)]
        lengths = [v.n_soft + len(p) for p, v in zip(prompts, variants)]
        width = max(lengths)
        limit = min(self.cfg.max_new_tokens, self.max_pos - width)
        if limit < 1:
            raise UserError(f"prompt of {width} tokens leaves no room to generate within the model's "
                            f"{self.max_pos} positions; lower data.max_length")
        cap = width + limit
        layers = []
        for j, (k0, _) in enumerate(rows[0][0]):
            shape = (len(rows), k0.shape[1], cap, k0.shape[3])
            keys, values = k0.new_zeros(shape), k0.new_zeros(shape)
            for i, (kv, _) in enumerate(rows):
                keys[i, :, width - lengths[i] : width] = kv[j][0][0]
                values[i, :, width - lengths[i] : width] = kv[j][1][0]
            layers.append(_SlotLayer(keys, values, width))
        mask = torch.ones(len(rows), cap, dtype=torch.long, device=self.device)
        for i, n in enumerate(lengths):
            mask[i, : width - n] = 0
        pos = torch.tensor(lengths, device=self.device)
        logits = torch.stack([r[1] for r in rows])
        return Cache(layers=layers), mask, pos, logits, width, limit

    @staticmethod
    def _select(cache: Cache, rows: torch.Tensor) -> None:
        for layer in cache.layers:
            layer.select(rows)

    # --- stop rule and n-gram ban ---------------------------------------------

    def _stops(self, tok: torch.Tensor, prev: torch.Tensor, started: torch.Tensor) -> torch.Tensor:
        """Whether `tok` ends the summary, given the previous token (-1: none) and whether text has begun."""
        stop = tok == self.eos
        if self.stop_at_blank_line:
            t = self.tables
            after_nl = t["ends_nl"][prev.clamp(min=0)] & (prev >= 0)
            blank = torch.where(started, t["blank"][tok] | (after_nl & t["starts_nl"][tok]), t["blank_lstrip"][tok])
            stop = stop | blank
        return stop

    def _stop_mask(self, prev: torch.Tensor, started: torch.Tensor) -> torch.Tensor:
        """[rows, vocab]: the tokens that would end each row now (`_stops` for every token at once)."""
        t = self.tables
        mask = torch.zeros(len(prev), t["blank"].shape[0], dtype=torch.bool, device=prev.device)
        mask[:, self.eos] = True
        if self.stop_at_blank_line:
            after_nl = (t["ends_nl"][prev.clamp(min=0)] & (prev >= 0))[:, None]
            mask |= torch.where(started[:, None], t["blank"] | (after_nl & t["starts_nl"]), t["blank_lstrip"])
        return mask

    def _ban_stops(self, scores: torch.Tensor, prev: torch.Tensor, started: torch.Tensor, step: int) -> torch.Tensor:
        """Before `min_new_tokens` tokens, forbid every token that would stop a row: EOS as `generate`'s
        min_new_tokens does, and, with the blank-line rule, the tokens making a blank line. Steps stop at the
        room left (max_new_tokens, the model's positions), so a minimum beyond it ends rows there."""
        if step >= self.cfg.min_new_tokens:
            return scores
        return scores.masked_fill(self._stop_mask(prev, started), float("-inf"))

    def _ban_repeats(self, logits: torch.Tensor, seqs: torch.Tensor, n_done: int) -> torch.Tensor:
        """Forbid tokens that would repeat an n-gram of the summary so far (seqs[:, :n_done])."""
        n = self.cfg.no_repeat_ngram_size
        if n <= 0 or n_done + 1 < n:
            return logits
        for r, seq in enumerate(seqs[:, :n_done].tolist()):
            tail = seq[n_done - n + 1 :] if n > 1 else []
            banned = [seq[i + n - 1] for i in range(n_done - n + 1) if seq[i : i + n - 1] == tail]
            if banned:
                logits[r, banned] = float("-inf")
        return logits

    # --- greedy --------------------------------------------------------------

    def _greedy(self, prompts: Sequence[Sequence[int]], variants: Sequence[Variant]) -> list[list[int]]:
        cache, mask, pos, logits, width, limit = self._start(prompts, variants)
        n = len(prompts)
        rows = torch.arange(n, device=self.device)  # original row of each active row
        seqs = torch.zeros(n, limit, dtype=torch.long, device=self.device)  # by active row
        prev = torch.full((n,), -1, device=self.device)
        started = torch.zeros(n, dtype=torch.bool, device=self.device)
        finished = torch.zeros(n, dtype=torch.bool, device=self.device)
        lengths = [limit] * n
        out = torch.zeros(n, limit, dtype=torch.long, device=self.device)
        for step in range(limit):
            logits = self._ban_stops(logits, prev, started, step)
            tok = self._ban_repeats(logits, seqs, step).argmax(-1)
            seqs[:, step] = tok
            stop = self._stops(tok, prev, started) & ~finished
            if step == limit - 1:
                break
            if bool(stop.any()):
                for r in rows[stop].tolist():
                    lengths[r] = step + 1
                finished |= stop
                if bool(finished.all()):
                    break
                if int(finished.sum()) * 4 >= len(rows):  # compact: drop the finished rows
                    keep = (~finished).nonzero().squeeze(1)
                    out[rows[finished]] = seqs[finished]
                    rows, seqs, tok, mask, pos = rows[keep], seqs[keep], tok[keep], mask[keep], pos[keep]
                    started, finished = started[keep], finished[keep]
                    self._select(cache, keep)
            started |= self.tables["has_text"][tok]
            prev = tok
            names = [variants[i].adapter for i in rows.tolist()] if self.router else []
            logits = self._step(tok, cache, mask[:, : width + step + 1], pos, names)
            pos = pos + 1
        out[rows] = seqs
        return [out[i, : lengths[i]].tolist() for i in range(n)]

    # --- beam search ---------------------------------------------------------

    def _beam(self, prompts: Sequence[Sequence[int]], variants: Sequence[Variant], k: int) -> list[list[int]]:
        """Beam search as `generate` does it: per step the top 2k continuations; those that stop and rank
        within the first k become finished hypotheses scored sum_logprob / generated_len ** length_penalty;
        the best k that do not stop continue; an entry is done once k hypotheses are finished and the best
        running beam, normalised by the current length, cannot beat the worst of them."""
        cache, mask, pos, logits, width, limit = self._start(prompts, variants)
        b, dev, lp = len(prompts), self.device, self.cfg.length_penalty
        names = [v.adapter for v in variants for _ in range(k)]  # beams stay in their entry's rows
        rep = torch.arange(b, device=dev).repeat_interleave(k)
        self._select(cache, rep)
        mask, pos, logits = mask[rep], pos[rep], logits[rep]
        seqs = torch.zeros(b * k, limit, dtype=torch.long, device=dev)
        scores = torch.zeros(b, k, device=dev)
        scores[:, 1:] = -1e9  # only the first copy expands at step 0
        prev = torch.full((b * k,), -1, device=dev)
        started = torch.zeros(b * k, dtype=torch.bool, device=dev)
        best: list[list[tuple[float, list[int]]]] = [[] for _ in range(b)]  # finished hypotheses per entry
        open_ = torch.ones(b, dtype=torch.bool, device=dev)  # improvement still possible
        base = (torch.arange(b, device=dev) * k)[:, None]
        for step in range(limit):
            logp = torch.log_softmax(logits, dim=-1)
            logp = self._ban_repeats(self._ban_stops(logp, prev, started, step), seqs, step)
            vocab = logp.shape[-1]
            cand = (logp.view(b, k, vocab) + scores[:, :, None]).view(b, k * vocab)
            top, idx = torch.topk(cand, 2 * k, dim=1)
            src = (idx // vocab) + base  # flat source beam of each candidate
            tok = idx % vocab
            stop = self._stops(tok.view(-1), prev[src.view(-1)], started[src.view(-1)]).view(b, 2 * k)
            if step == limit - 1:
                stop = torch.ones_like(stop)
            norm = top / float(step + 1) ** lp
            new_finished = stop[:, :k] & open_[:, None]
            if bool(new_finished.any()):
                for e, j in new_finished.nonzero().tolist():
                    seq = seqs[src[e, j], :step].tolist() + [int(tok[e, j])]
                    best[e].append((float(norm[e, j]), seq))
                    best[e] = sorted(best[e], key=lambda h: -h[0])[:k]
            if bool(stop.all()):
                break
            running = top + stop.float() * -1e9
            scores, keep = torch.topk(running, k, dim=1)
            pick = src.gather(1, keep).view(-1)
            new_tok = tok.gather(1, keep).view(-1)
            seqs = seqs[pick]
            seqs[:, step] = new_tok
            started = started[pick] | self.tables["has_text"][new_tok]
            prev = new_tok
            self._select(cache, pick)
            # the early-stop heuristic of `generate` (early_stopping=False): stop once the best running
            # score at the current length cannot beat the worst of k finished hypotheses
            full = torch.tensor([len(h) == k for h in best], device=dev)
            worst = torch.tensor([h[-1][0] if h else -1e9 for h in best], device=dev)
            open_ &= ~full | (scores[:, 0] / float(step + 1) ** lp > worst)
            if not bool(open_.any()):
                break
            logits = self._step(new_tok, cache, mask[:, : width + step + 1], pos, names)
            pos = pos + 1
        return [h[0][1] for h in best]


def _stop_tables(tokenizer, vocab: int, device: torch.device) -> dict[str, torch.Tensor]:
    """Per-token facts for the blank-line stop rule, from each token's decoded text."""
    texts = tokenizer.batch_decode([[i] for i in range(min(vocab, len(tokenizer)))])
    texts += [""] * (vocab - len(texts))

    def table(pred) -> torch.Tensor:
        return torch.tensor([pred(t) for t in texts], dtype=torch.bool, device=device)

    return {
        "blank": table(lambda t: "\n\n" in t),
        "blank_lstrip": table(lambda t: "\n\n" in t.lstrip()),
        "starts_nl": table(lambda t: t.startswith("\n")),
        "ends_nl": table(lambda t: t.endswith("\n")),
        "has_text": table(lambda t: bool(t.strip())),
    }


def decode_summary(tokenizer, ids: Sequence[int], separator: str) -> str:
    """The summary text of generated tokens: up to EOS, the first blank line or a new separator;
    one sentence per line, whitespace trimmed."""
    ids = list(ids)
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    text = tokenizer.decode(ids, skip_special_tokens=True).lstrip()
    text = text.split("\n\n")[0]
    marker = separator.strip()
    if marker:
        text = text.split(marker)[0]
    return "\n".join(line.strip() for line in text.split("\n") if line.strip())
