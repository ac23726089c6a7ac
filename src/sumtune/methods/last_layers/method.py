"""Last-layers fine-tuning: the top of a frozen model trains. Three keys choose what:
`method.train_head` (default true), `method.last_k_blocks` (default 0) and
`method.train_final_norm` (default false).

- `train_head: true` (the default): the LM head trains, plus the final layer norm and
  the last k blocks if asked. With k = 0 this is head-only tuning ("LM head (untied
  copy)"), 38.6M trainable weights on GPT-Neo-125M.
- `train_head: false`: the classic "last layers" baseline: the last k blocks and/or the
  final layer norm train (at least one of them: else nothing would), the head stays as
  the base model has it - tied to the input embeddings - and frozen.

Many models (GPT-Neo, GPT-2, OPT, Gemma) tie the LM head to the input embeddings (one tensor). Training
that tensor would also change every input embedding, so the "frozen" body would
move. When the head trains we therefore untie it: it becomes a trainable copy of the
embedding matrix (`config.tie_word_embeddings = False`), and the input embeddings stay
frozen and bit-identical. The cost: one extra vocab x hidden matrix in memory and in
the exported model. When the head does not train there is nothing to protect the
embeddings from, so the head is left tied (no copy, `config.tie_word_embeddings` as it
was), and the saved weights hold only the trained blocks/norm. Models with an untied head
(Llama, Qwen2, Phi-3, GPT-NeoX) train their own head matrix: nothing is copied.

Blocks and final norm are found for any decoder-only model (`sumtune.architecture`).
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from sumtune.architecture import decoder_parts
from sumtune.errors import UserError
from sumtune.methods.base import Method, freeze, load_params, save_params
from sumtune.methods.last_layers.config import LastLayersConfig


def untie_head(model: nn.Module) -> nn.Module:
    """Give the LM head its own copy of the weights if it shares them with the input embeddings."""
    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    return head


def blocks_and_norm(model: nn.Module, need_norm: bool = False) -> tuple[nn.ModuleList, nn.Module | None]:
    """The decoder blocks and the final layer norm of any decoder-only model (`architecture`), the norm
    required only when it trains."""
    parts = decoder_parts(model)
    return parts.blocks, parts.require_norm() if need_norm else parts.final_norm


class LastLayers(Method):
    name = "last_layers"
    weights_file = "weights.safetensors"
    config_class = LastLayersConfig
    serving = "weights"

    def describe(self, cfg: LastLayersConfig) -> str:
        k = cfg.last_k_blocks
        parts = ([f"last {k} blocks" if k > 1 else "last block"] if k else []) + (["final norm"] if cfg.train_final_norm else [])
        if not cfg.train_head:
            return " + ".join(parts) + " (head tied, frozen)"
        return " + ".join(["LM head (untied)", *parts]) if parts else "LM head (untied copy)"

    def gradient_span(self, shape, cfg: LastLayersConfig) -> int:
        """The head and the last k blocks, when anything under the head trains; nothing for the head alone."""
        below_head = cfg.last_k_blocks > 0 or cfg.train_final_norm
        return shape.head + cfg.last_k_blocks * shape.block if below_head else 0

    def caches_features(self, cfg: LastLayersConfig) -> bool:
        return cfg.train_head and not cfg.last_k_blocks and not cfg.train_final_norm

    def prepare(self, model, tokenizer, cfg: LastLayersConfig):
        freeze(model)
        blocks, norm = blocks_and_norm(model, need_norm=cfg.train_final_norm)
        if cfg.last_k_blocks > len(blocks):
            raise UserError(
                f"config key 'method.last_k_blocks': got {cfg.last_k_blocks}, the model has {len(blocks)} blocks"
            )
        cfg.check()
        trained: list[nn.Module] = [untie_head(model)] if cfg.train_head else []
        if cfg.train_final_norm:
            trained.append(norm)
        trained += list(blocks)[len(blocks) - cfg.last_k_blocks:]
        for module in trained:
            for p in module.parameters():
                p.requires_grad_(True)
        return model

    def save(self, model, directory: Path, meta: dict) -> None:
        save_params(model, directory, meta, self.weights_file)

    def load(self, model, tokenizer, directory: Path, cfg: LastLayersConfig):
        model = self.prepare(model, tokenizer, cfg)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        freeze(model)
        load_params(model, directory, self.weights_file, names)
        return model

    def merged(self, model):
        return model
