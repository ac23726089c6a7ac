"""Lead-3 has no options: three sentences, as every CNN/DailyMail paper reports it."""

from __future__ import annotations

from dataclasses import dataclass

from sumtune.methods.config_base import MethodConfigBase


@dataclass
class Lead3Config(MethodConfigBase):
    """Lead-3: the article's first three sentences, no model."""

    # Lead-3 is the extractive baseline the CNN/DailyMail papers report (e.g. See et al. 2017, "Get To
    # The Point"); `sumtune experiment` runs it by default on the news presets. (XSum's own paper,
    # Narayan et al. 2018, reports a one-sentence LEAD; Lead-3 is the same baseline at CNN/DM's length.)
    EXPERIMENT_PRESETS = ("cnndm", "xsum")
