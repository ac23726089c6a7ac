"""The Python in the model card: plain transformers (and PEFT for an adapter) that gives the summary
`sumtune summarize RUN` gives for the run's decoding and precision.

It is built from sumtune's own code where the card must do what sumtune does: the article's
cleaning (`data.clean.clean_article`, copied), the prompt as `data.encode_prompt` builds it (the
article cut in tokens to fit, then the separator; or the chat template around the cut article), the
stop rule, minimum length and summary-only n-gram ban as `generate` hooks
(`decoding.generate_rules`, copied), the summary's text as `decoding.decode_summary` cuts it, and
the first `eval.max_sentences` sentences (pySBD, as `sentences.split_sentences`). The precision is
the one the scores were taken in: autocast over the fp32 weights, as sumtune decodes. A PEFT
adapter loads on its base model; a prompt-learning one (soft prompt, P-tuning, prefix) hands its
prompt to the base model's `generate` as sumtune's decoder puts it in front (`decoding_parts`).
"""

from __future__ import annotations

import ast
import inspect
from types import ModuleType

from sumtune.config import DataConfig
from sumtune.data import clean
from sumtune.data.prompts import chat_format
from sumtune.decoding import generate_rules
from sumtune.modeling import load_tokenizer

AUTOCAST = {"bf16": "torch.bfloat16", "fp16": "torch.float16"}
DECODING_FLAGS = ("num_beams", "no_repeat_ngram_size", "length_penalty", "min_new_tokens", "max_new_tokens",
                  "max_sentences")


def module_code(module: ModuleType, upto: str | None = None) -> str:
    """A module's code without its docstring and imports (the card imports once, at the top), up to
    the end of the top-level definition `upto`."""
    source = inspect.getsource(module)
    lines, body = source.splitlines(), ast.parse(source).body
    skip: set[int] = set()
    for node in body:
        docstring = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)
        if docstring or isinstance(node, (ast.Import, ast.ImportFrom)):
            skip.update(range(node.lineno - 1, node.end_lineno))
    end = next(n.end_lineno for n in body if getattr(n, "name", None) == upto) if upto else len(lines)
    return "\n".join(line for i, line in enumerate(lines[:end]) if i not in skip).strip()


def summarize_command(dec: dict, precision: str) -> str:
    """The `sumtune summarize` flags that decode as `dec` (a recorded decoding) in `precision`."""
    flags = " ".join(f"--{k.replace('_', '-')} {dec.get(k) or 0}" for k in DECODING_FLAGS)
    return f"sumtune summarize RUN FILE --decoding {dec['preset']} {flags} --precision {precision}"


SOFT_PROMPTS = ("PROMPT_TUNING", "P_TUNING")  # PEFT types whose prompt is input vectors before every prompt


def _load(peft_type: str | None, where: str, base: str, beams: int) -> list[str]:
    """Load the model; a PEFT prompt-learning adapter gives its prompt (`get_prompt`; a prefix once per beam, as
    generate keeps a cache row per beam) and then decodes through the base model: PeftModel.generate would put the
    prompt in again at every step (Transformers 5)."""
    model = f"PeftModel.from_pretrained({base}, {where!r})" if peft_type else \
        f"AutoModelForCausalLM.from_pretrained({where!r})"
    lines = [f"model = {model}.eval()",
             "model.to('cuda' if torch.cuda.is_available() else 'cpu')  # where sumtune decodes",
             f"tokenizer = AutoTokenizer.from_pretrained({where!r})"]
    if peft_type in SOFT_PROMPTS:
        lines += ["with torch.no_grad():",
                  "    soft = model.get_prompt(batch_size=1)  # [1, virtual tokens, hidden]: before every prompt",
                  "model = model.get_base_model()"]
    elif peft_type == "PREFIX_TUNING":
        lines += ["with torch.no_grad():",
                  f"    prefix = model.get_prompt(batch_size={beams})  # keys/values per layer (a row per beam): before "
                  "every prompt",
                  "model = model.get_base_model()"]
    return lines


def _inputs(peft_type: str | None) -> list[str]:
    """`start` (where the new tokens begin in what generate hands the hooks and returns) and generate's inputs."""
    ones = "attention_mask=torch.ones(inputs.shape[:2], dtype=torch.long, device=model.device)"
    if peft_type in SOFT_PROMPTS:
        return ["inputs = torch.cat([soft, model.get_input_embeddings()(torch.tensor([ids], device=model.device))], 1)",
                f"start, given = 0, dict(inputs_embeds=inputs, {ones})  # generate returns the new tokens only"]
    if peft_type == "PREFIX_TUNING":
        return ["# stand-in tokens where the prefix's keys/values are (the cache holds them): the prompt's positions follow",
                "inputs = torch.tensor([[stop[0]] * prefix.get_seq_length() + ids], device=model.device)",
                f"start, given = inputs.shape[1], dict(input_ids=inputs, {ones}, past_key_values=copy.deepcopy(prefix))"]
    return ["inputs = torch.tensor([ids], device=model.device)",
            f"start, given = len(ids), dict(input_ids=inputs, {ones})"]


def _separator_prompt(cfg: DataConfig) -> list[str]:
    room = cfg.max_length - cfg.max_summary_length - 1  # `encode_prompt`: room for the longest summary and EOS
    return [f"separator = tokenizer({cfg.separator!r}, add_special_tokens=False).input_ids",
            f"ids = tokenizer(article, add_special_tokens=False).input_ids[:{room} - len(separator)] + separator",
            f"stop, marker = [tokenizer.eos_token_id], {cfg.separator.strip()!r}  # what ends a summary; "
            "where another would start"]


def _chat_prompt(cfg: DataConfig, model_name: str) -> list[str]:
    """The chat-format prompt (`data.prompts`): the messages in the tokenizer's template up to the
    assistant's turn, stopping at the turn's end token or EOS."""
    fmt = chat_format(load_tokenizer(model_name), cfg)  # the run's tokenizer is its base model's
    system = [f"        {{'role': 'system', 'content': {cfg.system_prompt!r}}},"] if cfg.system_prompt else []
    limit = cfg.max_length - cfg.max_summary_length - len(fmt.end_ids)  # `encode_prompts`' limit
    return ["", "def prompt(text):",
            "    messages = [", *system,
            f"        {{'role': 'user', 'content': {cfg.instruction!r}.replace('{{article}}', text)}},", "    ]",
            "    rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)",
            "    return tokenizer(rendered, add_special_tokens=False).input_ids",
            "",
            "# the article cut in tokens to fit, never the template (sumtune.data.prompts.ChatFormat.prompts)",
            f"limit, art = {limit}, tokenizer(article, add_special_tokens=False).input_ids",
            "keep = limit - len(prompt(''))",
            "ids = prompt(article if len(art) <= keep else tokenizer.decode(art[:max(keep, 0)]))",
            "while len(ids) > limit and keep > 0:  # the cut text tokenised longer: cut more",
            "    keep = min(keep, len(art)) - (len(ids) - limit)",
            "    ids = prompt(tokenizer.decode(art[:max(keep, 0)]))",
            f"stop, marker = {list(fmt.stop_ids)!r}, ''  # the assistant turn's end token, EOS"]


def _generate(dec: dict, precision: str, peft_type: str | None) -> list[str]:
    beams = f"num_beams={dec['num_beams']}, length_penalty={dec['length_penalty']!r}, " if dec["num_beams"] > 1 else ""
    autocast = (f", torch.autocast(model.device.type, dtype={AUTOCAST[precision]}):  # {precision} over fp32 weights"
                if precision in AUTOCAST else ":")
    return [*_inputs(peft_type),
            f"rules = SummaryRules(tokenizer, model.get_output_embeddings().weight.shape[0], start, stop, "
            f"ngram={dec['no_repeat_ngram_size']}, min_new_tokens={dec['min_new_tokens']})",
            "with torch.no_grad()" + autocast,
            f"    out = model.generate(**given, do_sample=False, {beams}max_new_tokens={dec['max_new_tokens']},",
            "                         eos_token_id=stop[0], pad_token_id=stop[0],",
            "                         logits_processor=LogitsProcessorList([SummaryLogits(rules)]),",
            "                         stopping_criteria=StoppingCriteriaList([SummaryEnd(rules)]))",
            "summary = summary_text(tokenizer, out[0, start:].tolist(), stop, marker)"]


def _first_sentences(n: int) -> list[str]:
    if not n:
        return []
    return ["# eval.max_sentences: the first sentences, split by pySBD line by line (pip install pysbd)",
            "import pysbd", "",
            "segmenter = pysbd.Segmenter(language='en', clean=False)",
            "sentences = [s.strip() for line in summary.splitlines() if line.strip()",
            "             for s in segmenter.segment(line) if s.strip()]",
            f"summary = '\\n'.join(sentences[:{n}])"]


def card_python(cfg: DataConfig, dec: dict, precision: str, *, peft_type: str | None, where: str, base: str,
                model_name: str) -> list[str]:
    """The card's code, line by line: `text` in, `summary` out. `dec`: the decoding (a recorded
    `decoding_summary`); `peft_type`: the adapter's (adapter_config.json), None for a plain model; `base`: the
    Python expression that loads an adapter's base model."""
    imports = (["import copy"] if peft_type == "PREFIX_TUNING" else []) + (["import re"] if cfg.clean else [])
    imports += ["", "import torch"]
    if peft_type:
        imports.append("from peft import PeftModel")
    imports.append("from transformers import (AutoModelForCausalLM, AutoTokenizer, LogitsProcessor, "
                   "LogitsProcessorList,\n                          StoppingCriteria, StoppingCriteriaList)")
    cleaning = ["", "", "# sumtune's article cleaning (sumtune.data.clean)", module_code(clean, "clean_article")] \
        if cfg.clean else []
    article = "clean_article(text)" if cfg.clean else "text.strip()"
    prompt = _chat_prompt(cfg, model_name) if cfg.prompt_format == "chat" else _separator_prompt(cfg)
    return [*imports, "", "",
            "# sumtune's stop rule and summary-only n-gram ban for generate (sumtune.decoding.generate_rules)",
            module_code(generate_rules), *cleaning, "", "",
            *_load(peft_type, where, base, dec["num_beams"]), "",
            f"article = {article}  # text: the article", *prompt, "",
            *_generate(dec, precision, peft_type), *_first_sentences(dec.get("max_sentences") or 0)]
