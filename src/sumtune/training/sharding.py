"""FSDP2: the model sharded over processes (`torch.distributed.fsdp.fully_shard`, per
transformer block and then the root, as Accelerate's FSDP2 auto-wrap does), for `full` and
`lora`.

Why sumtune calls `fully_shard` itself rather than letting `accelerator.prepare` do it:
Accelerate (1.15) switches to its FSDP type only on accelerators (its state.py sets FSDP in
the multi-GPU branch), so an `accelerate launch --use_fsdp` on CPU runs as MULTI_CPU. One
sharding function for every device keeps the path the CPU tests check the one a GPU runs:
Accelerate still launches the processes, owns the process group, autocast, the optimizer
wrapper and gradient clipping (DTensor-aware), and its FSDP request (`--use_fsdp`,
`--fsdp_version`, `--fsdp_offload_params`) is honoured here. On a GPU launch with
`--use_fsdp` Accelerate's type is FSDP and its `prepare` leaves an already sharded model as it is.

What FSDP2 changes elsewhere, each handled where it happens:
- frozen and trainable parameters share a shard group (PEFT's LoRA beside frozen
  weights: FSDP2 keeps per-parameter `requires_grad`, what FSDP1 needed `use_orig_params` for);
- gradient accumulation: no reduce-scatter until the last micro-batch (`gradient_sync`);
  FSDP2 averages gradients over processes as DDP does, so the token normalisation is unchanged;
- every forward is collective: processes run the same number of passes (fillers in
  `data.batching.micro_batches` and `validation.summed_loss`);
- checkpoints hold each process's shards through torch.distributed.checkpoint, and load
  at any number of processes (`training.reshard`, `resume.save_state`); the best weights
  are gathered into the usual RUN/adapter format (`save_gathered`);
- fast paths that read weights outside a module's own forward (the label-position loss,
  cast frozen weights, the fused AdamW over DTensors) are off: only `FSDP_FAST_PATHS` apply.
"""

from __future__ import annotations

import contextlib
import os
import socket
from pathlib import Path

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh

from sumtune.config import METHODS
from sumtune.errors import UserError
from sumtune.io import atomic_dir
from sumtune.methods import get_method
from sumtune.methods.base import write_meta

FSDP_FAST_PATHS = frozenset({"sdpa_attention", "blocked_local_attention", "fused_gelu", "fast_lora"})


def launched_with_fsdp() -> bool:
    """`accelerate launch --use_fsdp` (or an Accelerate config with FSDP) sets ACCELERATE_USE_FSDP."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_plan(cfg, accelerator) -> dict:
    """What runs: {"fsdp": shard or not, "version": 2 or None, "offload": bool}; one-line
    errors for what cannot run (DeepSpeed, FSDP1, other methods, offload without FSDP)."""
    wanted = cfg.train.fsdp or launched_with_fsdp() or str(accelerator.distributed_type) == "FSDP"
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    version = getattr(plugin, "fsdp_version", None) or int(os.environ.get("FSDP_VERSION", "2"))
    offload = cfg.train.cpu_offload or os.environ.get("FSDP_OFFLOAD_PARAMS", "false").lower() == "true"
    if not wanted:
        if cfg.train.cpu_offload:
            raise UserError("train.cpu_offload offloads FSDP shards; add --set train.fsdp=true "
                            "(or launch with accelerate launch --use_fsdp --fsdp_version 2)")
        return {"fsdp": False, "version": None, "offload": False}
    if version != 2:
        raise UserError(f"FSDP version {version} is not supported; sumtune shards with FSDP2: "
                        "accelerate launch --use_fsdp --fsdp_version 2")
    if not get_method(cfg.method.name).shards:
        shardable = [m for m in METHODS if get_method(m).shards]
        raise UserError(f"FSDP shards the methods {' and '.join(shardable)}; {cfg.method.name} trains too few "
                        "parameters to shard: launch it with DDP (accelerate launch --multi_gpu, no --use_fsdp)")
    if offload and accelerator.device.type == "cpu":
        raise UserError("train.cpu_offload moves FSDP shards from an accelerator into CPU memory; this run is on "
                        "the CPU already: drop it (FSDP_OFFLOAD_PARAMS / --fsdp_offload_params too)")
    if accelerator.num_processes == 1 and not offload:
        accelerator.print("FSDP asked for with one process: nothing to shard, training unsharded")
        return {"fsdp": False, "version": None, "offload": False}
    one_process_group(accelerator)  # one process with offload: a mesh of one
    return {"fsdp": True, "version": 2, "offload": offload}


def one_process_group(accelerator) -> None:
    """A process group of one where none was launched (FSDP with CPU offload on one GPU, run
    as plain `sumtune train`): fully_shard needs a mesh."""
    if dist.is_initialized():
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("nccl" if accelerator.device.type == "cuda" else "gloo",
                            init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)


def shard(model: torch.nn.Module, accelerator, offload: bool = False) -> torch.nn.Module:
    """`fully_shard` each transformer block (the classes in the model's `_no_split_modules`),
    then the root, over all processes; parameters become DTensor shards (dim 0)."""
    # late: FSDP2 (torch 2.6+) only when sharding
    from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

    mesh = init_device_mesh(accelerator.device.type, (accelerator.num_processes,))
    kwargs = {"mesh": mesh, **({"offload_policy": CPUOffloadPolicy()} if offload else {})}
    if not offload:
        model.to(accelerator.device)
    blocks = set()
    for m in model.modules():
        blocks |= set(getattr(m, "_no_split_modules", None) or ())
    for m in model.modules():
        if type(m).__name__ in blocks:
            fully_shard(m, **kwargs)
    fully_shard(model, **kwargs)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule  # late: FSDP2 (torch 2.6+) only when sharding

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(accelerator, model, sync: bool):
    """No gradient communication unless `sync` (the last micro-batch of a step): FSDP2's
    `set_requires_gradient_sync`, DDP's `no_sync`."""
    if not is_sharded(model):
        with contextlib.nullcontext() if sync else accelerator.no_sync(model):
            yield
        return
    model.set_requires_gradient_sync(sync)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def as_plain(t) -> torch.Tensor:
    """A replicated DTensor (e.g. a gradient norm) as a plain tensor."""
    from torch.distributed.tensor import DTensor  # late: DTensor (torch 2.5+) only when sharding

    return t.full_tensor() if isinstance(t, DTensor) else t


def save_gathered(method, model: torch.nn.Module, directory: Path, meta: dict, main: bool) -> None:
    """The trainable weights gathered from every process (a collective: all processes call
    it), written by the main process in the method's own format: PEFT's adapter for lora, the
    full weights file for full (tied tensors once, as `methods.base.save_params`)."""
    state = {n: as_plain(p.detach()).cpu() for n, p in model.named_parameters() if p.requires_grad}
    if not main:
        return
    with atomic_dir(directory) as tmp:
        method.write_state(model, tmp, state)
        write_meta(tmp, meta)


def distributed_record(accelerator, plan: dict) -> dict:
    """results.json's "distributed": what Accelerate ran and whether the model was sharded."""
    return {"type": str(accelerator.distributed_type).split(".")[-1], "processes": accelerator.num_processes,
            "fsdp_version": plan["version"] if plan["fsdp"] else None, "cpu_offload": plan["offload"],
            "launched_with_fsdp": launched_with_fsdp()}
