"""Configuration: dataclasses with the classic recipe as defaults, YAML presets,
`--set key=value` overrides and validation.

Precedence: defaults < `--config FILE` < explicit CLI flags < `--set key=value`.
`eval.preset` (DECODING_PRESETS) writes a set of decoding keys when it is set, and `data.preset`
(DATA_PRESETS) a dataset's columns, cleaning, decoding preset and (when data.source is empty) its
source; within one layer (a file, the flags, the --set items, a saved config.yaml) data.preset is
applied first, then eval.preset, then the other keys: so defaults < preset < explicit keys.
Every error names the key and the valid choices, in one line. The presets (and the eval section they
write) live in config_presets, the `method:` section (the chosen method's own keys) in config_methods.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from sumtune.config_methods import (
    METHODS,
    Given,
    check_sections,
    new_section,
    set_method,
    set_method_key,
    settle,
)
from sumtune.config_presets import (
    DATA_PRESET_KEY,
    DATA_PRESETS,
    DECODING_PRESETS,
    PRESET_KEY,
    EvalConfig,
    apply_preset,
    decoding_summary,
)
from sumtune.config_values import coerce, flatten, from_text, load_yaml, parse_set
from sumtune.errors import UserError
from sumtune.methods import DEFAULT_METHOD
from sumtune.methods.config_base import MethodConfigBase

PRECISIONS = ("auto", "bf16", "fp16", "fp32")
# train.select_by: what picks the kept checkpoint and stops early (the ROUGE keys: of summaries decoded
# from a fixed validation subset at each validation, training.selection)
SELECT_BY = ("loss", "rouge1", "rouge2", "rougeL", "rougeLsum")
EVAL_METRICS = ("rouge", "bertscore")  # eval.metrics: what `evaluate` scores (sumtune.bertscore for the second)
# The fast paths by name, in the order they are applied (sumtune.fastpath.FAST_PATHS, which says why
# that order; kept here so validating a config does not import torch).
FAST_PATH_NAMES = ("sdpa_attention", "blocked_local_attention", "cast_frozen_weights", "fused_gelu",
                   "fused_rmsnorm", "fused_rotary", "gqa_attention", "fused_swiglu",
                   "label_rows_last_block", "compiled_blocks", "fast_lora",
                   "few_rows_head", "lean_decode_step", "label_loss", "feature_cache", "fused_adamw")
# train.report_to: Accelerate's tracker names (its `log_with`); training.trackers checks and starts them
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "swanlab", "trackio")


@dataclass
class ModelConfig:
    name: str = "EleutherAI/gpt-neo-125m"  # hub name or local directory
    attention: Literal["auto", "sdpa", "eager"] = "auto"  # auto: our SDPA path where it is exact


ARTICLE_SLOT = "{article}"  # where data.instruction takes the article


@dataclass
class DataConfig:
    source: str = ""  # Kaggle CNN/DM dir | file.csv/.jsonl | hf:NAME[:CONFIG]
    preset: Literal["none", "cnndm", "xsum", "samsum"] = "none"  # DATA_PRESETS; later keys override it
    article_column: str = "article"
    summary_column: str = "highlights"
    id_column: str = "id"
    val_ratio: float = 0.1  # only for a single-file source
    test_ratio: float = 0.1
    max_train_samples: int = 0  # 0 = all
    max_eval_samples: int = 0  # validation and test; 0 = all
    max_test_samples: int = 0  # test only, when > 0 (else max_eval_samples applies)
    max_length: int = 1024  # prompt + separator + summary + EOS
    max_summary_length: int = 128
    separator: str = "\nTL;DR:\n"
    prompt_format: Literal["separator", "chat"] = "separator"  # chat: the tokenizer's chat template
    system_prompt: str = ""  # chat: the system message; empty = none
    instruction: str = "Summarize the following text.\n\n{article}"  # chat: the user message
    clean: bool = True  # the CNN/DM cleaning (data.clean_article); else whitespace stripped only
    num_proc: int = 2
    group_by_length: bool = False
    seed: int = 42  # splits a single file and draws capped subsets; apart from train.seed, so that
    # every training seed of an experiment sees (and is scored on) the same rows


@dataclass
class TrainConfig:
    epochs: int = 10
    max_steps: int = 0  # optimizer steps; 0 = run the epochs
    batch_size: int = 4  # per process, per micro-batch
    grad_accum: int = 8
    lr: float = 3e-4
    weight_decay: float = 0.01
    warmup_ratio: float = 0.05
    scheduler: Literal["linear", "cosine", "constant"] = "linear"
    max_grad_norm: float = 1.0
    patience: int = 2
    eval_steps: int = 0  # 0 = validate at each epoch end only
    save_steps: int = 0  # 0 = checkpoint at each epoch end only
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    seed: int = 42
    tensorboard: bool = False  # the same as "tensorboard" in report_to (older configs)
    report_to: list[str] = field(default_factory=list)  # experiment trackers (TRACKERS), through Accelerate
    tracker_project: str = "sumtune"  # the trackers' project (W&B project, MLflow experiment, ...)
    log_predictions: int = 4  # rows decoded per validation for the trackers' sample-predictions table; 0 = none
    fast: bool = True  # our measured fast paths; false = plain reference path
    fast_paths: list[str] = field(default_factory=list)  # with fast: only these (FAST_PATH_NAMES); empty = all
    compile: bool = False  # torch.compile the decoder blocks (fast path compiled_blocks); off: measured slower
    fsdp: bool = False  # shard with FSDP2 across processes (also on when launched with accelerate --use_fsdp)
    cpu_offload: bool = False  # FSDP only: parameters, gradients and optimizer state in CPU memory
    gradient_checkpointing: bool = False  # recompute block activations in backward: less memory, same result
    max_tokens_per_batch: int = 0  # >0: cut each process's rows of a step into forward passes of <= this many padded tokens
    budget_seconds: float | None = None  # stop once optimizer steps have taken this long (train_seconds)
    budget_flops: float | None = None  # stop once this many training FLOPs are spent (sumtune.flops)
    select_by: Literal["loss", "rouge1", "rouge2", "rougeL", "rougeLsum"] = "loss"  # SELECT_BY: best checkpoint, early stop


def apply_data_preset(cfg: Config, name: str) -> Config:
    """Set `data.preset` and write that dataset's keys into `cfg` (in place; returned): its columns,
    cleaning and decoding preset, and its source when data.source is empty. "none" sets nothing else."""
    if name != "none" and name not in DATA_PRESETS:
        raise UserError(f"config key 'data.preset': got {name!r}, expected one of none, {', '.join(DATA_PRESETS)}")
    cfg.data.preset = name
    if name == "none":
        return cfg
    preset = DATA_PRESETS[name]
    for key in ("article_column", "summary_column", "id_column", "clean"):
        setattr(cfg.data, key, preset[key])
    if not cfg.data.source.strip():
        cfg.data.source = preset["source_default"]
    apply_preset(cfg.eval, preset["decoding"])
    return cfg


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    method: MethodConfigBase = field(default_factory=lambda: new_section(DEFAULT_METHOD))  # config_methods
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    output_dir: str = "runs/run"

    def __post_init__(self) -> None:
        # the method keys given (file, flags, --set) by name, kept apart from the section so that a change
        # of method carries over the explicit ones (config_methods); not a field: not saved, not compared
        self.method_keys: dict[str, Given] = {}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Ranges checked after every merge: key -> (predicate, description of valid values)
_RANGES: dict[str, tuple[typing.Callable[[Any], bool], str]] = {
    "data.val_ratio": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "data.test_ratio": (lambda v: 0 < v < 1, "a number in (0, 1)"),
    "data.max_train_samples": (lambda v: v >= 0, "an integer >= 0 (0 = all)"),
    "data.max_eval_samples": (lambda v: v >= 0, "an integer >= 0 (0 = all)"),
    "data.max_test_samples": (lambda v: v >= 0, "an integer >= 0 (0 = as max_eval_samples)"),
    "data.max_length": (lambda v: v >= 16, "an integer >= 16"),
    "data.max_summary_length": (lambda v: v >= 1, "an integer >= 1"),
    "data.num_proc": (lambda v: v >= 1, "an integer >= 1"),
    "train.epochs": (lambda v: v >= 1, "an integer >= 1"),
    "train.max_steps": (lambda v: v >= 0, "an integer >= 0 (0 = run the epochs)"),
    "train.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "train.grad_accum": (lambda v: v >= 1, "an integer >= 1"),
    "train.lr": (lambda v: 0 < v < 10, "a number in (0, 10)"),
    "train.weight_decay": (lambda v: v >= 0, "a number >= 0"),
    "train.warmup_ratio": (lambda v: 0 <= v < 1, "a number in [0, 1)"),
    "train.max_grad_norm": (lambda v: v > 0, "a number > 0"),
    "train.patience": (lambda v: v >= 1, "an integer >= 1"),
    "train.eval_steps": (lambda v: v >= 0, "an integer >= 0"),
    "train.save_steps": (lambda v: v >= 0, "an integer >= 0"),
    "train.max_tokens_per_batch": (lambda v: v >= 0, "an integer >= 0 (0 = batch_size rows per forward pass)"),
    "train.budget_seconds": (lambda v: v is None or v > 0, "a number > 0 (seconds of optimizer steps) or null"),
    "train.budget_flops": (lambda v: v is None or v > 0, "a number > 0 (training FLOPs) or null"),
    "train.fast_paths": (lambda v: set(v) <= set(FAST_PATH_NAMES),
                         "fast path names from: " + ", ".join(FAST_PATH_NAMES) + " (empty = all)"),
    "train.report_to": (lambda v: set(v) <= set(TRACKERS), "tracker names from: " + ", ".join(TRACKERS)),
    "train.log_predictions": (lambda v: v >= 0, "an integer >= 0 (0 = no sample predictions)"),
    "eval.batch_size": (lambda v: v >= 1, "an integer >= 1"),
    "eval.num_beams": (lambda v: v >= 1, "an integer >= 1"),
    "eval.max_new_tokens": (lambda v: v >= 1, "an integer >= 1"),
    "eval.min_new_tokens": (lambda v: v >= 0, "an integer >= 0"),
    "eval.no_repeat_ngram_size": (lambda v: v >= 0, "an integer >= 0"),
    "eval.max_sentences": (lambda v: v >= 0, "an integer >= 0 (0 = all)"),
    "eval.select_samples": (lambda v: v >= 1, "an integer >= 1 (validation rows decoded for train.select_by)"),
    "eval.metrics": (lambda v: "rouge" in v and set(v) <= set(EVAL_METRICS),
                     "a list of " + ", ".join(EVAL_METRICS) + " with rouge in it, e.g. [rouge, bertscore]"),
    "eval.bertscore_layers": (lambda v: v is None or v >= 0, "an integer >= 0 (layers of the model) or null"),
}


def _fields(obj: Any) -> dict[str, dataclasses.Field]:
    return {f.name: f for f in dataclasses.fields(obj)}


def _type_hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def set_key(cfg: Config, key: str, value: Any, text: bool = False, source: str | None = None) -> None:
    """Set a dotted key (`train.lr`) on the config, coercing and checking its type.

    With ``text`` the value is a command-line string (``--set``): it is taken as written,
    except a quoted string or a ``[list]``, which are read as YAML (for escapes like ``\\n``).
    `source`: the file the value comes from (None: the command line), for the method keys (config_methods).
    """
    section, _, rest = key.partition(".")
    if section == "method" and rest:
        set_method_key(cfg, rest, value, text, source)
        return
    parts = key.split(".")
    obj: Any = cfg
    for i, part in enumerate(parts):
        fields = _fields(obj)
        if part not in fields:
            prefix = ".".join(parts[:i])
            valid = ", ".join(f"{prefix + '.' if prefix else ''}{n}" for n in fields)
            raise UserError(f"unknown config key '{key}'; valid keys here: {valid}")
        if i == len(parts) - 1:
            hint = _type_hints(type(obj))[part]
            if dataclasses.is_dataclass(hint):
                if value is None:  # an empty section in a YAML file
                    return
                raise UserError(f"config key '{key}' is a section; set one of its keys, e.g. '{key}.<name>'")
            setattr(obj, part, coerce(key, from_text(key, value, hint) if text else value, hint))
            if key == PRESET_KEY:
                apply_preset(cfg.eval, cfg.eval.preset)
            elif key == DATA_PRESET_KEY:
                apply_data_preset(cfg, cfg.data.preset)
        else:
            obj = getattr(obj, part)
            if not dataclasses.is_dataclass(obj):
                raise UserError(f"config key '{'.'.join(parts[: i + 1])}' is not a section")


def set_keys(cfg: Config, items: typing.Iterable[tuple[str, Any]], text: bool = False, source: str | None = None) -> None:
    """Set several keys that form one layer of configuration: `data.preset` first, `eval.preset` next,
    then the others in order, so a preset never overrides a key given beside it, whatever the order
    they are written in."""
    first = {DATA_PRESET_KEY: 0, PRESET_KEY: 1}
    for key, value in sorted(items, key=lambda kv: first.get(kv[0], 2)):  # stable: the rest keep their order
        set_key(cfg, key, value, text=text, source=source)


def validate(cfg: Config, methods: typing.Sequence[str] | None = None) -> Config:
    """Check every key's range and the keys' combinations; `methods`: those the configuration serves
    (default: its method), whose keys the given method keys must be (config_methods.settle)."""
    methods = tuple(methods or (cfg.method.name,))
    settle(cfg, methods)
    check_sections(cfg, methods)
    for key, (ok, desc) in _RANGES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not ok(value):
            raise UserError(f"config key '{key}': got {value!r}, expected {desc}")
    if cfg.train.budget_seconds is not None and cfg.train.budget_flops is not None:
        raise UserError("config keys 'train.budget_seconds' and 'train.budget_flops' are both set; a run has one "
                        "budget: keep one of them")
    if cfg.data.prompt_format == "chat" and cfg.data.instruction.count(ARTICLE_SLOT) != 1:
        raise UserError(f"config key 'data.instruction' must hold {ARTICLE_SLOT} once, where the article goes "
                        f"(got {cfg.data.instruction!r})")
    if cfg.data.val_ratio + cfg.data.test_ratio >= 1:
        raise UserError("config keys 'data.val_ratio' + 'data.test_ratio' must be < 1")
    if cfg.eval.min_new_tokens > cfg.eval.max_new_tokens:
        raise UserError(
            f"config key 'eval.min_new_tokens' ({cfg.eval.min_new_tokens}) exceeds 'eval.max_new_tokens' "
            f"({cfg.eval.max_new_tokens}); lower it or raise max_new_tokens"
        )
    if cfg.data.max_summary_length + 8 > cfg.data.max_length:
        raise UserError(
            f"config key 'data.max_summary_length' ({cfg.data.max_summary_length}) leaves no room for "
            f"the article within 'data.max_length' ({cfg.data.max_length}); lower it or raise max_length"
        )
    return cfg


def absolute_source(source: str) -> str:
    """A local path made absolute (a run must work from any directory); hub names and
    `hf:` sources unchanged."""
    if not source or source.startswith("hf:"):
        return source
    path = Path(source).expanduser()
    return str(path.resolve()) if path.exists() else source


def build_config(
    config_file: str | None = None,
    flags: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    explicit: set[str] | None = None,
    methods: typing.Sequence[str] | None = None,
) -> Config:
    """Resolve the configuration: defaults < file < flags (dotted keys, None = unset) < --set.
    Local model and data paths become absolute. `explicit`, when given, receives the keys
    that the file, flags or --set named. `methods`: the methods the configuration serves, whose keys
    the given method keys must be (`validate`); by default its method when a layer names method.name
    (a run's configuration), else every method (an experiment's, which its per-method copies and its
    own check narrow down)."""
    cfg = Config()
    named: set[str] = set()
    if config_file:
        layer = list(flatten(load_yaml(config_file)).items())
        set_keys(cfg, layer, source=str(config_file))
        named.update(k for k, _ in layer)
    layer = [(k, v) for k, v in (flags or {}).items() if v is not None]
    set_keys(cfg, layer)
    named.update(k for k, _ in layer)
    layer = [parse_set(item) for item in sets or []]
    set_keys(cfg, layer, text=True)
    named.update(k for k, _ in layer)
    if explicit is not None:
        explicit.update(named)
    cfg.model.name = absolute_source(cfg.model.name)
    cfg.data.source = absolute_source(cfg.data.source)
    return validate(cfg, methods or ((cfg.method.name,) if "method.name" in named else METHODS))


def config_from_dict(d: dict[str, Any], source: str = "a saved config") -> Config:
    """Rebuild a Config from a run's config.yaml (`source`); one from before per-method sections, with
    every method's keys, loads as its method's keys (config_methods.settle drops the others)."""
    cfg = Config()
    set_keys(cfg, flatten(d).items(), source=source)
    settle(cfg, (cfg.method.name,))
    return cfg


# Keys that may change between a run and its continuation: they do not alter the optimisation.
RESUME_FREE = ("output_dir", "train.save_steps", "train.tensorboard", "train.report_to", "train.tracker_project",
               "train.log_predictions", "data.num_proc", "eval.metrics",
               "eval.bertscore_model", "eval.bertscore_layers", "eval.bertscore_rescale",
               "eval.batch_size")  # how rows are batched, not which summaries (runs from before its default changed resume)


def config_differences(old: Config, new: Config, ignore: tuple[str, ...] = ()) -> list[tuple[str, Any, Any]]:
    """(key, old value, new value) for every training-relevant key that differs; RESUME_FREE and
    `ignore` keys aside, and decoding (eval.*) too unless either run selects by ROUGE
    (train.select_by): then the decoding and eval.select_samples decide which weights are kept.
    Local paths compare absolute."""
    def flat(cfg: Config) -> dict[str, Any]:
        d = flatten(cfg.to_dict())
        d["model.name"] = absolute_source(d["model.name"])
        d["data.source"] = absolute_source(d["data.source"])
        return d

    a, b = flat(old), flat(new)
    skip = set(RESUME_FREE) | set(ignore)
    decodes = any(d.get("train.select_by", "loss") != "loss" for d in (a, b))
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b))
            if (decodes or not k.startswith("eval.")) and k not in skip and a.get(k) != b.get(k)]


def save_config(cfg: Config, path: str | Path) -> None:
    # late: sumtune.io loads torch; the command line reads configs without it
    from sumtune.io import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def load_run_config(run_dir: str | Path) -> Config:
    p = Path(run_dir) / "config.yaml"
    if not p.is_file():
        raise UserError(f"{run_dir} is not a sumtune run directory (no config.yaml); pass the --output-dir of a train run")
    return config_from_dict(load_yaml(p), source=str(p))


__all__ = [
    "Config", "ModelConfig", "DataConfig", "TrainConfig", "EvalConfig", "set_method",
    "METHODS", "PRECISIONS", "SELECT_BY", "TRACKERS", "EVAL_METRICS", "build_config", "config_from_dict",
    "save_config", "load_run_config",
    "set_key", "set_keys", "validate", "DECODING_PRESETS", "apply_preset", "decoding_summary",
    "DATA_PRESETS", "apply_data_preset",
]
