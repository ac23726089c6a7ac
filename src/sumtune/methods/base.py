"""The interface every method implements. A method turns a frozen base model into
the model that trains, saves only what it trained, and loads it back.

Contract for the module `prepare` returns (the "method model"):
- `model(input_ids=..., attention_mask=..., labels=None)` returns an object with
  `.logits` of shape [batch, seq_len, vocab] aligned with `input_ids` (a method
  that prepends virtual tokens strips their positions from the logits), and `.loss`
  when labels are given;
- exactly the parameters the method trains have `requires_grad=True`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import torch

from sumtune.config import MethodConfig


class Method(ABC):
    name: str = ""
    trains: bool = True  # zero_shot: False

    @abstractmethod
    def prepare(self, model: torch.nn.Module, tokenizer, cfg: MethodConfig) -> torch.nn.Module:
        """Freeze the base model and attach/unfreeze what this method trains."""

    @abstractmethod
    def save(self, model: torch.nn.Module, directory: Path, meta: dict) -> None:
        """Write the trained weights only (RUN/adapter), atomically; `meta` is recorded beside them."""

    @abstractmethod
    def load(self, model: torch.nn.Module, tokenizer, directory: Path, cfg: MethodConfig) -> torch.nn.Module:
        """Rebuild the method model on the base `model` with the weights in `directory`."""

    def merged(self, model: torch.nn.Module) -> torch.nn.Module:
        """A plain Hugging Face model equivalent to the method model (for export)."""
        raise NotImplementedError(f"{self.name} cannot be exported as a plain model")

    def trainable_state(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The trainable tensors by name (used by checkpoints)."""
        return {n: p for n, p in model.named_parameters() if p.requires_grad}


def freeze(model: torch.nn.Module) -> None:
    for p in model.parameters():
        p.requires_grad_(False)
