"""`sumtune export RUN --output-dir OUT [--adapter] [--push-to-hub REPO [--private]]`.

Without --adapter: a plain Hugging Face model directory (LoRA, DoRA and IA³ merged into the
weights; last_layers/full weights applied; the tokenizer beside it), loadable with
`AutoModelForCausalLM.from_pretrained(OUT)` and `pipeline("text-generation")`. With --adapter:
the run's PEFT adapter (adapter_config.json + adapter_model.safetensors, the tokenizer beside
it) for `PeftModel.from_pretrained(base, OUT)`, the one way to ship a soft prompt or prefix.
Either way OUT/README.md is the model card (`sumtune.card`); --push-to-hub uploads OUT
afterwards (`sumtune.hub`), its refusals (offline, no token, Hub unreachable) coming before
anything is loaded or written."""

from __future__ import annotations

import shutil
from pathlib import Path

from sumtune.card import base_model_id, card_text
from sumtune.config import load_run_config
from sumtune.errors import UserError
from sumtune.hub import check_push, push
from sumtune.io import atomic_dir, atomic_write_json, atomic_write_text, default_modes, read_json
from sumtune.methods import get_method
from sumtune.methods.peft_io import PEFT_WEIGHTS
from sumtune.modeling import load_tokenizer
from sumtune.runs import RunDir, check_finished_run, load_run

MARKER = "sumtune_export.json"  # lets a later export replace this directory (never uploaded)
PEFT_CONFIG = "adapter_config.json"


def export_run(run_dir: str | Path, out_dir: str | Path, *, adapter: bool = False, push_to_hub: str | None = None,
               private: bool = False, base_model: str | None = None) -> Path:
    """Write the run's model (or with `adapter`, its PEFT adapter) and its card at `out_dir`,
    atomically; with `push_to_hub`, then upload it to that Hub repo. `base_model`: the base
    model's Hub id for the card, when the run trained on a local directory that does not record it."""
    out = Path(out_dir)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MARKER).is_file())):
        raise UserError(f"{out} already exists and is not a sumtune export; choose a new output directory or remove it")
    run = check_finished_run(run_dir)  # an interrupted run's adapter/ holds its best weights so far, not its result
    cfg = load_run_config(run)
    method = get_method(cfg.method.name)
    peft_dir = RunDir(run).adapter
    if not method.needs_model:
        raise UserError(f"a {method.name} run cannot be exported: {method.not_exportable}; "
                        f"`sumtune summarize {run} FILE` makes its summary")
    if adapter and not (peft_dir / PEFT_CONFIG).is_file():
        raise UserError(f"a {method.name} run has no PEFT adapter ({peft_dir / PEFT_CONFIG} is absent: the method "
                        "trains the model's own weights or none); export it without --adapter")
    if not adapter and method.not_exportable:
        raise UserError(
            f"a {method.name} run cannot be exported as a plain model: {method.not_exportable}; "
            f"export its adapter with --adapter, or use it as it is: PeftModel.from_pretrained(base_model, '{peft_dir}')"
        )
    base_id = base_model_id(cfg.model.name, base_model)
    token = None
    if push_to_hub:
        token = check_push(push_to_hub, adapter, base_id)
    name = (push_to_hub or out.name).rsplit("/", 1)[-1]
    card = card_text(run, cfg, method, adapter=adapter, name=name, where=push_to_hub or str(out),
                     base_model=base_model)
    record = {"run": str(run.resolve()), "method": method.name, "base_model": cfg.model.name,
              "adapter": adapter}
    if adapter:
        with atomic_dir(out) as tmp:
            _write_adapter(peft_dir, tmp, base_id)
            _write_tokenizer(cfg.model.name, tmp)
            atomic_write_text(tmp / "README.md", card)
            atomic_write_json(tmp / MARKER, record)
            default_modes(tmp)  # to share: 0644 files under umask 022, as the user's umask allows
        print(f"wrote {out}: the {method.name} PEFT adapter with the tokenizer and a model card "
              f"(PeftModel.from_pretrained(base_model, '{out}'))")
    else:
        _, method, model, tokenizer = load_run(run)
        plain = method.merged(model)
        with atomic_dir(out) as tmp:
            plain.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            atomic_write_text(tmp / "README.md", card)
            atomic_write_json(tmp / MARKER, record)
            default_modes(tmp)
        print(f"wrote {out}: a plain {model.config.model_type} model with the tokenizer and a model card "
              f"(AutoModelForCausalLM.from_pretrained('{out}'))")
    if push_to_hub:
        push(out, push_to_hub, private, token, ignore=[MARKER])
    return out


def _write_adapter(src: Path, dst: Path, base_id: str | None) -> None:
    """The adapter's config and weights (not sumtune.json, nor PEFT's own template README); the
    config names the base model by its Hub id when it is known, so AutoPeftModel finds it."""
    config = read_json(src / PEFT_CONFIG)
    if base_id:
        for key in ("base_model_name_or_path", "tokenizer_name_or_path"):
            if config.get(key):
                config[key] = base_id
    atomic_write_json(dst / PEFT_CONFIG, config)
    shutil.copyfile(src / PEFT_WEIGHTS, dst / PEFT_WEIGHTS)


def _write_tokenizer(model_name: str, dst: Path) -> None:
    load_tokenizer(model_name).save_pretrained(dst)
