"""Shared helpers for the method, run and export tests: a padded batch, a few
optimizer steps, and a run directory built the way the trainer builds one."""

from __future__ import annotations

from pathlib import Path

import torch

from sumtune.cli import main
from sumtune.config import build_config, save_config
from sumtune.io import atomic_write_json
from sumtune.methods import get_method
from sumtune.modeling import load_model, load_tokenizer
from sumtune.runs import run_meta


def options(method: str, **keys):
    """The config dataclass of `method` with `keys` set (what `Method.options` reads from a run's config)."""
    return get_method(method).config_class(**keys)


def padded_batch(tokenizer, texts=("Boston (CNN) -- the mayor announced a plan.", "Denver officials",
                                   "A short one about a storm warning for residents")) -> dict[str, torch.Tensor]:
    """Right-padded batch (like data.Collator) with labels -100 on padding and on the first two tokens."""
    ids = [tokenizer(t)["input_ids"] for t in texts]
    width = max(map(len, ids))
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([x + [pad] * (width - len(x)) for x in ids])
    mask = torch.tensor([[1] * len(x) + [0] * (width - len(x)) for x in ids])
    labels = input_ids.masked_fill(mask == 0, -100)
    labels[:, :2] = -100
    assert (mask == 0).any(), "the batch must contain padding"
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def train_steps(model: torch.nn.Module, batch: dict, steps: int = 3, lr: float = 1e-2) -> None:
    """A few AdamW steps (with weight decay) on the trainable parameters."""
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.1)
    for _ in range(steps):
        opt.zero_grad()
        model(**batch).loss.backward()
        opt.step()
    model.eval()


def make_run(run: Path, model_dir: Path, method: str, sets: tuple[str, ...] = (), steps: int = 2):
    """A run directory (config.yaml + adapter/) with a few training steps; returns (run, cfg, model, tokenizer)."""
    cfg = build_config(flags={"model.name": str(model_dir), "method.name": method, "output_dir": str(run)},
                       sets=list(sets))
    save_config(cfg, run / "config.yaml")
    m = get_method(method)
    tokenizer = load_tokenizer(cfg.model.name)
    base = load_model(cfg.model.name)
    meta = run_meta(cfg, base)
    model = m.prepare(base, tokenizer, m.options(cfg.method))
    if m.trains:
        train_steps(model, padded_batch(tokenizer), steps=steps)
    model.eval()
    m.save(model, run / "adapter", meta)
    atomic_write_json(run / "results.json", {"method": method, "finished": True})  # as the trainer ends
    return run, cfg, model, tokenizer


def main_one_thread(argv: list[str]) -> None:
    """`sumtune ARGV` in this process with one torch thread (as each launched process runs), exit 0."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        assert main(argv) == 0
    finally:
        torch.set_num_threads(threads)
