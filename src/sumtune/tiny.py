"""Tiny offline models for the demo and the tests: a byte-level BPE tokenizer
trained on local text with `tokenizers`, and a causal LM of one of the supported
families (`ARCHS`) with random weights built from a small config. Nothing here touches the network.

A tiny random model produces meaningless summaries; it exists so every code
path (training, generation, export, compare) runs anywhere in seconds.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GPT2Config,
    GPTNeoConfig,
    PreTrainedTokenizerFast,
    RobertaConfig,
    RobertaModel,
    RobertaTokenizer,
)

EOS = "<|endoftext|>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
# ChatML, the turn format of Qwen2's and SmolLM2's chat templates (without their default system message).
# Its end of turn is not EOS, as in a base Qwen2.5 tokenizer.
CHATML = ("{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + "
          "'<|im_end|>' + '\\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")


def train_tokenizer(texts: Iterable[str], vocab_size: int = 512, chat: bool = False):
    """A GPT-2-style byte-level BPE tokenizer trained on `texts`, as a fast HF tokenizer; `chat`:
    with the ChatML special tokens and chat template."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS, IM_START, IM_END] if chat else [EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    out = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS, unk_token=EOS)
    if chat:
        out.chat_template = CHATML
    return out


# The decoder-only families the support matrix covers (docs/models.md "Supported models and methods").
ARCHS = ("gpt_neo", "gpt2", "gpt_neox", "opt", "llama", "qwen2", "phi3", "gemma")


def tiny_config(arch: str, vocab: int, eos: int, hidden: int = 64, layers: int = 2, heads: int = 4):
    """A small config of family `arch` (Transformers' own config class), dropout off so that
    training is deterministic. The families other than GPT-Neo/GPT-2 take the standard keys;
    Llama, Qwen2 and Gemma use grouped-query attention (2 key/value heads), as the real ones do."""
    if arch == "gpt_neo":
        return GPTNeoConfig(
            vocab_size=vocab, max_position_embeddings=1024, hidden_size=hidden, num_layers=layers,
            num_heads=heads, attention_types=[[["global", "local"], max(1, layers // 2)]],
            window_size=16, intermediate_size=4 * hidden, bos_token_id=eos, eos_token_id=eos,
            embed_dropout=0.0, attention_dropout=0.0, resid_dropout=0.0,
        )
    if arch == "gpt2":
        return GPT2Config(
            vocab_size=vocab, n_positions=1024, n_embd=hidden, n_layer=layers, n_head=heads,
            bos_token_id=eos, eos_token_id=eos, embd_pdrop=0.0, attn_pdrop=0.0, resid_pdrop=0.0,
        )
    if arch not in ARCHS:
        raise ValueError(f"unknown tiny architecture {arch!r}; use one of {', '.join(ARCHS)}")
    common = dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  max_position_embeddings=1024, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    extra = {
        "gpt_neox": dict(intermediate_size=4 * hidden, hidden_dropout=0.0, attention_dropout=0.0),
        "opt": dict(ffn_dim=4 * hidden, word_embed_proj_dim=hidden, dropout=0.0, attention_dropout=0.0,
                    layerdrop=0.0),
        "llama": dict(intermediate_size=3 * hidden, num_key_value_heads=2),
        "qwen2": dict(intermediate_size=3 * hidden, num_key_value_heads=2),
        "phi3": dict(intermediate_size=3 * hidden, resid_pdrop=0.0, embd_pdrop=0.0, attention_dropout=0.0),
        "gemma": dict(intermediate_size=3 * hidden, num_key_value_heads=2, head_dim=hidden // heads),
    }[arch]
    return AutoConfig.for_model(arch, **common, **extra)


def build_tiny_model(
    out_dir: str | Path,
    texts: Iterable[str],
    arch: str = "gpt_neo",
    vocab_size: int = 512,
    hidden: int = 64,
    layers: int = 2,
    heads: int = 4,
    seed: int = 0,
    chat: bool = False,
) -> Path:
    """Write a random-weight tiny causal LM of family `arch` (ARCHS) plus its tokenizer to `out_dir`
    (HF layout); `chat`: a tokenizer with a ChatML chat template (`train_tokenizer`)."""
    out = Path(out_dir)
    tokenizer = train_tokenizer(texts, vocab_size, chat)
    cfg = tiny_config(arch, len(tokenizer), tokenizer.eos_token_id, hidden, layers, heads)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def build_tiny_encoder(out_dir: str | Path, texts: Iterable[str], vocab_size: int = 400, hidden: int = 32,
                       layers: int = 3, heads: int = 4, seed: int = 0) -> Path:
    """Write a random-weight tiny RoBERTa encoder and its RoBERTa tokenizer (byte-level BPE trained on
    `texts`, RoBERTa's special tokens) to `out_dir`: a stand-in for roberta-large where BERTScore runs
    offline (tests)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bpe = json.loads(tok.to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in bpe["merges"]]
    tokenizer = RobertaTokenizer(vocab=bpe["vocab"], merges=merges, model_max_length=512)
    cfg = RobertaConfig(vocab_size=len(tokenizer), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=2 * hidden, max_position_embeddings=514,
                        pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.cls_token_id,
                        eos_token_id=tokenizer.sep_token_id)
    torch.manual_seed(seed)
    out = Path(out_dir)
    RobertaModel(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


_CITIES = ["Boston", "Denver", "Atlanta", "Seattle", "Houston", "Chicago", "Phoenix", "Miami"]
_SUBJECTS = ["the mayor", "the police chief", "a local school board", "the city council", "state officials",
             "a hospital spokesman", "the fire department", "a team of scientists"]
_EVENTS = ["announced a new plan to repair roads", "warned residents about a coming storm",
           "approved funding for a public library", "reported a sharp rise in tourism",
           "opened an investigation into a warehouse fire", "unveiled a study on air quality",
           "closed a bridge for urgent repairs", "celebrated the opening of a park"]
_DETAILS = ["The decision follows months of debate.", "Residents said they welcomed the news.",
            "Critics argued the cost was too high.", "The work is expected to take two years.",
            "Officials did not give further details.", "A public meeting is planned for next week.",
            "Local businesses expect to benefit.", "The budget for the project is $4 million."]


def synthetic_news(n: int, seed: int = 0) -> list[dict[str, str]]:
    """`n` templated news rows {id, article, highlights} with newline-separated highlights,
    varied in length; for tests and tokenizer training only."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        city, subj, event = rng.choice(_CITIES), rng.choice(_SUBJECTS), rng.choice(_EVENTS)
        lead = f"{city} (CNN) -- On Monday {subj} in {city} {event}."
        body = " ".join(rng.choice(_DETAILS) for _ in range(rng.randint(2, 12)))
        highlights = f"{subj.capitalize()} in {city} {event} .\n{rng.choice(_DETAILS)}"
        rows.append({"id": f"{i:04d}", "article": f"{lead} {body}", "highlights": highlights})
    return rows
