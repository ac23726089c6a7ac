"""`data.prompt_format: chat`: prompts against the tokenizer's own `apply_chat_template`, labels on
the summary only, the article cut (never the template) to fit, the stop tokens against `generate`,
and training + evaluation end to end on a tiny model whose tokenizer has a ChatML template."""

from __future__ import annotations

import json

import pytest
import torch

from sumtune.cli import main
from sumtune.config import DataConfig, EvalConfig, build_config
from sumtune.data import encode_batch, encode_prompt, encode_prompts, stop_ids
from sumtune.decoding import Generator, decode_summary
from sumtune.errors import UserError
from sumtune.modeling import load_model, load_tokenizer
from sumtune.tiny import IM_END, build_tiny_model, synthetic_news

SYSTEM = "You write one-line news summaries."


@pytest.fixture(scope="module")
def tiny_chat(tmp_path_factory):
    rows = synthetic_news(200, seed=1)
    texts = [f"<|im_start|>user\n{r['article']}<|im_end|>\n<|im_start|>assistant\n{r['highlights']}<|im_end|>"
             for r in rows]
    return build_tiny_model(tmp_path_factory.mktemp("tiny_chat"), texts, arch="gpt2", chat=True)


def _messages(article: str, system: str = "", instruction: str = DataConfig().instruction) -> list[dict]:
    head = [{"role": "system", "content": system}] if system else []
    return [*head, {"role": "user", "content": instruction.replace("{article}", article)}]


def _reference(tok, messages: list[dict], generation_prompt: bool = True) -> list[int]:
    return tok.apply_chat_template(messages, add_generation_prompt=generation_prompt, tokenize=True)["input_ids"]


@pytest.mark.parametrize("system", ["", SYSTEM])
def test_prompts_are_apply_chat_template(tiny_chat, system):
    tok = load_tokenizer(str(tiny_chat))
    cfg = DataConfig(prompt_format="chat", system_prompt=system, instruction="Summarize this:\n{article}\nBe brief.")
    articles = [r["article"] for r in synthetic_news(6, seed=3)]
    expected = [_reference(tok, _messages(a, system, cfg.instruction)) for a in articles]
    assert encode_prompts(tok, articles, cfg) == expected
    assert [encode_prompt(tok, a, cfg) for a in articles] == expected
    assert tok.decode(expected[0]).startswith("<|im_start|>system\n" if system else "<|im_start|>user\nSummarize")


def test_examples_are_the_conversation_and_labels_cover_the_summary_only(tiny_chat):
    tok = load_tokenizer(str(tiny_chat))
    cfg = DataConfig(prompt_format="chat", system_prompt=SYSTEM)
    rows = synthetic_news(5, seed=4)
    out = encode_batch(tok, [r["article"] for r in rows], [r["highlights"] for r in rows], cfg)
    im_end = tok.convert_tokens_to_ids(IM_END)
    assert im_end != tok.eos_token_id and stop_ids(tok, cfg) == (im_end, tok.eos_token_id)
    for r, ids, labels in zip(rows, out["input_ids"], out["labels"]):
        prompt = _reference(tok, _messages(r["article"], SYSTEM))
        n = len(prompt)
        assert ids[:n] == prompt
        assert labels[:n] == [-100] * n  # no loss on the template or the article
        summary = tok(r["highlights"], add_special_tokens=False)["input_ids"]
        assert labels[n:] == ids[n:] == summary + [im_end]  # the summary and the end of the assistant turn
        # the whole example is the template's own rendering of the conversation, up to its end-of-turn token
        full = tok.apply_chat_template(_messages(r["article"], SYSTEM) + [{"role": "assistant", "content": r["highlights"]}],
                                       tokenize=False)
        assert full == tok.decode(ids) + "\n"


def test_a_long_article_is_cut_in_tokens_not_the_template(tiny_chat):
    tok = load_tokenizer(str(tiny_chat))
    cfg = DataConfig(prompt_format="chat", max_length=80, max_summary_length=20)
    row = synthetic_news(40, seed=5)[-1]
    article = " ".join(r["article"] for r in synthetic_news(4, seed=6))  # longer than the room
    art = tok(article, add_special_tokens=False)["input_ids"]
    ex = encode_batch(tok, [article], [row["highlights"]], cfg)
    ids, labels = ex["input_ids"][0], ex["labels"][0]
    assert len(ids) <= cfg.max_length
    n = labels.count(-100)
    target = len(ids) - n
    prompt = ids[:n]
    text = tok.decode(prompt)
    head, tail = "<|im_start|>user\nSummarize the following text.\n\n", "<|im_end|>\n<|im_start|>assistant\n"
    assert text.startswith(head) and text.endswith(tail)  # the template whole
    cut = text[len(head):-len(tail)]
    assert cut and article.startswith(cut) and len(cut) < len(article)
    assert prompt == _reference(tok, _messages(cut))  # exactly the template's tokens for the cut article
    k = len(tok(cut, add_special_tokens=False)["input_ids"])
    longer = _reference(tok, _messages(tok.decode(art[: k + 1])))
    assert len(longer) + target > cfg.max_length  # one more article token would not fit
    # generation prompts leave room for the longest summary and the end of turn
    gen = encode_prompt(tok, article, cfg)
    assert len(gen) + cfg.max_summary_length + 1 <= cfg.max_length
    assert gen == _reference(tok, _messages(tok.decode(gen)[len(head):-len(tail)]))


def test_generation_stops_at_each_stop_token_as_generate_does(tiny_chat):
    """Several stop tokens (the turn's end and EOS): greedy tokens equal `generate`'s with the same
    eos_token_id list, at batch 1 and in a batch."""
    tok = load_tokenizer(str(tiny_chat))
    model = load_model(str(tiny_chat)).eval()
    cfg = DataConfig(prompt_format="chat")
    prompts = encode_prompts(tok, [r["article"] for r in synthetic_news(3, seed=7)], cfg)
    free = Generator(model, tok, EvalConfig(max_new_tokens=12), stop_at_blank_line=False).generate(prompts)
    first = free[0]
    j = next(j for j in range(2, len(first)) if first[j] not in first[:j])  # a token new at step j + 1 of row 0
    stops = [first[j], tok.eos_token_id]
    ours = Generator(model, tok, EvalConfig(max_new_tokens=12, batch_size=3), stop_at_blank_line=False,
                     stop_ids=stops).generate(prompts)
    for p, o in zip(prompts, ours):
        with torch.no_grad():
            ref = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=12, do_sample=False, eos_token_id=stops, pad_token_id=tok.eos_token_id)
        assert o == ref[0, len(p):].tolist()
    assert ours[0] == first[: j + 1]  # stopped there, the stop token last
    assert decode_summary(tok, ours[0], "", stops) == decode_summary(tok, first[:j], "", stops)


def test_no_chat_template_is_one_line_before_the_model_loads(tiny_gpt2, kaggle_dir, tmp_path, capsys, monkeypatch):
    import sumtune.training.state as state

    monkeypatch.setattr(state, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    rc = main(["train", "--method", "lora", "--model", str(tiny_gpt2), "--data", str(kaggle_dir),
               "--output-dir", str(tmp_path / "run"), "--set", "data.prompt_format=chat"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert str(tiny_gpt2) in err and "data.prompt_format" in err and "no chat template" in err


def test_instruction_must_hold_the_article_once():
    with pytest.raises(UserError, match="'data.instruction' must hold {article} once"):
        build_config(sets=["data.prompt_format=chat", "data.instruction=Summarize it."])
    build_config(sets=["data.instruction=Summarize it."])  # the separator format does not use it


@pytest.mark.parametrize("method", ["lora", "prompt_tuning"])
def test_chat_format_trains_and_evaluates_end_to_end(tiny_chat, kaggle_dir, tmp_path, method):
    """Soft prompts go in front of the template's tokens (the method's place), LoRA changes weights:
    both train and evaluate with the template, and zero-shot uses the same prompts."""
    run = tmp_path / method
    common = ["--set", "data.prompt_format=chat", "--set", f"data.system_prompt={SYSTEM}",
              "--set", "data.max_summary_length=48"]
    assert main(["train", "--method", method, "--model", str(tiny_chat), "--data", str(kaggle_dir),
                 "--output-dir", str(run), "--max-steps", "2", "--batch-size", "4", "--grad-accum", "1",
                 "--max-length", "256", "--precision", "fp32", "--set", "method.prompt_tuning.n_tokens=4", "--set", "method.lora.r=4",
                 *common]) == 0
    assert main(["evaluate", str(run), "--limit", "3", "--max-new-tokens", "8", "--batch-size", "3"]) == 0
    metrics = json.loads((run / "eval/test/metrics.json").read_text())
    assert metrics["n"] == 3 and metrics["dataset"]["is_training_data"] is True
    assert all(0 <= metrics[k] <= 1 for k in ("rouge1", "rouge2", "rougeL"))


def test_zero_shot_summaries_use_the_template(tiny_chat, kaggle_dir, tmp_path):
    """A zero-shot run's summaries are the base model's greedy continuation of the template's prompt."""
    run = tmp_path / "zs"
    assert main(["train", "--method", "zero_shot", "--model", str(tiny_chat), "--data", str(kaggle_dir),
                 "--output-dir", str(run), "--max-length", "512", "--precision", "fp32",  # no article cut
                 "--set", "data.prompt_format=chat", "--set", "data.max_summary_length=48"]) == 0
    assert main(["evaluate", str(run), "--limit", "2", "--max-new-tokens", "6", "--batch-size", "2"]) == 0
    preds = [json.loads(line) for line in (run / "eval/test/predictions.jsonl").read_text().splitlines()]
    tok, model = load_tokenizer(str(tiny_chat)), load_model(str(tiny_chat)).eval()
    stops = [tok.convert_tokens_to_ids(IM_END), tok.eos_token_id]
    for p in preds:
        prompt = _reference(tok, _messages(p["article"]))
        with torch.no_grad():
            out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                 max_new_tokens=6, do_sample=False, eos_token_id=stops, pad_token_id=tok.eos_token_id)
        new = out[0, len(prompt):].tolist()
        assert p["prediction"] == decode_summary(tok, new, "", stops)
