"""Breadth beyond the matrix: architecture parts found for every family (and one clear error where
one is missing), LoRA/IA³ default targets, the fast losses and SDPA on every family, `sumtune train
--method last_layers` on Llama and Qwen2, `experiment --methods`, and QLoRA refused without CUDA."""

from __future__ import annotations

import pytest
import torch
from method_utils import options, padded_batch
from torch import nn

from sumtune.architecture import decoder_parts
from sumtune.cli import main
from sumtune.config import build_config
from sumtune.errors import UserError
from sumtune.fastpath import CachedHeadLoss, FeatureCache, speed_up
from sumtune.fastpath.loss import fast_token_loss_sum
from sumtune.methods import get_method
from sumtune.methods.ia3.method import targets as ia3_targets
from sumtune.methods.lora.method import default_targets
from sumtune.modeling import load_model, load_tokenizer
from sumtune.tiny import ARCHS
from sumtune.training.step import token_loss_sum

# attention + MLP linears of each family, as the rule finds them
LORA_TARGETS = {
    "gpt_neo": ["c_fc", "c_proj", "k_proj", "out_proj", "q_proj", "v_proj"],
    "gpt2": ["c_attn", "c_fc", "c_proj"],
    "gpt_neox": ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"],
    "opt": ["fc1", "fc2", "k_proj", "out_proj", "q_proj", "v_proj"],
    "llama": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    "qwen2": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
    "phi3": ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"],
    "gemma": ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"],
}
IA3_FEEDFORWARD = {"gpt_neo": ["mlp.c_proj"], "gpt2": ["mlp.c_proj"], "gpt_neox": ["mlp.dense_4h_to_h"],
                   "opt": ["fc2"], "llama": ["mlp.down_proj"], "qwen2": ["mlp.down_proj"],
                   "phi3": ["mlp.down_proj"], "gemma": ["mlp.down_proj"]}


@pytest.mark.parametrize("arch", ARCHS)
def test_parts_targets_and_fast_losses_on_every_family(arch, tiny_family):
    model_dir = tiny_family(arch)
    base, tok = load_model(str(model_dir)), load_tokenizer(str(model_dir))
    parts = decoder_parts(base)
    assert len(parts.blocks) == base.config.num_hidden_layers and parts.final_norm is not None
    assert default_targets(base) == LORA_TARGETS[arch]
    chosen, feedforward = ia3_targets(base, options("ia3"))
    assert feedforward == IA3_FEEDFORWARD[arch] and set(feedforward) < set(chosen)
    assert speed_up(base, inference=True)["attention"] == "sdpa"  # Transformers' SDPA (ours for GPT-Neo)

    batch = padded_batch(tok)
    for name, cfg in [("lora", options("lora", r=4)), ("prefix_tuning", options("prefix_tuning", n_tokens=3)),
                      ("last_layers", options("last_layers", train_final_norm=True))]:
        model = get_method(name).prepare(load_model(str(model_dir)), tok, cfg)
        ref, n = token_loss_sum(model, batch)
        fast, m = fast_token_loss_sum(model, batch)
        assert n == m
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-4)
    cached = CachedHeadLoss.for_model(model, FeatureCache())  # head + final norm train: the feature cache is exact
    assert cached is not None and cached.norm is decoder_parts(model).final_norm
    for _ in range(2):  # filled, then read back
        torch.testing.assert_close(cached(model, batch)[0], ref, rtol=1e-5, atol=1e-4)


def test_a_missing_part_is_one_line_naming_the_model_type(tiny_family):
    model = load_model(str(tiny_family("llama")))
    model.model.layers = nn.ModuleList(list(model.model.layers)[:1])  # no longer num_hidden_layers blocks
    with pytest.raises(UserError, match=r"^model type 'llama': no list of decoder blocks \(2 layers\) found in 'model'$"):
        decoder_parts(model)
    model = load_model(str(tiny_family("llama")))
    model.model.norm = nn.Identity()
    with pytest.raises(UserError, match="^model type 'llama': no final layer norm found after the decoder blocks$"):
        get_method("last_layers").prepare(model, None, options("last_layers", train_final_norm=True))


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_cli_train_last_layers(arch, tiny_family, kaggle_dir, tmp_path):
    out = tmp_path / "run"
    rc = main(["train", "--method", "last_layers", "--model", str(tiny_family(arch)), "--data", str(kaggle_dir),
               "--output-dir", str(out), "--max-steps", "2", "--batch-size", "2", "--grad-accum", "1",
               "--max-length", "160", "--precision", "fp32", "--set", "data.max_summary_length=48",
               "--set", "data.max_train_samples=4", "--set", "data.max_eval_samples=2"])
    assert rc == 0 and (out / "adapter" / "weights.safetensors").is_file()


def test_experiment_methods_flag_chooses_the_runs():
    from sumtune.cli import build_parser
    from sumtune.recipes.experiment import LR_GRID, METHODS, Plan

    assert Plan().methods() == METHODS == ("zero_shot", "prompt_tuning", "lora", "last_layers")
    assert Plan(with_full=True).methods() == METHODS + ("full",)
    a = build_parser().parse_args(["experiment", "--methods", "ia3,prefix_tuning,p_tuning", "--with-full"])
    assert Plan(chosen=a.methods, with_full=a.with_full).methods() == ("ia3", "prefix_tuning", "p_tuning", "full")
    assert main(["experiment", "--methods", "lora,adapters"]) == 2
    assert {"prefix_tuning", "p_tuning", "ia3"} <= set(LR_GRID)


def test_qlora_is_refused_without_cuda_before_anything_loads(tiny_gpt2, kaggle_dir, tmp_path, monkeypatch, capsys):
    import sumtune.training.state as state

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(state, "load_tokenizer", lambda *a, **k: pytest.fail("loaded a tokenizer"))
    out = tmp_path / "run"
    rc = main(["train", "--method", "lora", "--model", str(tiny_gpt2), "--data", str(kaggle_dir),
               "--output-dir", str(out), "--precision", "fp32", "--set", "method.quantize=4bit"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc != 0 and len(err) == 1 and "method.quantize=4bit" in err[0] and "CUDA" in err[0]
    with pytest.raises(UserError, match="method ia3 has no key 'quantize'.*lora has it"):
        build_config(sets=["method.name=ia3", "method.quantize=4bit"])


def test_new_methods_describe_count_and_refuse_export(tiny_family):
    model_dir = tiny_family("llama")
    tok = load_tokenizer(str(model_dir))
    hidden, layers = 64, 2
    kv_dim = 2 * (hidden // 4)  # 2 key/value heads of 16
    cases = {
        "prefix_tuning": (options("prefix_tuning", n_tokens=5), 5 * layers * 2 * kv_dim),
        "ia3": (options("ia3"), layers * (2 * kv_dim + 3 * hidden)),  # k, v outputs; down's input
    }
    for name, (cfg, expected) in cases.items():
        model = get_method(name).prepare(load_model(str(model_dir)), tok, cfg)
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == expected, name
    assert get_method("prefix_tuning").describe(options("prefix_tuning", n_tokens=5)) == "prefix, 5 tokens per layer"
    assert get_method("p_tuning").describe(options("p_tuning", n_tokens=5, encoder="lstm")) == "P-tuning, 5 tokens, LSTM encoder"
    assert get_method("ia3").describe(options("ia3")) == "IA³ on keys, values, MLP"
    assert get_method("lora").describe(options("lora", use_dora=True, use_rslora=True)) == "DoRA r=8 α=16 rs on attention+MLP"
    for name in ("prefix_tuning", "p_tuning"):
        with pytest.raises(UserError, match="cannot be exported as a plain model: its"):
            get_method(name).merged(None)


def test_serve_refuses_methods_it_cannot_batch(tiny_gpt2, tmp_path):
    from method_utils import make_run

    from sumtune.multirun import RunSet

    run, *_ = make_run(tmp_path / "run", tiny_gpt2, "ia3")
    with pytest.raises(UserError, match="sumtune serve batches .* for a ia3 run"):
        RunSet([run])


@pytest.mark.parametrize("preset,name", [("pythia_160m", "EleutherAI/pythia-160m"),
                                         ("smollm2_135m", "HuggingFaceTB/SmolLM2-135M"),
                                         ("qwen2.5_0.5b", "Qwen/Qwen2.5-0.5B")])
def test_model_presets_name_only_the_model(preset, name):
    from pathlib import Path

    from sumtune.config import Config, load_yaml

    path = Path(__file__).resolve().parents[1] / "configs" / f"{preset}.yaml"
    assert load_yaml(path) == {"model": {"name": name}}
    cfg = build_config(str(path))
    default = Config()
    default.model.name = name
    assert cfg.to_dict() == default.to_dict()


@pytest.mark.parametrize("arch,name", [("llama", "lora"), ("gpt2", "p_tuning"), ("qwen2", "prefix_tuning"),
                                       ("gemma", "ia3")])
def test_bf16_training_loss_and_decoding_with_every_fast_path(arch, name, tiny_family):
    """Under bf16 autocast with every fast path: an untied frozen head is cast once (the label loss
    feeds it matching inputs), and a prompt encoder cast for inference runs under autocast."""
    from sumtune.config import EvalConfig
    from sumtune.decoding import Generator
    from sumtune.fastpath import FastPathContext, apply_fast_paths, select_loss

    model_dir = tiny_family(arch)
    tok = load_tokenizer(str(model_dir))
    keys = {} if name in ("lora", "ia3") else {"n_tokens": 4}
    model = get_method(name).prepare(load_model(str(model_dir)), tok, options(name, **keys))
    loss_fn = select_loss(model, token_loss_sum, apply_fast_paths(model, FastPathContext(autocast=torch.bfloat16)))
    batch = padded_batch(tok)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast, n = loss_fn(model, batch)
        ref, _ = token_loss_sum(model, batch)
    fast.backward()
    torch.testing.assert_close(fast / n, ref / n, rtol=1e-2, atol=0)
    model.eval()
    apply_fast_paths(model, FastPathContext(training=False, autocast=torch.bfloat16))
    out = Generator(model, tok, EvalConfig(batch_size=2, max_new_tokens=4), autocast=torch.bfloat16).generate(
        [[5, 6, 7, 8], [9, 10]])
    assert [len(o) for o in out] == [4, 4] or all(o for o in out)
