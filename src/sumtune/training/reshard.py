"""FSDP checkpoints that resume with another number of processes, through
`torch.distributed.checkpoint` (DCP) with its safetensors storage.

Why this storage: DCP reshards (each process of the resumed run reads only the slices of the
saved pieces that its own shards overlap, whatever the number of processes that wrote them),
and `HuggingFaceStorageWriter(save_distributed=True)` keeps the layout in JSON: every piece's
offset in its global tensor sits in the safetensors header ("DCP_SHARDING_INFO"), read back
by `HuggingFaceStorageReader`. DCP's default FileSystemWriter pickles a `.metadata` file,
which sumtune never writes nor reads.

Layout: step-N/sharded/shard-0000R-model-00001-of-00001.safetensors, one file per process,
holding its pieces of the trainable weights (by parameter name) and of the optimizer state
("state.I.KEY", I the parameter's index in the optimizer's groups, as `checkpoint.
optimizer_to_files` names them; a replicated tensor such as AdamW's `step` once). An
unsharded checkpoint's trainable.safetensors and optimizer.safetensors use the same names
as whole tensors (no offsets), so the same reader loads either into whole tensors or shards:
FSDP resumes an FSDP run of another size or an unsharded run, and an unsharded run resumes
an FSDP one. Loading is a copy of the saved values, so at an equal number of processes a
resume stays bit-identical.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import torch

from sumtune.errors import UserError
from sumtune.io import writing

SHARDED_DIR = "sharded"
STORAGE = "torch.distributed.checkpoint+safetensors"  # shards.json's "storage"


def _raised(e: BaseException) -> BaseException:
    """The first process's own error inside DCP's CheckpointException (a BaseException)."""
    return next(iter(e.failures.values()))[0]


def save_sharded(tensors: dict[str, torch.Tensor], directory: Path) -> None:
    """Every process writes its pieces of `tensors` (DTensor shards, replicated tensors once)
    into `directory`; a collective."""
    # late: torch.distributed.checkpoint only when FSDP state is resharded
    from torch.distributed.checkpoint import HuggingFaceStorageWriter, save
    from torch.distributed.checkpoint.api import CheckpointException

    with writing(directory):
        try:
            save(tensors, storage_writer=HuggingFaceStorageWriter(str(directory), save_distributed=True))
        except CheckpointException as e:
            raise _raised(e) from None


def load_resharded(source: Path, params: dict[str, torch.Tensor], optimizer) -> dict[str, torch.Tensor]:
    """Load the weights saved in `source` (shards of any number of processes, or whole
    tensors) into `params` (this process's trainable parameters, whole or DTensor shards) in
    place; returns the optimizer's tensors ("state.I.KEY"), each shaped and placed as its
    parameter (a scalar such as `step` as saved), for `checkpoint.optimizer_from_files`."""
    # late: torch.distributed.checkpoint only when FSDP state is resharded
    from torch.distributed.checkpoint import HuggingFaceStorageReader, load
    from torch.distributed.checkpoint.api import CheckpointException

    saved = HuggingFaceStorageReader(str(source)).read_metadata().state_dict_metadata
    names = {k for k in saved if not k.startswith("state.")}
    if names != set(params) or any(tuple(saved[n].size) != tuple(params[n].shape) for n in names):
        raise UserError(f"{source}: its weights do not match the model being trained; start a new --output-dir")
    order = [p for group in optimizer.param_groups for p in group["params"]]
    if any(int(k.split(".")[1]) >= len(order) for k in saved.keys() - names):
        raise UserError(f"{source}: its optimizer state does not match the model being trained; "
                        "start a new --output-dir")
    targets: dict[str, torch.Tensor] = {n: params[n].detach() for n in names}
    for key in saved.keys() - names:
        p, md = order[int(key.split(".")[1])], saved[key]
        targets[key] = (torch.zeros_like(p.detach()) if tuple(md.size) == tuple(p.shape)
                        else torch.zeros(md.size, dtype=md.properties.dtype))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")  # one process: no collectives
        try:
            load(targets, storage_reader=HuggingFaceStorageReader(str(source)))
        except CheckpointException as e:
            raise UserError(f"{source}: cannot be read ({str(_raised(e)).splitlines()[0]})") from None
    return {k: v for k, v in targets.items() if k not in names}
