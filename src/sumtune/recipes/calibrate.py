"""The measurements behind `sumtune plan`: a short calibration of one method on this machine,
through the code `sumtune train` and `sumtune evaluate` run (training.setup, the real AdamW
step, validation_loss, save_state, the run loaded back as evaluate loads it, `Generator` with
the configured decoding), in a temporary run directory that the caller removes.

What is timed, and why so (each time projected by the tokens it computed: `per_step`, `val_pass`,
`loss_pass`):
- Optimizer steps. The longest rows set the activations' peak memory, and one micro-batch's
  activations are freed before the next, so the longest micro-batch as the trainer runs it sets a
  step's peak. Where rows run alone (`fastpath.loss.rows_alone`: on a CPU each row's forward and
  backward run before the next row's, unpadded), a warm-up step on the shortest row pays the
  one-time costs (optimizer state, kernels' first calls), then a step on the longest micro-batch,
  its rows alone as the trainer runs them, is timed and holds the peak: one row's activations at a
  time, and what the C allocator keeps from row to row (glibc keeps freed activations in its heap
  after the first row, so one row alone shows less than a step's peak RSS). Elsewhere (padded batches, a GPU) an untimed warm-up
  step on the longest micro-batch, then the first step of the trainer's epoch order, timed; the
  head-only feature cache (whose head takes a whole step's rows at once) warms up on the shortest
  row and times the first step likewise. `steps` > 1 adds steps of the epoch order. Each step is
  projected by its tokens: the rows' own where they are computed alone (`computes_rows_alone`),
  else each micro-batch padded to its longest row.
- Head-only last_layers (the frozen-feature cache): its first epoch computes and caches the
  body's features, later epochs cost only the head; the same steps are therefore timed twice,
  cache cold and warm, and validation passes likewise.
- Loss passes (validation, the test split): `batches` evenly spaced passes of the loop's own
  longest-first order (single rows where they are computed alone), so their seconds per token times the
  whole pass's tokens estimate it.
- Decoding: a two-token decode pays the one-time costs, untimed; then the first (longest) batch,
  as `evaluate` runs it first, and evenly spaced later batches up to `articles`; the other batches
  are projected at their mean (none: at the first's, an upper bound).
- Shared between methods (`calibrate_shared`): one load of the base model, and the decoding of
  every method whose decoded model has the same signature (merged adapters, last layers, soft
  prompts: the base's).
"""

from __future__ import annotations

import gc
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from sumtune.bertscore import load_scorer, wanted
from sumtune.config import Config, save_config
from sumtune.data import encode_prompts, load_splits, micro_batches, stop_ids, token_batches, tokenize_splits
from sumtune.data.batching import pack_by_tokens
from sumtune.decoding import Generator
from sumtune.decoding.summaries import summary_text
from sumtune.fastpath import from_config, label_loss_or
from sumtune.fastpath.features import CachedHeadLoss
from sumtune.fastpath.loss import rows_alone
from sumtune.memory import KIND_RSS, PeakMemory
from sumtune.methods import get_method
from sumtune.recipes.calibrate_shared import SharedBase, decoding_signature, shared_eval
from sumtune.recipes.calibration import Calibration, longest_first_batches, loss_units, strata, unit_tokens
from sumtune.recipes.evaluate import _model, _scores, _split_rows, summary_loss
from sumtune.runs import RunDir
from sumtune.training.budget import StepFlops, budget_of, planned_step_flops
from sumtune.training.resume import save_state
from sumtune.training.state import Progress, accelerator_for, make_optimizer, plan_steps, setup
from sumtune.training.step import optimizer_step, token_loss_sum
from sumtune.training.validation import validation_loss


def computes_rows_alone(loss_fn, model: torch.nn.Module, device: torch.device) -> bool:
    """Whether `loss_fn` computes each row alone, unpadded: the label loss on a CPU (`rows_alone`), or the
    feature cache, which computes the body's features row by row."""
    return rows_alone(loss_fn, model, device) or isinstance(loss_fn, CachedHeadLoss)


def _timed(fn, *args, **kwargs) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


class Calibrator:
    """Calibrates one method at a time into `root/<method>`; `bar` is ticked once per measured task."""

    def __init__(self, root: Path, steps: int, batches: int, articles: int, eval_limit: int | None, bar):
        self.root, self.steps, self.batches, self.articles, self.eval_limit = root, steps, batches, articles, eval_limit
        self.bar = bar
        self._prompts: dict[str, list[list[int]]] = {}  # test prompts, shared by the methods
        self._scorer: tuple[Any, float] | None = None  # (BERTScore scorer, its load seconds), shared likewise
        self.base = SharedBase()  # the base model, loaded once
        self._evals: dict[tuple, Calibration] = {}  # decoding signature -> the calibration that measured it

    def _bertscore(self, cfg: Config) -> tuple[Any, float]:
        """(scorer, seconds `evaluate` spends loading it) with eval.metrics bertscore, else (None, 0)."""
        if not wanted(cfg.eval):
            return None, 0.0
        if self._scorer is None:
            self._scorer = _timed(load_scorer, cfg.eval)
        return self._scorer

    @staticmethod
    def tasks(steps: int, articles: int, trains: bool, cached: bool = False) -> int:
        """Bar units of one method (an estimate, for the bar's length only)."""
        train = (1 + steps * (2 if cached else 1) + 2) if trains else 0
        return 1 + train + steps * (2 if cached else 1) + 1 + 1 + steps + articles + 2

    def calibrate(self, cfg: Config) -> Calibration:
        """Training (or zero_shot's validation), then evaluation; out of memory is recorded in
        `error`, not raised (the plan flags the method)."""
        run = RunDir(self.root / cfg.method.name)
        cfg.output_dir = str(run.path)
        cal = Calibration(cfg.method.name, trains=get_method(cfg.method.name).trains)
        if not get_method(cfg.method.name).needs_model:
            return self._without_model(cfg, cal)
        try:
            self._training(cfg, run, cal)
            _release()
            self._eval_part(cfg, run, cal)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as e:
            if not _out_of_memory(e):
                raise
            cal.error = f"out of memory during the calibration ({str(e).splitlines()[0][:120]})"
        _release()
        return cal

    def _without_model(self, cfg: Config, cal: Calibration) -> Calibration:
        """A method without a model (lead3) costs no model time: nothing is timed or loaded, its times are
        0; only the rows it would read are counted."""
        splits = load_splits(cfg.data, cfg.data.seed)
        cal.trains, cal.memory_kind = False, "no model"
        cal.n_train, cal.n_val = len(splits["train"]), len(splits["validation"])
        cal.n_test = len(_split_rows(cfg, "test", self.eval_limit))
        return cal

    def _training(self, cfg: Config, run: RunDir, cal: Calibration) -> None:
        accelerator, precision = accelerator_for(cfg, run.path)
        memory = PeakMemory(accelerator.device).start()
        cal.memory_kind, cal.precision = memory.kind, precision
        try:
            base = self.base.copy(cfg)  # untimed: the run loads it instead, for the seconds added below
            s, cal.setup_seconds = _timed(setup, cfg, accelerator, precision, base=base)
            cal.setup_seconds += self.base.seconds(cfg)
            self.bar.update(1)
            cal.trains, cal.trainable_params, cal.total_params = s.method.trains, s.trainable, s.total
            cal.n_train, cal.n_val = len(s.train_ds), len(s.val_ds)
            save_config(cfg, run.config)
            self._train_part(s, run, cal, memory) if s.method.trains else self._validation(s, s.model, cal)
            cal.save_seconds = _timed(s.method.save, accelerator.unwrap_model(s.model), run.adapter, s.meta)[1]
            cal.train_peak_mb = self._peak(memory)
        finally:
            memory.stop()

    def _train_part(self, s, run: RunDir, cal: Calibration, memory: PeakMemory) -> None:
        cfg, accelerator, tc = s.cfg, s.accelerator, s.cfg.train
        plan = plan_steps(cfg, len(s.train_ds), accelerator.num_processes)
        s.model.train()
        optimizer, scheduler = make_optimizer(s.model, s.method, tc, s.fast_paths, plan.total)
        model, optimizer = accelerator.prepare(s.model, optimizer)
        trained = [p for p in model.parameters() if p.requires_grad]
        lengths = [len(x) for x in s.train_ds["input_ids"]]
        cal.rows_per_step = plan.per_step
        budget = budget_of(tc)
        if budget and budget.kind == "flops":  # counted as the trainer counts them
            counter = StepFlops(s.shape, cfg.method, s.trainable, lengths)
            order_lengths = lengths if cfg.data.group_by_length else None
            cal.step_flops = list(planned_step_flops(plan, len(lengths), order_lengths, counter))

        def step(chunk: list[int]) -> float:
            args = (s.train_ds, chunk, tc.batch_size, plan.world, accelerator.process_index, s.collate)
            batches = token_batches(*args, tc.max_tokens_per_batch, lengths) if tc.max_tokens_per_batch \
                else micro_batches(*args)
            seconds = _timed(optimizer_step, accelerator, model, optimizer, scheduler, s.loss_fn, batches,
                             trained, tc.max_grad_norm)[1]
            self.bar.update(1)
            return seconds

        cached = isinstance(s.loss_fn, CachedHeadLoss)  # its head takes the whole step: a step is timed
        alone = cal.rows_alone = rows_alone(s.loss_fn, model, accelerator.device)
        by_length = sorted(range(len(lengths)), key=lambda i: -lengths[i])
        epoch_steps = min(self.steps, plan.steps_per_epoch if cached else plan.total)
        chunks = []
        if alone or cached:  # warm-up: the shortest row pays the one-time costs (optimizer state, kernels)
            step(by_length[-1:])
        else:  # warm-up: the longest micro-batch (the peak), one-time costs
            step(by_length[:tc.batch_size])
        if alone:  # the longest micro-batch, its rows alone as the trainer runs them: timed, it sets the peak
            chunks.append(by_length[:tc.batch_size])
            epoch_steps -= 1
        for k in range(epoch_steps):
            epoch, first, _ = plan.epoch_bounds(k)
            order = plan.order(len(lengths), epoch, lengths if cfg.data.group_by_length else None)
            chunks.append(order[(k - first) * plan.per_step:(k - first + 1) * plan.per_step])
        cal.step_seconds = [step(c) for c in chunks]

        unpadded = computes_rows_alone(s.loss_fn, model, accelerator.device)

        def cost(chunk: list[int]) -> int:  # what a step computes: each row alone, else padded batches
            if unpadded:
                return sum(lengths[i] for i in chunk)
            if tc.max_tokens_per_batch:
                packs = pack_by_tokens(sorted(chunk, key=lambda i: -lengths[i]), lengths, tc.max_tokens_per_batch)
            else:
                packs = [chunk[i:i + tc.batch_size] for i in range(0, len(chunk), tc.batch_size)]
            return sum(len(m) * max(lengths[i] for i in m) for m in packs)

        cal.step_tokens = [cost(c) for c in chunks]
        first = plan.order(len(lengths), 0, lengths if cfg.data.group_by_length else None)
        cal.mean_step_tokens = statistics.fmean(cost(first[k * plan.per_step:(k + 1) * plan.per_step])
                                                for k in range(plan.steps_per_epoch))
        if cached:  # later epochs: the same rows again, their features cached
            cal.cached_step_seconds = [step(c) for c in chunks]
            cache = s.loss_fn.cache
            per_row = cache.mem_bytes / max(1, len(cache.mem))
            total = min(cache.max_bytes, per_row * (len(s.train_ds) + len(s.val_ds)))
            cal.feature_cache_mb = max(0.0, total - cache.mem_bytes) / 2**20 if memory.kind == "peak RSS" else 0.0
        self._validation(s, model, cal, twice=cached)
        progress = Progress(step=1, samples_per_step=plan.per_step, micro_samples=plan.micro)
        cal.checkpoint_seconds = _timed(save_state, s, run, model, optimizer, scheduler, progress)[1]
        self.bar.update(1)

    def _validation(self, s, model, cal: Calibration, twice: bool = False) -> None:
        """Sampled passes of a validation pass (the trainer's `validation_loss`), timed, with their tokens."""
        if not s.method.trains:
            model.to(s.accelerator.device)
        val = s.val_ds
        lengths = [len(x) for x in val["input_ids"]]
        units = loss_units(lengths, s.cfg.train.batch_size, computes_rows_alone(s.loss_fn, model, s.accelerator.device))
        picked = strata(units, self.batches)
        cal.val_batch_tokens = [unit_tokens(b, lengths) for b in picked]
        cal.val_pass_tokens = sum(unit_tokens(b, lengths) for b in units)

        def one(rows: list[int]) -> float:
            seconds = _timed(validation_loss, s.accelerator, model, s.loss_fn, val.select(rows), s.collate,
                             s.cfg.train.batch_size)[1]
            self.bar.update(1)
            return seconds

        if not s.method.trains:  # nothing warmed the model up: the shortest pass does, untimed
            one(units[-1])
        cal.val_batch_seconds = [one(b) for b in picked]
        if twice:
            cal.cached_val_batch_seconds = [one(b) for b in picked]

    def _eval_part(self, cfg: Config, run: RunDir, cal: Calibration) -> None:
        """The run loaded back as `evaluate` loads it; sampled loss batches and decoded batches of the
        test rows the experiment would evaluate, or those of an earlier method whose decoded model has
        the same signature (`calibrate_shared`)."""
        from datasets import DatasetDict  # late: datasets (0.6 s to import) only when rows are tokenized

        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        memory = PeakMemory(device).start()
        try:
            base = self.base.copy(cfg)  # untimed: evaluate loads it instead, for the seconds added below
            t0 = time.perf_counter()
            ds = _split_rows(cfg, "test", self.eval_limit)
            model, tokenizer, autocast = _model(run.path, cfg, base=base)
            rows = tokenize_splits(DatasetDict({"test": ds}), tokenizer, cfg.data)["test"]
            cal.eval_load_seconds = time.perf_counter() - t0 + self.base.seconds(cfg)
            cal.n_test = len(ds)
            self.bar.update(1)
            scorer, load_s = self._bertscore(cfg)  # every evaluation loads it once
            cal.eval_load_seconds += load_s
            self._measure_loss(cfg, cal, rows, model, tokenizer, autocast, device)
            signature = decoding_signature(model, cfg, autocast)
            if signature in self._evals:
                shared_eval(cal, self._evals[signature])
            else:
                self._measure_decoding(cfg, cal, ds, model, tokenizer, autocast, scorer, device)
                self._evals[signature] = cal
            cal.eval_peak_mb = max(cal.eval_peak_mb, self._peak(memory))
        finally:
            memory.stop()

    def _measure_loss(self, cfg: Config, cal: Calibration, rows, model, tokenizer, autocast,
                      device: torch.device) -> None:
        """Sampled passes of the test loss pass (`summary_loss`), timed, with their tokens."""
        fast = from_config(cfg.train)
        lengths = [len(x) for x in rows["input_ids"]]
        units = loss_units(lengths, cfg.eval.batch_size,
                           computes_rows_alone(label_loss_or(token_loss_sum, fast), model, device))
        picked = strata(units, self.batches)
        cal.loss_tokens = [unit_tokens(b, lengths) for b in picked]
        cal.loss_pass_tokens = sum(unit_tokens(b, lengths) for b in units)
        for b in picked:
            cal.loss_seconds.append(_timed(summary_loss, model, rows.select(b), tokenizer.pad_token_id,
                                           cfg.eval.batch_size, autocast, None, fast)[1])
            self.bar.update(1)

    def _measure_decoding(self, cfg: Config, cal: Calibration, ds, model, tokenizer, autocast, scorer,
                          device: torch.device) -> None:
        """The first (longest) decoding batch, and evenly spaced later ones up to `articles`, timed;
        then their scoring. A decode of two tokens of the shortest prompt first pays the one-time
        costs (kernels' first calls, the head's path choice), untimed."""
        if "prompts" not in self._prompts:
            self._prompts["prompts"] = encode_prompts(tokenizer, list(ds["article"]), cfg.data)
        prompts = self._prompts["prompts"]
        generator, cal.decode_build_seconds = _timed(Generator, model, tokenizer, cfg.eval, autocast=autocast,
                                                     stop_ids=stop_ids(tokenizer, cfg.data))  # evaluate pays it too
        per_batch = max(1, cfg.eval.batch_size // cfg.eval.num_beams)  # as Generator.generate batches
        batches = longest_first_batches([len(p) for p in prompts], per_batch)
        warm = generator.with_config(replace(cfg.eval, max_new_tokens=2, min_new_tokens=0))
        warm.generate([prompts[batches[-1][-1]]])
        predictions, references = [], []
        for b in [batches[0], *strata(batches[1:], math.ceil(self.articles / per_batch) - 1)]:
            out, t = _timed(generator.generate, [prompts[i] for i in b])
            cal.decode_batch_seconds.append(t)
            predictions += [summary_text(tokenizer, g, cfg) for g in out]
            references += [ds[i]["summary"] for i in b]
            self.bar.update(len(b))
        cal.articles_decoded = len(predictions)
        _scores(predictions, references, tokenizer, cfg.train.seed, scorer, device)  # the scorers' one-time set-up
        cal.score_seconds = _timed(_scores, predictions, references, tokenizer, cfg.train.seed, scorer, device)[1]

    def _peak(self, memory: PeakMemory) -> float:
        """The peak measured, less the held base model's copy where it counts (peak RSS)."""
        held = self.base.held_mb() if memory.kind == KIND_RSS else 0.0
        return max(0.0, memory.peak_mb() - held)


def _out_of_memory(e: BaseException) -> bool:
    """As `training.step.oom_error` recognises it: CUDA's error, or the CPU allocator's."""
    return isinstance(e, torch.cuda.OutOfMemoryError) or "can't allocate memory" in str(e)


def _release() -> None:
    """Give the last method's CUDA memory back before the next one is measured (on a CPU nothing:
    `experiment` runs its methods one after another in one process without this either)."""
    if torch.cuda.is_available():
        gc.collect()
        torch.cuda.empty_cache()
