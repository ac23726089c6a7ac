"""Memory savers change memory and speed, not results: gradient checkpointing (the same loss
and gradients on and off, dropout included), token-budget batching (the same rows per process
and step as row batching, hence the same losses and weights), and the config checks around
FSDP's CPU offload."""

from __future__ import annotations

import json

import pytest
import torch

from sumtune.cli import main
from sumtune.config import build_config
from sumtune.data import Collator
from sumtune.data.batching import micro_batches, pack_by_tokens, token_batches
from sumtune.errors import UserError
from sumtune.io import load_tensors
from sumtune.modeling import load_model, load_tokenizer
from sumtune.training.state import method_model


def _loss_and_grads(model_dir, method: str, checkpointing: bool):
    cfg = build_config(flags={"model.name": str(model_dir), "method.name": method},
                       sets=["method.lora.r=4", "method.lora.dropout=0.1", "train.precision=fp32",
                             f"train.gradient_checkpointing={str(checkpointing).lower()}"])
    tok = load_tokenizer(cfg.model.name)
    torch.manual_seed(0)
    _m, model, _paths, loss_fn = method_model(cfg, tok, load_model(cfg.model.name), "fp32")
    model.train()
    ids = torch.randint(5, tok.vocab_size, (3, 40), generator=torch.Generator().manual_seed(1))
    labels = ids.clone()
    labels[:, :20] = -100
    torch.manual_seed(2)  # the same dropout masks on and off (checkpointing restores the RNG to recompute)
    loss, n = loss_fn(model, {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    loss.backward()
    return loss.detach(), {k: p.grad for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_changes_neither_loss_nor_gradients(method, tiny_neo):
    loss0, g0 = _loss_and_grads(tiny_neo, method, False)
    loss1, g1 = _loss_and_grads(tiny_neo, method, True)
    torch.testing.assert_close(loss1, loss0, rtol=1e-6, atol=0)
    assert g0.keys() == g1.keys() and g0
    for k in g0:
        torch.testing.assert_close(g1[k], g0[k], rtol=1e-5, atol=1e-7)


def test_gradient_checkpointing_is_on_the_model(tiny_neo):
    cfg = build_config(flags={"model.name": str(tiny_neo), "method.name": "lora"},
                       sets=["train.gradient_checkpointing=true"])
    _m, model, _p, _l = method_model(cfg, load_tokenizer(cfg.model.name), load_model(cfg.model.name), "fp32")
    assert model.get_base_model().is_gradient_checkpointing


class _Rows:
    """A tokenised split's minimal interface: rows by index lists."""

    def __init__(self, lengths):
        self.lengths = lengths

    def __getitem__(self, idx):
        return {"input_ids": [[7] * self.lengths[i] for i in idx], "labels": [[7] * self.lengths[i] for i in idx]}


def test_token_batches_keep_each_process_rows_and_equal_pass_counts():
    lengths = [30, 10, 50, 20, 40, 10, 60, 5, 25, 35, 15]
    ds, collate = _Rows(lengths), Collator(0)
    chunk = [2, 0, 5, 7, 9, 1, 3, 10, 4, 6, 8]  # 11 of a step of 2 x 2 x 3 = 12: rank 1 ends short
    for rank in range(2):
        rows = micro_batches(ds, chunk, 2, 2, rank, collate)
        packed = token_batches(ds, chunk, 2, 2, rank, collate, 80, lengths)
        n_rows = sum(int(b["attention_mask"].sum()) for b, c in rows if c)
        assert sum(int(b["attention_mask"].sum()) for b, c in packed if c) == n_rows  # the same rows
        assert all(b["input_ids"].numel() <= 80 or b["input_ids"].shape[0] == 1 for b, c in packed if c)
    counts = [len(token_batches(ds, chunk, 2, 2, r, collate, 80, lengths)) for r in range(2)]
    assert counts[0] == counts[1]  # the same number of passes on every process (fillers)
    assert pack_by_tokens([6, 2, 4], lengths, 99) == [[6], [2], [4]]  # 2 x 50 > 99
    assert pack_by_tokens([4, 0, 3], lengths, 120) == [[4, 0, 3]]


def _train(model, data, out, *extra):
    return main(["train", "--method", "lora", "--model", str(model), "--data", str(data), "--output-dir", str(out),
                 "--epochs", "1", "--max-train-samples", "16", "--batch-size", "4", "--grad-accum", "2",
                 "--max-length", "128", "--lr", "1e-2", "--precision", "fp32", "--set", "data.max_summary_length=32",
                 "--set", "method.r=4", "--set", "method.dropout=0", *extra])


def test_token_budget_trains_as_row_batching(tiny_neo, kaggle_dir, tmp_path):
    assert _train(tiny_neo, kaggle_dir, tmp_path / "rows") == 0
    assert _train(tiny_neo, kaggle_dir, tmp_path / "tokens", "--set", "train.max_tokens_per_batch=200") == 0
    ev = [[json.loads(x) for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in ("rows", "tokens")]
    assert len(ev[0]) == len(ev[1]) == 3
    for a, b in zip(*ev):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
    w = [load_tensors(tmp_path / r / "adapter" / "adapter_model.safetensors") for r in ("rows", "tokens")]
    for k in w[0]:  # float32 sums over other pass shapes only
        torch.testing.assert_close(w[1][k], w[0][k], rtol=0, atol=1e-6)


def test_cpu_offload_needs_fsdp(tiny_neo, kaggle_dir, tmp_path, capsys):
    assert _train(tiny_neo, kaggle_dir, tmp_path / "r", "--set", "train.cpu_offload=true") != 0
    assert "train.cpu_offload offloads FSDP shards" in capsys.readouterr().err


def test_fsdp_refuses_methods_it_does_not_shard():
    from sumtune.training.sharding import fsdp_plan

    cfg = build_config(flags={"method.name": "prompt_tuning"}, sets=["train.fsdp=true"])

    class Acc:
        distributed_type, num_processes, state = "MULTI_CPU", 2, None

    with pytest.raises(UserError, match="launch it with DDP"):
        fsdp_plan(cfg, Acc())


@pytest.mark.parametrize("arch", ["llama", "gpt_neo"])
def test_backward_row_by_row_equals_reference_step(tiny_family, tmp_path, arch):
    """On a CPU the label-positions loss runs each row alone, and the step runs each row's backward
    before the next row's forward (one row's activations held at a time): two AdamW-free optimizer
    steps give the reference loss's (full logits, one backward per micro-batch) losses and weights."""
    from sumtune.fastpath import select_loss, speed_up
    from sumtune.training import state, step

    model_dir = tiny_family(arch)
    cfg = build_config(flags={"model.name": str(model_dir), "method.name": "lora", "train.precision": "fp32"},
                       sets=["method.lora.r=4", "method.lora.dropout=0.0"])
    accelerator, _ = state.accelerator_for(cfg, tmp_path)
    g = torch.Generator().manual_seed(0)
    batches = []
    for lengths in ((40, 29, 33), (25, 38)):  # right-padded rows, labels after 18 prompt tokens
        ids = torch.randint(3, 200, (len(lengths), max(lengths)), generator=g)
        mask = (torch.arange(ids.shape[1])[None] < torch.tensor(lengths)[:, None]).long()
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, :18] = -100
        batches.append(({"input_ids": ids, "attention_mask": mask, "labels": labels}, True))
    results = {}
    for fast in (True, False):
        tok = load_tokenizer(str(model_dir))
        torch.manual_seed(0)
        _m, model, _p, _l = method_model(cfg, tok, load_model(str(model_dir)), "fp32")
        for n, p in model.named_parameters():  # PEFT starts B at zero; make the adapters matter
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.05)
        speed_up(model, fast)
        loss_fn = select_loss(model, step.token_loss_sum, fast)
        assert step.rows_alone(loss_fn, model, torch.device("cpu")) is fast
        backwards = []
        real_backward = accelerator.backward
        accelerator.backward = lambda loss, seen=backwards, real=real_backward: (seen.append(1), real(loss))
        trained = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.SGD(trained, lr=0.5)  # the update is the gradient (Adam would magnify rounding)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
        losses = [step.optimizer_step(accelerator, model.train(), opt, sched, loss_fn, batches, trained, 1.0).loss
                  for _ in range(2)]
        accelerator.backward = real_backward
        assert len(backwards) == 2 * (5 if fast else 2)  # a backward per row, else per micro-batch
        results[fast] = losses, [p.detach().clone() for p in trained]
    (losses, weights), (ref_losses, ref_weights) = results[True], results[False]
    assert losses == pytest.approx(ref_losses, rel=1e-5)
    for a, b in zip(weights, ref_weights):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
