"""QLoRA's base model (Dettmers et al., 2023): the frozen weights in 4-bit NormalFloat (NF4) with
double quantisation (the quantisation constants quantised too) and bf16 compute, through
bitsandbytes (`pip install -e '.[qlora]'`). bitsandbytes' 4-bit kernels need CUDA, so on any other
machine a 4-bit run is refused in one line before anything is loaded."""

from __future__ import annotations

import torch

from sumtune.errors import UserError


def check_quantize(quantize: str) -> None:
    """Refuse `method.quantize` that this machine cannot run, before any data or model loads."""
    if quantize == "none":
        return
    if not torch.cuda.is_available():
        raise UserError(f"method.quantize={quantize} (QLoRA) needs a CUDA GPU (bitsandbytes' 4-bit kernels); "
                        "none is available here: set method.quantize=none to train plain LoRA")
    try:
        # late: bitsandbytes is an optional extra ([qlora])
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError(f"method.quantize={quantize} needs bitsandbytes: pip install -e '.[qlora]'") from None


def quantization_kwargs(quantize: str) -> dict:
    """`from_pretrained` keyword arguments for `quantize` (none: nothing)."""
    if quantize == "none":
        return {}
    # late: transformers (1 s to import) only when a quantized model loads
    from transformers import BitsAndBytesConfig

    check_quantize(quantize)
    config = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                bnb_4bit_compute_dtype=torch.bfloat16)
    return {"quantization_config": config, "device_map": {"": torch.cuda.current_device()}}
