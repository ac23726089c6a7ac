"""A run directory's metadata and loading a finished run back.

Layout (see DESIGN.md): RUN/config.yaml, RUN/adapter/ (the method's weights plus
`sumtune.json`, the metadata below), RUN/eval/<split>/ (evaluations on the run's own data) and
RUN/eval/on-<label>/<split>/ (on other data, `other_data_label`). Writing, in the trainer:

    base = modeling.load_model(cfg.model.name)
    meta = run_meta(cfg, base)                 # before method.prepare
    model = method.prepare(base, tokenizer, method.options(cfg.method))
    ...train...
    method.save(model, run / "adapter", meta)  # writes the weights + sumtune.json

Reading, everywhere else: `cfg, method, model, tokenizer = load_run(run)`; a run's configuration
with the decoding settings and data of an evaluation applied: `with_overrides`.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import torch

from sumtune.config import DATA_PRESETS, Config, absolute_source, load_run_config, set_key, set_keys, validate
from sumtune.errors import UserError
from sumtune.fingerprints import FINGERPRINT_VERSION, fingerprint
from sumtune.methods import get_method
from sumtune.methods.base import Method, read_meta, weights_path
from sumtune.modeling import load_model, load_tokenizer

OTHER_DATA_PREFIX = "on-"  # RUN/eval/on-<label>/: never a split's name
_UNSAFE = re.compile(r"[^a-z0-9._]+")


def other_data_label(dataset: dict) -> str:
    """A file-system-safe name for other data (a dataset record as `evaluate` writes it): its
    preset, else the source's name (file stem, directory or Hub dataset), then the first 8 hex
    digits of its content SHA-256, e.g. "xsum-1a2b3c4d"."""
    preset = dataset.get("preset")
    source = str(dataset.get("source") or "data").strip()
    if preset and preset != "none":
        name = preset
    elif source.startswith("hf:"):
        name = source[3:].split(":")[0].rsplit("/", 1)[-1]
    else:
        name = Path(source).stem or Path(source).name
    slug = _UNSAFE.sub("-", name.lower()).strip("-.")[:40] or "data"
    sha = dataset.get("sha256")
    if not sha:  # no content fingerprint: the source's text stands in for it
        sha = hashlib.sha256(source.encode("utf-8")).hexdigest()
    return f"{slug}-{sha[:8]}"


class RunDir:
    """A run directory: the only code that knows RUN/'s layout (DESIGN.md's run contract) and
    whether a run is finished."""

    FILES = ("config.yaml", "metrics.jsonl", "results.json", "checkpoints", "adapter")

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __str__(self) -> str:
        return str(self.path)

    config = property(lambda self: self.path / "config.yaml")
    metrics = property(lambda self: self.path / "metrics.jsonl")
    results = property(lambda self: self.path / "results.json")
    adapter = property(lambda self: self.path / "adapter")
    checkpoints = property(lambda self: self.path / "checkpoints")
    decoding_choice = property(lambda self: self.path / "eval" / "decoding_choice.json")  # experiment --choose-decoding

    @classmethod
    def of_config(cls, config_file: str | Path) -> RunDir | None:
        """The run a config file is the config.yaml of (beside the run's records or checkpoints), else None."""
        run = cls(Path(config_file).parent)
        same = Path(config_file).name == run.config.name
        return run if same and (run.metrics.is_file() or run.checkpoints.is_dir()) else None

    def eval_dir(self, split: str, other_data: str | None = None) -> Path:
        """RUN/eval/<split>/: the evaluation on the run's own data (its headline); with `other_data`
        (a label, `other_data_label`) RUN/eval/on-<label>/<split>/: one on other data, beside it."""
        if other_data is None:
            return self.path / "eval" / split
        return self.path / "eval" / f"{OTHER_DATA_PREFIX}{other_data}" / split

    def eval_dir_for(self, split: str, dataset: dict) -> Path:
        """Where an evaluation of `split` on `dataset` (the record `evaluate` writes, with
        "is_training_data") goes: the run's own data to eval/<split>/, other data beside it."""
        if dataset.get("is_training_data", True):
            return self.eval_dir(split)
        return self.eval_dir(split, other_data_label(dataset))

    def other_evals(self, split: str) -> list[tuple[str, Path]]:
        """(label, directory) of each complete evaluation of `split` on other data (its metrics.json
        written), by label."""
        root = self.path / "eval"
        if not root.is_dir():
            return []
        found = [(d.name[len(OTHER_DATA_PREFIX):], d / split) for d in root.iterdir()
                 if d.is_dir() and d.name.startswith(OTHER_DATA_PREFIX) and (d / split / "metrics.json").is_file()]
        return sorted(found)

    def present(self) -> list[str]:
        """The run files already there (a new run must find none)."""
        return [f for f in self.FILES if (self.path / f).exists()]

    def is_finished(self) -> bool:
        """Whether results.json says the run finished."""
        try:
            return json.loads(self.results.read_text(encoding="utf-8")).get("finished") is True
        except (OSError, ValueError):
            return False

    def check_finished(self) -> RunDir:
        """This run, if it is finished and has weights; else a one-line error saying what it is."""
        if not self.config.is_file():
            raise UserError(f"{self.path} is not a sumtune run directory (no config.yaml); pass the --output-dir "
                            "of a train run")
        if not self.is_finished():
            raise UserError(f"{self.path} is an unfinished run (its results.json does not say finished); finish it "
                            f"with `sumtune train --config {self.config} --resume`")
        if not self.adapter.is_dir():
            raise UserError(f"{self.path} has no weights (no adapter/ directory); retrain it with `sumtune train`")
        return self


def check_finished_run(run_dir: str | Path) -> Path:
    """The run directory, if it is a finished run with weights (RunDir.check_finished)."""
    return RunDir(run_dir).check_finished().path


def run_meta(cfg: Config, model: torch.nn.Module, **extra) -> dict:
    """The metadata `method.save` records: {"method", "base_model": fingerprints.fingerprint,
    "method_config": the method's hyper-parameters, **extra}.

    `model` is the base model as `modeling.load_model` returned it, before `method.prepare`
    (LoRA injects modules that would change the fingerprint).
    """
    # late: transformers (1 s to import) only once a model is at hand
    from transformers import PreTrainedModel

    if not isinstance(model, PreTrainedModel) or hasattr(model, "peft_config"):
        raise ValueError("run_meta needs the base model: call it before method.prepare")
    method = get_method(cfg.method.name)
    return {
        "method": method.name,
        "base_model": fingerprint(cfg.model.name, model),
        "method_config": method.method_config(cfg.method),
        **extra,
    }


def modelless_meta(cfg: Config, **extra) -> dict:
    """`run_meta` of a method that loads no model (`Method.needs_model` False): the base model by
    name only, marked not loaded (no fingerprint: no weights were read)."""
    method = get_method(cfg.method.name)
    return {"method": method.name, "base_model": {"name": cfg.model.name, "loaded": False},
            "method_config": method.method_config(cfg.method), **extra}


def check_method(meta: dict, method: Method, where: Path) -> None:
    """One-line error when `where` was saved by another method."""
    if meta["method"] != method.name:
        raise UserError(
            f"{where} holds weights of method '{meta['method']}', which cannot be loaded as method '{method.name}'; "
            f"load the run with method '{meta['method']}'"
        )


def check_base(meta: dict, base: dict, where: Path) -> None:
    """One-line error when `where` was trained on another base model (`base`: fingerprints.fingerprint),
    or when its record predates weight-value fingerprints (scheme 1: names, sizes and shapes
    only, which another checkpoint of the same architecture matches): that cannot be checked,
    so it is refused with the command that re-records it."""
    saved = meta["base_model"]
    scheme1 = saved.get("fingerprint", 1) < FINGERPRINT_VERSION
    keys = ("model_type", "config_sha") if scheme1 else ("model_type", "config_sha", "weights_sha")
    if scheme1 and all(saved.get(k) == base.get(k) for k in keys):
        run = Path(where).parent
        raise UserError(
            f"{where} records base model '{saved.get('name')}' without its weight values (sumtune before "
            f"fingerprint scheme {FINGERPRINT_VERSION}), so it cannot be checked that '{base['name']}' is the model it was "
            f"trained on; if you are sure it is, run `python -m sumtune.fingerprints upgrade {run} --model {base['name']}`, "
            "else retrain the run"
        )
    if any(saved.get(k) != base.get(k) for k in keys):
        raise UserError(
            f"{where} was trained on base model '{saved.get('name')}' (config {saved.get('config_sha')}, "
            f"weights {saved.get('weights_sha')}), not on '{base['name']}' (config {base['config_sha']}, "
            f"weights {base['weights_sha']}); load it onto the base model it was trained on"
        )


def load_run(run_dir: str | Path, dtype: torch.dtype = torch.float32, base_model: str | None = None,
             base: torch.nn.Module | None = None) -> tuple[Config, Method, torch.nn.Module, object]:
    """(cfg, method, model, tokenizer) of a finished run, on the CPU in eval mode, nothing
    requiring grad. `base_model` overrides the run's model.name (e.g. the model moved);
    it must still be the same model. `base`: that model already loaded (a copy `plan` holds), used
    instead of loading it, still checked against the run's fingerprint."""
    run = Path(run_dir)
    cfg = load_run_config(run)
    adapter = run / "adapter"
    if not adapter.is_dir():
        raise UserError(f"{run} has no adapter/ directory (the training did not finish saving); retrain it")
    meta = read_meta(adapter)
    method = get_method(cfg.method.name)
    check_method(meta, method, adapter)
    if not method.needs_model:
        raise UserError(f"{run} is a {method.name} run, which has no model to load "
                        f"({method.describe(method.options(cfg.method))}); "
                        "`sumtune evaluate` and `sumtune summarize` make its summaries without one")
    if method.weights_file:
        weights_path(adapter, method.weights_file)  # fail before loading the base model
    name = base_model or cfg.model.name
    tokenizer = load_tokenizer(name)
    model = base if base is not None else load_model(name, quantize=cfg.method.quantize)  # fp32 or QLoRA's 4-bit
    check_base(meta, fingerprint(name, model), adapter)
    if dtype != torch.float32:
        model = model.to(dtype)
    model = method.load(model, tokenizer, adapter, method.options(cfg.method))
    model.eval()
    return cfg, method, model, tokenizer


def preset_source(cfg: Config, data_preset: str) -> str:
    """What an evaluation with `data_preset` and no --data reads: the run's own source for the
    run's own preset, else the preset's Hub copy (DATA_PRESETS)."""
    if data_preset == cfg.data.preset:
        return cfg.data.source
    return DATA_PRESETS.get(data_preset, {}).get("source_default", cfg.data.source)


def with_overrides(cfg: Config, overrides: dict[str, Any] | None, data: str | None = None,
                   data_preset: str | None = None) -> Config:
    """`cfg` (changed in place) with `data_preset`, then decoding overrides, then `data` applied,
    validated: shared by `evaluate` and `sumtune serve`, which keeps each run's configuration in memory."""
    if data_preset is not None:
        data = data if data is not None else preset_source(cfg, data_preset)
        set_key(cfg, "data.preset", data_preset)  # its decoding preset first: the overrides follow
    set_keys(cfg, [(f"eval.{key}", value) for key, value in (overrides or {}).items()])  # preset first
    if data is not None:
        set_key(cfg, "data.source", absolute_source(data))
    return validate(cfg)
