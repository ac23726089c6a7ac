"""Run directories: metadata, loading a run back, and one-line errors for every broken run."""

from __future__ import annotations

import pytest
import torch
import yaml
from method_utils import make_run, padded_batch

from sumtune.errors import UserError
from sumtune.fingerprints import fingerprint
from sumtune.methods import get_method
from sumtune.modeling import load_model, load_tokenizer
from sumtune.runs import load_run, run_meta

METHODS = [
    ("zero_shot", ()),
    ("prompt_tuning", ("method.n_tokens=4",)),
    ("lora", ("method.r=2",)),
    ("last_layers", ("method.last_k_blocks=1", "method.train_final_norm=true")),
    ("full", ()),
]


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg
    return msg


@pytest.mark.parametrize("method,sets", METHODS)
def test_load_run_reproduces_the_trained_model(tiny_neo, tmp_path, method, sets):
    run, cfg, model, tok = make_run(tmp_path / "run", tiny_neo, method, sets)
    cfg2, m, loaded, tok2 = load_run(run)
    assert cfg2 == cfg and m.name == method and tok2.pad_token_id == tok.pad_token_id
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    batch = padded_batch(tok)
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits, rtol=0, atol=1e-6)


def test_run_meta_records_method_base_and_hyper_parameters(tiny_neo, tmp_path):
    import json

    run, cfg, _, _ = make_run(tmp_path / "run", tiny_neo, "lora", ("method.r=2", "method.alpha=4"))
    meta = json.loads((run / "adapter" / "sumtune.json").read_text())
    assert meta["method"] == "lora"
    assert meta["method_config"] == {"r": 2, "alpha": 4, "dropout": 0.05, "target_modules": [],
                                   "use_dora": False, "use_rslora": False, "quantize": "none"}
    assert meta["base_model"] == fingerprint(str(tiny_neo), load_model(str(tiny_neo)))


def test_last_layers_run_records_train_head_and_loads_back(tiny_neo, tmp_path):
    import json

    run, cfg, model, tok = make_run(tmp_path / "run", tiny_neo, "last_layers",
                                    ("method.last_k_blocks=1", "method.train_head=false"))
    meta = json.loads((run / "adapter" / "sumtune.json").read_text())
    assert meta["method_config"] == {"last_k_blocks": 1, "train_final_norm": False, "train_head": False}
    _, _, loaded, _ = load_run(run)
    assert loaded.get_output_embeddings().weight is loaded.get_input_embeddings().weight
    batch = padded_batch(tok)
    with torch.no_grad():
        assert torch.equal(loaded(**batch).logits, model(**batch).logits)
    # the run's config changed to the other variant: refused in one line naming the tensor
    data = yaml.safe_load((run / "config.yaml").read_text())
    data["method"]["train_head"] = True
    (run / "config.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(UserError, match="missing 'lm_head.weight'") as e:
        load_run(run)
    _one_line(e)


def test_run_meta_refuses_a_wrapped_model(tiny_neo):
    from sumtune.config import build_config

    cfg = build_config(flags={"model.name": str(tiny_neo), "method.name": "lora"})
    lora = get_method("lora")
    model = lora.prepare(load_model(str(tiny_neo)), load_tokenizer(str(tiny_neo)), lora.options(cfg.method))
    with pytest.raises(ValueError, match="before method.prepare"):
        run_meta(cfg, model)


def test_other_base_model_is_refused(tiny_neo, tiny_gpt2, tmp_path):
    run, *_ = make_run(tmp_path / "run", tiny_neo, "last_layers")
    with pytest.raises(UserError) as e:
        load_run(run, base_model=str(tiny_gpt2))
    msg = _one_line(e)
    assert str(tiny_neo) in msg and str(tiny_gpt2) in msg


def test_same_base_model_elsewhere_is_accepted(tiny_neo, tmp_path):
    import shutil

    run, *_ = make_run(tmp_path / "run", tiny_neo, "lora", ("method.r=2",))
    moved = shutil.copytree(tiny_neo, tmp_path / "moved_model")
    assert load_run(run, base_model=str(moved))[0].method.name == "lora"


def test_wrong_method_is_refused(tiny_neo, tmp_path):
    run, *_ = make_run(tmp_path / "run", tiny_neo, "lora", ("method.r=2",))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    cfg["method"]["name"] = "full"
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(UserError) as e:
        load_run(run)
    msg = _one_line(e)
    assert "'lora'" in msg and "'full'" in msg


def test_missing_pieces_are_one_line_errors(tiny_neo, tmp_path):
    with pytest.raises(UserError, match="no config.yaml"):
        load_run(tmp_path)
    run, *_ = make_run(tmp_path / "run", tiny_neo, "last_layers")
    (run / "adapter" / "weights.safetensors").unlink()
    with pytest.raises(UserError, match="weights file not found") as e:
        load_run(run)
    _one_line(e)
    (run / "adapter" / "sumtune.json").unlink()
    with pytest.raises(UserError, match="sumtune.json is missing"):
        load_run(run)
    import shutil

    shutil.rmtree(run / "adapter")
    with pytest.raises(UserError, match="no adapter/ directory"):
        load_run(run)


@pytest.mark.parametrize("method,sets", [m for m in METHODS if m[0] != "zero_shot"])
def test_truncated_weights_are_one_line_errors(tiny_gpt2, tmp_path, method, sets):
    run, *_ = make_run(tmp_path / "run", tiny_gpt2, method, sets, steps=1)
    path = run / "adapter" / get_method(method).weights_file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="corrupt or truncated") as e:
        load_run(run)
    _one_line(e)


@pytest.mark.parametrize("suffix", [".bin", ".pth"])
def test_pickled_weights_are_refused(tiny_neo, tmp_path, suffix):
    run, *_ = make_run(tmp_path / "run", tiny_neo, "lora", ("method.r=2",), steps=1)
    (run / "adapter" / "adapter_model.safetensors").unlink()
    (run / "adapter" / f"adapter_model{suffix}").write_bytes(b"\x80\x04not a real pickle")
    with pytest.raises(UserError, match="refusing to load a pickle.*safetensors") as e:
        load_run(run)
    _one_line(e)
