"""Configuration: precedence, presets, validation messages, the run's config.yaml."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sumtune.config import Config, build_config, load_run_config, save_config
from sumtune.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _yaml(tmp_path: Path, obj) -> str:
    p = tmp_path / "c.yaml"
    p.write_text(yaml.safe_dump(obj) if not isinstance(obj, str) else obj)
    return str(p)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_classic_recipe_defaults():
    t = Config().train
    assert (t.epochs, t.patience, t.max_grad_norm) == (10, 2, 1.0)
    assert t.grad_accum > 1  # the effective batch is built by accumulation
    assert Config().data.max_length == 1024 and Config().data.max_summary_length == 128


def test_default_yaml_is_the_defaults():
    text = (CONFIGS / "default.yaml").read_text()
    missing = set(_flat(Config().to_dict())) - set(_flat(yaml.safe_load(text)))
    assert not missing, f"add these keys to configs/default.yaml: {sorted(missing)}"
    assert build_config(str(CONFIGS / "default.yaml")) == Config()


def test_cnndm_21k_preset():
    cfg = build_config(str(CONFIGS / "cnndm_21k.yaml"))
    d = cfg.data
    assert (d.max_train_samples, d.max_eval_samples, d.max_test_samples) == (21000, 6000, 3000)
    assert d.source.startswith("hf:") and "cnn_dailymail" in d.source
    assert (cfg.train.epochs, cfg.train.patience, cfg.train.max_grad_norm) == (10, 2, 1.0)


def test_precedence_defaults_file_flags_set(tmp_path):
    f = _yaml(tmp_path, {"train": {"lr": 1e-3, "epochs": 3, "batch_size": 2}, "method": {"r": 4}})
    assert build_config().train.lr == Config().train.lr
    cfg = build_config(f)
    assert (cfg.train.lr, cfg.train.epochs, cfg.method.r) == (1e-3, 3, 4)
    cfg = build_config(f, {"train.lr": 2e-3, "train.epochs": None})  # None = flag not given
    assert (cfg.train.lr, cfg.train.epochs) == (2e-3, 3)
    cfg = build_config(f, {"train.lr": 2e-3}, ["train.lr=5e-4", "method.r=16"])
    assert (cfg.train.lr, cfg.method.r, cfg.train.batch_size) == (5e-4, 16, 2)


@pytest.mark.parametrize(
    "item, key, value",
    [
        ("data.separator=\" TL;DR: \"", "separator", " TL;DR: "),  # quoted: spaces kept
        ('data.separator="\\nSummary:\\n"', "separator", "\nSummary:\n"),  # YAML escapes
        ("data.separator=TL;DR: ", "separator", "TL;DR: "),  # unquoted: as written
        ("data.source=yes", "source", "yes"),  # a string key takes "yes" as text, not a bool
        ("data.clean=false", "clean", False),
        ("data.num_proc=4", "num_proc", 4),
        ("method.target_modules=c_attn,c_proj", "target_modules", ["c_attn", "c_proj"]),
        ("method.target_modules=[c_attn, c_fc]", "target_modules", ["c_attn", "c_fc"]),
    ],
)
def test_set_values(item, key, value):
    cfg = build_config(sets=[item])
    section = item.split(".")[0]
    assert getattr(getattr(cfg, section), key) == value


def test_set_top_level_key():
    assert build_config(sets=["output_dir=runs/x"]).output_dir == "runs/x"


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["nope.x=1"], ["unknown config key 'nope.x'", "model, data, method, train, eval, output_dir"]),
        (["train.nope=1"], ["unknown config key 'train.nope'", "train.lr"]),
        (["train.lr=abc"], ["'train.lr'", "'abc'", "a number"]),
        (["train.epochs=2.5"], ["'train.epochs'", "an integer"]),
        (["train.epochs=0"], ["'train.epochs'", "an integer >= 1"]),
        (["method.name=adapter"], ["'method.name'", "one of zero_shot, prompt_tuning, lora, last_layers, full"]),
        (["train.precision=fp8"], ["'train.precision'", "auto, bf16, fp16, fp32"]),
        (["data.clean=maybe"], ["'data.clean'", "true or false"]),
        (["method.dropout=1.5"], ["'method.dropout'", "[0, 1)"]),
        (["train"], ["--set expects key=value"]),
        (["train=3"], ["'train' is a section"]),
        (["data.val_ratio=0.6", "data.test_ratio=0.5"], ["data.val_ratio", "data.test_ratio"]),
        (["data.max_length=64", "data.max_summary_length=60"], ["data.max_summary_length", "data.max_length"]),
    ],
)
def test_bad_values_are_one_line_naming_key_and_choices(sets, expected):
    with pytest.raises(UserError) as e:
        build_config(sets=sets)
    msg = str(e.value)
    assert "\n" not in msg
    for text in expected:
        assert text in msg


@pytest.mark.parametrize(
    "text, expected",
    [
        ("train:\n  lr: [1, 2]\n", "'train.lr'"),
        ("train:\n  warmup: 0.1\n", "unknown config key 'train.warmup'"),
        ("trian:\n  lr: 0.1\n", "unknown config key 'trian.lr'"),
        ("- a\n- b\n", "must hold a mapping"),
        ("train: {lr: 1\n", "not valid YAML"),
        ("data:\n  source: null\n", "'data.source'"),
    ],
)
def test_bad_config_files(tmp_path, text, expected):
    with pytest.raises(UserError) as e:
        build_config(_yaml(tmp_path, text))
    assert expected in str(e.value) and "\n" not in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        build_config(str(tmp_path / "nope.yaml"))


def test_empty_section_is_allowed(tmp_path):
    assert build_config(_yaml(tmp_path, "eval:\ntrain:\n  epochs: 2\n")).train.epochs == 2


def test_run_config_round_trip(tmp_path):
    cfg = build_config(sets=["method.target_modules=c_attn", "data.separator=\"\\nTL;DR:\\n\"", "train.lr=1e-4",
                             "data.source=/data/x.csv"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_run_config(tmp_path) == cfg
    with pytest.raises(UserError, match="not a sumtune run directory"):
        load_run_config(tmp_path / "elsewhere")
