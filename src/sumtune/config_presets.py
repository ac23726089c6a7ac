"""Presets: a set of decoding keys (`eval.preset`, DECODING_PRESETS) and a dataset's columns,
cleaning, decoding preset and source (`data.preset`, DATA_PRESETS), written into a configuration
when the preset key is set (`sumtune.config.set_key`), so that keys set after it override it; and
the `eval:` section, which the decoding presets write."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from sumtune.errors import UserError


@dataclass
class EvalConfig:
    preset: Literal["greedy", "cnndm", "xsum", "samsum"] = "greedy"  # see DECODING_PRESETS; later keys override it
    batch_size: int = 32  # decoding rows (beams included) and loss-pass rows per batch
    num_beams: int = 1
    max_new_tokens: int = 128
    min_new_tokens: int = 0  # no stop (EOS or blank line) before this many new tokens
    no_repeat_ngram_size: int = 0
    length_penalty: float = 1.0
    max_sentences: int = 0  # keep the first N sentences of a summary; 0 = all
    select_samples: int = 64  # train.select_by other than loss: the first N validation rows decoded each validation
    metrics: list[str] = field(default_factory=lambda: ["rouge"])  # EVAL_METRICS; rouge always, bertscore optional
    bertscore_model: str = "roberta-large"  # a Hub name or a local directory (bert-score's default for English)
    bertscore_layers: int | None = None  # the layer scored; None = bert-score's tuned one (needed for other models)
    bertscore_rescale: bool = False  # rescale with bert-score's English baseline for the model


# Decoding presets: setting `eval.preset` writes these values into the eval section at that moment,
# so keys set after it override them (within one layer of configuration the preset goes first).
# "cnndm" is the BART CNN/DailyMail recipe: fairseq's examples/bart/summarize.py (CNN_KWARGS: beam=4,
# lenpen=2.0, max_len_b=140, min_len=55, no_repeat_ngram_size=3; examples/bart/README.summarization.md
# points there), the same as facebook/bart-large-cnn's generation config on the Hugging Face Hub
# (num_beams 4, length_penalty 2.0, no_repeat_ngram_size 3, min_length 56 / max_length 142 counting the
# decoder's start token). Beam search here keeps `generate`'s early_stopping=False heuristic.
# "xsum" is the same script's XSUM_KWARGS (beam=6, lenpen=1.0, max_len_b=60, min_len=10,
# no_repeat_ngram_size=3), as facebook/bart-large-xsum's generation config (num_beams 6, length_penalty
# 1.0, no_repeat_ngram_size 3, min_length 11 / max_length 62 counting the start token).
# "samsum" is the decoding with which Tunstall, von Werra and Wolf, "Natural Language Processing with
# Transformers" (O'Reilly 2022), chapter 6, score PEGASUS fine-tuned on SAMSum (transformersbook/
# pegasus-samsum): gen_kwargs num_beams 8, length_penalty 0.8, max_length 128; no minimum, no n-gram ban.
DECODING_PRESETS: dict[str, dict[str, Any]] = {
    "greedy": {"num_beams": 1, "no_repeat_ngram_size": 0, "length_penalty": 1.0,
               "min_new_tokens": 0, "max_new_tokens": 128},
    "cnndm": {"num_beams": 4, "no_repeat_ngram_size": 3, "length_penalty": 2.0,
              "min_new_tokens": 55, "max_new_tokens": 140},
    "xsum": {"num_beams": 6, "no_repeat_ngram_size": 3, "length_penalty": 1.0,
             "min_new_tokens": 10, "max_new_tokens": 60},
    "samsum": {"num_beams": 8, "no_repeat_ngram_size": 0, "length_penalty": 0.8,
               "min_new_tokens": 0, "max_new_tokens": 128},
}

# Dataset presets (`data.preset`, `--data-preset`): the dataset's column names, whether the CNN/DM
# cleaning applies (it removes CNN/Daily Mail bylines and tags: only for cnndm), its decoding preset,
# and `source_default`, written to data.source only while that is empty (offline: the Hub's
# one-line error says to pass a local copy with --data). Columns as the Hub copies name them:
# abisee/cnn_dailymail (article, highlights, id), EdinburghNLP/xsum (document, summary, id),
# knkarthick/samsum (dialogue, summary, id).
DATA_PRESETS: dict[str, dict[str, Any]] = {
    "cnndm": {"article_column": "article", "summary_column": "highlights", "id_column": "id", "clean": True,
              "decoding": "cnndm", "source_default": "hf:abisee/cnn_dailymail:3.0.0"},
    "xsum": {"article_column": "document", "summary_column": "summary", "id_column": "id", "clean": False,
             "decoding": "xsum", "source_default": "hf:EdinburghNLP/xsum"},
    "samsum": {"article_column": "dialogue", "summary_column": "summary", "id_column": "id", "clean": False,
               "decoding": "samsum", "source_default": "hf:knkarthick/samsum"},
}


PRESET_KEY = "eval.preset"
DATA_PRESET_KEY = "data.preset"


def apply_preset(ev: EvalConfig, name: str) -> EvalConfig:
    """Set `ev.preset` and write that preset's decoding values into `ev` (in place; returned)."""
    if name not in DECODING_PRESETS:
        raise UserError(f"config key 'eval.preset': got {name!r}, expected one of {', '.join(DECODING_PRESETS)}")
    ev.preset = name
    for key, value in DECODING_PRESETS[name].items():
        setattr(ev, key, value)
    return ev


def decoding_summary(cfg: EvalConfig) -> dict[str, Any]:
    """The decoding settings to record with results: the preset's keys with their values, the preset
    name, the keys whose value differs from the preset (``modified``) and a ``label``: the preset name,
    with a ``*`` when anything was modified (e.g. "cnndm*")."""
    preset = DECODING_PRESETS[cfg.preset]
    modified = [k for k, v in preset.items() if getattr(cfg, k) != v]
    return {"preset": cfg.preset, "label": cfg.preset + ("*" if modified else ""), "modified": modified,
            **{k: getattr(cfg, k) for k in preset}, "max_sentences": cfg.max_sentences}
