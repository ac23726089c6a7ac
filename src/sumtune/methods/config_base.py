"""What every method's config dataclass shares. Each method declares its own keys in
`methods/<name>/config.py` (as PEFT's tuners do); `sumtune.config` builds the `method:` section of
a run's config from all of them, so these modules must not import torch (the CLI parses flags
without it)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, ClassVar

Range = tuple[Callable[[Any], bool], str]  # (predicate, what a valid value is)


@dataclass
class MethodConfigBase:
    # key -> its valid range, checked whatever the chosen method (a key belongs to the method that
    # declares it, and a shared key such as n_tokens means the same for every method declaring it)
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
        """This method's keys read from the `method:` section (`sumtune.config.MethodConfig`) or from any
        object holding them."""
        return cls(**{f.name: getattr(section, f.name) for f in fields(cls)})

    def grid(self, method: str) -> str:
        """The name of the LR grid this configuration of `method` sweeps."""
        return method

    def check(self, method: str) -> None:
        """One-line error for a combination of keys that cannot work when `method` is the chosen method."""


ENCODER_HIDDEN: Range = (lambda v: v >= 0, "an integer >= 0 (0 = the model's hidden size)")


@dataclass
class VirtualTokensConfig(MethodConfigBase):
    """The key the virtual-token methods share (prompt tuning, P-tuning, prefix tuning)."""

    n_tokens: int = 20  # virtual tokens before every input (prefix tuning: positions in every layer)

    RANGES = {"n_tokens": (lambda v: v >= 1, "an integer >= 1")}
