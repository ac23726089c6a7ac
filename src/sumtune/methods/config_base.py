"""What every method's config dataclass shares. Each method declares its own keys in
`methods/<name>/config.py` (as PEFT's tuners do), each with its default and a help text (`option`);
a run's `method:` section is that dataclass with `name` set (`sumtune.config_methods`), so a run's
config.yaml holds its method's keys only. These modules must not import torch (the CLI parses
flags without it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

Range = tuple[Callable[[Any], bool], str]  # (predicate, what a valid value is)
HELP = "help"  # the field metadata key holding a key's help text


def option(default: Any, help: str) -> Any:
    """A method key with its default and the help text `sumtune methods` shows (dataclass field
    metadata, as PEFT's and Hugging Face's configs carry theirs); a list default is copied per instance."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={HELP: help})
    return field(default=default, metadata={HELP: help})


@dataclass
class MethodConfigBase:
    # the registered method this section configures (`sumtune.config_methods` sets it); "" when a
    # method's config is built directly (tests, `Method.options` copies it along)
    name: str = ""

    # How the base model's weights load (`sumtune.quantize`): full precision, unless a method's own
    # key chooses otherwise (LoRA's `quantize`: QLoRA). Not a key of the other methods' sections.
    quantize = "none"
    # key -> its valid range (`sumtune.config_methods.check_section`)
    RANGES: ClassVar[dict[str, Range]] = {}
    # learning-rate grids for AdamW (`sumtune experiment`) by grid name: the method's name, plus any
    # variant that needs its own; from the literature, cited where declared. DEMO_LR_GRIDS: the demo's
    # tiny random model, which learns only at far larger rates than a pretrained one.
    LR_GRIDS: ClassVar[dict[str, tuple[float, ...]]] = {}
    DEMO_LR_GRIDS: ClassVar[dict[str, tuple[float, ...]]] = {}
    # the data presets (data.preset) on which `sumtune experiment` runs this method without --methods,
    # besides its default methods: a baseline those datasets' papers report
    EXPERIMENT_PRESETS: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def of(cls, section: Any) -> MethodConfigBase:
        """A copy of this method's keys read from a run's `method:` section (or any object holding them)."""
        return cls(**{f.name: getattr(section, f.name) for f in fields(cls)})

    def __setattr__(self, key: str, value: Any) -> None:
        # a section is its method's: another method has other keys (sumtune.config.set_method rebuilds it)
        if key == "name" and getattr(self, "name", "") not in ("", value):
            raise AttributeError(f"a {self.name} section cannot become {value}'s: use sumtune.config.set_method")
        super().__setattr__(key, value)

    def grid(self) -> str:
        """The name of the LR grid this configuration sweeps."""
        return self.name

    def check(self) -> None:
        """One-line error for a combination of keys that cannot work."""


ENCODER_HIDDEN: Range = (lambda v: v >= 0, "an integer >= 0 (0 = the model's hidden size)")


@dataclass
class VirtualTokensConfig(MethodConfigBase):
    """The key the virtual-token methods share (prompt tuning, P-tuning, prefix tuning)."""

    n_tokens: int = option(20, "virtual tokens before every input (prefix tuning: positions in every layer)")

    RANGES = {"n_tokens": (lambda v: v >= 1, "an integer >= 1")}
