"""What `sumtune plan`'s calibration measures once and shares between methods, and why that is
the same measurement each method would have made alone:

- The base model: loaded from disk once (`SharedBase`); every method trains and evaluates a
  fresh copy of it, so no method sees another's changes. Each run of the experiment loads it
  itself, so the one load's seconds are added to every method's set-up and evaluation load, as
  measured; the held copy's bytes are taken off the peak RSS measured beside it (the run holds no
  such copy).
- Decoding and scoring: their cost depends on the model `evaluate` decodes, not on its weight
  values: the same modules and parameter shapes run the same operations on the same rows.
  Merged adapters (LoRA, DoRA, IA³ merged for decoding) and trained last layers leave the base
  model's shape, so they decode at zero_shot's cost (`decoding_signature`). A soft prompt or
  prefix of n virtual tokens is not part of the signature either: its keys and values are
  computed once, so each step and each prompt's prefill attend to n more positions and compute
  nothing else. How long the summaries come out does depend on the weights, but a calibration's
  weights are a few steps from the base's, and no calibration knows the lengths a trained
  method will learn: the projection decodes the base's lengths for every method, and says so.
- The test loss pass is measured for each method (a few rows: the soft prompt's and prefix's
  tokens do count there).
"""

from __future__ import annotations

import copy
import time
from typing import Any

import torch

from sumtune.config import Config, decoding_summary
from sumtune.decoding.parts import decoding_parts
from sumtune.modeling import load_model


class SharedBase:
    """The base model loaded once per (name, quantize); `copy()` gives a method its own copy.
    A quantized (4-bit, CUDA) base is loaded for each method instead: its weights are not plain
    tensors to copy."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], torch.nn.Module] = {}
        self.load_seconds: dict[tuple[str, str], float] = {}
        self.loads = 0  # disk loads made (the test's count)

    def copy(self, cfg: Config) -> torch.nn.Module:
        key = (cfg.model.name, cfg.method.quantize)
        if cfg.method.quantize != "none":
            return self._load(key)
        if key not in self._held:
            self._held[key] = self._load(key)
        return copy.deepcopy(self._held[key])

    def _load(self, key: tuple[str, str]) -> torch.nn.Module:
        t0 = time.perf_counter()
        model = load_model(key[0], quantize=key[1])
        self.load_seconds.setdefault(key, time.perf_counter() - t0)
        self.loads += 1
        return model

    def seconds(self, cfg: Config) -> float:
        """What one run pays to load the base from disk (the one load, as measured)."""
        return self.load_seconds.get((cfg.model.name, cfg.method.quantize), 0.0)

    def held_mb(self) -> float:
        """Resident MB of the held copies (on the CPU), which no run of the experiment holds."""
        seen: set[int] = set()
        total = 0
        for model in self._held.values():
            for t in [*model.parameters(), *model.buffers()]:
                if t.device.type == "cpu" and t.data_ptr() not in seen:
                    seen.add(t.data_ptr())
                    total += t.numel() * t.element_size()
        return total / 2**20


def decoding_signature(model: torch.nn.Module, cfg: Config, autocast: torch.dtype | None) -> tuple:
    """What decides decoding's cost for the model `evaluate` decodes: its class, every parameter's
    and buffer's name, shape and dtype (tied weights listed under each name, so a head untied by
    training matches a tied one: the same product either way), the precision, decoding and data
    settings. Equal signatures: the same operations on the same rows (a soft prompt or prefix
    aside: see the module docstring)."""
    lm, _, _ = decoding_parts(model)

    def shapes(items) -> tuple:
        return tuple((n, tuple(t.shape), str(t.dtype)) for n, t in items)

    return (type(lm).__name__, shapes(lm.named_parameters(remove_duplicate=False)),
            shapes(lm.named_buffers(remove_duplicate=False)),
            str(autocast), repr(sorted(decoding_summary(cfg.eval).items())), repr(cfg.data), cfg.train.seed)


EVAL_FIELDS = ("decode_build_seconds", "decode_batch_seconds", "articles_decoded", "score_seconds", "eval_peak_mb")


def shared_eval(cal: Any, source: Any) -> None:
    """Copy the decoding and scoring measurements of `source` (a Calibration of the same signature) into
    `cal`; `cal.eval_shared_from` names it."""
    for name in EVAL_FIELDS:
        setattr(cal, name, copy.copy(getattr(source, name)))
    cal.eval_shared_from = source.method
