"""Last-layers fine-tuning: the LM head trains; optionally the final layer norm
(`method.train_final_norm`) and the last k transformer blocks (`method.last_k_blocks`).

GPT-Neo and GPT-2 tie the LM head to the input embeddings (one tensor). Training
that tensor would also change every input embedding, so the "frozen" body would
move. We therefore untie the head: it becomes a trainable copy of the embedding
matrix (`config.tie_word_embeddings = False`), and the input embeddings stay
frozen and bit-identical. The cost: one extra vocab x hidden matrix in memory and
in the exported model.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from sumtune.config import MethodConfig
from sumtune.errors import UserError
from sumtune.methods.base import Method, freeze, load_params, save_params


def untie_head(model: nn.Module) -> nn.Module:
    """Give the LM head its own copy of the weights if it shares them with the input embeddings."""
    head = model.get_output_embeddings()
    if head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone())
    model.config.tie_word_embeddings = False
    return head


def blocks_and_norm(model: nn.Module) -> tuple[nn.ModuleList, nn.Module]:
    """The transformer blocks and the final layer norm (GPT-Neo, GPT-2: transformer.h, transformer.ln_f)."""
    body = getattr(model, "transformer", None)
    if body is None or not hasattr(body, "h") or not hasattr(body, "ln_f"):
        raise UserError(f"method last_layers supports GPT-Neo and GPT-2 models, not model_type '{model.config.model_type}'")
    return body.h, body.ln_f


class LastLayers(Method):
    name = "last_layers"
    weights_file = "weights.safetensors"
    config_keys = ("last_k_blocks", "train_final_norm")

    def prepare(self, model, tokenizer, cfg: MethodConfig):
        freeze(model)
        blocks, norm = blocks_and_norm(model)
        if cfg.last_k_blocks > len(blocks):
            raise UserError(
                f"config key 'method.last_k_blocks': got {cfg.last_k_blocks}, the model has {len(blocks)} blocks"
            )
        trained: list[nn.Module] = [untie_head(model)]
        if cfg.train_final_norm:
            trained.append(norm)
        trained += list(blocks)[len(blocks) - cfg.last_k_blocks:]
        for module in trained:
            for p in module.parameters():
                p.requires_grad_(True)
        return model

    def save(self, model, directory: Path, meta: dict) -> None:
        save_params(model, directory, meta, self.weights_file)

    def load(self, model, tokenizer, directory: Path, cfg: MethodConfig):
        model = self.prepare(model, tokenizer, cfg)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        freeze(model)
        load_params(model, directory, self.weights_file, names)
        return model

    def merged(self, model):
        return model
