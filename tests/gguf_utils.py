"""A tiny GGUF file written with the `gguf` package, as llama.cpp's converter writes a Llama
model: F32 tensors under GGUF names, Q/K rows permuted for its rotary layout, and the
byte-level BPE tokenizer (`tokenizer.ggml.model` "gpt2") with its merges, token types,
special ids and ChatML chat template. Built from a tiny random Hugging Face Llama, so a test
can compare what sumtune converts back with the weights that went in."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from sumtune.tiny import build_tiny_model

# Hugging Face Llama names -> GGUF names (llama.cpp's tensor map)
_LAYER = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_TOP = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight"}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's `permute` of Q/K rows (transformers reverses it on load)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str:
    if hf_name in _TOP:
        return _TOP[hf_name]
    _, _, layer, rest = hf_name.split(".", 3)
    return f"blk.{layer}.{_LAYER[rest]}"


def write_tiny_gguf(path: Path, hf_dir: Path, architecture: str = "llama", quant: str = "F32") -> Path:
    """`hf_dir` (a tiny Llama with a ChatML tokenizer, `sumtune.tiny.build_tiny_model(..., chat=True)`)
    as one GGUF file at `path`; `architecture` other than llama names an architecture Transformers cannot
    read; `quant` "Q8_0": the matrices quantized to 8 bits, as llama.cpp's converter writes them."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
    tok = AutoTokenizer.from_pretrained(hf_dir)
    c = model.config
    w = gguf.GGUFWriter(str(path), architecture)
    w.add_name("tiny llama")
    w.add_license("apache-2.0")
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    w.add_rope_dimension_count(c.hidden_size // c.num_attention_heads)
    w.add_rope_freq_base(float(c.rope_parameters["rope_theta"]) if getattr(c, "rope_parameters", None)
                         else float(c.rope_theta))
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_vocab_size(c.vocab_size)
    w.add_file_type(gguf.LlamaFileType.ALL_F32 if quant == "F32" else gguf.LlamaFileType.MOSTLY_Q8_0)

    bpe = json.loads(tok.backend_tokenizer.to_str())["model"]
    vocab = sorted(bpe["vocab"].items(), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(len(vocab)))
    special = {t.content for t in tok.added_tokens_decoder.values()}
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list([t for t, _ in vocab])
    w.add_token_types([gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t, _ in vocab])
    w.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]])
    w.add_bos_token_id(tok.bos_token_id)
    w.add_eos_token_id(tok.convert_tokens_to_ids("<|im_end|>"))
    w.add_pad_token_id(tok.eos_token_id)
    w.add_add_bos_token(False)
    w.add_chat_template(tok.chat_template)

    for name, t in model.state_dict().items():
        a = t.detach().numpy().astype(np.float32)
        if name.endswith("q_proj.weight"):
            a = _permute(a, c.num_attention_heads)
        elif name.endswith("k_proj.weight"):
            a = _permute(a, c.num_key_value_heads)
        if quant == "Q8_0" and a.ndim == 2:
            qtype = gguf.GGMLQuantizationType.Q8_0
            w.add_tensor(gguf_name(name), gguf.quants.quantize(np.ascontiguousarray(a), qtype), raw_dtype=qtype)
        else:
            w.add_tensor(gguf_name(name), np.ascontiguousarray(a))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def build_tiny_gguf(root: Path, texts: list[str]) -> tuple[Path, Path]:
    """(the GGUF file, the Hugging Face directory it was written from) under `root`."""
    hf_dir = build_tiny_model(root / "hf", texts, arch="llama", chat=True)
    return write_tiny_gguf(root / "tiny-llama.F32.gguf", hf_dir), hf_dir
