"""Saving and loading adapters in PEFT's own format (adapter_config.json + adapter_model.safetensors),
shared by the PEFT-backed methods, so that `PeftModel.from_pretrained(base, RUN/adapter)` loads
any of them without sumtune."""

from __future__ import annotations

from pathlib import Path

from sumtune.errors import UserError
from sumtune.io import atomic_dir, load_tensors, read_json
from sumtune.methods.base import DecodingParts, LayerKV, weights_path, write_meta

PEFT_WEIGHTS = "adapter_model.safetensors"


def save_peft(peft_model, directory: Path, meta: dict) -> None:
    """PEFT's `save_pretrained` (trained weights only) plus sumtune.json, atomically."""
    with atomic_dir(directory) as tmp:
        peft_model.save_pretrained(tmp)
        write_meta(tmp, meta)


def check_peft_adapter(directory: Path, peft_type: str, method: str) -> None:
    """One-line errors for a truncated or corrupt adapter, or one of another PEFT type, before PEFT
    reads it (PEFT's own errors are long and name internals)."""
    load_tensors(weights_path(directory, PEFT_WEIGHTS))
    config = Path(directory) / "adapter_config.json"
    if not config.is_file():
        raise UserError(f"{config} is missing: the adapter did not finish saving; retrain the run")
    found = read_json(config).get("peft_type")
    if found != peft_type:
        raise UserError(f"{directory} holds a {found} adapter, not {peft_type} (method {method}); "
                        "load it as its own method")


def load_peft(model, directory: Path, peft_type: str, method: str):
    """The PEFT model of `directory` on the frozen base `model`, for inference."""
    from peft import PeftModel  # late: peft (3 s to import) only for a PEFT method

    check_peft_adapter(directory, peft_type, method)
    peft = PeftModel.from_pretrained(model, str(directory), is_trainable=False)
    for p in peft.parameters():  # PEFT leaves a prompt encoder trainable even so
        p.requires_grad_(False)
    return peft


def cache_layers(cache) -> list[LayerKV]:
    """(keys, values) per layer of a Transformers cache or of a legacy tuple of pairs."""
    layers = getattr(cache, "layers", None)
    if layers is not None:
        return [(layer.keys.detach(), layer.values.detach()) for layer in layers]
    return [(k.detach(), v.detach()) for k, v in cache]


def peft_decoding_parts(model) -> DecodingParts | None:
    """A PEFT model's decoding parts (None for a model that is not PEFT's): a LoRA/IA³ model decodes
    through its base model (layers injected, nothing merged); prompt learning puts its prompt
    (`get_prompt`) in front: prefix keys/values, or P-tuning's/prompt tuning's input vectors."""
    from peft import PeftModel  # late: peft (3 s to import) only for a PEFT method

    if not isinstance(model, PeftModel):
        return None
    config = model.active_peft_config
    if config.peft_type == "PREFIX_TUNING":
        return DecodingParts(model.get_base_model(), None, cache_layers(model.get_prompt(batch_size=1)))
    if config.is_prompt_learning:
        return DecodingParts(model.get_base_model(), model.get_prompt(batch_size=1)[0].detach(), None)
    return DecodingParts(model.get_base_model(), None, None)
