"""What keeps `sumtune plan` cheap: the base model loaded from disk once for all methods (each
method on its own copy); decoding measured once per decoding signature (a merged adapter, trained
last layers or a soft prompt decode the base model's shape); where rows run alone (a CPU), the
longest micro-batch timed, and loss passes projected from a few rows by their tokens."""

from __future__ import annotations

import copy
import math

import pytest
import torch

from sumtune.config import build_config
from sumtune.modeling import load_model
from sumtune.recipes.calibrate_shared import decoding_signature
from sumtune.recipes.calibration import Calibration, loss_units, per_token, unit_tokens
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
        "zero_shot": None, "prompt_tuning": "zero_shot", "lora": "zero_shot", "last_layers": "zero_shot"}
    for m in ("lora", "last_layers"):
        for key in ("decode_build_seconds", "decode_batch_seconds", "score_seconds"):
            assert cals[m][key] == cals["zero_shot"][key]
        assert cals[m]["eval_load_seconds"] > 0  # each loads its own run, timed
    for m in methods:  # the test loss pass: measured for each (prompt tuning's soft tokens count there)
        assert len(cals[m]["loss_seconds"]) == 1 and cals[m]["loss_pass_tokens"] > 0
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


def test_decoding_signature_matches_the_base_for_a_merged_adapter_or_a_soft_prompt(tiny_neo):
    """PEFT's own merge of a LoRA adapter gives the base's signature (the same operations), and so does
    PEFT's prompt tuning (its virtual tokens' keys and values are computed once: the steps attend to a
    few more positions); an unmerged adapter or another precision does not."""
    from peft import LoraConfig, PromptTuningConfig, get_peft_model

    cfg = build_config(flags={"model.name": str(tiny_neo)})
    base = load_model(str(tiny_neo))
    want = decoding_signature(base, cfg, None)
    lora = get_peft_model(copy.deepcopy(base), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    assert decoding_signature(lora, cfg, None) != want
    assert decoding_signature(lora.merge_and_unload(), cfg, None) == want
    assert decoding_signature(base, cfg, torch.bfloat16) != want
    prompt = get_peft_model(copy.deepcopy(base), PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    assert decoding_signature(prompt, cfg, None) == want


def test_rows_alone_time_the_longest_row_and_project_by_tokens(tiny_neo, kaggle_dir, tmp_path):
    """On a CPU with the label loss each row's forward and backward run alone, so the calibration times
    one step on the longest micro-batch (its peak is the step's) and projects a step by its rows' own
    tokens; without the label loss the rows share padded batches, and whole steps are timed."""
    import datasets

    cfg = _cfg(tiny_neo, kaggle_dir, tmp_path / "exp")
    record = run_plan(cfg, Plan(chosen=("lora",)), steps=1, articles=2, progress=False)
    cal = record["calibration"]["per_method"]["lora"]
    assert cal["rows_alone"] and len(cal["step_seconds"]) == 1 and record["calibration"]["rows_alone"] == ["lora"]
    from sumtune.data import load_splits, tokenize_splits
    from sumtune.modeling import load_tokenizer

    train = tokenize_splits(datasets.DatasetDict({"train": load_splits(cfg.data, cfg.data.seed)["train"]}),
                            load_tokenizer(str(tiny_neo)), cfg.data)["train"]
    lengths = [len(x) for x in train["input_ids"]]
    assert cal["step_tokens"] == [sum(sorted(lengths)[-4:])]  # the longest micro-batch, its rows alone
    steps = math.ceil(len(lengths) / cal["rows_per_step"])
    assert cal["mean_step_tokens"] == pytest.approx(sum(lengths) / steps)  # the rows' own tokens: no padding computed

    cfg.train.fast_paths = ["fused_adamw"]  # no label loss: padded batches
    record = run_plan(cfg, Plan(chosen=("lora",)), steps=1, articles=2, progress=False)
    cal = record["calibration"]["per_method"]["lora"]
    assert not cal["rows_alone"] and record["calibration"]["whole_steps"] == ["lora"]
    assert cal["step_tokens"][0] % 4 == 0 and cal["mean_step_tokens"] > sum(lengths) / steps  # padded batches of 4


def test_loss_passes_are_projected_by_their_tokens():
    lengths = [5, 9, 3, 7]
    assert loss_units(lengths, 2, alone=True) == [[1], [3], [0], [2]]
    assert loss_units(lengths, 2, alone=False) == [[1, 3], [0, 2]]
    assert [unit_tokens(u, lengths) for u in loss_units(lengths, 2, alone=False)] == [18, 10]
    assert per_token([1.0, 3.0], [10, 30]) == 0.1 and per_token([], []) == 0.0
    cal = Calibration("lora", True, val_batch_seconds=[2.0], cached_val_batch_seconds=[0.5], val_batch_tokens=[8],
                      val_pass_tokens=24, loss_seconds=[1.0], loss_tokens=[9], loss_pass_tokens=24)
    assert cal.val_pass() == 6.0 and cal.val_pass(cached=True) == 1.5 and cal.loss_pass() == 24 / 9


def test_decoding_is_projected_from_its_first_batch_and_the_later_ones():
    cal = Calibration("zero_shot", False, decode_build_seconds=0.5, decode_batch_seconds=[4.0])
    assert cal.decode_pass(3) == 0.5 + 3 * 4.0  # only the first (longest) timed: an upper bound
    cal.decode_batch_seconds = [4.0, 2.0, 3.0]
    assert cal.decode_pass(5) == 0.5 + 4.0 + 4 * 2.5 and cal.decode_pass(0) == 0.0
