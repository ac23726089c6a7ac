"""`sumtune export RUN OUT`: a plain Hugging Face model directory from a run (LoRA, DoRA and
IA³ merged into the weights; last_layers/full weights applied; the tokenizer beside it),
loadable with `AutoModelForCausalLM.from_pretrained(OUT)` and `pipeline("text-generation")`."""

from __future__ import annotations

from pathlib import Path

from sumtune.config import load_run_config
from sumtune.errors import UserError
from sumtune.io import atomic_dir, atomic_write_json
from sumtune.methods import get_method
from sumtune.runs import RunDir, check_finished_run, load_run

MARKER = "sumtune_export.json"  # lets a later export replace this directory


def export_run(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Write the run's model as a plain HF model directory at `out_dir`, atomically."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise UserError(f"{out} already exists and is not a sumtune export; choose a new OUT_DIR or remove it")
    check_finished_run(run_dir)  # an interrupted run's adapter/ holds its best weights so far, not its result
    adapter = RunDir(run_dir).adapter
    method = get_method(load_run_config(run_dir).method.name)
    if method.not_exportable:
        raise UserError(
            f"a {method.name} run cannot be exported as a plain model: {method.not_exportable}; "
            f"use the adapter instead: PeftModel.from_pretrained(base_model, '{adapter}')"
        )
    cfg, method, model, tokenizer = load_run(run_dir)
    plain = method.merged(model)
    with atomic_dir(out) as tmp:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / MARKER, {"run": str(Path(run_dir).resolve()), "method": method.name,
                                         "base_model": cfg.model.name})
    print(f"wrote {out}: a plain {model.config.model_type} model with the tokenizer "
          f"(AutoModelForCausalLM.from_pretrained('{out}'))")
    return out
