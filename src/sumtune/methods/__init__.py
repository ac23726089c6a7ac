"""The fine-tuning methods, one package each, as PEFT's tuners: `<name>/config.py` declares the
method's keys (a dataclass, torch-free) and `<name>/method.py` the `Method` (base.py) that prepares,
saves and loads it.

Adding a method: its package (config.py, method.py), one line in CONFIGS and one in `get_method`,
and an LR grid in `recipes/experiment.py`. `sumtune.config` builds the `method:` section of every
run's config from CONFIGS, so a new key is declared once, in the method's own config.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sumtune.errors import UserError
from sumtune.methods.full.config import FullConfig
from sumtune.methods.ia3.config import IA3Config
from sumtune.methods.last_layers.config import LastLayersConfig
from sumtune.methods.lead3.config import Lead3Config
from sumtune.methods.lora.config import LoraConfig
from sumtune.methods.p_tuning.config import PTuningConfig
from sumtune.methods.prefix_tuning.config import PrefixTuningConfig
from sumtune.methods.prompt_tuning.config import PromptTuningConfig
from sumtune.methods.zero_shot.config import ZeroShotConfig

if TYPE_CHECKING:
    from sumtune.methods.base import Method

# name -> the method's config dataclass, in the order the CLI lists the methods
CONFIGS: dict[str, type] = {
    "zero_shot": ZeroShotConfig,
    "prompt_tuning": PromptTuningConfig,
    "prefix_tuning": PrefixTuningConfig,
    "p_tuning": PTuningConfig,
    "lora": LoraConfig,
    "ia3": IA3Config,
    "last_layers": LastLayersConfig,
    "full": FullConfig,
    "lead3": Lead3Config,
}


def get_method(name: str) -> Method:
    """The method named `name` (imported on first use: the methods need torch, their configs do not)."""
    from sumtune.methods.full.method import Full
    from sumtune.methods.ia3.method import IA3
    from sumtune.methods.last_layers.method import LastLayers
    from sumtune.methods.lead3.method import Lead3
    from sumtune.methods.lora.method import Lora
    from sumtune.methods.p_tuning.method import PTuning
    from sumtune.methods.prefix_tuning.method import PrefixTuning
    from sumtune.methods.prompt_tuning.method import PromptTuning
    from sumtune.methods.zero_shot.method import ZeroShot

    registry = {m.name: m for m in (ZeroShot(), PromptTuning(), PrefixTuning(), PTuning(), Lora(), IA3(),
                                     LastLayers(), Full(), Lead3())}
    if name not in registry:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(registry)}")
    return registry[name]


__all__ = ["CONFIGS", "get_method"]
