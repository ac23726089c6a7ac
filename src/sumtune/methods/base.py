"""The interface every method implements. A method turns a frozen base model into
the model that trains, saves only what it trained, and loads it back.

Contract for the module `prepare` returns (the "method model"):
- `model(input_ids=..., attention_mask=..., labels=None)` returns an object with
  `.logits` of shape [batch, seq_len, vocab] aligned with `input_ids` (a method
  that prepends virtual tokens strips their positions from the logits), and `.loss`
  when labels are given;
- exactly the parameters the method trains have `requires_grad=True`.

Each method owns its config dataclass (`config_class`, in `methods/<name>/config.py`); `options`
reads it from the `method:` section of a run's config, and `prepare`, `load`, `describe` and
`virtual_tokens` take it. `describe(cfg)` says in a few words what trains (for reports and logs).

The hooks the trainer and the decoder use, so that neither knows a method by name: `decays`
(which trained tensors AdamW decays), `virtual_tokens` (positions put before every prompt), and a
method model's `decoding_parts()` (what the batched decoder puts in front of a prompt:
`DecodingParts`, as `decoding.parts` reads them). A method without a model (`needs_model` False:
Lead-3) has `summarize` instead, and `prepare`/`load` refuse.

`load` rebuilds the method model for inference: nothing requires grad afterwards.

On disk (RUN/adapter): the method's weights file (`weights_file`, safetensors only)
plus `sumtune.json`, the metadata `runs.run_meta` builds (method, base model
fingerprint, method hyper-parameters).
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, NamedTuple

import torch

from sumtune.errors import UserError
from sumtune.io import (
    PICKLE_SUFFIXES,
    atomic_dir,
    atomic_save_tensors,
    atomic_write_json,
    load_tensors,
    read_json,
)
from sumtune.methods.config_base import MethodConfigBase

META_FILE = "sumtune.json"
LayerKV = tuple[torch.Tensor, torch.Tensor]  # one layer's keys and values, [1, kv_heads, n, head_dim] each


class DecodingParts(NamedTuple):
    """What the batched decoder needs from a method model."""

    lm: torch.nn.Module  # the plain causal LM it runs
    soft_prompt: torch.Tensor | None  # [n, hidden] input vectors before every prompt (prompt tuning, P-tuning)
    prefix_kv: list[LayerKV] | None  # keys/values per layer put in the cache before the prompt (prefix tuning)


class Method(ABC):
    name: str = ""
    trains: bool = True  # zero_shot: False
    weights_file: str | None = None  # inside RUN/adapter; None: the method saves no weights
    config_class: type[MethodConfigBase] = MethodConfigBase  # its keys (recorded in the metadata)
    not_exportable: str = ""  # why a plain model cannot hold what this method trains ("" = it can)
    shards: bool = False  # FSDP may shard it (it trains enough weights for sharding to pay)
    # how `sumtune serve` holds a run beside the shared base model: "base" (nothing of its own),
    # "soft_prompt" (its keys/values per row), "adapter" (a named PEFT adapter), "weights" (its
    # trained tensors swapped in per batch); "" = not servable yet
    serving: str = ""
    # False: an extractive method (lead3) that makes its summaries from the article alone (`summarize`);
    # nothing loads a model for it (train, evaluate, summarize, plan), and it has none to serve or export
    needs_model: bool = True

    @abstractmethod
    def prepare(self, model: torch.nn.Module, tokenizer, cfg: MethodConfigBase) -> torch.nn.Module:
        """Freeze the base model and attach/unfreeze what this method trains."""

    @abstractmethod
    def save(self, model: torch.nn.Module, directory: Path, meta: dict) -> None:
        """Write the trained weights only (RUN/adapter), atomically; `meta` is recorded beside them."""

    @abstractmethod
    def load(self, model: torch.nn.Module, tokenizer, directory: Path, cfg: MethodConfigBase) -> torch.nn.Module:
        """Rebuild the method model on the base `model` with the weights in `directory`."""

    @abstractmethod
    def describe(self, cfg: MethodConfigBase) -> str:
        """What trains under `cfg`, in a few words for a report (e.g. "soft prompt, 20 tokens")."""

    def merged(self, model: torch.nn.Module) -> torch.nn.Module:
        """A plain Hugging Face model equivalent to the method model (for export)."""
        raise UserError(f"a {self.name} run cannot be exported as a plain model: {self.not_exportable}")

    def summarize(self, articles: list[str], cfg: MethodConfigBase) -> list[str]:
        """The summaries of `articles` without a model (a method whose `needs_model` is False)."""
        raise NotImplementedError(f"{self.name} summarises with a model")

    def virtual_tokens(self, cfg: MethodConfigBase) -> int:
        """Positions the method puts before every prompt (soft prompts, prefixes): they count against
        the model's position limit."""
        return 0

    def gradient_span(self, shape, cfg: MethodConfigBase) -> int:
        """Multiply-accumulates per token that the activation gradients cross (`sumtune.flops`, for a
        `flops.ModelShape`): the whole model when anything below the head trains."""
        return shape.matmul if self.trains else 0

    def caches_features(self, cfg: MethodConfigBase) -> bool:
        """Whether only the head trains, so the frozen body's features can be cached after the first
        epoch (the feature_cache fast path; `sumtune plan` times those steps apart)."""
        return False

    def decays(self, name: str) -> bool:
        """Whether AdamW's weight decay applies to the trained matrix `name` (biases and norms
        never decay; a method excludes what is not a layer weight)."""
        return True

    def write_state(self, model: torch.nn.Module, directory: Path, state: dict[str, torch.Tensor]) -> None:
        """Write the trained tensors `state` (gathered from the shards of a sharded run, by their names
        in `model`) into `directory` in this method's format; the caller adds the metadata."""
        atomic_save_tensors(directory / self.weights_file, state, metadata={"format": "pt"})

    def serve_refusal(self, cfg: MethodConfigBase) -> str:
        """What keeps `sumtune serve` from batching a run of this method with options `cfg` ("" = nothing)."""
        return "" if self.serving else self.name

    def trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The trainable tensors by name (used by checkpoints)."""
        return {n: p for n, p in model.named_parameters() if p.requires_grad}

    def options(self, section: Any) -> MethodConfigBase:
        """A copy of this method's config from a run's `method:` section (`sumtune.config_methods`)."""
        return self.config_class.of(section)

    def method_config(self, section: Any) -> dict:
        """The hyper-parameters of this method (its keys, not its name), as recorded in the run metadata."""
        return {k: v for k, v in dataclasses.asdict(self.options(section)).items() if k != "name"}


def freeze(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)


def write_meta(directory: Path, meta: dict) -> None:
    atomic_write_json(Path(directory) / META_FILE, meta)


def read_meta(directory: Path) -> dict:
    """RUN/adapter/sumtune.json, or a one-line error saying the adapter is incomplete."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise UserError(f"{path} is missing: {directory} was not written by a finished sumtune run; retrain or pick another run")
    meta = read_json(path)
    if not isinstance(meta, dict) or "method" not in meta or "base_model" not in meta:
        raise UserError(f"{path}: expected keys 'method' and 'base_model'; the file is damaged, retrain the run")
    return meta


def weights_path(directory: Path, filename: str) -> Path:
    """`directory/filename` if it exists; refuses pickled weights offered in its place."""
    directory = Path(directory)
    path = directory / filename
    if path.is_file():
        return path
    pickles = sorted(f.name for f in directory.glob("*") if f.suffix in PICKLE_SUFFIXES) if directory.is_dir() else []
    if pickles:
        raise UserError(
            f"{directory / pickles[0]}: refusing to load a pickle file (it can run arbitrary code); "
            f"sumtune reads {filename} only: convert the weights with safetensors.torch.save_file"
        )
    raise UserError(f"weights file not found: {path}; the run did not finish saving, retrain it")


def save_params(model: torch.nn.Module, directory: Path, meta: dict, filename: str) -> None:
    """Write the trainable parameters (by their names in `model`) plus the metadata, atomically."""
    tensors = {n: p for n, p in model.named_parameters() if p.requires_grad}
    with atomic_dir(directory) as tmp:
        atomic_save_tensors(tmp / filename, tensors, metadata={"format": "pt"})
        write_meta(tmp, meta)


def read_params(model: torch.nn.Module, directory: Path, filename: str, names: list[str]) -> dict[str, torch.Tensor]:
    """The saved tensors for the parameters `names` of `model` (which may live on the meta device:
    only names and shapes are read); the file must hold exactly those names with the same shapes
    (else a one-line error naming the first difference)."""
    path = weights_path(directory, filename)
    tensors = load_tensors(path)
    params = dict(model.named_parameters())
    missing = [n for n in names if n not in tensors]
    unexpected = [n for n in tensors if n not in names]
    if missing or unexpected:
        what = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise UserError(
            f"{path}: {what} ({len(missing)} missing, {len(unexpected)} unexpected tensors); "
            "the weights were saved with other method settings or another base model"
        )
    for n in names:
        if tensors[n].shape != params[n].shape:
            raise UserError(
                f"{path}: tensor {n!r} has shape {tuple(tensors[n].shape)}, the model expects "
                f"{tuple(params[n].shape)}; the weights belong to another base model"
            )
    return tensors


def load_params(model: torch.nn.Module, directory: Path, filename: str, names: list[str]) -> None:
    """Copy the saved tensors into the parameters `names` of `model` (checked by `read_params`)."""
    tensors = read_params(model, directory, filename, names)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for n in names:
            params[n].copy_(tensors[n])
