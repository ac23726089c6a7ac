"""Load the base model and tokenizer (hub name, local directory, a FILE.gguf or a named real model:
`sumtune.gguf_files` turns those two into a converted directory in sumtune's cache) and pick the
compute precision. What identifies a loaded base model is `fingerprints.fingerprint`."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from sumtune.errors import UserError
from sumtune.gguf_files import resolve
from sumtune.offline import use_cache_only
from sumtune.quantize import quantization_kwargs


def _is_offline_error(e: BaseException) -> bool:
    text = f"{type(e).__name__} {e}".lower()
    return any(
        s in text
        for s in ("offline", "connection", "resolve", "max retries", "network", "timed out", "couldn't connect",
                  "cannot find the requested files", "localentrynotfound", "we couldn't connect")
    )


def _source(name: str) -> str:
    """What to load for `name`: a GGUF file (or a named real model) as its converted directory
    (`gguf_files.resolve`, converting once), anything else as it is; then checked."""
    where = resolve(name)
    _check_name(where)
    return where


def _check_name(name: str) -> None:
    looks_local = name.startswith((".", "/", "~")) or os.sep in name.strip("/").split("/", 1)[-1] or Path(name).exists()
    if looks_local and not Path(name).expanduser().is_dir():
        raise UserError(f"model path does not exist: {name}; pass a directory with config.json or a hub name like EleutherAI/gpt-neo-125m")
    if Path(name).is_dir() and not (Path(name) / "config.json").is_file():
        raise UserError(f"{name} is not a model directory (no config.json); pass a Hugging Face model directory")


def _hub_kwargs(name: str) -> dict:
    """For a Hub name when the Hub is unreachable (or offline mode is on): read the local
    cache only, so an uncached name fails at once instead of after the client's retries."""
    return {"local_files_only": True} if not Path(name).is_dir() and use_cache_only() else {}


def load_tokenizer(name: str):
    """The tokenizer, with a pad token (EOS) set when it has none."""
    from transformers import AutoTokenizer  # late: transformers (1 s to import) only when a tokenizer loads

    where = _source(name)
    try:
        tok = AutoTokenizer.from_pretrained(where, **_hub_kwargs(where))
    except Exception as e:  # noqa: BLE001 - turned into one clear line
        raise _load_error(name, "tokenizer", e) from None
    if tok.eos_token is None:
        raise UserError(f"tokenizer of {name} has no EOS token; sumtune needs one to end summaries")
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(name: str, dtype: torch.dtype = torch.float32, quantize: str = "none"):
    """The base causal LM in `dtype` (fp32 by default: master weights for training); `quantize`
    4bit: its linear weights in NF4 on the GPU (QLoRA, `sumtune.quantize`; refused without CUDA)."""
    # late: transformers (1 s to import) only when a model loads
    from transformers import AutoModelForCausalLM

    where = _source(name)
    quantized = quantization_kwargs(quantize)  # refuses before loading anything
    try:
        # safetensors only: a pickled .bin is never loaded (it can run code)
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, use_safetensors=True, **_hub_kwargs(where),
                                                     **quantized)
    except Exception as e:  # noqa: BLE001
        raise _load_error(name, "model", e) from None
    return model


def load_model_config(name: str):
    """The base model's config alone (positions, type): enough to refuse a run before any weights load."""
    from transformers import AutoConfig  # late: transformers (1 s to import) only when a config loads

    where = _source(name)
    try:
        return AutoConfig.from_pretrained(where, **_hub_kwargs(where))
    except Exception as e:  # noqa: BLE001
        raise _load_error(name, "model config", e) from None


def _load_error(name: str, what: str, e: BaseException) -> UserError:
    if _is_offline_error(e) and not Path(name).is_dir():
        return UserError(
            f"cannot download {what} '{name}' (no internet or not on the Hub); "
            f"run `sumtune download model {name}` where you have internet, or pass a local directory with --model DIR"
        )
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if what == "model" and "model.safetensors" in first:
        first += " (sumtune never loads pickled .bin weights; convert them with safetensors.torch.save_file)"
    return UserError(f"cannot load {what} from '{name}': {first}")


def count_params(model) -> tuple[int, int]:
    """(trainable, total) parameters, counting shared tensors once."""
    seen: set[int] = set()
    trainable = total = 0
    for p in model.parameters():
        if id(p) in seen:
            continue
        seen.add(id(p))
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def resolve_precision(precision: str, device: torch.device) -> str:
    """auto -> bf16 where the hardware runs it (CUDA with bf16, or a CPU with AMX/AVX512-BF16); else fp16 on
    CUDA, fp32 on a CPU."""
    if precision != "auto":
        if precision == "fp16" and device.type != "cuda":
            raise UserError("precision fp16 needs a CUDA GPU (it uses a grad scaler); use bf16 or fp32 on CPU")
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if _cpu_has_fast_bf16() else "fp32"


def _cpu_has_fast_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def autocast_dtype(precision: str) -> torch.dtype | None:
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)


def max_positions(model_config) -> int | None:
    """The longest sequence the model's position embeddings allow (GPT-Neo 2048, GPT-2 1024), or
    None where the config sets no limit."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx"):
        value = getattr(model_config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None
