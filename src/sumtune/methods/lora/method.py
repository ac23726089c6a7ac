"""LoRA through PEFT: low-rank adapters on every attention projection and MLP linear layer of
any decoder-only model, saved in PEFT's own format and mergeable into a plain model for export.

Options (PEFT's own): `method.use_dora` (DoRA, Liu et al. 2024: magnitude and direction trained
apart; merges too) and `method.use_rslora` (rank-stabilised scaling alpha/sqrt(r), Kalajdzievski 2023).
`method.quantize: 4bit` is QLoRA (Dettmers et al. 2023): the frozen base in NF4 with double
quantisation and bf16 compute (bitsandbytes, CUDA only: `sumtune.quantize`)."""

from __future__ import annotations

from pathlib import Path

import torch

from sumtune.architecture import block_linears
from sumtune.errors import UserError
from sumtune.io import atomic_dir, load_tensors, read_json
from sumtune.methods.base import Method, freeze, weights_path, write_meta
from sumtune.methods.lora.config import LoraConfig


def default_targets(model: torch.nn.Module) -> list[str]:
    """The names of every Linear/Conv1D inside the decoder blocks (attention and MLP) of any
    architecture: a rule, not a table (PEFT's own per-architecture defaults stop at q and v)."""
    return sorted({name.rsplit(".", 1)[-1] for name, _ in block_linears(model)})


def target_modules(model: torch.nn.Module, cfg: LoraConfig) -> list[str]:
    return list(cfg.target_modules) if cfg.target_modules else default_targets(model)


def uses_conv1d(model: torch.nn.Module, targets: list[str]) -> bool:
    """Whether the targets are GPT-2-style Conv1D layers (weights stored [in, out]: fan_in_fan_out)."""
    # late: transformers (1 s to import) only once a model is at hand
    from transformers.pytorch_utils import Conv1D

    return any(isinstance(m, Conv1D) and any(n == t or n.endswith("." + t) for t in targets)
               for n, m in block_linears(model))


class Lora(Method):
    name = "lora"
    weights_file = "adapter_model.safetensors"
    config_class = LoraConfig
    serving = "adapter"
    shards = True

    def describe(self, cfg: LoraConfig) -> str:
        where = ", ".join(cfg.target_modules) if cfg.target_modules else "attention+MLP"
        kind = ("Q" if cfg.quantize == "4bit" else "") + ("DoRA" if cfg.use_dora else "LoRA")
        return f"{kind} r={cfg.r} α={cfg.alpha}{' rs' if cfg.use_rslora else ''} on {where}"

    def _config(self, model, cfg: LoraConfig):
        from peft import LoraConfig as PeftLoraConfig  # late: peft (3 s to import) only for a PEFT method

        targets = target_modules(model, cfg)
        return PeftLoraConfig(
            task_type="CAUSAL_LM", r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
            target_modules=targets, fan_in_fan_out=uses_conv1d(model, targets),
            use_dora=cfg.use_dora, use_rslora=cfg.use_rslora,
        )

    def prepare(self, model, tokenizer, cfg: LoraConfig):
        from peft import get_peft_model  # late: peft (3 s to import) only for a PEFT method

        freeze(model)
        if cfg.quantize == "4bit":
            # late: peft (3 s to import) only for a PEFT method
            from peft import prepare_model_for_kbit_training

            # norms and head to fp32 for stable training; no gradient checkpointing (a speed choice
            # left to the trainer); the frozen 4-bit weights stay as they are
            model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        try:
            return get_peft_model(model, self._config(model, cfg))
        except ValueError as e:
            raise UserError(f"method.target_modules: {str(e).splitlines()[0]}") from None

    def save(self, model, directory: Path, meta: dict) -> None:
        with atomic_dir(directory) as tmp:
            model.save_pretrained(tmp)
            write_meta(tmp, meta)

    def write_state(self, model, directory: Path, state: dict[str, torch.Tensor]) -> None:
        model.save_pretrained(directory, state_dict=state)

    def serve_refusal(self, cfg: LoraConfig) -> str:
        return "DoRA" if cfg.use_dora else "QLoRA" if cfg.quantize != "none" else ""

    def check_adapter(self, directory: Path) -> None:
        """One-line errors for a truncated or corrupt adapter or another PEFT type (before PEFT reads it)."""
        load_tensors(weights_path(directory, self.weights_file))
        peft_type = read_json(Path(directory) / "adapter_config.json").get("peft_type")
        if peft_type != "LORA":
            raise UserError(f"{directory} holds a {peft_type} adapter, not LoRA; load it as its own method")

    def load(self, model, tokenizer, directory: Path, cfg: LoraConfig):
        from peft import PeftModel  # late: peft (3 s to import) only for a PEFT method

        self.check_adapter(directory)
        freeze(model)
        return PeftModel.from_pretrained(model, str(directory), is_trainable=False)

    def merged(self, model):
        return model.merge_and_unload()
