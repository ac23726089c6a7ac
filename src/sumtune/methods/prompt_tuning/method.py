"""Soft-prompt tuning (Lester et al., 2021): `n_tokens` trainable embedding vectors
prepended to the input embeddings of a frozen causal LM.

Conventions mirror PEFT's `PromptTuningConfig(task_type="CAUSAL_LM")` exactly, so a
saved prompt loads with `PeftModel.from_pretrained(base, RUN/adapter)` and gives the
same logits:
- the virtual tokens go first, before every sequence (padding included);
- the attention mask gets `n_tokens` ones in front, the labels `n_tokens` x -100;
- no position ids are passed: the base model numbers the `n_tokens + T` positions
  0..n_tokens+T-1. With right padding (what `data.Collator` produces) every real
  token therefore sits at position `n_tokens + i`, exactly as without padding;
- initialisation: the base model's input embeddings of `tokenizer(init_text)` ids,
  repeated/cut to `n_tokens` (PEFT's TEXT init), or of `n_tokens` random vocabulary
  ids (`init_random`, PEFT's SAMPLE_VOCAB), kept in fp32.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from sumtune.errors import UserError
from sumtune.io import atomic_dir, atomic_save_tensors, load_tensors, read_json
from sumtune.methods.base import DecodingParts, Method, freeze, weights_path, write_meta
from sumtune.methods.prompt_tuning.config import PromptTuningConfig

PEFT_KEY = "prompt_embeddings"  # the tensor name PEFT writes for prompt tuning


class SoftPromptModel(nn.Module):
    """A frozen causal LM (`.base`) behind a trainable soft prompt (`.soft_prompt`, [n_tokens, hidden])."""

    def __init__(self, base: nn.Module, soft_prompt: torch.Tensor):
        super().__init__()
        self.base = base
        self.soft_prompt = nn.Parameter(soft_prompt.detach().to(torch.float32).clone())

    @property
    def config(self):
        return self.base.config

    @property
    def n_tokens(self) -> int:
        return self.soft_prompt.shape[0]

    def decoding_parts(self) -> DecodingParts:
        """The base model and the soft prompt the decoder puts before every prompt."""
        return DecodingParts(self.base, self.soft_prompt.detach(), None)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                labels: torch.Tensor | None = None, **kwargs) -> CausalLMOutputWithPast:
        """Logits [B, T, V] for `input_ids` (virtual positions stripped), loss over the extended labels;
        `kwargs` go to the base model (never position_ids: PEFT ignores them too, see above)."""
        b, n = input_ids.shape[0], self.n_tokens
        embeds = self.base.get_input_embeddings()(input_ids)
        prompt = self.soft_prompt.to(embeds.dtype).unsqueeze(0).expand(b, -1, -1)
        embeds = torch.cat((prompt, embeds), dim=1)
        if attention_mask is not None:
            attention_mask = torch.cat((attention_mask.new_ones(b, n), attention_mask), dim=1)
        if labels is not None:
            labels = torch.cat((labels.new_full((b, n), -100), labels), dim=1)
        out = self.base(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **kwargs)
        return CausalLMOutputWithPast(loss=out.loss, logits=out.logits[:, n:])


def init_prompt(model: nn.Module, tokenizer, cfg: PromptTuningConfig) -> torch.Tensor:
    """The initial soft prompt [n_tokens, hidden] from the base model's input embeddings."""
    emb = model.get_input_embeddings()
    n = cfg.n_tokens
    if cfg.init_random:
        ids = torch.randint(0, emb.num_embeddings, (n,))
    else:
        ids = tokenizer(cfg.init_text)["input_ids"]
        if not ids:
            raise UserError("config key 'method.init_text' is empty; give an instruction text or set method.init_random=true")
        ids = torch.tensor((ids * math.ceil(n / len(ids)))[:n])
    with torch.no_grad():
        return emb(ids.to(emb.weight.device)).detach().to(torch.float32).clone()


def peft_config(model: nn.Module, n_tokens: int, method_config: dict):
    """The PEFT PromptTuningConfig describing our prompt, as PEFT writes it when saving;
    `method_config` is the metadata's record of n_tokens/init_text/init_random."""
    # late: peft (3 s to import) only for a PEFT method
    from peft import PromptTuningConfig as PeftPromptTuningConfig

    c = model.config
    init = "RANDOM"  # unknown initialisation
    if "init_random" in method_config:
        init = "SAMPLE_VOCAB" if method_config["init_random"] else "TEXT"
    text = init == "TEXT"
    return PeftPromptTuningConfig(
        task_type="CAUSAL_LM", num_virtual_tokens=n_tokens, token_dim=c.hidden_size,
        num_transformer_submodules=1, num_attention_heads=c.num_attention_heads, num_layers=c.num_hidden_layers,
        prompt_tuning_init=init, prompt_tuning_init_text=method_config.get("init_text") if text else None,
        tokenizer_name_or_path=c.name_or_path if text else None,
        base_model_name_or_path=c.name_or_path or None, inference_mode=True,
    )


class PromptTuning(Method):
    name = "prompt_tuning"
    weights_file = "adapter_model.safetensors"
    config_class = PromptTuningConfig
    serving = "soft_prompt"
    not_exportable = "its soft prompt is learned input vectors, not model weights, so a plain model cannot hold it"

    def describe(self, cfg: PromptTuningConfig) -> str:
        return f"soft prompt, {cfg.n_tokens} token{'' if cfg.n_tokens == 1 else 's'}"

    def virtual_tokens(self, cfg: PromptTuningConfig) -> int:
        return cfg.n_tokens

    def decays(self, name: str) -> bool:
        # the soft prompt is an input, not a layer weight: decay would pull the virtual tokens
        # towards zero, away from the scale of real token embeddings
        return not name.endswith("soft_prompt")

    def prepare(self, model, tokenizer, cfg: PromptTuningConfig) -> SoftPromptModel:
        freeze(model)
        return SoftPromptModel(model, init_prompt(model, tokenizer, cfg))

    def save(self, model: SoftPromptModel, directory: Path, meta: dict) -> None:
        with atomic_dir(directory) as tmp:
            peft_config(model.base, model.n_tokens, meta.get("method_config", {})).save_pretrained(str(tmp))
            atomic_save_tensors(tmp / self.weights_file, {PEFT_KEY: model.soft_prompt}, metadata={"format": "pt"})
            write_meta(tmp, meta)

    def load(self, model, tokenizer, directory: Path, cfg: PromptTuningConfig) -> SoftPromptModel:
        path = weights_path(directory, self.weights_file)
        peft_type = read_json(Path(directory) / "adapter_config.json").get("peft_type")
        if peft_type != "PROMPT_TUNING":
            raise UserError(f"{directory} holds a {peft_type} adapter, not a soft prompt; load it as its own method")
        tensors = load_tensors(path)
        hidden = model.get_input_embeddings().embedding_dim
        prompt = tensors.get(PEFT_KEY)
        if prompt is None or prompt.dim() != 2 or prompt.shape[1] != hidden:
            shape = None if prompt is None else tuple(prompt.shape)
            raise UserError(f"{path}: expected tensor {PEFT_KEY!r} of shape [n_tokens, {hidden}], found {shape}")
        freeze(model)
        wrapped = SoftPromptModel(model, prompt)
        wrapped.soft_prompt.requires_grad_(False)
        return wrapped.to(model.device)
