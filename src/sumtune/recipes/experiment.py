"""`sumtune experiment`: the whole study in one command (`sumtune demo` runs it on a small sample,
recipes/demo.py).

Every method trains on the same data with the same budget (epochs/steps, batch, precision; with
`train.budget_seconds`/`budget_flops`, the same seconds or FLOPs of training, the steps capped as
configured) into OUT/<method> (with --seeds N, also OUT/<method>-seed<S> for the further seeds), is
evaluated on the test split with one decoding for all, and the runs are compared into OUT. Without
--methods on a news preset (data.preset cnndm or xsum) the Lead-3 baseline runs first (`for_data`).

Learning rates: one rate for all methods would be unfair (soft prompts need a far larger one
than LoRA), so each method has its own grid (LR_GRIDS in its config.py, with sources). Without --sweep-lr each
method uses the middle of its grid; with it, a short run per grid value goes to
OUT/sweep/<method>/lr<value> (under a budget, each sweep run has SWEEP_BUDGET_FRACTION of it,
spent beside the method's budget, not inside it, and reported as sweep seconds), the rate with the lowest validation loss is kept, and a best rate
at the edge of the grid extends the grid one step in that direction. `lr` (the --lr flag)
fixes the rate: one number for every method, or per method (`lora=1e-4,prompt_tuning=0.1`).

Re-running: each method's resolved configuration is compared with the one in its directory.
Identical: a finished run is skipped, a started one continues from its checkpoint, and an
evaluation is skipped when its metrics.json has the same decoding, limit and data. Different:
refused in one line naming the keys, unless `overwrite`, which starts those runs afresh.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sumtune.bertscore import covers, load_scorer
from sumtune.bertscore import wanted as wants_bertscore
from sumtune.config import (
    Config,
    apply_preset,
    config_differences,
    decoding_summary,
    load_run_config,
    set_method,
)
from sumtune.config_methods import check_sections
from sumtune.errors import UserError
from sumtune.fingerprints import data_fingerprint, fingerprint
from sumtune.io import atomic_write_json, read_json
from sumtune.lock import DirLock
from sumtune.methods import CONFIGS as METHOD_CONFIGS
from sumtune.methods import EXPERIMENT_METHODS, OPT_IN, get_method
from sumtune.modeling import load_model, load_model_config
from sumtune.recipes.evaluate import decoding_record, evaluate_run
from sumtune.recipes.train import train
from sumtune.report import compare_runs
from sumtune.report.frontier import HEADLINE
from sumtune.runs import RunDir
from sumtune.training.budget import KINDS, budget_of
from sumtune.training.state import check_max_length

log = logging.getLogger(__name__)

METHODS = EXPERIMENT_METHODS  # the default methods (the registry names them)
# Learning-rate grids by grid name, each declared (with its sources) by its method's config
LR_GRID = {key: grid for cls in METHOD_CONFIGS.values() for key, grid in cls.LR_GRIDS.items()}
# A sweep run must take this many optimizer steps after warmup: under warmup the first step's
# rate is 0, and a run of one or two steps leaves every rate at the zero-shot loss, so the sweep
# would "choose" the first rate of a tie.
MIN_SWEEP_STEPS = 5
# Under a seconds/FLOPs budget each lr-sweep run gets this fraction of it (as a sweep run gets a
# quarter of --max-steps), spent beside the main run's budget.
SWEEP_BUDGET_FRACTION = 0.25


@dataclass
class Plan:
    """What `run_experiment` does beyond the shared configuration."""

    with_full: bool = False
    sweep_lr: bool = False
    eval_limit: int | None = None  # None: the run's caps; 0: the whole test split
    seeds: int = 1
    overwrite: bool = False
    lr: float | dict[str, float] | None = None  # fixed rate(s); None: grids
    lr_grid: dict[str, tuple[float, ...]] = field(default_factory=lambda: dict(LR_GRID))
    chosen: tuple[str, ...] | None = None  # --methods; None: METHODS
    demo: bool = False  # the demo's tiny random model: the report names no winner
    decodings: tuple[str, ...] = ()  # --choose-decoding: presets tried per method on validation rows
    choose_rows: int = 16  # validation rows each candidate decoding is scored on

    def methods(self) -> tuple[str, ...]:
        base = tuple(self.chosen) if self.chosen else METHODS
        added = tuple(m for flag, m in OPT_IN.items() if getattr(self, flag) and m not in base)
        return base + added


def for_data(plan: Plan, cfg: Config) -> Plan:
    """`plan` with the default methods for `cfg`'s data: without --methods, METHODS after the baselines
    that the data preset's papers report (a method's EXPERIMENT_PRESETS, e.g. lead3 on cnndm and xsum)."""
    baselines = tuple(m for m, c in METHOD_CONFIGS.items() if cfg.data.preset in c.EXPERIMENT_PRESETS and m not in METHODS)
    return plan if plan.chosen or not baselines else dataclasses.replace(plan, chosen=baselines + METHODS)


def grid_key(cfg: Config) -> str:
    """The LR grid a method's configuration uses (a variant may have its own: `MethodConfigBase.grid`)."""
    return cfg.method.grid()


# --- one run ------------------------------------------------------------------


def _current_sources(cfg: Config, memo: dict, weights: bool = True) -> dict:
    """The data's and (with `weights`) the base model's content fingerprints now (once per experiment: `memo`)."""
    if "data_sha" not in memo:
        memo["data_sha"] = data_fingerprint(cfg.data).get("sha256")
    if weights and "weights_sha" not in memo:  # a run without a model (lead3) records none to compare
        memo["weights_sha"] = fingerprint(cfg.model.name, load_model(cfg.model.name))["weights_sha"]
    return memo


def _source_differences(run: Path, cfg: Config, memo: dict) -> list[tuple[str, Any, Any]]:
    """A finished run's recorded base weights and data content against what they are now."""
    res = read_json(RunDir(run).results) if RunDir(run).is_finished() else {}
    saved_data = ((res.get("data") or {}).get("fingerprint") or {}).get("sha256")
    base = res.get("base_model") or {}
    saved_weights = base.get("weights_sha") if base.get("fingerprint") else None  # old scheme: load_run refuses
    if not saved_data and not saved_weights:
        return []
    now = _current_sources(cfg, memo, weights=bool(saved_weights))
    diffs = []
    if saved_data and saved_data != now["data_sha"]:
        diffs.append(("data content (sha256)", saved_data[:12], str(now["data_sha"])[:12]))
    if saved_weights and saved_weights != now["weights_sha"]:
        diffs.append(("base model weights", saved_weights[:12], now["weights_sha"][:12]))
    return diffs


def _check_same(run: Path, cfg: Config, overwrite: bool, memo: dict) -> None:
    """Refuse (or with `overwrite`, clear) a run directory made with other settings, or whose
    recorded base weights or data content differ from today's."""
    if not RunDir(run).config.is_file():
        return
    diffs = config_differences(load_run_config(run), cfg) or _source_differences(run, cfg, memo)
    if not diffs:
        return
    if overwrite:
        print(f"{run}: settings changed ({', '.join(k for k, _, _ in diffs)}); --overwrite: starting afresh")
        shutil.rmtree(run)
        return
    shown = "; ".join(f"{k} was {a!r}, now {b!r}" for k, a, b in diffs[:4]) + (" ..." if len(diffs) > 4 else "")
    raise UserError(f"{run} was made with other settings ({shown}); pass --overwrite to retrain it "
                    "or use another --output-dir")


def _train(cfg: Config, overwrite: bool, memo: dict) -> tuple[Path, bool]:
    """Train cfg into cfg.output_dir unless it is finished (continuing a started run);
    (the run, whether it trained now)."""
    run = RunDir(cfg.output_dir)
    _check_same(run.path, cfg, overwrite, memo)
    if run.is_finished():
        print(f"{run}: finished earlier with the same settings, skipped")
        return run.path, False
    return Path(train(cfg, resume=run.config.is_file())), True


def _method_cfg(cfg: Config, method: str, output_dir: Path, lr: float | None, seed: int | None = None) -> Config:
    c = copy.deepcopy(cfg)
    set_method(c, method)  # its defaults and the method keys given explicitly that it has
    c.output_dir = str(output_dir)
    if lr is not None:
        c.train.lr = lr
    if seed is not None:
        c.train.seed = seed
    return c


def _evaluate(run: Path, plan: Plan, cfg: Config, retrained: bool) -> None:
    done = RunDir(run).eval_dir("test") / "metrics.json"
    if done.is_file() and not retrained:
        m = read_json(done)
        if (m.get("limit") == plan.eval_limit and m.get("decoding") == decoding_record(cfg)
                and m.get("data") == cfg.data.source and covers(cfg.eval, m.get("bertscore"))):
            print(f"{run}: evaluated earlier with the same settings, skipped")
            return
    evaluate_run(run, "test", limit=plan.eval_limit, overrides=vars(copy.deepcopy(cfg.eval)))


def _choose_decoding(run: Path, plan: Plan, cfg: Config, retrained: bool) -> tuple[Config, dict]:
    """(cfg with the candidate decoding preset that scores best on the run's first `plan.choose_rows`
    validation rows, the record of the choice). Never test rows: the test figures stay unbiased. The
    record (RUN/eval/decoding_choice.json) is reused while the run and the candidates are unchanged."""
    path = RunDir(run).decoding_choice
    old = read_json(path) if path.is_file() and not retrained else {}
    old = old.get("candidates", {}) if old.get("rows") == plan.choose_rows else {}
    configs, scores = {}, {}
    for name in plan.decodings:
        c = configs[name] = copy.deepcopy(cfg)
        apply_preset(c.eval, name)
        if (old.get(name) or {}).get("decoding") == decoding_summary(c.eval):
            scores[name] = old[name]
            continue
        print(f"{run}: decoding {name} on {plan.choose_rows} validation rows")
        m = evaluate_run(run, "validation", limit=plan.choose_rows, overrides=vars(copy.deepcopy(c.eval)))
        scores[name] = {"decoding": m["decoding"], "n": m["n"], HEADLINE: m[HEADLINE], "ci95": m["ci95"][HEADLINE],
                        "mean_prediction_tokens": m["mean_prediction_tokens"],
                        "mean_reference_tokens": m["mean_reference_tokens"]}
    chosen = max(plan.decodings, key=lambda n: scores[n][HEADLINE])  # a tie keeps the first listed
    record = {"split": "validation", "rows": plan.choose_rows, "metric": HEADLINE, "chosen": chosen,
              "candidates": scores}
    atomic_write_json(path, record)
    shown = ", ".join(f"{n} {100 * s[HEADLINE]:.2f}" for n, s in scores.items())
    print(f"{run}: decoding chosen on validation ({HEADLINE}, n={scores[chosen]['n']}): {chosen} ({shown})")
    return configs[chosen], record


# --- learning rates -------------------------------------------------------------


def _sweep_steps(cfg: Config) -> int | None:
    """Optimizer steps of a sweep run when the budget is in steps (a quarter), else None (one
    epoch, or under a seconds/FLOPs budget a fraction of it, with the main run's step caps); refuses
    a step budget whose sweep runs could not train MIN_SWEEP_STEPS after warmup."""
    if not cfg.train.max_steps or budget_of(cfg.train):
        return None
    steps = cfg.train.max_steps // 4
    if steps - math.ceil(cfg.train.warmup_ratio * steps) < MIN_SWEEP_STEPS:
        need = 4 * math.ceil((MIN_SWEEP_STEPS + 1) / (1 - cfg.train.warmup_ratio))
        raise UserError(f"--max-steps {cfg.train.max_steps} leaves each lr-sweep run {steps} steps, fewer than "
                        f"{MIN_SWEEP_STEPS} after warmup, so no rate would train; use --max-steps {need} or more, "
                        "or drop --sweep-lr")
    return steps


def _sweep_run(cfg: Config, method: str, out: Path, lr: float, overwrite: bool, memo: dict) -> tuple[float, float]:
    """One short run at `lr`: (best validation loss, its wall seconds)."""
    c = _method_cfg(cfg, method, out / "sweep" / method / f"lr{lr:g}", lr)
    c.train.select_by = "loss"  # the sweep compares validation losses: decoding for ROUGE would only cost
    steps, budget = _sweep_steps(cfg), budget_of(cfg.train)
    if budget:
        setattr(c.train, KINDS[budget.kind], budget.limit * SWEEP_BUDGET_FRACTION)
    elif steps:
        c.train.max_steps = steps
    else:
        c.train.epochs = 1
    run, _ = _train(c, overwrite, memo)
    res = read_json(RunDir(run).results)
    trained = res["steps"] - math.ceil(c.train.warmup_ratio * res["steps"])
    if trained < MIN_SWEEP_STEPS and budget:
        raise UserError(f"the lr sweep's runs get {SWEEP_BUDGET_FRACTION:g} of the budget, "
                        f"{budget.limit * SWEEP_BUDGET_FRACTION:g} {budget.kind} here, which took {res['steps']} "
                        f"optimizer steps, fewer than {MIN_SWEEP_STEPS} after warmup; raise the budget or drop --sweep-lr")
    if trained < MIN_SWEEP_STEPS:
        raise UserError(f"the lr sweep's runs take one epoch, {res['steps']} optimizer steps here, fewer than "
                        f"{MIN_SWEEP_STEPS} after warmup; use more training rows, a smaller --batch-size or "
                        "--grad-accum, or drop --sweep-lr")
    return res["best_val_loss"], res.get("wall_seconds") or res.get("train_seconds") or 0.0


def _best(losses: dict[float, float], grid: tuple[float, ...]) -> tuple[float, list[float]]:
    """(chosen rate, rates tied with it): the lowest loss; among exact ties the one nearest the
    grid's middle (reported, never silent)."""
    low = min(losses.values())
    tied = sorted(lr for lr, v in losses.items() if abs(v - low) <= 1e-9 * max(1.0, abs(low)))
    middle = grid[len(grid) // 2]
    return min(tied, key=lambda lr: abs(math.log(lr / middle))), tied


def _edge(lr: float, grid: list[float]) -> str | None:
    return "low" if lr == min(grid) else "high" if lr == max(grid) else None


def _sweep(cfg: Config, method: str, out: Path, grid: tuple[float, ...], overwrite: bool, memo: dict) -> dict:
    """Short runs over the grid, extended one step past an edge that wins; the record of it."""
    rates = sorted(grid)
    losses: dict[float, float] = {}
    seconds = 0.0
    for lr in rates:
        losses[lr], s = _sweep_run(cfg, method, out, lr, overwrite, memo)
        seconds += s
    best, tied = _best(losses, grid)
    edge = _edge(best, rates)
    if edge and len(rates) > 1:  # one more step in that direction, the grid's own ratio
        ratio = rates[1] / rates[0] if edge == "low" else rates[-1] / rates[-2]
        extra = float(f"{(best / ratio if edge == 'low' else best * ratio):.3g}")
        if 0 < extra < 10:
            losses[extra], s = _sweep_run(cfg, method, out, extra, overwrite, memo)
            seconds += s
            rates = sorted(losses)
            best, tied = _best(losses, grid)
            edge = _edge(best, rates)
    line = ", ".join(f"{lr:g}: {v:.4f}" for lr, v in sorted(losses.items()))
    print(f"lr sweep {method}: {line} -> {best:g}" + (f" (at the {edge} edge of the grid)" if edge else ""))
    if len(tied) > 1:
        log.warning("lr sweep %s: rates %s tie at validation loss %.6f; kept %g (nearest the grid's middle)",
                    method, ", ".join(f"{x:g}" for x in tied), losses[best], best)
    return {"losses": {f"{lr:g}": v for lr, v in sorted(losses.items())}, "best": best, "edge": edge,
            "tied": [f"{x:g}" for x in tied] if len(tied) > 1 else [], "seconds": seconds}


def _fixed_lr(plan: Plan, method: str) -> float | None:
    if isinstance(plan.lr, dict):
        return plan.lr.get(method)
    return plan.lr


# --- the study ------------------------------------------------------------------


def _check_plan(cfg: Config, plan: Plan) -> None:
    """Every refusal that needs no training, before anything runs."""
    if plan.sweep_lr and plan.lr is not None and not isinstance(plan.lr, dict):
        raise UserError("--lr fixes one rate for every method and --sweep-lr searches per method; pass one of them")
    if isinstance(plan.lr, dict) and (unknown := sorted(set(plan.lr) - set(plan.methods()))):
        raise UserError(f"--lr names {', '.join(unknown)}, not trained here (methods: {', '.join(plan.methods())})")
    if plan.sweep_lr:
        _sweep_steps(cfg)
    if wants_bertscore(cfg.eval):
        load_scorer(cfg.eval)  # a missing package or model fails now, not after the training
    _check_methods(cfg, plan)


def _check_methods(cfg: Config, plan: Plan) -> None:
    """Each method's own refusals (its keys, its rows against the model's positions), all before the
    first method trains: a soft prompt's tokens that do not fit must not wait for LoRA's hour."""
    check_sections(cfg, plan.methods())  # each method's keys as its copy will hold them
    model_config = load_model_config(cfg.model.name)
    for m in plan.methods():
        check_max_length(_method_cfg(cfg, m, Path(cfg.output_dir) / m, None), model_config)


def _method_lr(cfg: Config, plan: Plan, method: str, record: dict, memo: dict) -> float | None:
    """The method's rate: fixed by --lr, else swept (recorded) or the middle of its grid."""
    lr = _fixed_lr(plan, method)
    if not get_method(method).trains or lr is not None:
        return lr
    grid = plan.lr_grid[grid_key(_method_cfg(cfg, method, Path(cfg.output_dir) / method, None))]
    if not plan.sweep_lr:
        return grid[len(grid) // 2]
    record["sweep"][method] = _sweep(cfg, method, Path(cfg.output_dir), grid, plan.overwrite, memo)
    return record["sweep"][method]["best"]


def run_experiment(cfg: Config, plan: Plan | None = None) -> dict:
    """Train, evaluate and compare every method into cfg.output_dir (its only writer while
    it runs); returns the comparison."""
    plan = for_data(plan or Plan(), cfg)
    _check_plan(cfg, plan)
    out = Path(cfg.output_dir)
    seeds = [cfg.train.seed + i for i in range(plan.seeds)]
    budget = budget_of(cfg.train)
    record: dict = {"methods": list(plan.methods()), "seeds": seeds, "lr": {}, "sweep": {}, "runs": {},
                    "decoding_choice": {}, "budget": budget and {"kind": budget.kind, "limit": budget.limit,
                                          "sweep_fraction": SWEEP_BUDGET_FRACTION if plan.sweep_lr else None},
                    "demo": plan.demo}
    runs = []
    memo: dict = {}  # today's content fingerprints, computed once if a finished run needs them
    with DirLock(out, "experiment directory"):
        for method in plan.methods():
            lr = record["lr"][method] = _method_lr(cfg, plan, method, record, memo)
            record["runs"][method] = []
            for i, seed in enumerate(seeds if get_method(method).trains else seeds[:1]):
                c = _method_cfg(cfg, method, out / (method if i == 0 else f"{method}-seed{seed}"), lr, seed)
                print(f"== {method}" + (f" (lr {lr:g})" if lr is not None else "") + f", seed {seed} -> {c.output_dir}")
                run, trained = _train(c, plan.overwrite, memo)
                if plan.decodings and get_method(method).needs_model:  # an extractive baseline decodes nothing
                    c, record["decoding_choice"][str(run)] = _choose_decoding(run, plan, c, trained)
                _evaluate(run, plan, c, retrained=trained)
                runs.append(run)
                record["runs"][method].append(str(run))
            atomic_write_json(out / "experiment.json", record)
        return compare_runs(runs, out, experiment=record)

