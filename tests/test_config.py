"""Configuration: precedence, presets, validation messages, the run's config.yaml."""

from __future__ import annotations

import typing
from pathlib import Path

import pytest
import yaml

from sumtune.cli import _eval_overrides, build_parser
from sumtune.config import (
    DECODING_PRESETS,
    Config,
    EvalConfig,
    build_config,
    config_from_dict,
    decoding_summary,
    load_run_config,
    save_config,
)
from sumtune.errors import UserError
from sumtune.recipes.evaluate import _config as eval_config

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
    missing = set(_flat({k: v for k, v in Config().to_dict().items() if k != "method"})) - set(_flat(yaml.safe_load(text)))
    assert not missing, f"add these keys to configs/default.yaml: {sorted(missing)}"
    assert build_config(str(CONFIGS / "default.yaml")) == Config()


def test_default_yaml_has_each_registered_methods_section():
    """default.yaml's `method:` holds the default method's name and, under each method's name, exactly
    the keys its config dataclass declares, at their defaults (a method without keys has none)."""
    import dataclasses

    from sumtune.methods import CONFIGS as REGISTERED
    from sumtune.methods import DEFAULT_METHOD

    method = yaml.safe_load((CONFIGS / "default.yaml").read_text())["method"]
    assert method.pop("name") == DEFAULT_METHOD
    expected = {}
    for name, cls in REGISTERED.items():
        own = {f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
               for f in dataclasses.fields(cls) if f.name != "name"}
        if own:
            expected[name] = own
    assert method == expected


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
        (["method.name=adapter"], ["'method.name'", "one of zero_shot, prompt_tuning, prefix_tuning, p_tuning, lora, ia3, last_layers, full"]),
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


CNNDM = {"num_beams": 4, "no_repeat_ngram_size": 3, "length_penalty": 2.0, "min_new_tokens": 55, "max_new_tokens": 140}
GREEDY = {"num_beams": 1, "no_repeat_ngram_size": 0, "length_penalty": 1.0, "min_new_tokens": 0, "max_new_tokens": 128}


def _decoding(ev: EvalConfig) -> dict:
    return {k: getattr(ev, k) for k in CNNDM}


def test_decoding_presets_set_exactly_the_listed_values():
    assert set(DECODING_PRESETS) == set(typing.get_args(typing.get_type_hints(EvalConfig)["preset"]))
    cfg = build_config(sets=["eval.preset=cnndm"])
    assert cfg.eval.preset == "cnndm" and _decoding(cfg.eval) == CNNDM
    assert (cfg.eval.batch_size, cfg.eval.max_sentences) == (Config().eval.batch_size, 0)  # not decoding keys
    assert _decoding(Config().eval) == GREEDY  # greedy: the defaults, today's behaviour
    assert build_config(sets=["eval.preset=cnndm", "eval.preset=greedy"]) == Config()


def test_preset_goes_first_within_a_layer(tmp_path):
    cnndm_2_beams = {**CNNDM, "num_beams": 2}
    # a file: the preset after the key it would override
    f = _yaml(tmp_path, "eval:\n  num_beams: 2\n  preset: cnndm\n")
    assert _decoding(build_config(f).eval) == cnndm_2_beams
    # the flags dict, either order
    for flags in ({"eval.num_beams": 2, "eval.preset": "cnndm"}, {"eval.preset": "cnndm", "eval.num_beams": 2}):
        assert _decoding(build_config(flags=flags).eval) == cnndm_2_beams
    # --set items, either order
    for sets in (["eval.preset=cnndm", "eval.num_beams=2"], ["eval.num_beams=2", "eval.preset=cnndm"]):
        assert _decoding(build_config(sets=sets).eval) == cnndm_2_beams
    # across layers a later preset overrides earlier keys, and later keys override an earlier preset
    assert build_config(f, sets=["eval.preset=greedy"]).eval.num_beams == 1
    assert build_config(f, {"eval.min_new_tokens": 7}).eval.min_new_tokens == 7
    assert _decoding(build_config(f, {"eval.preset": "cnndm"}).eval) == CNNDM


def test_preset_reload_and_eval_overrides(tmp_path):
    cfg = build_config(sets=["eval.num_beams=2", "eval.preset=cnndm", "eval.max_sentences=3"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_run_config(tmp_path) == cfg  # the saved file lists preset first and every key after it
    d = cfg.to_dict()
    d["eval"] = dict(reversed(list(d["eval"].items())))  # the preset last: still applied first
    assert config_from_dict(d) == cfg
    # `sumtune evaluate/summarize` flags on a saved run: --decoding first, whatever the order
    args = build_parser().parse_args(["evaluate", str(tmp_path), "--num-beams", "3", "--decoding", "greedy",
                                      "--min-new-tokens", "5"])
    overrides = _eval_overrides(args)
    assert overrides == {"preset": "greedy", "num_beams": 3, "min_new_tokens": 5}
    ev = eval_config(tmp_path, dict(reversed(list(overrides.items())))).eval
    assert _decoding(ev) == {**GREEDY, "num_beams": 3, "min_new_tokens": 5}
    assert ev.max_sentences == 3  # not a preset key: kept from the run
    assert build_parser().parse_args(["summarize", "r", "--decoding", "cnndm"]).decoding == "cnndm"


def test_decoding_summary():
    assert decoding_summary(Config().eval) == {"preset": "greedy", "label": "greedy", "modified": [],
                                               **GREEDY, "max_sentences": 0}
    ev = build_config(sets=["eval.preset=cnndm", "eval.num_beams=2", "eval.batch_size=3"]).eval
    s = decoding_summary(ev)
    assert (s["preset"], s["label"], s["modified"], s["num_beams"]) == ("cnndm", "cnndm*", ["num_beams"], 2)
    assert decoding_summary(build_config(sets=["eval.preset=cnndm"]).eval)["label"] == "cnndm"


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["eval.preset=beam"], ["'eval.preset'", "one of greedy, cnndm"]),
        (["eval.min_new_tokens=-1"], ["'eval.min_new_tokens'", "an integer >= 0"]),
        (["eval.max_sentences=-2"], ["'eval.max_sentences'", "an integer >= 0"]),
        (["eval.preset=cnndm", "eval.max_new_tokens=40"], ["eval.min_new_tokens", "(55)", "eval.max_new_tokens"]),
    ],
)
def test_bad_decoding_values(sets, expected):
    with pytest.raises(UserError) as e:
        build_config(sets=sets)
    assert "\n" not in str(e.value) and all(t in str(e.value) for t in expected)


def test_a_runs_method_section_holds_its_own_keys_only(tmp_path):
    """The `method:` section is the chosen method's own config dataclass: `name`, then exactly the keys
    that dataclass declares; the saved config.yaml holds those and nothing of another method."""
    import dataclasses

    from sumtune.config import METHODS
    from sumtune.methods import CONFIGS, get_method

    assert tuple(CONFIGS) == METHODS
    for name, cls in CONFIGS.items():
        cfg = build_config(sets=[f"method.name={name}"])
        declared = [f.name for f in dataclasses.fields(cls) if f.name != "name"]
        assert type(cfg.method) is cls and get_method(name).config_class is cls
        save_config(cfg, tmp_path / "config.yaml")
        saved = yaml.safe_load((tmp_path / "config.yaml").read_text())["method"]
        assert list(saved) == ["name", *declared] and saved["name"] == name
        assert get_method(name).method_config(cfg.method) == {k: saved[k] for k in declared}
    cfg = build_config(sets=["method.name=lora", "method.r=4"])
    assert get_method("lora").options(cfg.method).r == 4 and not hasattr(cfg.method, "n_tokens")


@pytest.mark.parametrize(
    "sets, expected",
    [
        (["method.name=lora", "method.n_tokens=8"],
         ["'method.n_tokens'", "method lora has no key", "r, alpha, dropout", "prompt_tuning, prefix_tuning, p_tuning have it"]),
        (["method.name=prompt_tuning", "method.quantize=4bit"], ["'method.quantize'", "prompt_tuning", "lora has it"]),
        (["method.name=zero_shot", "method.r=4"], ["'method.r'", "zero_shot", "(its keys: none)"]),
        (["method.name=lora", "method.rank=4"], ["unknown config key 'method.rank'", "no method has it", "r, alpha"]),
        (["method.lora.n_tokens=4"], ["'method.lora.n_tokens'", "method lora has no key"]),
        (["method.adapter.r=4"], ["'method.adapter.r'", "'adapter' is no method"]),
        (["method.lora=4"], ["'method.lora' is a section"]),
    ],
)
def test_a_method_key_the_method_lacks_is_one_line_naming_the_method_and_its_keys(sets, expected):
    with pytest.raises(UserError) as e:
        build_config(sets=sets)
    msg = str(e.value)
    assert "\n" not in msg and all(text in msg for text in expected), msg


def test_changing_the_method_carries_over_only_the_keys_set_explicitly(tmp_path):
    """--method after a --config, and experiment's per-method copies: the new method's section is
    its defaults plus the given keys it has; a key it shares with the old method keeps its default
    unless it was given. A key under a method's own name applies to that method only."""
    import copy

    from sumtune.config import set_method

    f = _yaml(tmp_path, {"method": {"name": "lora", "r": 4, "p_tuning": {"encoder_hidden": 32},
                                    "prefix_tuning": {"encoder_hidden": 8}}})
    cfg = build_config(f, {"method.name": "ia3"}, ["method.target_modules=c_attn", "method.n_tokens=3"],
                       methods=("ia3", "lora", "prompt_tuning", "p_tuning", "prefix_tuning"))
    assert (cfg.method.name, cfg.method.target_modules) == ("ia3", ["c_attn"])
    copies = {}
    for name in ("lora", "p_tuning", "prefix_tuning", "prompt_tuning", "last_layers"):
        copies[name] = copy.deepcopy(cfg)
        set_method(copies[name], name)
    assert (copies["lora"].method.r, copies["lora"].method.target_modules, copies["lora"].method.alpha) == (4, ["c_attn"], 16)
    assert (copies["p_tuning"].method.encoder_hidden, copies["p_tuning"].method.n_tokens) == (32, 3)
    assert copies["prefix_tuning"].method.encoder_hidden == 8
    assert copies["prompt_tuning"].method.n_tokens == 3 and copies["last_layers"].method.train_head is True
    # a key both methods have, not given: the new method's default
    lora = build_config(sets=["method.name=lora", "method.target_modules=c_attn"])
    ia3 = copy.deepcopy(build_config(sets=["method.name=ia3"]))
    set_method(ia3, "lora")
    assert ia3.method.target_modules == [] and lora.method.target_modules == ["c_attn"]
    with pytest.raises(AttributeError, match="set_method"):
        ia3.method.name = "ia3"  # a section stays its method's: set_method rebuilds it


def test_a_file_key_of_another_method_is_dropped_with_a_warning(tmp_path, caplog):
    """A --config file (or a saved run) naming a key the chosen method lacks: dropped, silently at a
    method's default (old flat sections), with a warning otherwise; --set refuses it."""
    f = _yaml(tmp_path, {"method": {"name": "lora", "n_tokens": 20, "r": 4}})
    with caplog.at_level("WARNING"):
        assert build_config(f) == build_config(sets=["method.name=lora", "method.r=4"])
    assert not caplog.records
    f = _yaml(tmp_path, {"method": {"name": "lora", "n_tokens": 7}})
    with caplog.at_level("WARNING"):
        assert build_config(f) == Config()
    assert "method.n_tokens=7 ignored" in caplog.text and "method lora has no key 'n_tokens'" in caplog.text


def test_method_help_is_listed(capsys):
    """`sumtune methods`: every registered method with each key, its default and its help text."""
    import dataclasses

    from sumtune.cli import main
    from sumtune.methods import CONFIGS as REGISTERED

    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name, cls in REGISTERED.items():
        assert f"\n{name}: " in "\n" + out
        for f in dataclasses.fields(cls):
            if f.name != "name":
                assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help text"
                assert f"method.{f.name} = " in out and f.metadata["help"] in out
    assert main(["methods", "lora"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("lora: ") and "method.r = 8 " in out and "rank of the update matrices" in out
    assert "n_tokens" not in out
    assert main(["methods", "nope"]) == 2 and "unknown method 'nope'" in capsys.readouterr().err


def test_every_method_that_trains_declares_its_lr_grids():
    from sumtune.methods import CONFIGS, get_method
    from sumtune.recipes.demo import TINY_LR_GRID as DEMO_LR_GRID
    from sumtune.recipes.experiment import LR_GRID, grid_key

    for name, cls in CONFIGS.items():
        cfg = build_config(sets=[f"method.name={name}"])
        assert (grid_key(cfg) in LR_GRID and grid_key(cfg) in DEMO_LR_GRID) == get_method(name).trains
        assert set(cls.LR_GRIDS) == set(cls.DEMO_LR_GRIDS)
    blocks = build_config(sets=["method.name=last_layers", "method.train_head=false", "method.last_k_blocks=1"])
    assert grid_key(blocks) == "last_layers_blocks" and LR_GRID["last_layers_blocks"] == (3e-5, 1e-4, 3e-4)


def test_parsing_a_config_does_not_import_torch():
    import subprocess
    import sys

    code = ("import sys; from sumtune.config import build_config; "
            "build_config(sets=['method.name=last_layers', 'method.last_k_blocks=1']); print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
