"""Greedy and beam search over a batch of prompts: the `Generator`.

Greedy output is token-identical to ``generate`` on the same model at batch 1 (tests, for
every method); beam search follows ``generate``'s algorithm (scores normalised by
generated length ** length_penalty, the same early-stop heuristic). ``no_repeat_ngram_size``
bans repeats within the summary only - unlike ``generate``, which would also ban every
n-gram of the article in a decoder-only prompt and so forbid copying phrases.

Rows may carry their own soft prompt and LoRA adapter (``variants``: ``sumtune serve`` decodes
rows of several runs together); a `router` callback gets each row's adapter name before every
forward. A row's tokens do not depend on which rows share its batch (exactly in fp32).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn
from transformers.cache_utils import Cache, DynamicCache

from sumtune.config import EvalConfig
from sumtune.decoding import lean
from sumtune.decoding.cache import (
    BeamCache,
    LayerKV,
    cache_keyword,
    left_padded,
    max_positions,
    reorder_beams,
    select_rows,
    shared_prompts,
)
from sumtune.decoding.parts import decoding_parts
from sumtune.decoding.stopping import StopRule
from sumtune.decoding.variants import BASE_ADAPTER, KV, Variant
from sumtune.errors import UserError
from sumtune.progress import bar as bar_of


def ban_repeats(logits: torch.Tensor, seqs: torch.Tensor, n_done: int, n: int) -> torch.Tensor:
    """Forbid tokens that would repeat an n-gram of the summary so far (seqs[:, :n_done]), in place: for
    every earlier occurrence of a row's last n-1 tokens, the token that followed it."""
    if n <= 0 or n_done + 1 < n:
        return logits
    done = seqs[:, :n_done]
    if n == 1:
        rows, at = torch.arange(len(done), device=done.device)[:, None].expand_as(done).reshape(-1), done.reshape(-1)
    else:
        grams = done.unfold(1, n - 1, 1)  # [rows, n_done - n + 2, n - 1]: every (n-1)-gram; the last is the tail
        rows, start = (grams[:, :-1] == grams[:, -1:]).all(-1).nonzero(as_tuple=True)
        at = done[rows, start + n - 1]
    logits[rows, at] = float("-inf")
    return logits


class _Finished:
    """Beam search's finished hypotheses: the best k of each entry (score, tokens), best first, and
    whether an entry can still improve."""

    def __init__(self, entries: int, k: int, length_penalty: float, device: torch.device):
        self.k, self.lp, self.device = k, length_penalty, device
        self.best: list[list[tuple[float, list[int]]]] = [[] for _ in range(entries)]
        self.open = torch.ones(entries, dtype=torch.bool, device=device)

    def add(self, entry: int, score: float, tokens: list[int]) -> None:
        self.best[entry].append((score, tokens))
        self.best[entry] = sorted(self.best[entry], key=lambda h: -h[0])[: self.k]

    def close(self, entries: torch.Tensor, best_running: torch.Tensor, step: int) -> None:
        """The early-stop heuristic of `generate` (early_stopping=False): an entry is done once the best
        running score at the current length cannot beat the worst of k finished hypotheses.
        `best_running[i]`: the best running score of entry `entries[i]`."""
        best = [self.best[e] for e in entries.tolist()]
        full = torch.tensor([len(h) == self.k for h in best], device=self.device)
        worst = torch.tensor([h[-1][0] if h else -1e9 for h in best], device=self.device)
        self.open[entries] &= ~full | (best_running / float(step + 1) ** self.lp > worst)

    def results(self) -> list[list[int]]:
        """The best hypothesis of each entry ([] for an entry cancelled before it finished one)."""
        return [h[0][1] if h else [] for h in self.best]


class Generator:
    """Decode summaries for token prompts with a method model (see `sumtune.decoding`)."""

    def __init__(self, model: nn.Module, tokenizer, cfg: EvalConfig, autocast: torch.dtype | None = None,
                 stop_at_blank_line: bool = True, router: Callable[[list[str]], None] | None = None,
                 stop_ids: Sequence[int] | None = None):
        """`router`: called with each row's adapter name before every forward (rows of a batch may
        use different LoRA adapters: see `Variant`); None for a single method model. `stop_ids`: the
        tokens that end a summary (`data.stop_ids`; default EOS)."""
        self.router = router
        self.autocast = autocast
        device = next(model.parameters()).device
        with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):  # a prompt encoder's weights
            self.lm, soft, prefix = decoding_parts(model)  # may be cast for inference
        self.lm.eval()
        self.cfg = cfg
        self.device = next(self.lm.parameters()).device
        self.cache_kw = cache_keyword(self.lm)
        self.lean = lean.step_for(self.lm)  # the fast path lean_decode_step: steps without the model's forward
        self.max_pos = max_positions(self.lm)
        vocab = self.lm.get_output_embeddings().weight.shape[0]
        self.stop_rule = StopRule(tokenizer, vocab, self.device, stop_at_blank_line, cfg.min_new_tokens, stop_ids)
        kv = self.prompt_kv(soft) if soft is not None else self.cache_dtype(prefix)
        self.own = Variant(kv)

    def with_config(self, cfg: EvalConfig, stop_ids: Sequence[int] | None = None) -> Generator:
        """This generator with other decoding settings and, when given, other stop tokens (the stop
        tables and soft prompt are shared)."""
        other = copy.copy(self)
        other.cfg = cfg
        other.stop_rule = self.stop_rule.with_min_new_tokens(cfg.min_new_tokens)
        if stop_ids is not None:
            other.stop_rule.stop_ids = torch.tensor(list(stop_ids), dtype=torch.long, device=self.device)
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

    def cache_dtype(self, kv: KV | None) -> KV | None:
        """Prefix keys/values on the device, in the dtype the model's own keys have (autocast's, else the
        weights'), as the prefill appends to them."""
        if kv is None:
            return None
        dtype = self.autocast or self.lm.get_input_embeddings().weight.dtype
        return [(k.to(self.device, dtype), v.to(self.device, dtype)) for k, v in kv]

    def _prefill(self, prompt: Sequence[int], v: Variant) -> tuple[list[LayerKV], torch.Tensor]:
        """One prompt alone, after its soft prompt: its keys/values and last-position logits."""
        cache = DynamicCache(ddp_cache_data=v.soft_kv) if v.soft_kv is not None else DynamicCache()
        ids = torch.tensor([list(prompt)], device=self.device)
        pos = torch.arange(v.n_soft, v.n_soft + ids.shape[1], device=self.device)[None]
        self._route([v.adapter])
        with self._ctx():
            out = self.lm(input_ids=ids, position_ids=pos, use_cache=True, logits_to_keep=1,
                          **{self.cache_kw: cache})
        return [(layer.keys, layer.values) for layer in cache.layers], out.logits[0, -1].float()

    def _step(self, tokens: torch.Tensor, cache: Cache | BeamCache, mask: torch.Tensor, pos: torch.Tensor,
              adapters: list[str]) -> torch.Tensor:
        self._route(adapters)
        with self._ctx():
            if self.lean is not None:
                return self.lean(input_ids=tokens[:, None], attention_mask=mask, position_ids=pos[:, None], cache=cache)
            out = self.lm(input_ids=tokens[:, None], attention_mask=mask, position_ids=pos[:, None],
                          use_cache=True, **{self.cache_kw: cache})
        return out.logits[:, -1].float()

    # --- public --------------------------------------------------------------

    @torch.inference_mode()
    def generate(self, prompts: Sequence[Sequence[int]], progress: bool = False,
                 variants: Sequence[Variant] | None = None,
                 cancelled: Callable[[int], bool] | None = None) -> list[list[int]]:
        """New tokens for each prompt, in input order; a finished summary ends with its stop token.
        `variants`: each prompt's own soft prompt/adapter (default: the model's own). `cancelled(i)`:
        whether prompt i is no longer wanted (`sumtune serve`: its client left), asked before every
        step; such a row leaves its batch at once, a batch of cancelled rows ends, and the row's
        tokens are whatever it had (none for a batch not started)."""
        variants = list(variants) if variants is not None else [self.own] * len(prompts)
        k = self.cfg.num_beams
        per_batch = max(1, self.cfg.batch_size // k)
        order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
        out: list[list[int]] = [[] for _ in prompts]
        with bar_of("generating", len(prompts), "summary", enabled=progress) as bar:
            for start in range(0, len(order), per_batch):
                idx = order[start : start + per_batch]
                batch, vs = [prompts[i] for i in idx], [variants[i] for i in idx]
                gone = None if cancelled is None else (lambda idx=idx: [cancelled(i) for i in idx])
                if gone is not None and all(gone()):
                    continue
                results = self._greedy(batch, vs, gone) if k == 1 else self._beam(batch, vs, k, gone)
                for i, r in zip(idx, results):
                    out[i] = r
                bar.update(len(idx))
        return out

    # --- batch set-up --------------------------------------------------------

    def _start(self, prompts: Sequence[Sequence[int]], variants: Sequence[Variant], beams: int = 0):
        """Prefill every prompt and lay the caches out left-padded: (cache, mask, pos, logits, P, limit).
        Rows with soft prompts of other lengths (or none) line up as rows of other lengths do. `beams`: the
        prompts' keys/values stay once per entry for that many beams each (`BeamCache`, the lean step's)."""
        if any(len(p) == 0 for p in prompts):
            raise ValueError("empty prompt")
        rows = [self._prefill(p, v) for p, v in zip(prompts, variants)]
        lengths = [v.n_soft + len(p) for p, v in zip(prompts, variants)]
        width = max(lengths)
        limit = min(self.cfg.max_new_tokens, self.max_pos - width)
        if limit < 1:
            raise UserError(f"prompt of {width} tokens leaves no room to generate within the model's "
                            f"{self.max_pos} positions; lower data.max_length")
        cache, mask = left_padded([kv for kv, _ in rows], lengths, width if beams else width + limit, self.device)
        if beams:
            cache, mask = shared_prompts(cache, beams, limit), F.pad(mask, (0, limit), value=1)
        pos = torch.tensor(lengths, device=self.device)
        logits = torch.stack([r[1] for r in rows])
        return cache, mask, pos, logits, width, limit

    # --- greedy --------------------------------------------------------------

    def _dropped(self, gone: Callable[[], list[bool]] | None, active: torch.Tensor,
                 running: torch.Tensor) -> torch.Tensor | None:
        """Which of the `running` active rows (`active`: their original rows) are cancelled now; None
        when none is (asked in Python first: no tensor work while nobody cancels)."""
        flags = gone() if gone is not None else None
        if not flags or not any(flags):
            return None
        dropped = torch.tensor(flags, dtype=torch.bool, device=self.device)[active] & running
        return dropped if bool(dropped.any()) else None

    def _greedy(self, prompts: Sequence[Sequence[int]], variants: Sequence[Variant],
                gone: Callable[[], list[bool]] | None = None) -> list[list[int]]:
        cache, mask, pos, logits, width, limit = self._start(prompts, variants)
        rule, n = self.stop_rule, len(prompts)
        rows = torch.arange(n, device=self.device)  # original row of each active row
        seqs = torch.zeros(n, limit, dtype=torch.long, device=self.device)  # by active row
        prev = torch.full((n,), -1, device=self.device)
        started = torch.zeros(n, dtype=torch.bool, device=self.device)
        finished = torch.zeros(n, dtype=torch.bool, device=self.device)
        lengths = [limit] * n
        out = torch.zeros(n, limit, dtype=torch.long, device=self.device)
        for step in range(limit):
            logits = rule.ban(logits, prev, started, step)
            tok = ban_repeats(logits, seqs, step, self.cfg.no_repeat_ngram_size).argmax(-1)
            seqs[:, step] = tok
            stop = rule.stops(tok, prev, started) & ~finished
            dropped = self._dropped(gone, rows, ~finished)
            if dropped is not None:
                stop |= dropped
            if step == limit - 1:
                break
            if bool(stop.any()):
                for r in rows[stop].tolist():
                    lengths[r] = step + 1
                finished |= stop
                if bool(finished.all()):
                    break
                if int(finished.sum()) * 4 >= len(rows) or dropped is not None:  # compact: drop the finished rows
                    keep = (~finished).nonzero().squeeze(1)
                    out[rows[finished]] = seqs[finished]
                    rows, seqs, tok, mask, pos = rows[keep], seqs[keep], tok[keep], mask[keep], pos[keep]
                    started, finished = started[keep], finished[keep]
                    select_rows(cache, keep)
            started = rule.update_started(started, tok)
            prev = tok
            names = [variants[i].adapter for i in rows.tolist()] if self.router else []
            logits = self._step(tok, cache, mask[:, : width + step + 1], pos, names)
            pos = pos + 1
        out[rows] = seqs
        return [out[i, : lengths[i]].tolist() for i in range(n)]

    # --- beam search ---------------------------------------------------------

    def _beam(self, prompts: Sequence[Sequence[int]], variants: Sequence[Variant], k: int,
              gone: Callable[[], list[bool]] | None = None) -> list[list[int]]:
        """Beam search as `generate` does it: per step the top 2k continuations; those that stop and rank
        within the first k become finished hypotheses scored sum_logprob / generated_len ** length_penalty;
        the best k that do not stop continue; an entry is done once k hypotheses are finished and the best
        running beam, normalised by the current length, cannot beat the worst of them. Done entries leave
        the batch (the cache is compacted when a quarter of the entries are done); beams are reordered in
        place, their generated positions only (`reorder_beams`). With the lean step (`decoding.lean`) an
        entry's prompt keys/values are held once for its beams (`BeamCache`), else once per beam."""
        shared = k if self.lean is not None else 0
        cache, mask, pos, logits, width, limit = self._start(prompts, variants, shared)
        b, dev = len(prompts), self.device
        names = [v.adapter for v in variants for _ in range(k)]  # beams stay in their entry's rows
        rep = torch.arange(b, device=dev).repeat_interleave(k)
        if not shared:
            select_rows(cache, rep)
        mask, pos, logits = mask[rep], pos[rep], logits[rep]
        seqs = torch.zeros(b * k, limit, dtype=torch.long, device=dev)
        scores = torch.zeros(b, k, device=dev)
        scores[:, 1:] = -1e9  # only the first copy expands at step 0
        prev = torch.full((b * k,), -1, device=dev)
        started = torch.zeros(b * k, dtype=torch.bool, device=dev)
        done = _Finished(b, k, self.cfg.length_penalty, dev)
        entries = torch.arange(b, device=dev)  # the original entry of each entry in the batch
        for step in range(limit):
            top, src, tok, stop = self._candidates(logits, scores, seqs, prev, started, step)
            if step == limit - 1:
                stop = torch.ones_like(stop)
            self._finish(done, entries, top, src, tok, stop, seqs, step)
            if bool(stop.all()):
                break
            scores, keep = torch.topk(top + stop.float() * -1e9, k, dim=1)
            pick = src.gather(1, keep).view(-1)
            prev = tok.gather(1, keep).view(-1)
            seqs = seqs[pick]
            seqs[:, step] = prev
            started = self.stop_rule.update_started(started[pick], prev)
            reorder_beams(cache, pick, width)
            done.close(entries, scores[:, 0], step)
            dropped = self._dropped(gone, entries, done.open[entries])
            if dropped is not None:
                done.open[entries[dropped]] = False
            still = done.open[entries]
            if not bool(still.any()):
                break
            if int((~still).sum()) * 4 >= len(entries) or dropped is not None:  # compact: drop the done entries' beams
                kept = still.nonzero().squeeze(1)
                rows = (kept[:, None] * k + torch.arange(k, device=dev)).view(-1)
                entries, scores = entries[kept], scores[kept]
                seqs, prev, started, mask, pos = seqs[rows], prev[rows], started[rows], mask[rows], pos[rows]
                names = [names[r] for r in rows.tolist()]
                select_rows(cache, rows)
            logits = self._step(prev, cache, mask[:, : width + step + 1], pos, names)
            pos = pos + 1
        return done.results()

    def _candidates(self, logits: torch.Tensor, scores: torch.Tensor, seqs: torch.Tensor, prev: torch.Tensor,
                    started: torch.Tensor, step: int):
        """The top 2k continuations of each entry [entries, 2k]: (score, flat source beam, token, stops)."""
        b, k = scores.shape
        logp = torch.log_softmax(logits, dim=-1)
        logp = ban_repeats(self.stop_rule.ban(logp, prev, started, step), seqs, step, self.cfg.no_repeat_ngram_size)
        vocab = logp.shape[-1]
        cand = (logp.view(b, k, vocab) + scores[:, :, None]).view(b, k * vocab)
        top, idx = torch.topk(cand, 2 * k, dim=1)
        src = (idx // vocab) + (torch.arange(b, device=logits.device) * k)[:, None]
        tok = idx % vocab
        stop = self.stop_rule.stops(tok.view(-1), prev[src.view(-1)], started[src.view(-1)]).view(b, 2 * k)
        return top, src, tok, stop

    def _finish(self, done: _Finished, entries: torch.Tensor, top: torch.Tensor, src: torch.Tensor,
                tok: torch.Tensor, stop: torch.Tensor, seqs: torch.Tensor, step: int) -> None:
        """Candidates that stop and rank within the first k of an entry still open become hypotheses
        (row i of `top` etc. is entry `entries[i]`)."""
        k = done.k
        new = stop[:, :k] & done.open[entries][:, None]
        if not bool(new.any()):
            return
        norm = top / float(step + 1) ** done.lp
        ids = entries.tolist()
        for e, j in new.nonzero().tolist():
            done.add(ids[e], float(norm[e, j]), seqs[src[e, j], :step].tolist() + [int(tok[e, j])])
