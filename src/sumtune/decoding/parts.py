"""What the decoder puts in front of a prompt, read from a method model (`methods.base.DecodingParts`):
the plain causal LM it runs, and a soft prompt or prefix keys/values if the method has one."""

from __future__ import annotations

import torch

from sumtune.methods.base import DecodingParts
from sumtune.methods.peft_io import peft_decoding_parts


def decoding_parts(model: torch.nn.Module) -> DecodingParts:
    """The decoding parts of a method model: a method's own model class gives them
    (`model.decoding_parts()`); a PEFT model (LoRA, IA³, or PEFT's own prompt learning loaded with
    `PeftModel.from_pretrained`) as `peft_io.peft_decoding_parts` reads them; any other model decodes as it is."""
    own = getattr(model, "decoding_parts", None)
    if callable(own):
        return own()
    return peft_decoding_parts(model) or DecodingParts(model, None, None)
