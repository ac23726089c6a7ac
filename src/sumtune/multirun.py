"""Several finished runs of one base model in memory at once (for `sumtune serve`): the base
model is loaded once and each run's trained parameters beside it.

How each method is held:
- zero_shot: the base itself;
- prompt_tuning: the soft prompt's keys/values, computed once on the base weights; a row lays
  them in front of its prompt in the KV cache (`decoding.Variant`), as `Generator` does for one run;
- lora: one named PEFT adapter per run in LoRA layers injected once into the base; every forward
  names each row's adapter (PEFT's mixed-adapter batches, "__base__" for rows without one);
- last_layers / full: they replace base weights. Their trained tensors are kept beside the base
  and swapped in (module attributes re-pointed: no copy) around a batch of that run's rows, then
  swapped back. Memory: the trained tensors once (last_layers: the untied head copy and trained
  blocks; full: a second set of weights), against a whole base model per run for separate copies.

So rows of zero_shot, prompt_tuning and lora runs batch together (any mix, the same decoding
settings); a last_layers or full run batches only its own rows.
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from sumtune.config import METHODS, Config, load_run_config
from sumtune.data import stop_ids
from sumtune.decoding import BASE_ADAPTER, Generator, Variant
from sumtune.decoding.parts import decoding_parts
from sumtune.errors import UserError
from sumtune.fastpath import fast_paths_for_decoding
from sumtune.fingerprints import fingerprint
from sumtune.methods import get_method
from sumtune.methods.base import read_meta, read_params
from sumtune.modeling import autocast_dtype, load_model, load_tokenizer, resolve_precision
from sumtune.runs import check_base, check_finished_run, check_method

log = logging.getLogger(__name__)
# eval keys that score summaries after decoding, not how they are decoded
SCORING_KEYS = ("metrics", "bertscore_model", "bertscore_layers", "bertscore_rescale")

BASE_KEYS = ("model_type", "config_sha", "weights_sha")


@dataclass
class ServedRun:
    """One run held beside the shared base."""

    name: str
    path: Path
    method: str
    trained: str  # what trained, in a few words (Method.describe)
    cfg: Config  # the run's configuration (requests apply their decoding to a copy)
    autocast: torch.dtype | None = None
    variant: Variant = Variant()  # soft prompt keys/values, LoRA adapter name
    soft: torch.Tensor | None = None  # the soft prompt, until its keys/values are computed
    swap: list[tuple[nn.Module, str, nn.Parameter]] | None = None  # (module, attribute, trained)


@dataclass
class Row:
    """One summary to make: a run, its configuration with the request's decoding, the prompt."""

    run: ServedRun
    cfg: Config
    prompt: list[int]


def run_names(paths: list[Path]) -> list[str]:
    """Short unique names: the directory name, with parents added until the names differ."""
    depth = 1
    while True:
        names = ["/".join(p.resolve().parts[-depth:]) for p in paths]
        if len(set(names)) == len(names) or depth > 8:
            return names
        depth += 1


def check_same_base(runs: list[Path], metas: list[dict]) -> None:
    """One line, before anything loads, when the runs were trained on different base models
    (their recorded fingerprints differ)."""
    first = metas[0]["base_model"]
    for run, meta in zip(runs[1:], metas[1:]):
        other = meta["base_model"]
        if any(other.get(k) != first.get(k) for k in BASE_KEYS):
            raise UserError(
                f"{run} was trained on base model '{other.get('name')}' (weights {other.get('weights_sha')}), "
                f"{runs[0]} on '{first.get('name')}' (weights {first.get('weights_sha')}); "
                "serve runs of one base model together (start one server per base model)"
            )


def _param_slot(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    module, _, attr = name.rpartition(".")
    return model.get_submodule(module), attr


class RunSet:
    """The base model, the runs beside it, and batched decoding over them (see the module doc)."""

    def __init__(self, paths: list[str | Path], base_model: str | None = None, device: str | None = None):
        runs = [check_finished_run(p) for p in paths]
        metas = [read_meta(r / "adapter") for r in runs]
        cfgs = [load_run_config(r) for r in runs]
        for run, cfg in zip(runs, cfgs):  # before the base models are compared: a lead3 run records none
            method = get_method(cfg.method.name)
            what = method.serve_refusal(method.options(cfg.method))
            if what:
                servable = ", ".join(m for m in METHODS if get_method(m).serving)
                raise UserError(f"{run}: sumtune serve batches {servable} runs (no DoRA, unquantised); "
                                f"use `sumtune evaluate` or `summarize` for a {what} run")
        check_same_base(runs, metas)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self._load_base(base_model or cfgs[0].model.name, runs, metas)
        self.runs: dict[str, ServedRun] = {}
        for name, run, cfg in zip(run_names(runs), runs, cfgs):
            self.runs[name] = self._load_run(name, run, cfg)
        self._finish(cfgs)

    # --- loading -------------------------------------------------------------

    def _load_base(self, name: str, runs: list[Path], metas: list[dict]) -> None:
        self.tokenizer = load_tokenizer(name)
        self.base = load_model(name)  # fp32: the weights the runs recorded
        self.base.eval()
        fp = fingerprint(name, self.base)
        for run, meta in zip(runs, metas):
            check_method(meta, get_method(load_run_config(run).method.name), run / "adapter")
            check_base(meta, fp, run / "adapter")
        for p in self.base.parameters():
            p.requires_grad_(False)
        # every parameter name (tied ones too) -> (module, attribute, first name of that tensor), taken
        # before LoRA wraps modules (and renames their weights), for the runs that replace weights
        first: dict[int, str] = {}
        self.slots = {n: (*_param_slot(self.base, n), first.setdefault(id(p), n))
                      for n, p in self.base.named_parameters(remove_duplicate=False)}
        self.peft = None  # the PeftModel holding every LoRA run's adapter, once there is one

    def _load_run(self, name: str, run: Path, cfg: Config) -> ServedRun:
        method = get_method(cfg.method.name)
        served = ServedRun(name, run, method.name, method.describe(method.options(cfg.method)), cfg)
        adapter = run / "adapter"
        if method.serving == "soft_prompt":
            wrapped = method.load(self.base, self.tokenizer, adapter, method.options(cfg.method))  # shares the base
            served.soft = decoding_parts(wrapped).soft_prompt
        elif method.serving == "adapter":
            served.variant = Variant(adapter=self._add_adapter(method, adapter, len(self.runs)))
        elif method.serving == "weights":
            served.swap = self._trained_slots(method, adapter, cfg)
        return served

    def _add_adapter(self, method, adapter: Path, index: int) -> str:
        from peft import PeftModel  # late: peft (3 s to import) only for a PEFT method

        method.check_adapter(adapter)
        name = f"run{index}"  # a valid module name, whatever the directory is called
        if self.peft is None:
            self.peft = PeftModel.from_pretrained(self.base, str(adapter), adapter_name=name, is_trainable=False)
        else:
            self.peft.load_adapter(str(adapter), adapter_name=name, is_trainable=False)
        return name

    def _trained_slots(self, method, adapter: Path, cfg: Config) -> list[tuple[nn.Module, str, torch.Tensor]]:
        """(module, attribute, trained tensor) for every base parameter the run replaces, its
        tensors checked against the method's model built on the meta device (no memory); for
        tied head follows trained embeddings (full fine-tuning saves a tied tensor once), as in the run."""
        with torch.device("meta"):
            shape = AutoModelForCausalLM.from_config(copy.deepcopy(self.base.config))
        shape = method.prepare(shape, self.tokenizer, method.options(cfg.method))
        names = [n for n, p in shape.named_parameters() if p.requires_grad]
        tensors = read_params(shape, adapter, method.weights_file, names)
        slots = []
        for n, (module, attr, canonical) in self.slots.items():
            source = n if n in tensors else canonical
            if source in tensors:
                slots.append((module, attr, tensors[source]))
        return slots

    def _finish(self, cfgs: list[Config]) -> None:
        """Device, the fast paths (as `evaluate._model` applies them), soft prompts' keys/values,
        swap tensors in the dtype of what they replace."""
        settings = {(c.train.fast, tuple(c.train.fast_paths), c.model.attention, c.train.precision) for c in cfgs}
        if len(settings) > 1:
            log.warning("runs differ in train.fast(_paths)/model.attention/train.precision; serving with %s's",
                        next(iter(self.runs)))
        cfg = cfgs[0]
        model = self.peft if self.peft is not None else self.base
        model.to(self.device)
        self.autocast = autocast_dtype(resolve_precision(cfg.train.precision, self.device))
        fast_paths_for_decoding(model, cfg, self.autocast)
        self.router = AdapterRouter(model) if self.peft is not None else None
        self.generator = Generator(model, self.tokenizer, cfg.eval, self.autocast, router=self.router)
        for run in self.runs.values():
            run.autocast = self.autocast
            if run.soft is not None:
                run.variant, run.soft = Variant(soft_kv=self.generator.prompt_kv(run.soft)), None
            if run.swap is not None:
                run.swap = [(m, a, self._like(getattr(m, a), t)) for m, a, t in run.swap]

    @staticmethod
    def _like(old: torch.Tensor, new: torch.Tensor) -> nn.Parameter:
        return nn.Parameter(new.to(device=old.device, dtype=old.dtype), requires_grad=False)

    # --- decoding ------------------------------------------------------------

    @contextmanager
    def _swapped(self, run: ServedRun):
        """The run's trained tensors in place of the base's, for one batch."""
        old = [getattr(m, a) for m, a, _ in run.swap]
        try:
            for m, a, p in run.swap:
                setattr(m, a, p)
            yield
        finally:
            for (m, a, _), p in zip(run.swap, old):
                setattr(m, a, p)

    def group_key(self, row: Row) -> tuple:
        """Rows with equal keys decode in one batch: the same weights (a swapping run alone) and
        the same decoding (`decoding_key`)."""
        return (row.run.name if row.run.swap is not None else None, *self.decoding_key(row))

    def decoding_key(self, row: Row) -> tuple:
        """How a row decodes: its decoding settings (max_sentences only trims the text afterwards),
        precision and stop tokens (serve queues rows by it: greedy never waits in a beam batch)."""
        ev = asdict(replace(row.cfg.eval, preset="greedy", batch_size=0, max_sentences=0))
        decoding = tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in ev.items()
                         if k not in SCORING_KEYS)
        return decoding, row.run.autocast, self.stop_ids(row)

    def stop_ids(self, row: Row) -> tuple[int, ...]:
        return stop_ids(self.tokenizer, row.cfg.data)

    def decode(self, rows: list[Row], max_batch: int = 8, mode: str = "mixed",
               cancelled: Callable[[int], bool] | None = None) -> list[tuple[list[int], float]]:
        """(generated tokens, seconds of the batch it was decoded in) per row, in order. `mode`:
        "mixed" batches rows of different runs (`group_key`); "per_run" only rows of one run;
        "alone" decodes each row by itself (the baselines of bench/serve_throughput.py).
        `cancelled(i)`: row i is no longer wanted (see `Generator.generate`)."""
        if mode not in ("mixed", "per_run", "alone"):
            raise ValueError(f"unknown decoding mode {mode!r}")
        groups: dict[tuple, list[int]] = {}
        for i, row in enumerate(rows):
            key = (i,) if mode == "alone" else self.group_key(row)
            groups.setdefault((row.run.name, key) if mode == "per_run" else key, []).append(i)
        out: list[tuple[list[int], float]] = [([], 0.0)] * len(rows)
        for idx in groups.values():
            first = rows[idx[0]]
            ev = replace(first.cfg.eval, batch_size=max_batch * first.cfg.eval.num_beams)
            gen = self.generator.with_config(ev, self.stop_ids(first))
            t0 = time.perf_counter()
            with self._swapped(first.run) if first.run.swap is not None else nullcontext():
                tokens = gen.generate([rows[i].prompt for i in idx], variants=[rows[i].run.variant for i in idx],
                                      cancelled=None if cancelled is None else (lambda j, idx=idx: cancelled(idx[j])))
            seconds = time.perf_counter() - t0
            for i, t in zip(idx, tokens):
                out[i] = (t, seconds)
        return out

    def describe(self) -> list[dict]:
        return [{"name": r.name, "method": r.method, "trained": r.trained} for r in self.runs.values()]


class AdapterRouter:
    """Tells every LoRA layer which adapter each row of the next forward uses: a forward pre-hook
    passes PEFT's `adapter_names` (one name per row; "__base__": no adapter). Hooks are set once;
    a call only swaps the list."""

    def __init__(self, model: nn.Module):
        from peft.tuners.lora import LoraLayer  # late: peft (3 s to import) only for a PEFT method

        self.names: list[str] | None = None
        for m in model.modules():
            if isinstance(m, LoraLayer):
                m.register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, module, args, kwargs):
        if self.names is not None:
            kwargs["adapter_names"] = self.names
        return args, kwargs

    def __call__(self, names: list[str]) -> None:
        self.names = list(names) if names else [BASE_ADAPTER]
