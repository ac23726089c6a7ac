"""What keeps `sumtune plan` cheap: the base model loaded from disk once for all methods (each
method on its own copy), and the evaluation measured once per decoding signature: a merged
adapter or trained last layers decode the base model's shape, a soft prompt does not."""

from __future__ import annotations

import copy

import torch

from sumtune.config import build_config
from sumtune.modeling import load_model
from sumtune.recipes.calibrate_shared import decoding_signature
from sumtune.recipes.experiment import Plan
from sumtune.recipes.plan import run_plan


def _cfg(model, data, out):
    return build_config(flags={
        "model.name": str(model), "data.source": str(data), "output_dir": str(out), "train.epochs": 1,
        "train.batch_size": 4, "train.precision": "fp32", "data.max_length": 128, "data.max_summary_length": 32,
        "eval.max_new_tokens": 4, "method.r": 4, "method.n_tokens": 4})


def test_plan_loads_the_base_once_and_shares_evaluations(tiny_neo, kaggle_dir, tmp_path, monkeypatch):
    import sumtune.recipes.calibrate_shared as shared
    import sumtune.runs as runs
    import sumtune.training.state as state

    loads: list[str] = []

    def counted(name, *a, **k):
        loads.append(name)
        return load_model(name, *a, **k)

    for module in (shared, runs, state):
        monkeypatch.setattr(module, "load_model", counted)
    methods = ("zero_shot", "prompt_tuning", "lora", "last_layers")
    record = run_plan(_cfg(tiny_neo, kaggle_dir, tmp_path / "exp"), Plan(chosen=methods), steps=1, articles=2,
                      progress=False)
    assert loads == [str(tiny_neo)]  # one disk load for four methods, training and evaluation
    cals = record["calibration"]["per_method"]
    assert {m: cals[m]["eval_shared_from"] for m in methods} == {
        "zero_shot": None, "prompt_tuning": None, "lora": "zero_shot", "last_layers": "zero_shot"}
    for m in ("lora", "last_layers"):
        for key in ("decode_first_seconds", "decode_batch_seconds", "loss_first_seconds", "score_seconds"):
            assert cals[m][key] == cals["zero_shot"][key]
        assert cals[m]["eval_load_seconds"] > 0  # each loads its own run, timed
    # every method's set-up and evaluation load include the one disk load's seconds
    assert all(cals[m]["setup_seconds"] > 0 for m in methods)
    assert all(p["total_seconds"] > 0 and p["error"] is None for p in record["methods"])


def test_each_method_trains_its_own_copy_of_the_base(tiny_neo, kaggle_dir, tmp_path, monkeypatch):
    """LoRA's injection and last_layers' untied head change the copy they get, never the held base."""
    from sumtune.recipes.calibrate import Calibrator

    held = {}
    real = Calibrator._training

    def training(self, cfg, run, cal):
        real(self, cfg, run, cal)
        held.update(self.base._held)

    monkeypatch.setattr(Calibrator, "_training", training)
    run_plan(_cfg(tiny_neo, kaggle_dir, tmp_path / "exp"), Plan(chosen=("lora", "last_layers")), steps=1, articles=2,
             progress=False)
    (base,) = held.values()
    disk = load_model(str(tiny_neo))
    assert [n for n, _ in base.named_parameters()] == [n for n, _ in disk.named_parameters()]
    for (n, p), q in zip(base.named_parameters(), disk.parameters(), strict=True):
        assert torch.equal(p, q), n


def test_decoding_signature_matches_the_base_for_a_merged_adapter_only(tiny_neo):
    """PEFT's own merge of a LoRA adapter gives the base's signature (the same operations); an
    unmerged one, or PEFT's prompt tuning, does not."""
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    cfg = build_config(flags={"model.name": str(tiny_neo)})
    base = load_model(str(tiny_neo))
    want = decoding_signature(base, cfg, None)
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert decoding_signature(lora, cfg, None) != want
    assert decoding_signature(lora.merge_and_unload(), cfg, None) == want
    assert decoding_signature(base, cfg, torch.bfloat16) != want
    prompt = get_peft_model(copy.deepcopy(base), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert decoding_signature(prompt, cfg, None) != want
