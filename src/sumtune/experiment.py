"""`sumtune experiment` - the whole study in one command - and `sumtune demo`, the same on a
tiny offline model and the bundled news sample.

Every method trains on the same data with the same budget (epochs/steps, batch, precision,
seed) into OUT/<method>, is evaluated on the test split, and the runs are compared into OUT.
Learning rates: one rate for all methods would be unfair (soft prompts need a far larger one
than LoRA), so each method has its own small grid. With --sweep-lr, a short run (one epoch,
or a quarter of --max-steps) per grid value goes to OUT/sweep/<method>/lr<value> and the rate
with the lowest validation loss is kept; without it, each method uses the middle of its grid,
unless train.lr was set to something other than its default, which then applies to all.

Re-running resumes: a finished run (results.json "finished": true) is not trained again, a
started one continues from its checkpoint, and an evaluation is skipped when its
metrics.json exists with the same decoding settings and limit (and the run was not
trained again meanwhile).
"""

from __future__ import annotations

import copy
import logging
from dataclasses import asdict
from pathlib import Path

from sumtune.checkpoint import atomic_dir, atomic_write_json, read_json
from sumtune.config import Config, TrainConfig, build_config

log = logging.getLogger(__name__)

METHODS = ("zero_shot", "prompt_tuning", "lora", "last_layers")
LR_GRID = {
    "prompt_tuning": (3e-2, 1e-1, 3e-1),
    "lora": (1e-4, 3e-4, 1e-3),
    "last_layers": (3e-5, 1e-4, 3e-4),
    "full": (1e-5, 3e-5, 1e-4),
}
# a tiny random model learns only at far larger rates than a pretrained one
DEMO_LR_GRID = {
    "prompt_tuning": (1e-1, 3e-1, 1.0),
    "lora": (3e-3, 1e-2, 3e-2),
    "last_layers": (1e-3, 3e-3, 1e-2),
    "full": (1e-3, 3e-3, 1e-2),
}
DEMO_DATA = Path(__file__).parent / "demo" / "news.jsonl"
REAL_COMMAND = "sumtune experiment --model EleutherAI/gpt-neo-125m --data hf:abisee/cnn_dailymail:3.0.0"


def _is_finished(run: Path) -> bool:
    results = run / "results.json"
    return results.is_file() and read_json(results).get("finished") is True


def _train(cfg: Config) -> tuple[Path, bool]:
    """Train cfg into cfg.output_dir unless it is finished (continuing a started run);
    (the run, whether it trained now)."""
    from sumtune.train import train

    run = Path(cfg.output_dir)
    if _is_finished(run):
        print(f"{run}: finished earlier, skipped")
        return run, False
    return Path(train(cfg, resume=(run / "config.yaml").is_file())), True


def _method_cfg(cfg: Config, method: str, output_dir: Path, lr: float | None) -> Config:
    c = copy.deepcopy(cfg)
    c.method.name = method
    c.output_dir = str(output_dir)
    if lr is not None:
        c.train.lr = lr
    return c


def _sweep(cfg: Config, method: str, out: Path, grid: tuple[float, ...]) -> tuple[float, dict[str, float]]:
    """Short runs over the method's grid; (best lr by validation loss, {lr: val loss})."""
    losses: dict[str, float] = {}
    for lr in grid:
        c = _method_cfg(cfg, method, out / "sweep" / method / f"lr{lr:g}", lr)
        if c.train.max_steps:
            c.train.max_steps = max(1, c.train.max_steps // 4)
        else:
            c.train.epochs = 1
        run, _ = _train(c)
        losses[f"{lr:g}"] = read_json(run / "results.json")["best_val_loss"]
    best = min(losses, key=losses.get)
    print(f"lr sweep {method}: " + ", ".join(f"{k}: {v:.4f}" for k, v in losses.items()) + f" -> {best}")
    return float(best), losses


def _evaluate(run: Path, eval_limit: int | None, cfg: Config, retrained: bool) -> None:
    from sumtune.evaluate import evaluate_run

    done = run / "eval" / "test" / "metrics.json"
    if done.is_file() and not retrained:
        m = read_json(done)
        if m.get("limit", 0) == (eval_limit or 0) and m.get("decoding") == asdict(cfg.eval):
            print(f"{run}: evaluated earlier, skipped")
            return
    evaluate_run(run, "test", limit=eval_limit, overrides=asdict(cfg.eval))


def run_experiment(cfg: Config, with_full: bool = False, sweep_lr: bool = False,
                   eval_limit: int | None = None, lr_grid: dict[str, tuple[float, ...]] | None = None) -> dict:
    """Train, evaluate and compare every method into cfg.output_dir; returns the comparison.
    `lr_grid`: the learning rates per method (default LR_GRID)."""
    from sumtune.report import compare_runs

    grids = lr_grid or LR_GRID
    out = Path(cfg.output_dir)
    methods = METHODS + (("full",) if with_full else ())
    fixed_lr = cfg.train.lr if cfg.train.lr != TrainConfig().lr else None
    if fixed_lr is not None and not sweep_lr:
        log.warning("train.lr=%g applies to every method; soft prompts usually need a far larger rate than "
                    "LoRA (use --sweep-lr for a fair comparison)", fixed_lr)
    record: dict = {"methods": list(methods), "lr": {}, "sweep": {}}
    runs = []
    for method in methods:
        lr = None
        if method in grids:
            if sweep_lr:
                lr, record["sweep"][method] = _sweep(cfg, method, out, grids[method])
            else:
                lr = fixed_lr or grids[method][len(grids[method]) // 2]
        c = _method_cfg(cfg, method, out / method, lr)
        record["lr"][method] = c.train.lr if method in grids else None
        print(f"== {method}" + (f" (lr {c.train.lr:g})" if method in grids else "") + f" -> {c.output_dir}")
        run, trained = _train(c)
        _evaluate(run, eval_limit, c, retrained=trained)
        runs.append(run)
        atomic_write_json(out / "experiment.json", record)
    return compare_runs(runs, out)


def _demo_texts() -> list[str]:
    import json

    rows = [json.loads(line) for line in DEMO_DATA.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [r["article"] + "\n" + r["highlights"] for r in rows]


def run_demo(output_dir: str | Path = "demo_runs") -> dict:
    """The experiment on a tiny random GPT-Neo (built here, offline) and the bundled news sample."""
    from sumtune.tiny import build_tiny_model

    print("NOTE: this demo trains a tiny random model, so its summaries are meaningless; it only shows the whole "
          f"pipeline running offline. The real study: {REAL_COMMAND}")
    out = Path(output_dir)
    model_dir = out / "tiny-model"
    if not (model_dir / "config.json").is_file():
        with atomic_dir(model_dir) as tmp:
            build_tiny_model(tmp, _demo_texts(), arch="gpt_neo", vocab_size=1024)
    cfg = build_config(flags={
        "model.name": str(model_dir), "data.source": str(DEMO_DATA), "output_dir": str(out),
        "train.epochs": 10, "train.batch_size": 4, "train.grad_accum": 1, "train.precision": "fp32",
        "data.max_length": 384, "data.max_summary_length": 64, "eval.max_new_tokens": 48,
    })
    return run_experiment(cfg, with_full=True, sweep_lr=True, lr_grid=DEMO_LR_GRID)  # ends with the table, plots
